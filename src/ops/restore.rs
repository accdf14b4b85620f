//! `adcluster restore [FILE] [--dry-run] [--yes]`: put a database backup back, all or nothing.
//!
//! How (the choice is argued in docs/decisions.md): the backup is `pg_dump --clean --if-exists`
//! plain SQL, and `psql --single-transaction -v ON_ERROR_STOP=1` runs it as ONE transaction in
//! the live database: drop each table, create it, copy the rows, set the sequences, add the
//! constraints, then COMMIT. Any error, or psql dying, rolls everything back. A running server
//! keeps its connections: its queries on the tables being replaced wait for the commit (they
//! are never answered with data from half a restore) and then see the restored rows; its
//! prepared statements are re-planned by PostgreSQL against the new tables.
//!
//! Locks first ([`LOCK_FIRST`]): before the file, in the same transaction, the restore locks every
//! table of the database at once, waiting at most `LOCK_ATTEMPT` for each; when a lock is not
//! free in time (a long transaction elsewhere: a report, a db-gui export) it rolls back, pauses
//! and tries again, for up to `--wait` seconds, and then gives up naming the sessions in the way.
//! Taking the tables one by one as the file drops them would hold some while waiting for
//! others: every request of the server behind the waiting lock stalls for as long as that
//! transaction lasts, and a request that holds one table and wants another deadlocks with it
//! (PostgreSQL then cancels one side: a `500`, or a failed restore).
//!
//! Before the database is touched, the file is checked: a backup written by `adcluster backup`
//! ends with `-- adcluster backup: sha256=HEX bytes=N` and must match it (a flipped byte or a cut
//! file is refused); any other plain-SQL dump must at least end with pg_dump's "dump complete"
//! line (psql would otherwise end a cut COPY at end of file and commit what it had). A
//! whole-cluster dump (`backup --all`) is refused with the command that restores it by hand:
//! it creates databases and roles, which cannot happen inside one transaction.
//!
//! Must never: change the database when the file is damaged or the run is refused; ask on a
//! terminal when `--yes` is given; proceed without a terminal and without `--yes`; hold a table
//! while it waits for another; leave behind a database it created for a restore that failed.

use std::fs::{self, File};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::backup::{self, TRAILER_PREFIX};
use super::interrupt::Guard;
use super::pgtools;
use super::OpsError;
use crate::config::Config;

pub const HELP: &str = "\
adcluster restore — put a backup back into the database, all or nothing

USAGE:
    adcluster restore [FILE] [--dry-run] [--yes] [--wait SECS] [SETTINGS FLAGS]

Restores FILE, or the newest full_backup_*.sql in BACKUP_DIR, into the configured database
(created when missing), in one transaction: afterwards every table holds what it held when the
backup was taken; if anything fails, the database is as it was. A running server keeps serving
and then serves the restored data. The file's checksum is verified first. The restore locks
every table before it changes any; while another session's transaction holds one, it retries
(the server's requests are held at most 0.2 s per try) and gives up after --wait seconds,
naming the sessions in the way.

OPTIONS:
    --dry-run     print the command it would run and the file's size; change nothing
    -y, --yes     do not ask for confirmation (needed when not on a terminal)
    --wait SECS   how long to keep trying to lock the tables (default 60)
    -h, --help    print this text

Whole-cluster backups (backup --all) are not restored by this command: it prints the psql
command that restores one by hand.
Each run appends one line to BACKUP_DIR/backup.log.
Exit codes: 0 success, 1 the restore failed (the database is unchanged), 2 bad usage, refused
(no confirmation) or no backup found. Settings: see `adcluster --help`.
";

/// The command line of `restore`, apart from the settings flags.
#[derive(Debug, PartialEq)]
pub struct Args {
    pub file: Option<PathBuf>,
    pub dry_run: bool,
    pub yes: bool,
    pub help: bool,
    /// `--wait SECS`: how long to keep trying to take the tables' locks.
    pub wait: Duration,
}

impl Default for Args {
    fn default() -> Args {
        Args { file: None, dry_run: false, yes: false, help: false, wait: DEFAULT_LOCK_WAIT }
    }
}

/// The default of `--wait`.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Take our flags out of `args`; the rest go to `Config::load`, whose leftovers are the FILE.
pub fn parse_args(args: &[String]) -> Result<(Args, Vec<String>), OpsError> {
    let mut a = Args::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dry-run" | "-n" => a.dry_run = true,
            "--yes" | "-y" => a.yes = true,
            "--help" | "-h" => a.help = true,
            "--wait" => {
                let v = it.next().ok_or_else(|| OpsError::usage("--wait needs a number of seconds"))?;
                a.wait = parse_wait(v)?;
            }
            _ => match arg.strip_prefix("--wait=") {
                Some(v) => a.wait = parse_wait(v)?,
                None => rest.push(arg.clone()),
            },
        }
    }
    Ok((a, rest))
}

