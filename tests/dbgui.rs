//! The contract's "Database web GUI" section against the real binary (`adcluster db-gui`) and a
//! real PostgreSQL: the start line and the token, the session cookie, cross-site refusal, every
//! API row, read-only refusal and the timeout, the row cap, exports (CSV byte-compared with
//! `psql --csv`, JSON values by type, a million rows in bounded memory), saved queries across a
//! restart, the history, and a name that needs quoting.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_url, TempDir, TestDb};
use serde_json::{json, Value};

/// A running `adcluster db-gui`.
struct Gui {
    child: Child,
    addr: SocketAddr,
    token: String,
    line: String,
    log: Arc<Mutex<String>>,
    /// Lines printed on stdout after the start line (the contract allows none).
    extra: Arc<Mutex<Vec<String>>>,
}

/// Where a streamed body goes instead of memory.
type Sink<'a> = Option<&'a mut dyn FnMut(&[u8])>;

fn base_env(db: &TestDb, dir: &TempDir) -> Vec<(String, String)> {
    let admin: postgres::Config = admin_url().parse().unwrap();
    let host = match admin.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("DB_HOST".into(), host),
        ("DB_PORT".into(), admin.get_ports().first().copied().unwrap_or(5432).to_string()),
        ("DB_USER".into(), admin.get_user().unwrap_or("postgres").into()),
        (
            "DB_PASSWORD".into(),
            admin.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        ),
        ("DB_NAME".into(), db.name.clone()),
        ("DATA_DIR".into(), dir.path().join("data").display().to_string()),
        ("LOG_LEVEL".into(), "info".into()),
    ]
}

impl Gui {
    fn start(db: &TestDb, dir: &TempDir, env: &[(&str, &str)], args: &[&str]) -> Gui {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adcluster"));
        cmd.args(["db-gui", "--port", "0"])
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .envs(base_env(db, dir))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn adcluster db-gui");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let extra = Arc::new(Mutex::new(Vec::new()));
        {
            let extra = extra.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let first = lines.next().and_then(Result::ok);
                let _ = tx.send(first);
                for l in lines.map_while(Result::ok) {
                    extra.lock().unwrap().push(l);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(l)) => l,
            _ => {
                let _ = child.kill();
                panic!("db-gui printed no start line; log:\n{}", log.lock().unwrap());
            }
        };
        let rest = line.strip_prefix("db-gui: http://").unwrap_or_else(|| panic!("start line: {line}"));
        let (hostport, token) = rest.split_once("/?token=").unwrap_or_else(|| panic!("start line: {line}"));
        Gui { child, addr: hostport.parse().unwrap(), token: token.to_string(), line, log, extra }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `POST /api/export?format=FORMAT` with `body`, the exported bytes handed to `sink` as they
    /// arrive (not kept).
    fn export_to(&self, format: &str, body: &serde_json::Value, sink: &mut dyn FnMut(&[u8])) -> Resp {
        let auth = self.bearer();
        let path = format!("/api/export?format={format}");
        request_with(self.addr, "POST", &path, &[("Authorization", &auth)], body.to_string().as_bytes(), Some(sink))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A request with the bearer token.
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = self.bearer();
        request(self.addr, method, path, &[("Authorization", &auth)], body.as_bytes())
    }

    fn query(&self, sql: &str) -> Resp {
        self.api("POST", "/api/query", Some(json!({ "sql": sql })))
    }
}

impl Drop for Gui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A chunked body ended with its final chunk (a complete response).
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection (`Connection: close`); reads `Content-Length` and chunked
/// bodies. `sink`: for chunked bodies, receive the data instead of keeping it (big exports).
fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    mut sink: Sink<'_>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::with_capacity(1 << 16, s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status: u16 =
        status_line.split(' ').nth(1).unwrap_or_else(|| panic!("status line {status_line:?}")).parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut out = Vec::new();
    let mut complete = true;
    if get("transfer-encoding").as_deref() == Some("chunked") {
        complete = false;
        let mut chunk = Vec::new();
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
            if n == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                complete = true;
                break;
            }
            chunk.resize(n + 2, 0);
            if r.read_exact(&mut chunk).is_err() {
                break;
            }
            match sink.as_mut() {
                Some(f) => f(&chunk[..n]),
                None => out.extend_from_slice(&chunk[..n]),
            }
        }
    } else if let Some(n) = get("content-length") {
        out.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut out).unwrap();
    } else {
        r.read_to_end(&mut out).unwrap();
    }
    Resp { status, headers, body: out, complete }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    request_with(addr, method, path, headers, body, None)
}

fn setup(sql: &str) -> (TestDb, TempDir) {
    let db = TestDb::create();
    if !sql.is_empty() {
        db.client().batch_execute(sql).unwrap();
    }
    (db, TempDir::new("dbgui"))
}

