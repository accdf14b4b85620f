//! `GET /metrics` (docs/operations.md, "Metrics"): off unless `METRICS_ADDR` is set, then on its
//! own listener only; the text is read by a real Prometheus parser — `prometheus_client.parser`
//! from PyPI's `prometheus-client`, in a venv under `target/` that this test makes when it is
//! missing. A machine where it cannot be made fails the test, saying what is missing: a
//! metrics test that silently checks nothing would be worse than none.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ws::WsClient;
use common::{Opts, TestServer};
use serde_json::{json, Value};

const EMAIL: &str = "metrics-person@example.com";

/// Python with `prometheus_client` installed: `PROMETHEUS_PARSER_PYTHON`, else the venv in
/// `target/prom-venv` (made now if missing).
fn parser_python() -> PathBuf {
    if let Ok(p) = std::env::var("PROMETHEUS_PARSER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/prom-venv");
    let python = venv.join("bin/python");
    let has = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !has(&python) {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
        assert!(
            matches!(made, Ok(s) if s.success()),
            "cannot make a Python venv for the Prometheus parser: install python3 and python3-venv \
             (apt-get install python3-venv), or set PROMETHEUS_PARSER_PYTHON to a python with prometheus-client"
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "prometheus-client"])
            .stdout(Stdio::null())
            .status();
        assert!(
            matches!(pip, Ok(s) if s.success()),
            "cannot pip install prometheus-client into {}: the /metrics format is not checked without it",
            venv.display()
        );
    }
    assert!(has(&python), "{} cannot import prometheus_client", python.display());
    python
}

/// Parse the exposition with the real parser; returns [{name, type, samples: [[name, labels, value]]}].
fn parse(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = Command::new(parser_python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<Value>(&o.stdout).unwrap().as_array().unwrap().clone()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap().iter())
        .find_map(|s| (s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v)).then(|| s[2].as_f64().unwrap()))
}

