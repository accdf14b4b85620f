//! The contract's "Degraded mode", for real: each test runs the server against a private
//! PostgreSQL cluster of its own (`common::pgcluster`) and stops it with `pg_ctl stop -m
//! immediate`. Checks `/health` within 5 s both ways, the alerts, accounts served from memory
//! with `X-Data-Stale: true`, fast 503s with `Retry-After`, uploads through the spool landing
//! exactly once (also across `kill -9` during the replay, a torn journal tail, a full disk), an
//! upload's commit killed during the outage leaving no orphan file, a server started before its
//! database, the causes in the log, and that a merely busy pool is not an outage.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::pgcluster::PgCluster;
use common::ws::{eventually, WsClient};
use common::{get_auth, login, post_json, signup, token, Opts, Resp, TestServer};
use serde_json::{json, Value};

const SECRET: &str = "degraded-test-secret-0123456789abcdefghij";
const BOUNDARY: &str = "----adcDegradedBoundary0123";

fn form(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, filename, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn upload(srv: &TestServer, token: &str, path: &str, parts: &[(&str, &str, &[u8])]) -> Resp {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let auth = format!("Bearer {token}");
    srv.request("POST", path, &[("Content-Type", &ct), ("Authorization", &auth)], &form(parts))
}

fn upload_one(srv: &TestServer, token: &str, name: &str, bytes: &[u8]) -> Value {
    let r = upload(srv, token, "/api/upload", &[("file", name, bytes)]);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn health(srv: &TestServer) -> Value {
    srv.get("/health").json()
}

/// Poll `/health` until `database` is `want`; the time it took.
fn wait_health(srv: &TestServer, want: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if health(srv)["database"] == want {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("/health did not say database={want} within {timeout:?}; log:\n{}", srv.log());
}

/// Filename → how many times `GET /api/files` lists it.
fn listed(srv: &TestServer, token: &str, query: &str) -> BTreeMap<String, usize> {
    let r = get_auth(srv, &format!("/api/files{query}"), token);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut out = BTreeMap::new();
    for f in r.json()["files"].as_array().unwrap() {
        *out.entry(f["filename"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    out
}

fn assert_fast_503(r: &Resp, took: Duration) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["detail"], "Database unavailable");
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    // The checkout timeout is 2 s; a fast 503 does not wait for it.
    assert!(took < Duration::from_millis(500), "503 took {took:?}: it waited for the pool");
}

#[test]
fn the_database_goes_away_and_comes_back() {
    let mut pg = PgCluster::start();
    let dir = common::TempDir::new("alerts");
    let alerts_log = dir.path().join("alerts.log");
    let srv = TestServer::start_with(
        pg.opts(Opts::default())
            .env("SECRET_KEY", SECRET)
            .env("ALERT_COMMAND", &format!("cat >> '{}'", alerts_log.display())),
    );
    assert_eq!(health(&srv)["database"], "up");
    assert_eq!(health(&srv)["spool"], 0);
    let me = signup(&srv, "d@example.com");
    let tok = token(&srv, "d@example.com");
    signup(&srv, "limited@example.com");
    // The group `admins` is reserved for superusers.
    let out = srv.cli(&["user", "create", "--email", "ops@example.com", "--password", "password1", "--superuser"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ops_token = token(&srv, "ops@example.com");
    let (mut admin, _) = WsClient::join(&srv, &format!("/ws/ops1/admins?token={ops_token}"));
    let (mut a, _) = WsClient::join(&srv, "/ws/alice/room");
    let (mut b, _) = WsClient::join(&srv, "/ws/bob/room");

    // The outage. Seen within 5 s, alerted.
    pg.stop_immediate();
    let detect = wait_health(&srv, "down", Duration::from_secs(10));
    println!("outage seen by /health after {detect:?}");
    assert!(detect < Duration::from_secs(5), "outage seen after {detect:?}");
    assert_eq!(health(&srv)["status"], "degraded");
    let alert = admin.recv_type("alert");
    assert_eq!(alert["event"], "database_down");
    assert!(!alert.to_string().contains("password"));

    // Accounts from memory, with X-Data-Stale.
    let r = login(&srv, "d@example.com", "password1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-data-stale"), Some("true"));
    let stale_token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = srv.request(
        "POST",
        "/auth/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"username=D%40example.com&password=password1",
    );
    assert_eq!((r.status, r.header("x-data-stale")), (200, Some("true")), "form login: {}", r.text());
    for t in [&tok, &stale_token] {
        let r = get_auth(&srv, "/users/me", t);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-data-stale"), Some("true"));
        assert_eq!(r.json(), me);
    }
    let r = get_auth(&srv, &format!("/users/{}", me["id"]), &tok);
    assert_eq!((r.status, r.header("x-data-stale")), (200, Some("true")));
    assert_eq!(r.json(), me);
    // Not in memory: the database would know, it is away.
    let r = get_auth(&srv, "/users/999999", &tok);
    assert_eq!(r.status, 503, "{}", r.text());
    // Wrong password: still 401. Unknown account: 503.
    let r = login(&srv, "d@example.com", "wrong-password");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["detail"], "Incorrect email or password");
    let r = login(&srv, "nobody@example.com", "password1");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["detail"], "Database unavailable");
    // A bad token is still 401.
    assert_eq!(get_auth(&srv, "/users/me", "not-a-token").status, 401);
    // The rate limit still applies.
    for i in 0..10 {
        assert_eq!(login(&srv, "limited@example.com", "wrong-password").status, 401, "attempt {i}");
    }
    let r = login(&srv, "limited@example.com", "password1");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());

    // Writes that need the database: 503 at once.
    let t = Instant::now();
    let r = post_json(&srv, "/users/", None, &json!({ "email": "e@example.com", "password": "password1" }));
    let took = t.elapsed();
    println!("sign-up while down answered {} in {took:?}", r.status);
    assert_fast_503(&r, took);
    let t = Instant::now();
    let r = post_json(&srv, "/teams/", Some(&tok), &json!({ "name": "t" }));
    assert_fast_503(&r, t.elapsed());
    let t = Instant::now();
    let r = get_auth(&srv, "/api/files", &tok);
    assert_fast_503(&r, t.elapsed());

    // Messaging does not need the database.
    a.send("/group still here");
    let g = b.recv_type("group");
    assert_eq!((g["from"].as_str(), g["message"].as_str()), (Some("alice"), Some("still here")));
    assert_eq!(srv.get("/api/ws/groups/room").json()["member_count"], 2);
    // A token is checked against memory: a connect and the REST API with it keep working.
    let (mut carol, welcome) = WsClient::join(&srv, &format!("/ws/carol/room?token={tok}"));
    assert_eq!(welcome["client_id"], "carol");
    let r = post_json(&srv, "/api/ws/send_to/carol", Some(&tok), &json!({ "message": "from rest" }));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(carol.recv_type("private")["message"], "from rest");
    // A superuser known from memory may still join `admins`; a plain user still may not.
    let (_ops2, w) = WsClient::join(&srv, &format!("/ws/ops2/admins?token={ops_token}"));
    assert_eq!(w["group"], "admins");
    assert!(common::ws::WsClient::try_connect(srv.addr, &format!("/ws/dee/admins?token={tok}"), &[]).is_err());

    // Its cause is in the log at WARN, in plain words.
    assert!(
        eventually(Duration::from_secs(5), || srv
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("Connection refused") && l.contains("nothing listens"))),
        "no cause in the log:\n{}",
        srv.log()
    );

    // It comes back: seen within 5 s, alerted, fresh data again.
    pg.start_again();
    let back = wait_health(&srv, "up", Duration::from_secs(10));
    println!("return seen by /health after {back:?}");
    assert!(back < Duration::from_secs(5), "return seen after {back:?}");
    assert_eq!(health(&srv)["status"], "ok");
    assert_eq!(admin.recv_type("alert")["event"], "database_up");
    let r = get_auth(&srv, "/users/me", &tok);
    assert_eq!((r.status, r.header("x-data-stale")), (200, None));
    let r = post_json(&srv, "/users/", None, &json!({ "email": "e@example.com", "password": "password1" }));
    assert_eq!(r.status, 201, "{}", r.text());

    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&alerts_log)
            .is_ok_and(|t| t.lines().count() >= 2)),
        "ALERT_COMMAND output: {:?}",
        std::fs::read_to_string(&alerts_log)
    );
    let events: Vec<String> = std::fs::read_to_string(&alerts_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["database_down", "database_up"]);
}