/// Transactions the GUI left open on its connections (there must be none between requests).
fn open_gui_transactions(db: &TestDb) -> i64 {
    db.client()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'adcluster db-gui' \
             AND datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn start_line_token_cookie_and_bearer() {
    let (db, dir) = setup("CREATE TABLE t (x int)");
    let gui = Gui::start(&db, &dir, &[], &[]);
    assert!(gui.line.starts_with("db-gui: http://127.0.0.1:"), "{}", gui.line);
    assert_eq!(gui.token.len(), 64, "a random token: {}", gui.line);
    let other = Gui::start(&db, &dir, &[], &[]);
    assert_ne!(gui.token, other.token, "the token is random per start");
    drop(other);

    // No credentials, a wrong bearer, a wrong cookie: 401 on every API route.
    for path in ["/api/tables", "/api/tables/public/t", "/api/saved", "/api/history"] {
        let r = request(gui.addr, "GET", path, &[], b"");
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.json()["detail"].is_string());
    }
    assert_eq!(request(gui.addr, "GET", "/api/tables", &[("Authorization", "Bearer nope")], b"").status, 401);
    let wrong = format!("Bearer {}x", gui.token);
    assert_eq!(request(gui.addr, "GET", "/api/tables", &[("Authorization", &wrong)], b"").status, 401);
    assert_eq!(request(gui.addr, "GET", "/api/tables", &[("Cookie", "adcluster_dbgui=forged")], b"").status, 401);
    let r = request(gui.addr, "POST", "/api/query", &[], br#"{"sql": "select 1"}"#);
    assert_eq!(r.status, 401);
    // The bearer token works.
    assert_eq!(request(gui.addr, "GET", "/api/tables", &[("Authorization", &gui.bearer())], b"").status, 200);

    // A wrong token in the link: 401 and no cookie.
    let r = request(gui.addr, "GET", "/?token=wrong", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    // The page without a token is served, without a cookie.
    let r = request(gui.addr, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_none());
    // The right token sets an HttpOnly, SameSite=Strict cookie that opens the API.
    let r = request(gui.addr, "GET", &format!("/?token={}", gui.token), &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let csp = r.header("content-security-policy").expect("a CSP").to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    assert!(r.text().contains("/dbgui.js"));
    for (asset, ty) in [("/dbgui.js", "text/javascript"), ("/dbgui.css", "text/css")] {
        let a = request(gui.addr, "GET", asset, &[], b"");
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.header("content-type").unwrap().starts_with(ty), "{asset}");
    }
    let cookie = r.header("set-cookie").expect("a session cookie").to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(&gui.token), "the cookie is not the token itself: {cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = request(gui.addr, "GET", "/api/tables", &[("Cookie", &format!("other=1; {pair}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tables"][0]["name"], "t");

    // DB_GUI_TOKEN sets the token.
    let fixed = Gui::start(&db, &dir, &[("DB_GUI_TOKEN", "a-fixed-token-for-tests")], &["--host", "127.0.0.1"]);
    assert!(fixed.line.ends_with("/?token=a-fixed-token-for-tests"), "{}", fixed.line);
    let r = request(fixed.addr, "GET", "/api/tables", &[("Authorization", "Bearer a-fixed-token-for-tests")], b"");
    assert_eq!(r.status, 200);
    // The log never shows the token.
    assert!(!fixed.log().contains("a-fixed-token-for-tests"), "{}", fixed.log());
    assert!(!gui.log().contains(&gui.token));
    // Exactly one line on stdout.
    assert!(gui.extra.lock().unwrap().is_empty(), "{:?}", gui.extra.lock().unwrap());
}

#[test]
fn cross_site_posts_and_deletes_are_refused() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[], &[]);
    let auth = gui.bearer();
    let body = br#"{"sql": "select 1"}"#;
    for origin in ["http://evil.example", "null", "https://127.0.0.1", &format!("http://{}.evil", gui.addr)] {
        let r = request(gui.addr, "POST", "/api/query", &[("Authorization", &auth), ("Origin", origin)], body);
        assert_eq!(r.status, 403, "{origin}");
        let r =
            request(gui.addr, "POST", "/api/export?format=csv", &[("Authorization", &auth), ("Origin", origin)], body);
        assert_eq!(r.status, 403, "{origin}");
        let r = request(gui.addr, "DELETE", "/api/saved/1", &[("Authorization", &auth), ("Origin", origin)], b"");
        assert_eq!(r.status, 403, "{origin}");
    }
    // Refused even without credentials (the CSRF check comes first).
    let r = request(gui.addr, "POST", "/api/saved", &[("Origin", "http://evil.example")], b"{}");
    assert_eq!(r.status, 403);
    // A browser's own fetch metadata counts too.
    let r =
        request(gui.addr, "POST", "/api/query", &[("Authorization", &auth), ("Sec-Fetch-Site", "cross-site")], body);
    assert_eq!(r.status, 403);
    // The page's own origin is fine, and GETs carry no such check.
    let own = format!("http://{}", gui.addr);
    let r = request(gui.addr, "POST", "/api/query", &[("Authorization", &auth), ("Origin", &own)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(gui.addr, "GET", "/api/saved", &[("Authorization", &auth), ("Origin", "http://evil.example")], b"");
    assert_eq!(r.status, 200);
    // Nothing was saved or deleted by the refused requests.
    assert_eq!(gui.api("GET", "/api/saved", None).json()["queries"], json!([]));
}

#[test]
fn tables_and_table_detail_with_names_that_need_quoting() {
    let (db, _dir) = setup(
        r#"CREATE SCHEMA "My Schema";
           CREATE TABLE "Weird Table" (
               id serial PRIMARY KEY,
               "Odd ""Col""" text NOT NULL DEFAULT 'x',
               n numeric(10,2),
               at timestamptz DEFAULT now()
           );
           CREATE INDEX "weird idx" ON "Weird Table" (n);
           INSERT INTO "Weird Table" ("Odd ""Col""", n) SELECT 'row ' || g, g FROM generate_series(1, 5) g;
           CREATE TABLE "My Schema".plain (k bigint);
           INSERT INTO "My Schema".plain VALUES (1), (2), (3);
           CREATE VIEW v AS SELECT 1 AS one;
           CREATE TABLE parted (k int, at date) PARTITION BY RANGE (at);
           CREATE TABLE parted_2023 PARTITION OF parted FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
           CREATE TABLE parted_2024 PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           INSERT INTO parted SELECT g, date '2023-06-01' + g FROM generate_series(1, 400) g;"#,
    );
    let gui = Gui::start(&db, &_dir, &[], &[]);
    let r = gui.api("GET", "/api/tables", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let tables = r.json()["tables"].as_array().unwrap().clone();
    let find = |s: &str, n: &str| tables.iter().find(|t| t["schema"] == s && t["name"] == n).cloned();
    let weird = find("public", "Weird Table").expect("Weird Table listed");
    assert_eq!(weird["rows"], 5);
    assert!(weird["size_bytes"].as_i64().unwrap() > 0);
    assert_eq!(find("My Schema", "plain").expect("plain listed")["rows"], 3);
    assert!(tables.iter().all(|t| t["schema"] != "pg_catalog" && t["schema"] != "information_schema"));
    // A view is listed, not counted (counting could run any query); a partitioned table counts
    // its partitions, and its size is theirs.
    let view = find("public", "v").expect("the view listed");
    assert_eq!((view["kind"].as_str(), view["rows"].is_null()), (Some("view"), true));
    let parted = find("public", "parted").expect("the partitioned table listed");
    assert_eq!(parted["kind"], "partitioned table");
    assert_eq!(parted["rows"], 400);
    assert_eq!(parted["rows_exact"], true);
    assert!(parted["size_bytes"].as_i64().unwrap() > 0);

    let r = gui.api("GET", "/api/tables/public/Weird%20Table?limit=2&offset=1", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!((t["schema"].as_str(), t["name"].as_str()), (Some("public"), Some("Weird Table")));
    let cols = t["columns"].as_array().unwrap();
    assert_eq!(cols.len(), 4);
    assert_eq!(cols[0]["name"], "id");
    assert_eq!(cols[0]["type"], "integer");
    assert_eq!(cols[0]["nullable"], false);
    assert!(cols[0]["default"].as_str().unwrap().starts_with("nextval("));
    assert_eq!(cols[1]["name"], "Odd \"Col\"");
    assert_eq!(cols[1]["nullable"], false);
    assert_eq!(cols[1]["default"], "'x'::text");
    assert_eq!(cols[2]["type"], "numeric(10,2)");
    assert_eq!(cols[2]["nullable"], true);
    assert_eq!(cols[2]["default"], Value::Null);
    assert_eq!(cols[3]["type"], "timestamp with time zone");
    let idx: Vec<&str> = t["indexes"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(idx, ["Weird Table_pkey", "weird idx"]);
    assert!(t["indexes"][1]["definition"].as_str().unwrap().contains("USING btree (n)"));
    // The page: rows 2 and 3 in primary-key order; row_count is the table's.
    assert_eq!(t["row_count"], 5);
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], 2);
    assert_eq!(rows[0][1], "row 2");
    assert_eq!(rows[1][2], 3.0);
    assert!(rows[0][3].as_str().unwrap().ends_with('Z'));
    // Sorted by one column (quoted: the name holds a double quote), both ways; NULLs last.
    let t = gui.api("GET", "/api/tables/public/Weird%20Table?order=Odd%20%22Col%22&dir=desc&limit=2", None).json();
    assert_eq!(t["rows"].as_array().unwrap().iter().map(|r| r[1].clone()).collect::<Vec<_>>(), ["row 5", "row 4"]);
    let t = gui.api("GET", "/api/tables/public/Weird%20Table?order=n&limit=1", None).json();
    assert_eq!(t["rows"][0][2], 1.0);
    for q in ["order=nope", "order=n%3B%20drop%20table%20x", "order=n&dir=sideways"] {
        let r = gui.api("GET", &format!("/api/tables/public/Weird%20Table?{q}"), None);
        assert_eq!(r.status, 422, "{q}");
    }
    // Past the end: no rows.
    let t = gui.api("GET", "/api/tables/public/Weird%20Table?offset=10", None).json();
    assert_eq!(t["rows"], json!([]));
    assert_eq!(gui.api("GET", "/api/tables/My%20Schema/plain", None).json()["rows"], json!([[1], [2], [3]]));
    assert_eq!(gui.api("GET", "/api/tables/public/v", None).json()["rows"], json!([[1]]));

    // Unknown tables (and a name that would be an injection if it were not quoted) are 404.
    for path in [
        "/api/tables/public/nope",
        "/api/tables/nope/Weird%20Table",
        "/api/tables/public/weird%20table",
        "/api/tables/public/Weird%20Table%22%3B%20drop%20table%20x%3B--",
    ] {
        let r = gui.api("GET", path, None);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["detail"], "Table not found");
    }
    // Paging limits.
    for q in ["limit=0", "limit=x", "offset=-1"] {
        let r = gui.api("GET", &format!("/api/tables/public/Weird%20Table?{q}"), None);
        assert_eq!(r.status, 422, "{q}");
        assert_eq!(r.json()["detail"][0]["loc"][0], "query");
    }
    assert_eq!(gui.api("GET", "/api/tables/public/Weird%20Table?limit=10000", None).status, 200);
    // Past DB_GUI_MAX_ROWS the page is lowered to it.
    assert_eq!(gui.api("GET", "/api/tables/public/Weird%20Table?limit=99999", None).json()["limit"], 10000);
    assert_eq!(open_gui_transactions(&db), 0);
}

#[test]
fn read_only_refuses_every_write_and_allow_writes_lifts_it() {
    let (db, dir) = setup("CREATE TABLE t (x int); INSERT INTO t VALUES (1); CREATE SEQUENCE s;");
    let gui = Gui::start(&db, &dir, &[], &[]);
    assert_eq!(gui.api("GET", "/api/info", None).json()["read_only"], true);
    for sql in [
        "INSERT INTO t VALUES (2)",
        "UPDATE t SET x = 5",
        "DELETE FROM t",
        "CREATE TABLE u (y int)",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN z int",
        "TRUNCATE t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT nextval('s')",
        "INSERT INTO t VALUES (3) RETURNING x",
    ] {
        let r = gui.query(sql);
        assert_eq!(r.status, 400, "{sql}: {}", r.text());
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("read-only"), "{sql}: {detail}");
        // Exports run the same way.
        let r = gui.api("POST", "/api/export?format=csv", Some(json!({ "sql": sql })));
        assert_ne!(r.status, 200, "{sql}");
    }
    // COPY: to a file it would write on the database server even in a READ ONLY transaction
    // (PostgreSQL allows it); to STDOUT it needs a protocol the page does not speak. Refused.
    let file = std::env::temp_dir().join(format!("adc-dbgui-copy-{}.csv", std::process::id()));
    for sql in [
        format!("COPY (SELECT 1) TO '{}'", file.display()),
        "COPY t TO STDOUT".to_string(),
        "/* a note */ copy t from stdin".to_string(),
    ] {
        let r = gui.query(&sql);
        assert_eq!(r.status, 400, "{sql}: {}", r.text());
        assert!(r.json()["detail"].as_str().unwrap().contains("COPY is not run"), "{sql}: {}", r.text());
    }
    assert!(!file.exists(), "COPY wrote {}", file.display());
    let rows: Vec<i32> = db.client().query("SELECT x FROM t", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(rows, [1], "nothing changed");
    assert_eq!(open_gui_transactions(&db), 0);
    // A SET in read-only mode is rolled back with its transaction: it does not stick to the
    // pooled connection.
    assert_eq!(gui.query("SET statement_timeout = 0").status, 200);
    let r = gui.query("SHOW statement_timeout").json();
    assert_eq!(r["rows"][0][0], "30s");
    drop(gui);

    let gui = Gui::start(&db, &dir, &[], &["--allow-writes"]);
    assert_eq!(gui.api("GET", "/api/info", None).json()["read_only"], false);
    let r = gui.query("INSERT INTO t VALUES (2), (3)");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["row_count"], 2);
    let r = gui.query("INSERT INTO t VALUES (4) RETURNING x * 10 AS ten");
    assert_eq!(r.json()["rows"], json!([[40]]));
    let r = gui.query("CREATE TABLE u (y int)");
    assert_eq!(r.status, 200);
    let n: i64 = db.client().query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 4);
    // A failed write is rolled back, and leaves no transaction open.
    assert_eq!(gui.query("INSERT INTO t VALUES (1/0)").status, 400);
    assert_eq!(open_gui_transactions(&db), 0);
}

