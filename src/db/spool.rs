//! The write-behind spool: upload records that could not be written to PostgreSQL (it was down)
//! wait here, on disk, until it is back (the contract's "Degraded mode": every upload answered
//! `201` appears in `GET /api/files` exactly once, also across `kill -9`).
//!
//! Format: `DATA_DIR/spool/journal.jsonl`, an append-only file of JSON lines, one per upload
//! request: `{"id": "<32 hex digits>", "records": [<file record>...]}` (several records for one
//! `POST /api/upload/multiple`, which is all or nothing). `append` writes the line with one
//! `write` and `fdatasync`s it before returning; only then is the client answered `201`.
//!
//! Replay (`replay`): one replayer at a time (the `spool-replay` thread, woken by the monitor
//! when the database is up and the spool is not empty, and once at start). It reads the lines
//! present when it starts, in order, and writes each entry in a transaction that first
//! claims the entry's id in `spool_applied` (`ON CONFLICT DO NOTHING`): an entry already applied
//! — the replayer was killed after the commit and before the truncation — is skipped, so
//! whatever crashes in between, each entry lands once. Consecutive entries go in batches of up
//! to 64 per transaction (all claimed and written, or none). Records also insert with
//! `ON CONFLICT (filename) DO NOTHING`. Then it truncates what it wrote: the lines appended
//! meanwhile are copied to `journal.tmp`, synced, and renamed over the journal (atomic: after a
//! crash the journal is either the old one, replayed again as no-ops, or the new tail).
//!
//! `spooled_names` lists the stored names in the journal, for `db::intent`, which keeps the file
//! of an interrupted commit whose record made it here.
//!
//! A torn last line (a crash in the middle of an append, whose upload was never answered) is cut
//! off at open with a warning. A line that is not a valid entry is never replayed: it is copied
//! to `spool/rejected.jsonl` for a person to look at, with a warning. A failed append (disk
//! full) is rolled back (`set_len` to the old length) and reported: the upload answers `503`
//! and removes its files.
//!
//! Lock order: `replaying` before `file`. `file` (the append handle, the depth) is held for one
//! append or for the copy of the tail, never across a database call; `replaying` is held by the
//! one replay in progress across its database calls (nobody else waits on it for long: the
//! replayer thread is its only other user).
//! Bound: the journal grows while the database is down, one line (~300 bytes) per file; its size
//! is the uploads' business (they take far more room themselves).
//! Test hook: in debug builds only, `ADCLUSTER_TEST_REPLAY_DELAY_MS` makes the replayer pause
//! that long before each entry and commit each entry on its own, so a test can kill the server in
//! the middle of a replay. Release builds do not read it.
//! Owner: one process per spool folder, held by an `flock` on `spool/.lock` for the life of the
//! process (`take_ownership`); a second server started on the same `DATA_DIR` is refused at
//! start with a message saying so.
//! Must never: answer before the record is on disk, replay a line twice or a torn line ever,
//! hold the append lock across database I/O, or be shared by two processes.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::FileRecord;
use super::DbError;
use crate::{info, warn};

pub const JOURNAL: &str = "journal.jsonl";
pub const REJECTED: &str = "rejected.jsonl";

/// One record as it is kept in the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpooledRecord {
    pub filename: String,
    pub original_filename: String,
    pub category: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
    pub uploaded_by: Option<i64>,
    /// Microseconds since the Unix epoch (PostgreSQL keeps microseconds).
    pub uploaded_at_us: u64,
}

impl SpooledRecord {
    pub fn from_record(r: &FileRecord) -> SpooledRecord {
        let us = r.uploaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        SpooledRecord {
            filename: r.filename.clone(),
            original_filename: r.original_filename.clone(),
            category: r.category.clone(),
            size: r.size,
            content_type: r.content_type.clone(),
            sha256: r.sha256.clone(),
            uploaded_by: r.uploader_id,
            uploaded_at_us: us,
        }
    }