#[test]
fn accounts_changed_behind_the_servers_back_are_not_served_from_memory_in_an_outage() {
    // Deactivated and deleted by SQL (as another instance or an operator would), then the
    // database goes away before either account makes a request: the cache must not hand them
    // their access back. The refresh (every second here) brings the cache in line first.
    let mut pg = PgCluster::start();
    let srv = TestServer::start_with(
        pg.opts(Opts::default()).env("SECRET_KEY", SECRET).env("ACCOUNT_CACHE_REFRESH_SECS", "1"),
    );
    let (dave, erin) = (signup(&srv, "dave@example.com"), signup(&srv, "erin@example.com"));
    let (dave_t, erin_t) = (token(&srv, "dave@example.com"), token(&srv, "erin@example.com"));
    let keep_t = {
        signup(&srv, "keep@example.com");
        token(&srv, "keep@example.com")
    };
    for t in [&dave_t, &erin_t, &keep_t] {
        assert_eq!(get_auth(&srv, "/users/me", t).status, 200);
    }
    let mut c = pg.client(&srv.db.name);
    c.execute("UPDATE users SET is_active = false WHERE id = $1", &[&dave["id"].as_i64().unwrap()]).unwrap();
    c.execute("DELETE FROM users WHERE id = $1", &[&erin["id"].as_i64().unwrap()]).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(2500));
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    // Deactivated: known and refused. Deleted: forgotten, so unknown in an outage (503, as for
    // any account not in memory), never served.
    let r = get_auth(&srv, "/users/me", &dave_t);
    assert_eq!(r.status, 401, "deactivated: {}", r.text());
    let r = get_auth(&srv, "/users/me", &erin_t);
    assert_eq!(r.status, 503, "deleted: {}", r.text());
    for email in ["dave@example.com", "erin@example.com"] {
        let r = login(&srv, email, "password1");
        assert_ne!(r.status, 200, "{email} logged in from memory: {}", r.text());
    }
    // The others are still served from memory.
    let r = get_auth(&srv, "/users/me", &keep_t);
    assert_eq!((r.status, r.header("x-data-stale")), (200, Some("true")), "{}", r.text());
}