#[test]
fn statement_timeout_and_errors_with_postgres_text() {
    let (db, dir) = setup("CREATE TABLE t (x int)");
    let gui = Gui::start(&db, &dir, &[("DB_GUI_TIMEOUT_SECS", "1")], &[]);
    let t = Instant::now();
    let r = gui.query("select pg_sleep(60)");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(15), "answered within a few seconds: {:?}", t.elapsed());
    let v = r.json();
    assert_eq!(v["detail"], "canceling statement due to statement timeout");
    assert_eq!(v["code"], "57014");
    // Exports have the same timeout.
    let r = gui.api("POST", "/api/export?format=json", Some(json!({"sql": "select pg_sleep(60)"})));
    assert_eq!(r.status, 400);
    assert_eq!(open_gui_transactions(&db), 0);
    // The GUI's connections still work afterwards.
    assert_eq!(gui.query("select 1 AS one").json()["rows"], json!([[1]]));

    // PostgreSQL's own messages and positions.
    let r = gui.query("select nosuch from t");
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["detail"], "column \"nosuch\" does not exist");
    assert_eq!(v["position"], 8);
    let r = gui.query("select 1 from missing_table");
    assert_eq!(r.json()["detail"], "relation \"missing_table\" does not exist");
    let v = gui.query("selec 1").json();
    assert_eq!(v["detail"], "syntax error at or near \"selec\"");
    assert_eq!(v["position"], 1);
    let v = gui.query("select 1/0").json();
    assert_eq!(v["detail"], "division by zero");
    let v = gui.query("select 1; select 2").json();
    assert!(v["detail"].as_str().unwrap().contains("multiple commands"), "{v}");
    assert_eq!(open_gui_transactions(&db), 0);
    // Bad requests.
    assert_eq!(gui.api("POST", "/api/query", Some(json!({}))).status, 422);
    assert_eq!(gui.api("POST", "/api/query", Some(json!({"sql": "  "}))).status, 422);
    assert_eq!(gui.api("POST", "/api/query", Some(json!({"sql": 5}))).status, 422);
    let auth = gui.bearer();
    let r = request(gui.addr, "POST", "/api/query", &[("Authorization", &auth)], b"{not json");
    assert_eq!(r.status, 422);
    // The history has them, newest first, errors included.
    let h = gui.api("GET", "/api/history", None).json();
    let q = h["queries"].as_array().unwrap();
    assert_eq!(q[0]["sql"], "select 1; select 2");
    assert!(q[0]["error"].is_string());
    let ok = q.iter().find(|e| e["sql"] == "select 1 AS one").unwrap();
    assert_eq!(ok["row_count"], 1);
    assert_eq!(ok["error"], Value::Null);
    assert!(ok["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["at"].as_str().unwrap().ends_with('Z'));
    // Query texts are not in the log at info.
    assert!(!gui.log().contains("missing_table"), "{}", gui.log());
}

#[test]
fn the_row_cap_truncates_at_the_edge() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[("DB_GUI_MAX_ROWS", "100")], &[]);
    let q = |limit: Option<u64>| {
        let mut body = json!({"sql": "select g from generate_series(1, 50) g"});
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        gui.api("POST", "/api/query", Some(body))
    };
    let v = q(Some(10)).json();
    assert_eq!(v["rows"].as_array().unwrap().len(), 10);
    assert_eq!(v["row_count"], 10);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["columns"], json!(["g"]));
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 0.0);
    let v = q(Some(49)).json();
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(49), Some(true)));
    let v = q(Some(50)).json();
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(50), Some(false)));
    let v = q(Some(100)).json();
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(50), Some(false)));
    // No limit: the default, capped by DB_GUI_MAX_ROWS.
    let v = gui.query("select g from generate_series(1, 500) g").json();
    assert_eq!((v["row_count"].as_u64(), v["truncated"].as_bool()), (Some(100), Some(true)));
    // A limit past DB_GUI_MAX_ROWS is lowered to it.
    let r =
        gui.api("POST", "/api/query", Some(json!({"sql": "select g from generate_series(1, 500) g", "limit": 101})));
    let v = r.json();
    assert_eq!(
        (v["row_count"].as_u64(), v["truncated"].as_bool(), v["limit"].as_u64()),
        (Some(100), Some(true), Some(100))
    );
    for bad in [json!(0), json!(-1), json!("x"), json!(1.5)] {
        let r = gui.api("POST", "/api/query", Some(json!({"sql": "select 1", "limit": bad})));
        assert_eq!(r.status, 422, "{bad}");
        assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "limit"]));
    }
    // Exports are whole, whatever the cap.
    let r = gui.api("POST", "/api/export?format=csv", Some(json!({"sql": "select g from generate_series(1, 500) g"})));
    assert_eq!(r.text().lines().count(), 501);
}

