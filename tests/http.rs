//! The connection layer against the running binary, over real sockets: keep-alive, HTTP/1.0,
//! chunked bodies, 100-continue, HEAD, error shapes and limits, panics, idle and slow-loris
//! clients, timeouts, the connection cap, and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{random_bytes, sha256_hex, Conn, Opts, TestServer};

fn assert_detail(resp: &common::Resp, status: u16) -> String {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()["detail"].as_str().unwrap_or_else(|| panic!("detail is a string: {}", resp.text())).to_string()
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let srv = TestServer::start();
    let mut c = srv.connect();
    for _ in 0..5 {
        let r = c.send("GET", "/", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["message"], "Welcome to Adcluster API");
        assert_eq!(r.header("connection"), None);
    }
    // Pipelined: two requests in one write, two responses in order.
    c.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(c.read_response(false).json()["status"].is_string());
    assert_eq!(c.read_response(false).json()["docs"], "/docs");
}

#[test]
fn http_1_0_and_connection_close_end_the_connection() {
    let srv = TestServer::start();
    let mut c = srv.connect();
    c.write(b"GET /health HTTP/1.0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(c.is_closed_by_server(Duration::from_secs(5)));

    let mut c = srv.connect();
    c.write(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(c.send("GET", "/", &[], b"").status, 200);

    let mut c = srv.connect();
    let r = c.send("GET", "/", &[("Connection", "close")], b"");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_server(Duration::from_secs(5)));
}

#[test]
fn chunked_bodies_arrive_exactly() {
    let srv = TestServer::start();
    let data = random_bytes(300_000, 7);
    let mut body = Vec::new();
    let sizes = [1usize, 7, 4096, 13, 65536, 3];
    let mut pos = 0;
    let mut k = 0;
    while pos < data.len() {
        let n = sizes[k % sizes.len()].min(data.len() - pos);
        body.extend_from_slice(format!("{n:X};ext=\"v\"\r\n").as_bytes());
        body.extend_from_slice(&data[pos..pos + n]);
        body.extend_from_slice(b"\r\n");
        pos += n;
        k += 1;
    }
    body.extend_from_slice(b"0\r\nX-Checksum: none\r\n\r\n");
    let mut c = srv.connect();
    c.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Send in small irregular writes.
    for piece in body.chunks(1031) {
        c.write(piece);
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["length"], data.len());
    assert_eq!(r.json()["sha256"], sha256_hex(&data));
    // The connection is still good for the next request.
    assert_eq!(c.send("GET", "/health", &[], b"").status, 200);
}

#[test]
fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let srv = TestServer::start();
    let data = random_bytes(5000, 3);
    let mut c = srv.connect();
    c.write(
        format!(
            "POST /__test/echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .as_bytes(),
    );
    let interim = c.read_response(false);
    assert_eq!(interim.status, 100);
    c.write(&data);
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sha256"], sha256_hex(&data));

    // Over the limit: 413 at once, no 100, and the connection is closed.
    let mut c = srv.connect();
    c.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n");
    let r = c.read_response(false);
    assert_detail(&r, 413);
    assert!(c.is_closed_by_server(Duration::from_secs(5)));
}

#[test]
fn head_gives_headers_without_a_body() {
    let srv = TestServer::start();
    let mut c = srv.connect();
    let r = c.send("HEAD", "/health", &[], b"");
    assert_eq!(r.status, 200);
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(len > 0);
    assert!(r.body.is_empty());
    // No stray body bytes: the next response on the connection parses cleanly.
    assert_eq!(c.send("GET", "/", &[], b"").status, 200);
}

#[test]
fn errors_have_the_contract_shape() {
    let srv = TestServer::start_with(Opts::default().env("MAX_JSON_BYTES", "1024"));
    // 400: garbage instead of a request line.
    let mut c = srv.connect();
    c.write(b"THIS IS NOT HTTP\r\n\r\n");
    let detail = assert_detail(&c.read_response(false), 400);
    assert!(detail.starts_with("Malformed request"), "{detail}");
    // 400: conflicting framing (request smuggling shape).
    let r = srv.request("POST", "/__test/echo", &[("Content-Length", "3"), ("Transfer-Encoding", "chunked")], b"abc");
    assert_detail(&r, 400);
    // 404 and 405.
    assert_eq!(assert_detail(&srv.get("/no/such/path"), 404), "Not Found");
    let r = srv.request("DELETE", "/health", &[], b"");
    assert_eq!(assert_detail(&r, 405), "Method Not Allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // 413 by Content-Length, exactly at the edge.
    let ok = srv.request("POST", "/__test/echo", &[], &[b'a'; 1024]);
    assert_eq!(ok.status, 200);
    let r = srv.request("POST", "/__test/echo", &[], &[b'a'; 1025]);
    assert_detail(&r, 413);
    // 413 for a chunked body that crosses the limit while streaming.
    let mut c = srv.connect();
    c.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n");
    c.write(&[b'x'; 512]);
    c.write(b"\r\n201\r\n");
    c.write(&[b'y'; 513]);
    c.write(b"\r\n0\r\n\r\n");
    assert_detail(&c.read_response(false), 413);
    // 431: a head over 16 KiB, and over 100 headers; exactly 100 is fine.
    let big = "a".repeat(17 * 1024);
    assert_detail(&srv.request("GET", "/", &[("X-Big", &big)], b""), 431);
    let names: Vec<String> = (0..101).map(|i| format!("X-H{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    assert_detail(&srv.request("GET", "/", &many, b""), 431);
    // 99 of ours plus Host is 100 headers.
    assert_eq!(srv.request("GET", "/", &many[..99], b"").status, 200);
}

#[test]
fn trailing_slash_redirects_like_fastapi() {
    let srv = TestServer::start();
    let r = srv.get("/health/?x=1");
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/health?x=1"));
}

#[test]
fn a_panicking_handler_answers_500_and_the_server_lives_on() {
    let srv = TestServer::start();
    // More panics than workers (8): every worker survives its panic.
    for _ in 0..20 {
        let r = srv.get("/__test/panic");
        assert_eq!(assert_detail(&r, 500), "Internal Server Error");
    }
    assert_eq!(srv.get("/health").status, 200);
    assert!(srv.log().contains("panicked: test panic"));
}

#[test]
fn idle_and_slow_loris_clients_do_not_hold_the_pool() {
    common::raise_nofile(8192);
    // A long head timeout: the slow-loris clients stay connected for the whole test, so what
    // keeps /health answering is the design, not a timeout firing.
    let srv = TestServer::start_with(Opts::default().env("HEAD_TIMEOUT_SECS", "120").env("WORKERS", "4"));
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(srv.addr).unwrap()).collect();
    let mut loris: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(srv.addr).unwrap()).collect();
    let head = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
    let started = Instant::now();
    let mut sent = 0;
    let mut answered = 0;
    // Three rounds: each slow client sends one more header byte every ~2 s, and between rounds a
    // normal client asks for /health.
    for round in 0..3 {
        for s in loris.iter_mut() {
            s.write_all(&head[round..round + 1]).unwrap();
        }
        sent += 1;
        let mut c = Conn::open(srv.addr);
        c.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = c.send("GET", "/health", &[], b"");
        assert_eq!(r.status, 200);
        answered += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!((sent, answered), (3, 3));
    // The slow clients are still connected (nothing was closed to make room).
    for s in loris.iter_mut() {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("slow client was answered or closed: {other:?}"),
        }
    }
    drop(idle);
    eprintln!("slow-loris test took {:?}", started.elapsed());
}

#[test]
fn slow_heads_and_stalled_bodies_time_out_with_408() {
    let srv = TestServer::start_with(Opts::default().env("HEAD_TIMEOUT_SECS", "1").env("BODY_TIMEOUT_SECS", "1"));
    let mut c = srv.connect();
    c.write(b"GET /health HTTP/1.1\r\nHost: a\r\n");
    let r = c.read_response(false);
    assert_eq!(assert_detail(&r, 408), "Request header timeout");
    assert!(c.is_closed_by_server(Duration::from_secs(5)));

    let mut c = srv.connect();
    c.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.read_response(false);
    assert_eq!(assert_detail(&r, 408), "Request body timeout");

    // An idle keep-alive connection is closed quietly after KEEPALIVE_TIMEOUT_SECS.
    let srv = TestServer::start_with(Opts::default().env("KEEPALIVE_TIMEOUT_SECS", "1"));
    let mut c = srv.connect();
    assert_eq!(c.send("GET", "/", &[], b"").status, 200);
    assert!(c.is_closed_by_server(Duration::from_secs(5)));
}

#[test]
fn connections_over_the_cap_get_503() {
    let srv = TestServer::start_with(Opts::default().env("MAX_CONNECTIONS", "5"));
    let held: Vec<Conn> = (0..5)
        .map(|_| {
            let mut c = srv.connect();
            assert_eq!(c.send("GET", "/", &[], b"").status, 200);
            c
        })
        .collect();
    let mut extra = srv.connect();
    let r = extra.try_read_response(false).expect("a 503 before close");
    assert_eq!(assert_detail(&r, 503), "Server busy: too many connections");
    drop(held);
    // Room again once they are gone.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = srv.connect();
        c.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        if let Some(r) = c.try_read_response(false) {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < until, "the cap never freed up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let mut srv = TestServer::start();
    let addr = srv.addr;
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                c.send("GET", "/__test/sleep?ms=1500", &[], b"")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    srv.signal(libc::SIGTERM);
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["slept_ms"], 1500);
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(srv.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(TcpStream::connect(addr).is_err(), "still accepting after shutdown");
    assert!(srv.log().contains("received SIGTERM"));
}

#[test]
fn logs_name_requests_but_never_secrets() {
    let secret = "s3cr3t-key-that-is-long-enough-0123456789";
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", secret).env("DB_PASSWORD", "hunter2-db"));
    let r = srv.get("/health?token=eyJhbGciOi.secret.token");
    assert_eq!(r.status, 200);
    // The access line is written after the response, and read from the server's stderr later.
    let log = srv.log_when("GET /health 200", Duration::from_secs(10));
    let line = log.lines().find(|l| l.contains("GET /health 200")).expect("an access log line");
    assert!(line.contains("us 127.0.0.1:"), "{line}");
    for s in [secret, "hunter2-db", "eyJhbGciOi"] {
        assert!(!log.contains(s), "log leaks {s}");
    }
}

#[test]
fn docs_and_openapi_are_served() {
    let srv = TestServer::start();
    let doc = srv.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/", "/health"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing from the document");
    }
    for page in ["/docs", "/redoc"] {
        let r = srv.get(page);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text().contains("/openapi.json"));
    }
}