#[test]
fn uploads_during_an_outage_appear_exactly_once_after_it() {
    let mut pg = PgCluster::start();
    let srv = TestServer::start_with(pg.opts(Opts::default()).env("SECRET_KEY", SECRET));
    let me = signup(&srv, "up@example.com");
    let tok = token(&srv, "up@example.com");
    signup(&srv, "other@example.com");
    let other = token(&srv, "other@example.com");
    let before = upload_one(&srv, &tok, "before.txt", b"before");
    upload_one(&srv, &other, "others.txt", b"not mine");

    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    let mut during = Vec::new();
    for i in 0..5 {
        let bytes = format!("during {i}");
        let r = upload(&srv, &tok, "/api/upload", &[("file", &format!("d{i}.txt"), bytes.as_bytes())]);
        assert_eq!(r.status, 201, "{}", r.text());
        let rec = r.json();
        // The full record, as when the database is up.
        assert_eq!(rec["uploaded_by"], me["id"]);
        assert_eq!(rec["original_filename"], format!("d{i}.txt"));
        assert_eq!(rec["size"], bytes.len());
        assert!(rec["uploaded_at"].is_string() && rec["url"].is_string());
        // The bytes are served during the outage.
        let got = srv.get(rec["url"].as_str().unwrap());
        assert_eq!((got.status, got.body.as_slice()), (200, bytes.as_bytes()));
        during.push(rec["filename"].as_str().unwrap().to_string());
    }
    let r = upload(&srv, &tok, "/api/upload/multiple", &[("files", "m1.png", b"m1"), ("files", "m2.pdf", b"m2")]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["count"], 2);
    for f in r.json()["files"].as_array().unwrap() {
        during.push(f["filename"].as_str().unwrap().to_string());
    }
    assert_eq!(health(&srv)["spool"], 7);

    pg.start_again();
    wait_health(&srv, "up", Duration::from_secs(10));
    assert!(eventually(Duration::from_secs(10), || health(&srv)["spool"] == 0), "spool not drained:\n{}", srv.log());
    let all = listed(&srv, &tok, "");
    for name in during.iter().chain([&before["filename"].as_str().unwrap().to_string()]) {
        assert_eq!(all.get(name), Some(&1), "{name} listed {:?} times", all.get(name));
    }
    assert_eq!(all.len(), 9, "{all:?}");
    // `mine=true`: the caller's only; every spooled record kept its uploader.
    let mine = listed(&srv, &tok, "?mine=true");
    assert_eq!(mine.len(), 8);
    assert!(mine.keys().all(|k| during.contains(k) || before["filename"] == k.as_str()));
    assert_eq!(listed(&srv, &other, "?mine=true").len(), 1);
    assert_eq!(listed(&srv, &tok, "?category=images&mine=true").len(), 1);
    // And in the database itself, once each.
    let mut c = pg.client(&srv.db.name);
    let dups: i64 = c
        .query_one("SELECT count(*) FROM (SELECT filename FROM uploads GROUP BY filename HAVING count(*) > 1) d", &[])
        .unwrap()
        .get(0);
    assert_eq!(dups, 0);
    assert!(eventually(Duration::from_secs(5), || srv.log().contains("replayed 7 upload record(s)")), "{}", srv.log());
}