/// `psql --csv`'s output with each record's closing LF made CRLF: an LF outside double quotes
/// ends a record (psql quotes every field holding CR or LF, and doubles quotes inside one, so
/// toggling at each quote tracks whether a byte is inside a field).
fn psql_records_to_crlf(csv: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(csv.len() + csv.len() / 8);
    let mut quoted = false;
    for &b in csv {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => out.push(b'\r'),
            _ => {}
        }
        out.push(b);
    }
    out
}

#[test]
fn csv_export_is_byte_for_byte_what_psql_prints() {
    let (db, dir) = setup(
        r#"CREATE TABLE tricky (id int, label text, amount numeric, flag boolean, at timestamptz, tags text[], doc jsonb);
           INSERT INTO tricky VALUES
             (1, 'plain', 1.50, true, '2024-05-01 12:30:00+00', '{a,b}', '{"k": 1}'),
             (2, NULL, NULL, NULL, NULL, NULL, NULL),
             (3, 'with, comma', -2, false, '2024-05-01 12:30:00.123456+02', '{"x y",NULL}', '[1, "two"]'),
             (4, 'say "hello"', 0, true, 'infinity', '{}', 'null'),
             (5, E'two\nlines', 1e20, false, '1999-12-31 23:59:59+00', '{"q\"d"}', '{"nested": {"a": [1, 2]}}'),
             (6, E'carriage\rreturn', 3.14159, true, NULL, NULL, '"str"'),
             (7, '한글 ünïcode ✓ 😀', 42, false, NULL, NULL, NULL),
             (8, '\.', 7, NULL, NULL, NULL, NULL),
             (9, ' spaced ', 8, NULL, NULL, NULL, NULL),
             (10, '', 0.000, NULL, NULL, '{""}', '{}');"#,
    );
    let gui = Gui::start(&db, &dir, &[], &[]);
    let sql =
        "SELECT id, label, amount, flag, at, tags, doc, label AS \"Label, \"\"quoted\"\"\" FROM tricky ORDER BY id";
    let r = gui.api("POST", "/api/export?format=csv", Some(json!({ "sql": sql })));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.complete, "the export ends with its final chunk");
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    let cd = r.header("content-disposition").unwrap();
    assert!(cd.starts_with("attachment; filename=\"") && cd.ends_with(".csv\""), "{cd}");

    let admin: postgres::Config = admin_url().parse().unwrap();
    let host = match admin.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let out = Command::new("psql")
        .args(["--csv", "-X", "-q", "-h", &host, "-p", &admin.get_ports().first().copied().unwrap_or(5432).to_string()])
        .args(["-U", admin.get_user().unwrap_or("postgres"), "-d", &db.name, "-c", sql])
        .env("PGTZ", "UTC")
        .env("PGDATESTYLE", "ISO, MDY")
        .output()
        .expect("psql must be installed (postgresql-client)");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    // The contract says RFC 4180: records end with CRLF where psql ends them with LF; nothing
    // else differs (a line break inside a quoted field stays as it is).
    let psql = psql_records_to_crlf(&out.stdout);
    assert!(psql.len() > out.stdout.len(), "psql's output has records to convert");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&psql),
        "the GUI's CSV differs from psql --csv (with CRLF record ends)"
    );
    assert_eq!(r.body, psql);
    // An empty result still has its header.
    let r = gui.api("POST", "/api/export?format=csv", Some(json!({"sql": "SELECT id, label FROM tricky WHERE false"})));
    assert_eq!(r.text(), "id,label\r\n");
    // A statement without rows cannot be exported; neither can a bad one.
    let r = gui.api("POST", "/api/export?format=csv", Some(json!({"sql": "SET work_mem = '8MB'"})));
    assert_eq!(r.status, 400);
    let r = gui.api("POST", "/api/export?format=csv", Some(json!({"sql": "select nope"})));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["detail"], "column \"nope\" does not exist");
    assert_eq!(gui.api("POST", "/api/export?format=xml", Some(json!({"sql": "select 1"}))).status, 422);
    assert_eq!(gui.api("POST", "/api/export", Some(json!({"sql": "select 1"}))).status, 422);
}

