//! WebSocket test clients over real sockets: a tungstenite client (`WsClient`) that reads JSON
//! frames with a timeout, and raw handshakes for clients that misbehave on purpose (never
//! read, never answer pings, drop the TCP connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::{frame::coding::CloseCode, Role};
use tungstenite::{Message, WebSocket};

use super::{Resp, TestServer};

/// How long a test waits for a frame that should come.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WsClient {
    pub ws: WebSocket<TcpStream>,
}

impl WsClient {
    /// Connect to `path` (e.g. `/ws/alice/room`) or panic with the reason.
    pub fn connect(srv: &TestServer, path: &str) -> WsClient {
        WsClient::try_connect(srv.addr, path, &[]).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    /// Connect and read the `welcome` frame; returns the client and the frame.
    pub fn join(srv: &TestServer, path: &str) -> (WsClient, Value) {
        let mut c = WsClient::connect(srv, path);
        let w = c.recv();
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    pub fn try_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<WsClient, String> {
        let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        let mut req = format!("ws://{addr}{path}").into_client_request().map_err(|e| e.to_string())?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                tungstenite::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let (ws, _) = tungstenite::client::client(req, stream).map_err(|e| e.to_string())?;
        Ok(WsClient { ws })
    }

    /// Wrap a socket on which a handshake has already been done by hand.
    pub fn from_raw(stream: TcpStream) -> WsClient {
        stream.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        WsClient { ws: WebSocket::from_raw_socket(stream, Role::Client, None) }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Queue a text frame without flushing (for pipelining many frames).
    pub fn write(&mut self, text: &str) {
        self.ws.write(Message::text(text)).expect("write");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).expect("send");
    }

    /// The next message, skipping pings and pongs; `None` on timeout.
    pub fn next(&mut self, timeout: Duration) -> Option<Message> {
        self.ws.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let r = loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(m) => break Some(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break None
                }
                Err(e) => panic!("read failed: {e}"),
            }
        };
        self.ws.get_ref().set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
        r
    }

    /// The next text frame as JSON; panics on timeout, close or anything else.
    pub fn recv(&mut self) -> Value {
        match self.next(FRAME_TIMEOUT) {
            Some(Message::Text(t)) => {
                serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            Some(other) => panic!("expected a text frame, got {other:?}"),
            None => panic!("no frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// Skip frames until one of type `kind`.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Assert that no text frame arrives within `d`.
    pub fn assert_silent(&mut self, d: Duration) {
        if let Some(m) = self.next(d) {
            panic!("expected nothing, got {m:?}");
        }
    }

    /// Read (and drop) text frames until a close frame; returns its code and reason.
    pub fn expect_close(&mut self) -> (u16, String) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (u16::from(CloseCode::Status), String::new()),
                Ok(_) => {}
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("no close frame within 30 s");
    }

    /// Send a close frame and wait for the server's answer.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match self.ws.read() {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// The headers of a WebSocket handshake.
pub fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
}

/// Send an upgrade request to `path` over the HTTP test client and return the response (for
/// refusals: the response of a refused upgrade is an ordinary HTTP response).
pub fn upgrade_response(srv: &TestServer, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = upgrade_headers();
    headers.extend_from_slice(extra);
    srv.request("GET", path, &headers, b"")
}

/// Do the handshake by hand and return the raw socket right after the `101` head.
pub fn raw_handshake(srv: &TestServer, path: &str) -> TcpStream {
    raw_handshake_head(srv, path).0
}

/// [`raw_handshake`], and the `101` head itself (lower-case header names, as the server writes).
pub fn raw_handshake_head(srv: &TestServer, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(FRAME_TIMEOUT)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in upgrade_headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // Read the head byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let head = head.into_owned();
    (s, head)
}

/// A masked client text frame, by hand.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Poll `f` until it returns true, at most `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