#[test]
fn kill_9_during_the_replay_loses_nothing_and_doubles_nothing() {
    let mut pg = PgCluster::start();
    // Debug builds only: the replayer pauses before each entry, so the kill lands mid-replay.
    let mut srv = TestServer::start_with(
        pg.opts(Opts::default()).env("SECRET_KEY", SECRET).env("ADCLUSTER_TEST_REPLAY_DELAY_MS", "400"),
    );
    signup(&srv, "k@example.com");
    let tok = token(&srv, "k@example.com");
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    let names: Vec<String> = (0..8)
        .map(|i| {
            upload_one(&srv, &tok, &format!("k{i}.bin"), format!("kill {i}").as_bytes())["filename"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(health(&srv)["spool"], 8);

    pg.start_again();
    let count = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM uploads", &[]).map(|r| r.get(0)).unwrap_or(-1)
    };
    let partway = pg
        .poll(&srv.db.name, Duration::from_secs(20), |c| {
            let n = count(c);
            (n >= 2).then_some(n)
        })
        .expect("the replay did not start");
    srv.kill();
    let mut c = pg.client(&srv.db.name);
    let at_kill = count(&mut c);
    println!("killed with {partway}..{at_kill} of 8 records replayed");
    assert!(at_kill < 8, "the replay had finished before the kill ({at_kill}); the test proves nothing");

    srv.start_again();
    assert!(eventually(Duration::from_secs(30), || health(&srv)["spool"] == 0), "not drained:\n{}", srv.log());
    let all = listed(&srv, &tok, "");
    assert_eq!(all.len(), 8, "{all:?}");
    for n in &names {
        assert_eq!(all.get(n), Some(&1), "{n}");
    }
    assert_eq!(count(&mut c), 8);
    let claimed: i64 = c.query_one("SELECT count(*) FROM spool_applied", &[]).unwrap().get(0);
    assert_eq!(claimed, 8, "each entry claimed once");
}

#[test]
fn a_torn_journal_tail_is_skipped_and_the_rest_replayed() {
    let mut pg = PgCluster::start();
    let mut srv = TestServer::start_with(pg.opts(Opts::default()).env("SECRET_KEY", SECRET));
    signup(&srv, "t@example.com");
    let tok = token(&srv, "t@example.com");
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    let a = upload_one(&srv, &tok, "a.txt", b"a")["filename"].as_str().unwrap().to_string();
    let b = upload_one(&srv, &tok, "b.txt", b"b")["filename"].as_str().unwrap().to_string();
    srv.kill();
    // A crash in the middle of a third append: half a line, no newline.
    let journal = srv.dir.path().join("data").join("spool").join("journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 2);
    let torn = r#"{"id":"0123456789abcdef0123456789abcdef","records":[{"filename":"torn.txt","origi"#;
    text.push_str(torn);
    std::fs::write(&journal, &text).unwrap();

    srv.start_again();
    assert!(eventually(Duration::from_secs(5), || srv.log().contains("is torn")), "{}", srv.log());
    assert_eq!(health(&srv)["spool"], 2);
    pg.start_again();
    assert!(eventually(Duration::from_secs(15), || health(&srv)["spool"] == 0), "{}", srv.log());
    let all = listed(&srv, &tok, "");
    assert_eq!(all.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![a, b];
        v.sort();
        v
    });
    assert!(!std::fs::read_to_string(&journal).unwrap().contains("torn.txt"));
}

#[test]
fn a_spool_that_cannot_be_written_answers_503_and_keeps_no_file() {
    let mut pg = PgCluster::start();
    let mut srv = TestServer::start_with(pg.opts(Opts::default()).env("SECRET_KEY", SECRET));
    signup(&srv, "f@example.com");
    srv.kill();
    // A full disk: every write to the journal fails with ENOSPC.
    let journal = srv.dir.path().join("data").join("spool").join("journal.jsonl");
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink("/dev/full", &journal).unwrap();
    srv.start_again();
    // A new process has an empty account cache: log in while the database is up.
    let tok = token(&srv, "f@example.com");
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    let r = upload(&srv, &tok, "/api/upload", &[("file", "x.txt", b"lost?")]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["detail"], "Database unavailable");
    assert!(r.header("retry-after").is_some());
    let docs = srv.dir.path().join("uploads").join("documents");
    let left: Vec<_> = std::fs::read_dir(&docs).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
    let tmp = srv.dir.path().join("uploads").join(".tmp");
    // The server's own temp-file owner lock (`<pid>-<random>.lock`) is not an upload.
    let temps: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_none_or(|x| x != "lock")).collect())
        .unwrap_or_default();
    assert!(temps.is_empty(), "temp files left behind: {temps:?}");
    assert!(
        eventually(Duration::from_secs(5), || srv.log().contains("cannot write the upload spool")),
        "{}",
        srv.log()
    );
}