#[test]
fn json_values_are_natural_for_each_type() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[], &[]);
    let sql = r#"SELECT 42::int AS int, 9007199254740993::bigint AS big, 12.345::numeric AS num, 2.5::float8 AS dbl,
                 'NaN'::float8 AS nan, true AS yes, false AS no, 'text "q"'::text AS txt,
                 '2024-05-01 12:30:00.5+02'::timestamptz AS tstz, '2024-05-01 12:30:00'::timestamp AS ts,
                 '2024-05-01'::date AS day, '{"a": [1, null, "x"]}'::json AS js, '{"b": true}'::jsonb AS jsb,
                 '6f1c1f9e-2c4b-4e3f-9a4e-0d9b1d1c2b3a'::uuid AS id, ARRAY[1, 2, NULL] AS ints,
                 ARRAY['a b', 'c"d', NULL]::text[] AS texts, ARRAY[[1, 2], [3, 4]] AS matrix,
                 '\xdeadbeef'::bytea AS bin, NULL::int AS nothing, '1 day 02:00:00'::interval AS span,
                 ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))'] AS boxes"#;
    let expected = json!({
        "int": 42, "big": 9007199254740993u64, "num": 12.345, "dbl": 2.5, "nan": "NaN", "yes": true, "no": false,
        "txt": "text \"q\"", "tstz": "2024-05-01T10:30:00.5Z", "ts": "2024-05-01T12:30:00", "day": "2024-05-01",
        "js": {"a": [1, null, "x"]}, "jsb": {"b": true}, "id": "6f1c1f9e-2c4b-4e3f-9a4e-0d9b1d1c2b3a",
        "ints": [1, 2, null], "texts": ["a b", "c\"d", null], "matrix": [[1, 2], [3, 4]],
        "bin": "\\xdeadbeef", "nothing": null, "span": "1 day 02:00:00",
        "boxes": ["(1,1),(0,0)", "(3,3),(2,2)"]
    });
    let r = gui.api("POST", "/api/export?format=json", Some(json!({ "sql": sql })));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("content-disposition").unwrap().contains(".json\""));
    let v = r.json();
    assert_eq!(v, json!([expected]));
    // The bigint is exact in the bytes (no float rounding).
    assert!(r.text().contains("9007199254740993"));
    // The query endpoint gives the same values, as arrays in column order.
    let q = gui.query(sql).json();
    let cols: Vec<&str> = q["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for (i, c) in cols.iter().enumerate() {
        assert_eq!(q["rows"][0][i], expected[c], "{c}");
    }
    // Several rows, and no rows.
    let v = gui
        .api("POST", "/api/export?format=json", Some(json!({"sql": "select g AS n from generate_series(1,3) g"})))
        .json();
    assert_eq!(v, json!([{"n": 1}, {"n": 2}, {"n": 3}]));
    let v = gui.api("POST", "/api/export?format=json", Some(json!({"sql": "select 1 AS n where false"}))).json();
    assert_eq!(v, json!([]));
}

