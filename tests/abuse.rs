//! Hostile and clumsy clients against the running binary: stalled and dribbled bodies of every
//! framing, clients that do not read their responses, floods from one address, resets, panics,
//! bad `Host` headers, shutdown mid-upload, and memory after bursts of logins. In each starvation
//! case the point is that `/health` keeps answering while the hostile sockets are held (it is
//! asserted to answer, not how fast); the pool is kept small (`WORKERS=2`) so that holding a
//! worker per hostile socket would show at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Conn, Opts, TestServer};
use serde_json::json;

const SECRET: &str = "abuse-test-secret-0123456789abcdefghijklmnop";

fn small_pool() -> Opts {
    Opts::default().env("WORKERS", "2").env("SECRET_KEY", SECRET)
}

/// `/health` answers 200 on a fresh connection (the harness waits up to 30 s, then fails).
fn assert_health(srv: &TestServer, what: &str) {
    let r = srv.get("/health");
    assert_eq!(r.status, 200, "/health while {what}: {}", r.text());
}

/// Open `n` connections and send `head` (and `first` body bytes) on each; keep them.
fn hold(srv: &TestServer, n: usize, head: &str, first: &[u8]) -> Vec<TcpStream> {
    let socks: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).expect("connect");
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(first).unwrap();
            s
        })
        .collect();
    // Let the server take them all in before anyone checks.
    std::thread::sleep(Duration::from_millis(300));
    socks
}

fn user_token(srv: &TestServer, email: &str) -> String {
    let body = json!({ "email": email, "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// Everything the server sends on `s` until it closes or `timeout` passes.
fn read_all(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let until = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    out
}

#[test]
fn two_hundred_stalled_chunked_bodies_hold_no_worker() {
    let srv = TestServer::start_with(small_pool());
    let head =
        "POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let _held = hold(&srv, 200, head, b"");
    for _ in 0..3 {
        assert_health(&srv, "200 chunked bodies stall");
    }
    // A chunked body that does arrive is still served (pre-read by the dispatcher).
    let mut c = srv.connect();
    c.write(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).json()["length"], 3);
}

#[test]
fn a_hundred_stalled_100_continue_bodies_hold_no_worker() {
    let srv = TestServer::start_with(small_pool());
    let head = "POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 40\r\n\r\n";
    let mut held = hold(&srv, 100, head, b"");
    // The dispatcher asks for the small body itself.
    let mut first = [0u8; 25];
    held[0].set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    held[0].read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    for _ in 0..3 {
        assert_health(&srv, "100 bodies after 100-continue stall");
    }
}

#[test]
fn a_hundred_large_dribbled_bodies_hold_at_most_the_transfer_share() {
    // Large bodies (over the 64 KiB pre-read) are read by workers, at most TRANSFER_WORKERS (1
    // of 2 here) at once; the rest wait, unread, in the dispatcher.
    let srv = TestServer::start_with(small_pool().env("BODY_TIMEOUT_SECS", "5"));
    let head = "POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
    let mut held = hold(&srv, 100, head, b"{");
    for round in 0..3 {
        for s in held.iter_mut() {
            let _ = s.write_all(b" ");
        }
        assert_health(&srv, &format!("100 large bodies dribble (round {round})"));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The one being read is cut off by the pace (408); the parked ones by the wait (503).
    let answers: Vec<String> = held
        .iter_mut()
        .take(10)
        .map(|s| String::from_utf8_lossy(&read_all(s, Duration::from_secs(20))).into_owned())
        .collect();
    assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 408") || a.starts_with("HTTP/1.1 503")), "{answers:?}");
    assert!(answers.iter().any(|a| a.starts_with("HTTP/1.1 503") && a.contains("retry-after")), "{answers:?}");
}

#[test]
fn bodies_to_the_open_routes_never_wait_for_a_transfer_slot() {
    // The transfer share (2 of 4 workers) held by bodies dribbled to a route that takes them,
    // and more of them parked for it.
    let srv = TestServer::start_with(
        Opts::default().env("WORKERS", "4").env("SECRET_KEY", SECRET).env("BODY_TIMEOUT_SECS", "5"),
    );
    let head = "POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
    let mut held = hold(&srv, 6, head, b"x");
    // Over the open routes' 64 KiB, declared or chunked: refused at once, not parked until the
    // share frees (which would be a 503 after BODY_TIMEOUT_SECS).
    for path in ["/auth/login", "/users/"] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 65537\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).unwrap();
        let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(3))).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        let mut s = TcpStream::connect(srv.addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        // One chunk of 65 KiB, in two writes: the first ends where the body's bytes (framing
        // included) are past 64 KiB while its payload is not yet over the limit, the moment a
        // body is handed to a transfer slot when its route takes large ones.
        let framing = format!("{:x}\r\n", 65 * 1024);
        s.write_all(framing.as_bytes()).unwrap();
        let first = 64 * 1024 + 1 - framing.len();
        s.write_all(&[b' '; 64 * 1024][..first]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&vec![b' '; 65 * 1024 - first]).unwrap();
        s.write_all(b"\r\n").unwrap();
        let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(3))).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{path} chunked: {answer}");
    }
    // At the limit exactly, a body is read in the dispatcher and served, slots or not.
    let login = r#"{"email": "nobody@example.com", "password": "x"}"#;
    let body = format!("{login}{}", " ".repeat(64 * 1024 - login.len()));
    assert_eq!(body.len(), 64 * 1024);
    let r = srv.request("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    for s in held.iter_mut() {
        let _ = s.write_all(b" ");
    }
}

