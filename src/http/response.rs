//! Responses: what a handler returns, and how it goes onto the wire.
//!
//! A body is bytes in memory, a range of a file, sent with `sendfile(2)` (never loaded whole,
//! and paced: a reader slower than `Pace` allows is cut off), or a stream a handler produces
//! while it is sent (`Body::Stream`, for results too big to hold: a database export). Every
//! response carries `Content-Length`, except a stream, which is sent with
//! `Transfer-Encoding: chunked` (HTTP/1.0: until the connection closes), so a client can always
//! tell where one response ends, and a stream that fails half-way is never mistaken for a whole
//! one (it lacks its final chunk).
//!
//! Must never: write a body for `HEAD`, `1xx`, `204` or `304`; write a head without
//! `Content-Length` (streams aside); or let a handler set the framing headers itself (`Content-Length`,
//! `Transfer-Encoding`, `Connection` are the connection layer's).

use std::borrow::Cow;
use std::io::{self, Write};
use std::net::TcpStream;

use serde::Serialize;

/// What runs after a `101 Switching Protocols` head has been written: it receives the socket and
/// any bytes the client sent after its request head, and owns the connection from then on.
/// It must return quickly (start a thread if it needs one): it runs on an HTTP worker.
pub type UpgradeFn = Box<dyn FnOnce(TcpStream, Vec<u8>) + Send>;

/// Produces a streamed body: writes it, in as many `write`s as it likes, to the writer it is
/// given (buffered for it: chunks of about [`STREAM_CHUNK`] bytes go out), then returns. It runs
/// on the HTTP worker, after the head is sent, and holds that worker until it returns; writes
/// to a reader slower than `Pace` fail with `TimedOut`, so a slow reader cannot hold the worker
/// for long. Returning `Err` (its own, or a failed write passed on) ends the response without
/// its final chunk and closes the connection: the client sees an incomplete body.
pub type StreamFn = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// Size of the chunks a streamed body is sent in.
pub const STREAM_CHUNK: usize = 64 * 1024;

/// A response body.
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    Static(&'static [u8]),
    /// `len` bytes of a file from `offset`, sent by the kernel with `sendfile(2)`: no copy
    /// through user space.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// A body of unknown length, produced while it is sent (see [`StreamFn`]).
    Stream(StreamFn),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Static(b) => b.len() as u64,
            Body::File { len, .. } => *len,
            // Unknown until sent; never used for the head (a stream is chunked).
            Body::Stream(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response under construction.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Body,
    /// Set for `101` responses: takes over the socket once the head is written.
    pub upgrade: Option<UpgradeFn>,
    /// The handler asks for the connection to be closed after this response.
    pub close: bool,
    /// The handler asks the connection layer not to read this connection's next request for
    /// this long (back-pressure for a client that ignores `Retry-After`; the connection waits
    /// in the dispatcher, costing no worker). Capped by the layer at `MAX_HOLD`.
    pub hold: Option<std::time::Duration>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Body::Empty, upgrade: None, close: false, hold: None }
    }

    /// A JSON response from any serialisable value.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        // Serialising our own types cannot fail (no maps with non-string keys, no failing
        // `Serialize` impls); fall back to a 500 body rather than panic if that ever changes.
        let bytes = serde_json::to_vec(value).unwrap_or_else(|_| br#"{"detail":"Internal Server Error"}"#.to_vec());
        Response::bytes(status, "application/json", bytes)
    }

    pub fn bytes(status: u16, content_type: &str, bytes: Vec<u8>) -> Response {
        Response::new(status).header("content-type", content_type).with_body(Body::Bytes(bytes))
    }

    pub fn static_bytes(status: u16, content_type: &str, bytes: &'static [u8]) -> Response {
        Response::new(status).header("content-type", content_type).with_body(Body::Static(bytes))
    }

    /// `{"detail": message}` with the given status: the error shape of the contract.
    pub fn detail(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "detail": message }))
    }

    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }

    /// A `101 Switching Protocols` response; `then` receives the socket.
    pub fn upgrade(headers: Vec<(Cow<'static, str>, String)>, then: UpgradeFn) -> Response {
        Response { status: 101, headers, body: Body::Empty, upgrade: Some(then), close: false, hold: None }
    }
}

