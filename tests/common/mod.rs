//! Test harness: the real binary on an ephemeral port, its own fresh database and temp dirs,
//! and a small HTTP/1.1 client over real sockets.
//!
//! `TestServer::start()` creates a database `adc_test_<pid>_<n>` on the local PostgreSQL
//! (`TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`), starts
//! `adcluster serve --host 127.0.0.1 --port 0` in a fresh temp dir, and reads the bound address
//! from its log. Dropping it kills the server, drops the database and removes the temp dir.
//! The server's log is kept (`TestServer::log()`) so tests can check what it printed.

#![allow(dead_code)]

pub mod pgcluster;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn admin_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let name = format!("adc_test_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut client = postgres::Client::connect(&admin_url(), postgres::NoTls)
            .expect("cannot reach PostgreSQL for tests: run scripts/test.sh, which starts it");
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .expect("drop stale test database");
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create test database");
        TestDb { name }
    }

    /// A client connected to this database.
    pub fn client(&self) -> postgres::Client {
        let mut cfg: postgres::Config = admin_url().parse().expect("TEST_PG_URL");
        cfg.dbname(&self.name);
        cfg.connect(postgres::NoTls).expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "adc-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real server binary, running.
pub struct TestServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    pub db: TestDb,
    pub dir: TempDir,
    /// The environment the server was started with (reused by `cli` and `restart`).
    pub env: Vec<(String, String)>,
    args: Vec<String>,
}

/// Start `adcluster serve` on an ephemeral port and wait for its address.
pub fn spawn_server(env: &[(String, String)], args: &[String], dir: &Path) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adcluster"));
    cmd.arg("serve")
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn adcluster");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a.parse().expect("bound address"),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not report its address; log:\n{}", log.lock().unwrap());
        }
    };
    (child, addr, log)
}

/// Options for `TestServer::start_with`.
#[derive(Default, Clone)]
pub struct Opts {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments after `serve`.
    pub args: Vec<String>,
}

impl Opts {
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Opts {
        self.args.push(a.into());
        self
    }
}