fn parse_wait(v: &str) -> Result<Duration, OpsError> {
    match v.parse::<u64>() {
        Ok(n) if n <= 86_400 => Ok(Duration::from_secs(n)),
        _ => Err(OpsError::usage(format!("--wait {v:?}: expected a whole number of seconds, 0 to 86400"))),
    }
}

/// The longest one try waits for one table's lock: at worst what a request of a running server
/// waits behind a restore that has not yet got all its tables.
pub const LOCK_ATTEMPT_MS: u32 = 200;
/// The pause between two tries: the transaction in the way gets the tables back, and so do the
/// requests queued behind our try.
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// What psql runs before the file, in the same transaction: every ordinary and partitioned table
/// of the database locked `ACCESS EXCLUSIVE` in one statement, waiting at most
/// [`LOCK_ATTEMPT_MS`] for each lock. The file itself sets `lock_timeout` back to 0 (pg_dump
/// writes that), so nothing after this can time out on a lock, and no lock it needs is held by
/// anyone else: none of our tables can be part of a deadlock.
pub fn lock_first() -> String {
    format!(
        "SET lock_timeout = '{LOCK_ATTEMPT_MS}ms'; \
         DO $adcluster_restore$ DECLARE tables text; BEGIN \
         SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid) INTO tables \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'; \
         IF tables IS NOT NULL THEN EXECUTE 'LOCK TABLE ' || tables || ' IN ACCESS EXCLUSIVE MODE'; END IF; \
         END $adcluster_restore$;"
    )
}

/// Whether psql failed because a lock was not free within [`LOCK_ATTEMPT_MS`] (SQLSTATE 55P03).
pub fn is_lock_timeout(stderr: &str) -> bool {
    stderr.contains("canceling statement due to lock timeout")
}

/// What the check of a file found.
#[derive(Debug, PartialEq)]
pub struct FileCheck {
    pub size: u64,
    /// Our checksum line was present and matched (else: pg_dump's end line was present).
    pub checksum: bool,
    /// A `pg_dumpall` dump.
    pub cluster: bool,
}

const CLUSTER_MARK: &[u8] = b"-- PostgreSQL database cluster dump";
const COMPLETE_MARKS: [&[u8]; 2] =
    [b"-- PostgreSQL database dump complete", b"-- PostgreSQL database cluster dump complete"];

/// Whether a file starts like a whole-cluster dump.
pub fn is_cluster_dump(path: &Path) -> bool {
    let mut head = vec![0u8; 512];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    memchr::memmem::find(&head[..n], CLUSTER_MARK).is_some()
}

