//! Evidence for docs/decisions.md: what tiny_http 0.12.0 gives after `Request::upgrade`,
//! and what its accept loop does on EMFILE.
//!
//!   cargo run -- upgrade   # the upgraded stream: type, and a write blocked behind a read
//!   cargo run -- threads 1000 # OS threads grow with idle connections, no bound
//!   cargo run -- emfile 64 # RLIMIT_NOFILE=64, 100 idle connections, close them, try again
//!   cargo run -- emfile 65 # same with 65: the other of the two failure paths
//!   cargo build --features show_errors   # the lines that do not compile
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "upgrade".into());
    match mode.as_str() {
        "upgrade" => upgrade(),
        "threads" => threads(std::env::args().nth(2).map_or(500, |s| s.parse().unwrap())),
        "emfile" => emfile(std::env::args().nth(2).map_or(64, |s| s.parse().unwrap())),
        "client" => client(),
        m => panic!("unknown mode {m}"),
    }
}

fn threads_now() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("Threads:")).unwrap()[8..].trim().parse().unwrap()
}

fn serve_forever(server: Arc<tiny_http::Server>) {
    std::thread::spawn(move || loop {
        match server.recv_timeout(Duration::from_secs(3600)) {
            Ok(Some(rq)) => {
                let _ = rq.respond(tiny_http::Response::from_string("ok"));
            }
            Ok(None) => {}
            Err(e) => println!("server.recv() -> Err({e})"),
        }
    });
}

fn get(port: u16) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) if out.is_empty() => "connection closed with no response".into(),
        Ok(_) => String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string(),
        Err(e) => format!("no response: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
fn upgrade() {
    println!("tiny_http 0.12.0, Request::upgrade");
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();

    // A client that upgrades, then stays silent for 2 s before sending one byte.
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap();
        println!("client got: {:?}", String::from_utf8_lossy(&buf[..n]).lines().next().unwrap());
        std::thread::sleep(Duration::from_secs(2));
        c.write_all(b"x").unwrap();
        let n = c.read(&mut buf).unwrap();
        println!("client got pushed bytes: {:?}", String::from_utf8_lossy(&buf[..n]));
        c.shutdown(Shutdown::Both).ok();
    });

    let rq = server.recv().unwrap();
    let resp = tiny_http::Response::empty(101);
    let stream: Box<dyn tiny_http::ReadWrite + Send> = rq.upgrade("websocket", resp);
    println!("upgrade() returned: {}", std::any::type_name_of_val(&stream));
    println!("the only operations on it: Read::read(&mut self), Write::write(&mut self), Send");

    #[cfg(feature = "show_errors")]
    {
        // None of these compile (error text in README.md):
        let other_half = stream.try_clone(); // to read on one thread and write on another
        stream.set_read_timeout(Some(Duration::from_secs(1))); // to poll / time out a read
        let tcp: Box<std::net::TcpStream> = stream.downcast::<std::net::TcpStream>().unwrap(); // get the socket back
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*stream); // to poll(2) it
    }

    // What does compile: share the one box behind a Mutex. A reader thread blocks in read()
    // while holding the lock (there is no timeout to set), so a server push cannot get through.
    let shared = Arc::new(Mutex::new(stream));
    let r = shared.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let mut g = r.lock().unwrap();
        let n = g.read(&mut buf).unwrap();
        println!("reader: read() returned {n} byte(s) after the client spoke");
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let mut waited_for_lock = false;
    loop {
        match shared.try_lock() {
            Ok(mut g) => {
                g.write_all(b"pushed").unwrap();
                g.flush().unwrap();
                break;
            }
            Err(_) => {
                if !waited_for_lock {
                    println!("writer: a push is ready, but the stream is locked by the blocked reader");
                    waited_for_lock = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    println!(
        "writer: push delivered only after {:.2} s, i.e. when the client happened to send something",
        t0.elapsed().as_secs_f64()
    );
    reader.join().unwrap();
    client.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
fn threads(n: usize) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    serve_forever(server.clone());
    std::thread::sleep(Duration::from_millis(200));
    println!("threads in process before: {}", threads_now());
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        println!("threads in process with {n} idle connections open: {}", threads_now());
    }
}

// ---------------------------------------------------------------------------------------------
fn emfile(limit: u64) {
    // Lower only the soft limit; the client child raises its own back to the hard limit.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = limit;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
    println!("server process: RLIMIT_NOFILE soft limit = {limit}");
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    serve_forever(server.clone());
    println!("before flood: GET /health -> {}", get(port));

    // 100 idle connections from another process (its own fd limit), held 2 s, then closed.
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["client", &port.to_string(), "100"])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_secs(1));
    println!("after the flood was closed: GET /health -> {}", get(port));
    std::thread::sleep(Duration::from_secs(1));
    println!("and again 1 s later:        GET /health -> {}", get(port));
}

fn client() {
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    let port: u16 = std::env::args().nth(2).unwrap().parse().unwrap();
    let n: usize = std::env::args().nth(3).unwrap().parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..n {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => conns.push(c),
            Err(e) => {
                println!("client: connect failed: {e}");
                break;
            }
        }
    }
    println!("client: opened {} idle connections", conns.len());
    std::thread::sleep(Duration::from_secs(2));
    drop(conns);
    println!("client: closed them all");
}
