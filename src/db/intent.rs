//! Upload intents: what makes "a rejected or interrupted upload leaves no file and no record
//! behind" hold across a crash (`kill -9`, power loss) between moving an upload into its category
//! folder and making its record durable.
//!
//! An upload's commit (`api::files::commit`) writes, before its first `rename` out of
//! `UPLOAD_DIR/.tmp/`, an intent to this instance's `DATA_DIR/intents/<32 hex>.json`: the records
//! the request's files will get (`{"records": [<spooled record>...]}`, the journal's form, which
//! names each file's category and stored name). The intent is `fsync`ed, and its folder, before
//! the rename; it is removed once the records are durable (the database transaction committed,
//! or the spool line `fdatasync`ed) or once a failed commit has removed its files again.
//!
//! An intent still there at start was left by a commit that died on the way. `open` takes those
//! (and only those: intents written by this process are never resolved by it); `resolve` decides
//! each record: in this instance's spool, or in the database → the file stays (the upload was
//! committed; only its intent was not removed); in neither → the file is removed (it may not be
//! there at all: the crash came before the rename). The spool is read before the database is
//! asked, so a replay moving a record from one to the other meanwhile is seen in one or the other.
//! The database is asked by inserting a probe row with the same `filename` (`ON CONFLICT DO
//! NOTHING`, then rolled back): unlike a `SELECT`, it waits for a transaction of the dead process
//! still open on the server (its `COMMIT` may be in flight), so a record cannot appear after the
//! file was removed. The wait is bounded (`lock_timeout`); an intent that cannot be decided (the
//! database is away, a lock held) stays and is tried again when the database is (back) up — until
//! then its file is served but not listed, as before the fix.
//!
//! A file is only ever removed on the strength of an intent in this instance's own `DATA_DIR`,
//! naming a stored name this instance drew (128 random bits): never because this instance has
//! no record of a file, so a file another instance sharing `UPLOAD_DIR` is committing, or holds
//! in its spool, is never touched. An intent that does not parse was cut short before its
//! `fsync`, so no rename followed it: it is removed alone.
//!
//! Test hook (debug builds only; release builds do not read it): `ADCLUSTER_TEST_CRASH_AT` =
//! `before-rename`, `after-rename` or `after-record` makes the process `SIGKILL` itself at that
//! point of an upload's commit ([`crash_point`]).
//! Must never: remove a file not named by one of this instance's leftover intents, remove a file
//! outside `UPLOAD_DIR/<category>/`, remove a file whose record is in the database or the spool,
//! or resolve an intent of an upload still in progress.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::files::{is_plain_name, FileRecord, CATEGORIES};
use super::spool::SpooledRecord;
use super::DbError;
use crate::{info, warn};

/// The folder in `DATA_DIR`.
pub const DIR: &str = "intents";

/// Longest the probe of one record waits for a lock held by a transaction still open.
const PROBE_LOCK_TIMEOUT: &str = "2s";

/// An intent file's content.
#[derive(Debug, Serialize, Deserialize)]
struct IntentFile {
    records: Vec<SpooledRecord>,
}

/// One commit's intent, written; [`Intents::clear`] removes it.
#[must_use = "an intent must be cleared once its records are durable"]
#[derive(Debug)]
pub struct Intent {
    path: PathBuf,
}

/// The intents of this instance (see the module doc).
pub struct Intents {
    dir: PathBuf,
    upload_dir: PathBuf,
    /// Intents left by an earlier process, not yet resolved.
    pending: Mutex<Vec<PathBuf>>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn new_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What became of one record.
enum Verdict {
    Kept,
    Removed,
    Undecided,
}

impl Intents {
    /// Open (or create) `data_dir/intents/`, taking the intents left there as pending.
    pub fn open(data_dir: &Path, upload_dir: &Path) -> io::Result<Intents> {
        let dir = data_dir.join(DIR);
        fs::create_dir_all(&dir)?;
        let mut pending: Vec<PathBuf> = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        pending.sort();
        if !pending.is_empty() {
            info!(
                "upload intents: {} left by a server that stopped in the middle of an upload; resolving them",
                pending.len()
            );
        }
        Ok(Intents { dir, upload_dir: upload_dir.to_path_buf(), pending: Mutex::new(pending) })
    }

