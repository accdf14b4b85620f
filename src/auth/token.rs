//! Access tokens: HS256 JWTs (jsonwebtoken) and the secret key that signs them.
//!
//! [`TokenKeys::issue`] makes a token with the claims `sub` (the user id as a string), `email`,
//! `iat` and `exp`; [`TokenKeys::verify`] accepts exactly those tokens: signed with HS256 under our
//! key, not expired, with an integer `sub`. [`load_or_create_secret`] finds the key: `SECRET_KEY`
//! when configured, else the file `DATA_DIR/secret_key`, else a new random key written there.
//!
//! Expiry is checked here against the `now` the caller passes (seconds since the Unix epoch), not
//! by jsonwebtoken against its own clock, so that tests can move time; the leeway is zero: a token
//! is valid while `now < exp`, and rejected from the second `exp` on (RFC 7519 §4.1.4).
//!
//! This module must never: accept any algorithm but HS256 (`none`, HS384, HS512, RS*, ...); put
//! the secret key or a token into an error message, a log line or `Debug` output; or write the
//! generated secret to a file that others can read (the file is created with mode 0600).

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The shortest secret we accept, in bytes (HS256 keys should be at least the hash size, 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Name of the file, inside the data directory, that holds the generated secret.
pub const SECRET_FILE_NAME: &str = "secret_key";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id, as a decimal string (JWT `sub` must be a string).
    pub sub: String,
    /// The user's email when the token was issued (informational; the id is authoritative).
    pub email: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch; the token is valid while `now < exp`.
    pub exp: u64,
}

impl Claims {
    /// The user id in `sub`: `Some` for every `Claims` returned by [`TokenKeys::verify`], which
    /// rejects a `sub` that is not a positive integer in canonical decimal form.
    pub fn user_id(&self) -> Option<i64> {
        parse_user_id(&self.sub)
    }
}

/// `sub` must be exactly what `i64::to_string` makes of a positive id: no sign, no leading zeros,
/// no spaces. Anything else did not come from [`TokenKeys::issue`].
fn parse_user_id(sub: &str) -> Option<i64> {
    // Digits only (no sign, no space), no leading zero (so not "0" either), and within i64.
    let canonical = sub.bytes().all(|b| b.is_ascii_digit()) && !sub.starts_with('0');
    let id: i64 = if canonical { sub.parse().ok()? } else { return None };
    (id > 0).then_some(id)
}

/// Why a token was refused. Every variant means `401 Could not validate credentials` to a client;
/// the distinction is for logs and tests. No variant carries the token or the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or claims of the wrong shape or type.
    Malformed,
    /// The header names an algorithm other than HS256 (`none` included).
    WrongAlgorithm,
    /// The signature does not match our key.
    BadSignature,
    /// A required claim (`exp` or `sub`) is missing.
    MissingClaim(&'static str),
    /// `now >= exp`.
    Expired,
    /// `sub` is not a positive integer in canonical decimal form.
    InvalidSubject,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("malformed token"),
            TokenError::WrongAlgorithm => f.write_str("token algorithm is not HS256"),
            TokenError::BadSignature => f.write_str("token signature is invalid"),
            TokenError::MissingClaim(c) => write!(f, "token lacks the `{c}` claim"),
            TokenError::Expired => f.write_str("token has expired"),
            TokenError::InvalidSubject => f.write_str("token subject is not a user id"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The HS256 signing and verifying keys, and the fixed validation rules.
///
/// Build it once at start-up from the bytes of [`load_or_create_secret`] and share it (`Arc`).
/// `Debug` prints no key material.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys").field("algorithm", &"HS256").field("secret", &"<redacted>").finish()
    }
}