#[test]
fn a_json_export_keeps_columns_that_share_a_name() {
    let (db, dir) = setup(
        "CREATE TABLE teams (id int PRIMARY KEY, name text);
         CREATE TABLE users (id int PRIMARY KEY, name text, team_id int REFERENCES teams);
         INSERT INTO teams VALUES (10, 'red'), (20, 'blue');
         INSERT INTO users VALUES (1, 'ann', 10), (2, 'bob', 20);",
    );
    let gui = Gui::start(&db, &dir, &[], &[]);
    let sql = "select u.*, t.* from users u join teams t on t.id = u.team_id order by u.id";
    let r = gui.api("POST", "/api/export?format=json", Some(json!({ "sql": sql })));
    assert_eq!(r.status, 200, "{}", r.text());
    // Each object has every column: the second `id` and `name` get `_2` (no key twice, which a
    // parser would collapse to the last value).
    assert_eq!(
        r.json(),
        json!([
            {"id": 1, "name": "ann", "team_id": 10, "id_2": 10, "name_2": "red"},
            {"id": 2, "name": "bob", "team_id": 20, "id_2": 20, "name_2": "blue"},
        ])
    );
    assert_eq!(r.text().matches("\"id\":").count(), 2, "one `id` key per object: {}", r.text());
    // The query result and the CSV keep the names as they are (arrays and a header row hold
    // duplicates without loss).
    let q = gui.query(sql).json();
    assert_eq!(q["columns"], json!(["id", "name", "team_id", "id", "name"]));
    assert_eq!(q["rows"][0], json!([1, "ann", 10, 10, "red"]));
    let csv = gui.api("POST", "/api/export?format=csv", Some(json!({ "sql": sql })));
    assert!(csv.text().starts_with("id,name,team_id,id,name\r\n1,ann,10,10,red\r\n"), "{}", csv.text());
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_million_row_export_streams_in_bounded_memory() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[("DB_GUI_TIMEOUT_SECS", "300")], &[]);
    // Warm up (pool connection, first allocations), then measure.
    let _ = gui.api(
        "POST",
        "/api/export?format=csv",
        Some(json!({"sql": "select g, md5(g::text) from generate_series(1,2000) g"})),
    );
    let before = status_kb(gui.pid(), "VmHWM:");
    for format in ["csv", "json"] {
        let body =
            json!({"sql": "select g AS n, md5(g::text) AS hash, now() AS at from generate_series(1, 1000000) g"});
        let (mut bytes, mut lines, mut tail) = (0u64, 0u64, Vec::new());
        let mut sink = |chunk: &[u8]| {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            tail = chunk[chunk.len().saturating_sub(200)..].to_vec();
        };
        let r = gui.export_to(format, &body, &mut sink);
        assert_eq!(r.status, 200);
        assert!(r.complete, "{format}: the export ended with its final chunk");
        let tail = String::from_utf8_lossy(&tail).into_owned();
        match format {
            // Header + a million rows.
            "csv" => {
                assert_eq!(lines, 1_000_001);
                assert!(tail.contains("\n1000000,"), "{tail}");
            }
            _ => {
                assert_eq!(lines, 1_000_002);
                assert!(tail.contains("{\"n\":1000000,"), "{tail}");
                assert!(tail.ends_with("}\n]\n"), "{tail}");
            }
        }
        assert!(bytes > 40_000_000, "{bytes}");
        eprintln!("{format} export: {bytes} bytes, {lines} lines");
    }
    let after = status_kb(gui.pid(), "VmHWM:");
    let grew = after.saturating_sub(before);
    eprintln!("VmHWM before {before} KiB, after {after} KiB: grew {grew} KiB over two 1,000,000-row exports");
    assert!(grew < 32 * 1024, "the GUI's peak RSS grew by {grew} KiB (limit 32 MiB)");
    let h = gui.api("GET", "/api/history", None).json();
    assert_eq!(h["queries"][0]["row_count"], 1_000_000);
    assert_eq!(h["queries"][0]["kind"], "export-json");
}

