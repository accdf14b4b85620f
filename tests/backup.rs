//! The contract's "Operations commands": `adcluster backup` and `adcluster restore` through the
//! real binary, the real `pg_dump`/`psql` and the real PostgreSQL, each test in its own database
//! (and `--all` in a private cluster of its own). Tables are compared by checksum: md5 of every
//! row in order, per table, plus every sequence's position.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{get_auth, login, post_json, signup, token, TempDir, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "backup-test-secret-0123456789abcdefghijklmn";
/// Trust auth ignores it; it is here to prove it never shows.
const DB_PASSWORD: &str = "hunter2-not-shown";
const BOUNDARY: &str = "----adcBackupTestBoundary";

fn server() -> TestServer {
    TestServer::start_with(common::Opts::default().env("SECRET_KEY", SECRET).env("DB_PASSWORD", DB_PASSWORD))
}

/// Run the binary against the server's database and folders, with extra environment.
fn adc(srv: &TestServer, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(args)
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run adcluster")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one `error:` line of a failed command (and there must be exactly one).
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error: line, got stderr:\n{err}");
    assert!(!err.contains(DB_PASSWORD), "the password leaked: {err}");
    lines[0].to_string()
}

fn backup_dir(srv: &TestServer) -> PathBuf {
    srv.dir.path().join("backups")
}

/// Names in BACKUP_DIR, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Back up; returns the path printed.
fn backup(srv: &TestServer, args: &[&str]) -> PathBuf {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let o = adc(srv, &all, &[]);
    assert_eq!(o.status.code(), Some(0), "backup failed: {}", stderr(&o));
    let path = PathBuf::from(stdout(&o).trim());
    assert!(path.is_file(), "{path:?} is not there");
    assert!(!std::fs::read_to_string(&path).unwrap().contains(DB_PASSWORD));
    path
}

/// Every user table's rows (md5 of the rows in order) and every sequence's position.
fn checksums(srv: &TestServer) -> BTreeMap<String, String> {
    let mut c = srv.db.client();
    let mut out = BTreeMap::new();
    let tables: Vec<String> = c
        .query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in tables {
        let row = c
            .query_one(
                &format!("SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM public.\"{t}\" x"),
                &[],
            )
            .unwrap();
        out.insert(format!("table {t}"), row.get::<_, String>(0));
    }
    let seqs: Vec<String> = c
        .query("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in seqs {
        let row = c
            .query_one(&format!("SELECT last_value::text || '/' || is_called::text FROM public.\"{s}\""), &[])
            .unwrap();
        out.insert(format!("sequence {s}"), row.get::<_, String>(0));
    }
    assert!(out.len() >= 5, "expected the server's tables, got {out:?}");
    out
}