#[test]
fn a_server_started_before_its_database_creates_and_migrates_it_when_it_comes() {
    let mut pg = PgCluster::init_stopped();
    let srv = TestServer::start_with(pg.opts(Opts::default()).env("SECRET_KEY", SECRET));
    assert_eq!(health(&srv)["database"], "down");
    let t = Instant::now();
    let r = post_json(&srv, "/users/", None, &json!({ "email": "late@example.com", "password": "password1" }));
    assert_fast_503(&r, t.elapsed());
    pg.start_again();
    let back = wait_health(&srv, "up", Duration::from_secs(15));
    println!("database seen after {back:?}");
    assert!(back < Duration::from_secs(5));
    let r = post_json(&srv, "/users/", None, &json!({ "email": "late@example.com", "password": "password1" }));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(srv.log().contains("applied migrations [1, 2, 3"), "{}", srv.log());
    // The database did not exist on this fresh cluster: the server created it.
    let mut c = pg.client("postgres");
    let n: i64 = c.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&srv.db.name]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn starting_without_a_database_is_alerted_once() {
    let dir = common::TempDir::new("alerts0");
    let log = dir.path().join("alerts.log");
    let srv = TestServer::start_with(
        Opts::default().env("DB_PORT", "1").env("ALERT_COMMAND", &format!("cat >> '{}'", log.display())),
    );
    assert!(eventually(Duration::from_secs(10), || std::fs::read_to_string(&log).is_ok_and(|t| !t.is_empty())));
    // The monitor keeps probing every second; the state does not change, so nothing more is sent.
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["database_down"]);
    assert_eq!(health(&srv)["database"], "down");
    // The cause, once, not once per probe.
    assert_eq!(srv.log().matches("Connection refused").count(), 1, "{}", srv.log());
}