fn metrics_addr(srv: &TestServer) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.log();
        if let Some(rest) = log.split("served at http://").nth(1) {
            return rest.split('/').next().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no metrics address in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn post_json(srv: &TestServer, path: &str, body: &Value) -> common::Resp {
    srv.request("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let srv = TestServer::start();
    assert_eq!(srv.get("/metrics").status, 404);
    assert!(!srv.log().contains("served at"), "{}", srv.log());
}

#[test]
fn metrics_on_their_own_address_parse_and_count_what_happened() {
    let srv = TestServer::start_with(Opts::default().env("METRICS_ADDR", "127.0.0.1:0"));
    let addr: std::net::SocketAddr = metrics_addr(&srv).parse().unwrap();
    // Never on the API's port.
    assert_eq!(srv.get("/metrics").status, 404);

    let user = post_json(&srv, "/users/", &json!({ "email": EMAIL, "password": "password1" }));
    assert_eq!(user.status, 201);
    let id = user.json()["id"].as_i64().unwrap();
    for _ in 0..2 {
        assert_eq!(post_json(&srv, "/auth/login", &json!({ "email": EMAIL, "password": "wrong-pass" })).status, 401);
    }
    let login = post_json(&srv, "/auth/login", &json!({ "email": EMAIL, "password": "password1" }));
    let token = login.json()["access_token"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = srv.request("GET", &format!("/users/{id}"), &[("Authorization", &format!("Bearer {token}"))], b"");
        assert_eq!(r.status, 200);
    }
    assert_eq!(srv.get("/users/999999").status, 401);
    // A WebSocket client in a group, with a message to itself through the group.
    let (mut ws, _) = WsClient::join(&srv, "/ws/secret-client/secret-group");
    ws.send("/group hello");
    assert_eq!(ws.recv()["type"], "group");

    // The sender counts a delivery once its push returns, which can be a moment after the frame
    // is on the wire (a frame for an idle queue is written inside the push): scrape until the
    // group message shows, so the counts below are all settled.
    let scrape = || {
        let r = common::Conn::open(addr).send("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"), "{:?}", r.headers);
        r.text()
    };
    // 15 s: a CI run on 2026-12-04 (the whole suite at once) still read 0 after 5 s, once; the
    // failure now shows the scrape and the server's log, for the next time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut text = scrape();
    while sample(&parse(&text), "adcluster_ws_deliveries_total", &[]).unwrap_or(0.0) < 1.0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
        text = scrape();
    }
    let (id_path, id_label) = (format!("/users/{id}\""), format!("=\"{id}\""));
    for secret in [EMAIL, "secret-client", "secret-group", "wrong-pass", &id_path, &id_label] {
        assert!(
            !text.lines().filter(|l| !l.starts_with('#')).any(|l| l
                .split(' ')
                .next()
                .unwrap()
                .replace(&format!("le=\"{id}\""), "")
                .contains(secret)),
            "{secret} in a label:\n{text}"
        );
    }
    let f = parse(&text);
    let by = |route: &str, class: &str| {
        sample(&f, "adcluster_http_requests_total", &[("route", route), ("status", class)]).unwrap_or(0.0)
    };
    assert_eq!(by("/users/{user_id}", "2xx"), 3.0);
    assert_eq!(by("/users/{user_id}", "4xx"), 1.0);
    assert_eq!(by("/users/", "2xx"), 1.0);
    assert_eq!(by("/auth/login", "4xx"), 2.0);
    assert_eq!(by("/ws/{client_id}/{group}", "1xx"), 1.0);
    assert_eq!(
        sample(&f, "adcluster_http_request_duration_seconds_count", &[("route", "/users/{user_id}")]),
        Some(4.0)
    );
    assert_eq!(
        sample(&f, "adcluster_http_request_duration_seconds_bucket", &[("route", "/users/{user_id}"), ("le", "+Inf")]),
        Some(4.0)
    );
    assert_eq!(sample(&f, "adcluster_login_failures_total", &[]), Some(2.0));
    assert_eq!(sample(&f, "adcluster_login_rate_limited_total", &[]), Some(0.0));
    assert_eq!(sample(&f, "adcluster_ws_sessions", &[]), Some(1.0));
    assert_eq!(sample(&f, "adcluster_ws_groups", &[]), Some(1.0));
    assert!(
        sample(&f, "adcluster_ws_deliveries_total", &[]).unwrap() >= 1.0,
        "the group message is not counted:\n{text}\nserver log:\n{}",
        srv.log()
    );
    assert_eq!(sample(&f, "adcluster_ws_slow_consumer_closes_total", &[]), Some(0.0));
    assert!(sample(&f, "adcluster_ws_batched_sends_total", &[]).is_some(), "no batched sends counter:\n{text}");
    assert_eq!(sample(&f, "adcluster_db_up", &[]), Some(1.0));
    let in_use = sample(&f, "adcluster_db_pool_connections", &[("state", "in_use")]).unwrap();
    let idle = sample(&f, "adcluster_db_pool_connections", &[("state", "idle")]).unwrap();
    assert!(in_use + idle >= 1.0, "the pool has served requests");
    assert_eq!(sample(&f, "adcluster_spool_depth", &[]), Some(0.0));
    assert!(sample(&f, "adcluster_http_open_connections", &[]).unwrap() >= 0.0);
    assert!(sample(&f, "adcluster_uptime_seconds", &[]).unwrap() > 0.0);
    let types: Vec<(&str, &str)> =
        f.iter().map(|x| (x["name"].as_str().unwrap(), x["type"].as_str().unwrap())).collect();
    assert!(types.contains(&("adcluster_http_request_duration_seconds", "histogram")), "{types:?}");
    assert!(types.contains(&("adcluster_http_requests", "counter")), "{types:?}");

    // Counters move: one more request is one more sample, and the scrape itself is not counted.
    srv.get("/health");
    let again = parse(&common::Conn::open(addr).send("GET", "/metrics", &[], b"").text());
    assert_eq!(sample(&again, "adcluster_http_requests_total", &[("route", "/health"), ("status", "2xx")]), Some(1.0));
    assert_eq!(sample(&again, "adcluster_http_requests_total", &[("route", "/metrics")]), None);
}

#[test]
fn a_bad_metrics_address_stops_the_start_with_one_error_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let srv = TestServer::start();
    let o = Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // A second instance beside the first needs a DATA_DIR of its own (else that is the error).
        .env("DATA_DIR", srv.dir.path().join("data-2"))
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("METRICS_ADDR"), "{err}");
}
