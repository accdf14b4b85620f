//! `adcluster backup [--all] [--output FILE] [--keep N]`: a plain-SQL backup of the database
//! (`pg_dump --clean --if-exists`) or, with `--all`, of the whole cluster (`pg_dumpall`), to
//! `BACKUP_DIR/full_backup_YYYY-MM-DD_HHMMSS.sql` (UTC) or FILE; the path on standard output.
//!
//! The file appears only when complete: pg_dump writes into a hidden temporary name in
//! the same folder (`.full_backup_....sql.partial-PID`, mode 0600: a backup holds password
//! hashes), followed by one last comment line `-- adcluster backup: sha256=HEX bytes=N` (the
//! checksum of everything above it, which `restore` checks before it touches the database),
//! fsync'd, linked to its final name (never over an existing file: the name is claimed only
//! then, and when backups started in the same second have it, the next of `..._HHMMSS_01.sql`,
//! `_02`, ...: see `link_new_backup`) and the folder fsync'd. A
//! failure or an interruption (SIGINT/SIGTERM/SIGHUP: see `interrupt.rs`) removes the temporary
//! file; one left by a `kill -9` is hidden from `restore` and `--keep`, and removed by the next
//! run once its process is gone.
//!
//! `--keep N` then deletes all but the newest N backups in `BACKUP_DIR` (by name, which sorts by
//! time). Every run that gets past its arguments appends one line to `BACKUP_DIR/backup.log`
//! (`backup_log_line`).
//!
//! Must never: leave a partial file under a backup's name, overwrite a backup, or show the
//! database password (see `pgtools.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::interrupt::Guard;
use super::pgtools::{self, shell_quote};
use super::OpsError;
use crate::config::Config;

pub const HELP: &str = "\
adcluster backup — a plain-SQL backup of the database

USAGE:
    adcluster backup [--all] [--output FILE] [--keep N] [SETTINGS FLAGS]

Writes BACKUP_DIR/full_backup_YYYY-MM-DD_HHMMSS.sql (UTC) with pg_dump, and prints its path;
backups started in the same second get ..._HHMMSS_01.sql, _02, ... (none is ever replaced).
The file appears only when complete; a failed or interrupted backup leaves nothing behind.
Uses the server's settings (.env, environment, flags: DATABASE_URL or DB_*, BACKUP_DIR); the
password reaches pg_dump through its environment, never its command line.

OPTIONS:
    --all            back up the whole cluster (every database and the roles) with pg_dumpall
    --output FILE    write FILE instead (its folder must exist; an existing file is not replaced)
    --keep N         afterwards delete all but the newest N backups in BACKUP_DIR (N >= 1)
    -h, --help       print this text