#[test]
fn a_busy_pool_is_not_an_outage() {
    let dir = common::TempDir::new("busy");
    let alerts_log = dir.path().join("alerts.log");
    let srv = TestServer::start_with(
        Opts::default()
            .env("SECRET_KEY", SECRET)
            .env("DB_POOL_SIZE", "1")
            .env("DB_CHECKOUT_TIMEOUT_MS", "300")
            // No statement timeout: the blocked request must wait for the lock, holding the pool.
            .env("DB_STATEMENT_TIMEOUT_MS", "0")
            .env("ALERT_COMMAND", &format!("cat >> '{}'", alerts_log.display())),
    );
    signup(&srv, "busy@example.com");
    let tok = token(&srv, "busy@example.com");
    // Hold the pool's only connection: a request blocks on a table locked from outside.
    let mut locker = srv.db.client();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let addr = srv.addr;
    let tok2 = tok.clone();
    let blocked = std::thread::spawn(move || {
        let mut c = common::Conn::open(addr);
        c.send("GET", "/users/me", &[("Authorization", &format!("Bearer {tok2}"))], b"").status
    });
    std::thread::sleep(Duration::from_millis(500));
    // Others time out at checkout: 503, but PostgreSQL is fine, and the monitor knows it.
    let mut refused = 0;
    for _ in 0..5 {
        let r = get_auth(&srv, "/teams/", &tok);
        if r.status == 503 {
            refused += 1;
        }
        assert_eq!(health(&srv)["database"], "up");
    }
    assert!(refused > 0, "the pool was not busy; the test proves nothing");
    // No degraded trust either: the caller is not served from memory.
    let r = get_auth(&srv, "/users/me", &tok);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-data-stale"), None);
    let r = login(&srv, "busy@example.com", "password1");
    assert_eq!((r.status, r.header("x-data-stale")), (503, None), "{}", r.text());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(health(&srv)["database"], "up");
    tx.rollback().unwrap();
    assert_eq!(blocked.join().unwrap(), 200);
    assert_eq!(get_auth(&srv, "/users/me", &tok).status, 200);
    assert!(!srv.log().contains("database is down"), "{}", srv.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::fs::read_to_string(&alerts_log).unwrap_or_default().is_empty(), "an alert was sent");
}

#[test]
fn a_query_stuck_behind_a_lock_is_cut_off_with_a_503_and_no_outage() {
    let dir = common::TempDir::new("stuck");
    let alerts_log = dir.path().join("alerts.log");
    let srv = TestServer::start_with(
        Opts::default()
            .env("SECRET_KEY", SECRET)
            .env("DB_STATEMENT_TIMEOUT_MS", "300")
            .env("ALERT_COMMAND", &format!("cat >> '{}'", alerts_log.display())),
    );
    signup(&srv, "stuck@example.com");
    let tok = token(&srv, "stuck@example.com");
    let mut locker = srv.db.client();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    // Every request that reads users waits 300 ms for the lock, then gets the contract's 503; the
    // worker and the pooled connection are free again (no request is left hanging).
    for _ in 0..3 {
        let r = get_auth(&srv, "/users/me", &tok);
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["detail"], "Database unavailable");
        assert!(r.header("retry-after").is_some());
        assert_eq!(r.header("x-data-stale"), None, "served from memory while PostgreSQL is up");
    }
    assert_eq!(health(&srv)["database"], "up");
    tx.rollback().unwrap();
    assert_eq!(get_auth(&srv, "/users/me", &tok).status, 200);
    assert!(!srv.log().contains("database is down"), "{}", srv.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::fs::read_to_string(&alerts_log).unwrap_or_default().is_empty(), "an alert was sent");
}