/// The reason phrase for the statuses we use.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialise the status line and headers. `keep_alive` decides the `Connection` header;
/// `head_only` is for `HEAD` requests (the `Content-Length` is still the body's).
pub fn encode_head(resp: &Response, minor_version: u8, keep_alive: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if minor_version == 0 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(resp.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        if is_framing_header(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        // Header values never carry CR or LF: a value from user input cannot split the head.
        for &b in value.as_bytes() {
            out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(crate::util::time::http_date_now().as_bytes());
    out.extend_from_slice(b"\r\n");
    if resp.status == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
        return;
    }
    let streamed = matches!(resp.body, Body::Stream(_));
    if streamed && !(resp.status < 200 || resp.status == 204 || resp.status == 304) {
        // HTTP/1.1: chunked. HTTP/1.0 has no chunks: the body ends when the connection closes.
        if minor_version == 0 {
            out.extend_from_slice(b"connection: close\r\n\r\n");
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            if !keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
        return;
    }
    if !(resp.status < 200 || resp.status == 204 || resp.status == 304) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(resp.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn is_framing_header(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection", "date"].iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Write a whole response. Small bodies go out in the same `write` as the head. Returns the
/// number of body bytes written.
/// How fast a client must read a streamed file: once `grace` has passed, at least `min_rate`
/// bytes per second on average, else the write fails (and the connection is closed), so a slow
/// reader cannot hold a worker for the length of a large download. Bytes the kernel buffered
/// count as read, so the bound is `grace + (bytes sent) / min_rate`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub grace: std::time::Duration,
    pub min_rate: u64,
}

pub fn write_response(
    stream: &mut TcpStream,
    resp: &mut Response,
    minor_version: u8,
    keep_alive: bool,
    head_only: bool,
    scratch: &mut Vec<u8>,
    pace: Option<Pace>,
) -> io::Result<u64> {
    scratch.clear();
    encode_head(resp, minor_version, keep_alive, scratch);
    let no_body = head_only || resp.status < 200 || resp.status == 204 || resp.status == 304;
    if no_body {
        stream.write_all(scratch)?;
        return Ok(0);
    }
    match &mut resp.body {
        Body::Empty => {
            stream.write_all(scratch)?;
            Ok(0)
        }
        Body::Bytes(b) => write_small(stream, scratch, b),
        Body::Static(b) => write_small(stream, scratch, b),
        Body::File { file, offset, len } => {
            stream.write_all(scratch)?;
            full_length(send_file(file, *offset, *len, stream, pace)?, *len)
        }
        Body::Stream(_) => {
            let Body::Stream(produce) = std::mem::replace(&mut resp.body, Body::Empty) else {
                unreachable!("matched a stream above")
            };
            stream.write_all(scratch)?;
            write_stream(stream, produce, minor_version != 0, pace)
        }
    }
}

/// Run a stream's producer over a buffered (and, for HTTP/1.1, chunked) writer, then end the
/// body: the final chunk, or for HTTP/1.0 a write shutdown (the end of the body). Returns the
/// body's length (payload bytes, without the chunk framing).
fn write_stream(stream: &mut TcpStream, produce: StreamFn, chunked: bool, pace: Option<Pace>) -> io::Result<u64> {
    let started = std::time::Instant::now();
    let mut sink = StreamSink { stream, chunked, sent: 0, blocked: std::time::Duration::ZERO, pace };
    {
        let mut buffered = io::BufWriter::with_capacity(STREAM_CHUNK, &mut sink);
        // A panic in the producer must not kill the worker: it fails the response like an error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(&mut buffered)))
            .map_err(|_| io::Error::other("the stream producer panicked"))??;
        buffered.flush()?;
    }
    if chunked {
        sink.stream.write_all(b"0\r\n\r\n")?;
    } else {
        sink.stream.shutdown(std::net::Shutdown::Write)?;
    }
    crate::debug!("streamed {} bytes in {:?}", sink.sent, started.elapsed());
    Ok(sink.sent)
}

/// The socket side of a streamed body: one chunk per `write`, and the pace check. Only the time
/// spent blocked in the socket counts against the pace (a producer that is slow to compute, a
/// long database query, is not the reader's fault).
struct StreamSink<'s> {
    stream: &'s mut TcpStream,
    chunked: bool,
    sent: u64,
    blocked: std::time::Duration,
    pace: Option<Pace>,
}

impl Write for StreamSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let t = std::time::Instant::now();
        if self.chunked {
            let mut frame = Vec::with_capacity(buf.len() + 16);
            frame.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
            frame.extend_from_slice(buf);
            frame.extend_from_slice(b"\r\n");
            self.stream.write_all(&frame)?;
        } else {
            self.stream.write_all(buf)?;
        }
        self.blocked += t.elapsed();
        self.sent += buf.len() as u64;
        if let Some(p) = self.pace.filter(|p| p.min_rate > 0) {
            let earned = std::time::Duration::from_secs_f64(self.sent as f64 / p.min_rate as f64);
            if self.blocked > p.grace.saturating_add(earned) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client reads too slowly"));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// `sendfile(2)` from `file` at `offset` to the socket until `len` bytes are sent or the file
/// ends. The socket's write timeout applies (a stalled client fails with `WouldBlock`).
fn send_file(file: &std::fs::File, offset: u64, len: u64, stream: &TcpStream, pace: Option<Pace>) -> io::Result<u64> {
    // With a pace, wake at least every second to check it, instead of sleeping in the kernel
    // for the whole write timeout; the write timeout still bounds a stall (no progress at all).
    let stall = stream.write_timeout().ok().flatten();
    let pace = pace.filter(|p| p.min_rate > 0);
    if pace.is_some() {
        let tick = std::time::Duration::from_secs(1);
        stream.set_write_timeout(Some(stall.map_or(tick, |s| s.min(tick))))?;
    }
    let result = send_file_paced(file, offset, len, stream, pace, stall);
    if pace.is_some() {
        let _ = stream.set_write_timeout(stall);
    }
    result
}

fn send_file_paced(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    stream: &TcpStream,
    pace: Option<Pace>,
    stall: Option<std::time::Duration>,
) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(offset).map_err(|_| io::Error::other("file offset too large"))?;
    let mut sent = 0u64;
    let started = std::time::Instant::now();
    let mut progress_at = started;
    while sent < len {
        if let Some(p) = pace {
            let earned = std::time::Duration::from_secs_f64(sent as f64 / p.min_rate as f64);
            if started.elapsed() > p.grace.saturating_add(earned) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client reads too slowly"));
            }
        }
        let chunk = (len - sent).min(1 << 30) as usize;
        // SAFETY: both fds are open for the duration of the call; `off` is a valid pointer.
        let n = unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, chunk) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    if pace.is_some() && !stall.is_some_and(|s| progress_at.elapsed() >= s) =>
                {
                    continue
                }
                _ => return Err(err),
            }
        }
        if n == 0 {
            break;
        }
        sent += n as u64;
        progress_at = std::time::Instant::now();
    }
    Ok(sent)
}