impl TokenKeys {
    /// Keys for HS256 with `secret` as the HMAC key. The length is checked by
    /// [`load_or_create_secret`], not here.
    pub fn new(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        // Only HS256: a token whose header says anything else is refused before any key is used.
        validation.algorithms = vec![Algorithm::HS256];
        // Expiry is checked in `verify` against the caller's clock, with no leeway.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // We set no `aud`; jsonwebtoken then refuses any token that carries one. Keep it so.
        validation.validate_aud = true;
        TokenKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Issues a token for `user_id` valid from `now` for `ttl_secs` seconds
    /// (`iat = now`, `exp = now + ttl_secs`).
    ///
    /// # Panics
    /// Never in practice: HMAC-SHA256 over the serialisation of four plain fields cannot fail.
    pub fn issue(&self, user_id: i64, email: &str, ttl_secs: u64, now: u64) -> String {
        let claims =
            Claims { sub: user_id.to_string(), email: email.to_owned(), iat: now, exp: now.saturating_add(ttl_secs) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch) and returns its claims.
    ///
    /// Refuses: another algorithm than HS256 (`none` included), another key's signature, a missing
    /// `exp` or `sub`, `now >= exp`, a `sub` that is not a positive integer, an `aud` claim, and
    /// anything malformed.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let raw = jsonwebtoken::decode::<RawClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;
        let (Some(sub), Some(exp)) = (raw.sub, raw.exp) else {
            // jsonwebtoken has already refused a missing `exp` or `sub`; kept for totality.
            return Err(TokenError::Malformed);
        };
        let (Some(email), Some(iat)) = (raw.email, raw.iat) else {
            return Err(TokenError::Malformed);
        };
        let claims = Claims { sub, email, iat, exp };
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if parse_user_id(&claims.sub).is_none() {
            return Err(TokenError::InvalidSubject);
        }
        Ok(claims)
    }
}

/// The claims as decoded, every one optional, so that a missing `exp` or `sub` is reported as
/// such by jsonwebtoken's required-claims check rather than as a deserialisation failure.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    email: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => TokenError::MissingClaim("exp"),
        ErrorKind::MissingRequiredClaim(c) if c == "sub" => TokenError::MissingClaim("sub"),
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidSubject => TokenError::InvalidSubject,
        _ => TokenError::Malformed,
    }
}

/// Where the secret key came from; [`SecretSource::Generated`] deserves a warning in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// `SECRET_KEY` was configured.
    Configured,
    /// Read from `DATA_DIR/secret_key`, generated by an earlier start.
    File,
    /// Generated now and written to `DATA_DIR/secret_key` (mode 0600).
    Generated,
}

/// Why no usable secret key could be found or made. Messages name paths and lengths, never the key.
#[derive(Debug)]
pub enum SecretError {
    /// `SECRET_KEY` is set but shorter than [`MIN_SECRET_LEN`] bytes.
    ConfiguredTooShort,
    /// The secret file exists but holds fewer than [`MIN_SECRET_LEN`] bytes.
    FileTooShort {
        /// The file that was read.
        path: PathBuf,
    },
    /// Reading or writing the data directory or the secret file failed.
    Io {
        /// What was being done, e.g. "create the data directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::ConfiguredTooShort => write!(
                f,
                "SECRET_KEY must be at least {MIN_SECRET_LEN} bytes; generate one with \
                 `openssl rand -hex 32`"
            ),
            SecretError::FileTooShort { path } => write!(
                f,
                "the secret key in {} is shorter than {MIN_SECRET_LEN} bytes; put the output of \
                 `openssl rand -hex 32` in it, or delete it to have a new key generated (this \
                 signs every user out), or set SECRET_KEY",
                path.display()
            ),
            SecretError::Io { action, path, source } => write!(
                f,
                "could not {action} {}: {source}; check that the directory is writable, or set \
                 SECRET_KEY (generate one with `openssl rand -hex 32`)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Finds the HS256 key.
///
/// - `configured` (`SECRET_KEY`) set: its bytes, as given, when at least 32 bytes long; shorter
///   (the empty string included) is an error telling the user how to make one.
/// - unset, `data_dir/secret_key` present: its content without surrounding whitespace, which must
///   be at least 32 bytes.
/// - unset, no file: 32 random bytes, hex-encoded (64 characters; the key is those characters, so
///   the file's content is the key as a user would paste it into `SECRET_KEY`), written to
///   `data_dir/secret_key` with mode 0600 (creating `data_dir` with mode 0700 when missing).
///   The file appears atomically, complete: it is written under a temporary name and hard-linked
///   into place, so two servers starting at once end up with the same key (the loser reads the
///   winner's file).
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(Vec<u8>, SecretSource), SecretError> {
    if let Some(secret) = configured {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::ConfiguredTooShort);
        }
        return Ok((secret.as_bytes().to_vec(), SecretSource::Configured));
    }
    let path = data_dir.join(SECRET_FILE_NAME);
    if let Some(key) = read_secret_file(&path)? {
        return Ok((key, SecretSource::File));
    }
    match create_secret_file(data_dir, &path)? {
        Some(key) => Ok((key, SecretSource::Generated)),
        // Another process published its key first: use that one.
        None => match read_secret_file(&path)? {
            Some(key) => Ok((key, SecretSource::File)),
            None => Err(SecretError::Io {
                action: "read the secret key file",
                path,
                source: io::Error::new(io::ErrorKind::NotFound, "it vanished while starting"),
            }),
        },
    }
}