/// Memory is bounded by bytes, not only by rows: 200 rows of 1 MiB are exported a few at a time
/// (the first batch was 1000 rows whatever their size: 200 MiB held at once), and a query of
/// rows of 10 MiB reads rows only until its 32 MiB cap (it read all `limit + 1` first).
#[test]
fn big_rows_are_read_in_bounded_memory() {
    let (db, dir) = setup("");
    let env = [("DB_GUI_TIMEOUT_SECS", "300")];
    let warm = json!({"sql": "select g, repeat('w', 1000) from generate_series(1, 2000) g"});

    let gui = Gui::start(&db, &dir, &env, &[]);
    let _ = gui.api("POST", "/api/export?format=csv", Some(warm.clone()));
    let before = status_kb(gui.pid(), "VmHWM:");
    for format in ["csv", "json"] {
        let body = json!({"sql": "select g AS n, repeat('x', 1 << 20) AS blob from generate_series(1, 200) g"});
        let mut bytes = 0u64;
        let mut sink = |chunk: &[u8]| bytes += chunk.len() as u64;
        let r = gui.export_to(format, &body, &mut sink);
        assert_eq!(r.status, 200);
        assert!(r.complete, "{format}: the export ended with its final chunk");
        assert!(bytes > 200 << 20, "{format}: {bytes}");
    }
    let grew = status_kb(gui.pid(), "VmHWM:").saturating_sub(before);
    eprintln!("exports of 200 rows of 1 MiB: VmHWM grew {grew} KiB");
    assert!(grew < 64 * 1024, "two exports of 200 MiB grew the GUI's peak RSS by {grew} KiB (limit 64 MiB)");
    drop(gui);

    let gui = Gui::start(&db, &dir, &env, &[]);
    let _ = gui.query("select g, repeat('w', 1000) from generate_series(1, 2000) g");
    let before = status_kb(gui.pid(), "VmHWM:");
    let r = gui.query("select g AS n, repeat('y', 10 << 20) AS blob from generate_series(1, 12) g");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["truncated"], true);
    assert_eq!(v["row_count"], 3, "three rows of 10 MiB fit in 32 MiB of JSON");
    drop(v);
    drop(r);
    let grew = status_kb(gui.pid(), "VmHWM:").saturating_sub(before);
    eprintln!("a query of 12 rows of 10 MiB (30 MiB answered): VmHWM grew {grew} KiB");
    assert!(grew < 112 * 1024, "the query grew the GUI's peak RSS by {grew} KiB (limit 112 MiB)");
}

/// Send an export request on a socket with a small receive buffer; returns it unread.
fn slow_export(gui: &Gui, sql: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(32 * 1024).unwrap();
    sock.connect(&gui.addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    let body = json!({ "sql": sql }).to_string();
    let head = format!(
        "POST /api/export?format=csv HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        gui.addr,
        gui.bearer(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Slow but steady readers of an export are served to the end; only one that stops reading (or
/// falls below MIN_BODY_RATE_KB) is cut. The socket used to be judged by single waits for room
/// in it, and with a big send buffer that room comes only after a third of it has drained: a
/// steady 64 KiB/s reader was cut once that took longer than BODY_TIMEOUT_SECS.
/// On loopback the kernel does not grow the send buffer far enough to show that bug (this test
/// passed before the fix too); the unit tests in `http::response` set the buffers themselves and
/// fail without it. This one guards the whole path: a steady reader gets every byte, one that
/// stops is cut without the final chunk.
#[test]
fn a_slow_steady_reader_of_an_export_is_not_cut_off() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[("BODY_TIMEOUT_SECS", "2"), ("MIN_BODY_RATE_KB", "16")], &[]);
    let started = Instant::now();
    // About 2.4 MB read 64 KiB every half second (128 KiB/s, 8 times the minimum): longer than
    // the body timeout many times over.
    let mut s = slow_export(&gui, "select g, repeat('y', 4000) from generate_series(1, 600) g");
    let (mut raw, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
    loop {
        let mut got = 0;
        while got < buf.len() {
            match s.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("read after {:?}: {e}", started.elapsed()),
            }
        }
        raw.extend_from_slice(&buf[..got]);
        if got < buf.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..text.len().min(200)]);
    assert!(raw.ends_with(b"\r\n0\r\n\r\n"), "cut off after {took:?} and {} bytes", raw.len());
    assert!(raw.len() > 2_400_000, "{}", raw.len());
    assert!(took > Duration::from_secs(6), "{took:?}");
    eprintln!("a steady reader took {} bytes in {took:?}", raw.len());

    // One that stops reading is still cut: its export (16 MB, more than the socket buffers
    // hold) ends without its final chunk.
    let mut s = slow_export(&gui, "select g, repeat('y', 4000) from generate_series(1, 4000) g");
    std::thread::sleep(Duration::from_secs(7));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(!raw.ends_with(b"\r\n0\r\n\r\n"), "a stopped reader got the whole export");
    assert!(raw.len() < 16_000_000, "{}", raw.len());
    let h = gui.api("GET", "/api/history", None).json();
    assert!(h["queries"][0]["error"].as_str().is_some_and(|e| e.contains("export failed")), "{h}");
    assert_eq!(open_gui_transactions(&db), 0);
}

#[test]
fn an_export_that_fails_half_way_is_not_complete() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[], &[]);
    // Division by zero at row 5000: after the first batch has been sent.
    let r = gui.api(
        "POST",
        "/api/export?format=csv",
        Some(json!({"sql": "select g, 1 / (5000 - g) AS boom from generate_series(1, 10000) g"})),
    );
    assert_eq!(r.status, 200);
    assert!(!r.complete, "a failed export must not end like a whole one");
    assert!(r.text().lines().count() < 5001);
    let h = gui.api("GET", "/api/history", None).json();
    assert!(h["queries"][0]["error"].as_str().unwrap().contains("division by zero"), "{h}");
    assert_eq!(open_gui_transactions(&db), 0);
}