fn full_length(copied: u64, len: u64) -> io::Result<u64> {
    if copied != len {
        // The file shrank under us: the client was promised `len` bytes. Closing is the only
        // honest signal left.
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than its length"));
    }
    Ok(copied)
}

fn write_small(stream: &mut TcpStream, scratch: &mut Vec<u8>, body: &[u8]) -> io::Result<u64> {
    if body.len() <= 64 * 1024 {
        scratch.extend_from_slice(body);
        stream.write_all(scratch)?;
    } else {
        stream.write_all(scratch)?;
        stream.write_all(body)?;
    }
    Ok(body.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(resp: &Response, minor: u8, keep_alive: bool) -> String {
        let mut out = Vec::new();
        encode_head(resp, minor, keep_alive, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn head_has_length_and_connection() {
        let r = Response::detail(404, "Not Found");
        let h = head_of(&r, 1, true);
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\n"), "{h}");
        assert!(h.contains("content-type: application/json\r\n"));
        assert!(h.contains(&format!("content-length: {}\r\n", r.body.len())));
        assert!(!h.contains("connection:"));
        assert!(h.ends_with("\r\n\r\n"));
        assert!(head_of(&r, 1, false).contains("connection: close\r\n"));
        assert!(head_of(&r, 0, true).contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn handler_cannot_set_framing_or_split_the_head() {
        let r = Response::new(200)
            .header("Content-Length", "999")
            .header("Transfer-Encoding", "chunked")
            .header("x-evil", "a\r\nset-cookie: b");
        let h = head_of(&r, 1, true);
        assert!(!h.contains("999"));
        assert!(!h.to_ascii_lowercase().contains("transfer-encoding"));
        assert!(h.contains("x-evil: a  set-cookie: b\r\n"));
        assert!(h.contains("content-length: 0\r\n"));
    }

    #[test]
    fn a_stream_is_chunked_and_ends_with_the_last_chunk() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut resp = Response::new(200).with_body(Body::Stream(Box::new(|w| {
            w.write_all(b"hello, ")?;
            w.write_all(&vec![b'x'; STREAM_CHUNK + 10])?;
            w.write_all(b"end")
        })));
        let head = head_of(&resp, 1, true);
        assert!(head.contains("transfer-encoding: chunked\r\n") && !head.contains("content-length"), "{head}");
        let n = write_response(&mut server, &mut resp, 1, true, false, &mut Vec::new(), None).unwrap();
        assert_eq!(n, 7 + STREAM_CHUNK as u64 + 10 + 3);
        drop(server);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut raw).unwrap();
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        // Decode the chunks.
        let (mut rest, mut body) = (&raw[at..], Vec::new());
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let len = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            rest = &rest[eol + 2..];
            if len == 0 {
                assert_eq!(rest, b"\r\n");
                break;
            }
            body.extend_from_slice(&rest[..len]);
            assert_eq!(&rest[len..len + 2], b"\r\n");
            rest = &rest[len + 2..];
        }
        assert_eq!(body.len() as u64, n);
        assert!(body.starts_with(b"hello, xx") && body.ends_with(b"xend"));
    }

    #[test]
    fn a_failed_stream_has_no_last_chunk_and_http10_streams_end_with_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut resp = Response::new(200)
            .with_body(Body::Stream(Box::new(|w| w.write_all(b"partial").and(Err(io::Error::other("query failed"))))));
        assert!(write_response(&mut server, &mut resp, 1, true, false, &mut Vec::new(), None).is_err());
        drop(server);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut raw).unwrap();
        assert!(!raw.ends_with(b"0\r\n\r\n"), "{:?}", String::from_utf8_lossy(&raw));

        let h = head_of(&Response::new(200).with_body(Body::Stream(Box::new(|_| Ok(())))), 0, true);
        assert!(h.contains("connection: close\r\n") && !h.contains("chunked") && !h.contains("content-length"), "{h}");
    }

    #[test]
    fn not_modified_has_no_length() {
        let h = head_of(&Response::new(304), 1, true);
        assert!(!h.contains("content-length"));
    }
}