fn upload(srv: &TestServer, token: &str, name: &str, bytes: &[u8]) -> Value {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let auth = format!("Bearer {token}");
    let r = srv.request("POST", "/api/upload", &[("Content-Type", &ct), ("Authorization", &auth)], &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// Users, a team with two members, two uploads: something in every table.
fn populate(srv: &TestServer) -> String {
    signup(srv, "ana@example.com");
    let bob = signup(srv, "bob@example.com");
    let t = token(srv, "ana@example.com");
    let team = post_json(srv, "/teams/", Some(&t), &json!({ "name": "ops", "description": "the ops team" }));
    assert_eq!(team.status, 201, "{}", team.text());
    let team_id = team.json()["id"].as_i64().unwrap();
    let r = post_json(srv, &format!("/teams/{team_id}/members"), Some(&t), &json!({ "user_id": bob["id"] }));
    assert_eq!(r.status, 200, "{}", r.text());
    upload(srv, &t, "report.pdf", b"%PDF-1.4 quarterly report");
    upload(srv, &t, "photo.png", b"\x89PNG not really");
    t
}

/// Change something in every table: a new user, a changed name, a deleted upload, a removed
/// member, and a row of a table the backup does not know about.
fn change_everything(srv: &TestServer, token: &str) {
    signup(srv, "late@example.com");
    let files = srv.request("GET", "/api/files", &[("Authorization", &format!("Bearer {token}"))], b"").json();
    let name = files["files"][0]["filename"].as_str().unwrap().to_string();
    let r = srv.request("DELETE", &format!("/api/files/{name}"), &[("Authorization", &format!("Bearer {token}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut c = srv.db.client();
    c.batch_execute(
        "UPDATE users SET full_name = 'Changed', hashed_password = 'x' WHERE email = 'ana@example.com';
         DELETE FROM team_members WHERE user_id = (SELECT id FROM users WHERE email = 'bob@example.com');
         UPDATE teams SET description = 'renamed';",
    )
    .unwrap();
}

#[test]
fn round_trip_restores_every_table_while_the_server_keeps_serving() {
    let srv = server();
    let t = populate(&srv);
    let at_backup = checksums(&srv);
    let file = backup(&srv, &[]);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("full_backup_")
            && name.ends_with(".sql")
            && name.len() == "full_backup_2026-12-01_200102.sql".len(),
        "{name}"
    );
    assert_eq!(file.parent().unwrap(), backup_dir(&srv));
    // A backup holds password hashes: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    change_everything(&srv, &t);
    let changed = checksums(&srv);
    for key in ["table users", "table uploads", "table team_members", "table teams", "sequence users_id_seq"] {
        assert_ne!(at_backup.get(key), changed.get(key), "{key} did not change; the test proves nothing");
    }
    assert_eq!(login(&srv, "ana@example.com", "password1").status, 401, "the changed hash must not log in");

    let o = adc(&srv, &["restore", "--yes"], &[]);
    assert_eq!(o.status.code(), Some(0), "restore failed: {}", stderr(&o));
    assert!(stdout(&o).contains(&name), "{}", stdout(&o));
    assert_eq!(checksums(&srv), at_backup);

    // The server was never restarted: it serves the restored data.
    let r = login(&srv, "ana@example.com", "password1");
    assert_eq!(r.status, 200, "a user of backup time must log in: {}", r.text());
    assert_eq!(login(&srv, "late@example.com", "password1").status, 401, "a user made after the backup is gone");
    let me = srv.request("GET", "/users/me", &[("Authorization", &format!("Bearer {t}"))], b"").json();
    assert_eq!(me["full_name"], "Kim");
    let files = srv.request("GET", "/api/files", &[("Authorization", &format!("Bearer {t}"))], b"").json();
    assert_eq!(files["count"], 2, "{files}");
    // New rows continue after the restored sequences.
    let again = signup(&srv, "late@example.com");
    assert_eq!(again["id"], 3);

    // One log line per run.
    let log = std::fs::read_to_string(backup_dir(&srv).join("backup.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains(" backup file=") && lines[0].ends_with("result=ok") && lines[0].contains(&name), "{log}");
    assert!(lines[1].contains(" restore file=") && lines[1].ends_with("result=ok"), "{log}");
    assert!(!log.contains(DB_PASSWORD));
}

#[test]
fn dry_run_shows_the_command_and_the_size_and_changes_nothing() {
    let srv = server();
    let t = populate(&srv);
    let file = backup(&srv, &[]);
    change_everything(&srv, &t);
    let before = checksums(&srv);
    let size = std::fs::metadata(&file).unwrap().len();
    let o = adc(&srv, &["restore", "--dry-run", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("psql") && out.contains("--single-transaction") && out.contains(file.to_str().unwrap()),
        "{out}"
    );
    assert!(out.contains(&format!("{size} bytes")), "{out}");
    assert!(out.contains("PGPASSWORD=***") && !out.contains(DB_PASSWORD), "{out}");
    assert_eq!(checksums(&srv), before);
    // Without a file: the newest backup, still nothing changed.
    let o = adc(&srv, &["restore", "--dry-run"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(file.to_str().unwrap()));
    assert_eq!(checksums(&srv), before);
    let log = std::fs::read_to_string(backup_dir(&srv).join("backup.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.ends_with("result=dry-run")).count(), 2, "{log}");
}

#[test]
fn refusals_exit_2_and_change_nothing() {
    let srv = server();
    // Empty BACKUP_DIR (it does not even exist yet).
    let o = adc(&srv, &["restore", "--yes"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(error_line(&o).contains("no backup found"), "{}", stderr(&o));
    std::fs::create_dir_all(backup_dir(&srv)).unwrap();
    let o = adc(&srv, &["restore", "--yes"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("no backup found"));

    let t = populate(&srv);
    backup(&srv, &[]);
    change_everything(&srv, &t);
    let before = checksums(&srv);
    // No terminal (stdin is /dev/null) and no --yes.
    let o = adc(&srv, &["restore"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(error_line(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(checksums(&srv), before);
    // A file that does not exist, an unknown flag, two files, a bad --keep.
    for args in [
        &["restore", "--yes", "nope.sql"][..],
        &["restore", "--frobnicate"],
        &["restore", "--yes", "a.sql", "b.sql"],
        &["backup", "--keep", "0"],
        &["backup", "--keep", "many"],
        &["backup", "stray"],
    ] {
        let o = adc(&srv, args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        error_line(&o);
    }
    assert_eq!(checksums(&srv), before);
    let log = std::fs::read_to_string(backup_dir(&srv).join("backup.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("result=refused: no backup found")), "{log}");
    assert!(log.lines().any(|l| l.contains("result=refused: restoring replaces")), "{log}");
}

#[test]
fn help_texts() {
    for cmd in ["backup", "restore"] {
        let o = Command::new(env!("CARGO_BIN_EXE_adcluster")).args([cmd, "--help"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0));
        let text = stdout(&o);
        assert!(text.starts_with(&format!("adcluster {cmd}")), "{text}");
        assert!(text.contains("Exit codes"), "{text}");
    }
}

#[test]
fn a_damaged_file_fails_with_1_and_the_database_is_unchanged() {
    let srv = server();
    let t = populate(&srv);
    let file = backup(&srv, &[]);
    change_everything(&srv, &t);
    let before = checksums(&srv);
    let good = std::fs::read(&file).unwrap();
    let dir = backup_dir(&srv);

    let try_restore = |name: &str, bytes: &[u8], expect: &str| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = adc(&srv, &["restore", "--yes", p.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        let line = error_line(&o);
        assert!(line.contains(expect), "{name}: {line}");
        assert_eq!(checksums(&srv), before, "{name} changed the database");
    };
    // One byte flipped inside the users' rows.
    let mut flipped = good.clone();
    let at = memchr::memmem::find(&good, b"ana@example.com").expect("the dump holds the users");
    flipped[at] = b'A';
    try_restore("flipped.sql", &flipped, "checksum does not match");
    // Cut in the middle.
    try_restore("cut.sql", &good[..good.len() / 2], "truncated");
    // Without our checksum line (a hand-made dump), with a statement that fails after the
    // tables were already dropped and refilled: psql stops, the transaction rolls back.
    let body = &good[..good.len() - good.rsplitn(3, |&b| b == b'\n').nth(1).unwrap().len() - 1];
    let text = String::from_utf8(body.to_vec()).unwrap();
    let end = text.rfind("-- PostgreSQL database dump complete").unwrap();
    let broken = format!("{}INSERT INTO public.users (id) VALUES ('not a number');\n{}", &text[..end], &text[end..]);
    assert!(!broken.contains("adcluster backup: sha256"));
    try_restore("broken.sql", broken.as_bytes(), "rolled back");
    // And that same file, repaired, restores: the failures above were about the damage.
    let repaired = format!("{}{}", &text[..end], &text[end..]);
    let p = dir.join("repaired.sql");
    std::fs::write(&p, repaired).unwrap();
    let o = adc(&srv, &["restore", "--yes", p.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(checksums(&srv), before);
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_database_fails_with_1_one_error_line_and_no_file() {
    let srv = server();
    let port = dead_port().to_string();
    let o = adc(&srv, &["backup"], &[("DB_PORT", &port)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(line.contains("cannot reach the database") && line.contains(&port), "{line}");
    assert!(stdout(&o).is_empty());
    assert_eq!(files_in(&backup_dir(&srv)), vec!["backup.log"]);
    let o = adc(&srv, &["backup", "--output", "out.sql"], &[("DB_PORT", &port)]);
    assert_eq!(o.status.code(), Some(1));
    error_line(&o);
    assert!(!srv.dir.path().join("out.sql").exists());
    // A DATABASE_URL with a password: the same, and the password shows nowhere.
    let url = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:{port}/x");
    let o = adc(&srv, &["backup"], &[("DATABASE_URL", &url)]);
    assert_eq!(o.status.code(), Some(1));
    error_line(&o);
    assert_eq!(files_in(&backup_dir(&srv)), vec!["backup.log"]);
    let log = std::fs::read_to_string(backup_dir(&srv).join("backup.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("result=failed: cannot reach")).count(), 3, "{log}");
    assert!(!log.contains(DB_PASSWORD));
    // Restore: a good file, a dead database.
    populate(&srv);
    let file = backup(&srv, &[]);
    let o = adc(&srv, &["restore", "--yes", file.to_str().unwrap()], &[("DB_PORT", &port)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("cannot reach the database"));
}

#[test]
fn an_interrupted_backup_leaves_no_file() {
    let srv = server();
    populate(&srv);
    // Hold a lock pg_dump must wait for, so the backup is surely running when it is stopped.
    let mut holder = srv.db.client();
    holder.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let child = adc_spawn(&srv, &["backup"]);
    // Wait until pg_dump is waiting on the lock.
    let mut c = srv.db.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "pg_dump never started waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
    let partials: Vec<String> = files_in(&backup_dir(&srv)).into_iter().filter(|n| n.contains(".partial-")).collect();
    assert_eq!(partials.len(), 1, "the temporary file exists while the backup runs");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(error_line(&o).contains("interrupted by SIGTERM"));
    assert_eq!(files_in(&backup_dir(&srv)), vec!["backup.log"], "nothing but the log is left");
    // pg_dump went with it.
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn keep_deletes_all_but_the_newest_backups() {
    let srv = server();
    populate(&srv);
    let dir = backup_dir(&srv);
    std::fs::create_dir_all(&dir).unwrap();
    // Two old ones (the seed's naming too) and something that is not a backup.
    std::fs::write(dir.join("full_backup_2020-01-01.sql"), "old").unwrap();
    std::fs::write(dir.join("full_backup_2020-01-02_000000.sql"), "old").unwrap();
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    let a = backup(&srv, &[]);
    let b = backup(&srv, &[]);
    assert_ne!(a, b, "two backups in a row get two names");
    let c = backup(&srv, &["--keep", "2"]);
    let left = files_in(&dir);
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(left, vec!["backup.log".to_string(), name(&b), name(&c), "notes.txt".into()]);
    let c2 = backup(&srv, &["--keep=1"]);
    assert_eq!(files_in(&dir), vec!["backup.log".to_string(), name(&c2), "notes.txt".into()]);
    // --output elsewhere: written there, BACKUP_DIR pruned all the same.
    let out = srv.dir.path().join("elsewhere.sql");
    let o = backup(&srv, &["--output", out.to_str().unwrap()]);
    assert_eq!(o, out);
    // An existing --output is never replaced.
    let again = adc(&srv, &["backup", "--output", out.to_str().unwrap()], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(error_line(&again).contains("already exists"));
    let log = std::fs::read_to_string(dir.join("backup.log")).unwrap();
    assert_eq!(log.lines().count(), 6, "{log}");
}

#[test]
fn backups_started_at_once_all_succeed_each_with_a_file_of_its_own() {
    let srv = server();
    populate(&srv);
    // Started in the same second, they want the same name; none may fail or replace another.
    let runs: Vec<std::process::Child> = (0..4).map(|_| adc_spawn(&srv, &["backup"])).collect();
    let mut paths: Vec<PathBuf> = runs
        .into_iter()
        .map(|child| {
            let o = child.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(0), "a concurrent backup failed: {}", stderr(&o));
            PathBuf::from(stdout(&o).trim())
        })
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 4, "four backups, four files: {paths:?}");
    let dir = backup_dir(&srv);
    let mut expected: Vec<String> =
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    expected.insert(0, "backup.log".into());
    assert_eq!(files_in(&dir), expected, "no temporary file left, nothing else");
    for p in &paths {
        let o = adc(&srv, &["restore", "--dry-run", p.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(0), "{p:?}: {}", stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(all.contains("checksum verified"), "{p:?}: {all}");
    }
    // The newest by name is the one restore picks.
    let o = adc(&srv, &["restore", "--dry-run"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(paths[3].to_str().unwrap()), "{}", stdout(&o));
    let log = std::fs::read_to_string(dir.join("backup.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("20") && l.contains(" backup ") && l.ends_with("result=ok")).count(),
        4,
        "{log}"
    );
}

/// A private PostgreSQL cluster (initdb as the `postgres` OS user into a temp dir), stopped and
/// removed on drop. `None` (with the reason printed) where it cannot be made.
struct Cluster {
    dir: TempDir,
    port: u16,
}

fn as_postgres(cmd: &str) -> Option<Output> {
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut c = if is_root {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    };
    c.output().ok()
}

fn pg_bin(name: &str) -> Option<String> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists()).map(|p| p.display().to_string())
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let (initdb, pg_ctl) = (pg_bin("initdb")?, pg_bin("pg_ctl")?);
        let dir = TempDir::new("cluster");
        let _ = Command::new("chown").args(["-R", "postgres:postgres", dir.path().to_str()?]).status();
        let port = dead_port();
        let d = dir.path().display().to_string();
        let o = as_postgres(&format!("{initdb} -D {d}/data -U postgres --auth=trust -E UTF8 >/dev/null"))?;
        if !o.status.success() {
            eprintln!("skipping: initdb failed: {}", String::from_utf8_lossy(&o.stderr));
            return None;
        }
        let o = as_postgres(&format!(
            "{pg_ctl} -D {d}/data -l {d}/log -w -o \"-p {port} -k {d} -c listen_addresses=127.0.0.1\" start >/dev/null"
        ))?;
        if !o.status.success() {
            eprintln!("skipping: pg_ctl start failed: {}", String::from_utf8_lossy(&o.stderr));
            return None;
        }
        Some(Cluster { dir, port })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(pg_ctl) = pg_bin("pg_ctl") {
            as_postgres(&format!("{pg_ctl} -D {}/data -m immediate stop >/dev/null", self.dir.path().display()));
        }
    }
}

#[test]
fn backup_all_dumps_the_whole_cluster() {
    let Some(cluster) = Cluster::start() else {
        eprintln!("cannot make a private cluster here; --all is not tested");
        return;
    };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    for sql in ["CREATE ROLE reporter LOGIN", "CREATE DATABASE shop", "CREATE DATABASE app"] {
        admin.batch_execute(sql).unwrap();
    }
    let mut shop =
        postgres::Client::connect(&format!("postgres://postgres@127.0.0.1:{}/shop", cluster.port), postgres::NoTls)
            .unwrap();
    shop.batch_execute("CREATE TABLE items (name text); INSERT INTO items VALUES ('teapot-4711')").unwrap();
    let work = TempDir::new("all");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_adcluster"))
            .args(args)
            .current_dir(work.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", cluster.port.to_string())
            .env("DB_NAME", "app")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = run(&["backup", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("pg_dumpall"), "it says which program it used: {}", stderr(&o));
    // BACKUP_DIR is the default, relative `dbBackup`; the path printed is absolute, so that it
    // names the file from anywhere.
    let file = PathBuf::from(stdout(&o).trim());
    assert!(file.is_absolute() && file.starts_with(work.path().join("dbBackup")), "{file:?}");
    assert!(file.file_name().unwrap().to_str().unwrap().starts_with("full_backup_"), "{file:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("PostgreSQL database cluster dump"));
    assert!(text.contains("CREATE ROLE reporter"), "the roles are in it");
    assert!(text.contains("teapot-4711"), "another database's rows are in it");
    assert!(
        text.contains("\\connect app") || text.contains("\\connect -reuse-previous=on \"dbname='app'\""),
        "ours too"
    );
    // It is kept apart from database backups: restore refuses it with the command that does it.
    let o = run(&["restore", "--yes", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(error_line(&o).contains("psql -X -f"));
    let o = run(&["restore", "--yes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("no backup found"));
}

#[test]
fn the_shell_scripts_wrap_the_commands_and_read_the_install_folders_env() {
    let srv = server();
    populate(&srv);
    let before = checksums(&srv);
    // An install folder: scripts/ and a .env (relative BACKUP_DIR), run from somewhere else.
    let home = TempDir::new("home");
    let scripts = home.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for f in ["db_full_backup.sh", "db_restore.sh", "adcluster-wrapper.sh"] {
        std::fs::copy(repo.join(f), scripts.join(f)).unwrap();
    }
    let get = |k: &str| srv.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    std::fs::write(
        home.path().join(".env"),
        format!(
            "DB_HOST={}\nDB_PORT={}\nDB_NAME={}\nDB_USER={}\nBACKUP_DIR=dbBackup\n",
            get("DB_HOST"),
            get("DB_PORT"),
            get("DB_NAME"),
            get("DB_USER")
        ),
    )
    .unwrap();
    let elsewhere = TempDir::new("cwd");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_adcluster")).parent().unwrap().display().to_string();
    let script = |name: &str, args: &[&str]| {
        Command::new(scripts.join(name))
            .args(args)
            .current_dir(elsewhere.path())
            .env_clear()
            // The binary is found on PATH (the test's build), not next to the scripts.
            .env("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = script("db_full_backup.sh", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The path printed names the file from where the script was run, not only from the
    // install folder the script runs the binary in.
    let file = PathBuf::from(stdout(&o).trim());
    assert!(file.is_absolute() && file.starts_with(home.path().join("dbBackup")) && file.is_file(), "{file:?}");
    assert_eq!(script("db_full_backup.sh", &["--keep", "0"]).status.code(), Some(2));
    // A relative --output means relative to where the operator is.
    let o = script("db_full_backup.sh", &["--output", "mine.sql"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(elsewhere.path().join("mine.sql").is_file());
    // So does every settings flag whose value is a path, `--flag PATH` and `--flag=PATH` alike
    // (the wrapper's list of them is config.rs's: see the_wrapper_knows_every_path_setting).
    for (args, folder) in [(&["--backup-dir", "relbk"][..], "relbk"), (&["--backup-dir=relbk2"][..], "relbk2")] {
        let o = script("db_full_backup.sh", args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let file = PathBuf::from(stdout(&o).trim());
        assert!(file.starts_with(elsewhere.path().join(folder)) && file.is_file(), "{args:?}: {file:?}");
        assert!(elsewhere.path().join(folder).join("backup.log").is_file());
        assert!(!home.path().join(folder).exists(), "{args:?} was read in the install folder");
        let mut dry = vec!["--dry-run"];
        dry.extend_from_slice(args);
        let o = script("db_restore.sh", &dry);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains(file.to_str().unwrap()), "{args:?}: {}", stdout(&o));
    }
    let url = format!("postgres://{}@{}:{}/{}", get("DB_USER"), get("DB_HOST"), get("DB_PORT"), get("DB_NAME"));
    std::fs::write(elsewhere.path().join("url.txt"), format!("{url}\n")).unwrap();
    for args in [&["--database-url-file", "url.txt"][..], &["--database-url-file=url.txt"]] {
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        let o = script("db_restore.sh", &all);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }

    let mut c = srv.db.client();
    c.batch_execute("DELETE FROM team_members; UPDATE users SET full_name = 'zz'").unwrap();
    assert_ne!(checksums(&srv), before);
    // No terminal, no --yes: refused with 2, like the command.
    let o = script("db_restore.sh", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = script("db_restore.sh", &["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("would run"));
    assert_ne!(checksums(&srv), before);
    // A relative FILE; a damaged one fails with 1.
    std::fs::write(elsewhere.path().join("bad.sql"), "SELECT 1;\n").unwrap();
    assert_eq!(script("db_restore.sh", &["--yes", "bad.sql"]).status.code(), Some(1));
    let o = script("db_restore.sh", &["--yes", "mine.sql"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(checksums(&srv), before);
    assert!(home.path().join("dbBackup/backup.log").is_file());
    // Without a binary anywhere: one error line, exit 1.
    let o = Command::new(scripts.join("db_full_backup.sh"))
        .current_dir(elsewhere.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("cannot find the adcluster binary"));
}

/// `adcluster ARGS` started in the background against the server's database and folders, its
/// output piped.
fn adc_spawn(srv: &TestServer, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(args)
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run adcluster")
}

/// `adcluster restore --yes FILE ARGS` started in the background.
fn restore_in_background(srv: &TestServer, file: &Path, args: &[&str]) -> std::process::Child {
    let mut all = vec!["restore", "--yes", file.to_str().unwrap()];
    all.extend_from_slice(args);
    adc_spawn(srv, &all)
}

/// Wait until a session of the test database waits for a lock (the restore's try).
fn until_a_session_waits_for_a_lock(srv: &TestServer) {
    let mut c = srv.db.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the restore never reached the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restore_waits_for_a_long_transaction_without_holding_up_the_server() {
    let srv = server();
    let t = populate(&srv);
    let file = backup(&srv, &[]);
    let at_backup = checksums(&srv);
    change_everything(&srv, &t);
    // Another session reads `users` in a long transaction (a report, a db-gui export).
    let mut holder = srv.db.client();
    holder.batch_execute("BEGIN; SELECT count(*) FROM users").unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let child = restore_in_background(&srv, &file, &[]);
    until_a_session_waits_for_a_lock(&srv);
    // The restore takes every table before it changes one, and gives them back when one is not
    // free: the server's reads and writes of those tables are answered meanwhile, not queued
    // behind a restore that waits (they would get a 503 when DB_STATEMENT_TIMEOUT_MS ran out).
    for i in 0..5 {
        let r = get_auth(&srv, "/teams/", &t);
        assert_eq!(r.status, 200, "GET /teams/ while the restore waits: {}", r.text());
        let r = post_json(&srv, "/teams/", Some(&t), &json!({ "name": format!("during-{i}") }));
        assert_eq!(r.status, 201, "POST /teams/ while the restore waits: {}", r.text());
        for path in ["/health", "/api/ws/groups", "/"] {
            let r = srv.get(path);
            assert_eq!(r.status, 200, "{path} during a restore: {}", r.text());
        }
    }
    holder.batch_execute("COMMIT").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("waiting for other sessions to release tables"), "{err}");
    assert!(err.contains(&format!("pid {holder_pid} ")), "it names the session in the way: {err}");
    assert_eq!(checksums(&srv), at_backup, "the teams made while it waited are gone: it restored after them");
    assert_eq!(login(&srv, "ana@example.com", "password1").status, 200);
}

#[test]
fn a_restore_that_cannot_get_the_tables_gives_up_after_wait_and_changes_nothing() {
    let srv = server();
    let t = populate(&srv);
    let file = backup(&srv, &[]);
    change_everything(&srv, &t);
    let changed = checksums(&srv);
    let mut holder = srv.db.client();
    holder.batch_execute("BEGIN; SELECT count(*) FROM teams").unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let o = adc(&srv, &["restore", "--yes", "--wait", "1", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(line.contains("locked for 1 s (--wait)") && line.contains("the database is unchanged"), "{line}");
    assert!(line.contains(&format!("pid {holder_pid} ")) && line.contains("pg_terminate_backend"), "{line}");
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(checksums(&srv), changed);
    // A bad --wait is a usage error.
    let o = adc(&srv, &["restore", "--yes", "--wait", "soon", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("--wait"));
}

#[test]
fn writes_during_restores_are_answered_never_with_a_500() {
    // Requests that touch several tables (a team and its first member, checked against users)
    // while restores replace those tables: before the restore took its locks first, some of them
    // deadlocked with it (a 500, or a failed restore), a team could vanish between its insert
    // and its read (a 500), and a team read in two statements (the team, then its members) could
    // come back without its members when a restore committed between them (a 403 on adding one).
    let srv = server();
    let t = populate(&srv);
    let file = backup(&srv, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<u16, usize>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            let (addr, t) = (srv.addr, t.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {t}");
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let body = json!({ "name": format!("w{w}-{i}") }).to_string();
                    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                    let r = common::Conn::open(addr).send("POST", "/teams/", &headers, body.as_bytes());
                    let mut s = statuses.lock().unwrap();
                    *s.entry(r.status).or_default() += 1;
                    if r.status == 201 {
                        let id = r.json()["id"].as_i64().unwrap();
                        let path = format!("/teams/{id}/members");
                        let body = json!({ "user_id": 1 }).to_string();
                        drop(s);
                        let r = common::Conn::open(addr).send("POST", &path, &headers, body.as_bytes());
                        *statuses.lock().unwrap().entry(r.status).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for _ in 0..4 {
        let o = adc(&srv, &["restore", "--yes", file.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.get(&201).copied().unwrap_or(0) > 0, "{statuses:?}");
    // 200/201 done; 404 the team was restored away between the two requests; 503 busy.
    assert!(statuses.keys().all(|s| [200, 201, 404, 503].contains(s)), "{statuses:?}");
    assert!(!srv.log().contains("database error"), "{}", srv.log());
}

#[test]
fn a_pg_dump_on_path_that_refuses_the_server_gives_way_to_an_installed_one() {
    let Some(installed) = pg_bin("pg_dump") else {
        eprintln!("SKIPPED: no /usr/lib/postgresql/*/bin/pg_dump here");
        return;
    };
    let srv = server();
    populate(&srv);
    // An old pg_dump first on PATH: it answers like pg_dump 9.6 does for a newer server.
    let bin = TempDir::new("oldbin");
    let fake = bin.path().join("pg_dump");
    std::fs::write(
        &fake,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 9.6.24'; exit 0; fi\n\
         echo 'pg_dump: error: aborting because of server version mismatch' >&2\n\
         echo 'pg_dump: detail: server version: 15.2; pg_dump version: 9.6.24' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let o = adc(&srv, &["backup"], &[("PATH", &path)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("using {}", fake.display())), "{err}");
    assert!(err.contains(&format!("using {installed}")), "it said which one it fell back to: {err}");
    let file = PathBuf::from(stdout(&o).trim());
    let o = adc(&srv, &["restore", "--dry-run", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "the backup is whole: {}", stderr(&o));
    assert_eq!(files_in(&backup_dir(&srv)).len(), 2, "the backup and the log, no leftover");
}

#[test]
fn restore_into_a_database_that_does_not_exist_yet_creates_it() {
    let srv = server();
    populate(&srv);
    let want = checksums(&srv);
    let file = backup(&srv, &[]);
    let fresh = format!("{}_fresh", srv.db.name);
    let drop_fresh = || {
        let mut admin = postgres::Client::connect(&common::admin_url(), postgres::NoTls).unwrap();
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{fresh}\" WITH (FORCE)")).unwrap();
    };
    drop_fresh();
    // Backing up a database that does not exist is a failure, and leaves nothing.
    let o = adc(&srv, &["backup", "--output", "x.sql"], &[("DB_NAME", &fresh)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("does not exist"));
    assert!(!srv.dir.path().join("x.sql").exists());
    // A dry run says it would create it, and does not.
    let o = adc(&srv, &["restore", "--dry-run", file.to_str().unwrap()], &[("DB_NAME", &fresh)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("would be created"), "{}", stdout(&o));
    let mut admin = postgres::Client::connect(&common::admin_url(), postgres::NoTls).unwrap();
    let exists = |admin: &mut postgres::Client| {
        admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&fresh]).unwrap().is_some()
    };
    assert!(!exists(&mut admin));
    // A restore that fails leaves no database behind: "as it was" is "not there".
    let failing = srv.dir.path().join("failing.sql");
    std::fs::write(&failing, "SELECT 1/0;\n--\n-- PostgreSQL database dump complete\n--\n").unwrap();
    let o = adc(&srv, &["restore", "--yes", failing.to_str().unwrap()], &[("DB_NAME", &fresh)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(error_line(&o).contains("division by zero"), "{}", stderr(&o));
    assert!(!exists(&mut admin), "the database made for the failed restore was dropped");
    let o = adc(&srv, &["restore", "--yes", file.to_str().unwrap()], &[("DB_NAME", &fresh)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(exists(&mut admin));
    let mut cfg: postgres::Config = common::admin_url().parse().unwrap();
    cfg.dbname(&fresh);
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    let users: i64 = c.query_one("SELECT count(*) FROM users", &[]).unwrap().get(0);
    let ana: i64 = c.query_one("SELECT count(*) FROM users WHERE email = 'ana@example.com'", &[]).unwrap().get(0);
    drop(c);
    drop_fresh();
    assert_eq!((users, ana), (2, 1));
    assert_eq!(checksums(&srv), want, "the source is untouched");
}

/// Run `adcluster ARGS` on a pseudo-terminal (util-linux `script`), typing `input`.
fn on_a_terminal(srv: &TestServer, args: &str, input: &str) -> Option<Output> {
    if Command::new("script").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return None;
    }
    let cmd = format!("exec {} {args}", env!("CARGO_BIN_EXE_adcluster"));
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    // Give the prompt a moment to appear, then answer.
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().ok()
}

#[test]
fn on_a_terminal_restore_asks_first() {
    let srv = server();
    let t = populate(&srv);
    let at_backup = checksums(&srv);
    backup(&srv, &[]);
    change_everything(&srv, &t);
    let changed = checksums(&srv);
    let Some(o) = on_a_terminal(&srv, "restore", "no\n") else {
        eprintln!("SKIPPED: util-linux `script` is not installed; the terminal prompt was not tested");
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout).into_owned(); // the pty merges both streams
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("Type yes to go on"), "{text}");
    assert!(text.contains("error: restore cancelled"), "{text}");
    assert_eq!(checksums(&srv), changed);
    // Ctrl-C at the prompt: stopped at once, nothing changed.
    let o = on_a_terminal(&srv, "restore", "\x03").unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("error: interrupted by SIGINT; nothing was changed"), "{text}");
    assert_eq!(checksums(&srv), changed);
    let o = on_a_terminal(&srv, "restore", "yes\n").unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(checksums(&srv), at_backup);
}