#[test]
fn saved_queries_persist_across_restarts() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[], &[]);
    assert_eq!(gui.api("GET", "/api/saved", None).json(), json!({"queries": []}));
    let chart = json!({"type": "bar", "x": "day", "y": "total"});
    let r = gui.api(
        "POST",
        "/api/saved",
        Some(json!({"name": "Daily totals", "sql": "select 1 as total", "chart": chart})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let a = r.json();
    assert_eq!(a["name"], "Daily totals");
    assert_eq!(a["sql"], "select 1 as total");
    assert_eq!(a["chart"], chart);
    let r = gui.api("POST", "/api/saved", Some(json!({"name": "No chart", "sql": "select 2"})));
    assert_eq!(r.status, 201);
    let b = r.json();
    assert_eq!(b["chart"], Value::Null);
    assert_ne!(a["id"], b["id"]);
    for bad in [
        json!({"sql": "select 1"}),
        json!({"name": "", "sql": "select 1"}),
        json!({"name": "x"}),
        json!({"name": "x", "sql": "select 1", "chart": {"type": "radar", "x": "a", "y": "b"}}),
        json!({"name": "x", "sql": "select 1", "chart": {"type": "pie", "x": "a"}}),
        json!({"name": "x".repeat(201), "sql": "select 1"}),
    ] {
        assert_eq!(gui.api("POST", "/api/saved", Some(bad.clone())).status, 422, "{bad}");
    }
    drop(gui);

    let gui = Gui::start(&db, &dir, &[], &[]);
    let list = gui.api("GET", "/api/saved", None).json();
    assert_eq!(list["queries"].as_array().unwrap().len(), 2);
    assert_eq!(list["queries"][0]["id"], a["id"]);
    assert_eq!(list["queries"][0]["chart"], chart);
    let r = gui.api("DELETE", &format!("/api/saved/{}", a["id"]), None);
    assert_eq!(r.status, 200);
    let r = gui.api("DELETE", &format!("/api/saved/{}", a["id"]), None);
    assert_eq!(r.status, 404);
    assert_eq!(gui.api("DELETE", "/api/saved/abc", None).status, 422);
    drop(gui);
    let gui = Gui::start(&db, &dir, &[], &[]);
    let list = gui.api("GET", "/api/saved", None).json();
    assert_eq!(list["queries"].as_array().unwrap().iter().map(|q| q["name"].clone()).collect::<Vec<_>>(), ["No chart"]);
    // A new one never reuses a deleted id.
    let c = gui.api("POST", "/api/saved", Some(json!({"name": "c", "sql": "select 3"}))).json();
    assert!(c["id"].as_u64().unwrap() > b["id"].as_u64().unwrap());
}

#[test]
fn bad_flags_and_an_unreachable_database() {
    let (db, dir) = setup("");
    let out = Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(["db-gui", "--port", "notaport"])
        .current_dir(dir.path())
        .env_clear()
        .envs(base_env(&db, &dir))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: --port"), "{err}");
    assert!(out.stdout.is_empty());
    // A switch given a value is refused, not read as "on": `--allow-writes=false` once started a
    // read-write GUI (found by a probe).
    for flag in ["--allow-writes=false", "--allow-writes=no"] {
        let out = Command::new(env!("CARGO_BIN_EXE_adcluster"))
            .args(["db-gui", flag])
            .current_dir(dir.path())
            .env_clear()
            .envs(base_env(&db, &dir))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: --allow-writes takes no value"), "{flag}: {err}");
    }
    // A database that is not there: the GUI starts and answers 503.
    let gui = Gui::start(&db, &dir, &[("DB_PORT", "1"), ("DB_CHECKOUT_TIMEOUT_MS", "200")], &[]);
    let r = gui.query("select 1");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["detail"], "Database unavailable");
    assert_eq!(gui.api("GET", "/api/tables", None).status, 503);
}

#[test]
fn a_running_statement_can_be_cancelled_by_its_request_id() {
    let (db, dir) = setup("");
    let gui = Gui::start(&db, &dir, &[], &[]);
    let (addr, auth) = (gui.addr, gui.bearer());
    let started = Instant::now();
    let slow = std::thread::spawn(move || {
        let body = json!({"sql": "select pg_sleep(20)", "request_id": "tab-1-run-7"}).to_string();
        request(addr, "POST", "/api/query", &[("Authorization", &auth)], body.as_bytes())
    });
    // Nothing runs under another id.
    let r = gui.api("POST", "/api/cancel", Some(json!({"request_id": "nope"})));
    assert_eq!(r.json(), json!({"cancelled": false}));
    // Wait until the statement is running, then cancel it.
    let mut cancelled = false;
    while started.elapsed() < Duration::from_secs(10) && !cancelled {
        std::thread::sleep(Duration::from_millis(100));
        cancelled =
            gui.api("POST", "/api/cancel", Some(json!({"request_id": "tab-1-run-7"}))).json()["cancelled"] == true;
    }
    assert!(cancelled);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["detail"], "canceling statement due to user request");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(open_gui_transactions(&db), 0);
    // Cancelling needs the token and the same origin, like every POST.
    assert_eq!(request(gui.addr, "POST", "/api/cancel", &[], br#"{"request_id": "x"}"#).status, 401);
    assert_eq!(gui.api("POST", "/api/cancel", Some(json!({}))).status, 422);
}