#[test]
fn credentials_that_will_not_heal_are_said_plainly() {
    // A role that does not exist.
    let srv = TestServer::start_with(Opts::default().env("DB_USER", "adc_no_such_role"));
    assert!(
        eventually(Duration::from_secs(5), || srv.log().contains("role \"adc_no_such_role\" does not exist")),
        "{}",
        srv.log()
    );
    let line = srv.log().lines().find(|l| l.contains("does not exist")).unwrap().to_string();
    assert!(line.contains("WARN") && line.contains("will not heal"), "{line}");
    // A wrong password (a cluster that asks for one).
    let pg = PgCluster::start_with_password("right-password-123");
    let srv = TestServer::start_with(pg.opts(Opts::default()).env("DB_PASSWORD", "wrong-password-456"));
    assert!(
        eventually(Duration::from_secs(5), || srv.log().contains("password authentication failed")),
        "{}",
        srv.log()
    );
    let line = srv.log().lines().find(|l| l.contains("password authentication failed")).unwrap().to_string();
    assert!(line.contains("WARN") && line.contains("will not heal"), "{line}");
    assert!(!srv.log().contains("wrong-password-456"), "the password is in the log");
    // The right one: up.
    let srv = TestServer::start_with(pg.opts(Opts::default()));
    assert_eq!(health(&srv)["database"], "up", "{}", srv.log());
}

/// Upload into a server set to kill itself during the commit; wait for it to die.
fn upload_and_die(srv: &mut TestServer, token: &str, name: &str) {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let auth = format!("Bearer {token}");
    let body = form(&[("file", name, b"crash")]);
    let mut c = srv.connect();
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: t\r\nContent-Type: {ct}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write(head.as_bytes());
    c.write(&body);
    assert!(c.try_read_response(false).is_none(), "the upload was answered: the test hook did not fire");
    assert!(srv.wait_exit(Duration::from_secs(10)).is_none(), "not killed by a signal");
}

fn documents(srv: &TestServer) -> Vec<String> {
    std::fs::read_dir(srv.dir.path().join("uploads").join("documents"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A crash in the middle of an upload's commit while the database is away: a file whose record
/// reached the spool stays (and is listed once the database is back); a file with no record
/// anywhere waits for the database to say so, then goes. Debug builds only (the test hook).
#[test]
fn a_crash_during_an_upload_in_an_outage_leaves_no_orphan() {
    let mut pg = PgCluster::start();
    let mut srv = TestServer::start_with(
        pg.opts(Opts::default()).env("SECRET_KEY", SECRET).env("ADCLUSTER_TEST_CRASH_AT", "after-record"),
    );
    signup(&srv, "c@example.com");
    // Logged in while the database is up: the account is cached for the outage.
    let tok = token(&srv, "c@example.com");

    // The record is in the spool when the server dies: the restart keeps the file, at once.
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    upload_and_die(&mut srv, &tok, "spooled.txt");
    srv.restart_with_crash_point(None);
    let kept = documents(&srv);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(srv.intent_files().len(), 0, "decided from the spool without the database");
    assert_eq!(srv.get(&format!("/uploads/documents/{}", kept[0])).status, 200);
    pg.start_again();
    wait_health(&srv, "up", Duration::from_secs(10));
    assert!(eventually(Duration::from_secs(15), || health(&srv)["spool"] == 0), "{}", srv.log());
    let tok = token(&srv, "c@example.com");
    assert_eq!(listed(&srv, &tok, "").keys().cloned().collect::<Vec<_>>(), kept);

    // Moved into place, no record anywhere: kept while the database cannot say, removed after.
    srv.restart_with_crash_point(Some("after-rename"));
    let tok = token(&srv, "c@example.com");
    pg.stop_immediate();
    wait_health(&srv, "down", Duration::from_secs(10));
    upload_and_die(&mut srv, &tok, "orphan.txt");
    let orphan: Vec<String> = documents(&srv).into_iter().filter(|n| !kept.contains(n)).collect();
    assert_eq!(orphan.len(), 1, "the crash came before the rename");
    srv.restart_with_crash_point(None);
    assert_eq!(srv.intent_files().len(), 1, "undecided while the database is away");
    pg.start_again();
    let url = format!("/uploads/documents/{}", orphan[0]);
    assert!(eventually(Duration::from_secs(20), || srv.get(&url).status == 404), "orphan still served:\n{}", srv.log());
    assert_eq!(documents(&srv), kept);
    assert!(eventually(Duration::from_secs(5), || srv.intent_files().is_empty()));
    let mut c = pg.client(&srv.db.name);
    let n: i64 = c.query_one("SELECT count(*) FROM uploads", &[]).unwrap().get(0);
    assert_eq!(n, 1, "only the spooled upload has a record");
}