/// Check a backup before anything touches the database. `Err` says what is wrong, in words for
/// the operator.
pub fn check_file(path: &Path) -> Result<FileCheck, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = f.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    let cluster = is_cluster_dump(path);
    // The tail: our checksum line, or pg_dump's end line.
    let tail_len = size.min(4096);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(size - tail_len))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let last_line = &body[body.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0)..];
    if let Some(rest) = last_line.strip_prefix(TRAILER_PREFIX.as_bytes()) {
        let (hex, bytes) =
            parse_trailer(rest).ok_or_else(|| format!("{} has a damaged checksum line", path.display()))?;
        let trailer_len = (tail.len() - (body.len() - last_line.len())) as u64;
        if bytes + trailer_len != size {
            return Err(format!(
                "{} is damaged: its checksum line says {bytes} bytes of SQL, the file holds {}",
                path.display(),
                size - trailer_len
            ));
        }
        f.seek(SeekFrom::Start(0)).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut left = bytes;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..want]).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            hasher.update(&buf[..want]);
            left -= want as u64;
        }
        let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != hex {
            return Err(format!("{} is damaged: its checksum does not match its contents", path.display()));
        }
        return Ok(FileCheck { size, checksum: true, cluster });
    }
    if COMPLETE_MARKS.iter().any(|m| memchr::memmem::find(&tail, m).is_some()) {
        return Ok(FileCheck { size, checksum: false, cluster });
    }
    Err(format!(
        "{} is truncated or not a pg_dump backup: it has neither adcluster's checksum line nor pg_dump's \
         \"dump complete\" line at its end",
        path.display()
    ))
}

/// `sha256=HEX bytes=N` → (HEX, N).
fn parse_trailer(rest: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(rest).ok()?.trim_end();
    let mut hex = None;
    let mut bytes = None;
    for part in text.split(' ') {
        if let Some(h) = part.strip_prefix("sha256=") {
            hex = Some(h.to_string()).filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        } else if let Some(n) = part.strip_prefix("bytes=") {
            bytes = n.parse().ok();
        }
    }
    Some((hex?, bytes?))
}

/// The newest database backup in `dir` (whole-cluster dumps are skipped: see the module note).
pub fn newest_backup(dir: &Path) -> Option<PathBuf> {
    let all = backup::list_backups(dir).ok()?;
    all.into_iter().rev().find(|p| !is_cluster_dump(p))
}

/// `1.5 MiB (1572864 bytes)`.
pub fn human_size(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {} ({bytes} bytes)", units[u])
    }
}

/// The psql arguments of a restore of `file`: [`lock_first`], then the file, in one transaction
/// (`--single-transaction` wraps every `--command` and `--file` in one `BEGIN`/`COMMIT`).
pub fn psql_args(file: &Path) -> Vec<String> {
    ["--no-psqlrc", "--single-transaction", "--set", "ON_ERROR_STOP=1", "--quiet", "--no-password", "--command"]
        .iter()
        .map(|s| s.to_string())
        .chain([lock_first(), "--file".to_string(), file.display().to_string()])
        .collect()
}

/// `restore`: parse, run, log.
pub fn run(args: &[String]) -> Result<(), OpsError> {
    let (a, rest) = parse_args(args)?;
    if a.help {
        print!("{HELP}");
        return Ok(());
    }
    let (cfg, leftovers) = Config::load(&rest).map_err(|e| OpsError::usage(e.to_string()))?;
    let mut a = a;
    for extra in leftovers {
        if extra.starts_with('-') && extra != "-" {
            return Err(OpsError::usage(format!("unknown option {extra:?}; run `adcluster restore --help`")));
        }
        if a.file.is_some() {
            return Err(OpsError::usage(format!("one backup file at a time (also got {extra:?})")));
        }
        a.file = Some(PathBuf::from(extra));
    }
    crate::util::log::set_level(cfg.log_level);
    let guard = Guard::install().map_err(|e| OpsError::failed(format!("cannot set up signal handling: {e}")))?;
    let started = Instant::now();
    let at = SystemTime::now();
    let mut file_seen: Option<(PathBuf, Option<u64>)> = None;
    let result = restore(&cfg, &a, &guard, &mut file_seen);
    let outcome = match &result {
        Ok(()) if a.dry_run => "dry-run".to_string(),
        Ok(()) => "ok".to_string(),
        Err(e) if e.code == 2 => format!("refused: {}", e.message),
        Err(e) => format!("failed: {}", e.message),
    };
    let command = if a.dry_run { "restore --dry-run" } else { "restore" };
    let (file, size) = match &file_seen {
        Some((p, s)) => (Some(p.as_path()), *s),
        None => (a.file.as_deref(), None),
    };
    backup::append_log(&cfg.backup_dir, &backup::backup_log_line(at, command, file, size, started.elapsed(), &outcome));
    result
}

