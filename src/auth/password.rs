//! Password hashing: Argon2id (rust-argon2) with the OWASP parameters, stored as PHC strings.
//!
//! This is the only place that turns a password into something storable and the only place that
//! checks one. [`hash_password`] produces `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>` with a
//! fresh 16-byte salt from the operating system; [`verify_password`] checks a password against such
//! a string; [`burn_verify`] spends the same time as a verification when there is nothing to verify
//! against (unknown email), so that a login does not reveal which emails have an account.
//!
//! This module must never: log, print or put into an error a password or a hash; compare hashes
//! with `==` (rust-argon2 compares in constant time); panic on a malformed or hostile stored hash
//! (it is treated as "does not match"); or accept a stored hash whose cost parameters would let
//! whoever wrote it make one verification take unbounded memory, threads or time.

use std::fmt;
use std::sync::OnceLock;

use argon2::{Config, ThreadMode, Variant, Version};

/// Memory cost in KiB (19 MiB): OWASP's Argon2id recommendation paired with `t = 2`.
pub const MEMORY_KIB: u32 = 19_456;
/// Number of passes over the memory.
pub const TIME_COST: u32 = 2;
/// Degree of parallelism (lanes). One lane: one thread per hash, so the cost of a login is one
/// worker thread's time, and the number of threads stays the one the server's pool fixes.
pub const LANES: u32 = 1;
/// Length of the random salt in bytes.
pub const SALT_LEN: usize = 16;
/// Length of the derived hash in bytes.
pub const HASH_LEN: u32 = 32;

/// Ceilings on the parameters of a *stored* hash that [`verify_password`] agrees to compute.
/// They sit well above what [`hash_password`] produces (so the parameters can be raised later),
/// and keep a tampered row from costing more than 256 MiB, 8 threads or 10 passes per attempt.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_TIME_COST: u32 = 10;
const MAX_LANES: u32 = 8;

/// Why a password could not be hashed. Never carries the password.
#[derive(Debug)]
pub enum PasswordError {
    /// The operating system's random number generator failed (no salt could be drawn).
    Random(getrandom::Error),
    /// Argon2 rejected its input (cannot happen with the fixed parameters; kept for honesty).
    Hash(argon2::Error),
}

impl fmt::Display for PasswordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordError::Random(e) => write!(f, "could not draw a random salt from the operating system: {e}"),
            PasswordError::Hash(e) => write!(f, "argon2 could not hash the password: {e}"),
        }
    }
}

impl std::error::Error for PasswordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // getrandom::Error implements std::error::Error only with its `std` feature.
            PasswordError::Random(_) => None,
            PasswordError::Hash(e) => Some(e),
        }
    }
}

/// The Argon2id configuration used for every new hash.
fn config() -> Config<'static> {
    Config {
        ad: &[],
        hash_length: HASH_LEN,
        lanes: LANES,
        mem_cost: MEMORY_KIB,
        secret: &[],
        thread_mode: ThreadMode::Sequential,
        time_cost: TIME_COST,
        variant: Variant::Argon2id,
        version: Version::Version13,
    }
}

/// Hashes `pw` with Argon2id (m=19456 KiB, t=2, p=1) and a fresh random 16-byte salt, and returns
/// the PHC string to store, e.g. `$argon2id$v=19$m=19456,t=2,p=1$<salt b64>$<hash b64>`.
///
/// Costs one full Argon2 computation (tens of milliseconds in a release build): call it from a
/// worker thread, never while holding a lock.
pub fn hash_password(pw: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(PasswordError::Random)?;
    argon2::hash_encoded(pw.as_bytes(), &salt, &config()).map_err(PasswordError::Hash)
}

/// Returns true when `pw` matches the stored PHC string `phc`.
///
/// Returns false, without panicking, for a wrong password and for anything that is not an
/// Argon2id PHC string within sane cost ceilings (256 MiB, 10 passes, 8 lanes): such a stored value
/// cannot have come from [`hash_password`], and computing it could exhaust the machine.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    if !acceptable_phc(phc) {
        return false;
    }
    argon2::verify_encoded(phc, pw.as_bytes()).unwrap_or(false)
}

/// Checks the shape and the cost parameters of a stored hash before any memory is allocated for it:
/// `$argon2id$v=19$m=M,t=T,p=P$salt$hash` with M, T, P within the ceilings.
fn acceptable_phc(phc: &str) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let [empty, variant, version, params, salt, hash] = parts.as_slice() else {
        return false;
    };
    if !empty.is_empty() || *variant != "argon2id" || *version != "v=19" {
        return false;
    }
    let mut values = [0u32; 3];
    let mut fields = params.split(',');
    for (slot, name) in values.iter_mut().zip(["m=", "t=", "p="]) {
        match fields.next().and_then(|f| f.strip_prefix(name)) {
            Some(v) => match v.parse::<u32>() {
                Ok(n) => *slot = n,
                Err(_) => return false,
            },
            None => return false,
        }
    }
    if fields.next().is_some() {
        return false;
    }
    let [m, t, p] = values;
    // Base64 without padding: 4 characters per 3 bytes. Salt of at least 8 bytes (Argon2's
    // minimum), hash of 16 to 64 bytes; anything else is not ours.
    let salt_ok = (11..=88).contains(&salt.len());
    let hash_ok = (22..=86).contains(&hash.len());
    (1..=MAX_LANES).contains(&p)
        && (8 * p..=MAX_MEMORY_KIB).contains(&m)
        && (1..=MAX_TIME_COST).contains(&t)
        && salt_ok
        && hash_ok
}

