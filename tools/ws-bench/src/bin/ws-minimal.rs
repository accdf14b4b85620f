//! ws-minimal: a WebSocket server for ws-bench's `/group` fan-out with next to no work of its
//! own, as a yardstick for `scripts/bench/ws-ab.sh` (side `minimal`). Bench-only: it is no server
//! for anyone, speaks only what the fan-out scenarios use, and must never grow into a second
//! implementation.
//!
//! What it shows: how much of a delivery's CPU is the kernel's. It has Node's shape (one thread,
//! one `epoll` set) without Node's user-space work: each frame built once per message and
//! written to each member with one non-blocking `send`, no allocation per delivery, no locks.
//! Beside Node in the same run, its CPU per delivery is what that shape costs with nothing of
//! its own on top; it is not a floor for every server (ours, with other threads doing the
//! sends, measured below it: `BENCHMARKS.md`, notes).
//!
//! Speaks: the upgrade of `/ws/{id}` and `/ws/{id}/{group}` (no checks of names or headers
//! beyond `Sec-WebSocket-Key`), a `welcome` frame, `/group <text>` to every member of the
//! sender's group (the sender included, as the contract's `/group`), pings answered, a close
//! answered. Not: `join`/`leave` notices (no measured phase counts them), other commands, takeover,
//! fragmented messages, limits beyond a 64 KiB message. A frame a socket cannot take at once
//! waits in that connection's buffer (unbounded: the scenarios keep it small) until `EPOLLOUT`.
//!
//! Run: ws-minimal [--host H] [--port N] (default 127.0.0.1, any free port); prints
//! "listening on http://HOST:PORT" once it listens.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// Largest client message taken (the contract's limit); a bigger one ends the connection.
const MESSAGE_MAX: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet used (the request head, then frames).
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet; while not empty, `EPOLLOUT` is watched.
    outbuf: Vec<u8>,
    /// After the `101`: the client's id and group (if any).
    upgraded: Option<(String, Option<String>)>,
}