/// A chunked login body of `payload` bytes in chunks of `size` bytes, with or without its end.
fn chunked_login(payload: usize, size: usize, end: bool) -> Vec<u8> {
    let login = r#"{"email": "nobody@example.com", "password": "x"}"#;
    let body = format!("{login}{}", " ".repeat(payload - login.len()));
    let mut out =
        b"POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.as_bytes().chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    if end {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

#[test]
fn a_small_body_in_tiny_chunks_is_refused_not_given_a_transfer_slot() {
    let srv = TestServer::start_with(small_pool().env("BODY_TIMEOUT_SECS", "10"));
    // 12,000 bytes of login as 1-byte chunks (72 KB on the wire), and then nothing: it used to
    // take a transfer slot and a worker until BODY_TIMEOUT_SECS (a 408); 16 of them from one
    // address held every upload slot of a 2-core machine.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&chunked_login(12_000, 1, false)).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(5))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("too much framing") && answer.contains("69632 bytes"), "{answer}");
    // At the edge: 64 KiB in chunks of 100 bytes spends 3,941 bytes on framing (656 chunks of
    // "64\r\n...\r\n" and the last one), within the room: read and answered.
    let body = chunked_login(64 * 1024, 100, true);
    let head_len = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(body.len() - head_len - 64 * 1024, 3_941);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&body).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(5))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Chunks of 20 bytes: 19,667 bytes of framing for 64 KiB, over the room even though every
    // byte arrives: refused.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&chunked_login(64 * 1024, 20, true)).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(5))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn one_address_cannot_take_every_transfer_slot() {
    // 8 workers: 4 transfer slots, 2 of them for one address. Four large bodies from 127.0.0.1
    // stall; one from 127.0.0.2 must still be read at once, not when the stalled ones time out.
    let srv = TestServer::start_with(
        small_pool().env("WORKERS", "8").env("BODY_TIMEOUT_SECS", "10").env("MIN_BODY_RATE_KB", "0"),
    );
    let head = "POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n";
    let mut stalled = hold(&srv, 4, head, &[b'q'; 1000]);
    std::thread::sleep(Duration::from_millis(300));
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    other.connect(&srv.addr.into()).unwrap();
    let mut other = Conn::wrap(other.into());
    other.write(head.as_bytes());
    other.write(&vec![b'q'; 200_000]);
    other.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(other.read_response(false).json()["length"], 200_000);
    // Served while the stalled bodies still held their slots (no 408 yet): not after them.
    for s in stalled.iter_mut() {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = s.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a stalled body was answered: {r:?}"
        );
    }
}

#[test]
fn a_silent_large_body_is_cut_off_after_body_timeout_even_with_no_minimum_rate() {
    // No minimum rate: only the silence bound, BODY_TIMEOUT_SECS, can end this body.
    let srv = TestServer::start_with(small_pool().env("BODY_TIMEOUT_SECS", "1").env("MIN_BODY_RATE_KB", "0"));
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n").unwrap();
    s.write_all(&[b'x'; 1000]).unwrap();
    // Well before the 30 s the silence bound used to be, whatever BODY_TIMEOUT_SECS said.
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(8))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_health(&srv, "after a silent body");
}

