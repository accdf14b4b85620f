//! One benchmark client's connection: the blocking connect, the WebSocket handshake (request and
//! accept key from tungstenite's `handshake` module, the `101` parsed with httparse), the wait for
//! the `welcome` frame, and serialised writes. Must never read from the socket once the
//! connection is handed to a reader thread (that thread owns the read side), and never write a
//! frame without holding the write lock (so frames from different threads cannot interleave).
//!
//! Why not tungstenite's `WebSocket`: it needs `&mut` for both reading and writing, so a reader
//! thread owning thousands of sockets could not let the load driver write on one of them; and its
//! default read buffer (128 KiB per connection) would cost 1.3 GiB at 10,000 clients. Here a
//! connection is a socket, a lock and a 32-bit mask seed; partial frames live in the reader.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;

use crate::frame::{self, In, Kind};

/// Largest handshake response accepted.
const MAX_HEAD: usize = 16 * 1024;

pub struct Conn {
    pub idx: usize,
    stream: TcpStream,
    /// Held for the whole of each frame's write.
    wlock: Mutex<()>,
    mask_state: AtomicU32,
    /// Set by the reader when the socket is finished (EOF, error, or closed after a close frame).
    pub closed: AtomicBool,
    /// Set once this side has sent a close frame.
    pub close_sent: AtomicBool,
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// A fresh masking key (xorshift32; masks only need to vary, not to be secret, here).
    pub fn mask(&self) -> [u8; 4] {
        let mut x = self.mask_state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state.store(x, Ordering::Relaxed);
        x.to_le_bytes()
    }

    /// Writes one whole frame (blocking, with the socket's 10 s send timeout).
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let _g = self.wlock.lock().unwrap_or_else(|e| e.into_inner());
        (&self.stream).write_all(bytes)
    }

    /// Sends a close frame (1000) unless one was sent already.
    pub fn send_close(&self) -> io::Result<()> {
        if self.close_sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.send(&frame::close_normal(self.mask()))
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connected client: the socket, the bytes read past the `welcome` frame (to be parsed by the
/// reader), and how long the connect took (TCP connect to `welcome` received).
pub struct Connected {
    pub conn: Conn,
    pub leftover: Vec<u8>,
    pub connect_ns: u64,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Connects client `idx` to `ws://{host_port}{path}` and waits for its `welcome` frame.
pub fn connect(
    addr: SocketAddr,
    host_port: &str,
    path: &str,
    idx: usize,
    timeout: Duration,
) -> Result<Connected, String> {
    let t0 = std::time::Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err("connect", e))?;
    stream.set_nodelay(true).map_err(|e| err("nodelay", e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| err("timeout", e))?;
    stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| err("timeout", e))?;

    let request = format!("ws://{host_port}{path}").into_client_request().map_err(|e| err("request", e))?;
    let (bytes, key) = generate_request(request).map_err(|e| err("request", e))?;
    let accept = derive_accept_key(key.as_bytes());
    (&stream).write_all(&bytes).map_err(|e| err("send handshake", e))?;

    // The response head.
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        read_more(&stream, &mut buf).map_err(|e| err("read handshake", e))?;
        if let Some(n) = check_response(&buf, &accept)? {
            break n;
        }
        if buf.len() > MAX_HEAD {
            return Err("handshake response head too large".into());
        }
    };
    buf.drain(..head_len);

    // The welcome frame comes first.
    loop {
        match frame::next_frame(&buf).map_err(|e| e.0)? {
            Some((In::Text(t), used)) => {
                if frame::kind(t) != Kind::Welcome {
                    return Err(format!("first frame is not a welcome: {}", String::from_utf8_lossy(t)));
                }
                buf.drain(..used);
                break;
            }
            Some((In::Close(code), _)) => return Err(format!("closed by the server before welcome ({code:?})")),
            Some((other, _)) => return Err(format!("unexpected frame before welcome: {other:?}")),
            None => read_more(&stream, &mut buf).map_err(|e| err("read welcome", e))?,
        }
    }
    let connect_ns = t0.elapsed().as_nanos() as u64;
    // From here on, reads are non-blocking recv() calls by the reader; writes stay blocking.
    stream.set_read_timeout(None).map_err(|e| err("timeout", e))?;
    let seed = (idx as u32).wrapping_mul(2_654_435_761) | 1;
    Ok(Connected {
        conn: Conn {
            idx,
            stream,
            wlock: Mutex::new(()),
            mask_state: AtomicU32::new(seed),
            closed: AtomicBool::new(false),
            close_sent: AtomicBool::new(false),
        },
        leftover: buf,
        connect_ns,
    })
}

fn read_more(mut stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Checks a handshake response head: `Ok(Some(head length))` for a valid `101` with the right
/// `Sec-WebSocket-Accept`, `Ok(None)` when the head is not complete yet.
pub fn check_response(buf: &[u8], accept: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).map_err(|e| err("bad handshake response", e))? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        let body = String::from_utf8_lossy(&buf[n..buf.len().min(n + 200)]);
        return Err(format!("handshake answered {code} {}: {body}", resp.reason.unwrap_or("")));
    }
    let header = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    if !header("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return Err("101 without Upgrade: websocket".into());
    }
    if header("Sec-WebSocket-Accept") != Some(accept.as_bytes()) {
        return Err("101 with a wrong Sec-WebSocket-Accept".into());
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_response() {
        // RFC 6455's example key and accept value.
        let accept = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        ok.extend(b"\x81\x02{}");
        let n = check_response(&ok, &accept).unwrap().unwrap();
        assert_eq!(&ok[n..], b"\x81\x02{}");
        assert_eq!(check_response(&ok[..20], &accept), Ok(None));
        assert!(check_response(&ok, "wrong").unwrap_err().contains("Accept"));
        let refused = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        assert!(check_response(refused.as_bytes(), &accept).unwrap_err().contains("503"));
    }
}