pg_dump/pg_dumpall: the one on PATH when its major version is at least the server's, else the
newest under /usr/lib/postgresql/*/bin.
Each run appends one line to BACKUP_DIR/backup.log.
Exit codes: 0 success, 1 the backup failed, 2 bad usage. Settings: see `adcluster --help`.
";

/// Names of backups: `full_backup_<...>.sql`.
pub const PREFIX: &str = "full_backup_";
pub const SUFFIX: &str = ".sql";
/// The last line of a backup written by us, before `sha256=`.
pub const TRAILER_PREFIX: &str = "-- adcluster backup: ";
/// The per-run log in `BACKUP_DIR`.
pub const LOG_NAME: &str = "backup.log";

/// The command line of `backup`, apart from the settings flags.
#[derive(Debug, Default, PartialEq)]
pub struct Args {
    pub all: bool,
    pub output: Option<PathBuf>,
    pub keep: Option<usize>,
    pub help: bool,
}

/// Take our flags out of `args`; the rest are settings flags (or mistakes) for `Config::load`.
pub fn parse_args(args: &[String]) -> Result<(Args, Vec<String>), OpsError> {
    let mut a = Args::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| OpsError::usage(format!("{flag} needs a value")))
        };
        match name {
            // Switches: `--all=false` must not make a whole-cluster dump.
            "--all" | "--help" if inline.is_some() => {
                return Err(OpsError::usage(format!("{name} takes no value (give it or leave it out)")))
            }
            "--all" => a.all = true,
            "-h" | "--help" => a.help = true,
            "--output" | "-o" => {
                let v = value("--output")?;
                if v.is_empty() {
                    return Err(OpsError::usage("--output needs a file name"));
                }
                a.output = Some(PathBuf::from(v));
            }
            "--keep" => {
                let v = value("--keep")?;
                match v.parse::<usize>() {
                    Ok(n) if n >= 1 => a.keep = Some(n),
                    _ => return Err(OpsError::usage(format!("--keep {v:?}: expected a whole number of at least 1"))),
                }
            }
            _ => rest.push(arg.clone()),
        }
    }
    Ok((a, rest))
}

/// `full_backup_2026-12-01_200102.sql` for that instant (UTC).
pub fn backup_name(t: SystemTime) -> String {
    let s = crate::util::time::rfc3339(t); // 2026-12-01T20:01:02.123456Z
    format!("{PREFIX}{}_{}{}{}{SUFFIX}", &s[..10], &s[11..13], &s[14..16], &s[17..19])
}

/// Whether a file name is a backup (`full_backup_*.sql`, not hidden, not a temporary file).
pub fn is_backup_name(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX) && name.len() > PREFIX.len() + SUFFIX.len()
}

/// The backups in `dir`, oldest first (by name: the timestamp sorts). Regular files only.
pub fn list_backups(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_backup_name(name) && entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Of `backups` (oldest first), the ones `--keep n` deletes.
pub fn beyond_keep(backups: &[PathBuf], n: usize) -> &[PathBuf] {
    &backups[..backups.len().saturating_sub(n)]
}

/// The last line of a backup: the checksum and length of everything before it.
pub fn trailer(sha256_hex: &str, bytes: u64) -> String {
    format!("{TRAILER_PREFIX}sha256={sha256_hex} bytes={bytes}\n")
}

/// One line of `backup.log`: time, command, file, size, duration, result.
pub fn backup_log_line(
    at: SystemTime,
    command: &str,
    file: Option<&Path>,
    size: Option<u64>,
    took: Duration,
    result: &str,
) -> String {
    let one_line: String = result.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "{} {command} file={} size={} duration={:.3}s result={one_line}\n",
        crate::util::time::rfc3339(at),
        file.map(|f| shell_quote(&f.display().to_string())).unwrap_or_else(|| "-".into()),
        size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        took.as_secs_f64(),
    )
}

/// Append one line to `dir/backup.log` (created when missing). A log that cannot be written is
/// reported on standard error and does not change the command's result.
pub fn append_log(dir: &Path, line: &str) {
    let path = dir.join(LOG_NAME);
    let res = fs::create_dir_all(dir)
        .and_then(|_| OpenOptions::new().create(true).append(true).open(&path))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        eprintln!("warning: cannot append to {}: {e}", path.display());
    }
}

/// fsync a directory, so a rename or an unlink inside it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?.sync_all()
}

/// A temporary file removed on drop unless `keep` was called.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `.NAME.partial-PID` beside `final_path`.
fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    final_path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Remove `.full_backup_*.partial-PID` files in `dir` whose process is gone (a `kill -9`
/// during an earlier backup).
fn sweep_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".partial-")).map(|(_, p)| p.to_string())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && fs::remove_file(entry.path()).is_ok() {
            eprintln!("removed {} (left by an interrupted backup)", entry.path().display());
        }
    }
}

/// `backup`: parse, run, log, print.
pub fn run(args: &[String]) -> Result<(), OpsError> {
    let (a, rest) = parse_args(args)?;
    if a.help {
        print!("{HELP}");
        return Ok(());
    }
    let cfg = super::load_config(&rest)?;
    let guard = Guard::install().map_err(|e| OpsError::failed(format!("cannot set up signal handling: {e}")))?;
    let started = Instant::now();
    let at = SystemTime::now();
    let command = if a.all { "backup --all" } else { "backup" };
    let result = backup(&cfg, &a, &guard);
    let (file, size) = match &result {
        Ok((p, s)) => (Some(p.as_path()), Some(*s)),
        Err(_) => (a.output.as_deref(), None),
    };
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("failed: {}", e.message),
    };
    append_log(&cfg.backup_dir, &backup_log_line(at, command, file, size, started.elapsed(), &outcome));
    let (path, _) = result?;
    println!("{}", super::shown(&path).display());
    if let Some(n) = a.keep {
        prune(&cfg.backup_dir, n, a.all)?;
    }
    Ok(())
}

/// Delete all but the newest `n` backups in `dir` of the kind just written: whole-cluster dumps
/// (`--all`) and database backups are kept apart, so that an occasional `--all --keep 1` cannot
/// delete the nightly database backups (`restore`, which takes the newest database backup,
/// would then find none), nor a nightly `--keep 14` the cluster dumps.
fn prune(dir: &Path, n: usize, cluster: bool) -> Result<(), OpsError> {
    let all = list_backups(dir).map_err(|e| OpsError::failed(format!("--keep: cannot list {}: {e}", dir.display())))?;
    let same_kind: Vec<PathBuf> = all.into_iter().filter(|p| super::restore::is_cluster_dump(p) == cluster).collect();
    for old in beyond_keep(&same_kind, n) {
        fs::remove_file(old).map_err(|e| OpsError::failed(format!("--keep: cannot delete {}: {e}", old.display())))?;
        eprintln!("deleted {} (--keep {n})", old.display());
    }
    sync_dir(dir).map_err(|e| OpsError::failed(format!("--keep: cannot sync {}: {e}", dir.display())))
}

/// The backup itself: the final path and its size.
fn backup(cfg: &Config, a: &Args, guard: &Guard) -> Result<(PathBuf, u64), OpsError> {
    fs::create_dir_all(&cfg.backup_dir)
        .map_err(|e| OpsError::failed(format!("cannot create BACKUP_DIR {}: {e}", cfg.backup_dir.display())))?;
    let dbc = super::db_config(cfg);
    let program = if a.all { "pg_dumpall" } else { "pg_dump" };
    let env = pgtools::child_env(&dbc).map_err(OpsError::failed)?;
    let (server, exists) = pgtools::server_version(&dbc).map_err(OpsError::failed)?;
    if !exists {
        return Err(OpsError::failed(format!("the database {} does not exist; nothing to back up", dbc.describe())));
    }
    // The PATH one is run without asking its version first: pg_dump itself refuses a server of
    // a newer major version (before writing anything), and then the ones under
    // /usr/lib/postgresql are asked. That saves a `--version` run of Debian's Perl wrapper
    // (~90 ms) on every backup.
    let mut tool_path = match pgtools::path_candidate(program) {
        Some(p) => p,
        None => pgtools::fallback(program, &server, None, &env).map_err(OpsError::failed)?.path,
    };
    let mut fell_back = false;

    let wanted = match &a.output {
        Some(p) => {
            if p.exists() {
                return Err(OpsError::failed(format!(
                    "{} already exists; remove it or choose another --output",
                    p.display()
                )));
            }
            p.clone()
        }
        // The name's time is when the dump starts (its snapshot); the name itself is claimed
        // only at the end (`link_new_backup`), so backups started in the same second all finish.
        None => cfg.backup_dir.join(backup_name(SystemTime::now())),
    };
    let dir = wanted.parent().map(Path::to_path_buf).unwrap_or_default();
    sweep_partials(if dir.as_os_str().is_empty() { Path::new(".") } else { &dir });
    let tmp_path = temp_path(&wanted);
    guard.arm();
    let mut tmp = TempFile { path: tmp_path.clone(), armed: false };
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp_path)
    }
    .map_err(|e| OpsError::failed(format!("cannot create {}: {e}", tmp_path.display())))?;
    tmp.armed = true;

    // pg_dump writes straight into the temporary file (a pipe through us was measurably slower);
    // a thread of ours reads the file behind it and hashes what it finds, so the checksum is
    // ready almost when the dump is.
    let (hasher, bytes) = loop {
        eprintln!("using {} for PostgreSQL {} at {}", tool_path.display(), server.text, dbc.describe());
        match dump_once(&tool_path, &env, a.all, &file, &tmp_path, guard)? {
            Dumped::Done(h, n) => break (h, n),
            Dumped::VersionMismatch(reason) => {
                let better = pgtools::fallback(program, &server, Some(&tool_path), &env).map_err(OpsError::failed)?;
                if fell_back || better.path == tool_path {
                    return Err(OpsError::failed(format!("{program} refused the server: {reason}")));
                }
                fell_back = true;
                tool_path = better.path;
                file.set_len(0)
                    .and_then(|_| file.seek(std::io::SeekFrom::Start(0)))
                    .map_err(|e| OpsError::failed(format!("cannot reuse {}: {e}", tmp_path.display())))?;
            }
        }
    };
    if bytes == 0 {
        return Err(OpsError::failed(format!("{program} wrote nothing; no backup was written")));
    }
    if let Some(by) = dumped_by(&tmp_path) {
        eprintln!("dumped by {by}");
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    file.write_all(trailer(&hex, bytes).as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| OpsError::failed(format!("cannot write {}: {e}", tmp_path.display())))?;
    let final_path = match &a.output {
        // An explicit name is the operator's: taken meanwhile, it is not replaced.
        Some(_) => match fs::hard_link(&tmp_path, &wanted) {
            Ok(()) => wanted,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(OpsError::failed(format!("{} appeared meanwhile; not replaced", wanted.display())))
            }
            Err(e) => return Err(OpsError::failed(format!("cannot write {}: {e}", wanted.display()))),
        },
        None => link_new_backup(&tmp_path, &wanted)
            .map_err(|e| OpsError::failed(format!("cannot write {}: {e}", wanted.display())))?,
    };
    drop(tmp); // removes the temporary name; the backup keeps its own
    let size = fs::metadata(&final_path).map(|m| m.len()).unwrap_or(bytes);
    sync_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { &dir })
        .map_err(|e| OpsError::failed(format!("cannot sync {}: {e}", dir.display())))?;
    Ok((final_path, size))
}

/// The most backups that can share one second's name (`full_backup_..._HHMMSS_99.sql`).
pub const MAX_SAME_SECOND: u32 = 99;

/// `full_backup_..._HHMMSS.sql`, or for `n` >= 1 `full_backup_..._HHMMSS_NN.sql`: the names
/// of backups started in the same second. `_` sorts after `.` and before the next second's
/// digits, so by name they stay in order of time (and of `n`), after the plain one.
pub fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    let stem = name.strip_suffix(SUFFIX).unwrap_or(name);
    format!("{stem}_{n:02}{SUFFIX}")
}

/// Give the finished temporary file `tmp` the backup name `wanted` (a `backup_name`) or, when
/// backups started in the same second already have it, the `numbered_name` after the highest
/// of theirs still there (not a gap left by `--keep`: a new backup must sort after the older
/// ones). Each name is claimed with link(2), which fails rather than replace a file: no backup
/// is ever overwritten, and two runs cannot both get one name. Returns the name it got.
fn link_new_backup(tmp: &Path, wanted: &Path) -> std::io::Result<PathBuf> {
    let name = wanted.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let numbered = |n: u32| wanted.with_file_name(numbered_name(&name, n));
    let mut n = (0..=MAX_SAME_SECOND).rev().find(|&n| numbered(n).symlink_metadata().is_ok()).map_or(0, |n| n + 1);
    while n <= MAX_SAME_SECOND {
        match fs::hard_link(tmp, numbered(n)) {
            Ok(()) => return Ok(numbered(n)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("no backup name of that second is left (the last, {}, is taken)", numbered(MAX_SAME_SECOND).display()),
    ))
}

/// How one run of pg_dump ended (other failures are `OpsError`s).
enum Dumped {
    /// The SHA-256 of what it wrote, and how many bytes.
    Done(Sha256, u64),
    /// It refused the server as newer than itself (its message).
    VersionMismatch(String),
}

/// Run `tool` once into `file` (empty, at offset 0), hashing as it writes.
fn dump_once(
    tool: &Path,
    env: &[(&'static str, String)],
    all: bool,
    file: &File,
    tmp_path: &Path,
    guard: &Guard,
) -> Result<Dumped, OpsError> {
    let program = tool.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = file.try_clone().map_err(|e| OpsError::failed(format!("cannot use {}: {e}", tmp_path.display())))?;
    let mut cmd = pgtools::command_for(tool, env);
    if !all {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg("--no-password").stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| OpsError::failed(format!("cannot run {}: {e}", tool.display())))?;
    guard.set_child(Some(child.id()));
    let stderr = collect_stderr(child.stderr.take().expect("piped"));
    let dumped = AtomicBool::new(false);
    let (status, hashed) = std::thread::scope(|s| {
        let hashing = s.spawn(|| hash_growing_file(tmp_path, &dumped));
        let status = child.wait();
        dumped.store(true, Ordering::SeqCst);
        (status, hashing.join().unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked"))))
    });
    let status = status.map_err(|e| OpsError::failed(format!("cannot wait for {program}: {e}")))?;
    guard.set_child(None);
    let stderr = stderr.join().unwrap_or_default();
    if let Some(sig) = guard.interrupted() {
        return Err(OpsError::failed(format!("interrupted by {sig}; no backup was written")));
    }
    if !status.success() {
        if pgtools::is_version_mismatch(&stderr) {
            return Ok(Dumped::VersionMismatch(pgtools::stderr_reason(&stderr)));
        }
        return Err(OpsError::failed(format!(
            "{program} failed ({status}): {}; no backup was written",
            pgtools::stderr_reason(&stderr)
        )));
    }
    let (hasher, bytes) = hashed.map_err(|e| {
        OpsError::failed(format!("cannot read back {}: {e}; no backup was written", tmp_path.display()))
    })?;
    Ok(Dumped::Done(hasher, bytes))
}

/// `pg_dump 15.20` from the dump's own header (`-- Dumped by pg_dump version 15.20 (...)`).
fn dumped_by(path: &Path) -> Option<String> {
    let mut head = vec![0u8; 2048];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    let line = text.lines().find_map(|l| l.strip_prefix("-- Dumped by "))?;
    let mut words = line.split_whitespace();
    let (prog, _, version) = (words.next()?, words.next()?, words.next()?);
    Some(format!("{prog} {version}"))
}

/// SHA-256 and length of a file that another process is still writing: read what is there,
/// wait a moment at its end while `done` is false, and read to the end once it is true.
fn hash_growing_file(path: &Path, done: &AtomicBool) -> std::io::Result<(Sha256, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        // Read `done` before the read: an end of file seen after the writer finished is final.
        let finished = done.load(Ordering::SeqCst);
        match f.read(&mut buf) {
            Ok(0) if finished => return Ok((hasher, bytes)),
            Ok(0) => std::thread::sleep(Duration::from_millis(2)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read a child's standard error on a thread of its own (so a chatty child cannot block on a
/// full pipe while we read its standard output), keeping at most 64 KiB.
pub(crate) fn collect_stderr(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = (64 * 1024usize).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keep_counts_database_backups_and_cluster_dumps_apart() {
        // Found by a probe: `backup --all --keep 1` deleted the only database backup, and
        // `restore` then found none.
        let dir = std::env::temp_dir().join(format!("adc-backup-unit-keep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (db, cluster) = ("--\n-- PostgreSQL database dump\n", "--\n-- PostgreSQL database cluster dump\n");
        for (day, head) in [(1, db), (2, cluster), (3, db), (4, cluster), (5, db)] {
            fs::write(dir.join(format!("full_backup_2026-01-0{day}_000000.sql")), head).unwrap();
        }
        let names = || -> Vec<String> {
            list_backups(&dir)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy()[20..22].into())
                .collect()
        };
        prune(&dir, 1, true).unwrap();
        assert_eq!(names(), ["01", "03", "04", "05"], "only the older cluster dump goes");
        prune(&dir, 2, false).unwrap();
        assert_eq!(names(), ["03", "04", "05"], "only the oldest database backup goes");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arguments() {
        for switch in ["--all=false", "--all=true", "--help=no"] {
            assert!(parse_args(&strings(&[switch])).is_err(), "{switch} accepted");
        }
        let (a, rest) = parse_args(&strings(&["--all", "--keep", "3", "--output=x.sql", "--db-name", "d"])).unwrap();
        assert_eq!(a, Args { all: true, output: Some("x.sql".into()), keep: Some(3), help: false });
        assert_eq!(rest, strings(&["--db-name", "d"]));
        for bad in [&["--keep", "0"][..], &["--keep", "x"], &["--keep"], &["--output"], &["--output="]] {
            let e = parse_args(&strings(bad)).unwrap_err();
            assert_eq!(e.code, 2, "{bad:?}");
        }
        assert!(parse_args(&strings(&["-h"])).unwrap().0.help);
    }

    #[test]
    fn names_sort_by_time_and_keep_the_newest() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_678_653);
        assert_eq!(backup_name(t), "full_backup_2026-11-26_073733.sql");
        assert!(is_backup_name("full_backup_2026-11-26_073733.sql"));
        assert!(is_backup_name("full_backup_2023-09-06.sql"), "the seed's names count too");
        assert!(!is_backup_name(".full_backup_2026-11-26_073733.sql.partial-12"));
        assert!(!is_backup_name("full_backup_.sql"));
        assert!(!is_backup_name("backup.log"));
        let older = backup_name(t);
        let newer = backup_name(t + Duration::from_secs(1));
        assert!(older < newer);
        let all: Vec<PathBuf> = ["a1", "a2", "a3", "a4"].iter().map(PathBuf::from).collect();
        assert_eq!(beyond_keep(&all, 2), &all[..2]);
        assert!(beyond_keep(&all, 4).is_empty());
        assert!(beyond_keep(&all, 9).is_empty());
    }

    #[test]
    fn backups_started_in_the_same_second_each_get_a_name_of_their_own_in_order() {
        let dir = std::env::temp_dir().join(format!("adc-backup-names-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_795_678_653);
        let wanted = dir.join(backup_name(t));
        // A backup of that second is already there (another run finished first).
        fs::write(&wanted, "first").unwrap();
        let mut got = Vec::new();
        for i in 0..3 {
            let tmp = dir.join(format!(".tmp{i}"));
            fs::write(&tmp, format!("run {i}")).unwrap();
            got.push(link_new_backup(&tmp, &wanted).unwrap());
            fs::remove_file(&tmp).unwrap();
        }
        let names: Vec<String> = got.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "full_backup_2026-11-26_073733_01.sql",
                "full_backup_2026-11-26_073733_02.sql",
                "full_backup_2026-11-26_073733_03.sql"
            ]
        );
        assert_eq!(fs::read_to_string(&wanted).unwrap(), "first", "never overwritten");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(fs::read_to_string(p).unwrap(), format!("run {i}"));
        }
        // They are backups, listed after the plain name and before the next second's backup,
        // so --keep and restore's "newest" see them in order.
        let next = dir.join(backup_name(t + Duration::from_secs(1)));
        fs::write(&next, "next").unwrap();
        let mut expected = vec![wanted.clone()];
        expected.extend(got.iter().cloned());
        expected.push(next);
        assert_eq!(list_backups(&dir).unwrap(), expected);
        assert!(names.iter().all(|n| is_backup_name(n)));
        assert!(numbered_name(&backup_name(t), 10) > numbered_name(&backup_name(t), 9));
        assert!(numbered_name(&backup_name(t), MAX_SAME_SECOND) < backup_name(t + Duration::from_secs(1)));
        // A name freed by --keep is not reused: the new backup sorts after the ones still there.
        fs::remove_file(&wanted).unwrap();
        fs::remove_file(&got[0]).unwrap();
        let tmp = dir.join(".tmp-gap");
        fs::write(&tmp, "after the gap").unwrap();
        let after_gap = link_new_backup(&tmp, &wanted).unwrap();
        fs::remove_file(&tmp).unwrap();
        assert_eq!(after_gap.file_name().unwrap(), "full_backup_2026-11-26_073733_04.sql");
        assert_eq!(list_backups(&dir).unwrap().iter().rev().nth(1), Some(&after_gap));
        fs::write(&wanted, "first").unwrap();
        // When the second's last name is taken: an error, and still nothing replaced.
        let tmp = dir.join(".tmp-last");
        fs::write(&tmp, "last").unwrap();
        for n in 5..=MAX_SAME_SECOND {
            fs::write(dir.join(numbered_name(&backup_name(t), n)), "taken").unwrap();
        }
        let e = link_new_backup(&tmp, &wanted).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&wanted).unwrap(), "first");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn log_lines_are_one_line() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_678_653);
        let line = backup_log_line(
            t,
            "backup",
            Some(Path::new("dbBackup/full_backup_x.sql")),
            Some(1234),
            Duration::from_millis(1500),
            "failed: pg_dump said\nsomething",
        );
        assert_eq!(
            line,
            "2026-11-26T07:37:33.000000Z backup file=dbBackup/full_backup_x.sql size=1234 duration=1.500s \
             result=failed: pg_dump said something\n"
        );
        let line = backup_log_line(t, "restore", None, None, Duration::ZERO, "refused");
        assert!(line.contains("file=- size=- "), "{line}");
    }

    #[test]
    fn the_trailer_is_a_sql_comment() {
        let t = trailer("ab", 12);
        assert_eq!(t, "-- adcluster backup: sha256=ab bytes=12\n");
        assert!(t.starts_with("--"));
    }
}