#[test]
fn time_the_handler_spends_before_it_reads_the_body_is_not_the_clients() {
    // A handler that waits 4 s (on the database, say) before it reads a body: the client's
    // clocks (1 s of silence at most, 64 KiB/s after 1 s) start when the server reads, not
    // before. The client sends part of the body at once and the rest half a second after the
    // server is back: before the fix the server found the body "late" and answered 408.
    let srv = TestServer::start_with(small_pool().env("BODY_TIMEOUT_SECS", "1").env("MIN_BODY_RATE_KB", "64"));
    let total = 200 * 1024;
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(
        format!("POST /__test/echo?sleep_ms=4000 HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![b'a'; 70 * 1024]).unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    s.write_all(&vec![b'b'; total - 70 * 1024]).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(10))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains(&format!("\"length\":{total}")), "{answer:?}");
    // The client's own silence still counts: the same request whose rest never comes is a 408.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(
        format!("POST /__test/echo?sleep_ms=2000 HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![b'a'; 70 * 1024]).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(10))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_health(&srv, "after a handler that waited before reading");
}

/// A client socket with a tiny receive buffer: the server cannot push much into it.
fn tiny_reader(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

#[test]
fn a_hundred_unread_downloads_hold_no_worker() {
    let srv = TestServer::start_with(small_pool());
    let token = user_token(&srv, "dl@example.com");
    // A 2 MiB file (sent with sendfile) and a 2 MiB in-memory body.
    let boundary = "xXxBoundaryxXx";
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n")
            .into_bytes();
    body.extend(std::iter::repeat_n(b'z', 2 << 20));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let bearer = format!("Bearer {token}");
    let r = srv.request("POST", "/api/upload", &[("Content-Type", &ct), ("Authorization", &bearer)], &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_string();
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = tiny_reader(srv.addr);
        let path = if i % 2 == 0 { url.as_str() } else { "/__test/big?kb=2048" };
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_health(&srv, "100 downloads are not read");
    }
    // A reader that does read gets every byte of both kinds.
    let file = srv.get(&url);
    assert_eq!((file.status, file.body.len()), (200, 2 << 20));
    let mem = srv.get("/__test/big?kb=2048");
    assert_eq!((mem.status, mem.body.len()), (200, 2 << 20));
    // And one of the unread ones, read at last, is whole too.
    let mut c = Conn::wrap(held.pop().unwrap());
    assert_eq!(c.read_response(false).body.len(), 2 << 20);
}

#[test]
fn a_dribbled_small_body_frees_its_slot_within_the_total_deadline() {
    // Three connections allowed; three clients dribble a 1000-byte body, one byte every 300 ms
    // (each byte used to push the deadline back). The total deadline is BODY_TIMEOUT_SECS (2)
    // plus the body at MIN_BODY_RATE_KB (16 KiB/s): about 2.1 s, however the bytes trickle.
    let srv = TestServer::start_with(
        small_pool().env("MAX_CONNECTIONS", "3").env("BODY_TIMEOUT_SECS", "2").env("MIN_BODY_RATE_KB", "16"),
    );
    let head = "POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n";
    let mut held = hold(&srv, 3, head, b"x");
    let r = srv.get("/health");
    assert_eq!(r.status, 503, "the fourth connection is over the cap: {}", r.text());
    let started = Instant::now();
    let mut answers = vec![Vec::new(); 3];
    while started.elapsed() < Duration::from_secs(15) && answers.iter().any(|a: &Vec<u8>| a.is_empty()) {
        for (s, a) in held.iter_mut().zip(answers.iter_mut()) {
            let _ = s.write_all(b"x");
            if a.is_empty() {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 1024];
                if let Ok(n) = s.read(&mut buf) {
                    a.extend_from_slice(&buf[..n]);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for a in &answers {
        assert!(a.starts_with(b"HTTP/1.1 408"), "{:?} after {:?}", String::from_utf8_lossy(a), started.elapsed());
    }
    eprintln!("dribblers answered 408 after {:?}", started.elapsed());
    assert_health(&srv, "the dribblers' slots are free again");
}

#[test]
fn connections_per_address_are_capped() {
    let srv = TestServer::start_with(small_pool().env("MAX_CONNECTIONS_PER_ADDR", "3"));
    let _idle: Vec<Conn> = (0..3).map(|_| srv.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = srv.get("/health");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    drop(_idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_health(&srv, "the idle connections are gone");
}

#[test]
fn large_bodies_from_one_address_take_turns() {
    // One large body at a time for this address: a second one waits (unread) until the first
    // is done, then is served.
    let srv = TestServer::start_with(small_pool().env("MAX_TRANSFERS_PER_ADDR", "1"));
    let body = vec![b'q'; 200_000];
    let head = |n: usize| format!("POST /__test/echo HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n");
    let mut first = srv.connect();
    first.write(head(body.len()).as_bytes());
    first.write(&body[..1000]);
    std::thread::sleep(Duration::from_millis(300));
    let mut second = srv.connect();
    second.write(head(body.len()).as_bytes());
    second.write(&body);
    second.stream.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut probe = [0u8; 1];
    assert!(second.stream.read(&mut probe).is_err(), "the second body was served while the first was being read");
    assert_health(&srv, "one large body per address is being read");
    first.write(&body[1000..]);
    assert_eq!(first.read_response(false).json()["length"], 200_000);
    second.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(second.read_response(false).json()["length"], 200_000);
}

#[test]
fn host_header_rules_of_http_1_1() {
    let srv = TestServer::start();
    for raw in [
        "GET /health HTTP/1.1\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    ] {
        let mut c = srv.connect();
        c.write(raw.as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 400, "{raw:?}: {}", r.text());
        assert!(r.json()["detail"].as_str().unwrap().contains("Host"), "{}", r.text());
    }
    // HTTP/1.0 needs none.
    let mut c = srv.connect();
    c.write(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
}

#[test]
fn panics_outside_handlers_do_not_shrink_the_pool() {
    let srv = TestServer::start_with(small_pool());
    // Five times the pool: if a panic killed its worker, the pool would be empty after two.
    for _ in 0..10 {
        let mut c = srv.connect();
        c.write(b"GET /__test/panic_upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        let _ = c.try_read_response(false);
    }
    assert_health(&srv, "after ten panics in upgrade closures");
    // The panics are logged by the threads they happened on, maybe after /health answered.
    let log = srv.log_when("caught a panic", Duration::from_secs(10));
    assert!(log.contains("caught a panic"), "{log}");
}

#[test]
fn a_client_reset_mid_upload_is_not_a_server_error() {
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET));
    let token = user_token(&srv, "reset@example.com");
    let s = TcpStream::connect(srv.addr).unwrap();
    let mut w = &s;
    w.write_all(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.bin\"\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    w.write_all(&vec![b'r'; 300_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Close with a reset (SO_LINGER 0).
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    assert_health(&srv, "after the reset");
    let log = srv.log_when("/api/upload", Duration::from_secs(10));
    let upload_lines: Vec<&str> = log.lines().filter(|l| l.contains("/api/upload")).collect();
    assert!(!upload_lines.is_empty(), "{log}");
    assert!(!log.contains("ERROR"), "a reset is the client's doing:\n{log}");
    assert!(upload_lines.iter().all(|l| !l.contains(" 500 ")), "{upload_lines:?}");
    let tmp: Vec<_> =
        std::fs::read_dir(srv.dir.path().join("uploads/.tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(tmp.iter().all(|e| e.path().extension().is_some_and(|x| x == "lock")), "{tmp:?}");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_stays_bounded_after_bursts_of_logins() {
    let srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET).env("WORKERS", "32"));
    let body = json!({ "email": "mem@example.com", "password": "password1" }).to_string();
    let r = srv.request("POST", "/users/", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 201);
    let start = rss_kib(srv.pid());
    let mut peak = start;
    let mut ok = 0;
    for _ in 0..5 {
        let threads: Vec<_> = (0..30)
            .map(|_| {
                let (addr, body) = (srv.addr, body.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    c.send("POST", "/auth/login", &[("Content-Type", "application/json")], body.as_bytes()).status
                })
            })
            .collect();
        for t in threads {
            ok += usize::from(t.join().unwrap() == 200);
        }
        peak = peak.max(rss_kib(srv.pid()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let end = rss_kib(srv.pid());
    eprintln!("RSS: start {start} KiB, peak {peak} KiB, after {end} KiB; {ok} of 150 logins answered 200");
    assert!(ok > 0, "no login succeeded");
    assert!(end < start + 96 * 1024, "RSS grew from {start} KiB to {end} KiB");
}

/// Names in `UPLOAD_DIR/.tmp` (empty when the folder is missing).
fn temp_files(srv: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(srv.dir.path().join("uploads/.tmp"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Start an upload of `total` bytes, send `sent` of them, and leave it hanging.
fn hanging_upload(srv: &TestServer, token: &str, total: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let part = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"h.bin\"\r\n\r\n";
    s.write_all(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {total}\r\n\r\n{part}"
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![b'h'; sent]).unwrap();
    s
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn an_upload_interrupted_by_shutdown_leaves_no_temp_file() {
    let mut srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET).env("SHUTDOWN_GRACE_SECS", "1"));
    let token = user_token(&srv, "shut@example.com");
    let _up = hanging_upload(&srv, &token, 50_000_000, 3_000_000);
    assert!(
        wait_for(Duration::from_secs(10), || temp_files(&srv).iter().any(|n| n.ends_with(".bin"))),
        "{:?}",
        temp_files(&srv)
    );
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(15)), Some(0), "{}", srv.log());
    assert_eq!(temp_files(&srv), Vec::<String>::new(), "{}", srv.log());
}

#[test]
fn temp_files_of_a_dead_process_are_removed_at_start_and_a_live_ones_kept() {
    let mut srv = TestServer::start_with(Opts::default().env("SECRET_KEY", SECRET));
    let token = user_token(&srv, "kill@example.com");
    let _up = hanging_upload(&srv, &token, 50_000_000, 3_000_000);
    assert!(wait_for(Duration::from_secs(10), || temp_files(&srv).iter().any(|n| n.ends_with(".bin"))));
    let orphan = temp_files(&srv).into_iter().find(|n| n.ends_with(".bin")).unwrap();
    // SIGKILL: no clean-up at all. The next start finds the dead owner's lock free.
    srv.restart();
    let left = temp_files(&srv);
    assert!(!left.contains(&orphan), "{left:?}");
    // A second process on the same UPLOAD_DIR (another instance, with a DATA_DIR of its own, as
    // every instance must have) leaves a live upload alone.
    let _up2 = hanging_upload(&srv, &token, 50_000_000, 3_000_000);
    assert!(wait_for(Duration::from_secs(10), || temp_files(&srv).iter().any(|n| n.ends_with(".bin"))));
    let live = temp_files(&srv).into_iter().find(|n| n.ends_with(".bin")).unwrap();
    let mut other = std::process::Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k, v)))
        .env("DATA_DIR", srv.dir.path().join("data-other"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let second_started =
        wait_for(Duration::from_secs(10), || temp_files(&srv).iter().filter(|n| n.ends_with(".lock")).count() == 2);
    let _ = other.kill();
    let _ = other.wait();
    assert!(second_started, "{:?}", temp_files(&srv));
    assert!(temp_files(&srv).contains(&live), "another instance removed a live upload's temp file");
    // One on the same DATA_DIR is refused at start: two processes on one spool would append,
    // replay and cut one journal at once.
    let same = std::process::Command::new(env!("CARGO_BIN_EXE_adcluster"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .current_dir(srv.dir.path())
        .env_clear()
        .envs(srv.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&same.stderr);
    assert_eq!(same.status.code(), Some(1), "{err}");
    assert!(err.contains("uses this DATA_DIR") && err.contains(&format!("pid {}", srv.pid())), "{err}");
}

#[test]
fn a_response_still_being_written_at_shutdown_is_finished() {
    // The dispatcher holds the rest of a response its client reads slowly; SIGTERM must not cut
    // it off (within the grace), and the process still exits 0.
    let mut srv = TestServer::start_with(small_pool().env("SHUTDOWN_GRACE_SECS", "10"));
    let mut s = tiny_reader(srv.addr);
    s.write_all(b"GET /__test/big?kb=4096 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Conn::wrap(s);
    let r = c.read_response(false);
    assert_eq!((r.status, r.body.len()), (200, 4096 * 1024));
    assert_eq!(r.header("connection"), None, "it was answered before the shutdown began");
    assert_eq!(srv.wait_exit(Duration::from_secs(15)), Some(0), "{}", srv.log());
}

#[test]
fn streamed_responses_are_long_transfers_too() {
    // A streamed body is written by its worker: it takes a transfer slot (one of two workers
    // here), so a second stream waits its turn (503) while short requests are still served.
    let srv = TestServer::start_with(small_pool().env("TRANSFER_WORKERS", "1"));
    let mut slow = tiny_reader(srv.addr);
    slow.write_all(b"GET /__test/stream?kb=65536 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r = srv.get("/__test/stream?kb=1");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_health(&srv, "a stream is held by a client that does not read");
    drop(slow);
    // Once that one is gone (its next write fails), streams are served again.
    assert!(wait_for(Duration::from_secs(10), || srv.get("/__test/stream?kb=1").status == 200));
}