/// A fixed hash of a fixed password, with the same parameters as every real hash, computed once.
/// `None` only if Argon2 rejected the constant inputs, which it does not.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            // A constant salt is fine here: this hash protects nothing, it only has to cost the
            // same to verify as a real one. No RNG means nothing can fail at run time.
            argon2::hash_encoded(b"adcluster timing-equaliser password", b"adcluster-dummy!", &config()).ok()
        })
        .as_deref()
}

/// Spends one full password verification against a fixed dummy hash and throws the result away.
///
/// Call it when a login names an email that has no account (or no usable hash), so that the answer
/// takes as long as for a wrong password and does not reveal which emails exist. The dummy hash is
/// computed on first use, so the very first call costs two hashes: call `burn_verify("")` once at
/// start-up to pay that early.
pub fn burn_verify(pw: &str) {
    if let Some(phc) = dummy_hash() {
        std::hint::black_box(verify_password(pw, phc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn roundtrip() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(verify_password("correct horse battery staple", &phc));
    }

    #[test]
    fn wrong_password_is_rejected() {
        let phc = hash_password("hunter22").unwrap();
        assert!(!verify_password("hunter23", &phc));
        assert!(!verify_password("", &phc));
    }

    #[test]
    fn same_password_gets_different_salts() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same", &a) && verify_password("same", &b));
    }

    #[test]
    fn phc_string_names_argon2id_and_owasp_params() {
        let phc = hash_password("pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parts: Vec<&str> = phc.split('$').collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(parts[4].len(), 22, "16-byte salt in unpadded base64");
        assert_eq!(parts[5].len(), 43, "32-byte hash in unpadded base64");
    }

    #[test]
    fn malformed_hashes_are_false_not_panics() {
        let good = hash_password("pw").unwrap();
        let salt_and_hash = good.splitn(5, '$').nth(4).unwrap();
        let cases = [
            String::new(),
            "$".into(),
            "not a hash".into(),
            "$argon2id$".into(),
            "$argon2id$v=19$m=19456,t=2,p=1$$".into(),
            "$argon2id$v=19$m=19456,t=2,p=1$!!!!$????".into(),
            "$2b$12$abcdefghijklmnopqrstuuSomeBcryptLookingHashValue12345".into(),
            // Wrong variant and version, even if otherwise well formed.
            format!("$argon2i$v=19$m=19456,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=16$m=19456,t=2,p=1${salt_and_hash}"),
            // Hostile cost parameters: must not allocate 4 TiB or spawn a million threads.
            format!("$argon2id$v=19$m=4294967295,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=4294967295,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=2,p=16777215${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=0,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=2,p=0${salt_and_hash}"),
            format!("$argon2id$v=19$m=-1,t=2,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$t=2,m=19456,p=1${salt_and_hash}"),
            format!("$argon2id$v=19$m=19456,t=2,p=1,x=1${salt_and_hash}"),
            format!("{good}$extra"),
            good[..good.len() - 10].to_string(),
        ];
        for case in &cases {
            assert!(!verify_password("pw", case), "accepted {case:?}");
        }
        // And the good one still verifies.
        assert!(verify_password("pw", &good));
    }

    #[test]
    fn burn_verify_runs_and_dummy_is_well_formed() {
        burn_verify("whatever");
        let dummy = dummy_hash().expect("dummy hash");
        assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(acceptable_phc(dummy));
        assert!(verify_password("adcluster timing-equaliser password", dummy));
    }

    /// Prints how long one hash and one verification take; run with
    /// `cargo test --release -- --nocapture measure_hash_time`. No assertion on time.
    #[test]
    fn measure_hash_time() {
        let start = Instant::now();
        let phc = hash_password("measure me").unwrap();
        let hash_time = start.elapsed();
        let start = Instant::now();
        assert!(verify_password("measure me", &phc));
        let verify_time = start.elapsed();
        burn_verify("warm the dummy");
        let start = Instant::now();
        burn_verify("unknown user");
        let burn_time = start.elapsed();
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        println!(
            "argon2id m=19456,t=2,p=1 ({profile}): hash {hash_time:?}, verify {verify_time:?}, \
             burn_verify {burn_time:?}"
        );
    }
}
