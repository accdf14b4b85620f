//! The database going away and coming back, for real: the server reaches PostgreSQL through a
//! TCP proxy owned by the test, and the test cuts and restores that proxy. Checks the contract's
//! "Degraded mode": `/health`, 503 with `Retry-After` for database work, WebSocket messaging
//! unaffected, an `alert` to the `admins` group and `ALERT_COMMAND` on each change.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ws::{eventually, WsClient};
use common::{Opts, TestServer};

/// A TCP forwarder to PostgreSQL that the test can cut (close every connection and refuse new
/// ones by closing them at once) and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let admin: postgres::Config = common::admin_url().parse().unwrap();
        let host = match admin.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let target = format!("{host}:{}", admin.get_ports().first().copied().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                conns2.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn the_database_goes_away_and_comes_back() {
    let proxy = Proxy::start();
    let dir = common::TempDir::new("alerts");
    let alerts_log = dir.path().join("alerts.log");
    let srv = TestServer::start_with(
        Opts::default()
            .env("DB_PORT", &proxy.port.to_string())
            .env("DB_CHECKOUT_TIMEOUT_MS", "500")
            .env("SECRET_KEY", "degraded-test-secret-0123456789abcdefghij")
            .env("ALERT_COMMAND", &format!("cat >> '{}'", alerts_log.display())),
    );
    let health = || srv.get("/health").json();
    assert_eq!(health()["database"], "up");
    let body = serde_json::json!({ "email": "d@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201);

    // The group `admins` is reserved for superusers.
    let out = srv.cli(&["user", "create", "--email", "ops@example.com", "--password", "password1", "--superuser"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ops = serde_json::json!({ "email": "ops@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], ops.as_bytes());
    let ops_token = r.json()["access_token"].as_str().unwrap().to_string();
    let (mut admin, _) = WsClient::join(&srv, &format!("/ws/ops1/admins?token={ops_token}"));
    let (mut a, _) = WsClient::join(&srv, "/ws/alice/room");
    let (mut b, _) = WsClient::join(&srv, "/ws/bob/room");
    let token = {
        let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
        r.json()["access_token"].as_str().unwrap().to_string()
    };
    let me = |srv: &TestServer| srv.request("GET", "/users/me", &[("Authorization", &format!("Bearer {token}"))], b"");

    // The database goes away. The first request to need it fails fast and wakes the monitor.
    proxy.cut();
    let r = me(&srv);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["detail"], "Database unavailable");
    assert!(r.header("retry-after").is_some());
    let alert = admin.recv_type("alert");
    assert_eq!(alert["event"], "database_down");
    assert!(alert["timestamp"].is_string());
    assert!(!alert.to_string().contains("password"));
    assert_eq!(health()["status"], "degraded");
    assert_eq!(health()["database"], "down");
    let other = serde_json::json!({ "email": "e@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], other.as_bytes());
    assert_eq!(r.status, 503);
    // Messaging does not need the database.
    a.send("/group still here");
    let g = b.recv_type("group");
    assert_eq!((g["from"].as_str(), g["message"].as_str()), (Some("alice"), Some("still here")));
    assert_eq!(srv.get("/api/ws/groups/room").json()["member_count"], 2);

    // It comes back: the monitor notices by itself (it probes every second while down).
    proxy.restore();
    let alert = admin.recv_type("alert");
    assert_eq!(alert["event"], "database_up");
    assert_eq!(health()["status"], "ok");
    assert_eq!(me(&srv).status, 200);
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], other.as_bytes());
    assert_eq!(r.status, 201);

    // ALERT_COMMAND got both events as JSON lines on its standard input.
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&alerts_log)
            .is_ok_and(|t| t.lines().count() >= 2)),
        "ALERT_COMMAND output: {:?}",
        std::fs::read_to_string(&alerts_log)
    );
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&alerts_log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["database_down", "database_up"]);
    assert!(srv.log().contains("database is down") && srv.log().contains("database is up"));
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
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["database_down"]);
    assert_eq!(srv.get("/health").json()["database"], "down");
}

#[test]
fn starting_while_the_database_is_away_finishes_start_up_when_it_comes_back() {
    let proxy = Proxy::start();
    proxy.cut();
    let srv = TestServer::start_with(Opts::default().env("DB_PORT", &proxy.port.to_string()));
    assert_eq!(srv.get("/health").json()["database"], "down");
    let body = serde_json::json!({ "email": "late@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 503);
    proxy.restore();
    // The monitor creates nothing here (the harness made the database) but applies the
    // migrations it could not apply at start: sign-up then works.
    assert!(eventually(Duration::from_secs(15), || srv.get("/health").json()["database"] == "up"));
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(srv.log().contains("applied migrations"));
}