    pub fn to_record(&self) -> FileRecord {
        FileRecord {
            filename: self.filename.clone(),
            original_filename: self.original_filename.clone(),
            category: self.category.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            sha256: self.sha256.clone(),
            uploader_id: self.uploaded_by,
            uploaded_at: UNIX_EPOCH + Duration::from_micros(self.uploaded_at_us),
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// 128 random bits in hex: the entry's idempotency key (`spool_applied.id`).
    pub id: String,
    pub records: Vec<SpooledRecord>,
}

/// A line of the journal, parsed: an entry, or something that is not one.
#[derive(Debug)]
pub enum Line<'a> {
    Entry(Entry),
    Bad(&'a [u8]),
}

/// Split journal bytes into complete lines, each with the offset just past it. A last piece
/// without `\n` is returned separately (a torn append).
pub fn split_lines(bytes: &[u8]) -> (Vec<(Line<'_>, usize)>, Option<&[u8]>) {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(n) = memchr::memchr(b'\n', &bytes[start..]) {
        let end = start + n;
        let raw = &bytes[start..end];
        if !raw.iter().all(u8::is_ascii_whitespace) {
            let line = match serde_json::from_slice::<Entry>(raw) {
                Ok(e) if !e.id.is_empty() && !e.records.is_empty() => Line::Entry(e),
                _ => Line::Bad(raw),
            };
            out.push((line, end + 1));
        }
        start = end + 1;
    }
    let torn = (start < bytes.len()).then(|| &bytes[start..]);
    (out, torn)
}

fn new_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

struct Appender {
    file: File,
    /// A failed append could not be rolled back: start the next one on a fresh line, so the
    /// leftover is a line of its own (rejected at replay), never glued to a good entry.
    dirty_tail: bool,
}

/// The spool (see the module doc).
pub struct Spool {
    dir: PathBuf,
    /// `spool/.lock`, `flock`ed for the life of the process: one process per spool (see `open`).
    _owner: File,
    file: Mutex<Appender>,
    /// Records (not entries) in the journal, waiting for the database.
    depth: AtomicUsize,
    replaying: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    replay_delay: Duration,
}

/// The name of the lock file of a spool folder.
const OWNER_LOCK: &str = ".lock";

/// Take the spool folder for this process: an exclusive `flock` on `dir/.lock` (which the kernel
/// drops when the process dies, however it dies), with our pid written in it for the message of
/// the next one. Two processes on one spool would append, replay and cut one journal at once
/// (and resolve each other's upload intents as a crash's leftovers): the second is refused,
/// with `ErrorKind::WouldBlock` and a message that says what to do.
fn take_ownership(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(OWNER_LOCK);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    // SAFETY: flock on a descriptor we own, with constant flags; it only changes lock state.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(err);
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        let who = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another running adcluster server{who} uses this DATA_DIR; instances cannot share one \
                 (each has its own spool of upload records): give each its own DATA_DIR"
            ),
        ));
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read at most `len` bytes of `path` (a journal replaced by a device reads as empty).
fn read_prefix(path: &Path, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    File::open(path)?.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

impl Spool {
    /// Open (or create) `data_dir/spool/`. Cuts a torn last line, counts what waits.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let dir = data_dir.join("spool");
        fs::create_dir_all(&dir)?;
        let owner = take_ownership(&dir)?;
        let path = dir.join(JOURNAL);
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let len = file.metadata()?.len();
        let bytes = read_prefix(&path, len)?;
        let (lines, torn) = split_lines(&bytes);
        if let Some(torn) = torn {
            warn!(
                "spool: the last line of {} is torn ({} bytes without an end: the server stopped in the middle of \
                 an append, so that upload was never answered); cutting it off",
                path.display(),
                torn.len()
            );
            file.set_len((bytes.len() - torn.len()) as u64)?;
            file.sync_all()?;
        }
        let depth = lines
            .iter()
            .map(|(l, _)| match l {
                Line::Entry(e) => e.records.len(),
                Line::Bad(_) => 0,
            })
            .sum();
        if depth > 0 {
            info!("spool: {depth} upload record(s) wait in {} for the database", path.display());
        }
        let replay_delay = if cfg!(debug_assertions) {
            std::env::var("ADCLUSTER_TEST_REPLAY_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        };
        Ok(Spool {
            dir,
            _owner: owner,
            file: Mutex::new(Appender { file, dirty_tail: false }),
            depth: AtomicUsize::new(depth),
            replaying: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            replay_delay,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    /// Upload records waiting for the database (for `/health` and `/metrics`).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Append one entry holding `records` and make it durable. On error nothing of it remains
    /// (or, if even the roll-back failed, a fragment that replay will reject).
    pub fn append(&self, records: &[FileRecord]) -> io::Result<()> {
        let entry = Entry { id: new_id()?, records: records.iter().map(SpooledRecord::from_record).collect() };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if g.dirty_tail {
            line.insert(0, b'\n');
        }
        let before = g.file.metadata()?.len();
        let written = g.file.write_all(&line).and_then(|_| g.file.sync_data());
        if let Err(e) = written {
            g.dirty_tail = g.file.set_len(before).and_then(|_| g.file.sync_data()).is_err();
            return Err(e);
        }
        g.dirty_tail = false;
        self.depth.fetch_add(records.len(), Ordering::SeqCst);
        Ok(())
    }

    /// The stored names of the records in the journal now (`db::intent` asks before it decides
    /// an interrupted upload's file).
    pub fn spooled_names(&self) -> io::Result<HashSet<String>> {
        let len = {
            let g = self.file.lock().unwrap_or_else(|p| p.into_inner());
            g.file.metadata()?.len()
        };
        let bytes = read_prefix(&self.path(), len)?;
        let (lines, _torn) = split_lines(&bytes);
        Ok(lines
            .into_iter()
            .filter_map(|(l, _)| match l {
                Line::Entry(e) => Some(e.records.into_iter().map(|r| r.filename)),
                Line::Bad(_) => None,
            })
            .flatten()
            .collect())
    }

    /// Wake the replayer.
    pub fn kick(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Wait for a kick (or `timeout`).
    pub fn wait_kick(&self, timeout: Duration) {
        let (lock, cv) = &self.wake;
        let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !*woken {
            woken = cv.wait_timeout(woken, timeout).unwrap_or_else(|p| p.into_inner()).0;
        }
        *woken = false;
    }

    /// Write every entry present now into the database through `c`, then truncate them away.
    /// Returns the number of records written (entries applied before by a killed replayer
    /// count as skipped, not written). On a database error, the entries done so far are
    /// truncated away and the error is returned; the rest waits for the next try.
    pub fn replay(&self, c: &mut postgres::Client) -> Result<usize, DbError> {
        let _one = self.replaying.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path();
        let len = {
            let g = self.file.lock().unwrap_or_else(|p| p.into_inner());
            g.file.metadata().map_err(io_err)?.len()
        };
        if len == 0 {
            return Ok(0);
        }
        let bytes = read_prefix(&path, len).map_err(io_err)?;
        let (lines, _torn) = split_lines(&bytes);
        // Entries go in batches of consecutive entries, one transaction each (a commit per
        // upload would make the replay of a long outage take as many fsyncs as uploads). The test
        // hook makes every entry its own batch, so a kill can land between commits.
        let batch_max = if self.replay_delay.is_zero() { REPLAY_BATCH } else { 1 };
        let mut done = 0usize;
        let mut written = 0usize;
        let mut result = Ok(());
        let mut batch: Vec<&Entry> = Vec::new();
        let mut batch_end = 0usize;
        let mut i = 0;
        while i <= lines.len() {
            let next = lines.get(i);
            let flush = match next {
                Some((Line::Entry(_), _)) => batch.len() >= batch_max,
                _ => !batch.is_empty(),
            };
            if flush {
                if !self.replay_delay.is_zero() {
                    std::thread::sleep(self.replay_delay);
                }
                match apply_batch(c, &batch) {
                    Ok(n) => {
                        written += n;
                        done = batch_end;
                        batch.clear();
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match next {
                Some((Line::Entry(entry), end)) => {
                    batch.push(entry);
                    batch_end = *end;
                }
                Some((Line::Bad(raw), end)) => {
                    self.reject(raw);
                    done = *end;
                }
                None => {}
            }
            i += 1;
        }
        if done > 0 {
            self.truncate_front(done as u64).map_err(io_err)?;
        }
        if written > 0 {
            info!("spool: replayed {written} upload record(s) into the database");
        }
        result.map(|_| written)
    }

    /// Keep a line that is not an entry where a person can find it.
    fn reject(&self, raw: &[u8]) {
        let shown: String = String::from_utf8_lossy(raw).chars().take(80).collect();
        warn!("spool: a line is not a valid entry and is not replayed; kept in {REJECTED}: {shown:?}");
        let kept = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.join(REJECTED))
            .and_then(|mut f| f.write_all(raw).and_then(|_| f.write_all(b"\n")).and_then(|_| f.sync_data()));
        if let Err(e) = kept {
            warn!("spool: cannot keep the rejected line: {e}");
        }
    }

    /// Drop the first `upto` bytes of the journal: copy the rest to a temp file, sync, rename.
    fn truncate_front(&self, upto: u64) -> io::Result<()> {
        let path = self.path();
        let tmp = self.dir.join("journal.tmp");
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let len = g.file.metadata()?.len();
        let tail = if upto < len {
            let mut f = File::open(&path)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(upto))?;
            let mut buf = Vec::new();
            f.take(len - upto).read_to_end(&mut buf)?;
            buf
        } else {
            Vec::new()
        };
        {
            let mut t = File::create(&tmp)?;
            t.write_all(&tail)?;
            t.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        g.file = OpenOptions::new().read(true).append(true).open(&path)?;
        let (lines, _) = split_lines(&tail);
        let left: usize = lines
            .iter()
            .map(|(l, _)| match l {
                Line::Entry(e) => e.records.len(),
                Line::Bad(_) => 0,
            })
            .sum();
        self.depth.store(left, Ordering::SeqCst);
        Ok(())
    }
}

fn io_err(e: io::Error) -> DbError {
    DbError::Config(format!("spool: {e}"))
}

/// Entries per replay transaction.
const REPLAY_BATCH: usize = 64;

/// Apply entries in one transaction; an entry whose id is already claimed (applied before) is
/// skipped. Returns the records written.
fn apply_batch(c: &mut postgres::Client, entries: &[&Entry]) -> Result<usize, DbError> {
    let mut tx = c.transaction()?;
    let mut written = 0;
    for entry in entries {
        let claimed = tx.execute("INSERT INTO spool_applied (id) VALUES ($1) ON CONFLICT DO NOTHING", &[&entry.id])?;
        if claimed == 0 {
            continue;
        }
        let records: Vec<FileRecord> = entry.records.iter().map(SpooledRecord::to_record).collect();
        super::files::insert_all_in(&mut tx, &records)?;
        written += records.len();
    }
    tx.commit()?;
    Ok(written)
}

/// Forget applied ids older than a week (an id is only needed until its line is truncated away,
/// which follows its commit within moments; a week covers any crash and restart).
pub fn prune_applied(c: &mut postgres::Client) -> Result<u64, DbError> {
    Ok(c.execute("DELETE FROM spool_applied WHERE applied_at < now() - interval '7 days'", &[])?)
}

/// The time a record says it was uploaded, rounded to what the journal keeps.
pub fn journal_time(t: SystemTime) -> SystemTime {
    let us = t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    UNIX_EPOCH + Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> FileRecord {
        FileRecord {
            filename: name.into(),
            original_filename: "a.txt".into(),
            category: "documents".into(),
            size: 3,
            content_type: "text/plain".into(),
            sha256: "00".into(),
            uploader_id: Some(7),
            uploaded_at: journal_time(SystemTime::now()),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("adc-spool-{tag}-{}-{}", std::process::id(), new_id().unwrap()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_torn_tails_and_garbage() {
        let good = serde_json::to_string(&Entry {
            id: "ab".into(),
            records: vec![SpooledRecord::from_record(&record("x.txt"))],
        })
        .unwrap();
        let text = format!("{good}\n\nnot json\n{{\"id\":\"\",\"records\":[]}}\n{good}\n{}", &good[..good.len() / 2]);
        let (lines, torn) = split_lines(text.as_bytes());
        assert_eq!(lines.len(), 4);
        assert!(matches!(lines[0].0, Line::Entry(_)));
        assert!(matches!(lines[1].0, Line::Bad(b"not json")));
        assert!(matches!(lines[2].0, Line::Bad(_)), "an entry without records is not an entry");
        assert!(matches!(lines[3].0, Line::Entry(_)));
        assert_eq!(lines[0].1, good.len() + 1);
        assert_eq!(torn.unwrap().len(), good.len() / 2);
        let one = format!("{good}\n");
        let (_, torn) = split_lines(one.as_bytes());
        assert!(torn.is_none());
    }

    #[test]
    fn records_round_trip_through_the_journal() {
        let r = record("abc.txt");
        let back = SpooledRecord::from_record(&r).to_record();
        assert_eq!(back.uploaded_at, r.uploaded_at);
        assert_eq!((back.filename, back.uploader_id, back.size), (r.filename, r.uploader_id, r.size));
    }

    #[test]
    fn append_counts_and_open_cuts_a_torn_tail() {
        let dir = tempdir("open");
        let spool = Spool::open(&dir).unwrap();
        spool.append(&[record("a.txt")]).unwrap();
        spool.append(&[record("b.txt"), record("c.txt")]).unwrap();
        assert_eq!(spool.depth(), 3);
        let names: HashSet<String> = ["a.txt", "b.txt", "c.txt"].map(String::from).into();
        assert_eq!(spool.spooled_names().unwrap(), names);
        let path = spool.path();
        drop(spool);
        let whole = fs::read(&path).unwrap();
        // A crash in the middle of a third append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":\"ff\",\"records\":[{\"filename\":\"d.t").unwrap();
        drop(f);
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.depth(), 3);
        assert_eq!(fs::read(&path).unwrap(), whole, "the torn tail is cut, the rest untouched");
        // The next append starts on its own line.
        spool.append(&[record("e.txt")]).unwrap();
        let bytes = fs::read(&path).unwrap();
        let (lines, torn) = split_lines(&bytes);
        assert!(torn.is_none());
        assert_eq!(lines.iter().filter(|(l, _)| matches!(l, Line::Entry(_))).count(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_writes_each_entry_once_and_truncates_what_it_wrote() {
        let db = crate::db::pool::tests::TestDb::new("spool");
        let mut c = db.create_and_connect();
        crate::db::migrate::migrate(&mut c).unwrap();
        let dir = tempdir("replay");
        let spool = Spool::open(&dir).unwrap();
        let mut a = record("a.txt");
        a.uploader_id = None;
        spool.append(&[a]).unwrap();
        // An uploader that does not exist (any more) is stored as NULL, not refused.
        spool.append(&[record("b.txt"), record("c.txt")]).unwrap();
        let journal = fs::read(spool.path()).unwrap();
        fs::OpenOptions::new().append(true).open(spool.path()).unwrap().write_all(b"garbage\n").unwrap();
        assert_eq!(spool.replay(&mut c).unwrap(), 3);
        assert_eq!(spool.depth(), 0);
        assert_eq!(fs::read(spool.path()).unwrap(), b"");
        assert_eq!(fs::read(dir.join("spool").join(REJECTED)).unwrap(), b"garbage\n");
        // A killed replayer's journal comes back whole: nothing is written twice.
        fs::write(spool.path(), &journal).unwrap();
        drop(spool);
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.depth(), 3);
        assert_eq!(spool.replay(&mut c).unwrap(), 0);
        let n: i64 = c.query_one("SELECT count(*) FROM uploads", &[]).unwrap().get(0);
        assert_eq!(n, 3);
        let by: Option<i64> =
            c.query_one("SELECT uploader_id FROM uploads WHERE filename = 'b.txt'", &[]).unwrap().get(0);
        assert_eq!(by, None);
        let at: SystemTime =
            c.query_one("SELECT uploaded_at FROM uploads WHERE filename = 'a.txt'", &[]).unwrap().get(0);
        assert_eq!(journal_time(at), at, "microseconds survive the journal");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_process_at_a_time_owns_a_spool() {
        let dir = tempdir("owner");
        let first = Spool::open(&dir).unwrap();
        // Another open (another process's, as far as flock is concerned) is refused, naming us.
        let err = Spool::open(&dir).err().expect("a second owner is refused");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let text = err.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("own DATA_DIR"), "{text}");
        // Gone (a process that ended, however it ended): the next one takes it.
        drop(first);
        assert!(Spool::open(&dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_fails_the_append_and_leaves_nothing() {
        let dir = tempdir("full");
        fs::create_dir_all(dir.join("spool")).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.join("spool").join(JOURNAL)).unwrap();
        let spool = Spool::open(&dir).unwrap();
        assert_eq!(spool.depth(), 0);
        let err = spool.append(&[record("a.txt")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert_eq!(spool.depth(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
