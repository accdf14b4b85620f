//! Small helpers shared by several concerns, with no knowledge of any of them.
//! Must never: grow into a grab bag. A helper that belongs to one concern lives there.

pub mod fifo;
pub mod hash_pipe;
pub mod log;
pub mod mem;
pub mod rlimit;
pub mod time;
pub mod tmp_owner;
pub mod uring;

/// Tests: a connected TCP pair on the loopback, (server side, client side).
#[cfg(test)]
pub(crate) fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (s, c)
}

/// Tests: polls `f` every millisecond until it holds; panics with `what` when it has not held
/// within 10 s (a hang, not a measurement: where it is used, the condition holds in
/// microseconds).
#[cfg(test)]
pub(crate) fn within(what: &str, f: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
