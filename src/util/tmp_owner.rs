//! Temp files that say whose they are, so that several server processes (instances sharing one
//! `UPLOAD_DIR`, or a restart after a crash) can tell a live upload's temp file from an orphan.
//!
//! Each process picks an owner tag at start, `<pid>-<8 random hex>`, names its temp files
//! `<tag>.<name>` and holds an exclusive `flock` on `<tag>.lock` in the same folder for as long
//! as it lives. The kernel drops the lock when the process dies, however it dies. At start
//! (`claim`), every `<tag>.lock` that can be locked belongs to a dead process: its temp files and
//! the lock file are removed. Temp files of live owners are left alone; files of no known owner
//! (older versions) are removed once older than an hour. At a clean exit (`remove_own`) the
//! process removes its own, including those of uploads interrupted by the end of the shutdown
//! grace.
//!
//! Locks are `flock(2)`: sound between processes on one machine; over NFS it depends on the
//! mount (Linux maps it to POSIX locks on NFSv4). Must never: remove a file whose owner's lock
//! is held by someone.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::warn;

/// This process's tag, and the lock file whose `flock` it holds for the life of the process.
static TAG: OnceLock<String> = OnceLock::new();
static LOCK: OnceLock<File> = OnceLock::new();

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own, with constant flags; it only changes lock state.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn new_tag() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("{}-{:08x}", std::process::id(), u32::from_be_bytes(b))
}

/// This process's owner tag (made on first use).
pub fn tag() -> &'static str {
    TAG.get_or_init(new_tag)
}

/// The temp file name for `name`, owned by this process.
pub fn temp_name(name: &str) -> String {
    format!("{}.{name}", tag())
}

/// At start: take this process's lock in `dir` (creating it), and remove what dead owners left.
/// `Err` when `dir` cannot be created or written: no upload could be stored (the caller refuses
/// to start, as it does for a `DATA_DIR` it cannot write).
pub fn claim(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let lock = File::options().create(true).truncate(false).write(true).open(dir.join(format!("{}.lock", tag())))?;
    if try_lock(&lock) {
        let _ = LOCK.set(lock);
    } else {
        warn!("cannot lock this process's upload temp tag; its temp files may be swept by another instance");
    }
    sweep(dir);
    Ok(())
}

/// Remove the temp files of owners that are gone (and ownerless ones older than an hour).
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    let mine = tag();
    let mut dead: Vec<&str> = Vec::new();
    let mut live: Vec<&str> = vec![mine];
    for n in &names {
        let Some(owner) = n.strip_suffix(".lock") else { continue };
        if owner == mine {
            continue;
        }
        match File::options().write(true).open(dir.join(n)) {
            // Lockable: its process is gone. (We hold the lock while removing its files.)
            Ok(f) if try_lock(&f) => dead.push(owner),
            _ => live.push(owner),
        }
    }
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    for n in &names {
        let owner = n.split('.').next().unwrap_or_default();
        let remove = if dead.contains(&owner) {
            !n.ends_with(".lock")
        } else if live.contains(&owner) {
            false
        } else {
            fs::metadata(dir.join(n)).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff)
        };
        if remove {
            if let Err(e) = fs::remove_file(dir.join(n)) {
                warn!("cannot remove a stale upload temp file: {e}");
            }
        }
    }
    for owner in dead {
        let _ = fs::remove_file(dir.join(format!("{owner}.lock")));
    }
}

/// At exit: remove this process's temp files (uploads cut short by the end of the grace) and
/// its lock file.
pub fn remove_own(dir: &Path) {
    let Some(tag) = TAG.get() else { return };
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = format!("{tag}.");
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name != format!("{tag}.lock") {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_file(dir.join(format!("{tag}.lock")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owners_are_swept_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("adc-tmpowner-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A live owner: its lock is held (by this test, standing in for another process).
        fs::write(dir.join("1-live.lock"), b"").unwrap();
        let held = File::options().write(true).open(dir.join("1-live.lock")).unwrap();
        assert!(try_lock(&held));
        fs::write(dir.join("1-live.abc.bin"), b"x").unwrap();
        // A dead owner: a lock file nobody holds.
        fs::write(dir.join("2-dead.lock"), b"").unwrap();
        fs::write(dir.join("2-dead.def.bin"), b"x").unwrap();
        // No owner, fresh: kept (an older version's upload may be running).
        fs::write(dir.join("0123abcd.bin"), b"x").unwrap();
        claim(&dir).unwrap();
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        let me = format!("{}.lock", tag());
        let mut want = vec!["0123abcd.bin".to_string(), "1-live.abc.bin".into(), "1-live.lock".into(), me];
        want.sort();
        assert_eq!(left, want);
        assert!(temp_name("x.bin").starts_with(&format!("{}.", tag())));
        fs::write(dir.join(temp_name("mine.bin")), b"x").unwrap();
        remove_own(&dir);
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["0123abcd.bin", "1-live.abc.bin", "1-live.lock"]);
        drop(held);
        let _ = fs::remove_dir_all(&dir);
    }
}