/// The environment of a test server on database `db_name` with its files under `dir`.
pub fn base_env(db_name: &str, dir: &Path) -> Vec<(String, String)> {
    let admin: postgres::Config = admin_url().parse().expect("TEST_PG_URL");
    let host = match admin.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("DB_HOST".into(), host),
        ("DB_PORT".into(), port.to_string()),
        ("DB_USER".into(), admin.get_user().unwrap_or("postgres").to_string()),
        (
            "DB_PASSWORD".into(),
            admin.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        ),
        ("DB_NAME".into(), db_name.to_string()),
        ("DATA_DIR".into(), dir.join("data").display().to_string()),
        ("UPLOAD_DIR".into(), dir.join("uploads").display().to_string()),
        ("BACKUP_DIR".into(), dir.join("backups").display().to_string()),
        ("ADCLUSTER_TEST_ROUTES".into(), "true".into()),
        ("WORKERS".into(), "8".into()),
        ("LOG_LEVEL".into(), "info".into()),
    ];
    env
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> TestServer {
        let db = TestDb::create();
        let dir = TempDir::new("srv");
        let mut env = base_env(&db.name, dir.path());
        env.extend(opts.env.iter().cloned());
        let args = opts.args.clone();
        let (child, addr, log) = spawn_server(&env, &args, dir.path());
        TestServer { addr, child: Some(child), log, db, dir, env, args }
    }

    /// Stop the server (SIGKILL) and start it again with the same database, directories and
    /// settings; the new process may get another port.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (child, addr, log) = spawn_server(&self.env, &self.args, self.dir.path());
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }

    /// Kill the server (SIGKILL) and leave it stopped, so a test can change its files before
    /// `start_again`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again after `kill`, with the same database, directories and settings.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let (child, addr, log) = spawn_server(&self.env, &self.args, self.dir.path());
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }

    /// Kill the server (SIGKILL) and start it again with the debug-build test hook
    /// `ADCLUSTER_TEST_CRASH_AT` set to `point` (the server kills itself there), or unset.
    pub fn restart_with_crash_point(&mut self, point: Option<&str>) {
        self.kill();
        self.env.retain(|(k, _)| k != "ADCLUSTER_TEST_CRASH_AT");
        if let Some(p) = point {
            self.env.push(("ADCLUSTER_TEST_CRASH_AT".into(), p.into()));
        }
        self.start_again();
    }

    /// The upload intents left in `DATA_DIR/intents/` (the test servers' `DATA_DIR` is `data`).
    pub fn intent_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("data").join("intents"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Run the binary with another command (`user create ...`, `migrate`) against this server's
    /// database and directories.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_adcluster"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run adcluster")
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it contains `needle`, or as it is after `timeout`: a line written by another
    /// thread of the server (or not yet read from its stderr) may come after the answer.
    pub fn log_when(&self, needle: &str, timeout: std::time::Duration) -> String {
        let until = std::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) || std::time::Instant::now() >= until {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Wait for the server to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Resp {
        self.connect().send("GET", path, &[], b"")
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.connect().send(method, path, headers, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection (keep-alive capable).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buf: Vec::new() }
    }

    /// Wrap a socket opened some other way (e.g. with special options).
    pub fn wrap(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { stream, buf: Vec::new() }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Send a request with `Host` and (when there is a body) `Content-Length`, read the reply.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let has_framing = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding") || k.eq_ignore_ascii_case("content-length"));
        if !body.is_empty() && !has_framing {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.write(&bytes);
        self.read_response(method == "HEAD")
    }

    /// Read one response. `head_only`: the request was HEAD (no body follows).
    pub fn read_response(&mut self, head_only: bool) -> Resp {
        self.try_read_response(head_only).expect("a response")
    }

    /// Like `read_response` but `None` when the connection closed first.
    pub fn try_read_response(&mut self, head_only: bool) -> Option<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf).expect("valid response head") {
                httparse::Status::Complete(n) => {
                    let status = parsed.code.unwrap();
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    self.buf.drain(..n);
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0);
                    let body_len = if head_only || status < 200 || status == 204 || status == 304 { 0 } else { len };
                    while self.buf.len() < body_len {
                        if !self.fill() {
                            panic!("connection closed inside a body");
                        }
                    }
                    let body: Vec<u8> = self.buf.drain(..body_len).collect();
                    return Some(Resp { status, headers, body });
                }
                httparse::Status::Partial => {
                    if !self.fill() {
                        return None;
                    }
                }
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// True when the server has closed the connection (reads EOF within `timeout`).
    pub fn is_closed_by_server(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut tmp = [0u8; 1024];
        let r = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        r
    }
}

/// Raise this test process's open-files limit (for tests that hold hundreds of sockets).
pub fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` pseudo-random bytes (xorshift), the same for the same seed: payloads with every byte value.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---- API helpers shared by the suites (a user with the password `password1`) ----------------

/// `POST path` with a JSON body and, when given, a bearer token.
pub fn post_json(srv: &TestServer, path: &str, token: Option<&str>, body: &serde_json::Value) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    srv.request("POST", path, &headers, body.to_string().as_bytes())
}

/// `GET path` with a bearer token.
pub fn get_auth(srv: &TestServer, path: &str, token: &str) -> Resp {
    srv.request("GET", path, &[("Authorization", &format!("Bearer {token}"))], b"")
}

/// Sign up `email` with the password `password1` (full name "Kim"); the new user.
pub fn signup(srv: &TestServer, email: &str) -> serde_json::Value {
    let body = serde_json::json!({ "email": email, "password": "password1", "full_name": "Kim" });
    let r = post_json(srv, "/users/", None, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// `POST /auth/login` (JSON), whatever it answers.
pub fn login(srv: &TestServer, email: &str, password: &str) -> Resp {
    post_json(srv, "/auth/login", None, &serde_json::json!({ "email": email, "password": password }))
}

/// An access token of `email` (password `password1`).
pub fn token(srv: &TestServer, email: &str) -> String {
    let r = login(srv, email, "password1");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}