    /// Intents left by an earlier process and not resolved yet.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Write the intent of a commit of `records`, durably, before its first rename.
    pub fn write(&self, records: &[FileRecord]) -> io::Result<Intent> {
        let body = IntentFile { records: records.iter().map(SpooledRecord::from_record).collect() };
        let bytes = serde_json::to_vec(&body).map_err(io::Error::other)?;
        let path = self.dir.join(format!("{}.json", new_id()?));
        let written = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
            .and_then(|_| sync_dir(&self.dir));
        match written {
            Ok(()) => Ok(Intent { path }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Remove an intent whose records are durable, or whose files were removed again. Not synced:
    /// an intent that comes back after a power loss is resolved by what is found then.
    pub fn clear(&self, intent: Intent) {
        if let Err(e) = fs::remove_file(&intent.path) {
            warn!("cannot remove the upload intent {}: {e}", intent.path.display());
        }
    }

    /// Resolve the pending intents: each record found in `spooled` (the stored names in this
    /// instance's spool, read just before) or in the database (`db`, when there is one) keeps its
    /// file; one in neither has its file removed. Intents not decided (no `db`, a database error)
    /// stay pending. Returns how many stay.
    pub fn resolve(&self, spooled: &HashSet<String>, mut db: Option<&mut postgres::Client>) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut left = Vec::new();
        for path in pending.drain(..) {
            let intent = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<IntentFile>(&bytes).ok(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!("upload intents: cannot read {}: {e}", path.display());
                    left.push(path);
                    continue;
                }
            };
            let Some(intent) = intent else {
                // Cut short before its fsync: no rename followed.
                info!("upload intents: {} is incomplete (no file was moved after it); removing it", path.display());
                let _ = fs::remove_file(&path);
                continue;
            };
            let mut decided = true;
            for r in &intent.records {
                match self.resolve_one(r, spooled, db.as_deref_mut()) {
                    Verdict::Kept | Verdict::Removed => {}
                    Verdict::Undecided => decided = false,
                }
            }
            if decided {
                if let Err(e) = fs::remove_file(&path) {
                    warn!("upload intents: cannot remove {}: {e}", path.display());
                }
            } else {
                left.push(path);
            }
        }
        *pending = left;
        pending.len()
    }

    fn resolve_one(&self, r: &SpooledRecord, spooled: &HashSet<String>, db: Option<&mut postgres::Client>) -> Verdict {
        if !CATEGORIES.contains(&r.category.as_str()) || !is_plain_name(&r.filename) {
            warn!("upload intents: a record names no stored file ({:?}/{:?}); ignored", r.category, r.filename);
            return Verdict::Kept;
        }
        if spooled.contains(&r.filename) {
            return Verdict::Kept;
        }
        let Some(c) = db else { return Verdict::Undecided };
        match recorded(c, &r.filename) {
            Ok(true) => Verdict::Kept,
            Ok(false) => {
                let path = self.upload_dir.join(&r.category).join(&r.filename);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        info!(
                            "upload intents: removed {} (its upload was interrupted before its record was written)",
                            path.display()
                        );
                        // Durable before the intent goes.
                        let _ = sync_dir(&self.upload_dir.join(&r.category));
                        Verdict::Removed
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::Removed,
                    Err(e) => {
                        warn!("upload intents: cannot remove {}: {e}", path.display());
                        Verdict::Undecided
                    }
                }
            }
            Err(e) => {
                warn!("upload intents: cannot ask the database about {}: {e}", r.filename);
                Verdict::Undecided
            }
        }
    }
}

/// Whether the database has (or, waiting for a transaction still open, gets) a record named
/// `filename`: a probe insert that conflicts with it, always rolled back.
pub fn recorded(c: &mut postgres::Client, filename: &str) -> Result<bool, DbError> {
    let mut tx = c.transaction()?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{PROBE_LOCK_TIMEOUT}'"))?;
    let inserted = tx.execute(
        "INSERT INTO uploads (filename, original_filename, category, size, content_type, sha256) \
         VALUES ($1, '', 'files', 0, '', '') ON CONFLICT (filename) DO NOTHING",
        &[&filename],
    )?;
    tx.rollback()?;
    Ok(inserted == 0)
}

/// Debug builds only: `SIGKILL` this process when `ADCLUSTER_TEST_CRASH_AT` names `point`
/// (`before-rename`, `after-rename`, `after-record`), so a test can crash an upload's commit
/// exactly there.
#[cfg(debug_assertions)]
pub fn crash_point(point: &str) {
    if std::env::var("ADCLUSTER_TEST_CRASH_AT").is_ok_and(|v| v == point) {
        crate::error!("test hook ADCLUSTER_TEST_CRASH_AT: killing this process at {point}");
        // SAFETY: kill(2) on our own pid, as `kill -9` from outside would.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Release builds: no test hook.
#[cfg(not(debug_assertions))]
pub fn crash_point(_point: &str) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn record(category: &str, name: &str) -> FileRecord {
        FileRecord {
            filename: name.into(),
            original_filename: "a.txt".into(),
            category: category.into(),
            size: 1,
            content_type: "text/plain".into(),
            sha256: "00".into(),
            uploader_id: None,
            uploaded_at: SystemTime::now(),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("adc-intent-{tag}-{}-{}", std::process::id(), new_id().unwrap()));
        fs::create_dir_all(d.join("uploads").join("documents")).unwrap();
        d
    }

    #[test]
    fn only_leftovers_are_resolved_and_the_spool_keeps_files_without_a_database() {
        let dir = tempdir("spool");
        let (data, up) = (dir.join("data"), dir.join("uploads"));
        let first = Intents::open(&data, &up).unwrap();
        let kept = record("documents", "kept.txt");
        let orphan = record("documents", "orphan.txt");
        for r in [&kept, &orphan] {
            fs::write(up.join("documents").join(&r.filename), b"x").unwrap();
        }
        let _leftover = first.write(&[kept.clone(), orphan.clone()]).unwrap();
        fs::write(data.join(DIR).join("torn.json"), b"{\"records\":[{\"filen").unwrap();
        // This process's own intents are never pending.
        assert_eq!(first.pending(), 0);
        drop(first);
        // The next process: the spool has `kept`, there is no database: `orphan` waits.
        let next = Intents::open(&data, &up).unwrap();
        assert_eq!(next.pending(), 2);
        let spooled: HashSet<String> = [kept.filename.clone()].into();
        assert_eq!(next.resolve(&spooled, None), 1);
        assert!(up.join("documents").join("kept.txt").exists());
        assert!(up.join("documents").join("orphan.txt").exists(), "no database: nothing decided");
        assert!(!data.join(DIR).join("torn.json").exists(), "an incomplete intent is dropped");
        let _mine = next.write(&[record("documents", "in-flight.txt")]).unwrap();
        assert_eq!(next.pending(), 1, "an intent of this process is not a leftover");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_database_decides_what_the_spool_does_not_hold() {
        let db = crate::db::pool::tests::TestDb::new("intent");
        let mut c = db.create_and_connect();
        crate::db::migrate::migrate(&mut c).unwrap();
        let dir = tempdir("db");
        let (data, up) = (dir.join("data"), dir.join("uploads"));
        let recorded_one = record("documents", "recorded.txt");
        let orphan = record("documents", "orphan.txt");
        let never_moved = record("images", "never-moved.png");
        for r in [&recorded_one, &orphan] {
            fs::write(up.join("documents").join(&r.filename), b"x").unwrap();
        }
        {
            let mut tx = c.transaction().unwrap();
            crate::db::files::insert_all_in(&mut tx, std::slice::from_ref(&recorded_one)).unwrap();
            tx.commit().unwrap();
        }
        let _ = Intents::open(&data, &up).unwrap().write(&[recorded_one, orphan, never_moved]).unwrap();
        let next = Intents::open(&data, &up).unwrap();
        assert_eq!(next.resolve(&HashSet::new(), Some(&mut c)), 0);
        assert!(up.join("documents").join("recorded.txt").exists());
        assert!(!up.join("documents").join("orphan.txt").exists());
        assert_eq!(fs::read_dir(data.join(DIR)).unwrap().count(), 0, "resolved intents are removed");
        let n: i64 = c.query_one("SELECT count(*) FROM uploads", &[]).unwrap().get(0);
        assert_eq!(n, 1, "the probe leaves no row");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_probe_waits_for_a_transaction_still_open() {
        let db = crate::db::pool::tests::TestDb::new("intent_wait");
        let mut c = db.create_and_connect();
        crate::db::migrate::migrate(&mut c).unwrap();
        let mut other = db.cfg.pg_config().unwrap().connect(postgres::NoTls).unwrap();
        // A commit in flight: inserted, not committed yet; it commits while the probe waits.
        let mut tx = other.transaction().unwrap();
        crate::db::files::insert_all_in(&mut tx, &[record("documents", "late.txt")]).unwrap();
        let probe = std::thread::spawn(move || recorded(&mut c, "late.txt").unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
        tx.commit().unwrap();
        assert!(probe.join().unwrap(), "the probe saw the record committed while it waited");
    }
}