#[test]
fn command_line_help_and_bad_usage() {
    let bin = env!("CARGO_BIN_EXE_adcluster");
    let out = std::process::Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in ["HOST", "PORT", "DATABASE_URL", "SECRET_KEY", "UPLOAD_DIR", "WS_AUTH", "WORKERS", "MAX_HEADER_BYTES"] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    let out = std::process::Command::new(bin).args(["--port", "notaport"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: PORT=\"notaport\""), "{err}");
    let out = std::process::Command::new(bin).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let srv = TestServer::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(["--host", "127.0.0.1", "--port", &srv.addr.port().to_string()])
        .env("DATA_DIR", srv.dir.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("error: cannot listen on 127.0.0.1:"), "{err}");
}

#[test]
fn a_held_connection_waits_without_holding_a_worker() {
    // One worker: if the held connection kept it, the other client could not be served.
    let srv = TestServer::start_with(Opts::default().env("WORKERS", "1"));
    let mut held = srv.connect();
    // Two requests in one write: the second is already buffered when the first is answered.
    held.write(b"GET /__test/hold?ms=2000 HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    let first = held.read_response(false);
    assert_eq!(first.status, 503);
    let t0 = Instant::now();
    // Meanwhile another client is served by the only worker.
    assert_eq!(srv.get("/").status, 200);
    assert!(t0.elapsed() < Duration::from_millis(1500), "the other client waited for the hold");
    let second = held.read_response(false);
    assert_eq!(second.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(1500), "the held request was read too early: {:?}", t0.elapsed());
}

#[test]
fn running_out_of_file_descriptors_is_survived() {
    // The server under a hard limit of 48 open files; 100 clients connect at once.
    let dir = common::TempDir::new("emfile");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" serve --host 127.0.0.1 --port 0")
        .arg(env!("CARGO_BIN_EXE_adcluster"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DB_PORT", "1")
        .env("DATA_DIR", dir.path().join("data"))
        .env("UPLOAD_DIR", dir.path().join("uploads"))
        .env("WORKERS", "4")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("server start-up line");
        log.push_str(&line);
        log.push('\n');
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().parse::<std::net::SocketAddr>().unwrap();
        }
    };
    let flood: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    let saw_emfile = common::ws::eventually(Duration::from_secs(10), || {
        while let Ok(line) = rx.try_recv() {
            log.push_str(&line);
            log.push('\n');
        }
        log.contains("accept failed")
    });
    assert!(saw_emfile, "the limit was never hit; log:\n{log}");
    drop(flood);
    // Once the flood is gone the server serves again.
    let ok = common::ws::eventually(Duration::from_secs(10), || {
        let mut c = Conn::open(addr);
        c.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
        c.try_read_response(false).is_some_and(|r| r.status == 200)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "the server stopped serving after EMFILE; log:\n{log}");
}

#[test]
fn dribbled_bodies_do_not_hold_the_pool() {
    let srv = TestServer::start_with(
        Opts::default().env("WORKERS", "2").env("BODY_TIMEOUT_SECS", "1").env("HEAD_TIMEOUT_SECS", "30"),
    );
    // Small bodies (<= 64 KiB) are read by the dispatcher: four clients dribbling one, to a
    // route that does not exist, take no worker, and the two workers keep serving.
    let mut dribblers: Vec<Conn> = (0..4)
        .map(|_| {
            let mut c = srv.connect();
            c.write(b"POST /no/such/route HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\nx");
            c
        })
        .collect();
    for _ in 0..3 {
        for d in dribblers.iter_mut() {
            d.write(b"x");
        }
        let t0 = Instant::now();
        assert_eq!(srv.get("/health").status, 200);
        assert!(t0.elapsed() < Duration::from_secs(2), "/health waited {:?}", t0.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(dribblers);
    // A large body (here 200 KB of a 1 MiB JSON limit) streams in a worker, but must keep up
    // MIN_BODY_RATE_KB (16) once BODY_TIMEOUT_SECS (1) has passed: at ~4 KB/s it gets a 408
    // long before it would have finished (50 s).
    let mut slow = srv.connect();
    slow.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n");
    let t0 = Instant::now();
    let mut sent = 0;
    slow.stream.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_secs(20) {
        let _ = slow.stream.write(&[b'y'; 1000]);
        sent += 1000;
        std::thread::sleep(Duration::from_millis(250));
        let mut buf = [0u8; 4096];
        if let Ok(n) = std::io::Read::read(&mut slow.stream, &mut buf) {
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "after {sent} bytes in {:?}: {text:?}", t0.elapsed());
    assert!(sent < 200_000);
}

/// Nothing has arrived on `c` yet (its request is still unanswered).
fn unanswered(c: &Conn) -> bool {
    c.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let nothing = matches!(c.stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    c.stream.set_nonblocking(false).unwrap();
    nothing
}

/// Start a `/__test/sleep` of `ms` on each connection.
fn start_sleeps(conns: &mut [Conn], ms: u64) {
    for c in conns {
        c.write(format!("GET /__test/sleep?ms={ms} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
}

/// Every connection gets its sleep's `200` in the end: nothing was lost.
fn all_slept(conns: &mut [Conn], ms: u64) {
    for c in conns {
        let r = c.read_response(false);
        assert_eq!((r.status, r.json()["slept_ms"].as_u64()), (200, Some(ms)));
    }
}

#[test]
fn a_keep_alive_request_is_served_while_the_pollers_wait_in_slow_handlers() {
    // One worker per core polls the hot set (answered keep-alive connections); a handler that
    // may wait (any route not declared quick) first hands that role to a spare. With a spare
    // for each poller, every poller can sit in a slow handler and a waiting keep-alive
    // connection is still served at once. Only ordering is asserted: the quick answer arrives
    // while the slow ones are still unanswered.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores + 1;
    let srv = TestServer::start_with(Opts::default().env("WORKERS", &workers.to_string()));
    // All keep-alive connections that have been answered once, so they sit in the hot set.
    let mut quick = srv.connect();
    assert_eq!(quick.send("GET", "/", &[], b"").status, 200);
    let mut slow: Vec<Conn> = (0..cores)
        .map(|_| {
            let mut c = srv.connect();
            assert_eq!(c.send("GET", "/", &[], b"").status, 200);
            c
        })
        .collect();
    start_sleeps(&mut slow, 4000);
    // Let every slow request reach its handler (they are taken up at once, not at the end of
    // this pause; the pause only has to be shorter than the sleep).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(quick.send("GET", "/health", &[], b"").status, 200);
    for c in &slow {
        assert!(unanswered(c), "a slow request was answered before the quick one: the quick one waited for it");
    }
    all_slept(&mut slow, 4000);
}

#[test]
fn a_quick_route_is_answered_while_every_other_worker_waits_and_nothing_is_lost() {
    // All workers but one may be inside handlers that wait; a further such request is put aside
    // until one is free, so the last worker answers quick routes (`/health`) meanwhile.
    let srv = TestServer::start_with(Opts::default().env("WORKERS", "3"));
    let mut slow: Vec<Conn> = (0..4).map(|_| srv.connect()).collect();
    start_sleeps(&mut slow, 3000);
    std::thread::sleep(Duration::from_millis(300));
    let mut probe = srv.connect();
    for _ in 0..3 {
        assert_eq!(probe.send("GET", "/health", &[], b"").status, 200);
    }
    for c in &slow {
        assert!(unanswered(c), "a slow request was answered before /health: /health waited for a worker");
    }
    // Two run at once (three workers, one kept back), the other two after them: all answered.
    all_slept(&mut slow, 3000);
}