struct Server {
    epoll: RawFd,
    conns: HashMap<RawFd, Conn>,
    groups: HashMap<String, Vec<RawFd>>,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut host = "127.0.0.1".to_string();
    let mut port = 0u16;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage(&format!("{flag}: missing value")));
        match flag.as_str() {
            "--host" => host = value.clone(),
            "--port" => port = value.parse().unwrap_or_else(|_| usage(&format!("--port: not a port: {value:?}"))),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let listener =
        TcpListener::bind((host.as_str(), port)).unwrap_or_else(|e| fail(&format!("bind {host}:{port}: {e}")));
    listener.set_nonblocking(true).unwrap_or_else(|e| fail(&format!("set_nonblocking: {e}")));
    let addr = listener.local_addr().unwrap_or_else(|e| fail(&format!("local_addr: {e}")));
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        fail(&format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    let mut server = Server { epoll, conns: HashMap::new(), groups: HashMap::new() };
    watch(epoll, listener.as_raw_fd(), libc::EPOLLIN as u32, libc::EPOLL_CTL_ADD);
    println!("listening on http://{addr}");
    let _ = io::stdout().flush();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` is a valid buffer of `events.len()` entries for the call.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as libc::c_int, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            fail(&format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let (fd, flags) = (ev.u64 as RawFd, ev.events);
            if fd == listener.as_raw_fd() {
                server.accept(&listener);
                continue;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                server.flush(fd);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                server.readable(fd);
            }
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("ws-minimal: {why}\nusage: ws-minimal [--host H] [--port N]");
    std::process::exit(2);
}

fn fail(why: &str) -> ! {
    eprintln!("ws-minimal: error: {why}");
    std::process::exit(1);
}

/// A server frame (unmasked, final) of `opcode` around `payload`, appended to `out`.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n < 65536 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// `s` as the inside of a JSON string.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

/// One whole client frame at the front of `buf`: (opcode, unmasked payload, its length on the
/// wire). `Ok(None)`: not all there yet. `Err`: unmasked or over the limit.
fn client_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 == 0 {
        return Err(());
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if len > MESSAGE_MAX {
        return Err(());
    }
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
    Ok(Some((buf[0] & 0x0f, payload, at + len)))
}

/// Adds `fd` to the epoll set, or changes what it is watched for.
fn watch(epoll: RawFd, fd: RawFd, events: u32, op: libc::c_int) {
    let mut ev = libc::epoll_event { events, u64: fd as u64 };
    // SAFETY: `ev` lives across the call; the kernel copies it.
    unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) };
}

impl Server {
    fn accept(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    watch(self.epoll, fd, libc::EPOLLIN as u32, libc::EPOLL_CTL_ADD);
                    self.conns.insert(fd, Conn { stream, inbuf: Vec::new(), outbuf: Vec::new(), upgraded: None });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors and the like: try again at the next event.
                Err(_) => return,
            }
        }
    }

    /// Read what the socket has, then run every whole request head or frame in it.
    fn readable(&mut self, fd: RawFd) {
        let mut chunk = [0u8; 16 * 1024];
        let mut ended = false;
        let Some(c) = self.conns.get_mut(&fd) else { return };
        loop {
            match (&c.stream).read(&mut chunk) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if !self.run(fd) || ended {
            self.drop_conn(fd);
        }
    }

    /// Runs what `fd` has sent. False when the connection must end.
    fn run(&mut self, fd: RawFd) -> bool {
        loop {
            let Some(c) = self.conns.get_mut(&fd) else { return false };
            if c.upgraded.is_none() {
                let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else { return true };
                let head = c.inbuf.drain(..end + 4).collect::<Vec<u8>>();
                return self.upgrade(fd, &head) && self.run(fd);
            }
            let (opcode, payload, used) = match client_frame(&c.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return true,
                Err(()) => return false,
            };
            c.inbuf.drain(..used);
            match opcode {
                0x1 => {
                    if let Some(text) = payload.strip_prefix(b"/group ") {
                        self.group(fd, text);
                    }
                }
                0x8 => {
                    let code = if payload.len() >= 2 { [payload[0], payload[1]] } else { 1000u16.to_be_bytes() };
                    let mut close = Vec::new();
                    frame(&mut close, 0x8, &code);
                    self.send(fd, &close);
                    self.leave(fd);
                    if let Some(c) = self.conns.get(&fd) {
                        let _ = c.stream.shutdown(Shutdown::Write);
                    }
                    return true;
                }
                0x9 => {
                    let mut pong = Vec::new();
                    frame(&mut pong, 0xA, &payload);
                    self.send(fd, &pong);
                }
                _ => {}
            }
        }
    }

    /// Answers a request head with the `101` and a `welcome`, and puts the client in its group.
    fn upgrade(&mut self, fd: RawFd, head: &[u8]) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return false;
        }
        let Some(key) = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key")) else {
            return false;
        };
        let accept = tungstenite::handshake::derive_accept_key(key.value);
        let mut parts = req.path.unwrap_or("").trim_start_matches('/').split('/');
        let (Some("ws"), Some(id)) = (parts.next(), parts.next()) else { return false };
        let group = parts.next().filter(|g| !g.is_empty()).map(String::from);
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        let mut welcome = b"{\"type\":\"welcome\",\"client_id\":\"".to_vec();
        json_str(&mut welcome, id.as_bytes());
        welcome.extend_from_slice(b"\"}");
        frame(&mut out, 0x1, &welcome);
        let id = id.to_string();
        if let Some(g) = &group {
            self.groups.entry(g.clone()).or_default().push(fd);
        }
        if let Some(c) = self.conns.get_mut(&fd) {
            c.upgraded = Some((id, group));
        }
        self.send(fd, &out);
        true
    }

    /// `/group <text>`: one frame, built once, to every member of the sender's group.
    fn group(&mut self, fd: RawFd, text: &[u8]) {
        let Some((id, Some(group))) = self.conns.get(&fd).and_then(|c| c.upgraded.clone()) else { return };
        let mut json = b"{\"type\":\"group\",\"from\":\"".to_vec();
        json_str(&mut json, id.as_bytes());
        json.extend_from_slice(b"\",\"group\":\"");
        json_str(&mut json, group.as_bytes());
        json.extend_from_slice(b"\",\"message\":\"");
        json_str(&mut json, text);
        json.extend_from_slice(b"\"}");
        let mut out = Vec::with_capacity(json.len() + 4);
        frame(&mut out, 0x1, &json);
        let members = self.groups.remove(&group).unwrap_or_default();
        for &m in &members {
            self.send(m, &out);
        }
        self.groups.insert(group, members);
    }

    /// Writes `bytes` to `fd` now if nothing is waiting before them, else (or for what the
    /// socket does not take) keeps them for `EPOLLOUT`.
    fn send(&mut self, fd: RawFd, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&fd) else { return };
        let mut written = 0;
        if c.outbuf.is_empty() {
            // SAFETY: `bytes` is valid for its length; `fd` is this connection's open socket.
            let n =
                unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                    return;
                }
            } else {
                written = n as usize;
            }
            if written == bytes.len() {
                return;
            }
            watch(self.epoll, fd, (libc::EPOLLIN | libc::EPOLLOUT) as u32, libc::EPOLL_CTL_MOD);
        }
        c.outbuf.extend_from_slice(&bytes[written..]);
    }

    /// `EPOLLOUT`: write what waits; stop watching for it once all is out.
    fn flush(&mut self, fd: RawFd) {
        let Some(c) = self.conns.get_mut(&fd) else { return };
        match (&c.stream).write(&c.outbuf) {
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => c.outbuf.clear(),
        }
        if c.outbuf.is_empty() {
            watch(self.epoll, fd, libc::EPOLLIN as u32, libc::EPOLL_CTL_MOD);
        }
    }

    fn leave(&mut self, fd: RawFd) {
        let Some(Some((_, Some(group)))) = self.conns.get_mut(&fd).map(|c| c.upgraded.take()) else { return };
        if let Some(members) = self.groups.get_mut(&group) {
            members.retain(|&m| m != fd);
            if members.is_empty() {
                self.groups.remove(&group);
            }
        }
    }

    fn drop_conn(&mut self, fd: RawFd) {
        self.leave(fd);
        // Dropping the stream closes the socket, which also takes it out of the epoll set.
        self.conns.remove(&fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_json() {
        let mut out = Vec::new();
        frame(&mut out, 0x1, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        let mut long = Vec::new();
        frame(&mut long, 0x1, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let mut j = Vec::new();
        json_str(&mut j, b"a\"b\\c\n");
        assert_eq!(j, b"a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn client_frames_are_unmasked_whole_or_not_at_all() {
        let f = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        assert_eq!(client_frame(&f), Ok(Some((0x1, b"hi".to_vec(), 8))));
        assert_eq!(client_frame(&f[..7]), Ok(None));
        assert_eq!(client_frame(&[0x81, 0x02, b'h', b'i']), Err(()), "unmasked");
    }
}