fn restore(
    cfg: &Config,
    a: &Args,
    guard: &Guard,
    file_seen: &mut Option<(PathBuf, Option<u64>)>,
) -> Result<(), OpsError> {
    let file = match &a.file {
        Some(f) => {
            if !f.is_file() {
                let why = match fs::metadata(f) {
                    Ok(m) if m.is_dir() => "a folder".to_string(),
                    Ok(_) => "not a regular file".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(OpsError::usage(format!("{} is not a backup file ({why})", f.display())));
            }
            f.clone()
        }
        None => newest_backup(&cfg.backup_dir).ok_or_else(|| {
            OpsError::usage(format!(
                "no backup found in {} (BACKUP_DIR); make one with `adcluster backup`, or name a file",
                cfg.backup_dir.display()
            ))
        })?,
    };
    *file_seen = Some((file.clone(), fs::metadata(&file).ok().map(|m| m.len())));
    if is_cluster_dump(&file) {
        return Err(OpsError::usage(format!(
            "{} is a whole-cluster backup (backup --all), which cannot be restored in one transaction; \
             restore it by hand into a new cluster: psql -X -f {} postgres",
            file.display(),
            pgtools::shell_quote(&file.display().to_string())
        )));
    }
    // The file's checksum, the server's version and psql's version are independent: all at once.
    let dbc = super::db_config(cfg);
    let (check, target) = std::thread::scope(|s| {
        let checking = s.spawn(|| check_file(&file));
        let target = pgtools::server_and_tool(&dbc, "psql");
        (checking.join().unwrap_or_else(|_| Err("the file check panicked".into())), target)
    });
    let check = check.map_err(|e| OpsError::failed(format!("{e}; the database was not touched")))?;
    let pgtools::Target { server, db_exists, tool, env } = target.map_err(OpsError::failed)?;
    eprintln!(
        "using {} (psql {}) for PostgreSQL {} at {}",
        tool.path.display(),
        tool.version.text,
        server.text,
        dbc.describe()
    );
    let args = psql_args(&file);
    let verified = if check.checksum { "checksum verified" } else { "no checksum line; ends with pg_dump's end line" };
    if a.dry_run {
        println!("would run: {}", pgtools::display_command(&tool, &env, &args));
        println!("file: {}, {}, {verified}", super::shown(&file).display(), human_size(check.size));
        if !db_exists {
            println!("the database does not exist yet: it would be created first");
        }
        println!("dry run: nothing was changed");
        return Ok(());
    }
    if !a.yes {
        confirm(&file, check.size, &dbc.describe())?;
    }
    guard.arm();
    if !db_exists {
        crate::db::pool::ensure_database(&dbc)
            .map_err(|e| OpsError::failed(format!("cannot create the database {}: {e}", dbc.describe())))?;
    }
    let result = run_psql(&tool, &env, &args, a.wait, guard, &dbc);
    if result.is_err() && !db_exists {
        // We made it for this restore; "as it was" means not there.
        if let Err(e) = crate::db::pool::drop_database(&dbc) {
            eprintln!("warning: the database {} was created for this restore and is left empty: {e}", dbc.describe());
        }
    }
    result?;
    println!("restored {} into {}", super::shown(&file).display(), dbc.describe());
    Ok(())
}

/// Run psql until it has restored the file, failed for a reason other than a lock in the way,
/// or `wait` has passed since the first try.
fn run_psql(
    tool: &pgtools::Tool,
    env: &[(&'static str, String)],
    args: &[String],
    wait: Duration,
    guard: &Guard,
    dbc: &crate::db::DbConfig,
) -> Result<(), OpsError> {
    let until = Instant::now() + wait;
    let mut waiting_said = false;
    loop {
        let mut cmd = pgtools::command(tool, env);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child =
            cmd.spawn().map_err(|e| OpsError::failed(format!("cannot run {}: {e}", tool.path.display())))?;
        guard.set_child(Some(child.id()));
        let stderr = backup::collect_stderr(child.stderr.take().expect("piped"));
        let status = child.wait().map_err(|e| OpsError::failed(format!("cannot wait for psql: {e}")))?;
        guard.set_child(None);
        let stderr = stderr.join().unwrap_or_default();
        let interrupted = |guard: &Guard| {
            guard.interrupted().map(|sig| {
                OpsError::failed(format!(
                    "interrupted by {sig}; the restore was rolled back, the database is unchanged"
                ))
            })
        };
        if let Some(e) = interrupted(guard) {
            return Err(e);
        }
        if status.success() {
            return Ok(());
        }
        if !is_lock_timeout(&stderr) {
            return Err(OpsError::failed(format!(
                "the restore failed and was rolled back, the database is unchanged: {}",
                pgtools::stderr_reason(&stderr)
            )));
        }
        if Instant::now() >= until {
            return Err(OpsError::failed(format!(
                "other sessions kept tables of {} locked for {} s (--wait), so the restore could not start; \
                 the database is unchanged. {}; let them finish or end them (SELECT pg_terminate_backend(PID)), \
                 then run the restore again",
                dbc.describe(),
                wait.as_secs(),
                lock_holders(dbc)
            )));
        }
        if !waiting_said {
            eprintln!(
                "waiting for other sessions to release tables of {} (up to {} s, --wait): {}",
                dbc.describe(),
                wait.as_secs(),
                lock_holders(dbc)
            );
            waiting_said = true;
        }
        std::thread::sleep(LOCK_RETRY_PAUSE);
        if let Some(e) = interrupted(guard) {
            return Err(e);
        }
    }
}

/// Who holds locks on tables of the database now, for a message: `pid 123 (application "x",
/// idle in transaction, transaction open 25 s)`, longest-open first, at most five.
fn lock_holders(dbc: &crate::db::DbConfig) -> String {
    const SQL: &str = "SELECT a.pid, coalesce(nullif(a.application_name, ''), '-'), coalesce(a.state, '-'), \
        coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0) \
        FROM pg_stat_activity a \
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND EXISTS ( \
          SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
          WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' AND c.relkind IN ('r', 'p') \
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) \
        ORDER BY a.xact_start NULLS LAST LIMIT 5";
    let rows = dbc
        .pg_config()
        .map_err(|e| e.to_string())
        .and_then(|c| c.connect(postgres::NoTls).map_err(|e| crate::db::DbError::from(e).to_string()))
        .and_then(|mut c| c.query(SQL, &[]).map_err(|e| crate::db::DbError::from(e).to_string()));
    match rows {
        Ok(rows) if rows.is_empty() => "no session holds one now".into(),
        Ok(rows) => {
            let who: Vec<String> = rows
                .iter()
                .map(|r| {
                    let (pid, app, state, secs): (i32, String, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
                    format!("pid {pid} (application {app:?}, {state}, transaction open {secs} s)")
                })
                .collect();
            format!("sessions holding them: {}", who.join(", "))
        }
        Err(e) => format!("(could not list the sessions holding them: {e})"),
    }
}

/// Ask on the terminal; refuse (exit 2) without one.
fn confirm(file: &Path, size: u64, db: &str) -> Result<(), OpsError> {
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(0) == 1 };
    if !tty {
        return Err(OpsError::usage(format!(
            "restoring replaces every table of {db}; confirm on a terminal, or pass --yes"
        )));
    }
    eprint!(
        "Restore {} ({}) into {db}? Every table in it is replaced by the backup's. Type yes to go on: ",
        file.display(),
        human_size(size)
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| OpsError::failed(format!("cannot read the answer: {e}")))?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(OpsError::usage("restore cancelled; nothing was changed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmpdir(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("adc-restore-unit-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn with_trailer(sql: &str) -> Vec<u8> {
        let hex: String = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let mut v = sql.as_bytes().to_vec();
        v.extend_from_slice(backup::trailer(&hex, sql.len() as u64).as_bytes());
        v
    }

    #[test]
    fn checks_catch_damage_and_truncation() {
        let d = tmpdir("check");
        let sql = "--\n-- PostgreSQL database dump\n--\nCREATE TABLE t (id int);\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
        let good = d.0.join("good.sql");
        fs::write(&good, with_trailer(sql)).unwrap();
        assert_eq!(
            check_file(&good).unwrap(),
            FileCheck { size: fs::metadata(&good).unwrap().len(), checksum: true, cluster: false }
        );
        // One byte changed in the middle.
        let mut bytes = with_trailer(sql);
        bytes[40] ^= 0x20;
        let bad = d.0.join("flipped.sql");
        fs::write(&bad, &bytes).unwrap();
        assert!(check_file(&bad).unwrap_err().contains("checksum does not match"));
        // Cut: no trailer, no end line.
        let cut = d.0.join("cut.sql");
        fs::write(&cut, &with_trailer(sql)[..50]).unwrap();
        assert!(check_file(&cut).unwrap_err().contains("truncated"));
        // A trailer glued onto a shorter body: the length does not match.
        let mut short = sql.as_bytes()[..31].to_vec(); // whole lines
        short.extend_from_slice(&with_trailer(sql)[sql.len()..]);
        let s = d.0.join("short.sql");
        fs::write(&s, &short).unwrap();
        assert!(check_file(&s).unwrap_err().contains("damaged"));
        // A hand-made pg_dump file without our line but complete is accepted.
        let plain = d.0.join("plain.sql");
        fs::write(&plain, sql).unwrap();
        assert!(!check_file(&plain).unwrap().checksum);
        // Empty.
        let empty = d.0.join("empty.sql");
        fs::write(&empty, "").unwrap();
        assert!(check_file(&empty).is_err());
    }

    #[test]
    fn the_newest_database_backup_is_chosen() {
        let d = tmpdir("newest");
        assert_eq!(newest_backup(&d.0), None);
        fs::write(d.0.join("full_backup_2026-01-01_000000.sql"), "--\n-- PostgreSQL database dump\n").unwrap();
        fs::write(d.0.join("full_backup_2026-01-02_000000.sql"), "--\n-- PostgreSQL database dump\n").unwrap();
        fs::write(d.0.join("full_backup_2026-01-03_000000.sql"), "--\n-- PostgreSQL database cluster dump\n").unwrap();
        fs::write(d.0.join(".full_backup_2026-01-04_000000.sql.partial-1"), "x").unwrap();
        fs::write(d.0.join("backup.log"), "x").unwrap();
        assert_eq!(newest_backup(&d.0).unwrap().file_name().unwrap(), "full_backup_2026-01-02_000000.sql");
    }

    #[test]
    fn arguments_and_sizes() {
        let args: Vec<String> =
            ["--dry-run", "x.sql", "--yes", "--db-name", "d"].iter().map(|s| s.to_string()).collect();
        let (a, rest) = parse_args(&args).unwrap();
        assert!(a.dry_run && a.yes && !a.help);
        assert_eq!(a.wait, DEFAULT_LOCK_WAIT);
        assert_eq!(rest, vec!["x.sql", "--db-name", "d"]);
        let wait = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map(|(a, _)| a.wait);
        assert_eq!(wait(&["--wait", "5"]).unwrap(), Duration::from_secs(5));
        assert_eq!(wait(&["--wait=0"]).unwrap(), Duration::ZERO);
        for bad in [&["--wait"][..], &["--wait", "-1"], &["--wait=soon"], &["--wait", "86401"]] {
            assert_eq!(wait(bad).unwrap_err().code, 2, "{bad:?}");
        }
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(1536), "1.5 KiB (1536 bytes)");
        let args = psql_args(Path::new("/b/f.sql"));
        assert!(args.windows(2).any(|w| w == ["--set", "ON_ERROR_STOP=1"]));
        assert!(args.contains(&"--single-transaction".to_string()));
        // The locks are taken first, in the same transaction as the file.
        assert_eq!(args[args.len() - 4..], ["--command".to_string(), lock_first(), "--file".into(), "/b/f.sql".into()]);
    }
}