/// `Ok(None)` when the file does not exist.
fn read_secret_file(path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    let mut content = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut content)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SecretError::Io { action: "read the secret key file", path: path.to_owned(), source })
        }
    }
    let key = content.trim_ascii().to_vec();
    if key.len() < MIN_SECRET_LEN {
        return Err(SecretError::FileTooShort { path: path.to_owned() });
    }
    Ok(Some(key))
}

/// Writes a new key to `path`. `Ok(None)` when `path` appeared meanwhile (someone else won).
fn create_secret_file(data_dir: &Path, path: &Path) -> Result<Option<Vec<u8>>, SecretError> {
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| SecretError::Io { action, path: p, source }
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io_err("create the data directory", data_dir))?;

    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| SecretError::Io {
        action: "draw random bytes for the secret key in",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    let key = hex(&raw).into_bytes();

    let mut suffix = [0u8; 8];
    let _ = getrandom::fill(&mut suffix);
    let tmp = data_dir.join(format!(".{SECRET_FILE_NAME}.{}.{}.tmp", std::process::id(), hex(&suffix)));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&key)?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(SecretError::Io { action: "write the secret key file", path: tmp, source });
    }
    // link(2) fails when `path` exists, so a concurrent start can never overwrite a published key.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(dir) = File::open(data_dir) {
                let _ = dir.sync_all();
            }
            Ok(Some(key))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(source) => Err(SecretError::Io { action: "publish the secret key file", path: path.to_owned(), source }),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
    const NOW: u64 = 1_700_000_000;

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn sign_with(alg: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims_json(sub: serde_json::Value, exp: u64) -> serde_json::Value {
        serde_json::json!({"sub": sub, "email": "a@x.io", "iat": NOW - 10, "exp": exp})
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).unwrap();
            TempDir(std::env::temp_dir().join(format!("adc_token_test_{}_{}", std::process::id(), hex(&r))))
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn issue_then_verify() {
        let keys = TokenKeys::new(SECRET);
        let token = keys.issue(42, "a@x.io", 1800, NOW);
        let claims = keys.verify(&token, NOW + 5).unwrap();
        assert_eq!(claims, Claims { sub: "42".into(), email: "a@x.io".into(), iat: NOW, exp: NOW + 1800 });
        assert_eq!(claims.user_id(), Some(42));
        // The header says HS256.
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
    }

    #[test]
    fn expiry_has_no_leeway() {
        let keys = TokenKeys::new(SECRET);
        let token = keys.issue(1, "a@x.io", 60, NOW);
        assert!(keys.verify(&token, NOW + 59).is_ok());
        assert_eq!(keys.verify(&token, NOW + 60), Err(TokenError::Expired));
        assert_eq!(keys.verify(&token, NOW + 61), Err(TokenError::Expired));
    }

    #[test]
    fn token_expired_by_the_real_clock_is_rejected() {
        // exp in the past relative to the real clock *and* to `now`.
        let keys = TokenKeys::new(SECRET);
        let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token = keys.issue(1, "a@x.io", 60, real_now - 3600);
        assert_eq!(keys.verify(&token, real_now), Err(TokenError::Expired));
    }

    #[test]
    fn alg_none_is_rejected() {
        let keys = TokenKeys::new(SECRET);
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(serde_json::to_string(&claims_json("1".into(), NOW + 600)).unwrap().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
            format!("{}.{payload}.", b64url(br#"{"alg":"None","typ":"JWT"}"#)),
        ] {
            assert!(keys.verify(&token, NOW).is_err(), "accepted {token}");
        }
        // A genuine signature under a header rewritten to `none` is refused too.
        let good = keys.issue(1, "a@x.io", 600, NOW);
        let sig = good.rsplit('.').next().unwrap();
        let forged = format!("{header}.{payload}.{sig}");
        assert!(keys.verify(&forged, NOW).is_err());
    }

    #[test]
    fn other_key_is_rejected() {
        let keys = TokenKeys::new(SECRET);
        let other = TokenKeys::new(b"another-secret-another-secret-another!!");
        let token = other.issue(1, "a@x.io", 600, NOW);
        assert_eq!(keys.verify(&token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn hs384_and_hs512_with_the_same_secret_are_rejected() {
        let keys = TokenKeys::new(SECRET);
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign_with(alg, SECRET, &claims_json("1".into(), NOW + 600));
            assert_eq!(keys.verify(&token, NOW), Err(TokenError::WrongAlgorithm), "{alg:?}");
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let keys = TokenKeys::new(SECRET);
        let good = keys.issue(1, "a@x.io", 600, NOW);
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let cases = [
            String::new(),
            "abc".into(),
            "a.b.c".into(),
            "...".into(),
            format!("{head}.{payload}"),
            format!("{head}..{sig}"),
            format!("{head}.{payload}.{sig}.x"),
            format!("{head}.{payload}!.{sig}"),
            format!("{head}.{}.{sig}", b64url(b"not json")),
            format!("{}.{payload}.{sig}", b64url(b"{}")),
        ];
        for case in &cases {
            assert!(keys.verify(case, NOW).is_err(), "accepted {case:?}");
        }
        // A flipped signature character is a bad signature.
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.verify(&tampered, NOW).is_err());
    }

    #[test]
    fn required_claims_and_types() {
        let keys = TokenKeys::new(SECRET);
        let no_exp =
            sign_with(Algorithm::HS256, SECRET, &serde_json::json!({"sub": "1", "email": "a@x.io", "iat": NOW}));
        assert_eq!(keys.verify(&no_exp, NOW), Err(TokenError::MissingClaim("exp")));
        let no_sub =
            sign_with(Algorithm::HS256, SECRET, &serde_json::json!({"email": "a@x.io", "iat": NOW, "exp": NOW + 60}));
        assert_eq!(keys.verify(&no_sub, NOW), Err(TokenError::MissingClaim("sub")));
        let with_aud = sign_with(
            Algorithm::HS256,
            SECRET,
            &serde_json::json!({"sub": "1", "email": "a@x.io", "iat": NOW, "exp": NOW + 60, "aud": "x"}),
        );
        assert!(keys.verify(&with_aud, NOW).is_err());
    }

    #[test]
    fn non_integer_sub_is_rejected() {
        let keys = TokenKeys::new(SECRET);
        for sub in [
            serde_json::json!("abc"),
            serde_json::json!(""),
            serde_json::json!("1.5"),
            serde_json::json!(" 1"),
            serde_json::json!("1 "),
            serde_json::json!("٣"),
            serde_json::json!("+1"),
            serde_json::json!("01"),
            serde_json::json!("0"),
            serde_json::json!("-3"),
            serde_json::json!("99999999999999999999"),
            serde_json::json!(7),
        ] {
            let token = sign_with(Algorithm::HS256, SECRET, &claims_json(sub.clone(), NOW + 60));
            assert!(keys.verify(&token, NOW).is_err(), "accepted sub {sub}");
        }
        let ok = sign_with(Algorithm::HS256, SECRET, &claims_json("7".into(), NOW + 60));
        assert_eq!(keys.verify(&ok, NOW).unwrap().user_id(), Some(7));
        let max = sign_with(Algorithm::HS256, SECRET, &claims_json(i64::MAX.to_string().into(), NOW + 60));
        assert_eq!(keys.verify(&max, NOW).unwrap().user_id(), Some(i64::MAX));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let keys = TokenKeys::new(SECRET);
        let dbg = format!("{keys:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    }

    #[test]
    fn configured_secret_is_used_or_refused_when_short() {
        let dir = TempDir::new();
        let long = "x".repeat(32);
        let (key, source) = load_or_create_secret(Some(&long), &dir.0).unwrap();
        assert_eq!(key, long.as_bytes());
        assert_eq!(source, SecretSource::Configured);
        assert!(!dir.0.exists(), "a configured key must not touch the data dir");

        let short = "short-secret-value-31-bytes-lon";
        assert_eq!(short.len(), 31);
        let err = load_or_create_secret(Some(short), &dir.0).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("SECRET_KEY must be at least 32 bytes; generate one with `openssl rand -hex 32`"),
            "{msg}"
        );
        assert!(!msg.contains(short) && !format!("{err:?}").contains(short));
        assert!(load_or_create_secret(Some(""), &dir.0).is_err());
    }

    #[test]
    fn generated_secret_is_written_0600_and_reused() {
        let dir = TempDir::new();
        let nested = dir.0.join("data");
        let (key, source) = load_or_create_secret(None, &nested).unwrap();
        assert_eq!(source, SecretSource::Generated);
        assert_eq!(key.len(), 64);
        assert!(key.iter().all(|b| b.is_ascii_hexdigit()));
        let path = nested.join(SECRET_FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&nested).unwrap().count(), 1);

        let (again, source) = load_or_create_secret(None, &nested).unwrap();
        assert_eq!(source, SecretSource::File);
        assert_eq!(again, key);

        // A generated key is usable as SECRET_KEY verbatim.
        let as_str = String::from_utf8(key.clone()).unwrap();
        let (configured, _) = load_or_create_secret(Some(&as_str), &nested).unwrap();
        assert_eq!(configured, key);
    }

    #[test]
    fn concurrent_generation_agrees_on_one_key() {
        let dir = TempDir::new();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = dir.0.clone();
                std::thread::spawn(move || load_or_create_secret(None, &d).unwrap())
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let first = &results[0].0;
        assert!(results.iter().all(|(k, _)| k == first));
        let generated = results.iter().filter(|(_, s)| *s == SecretSource::Generated).count();
        assert_eq!(generated, 1);
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_is_read_trimmed_and_short_file_refused() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(SECRET_FILE_NAME);
        let content = format!("  {}\n", "k".repeat(40));
        fs::write(&path, &content).unwrap();
        let (key, source) = load_or_create_secret(None, &dir.0).unwrap();
        assert_eq!(source, SecretSource::File);
        assert_eq!(key, "k".repeat(40).as_bytes());

        fs::write(&path, "tooshort-secret\n").unwrap();
        let err = load_or_create_secret(None, &dir.0).unwrap_err();
        assert!(matches!(err, SecretError::FileTooShort { .. }));
        let msg = err.to_string();
        assert!(msg.contains("openssl rand -hex 32"), "{msg}");
        assert!(!msg.contains("tooshort-secret") && !format!("{err:?}").contains("tooshort"));
    }

    #[test]
    fn unwritable_data_dir_is_a_clear_error() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        // A regular file where the data directory should be.
        let blocker = dir.0.join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let err = load_or_create_secret(None, &blocker.join("data")).unwrap_err();
        assert!(matches!(err, SecretError::Io { .. }));
        assert!(err.to_string().contains("SECRET_KEY"), "{err}");
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn b64url_helper_matches_jwt_encoding() {
        // The helper must agree with what jsonwebtoken emits for the standard header.
        let token = TokenKeys::new(SECRET).issue(1, "a@x.io", 60, NOW);
        let head = token.split('.').next().unwrap();
        assert_eq!(b64url(br#"{"typ":"JWT","alg":"HS256"}"#), head);
    }
}
