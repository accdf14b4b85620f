//! Responses: what a handler returns, and how it goes onto the wire.
//!
//! A body is bytes in memory or a range of a file, sent with `sendfile(2)` (never loaded whole).
//! Writing never waits on the socket: `start_response` sends what the socket takes now, and what
//! is left (`Outgoing`) is finished by the dispatcher when the socket is writable, under `Pace`
//! (a reader slower than that is cut off). So a client that does not read its response costs a
//! socket, never a worker. Every response carries `Content-Length`, so a client can always tell
//! where one response ends.
//!
//! One exception, for results too big to hold (a database export): `Body::Stream`, a body a
//! handler produces while it is sent. It goes with `Transfer-Encoding: chunked` (HTTP/1.0: until
//! the connection closes), written by the worker itself (the producer needs the worker's state),
//! which waits on the socket only under `Pace`: a slow reader is cut off as it would be by the
//! dispatcher. A stream that fails half-way lacks its final chunk, so it is never mistaken for a
//! whole body.
//!
//! Must never: write a body for `HEAD`, `1xx`, `204` or `304`; write a head without
//! `Content-Length` (streams aside); or let a handler set the framing headers itself
//! (`Content-Length`, `Transfer-Encoding`, `Connection` are the connection layer's).

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

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
pub type StreamFn = Box<dyn FnOnce(&mut dyn io::Write) -> io::Result<()> + Send>;

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
    push_decimal(out, u64::from(resp.status));
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
    crate::util::time::with_http_date_now(|d| out.extend_from_slice(d.as_bytes()));
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
        push_decimal(out, resp.body.len());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, appended without an intermediate `String`.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn is_framing_header(name: &str) -> bool {
    ["content-length", "transfer-encoding", "connection", "date"].iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// How fast a client must take a response (and send a large request body): once `grace` has
/// passed, at least `min_rate` bytes per second on average, and never a silence longer than
/// `stall`; slower is cut off, so a slow reader costs a socket for a bounded time and never a
/// worker. Bytes the kernel buffered count as read, so the bound is `grace + sent / min_rate`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub grace: Duration,
    pub min_rate: u64,
    pub stall: Duration,
}

impl Pace {
    /// When a transfer that started at `started`, has moved `sent` bytes and last made progress
    /// at `progress_at` must be cut off.
    pub fn deadline(&self, started: Instant, sent: u64, progress_at: Instant) -> Instant {
        let stall = progress_at + self.stall;
        if self.min_rate == 0 {
            return stall;
        }
        let earned = Duration::from_secs_f64(sent as f64 / self.min_rate as f64);
        stall.min(started + self.grace.saturating_add(earned))
    }
}

/// What is left of a body to write.
enum Rest {
    None,
    Bytes(Vec<u8>, usize),
    Static(&'static [u8], usize),
    File { file: std::fs::File, offset: u64, left: u64 },
}

/// A response on its way out: written without ever waiting on the socket. What the socket does
/// not take at once stays here, and the dispatcher writes the rest when `poll` says the socket is
/// writable (see `server.rs`), under `Pace`.
pub struct Outgoing {
    head: Vec<u8>,
    head_pos: usize,
    rest: Rest,
    started: Instant,
    progress_at: Instant,
    sent: u64,
    pace: Pace,
    /// The socket's send queue ([`unacked`]) when it was last found full, or when the reader was
    /// last seen to take from it: a queue that shrank since is a reader at work, even while the
    /// socket is not yet writable (the kernel waits for a third of its buffer to drain).
    queued: Option<u64>,
}

/// The result of starting a response.
pub enum Written {
    /// All of it is on its way; the number of body bytes.
    Done(u64),
    /// The socket is full: the rest, to be finished by the dispatcher; the body's length.
    Pending(Outgoing, u64),
}

/// `send(MSG_DONTWAIT)` of a head and a body slice: what the socket takes now.
fn send_now(stream: &TcpStream, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(stream).send_vectored_with_flags(parts, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

impl Outgoing {
    /// When the dispatcher gives up on this client (too slow, or silent too long).
    pub fn deadline(&self) -> Instant {
        self.pace.deadline(self.started, self.sent, self.progress_at)
    }

    /// At the deadline: whether the reader has taken bytes from the socket since it was last
    /// found full (or last looked at here). If so, that is progress: the deadline moves on. A
    /// socket with a send buffer of megabytes, read steadily but slowly, takes longer than the
    /// pace's `stall` to drain the third of it after which `poll` calls it writable.
    pub fn reader_progressed(&mut self, stream: &TcpStream) -> bool {
        let now = unacked(stream);
        let moved = matches!((self.queued, now), (Some(before), Some(after)) if after < before);
        self.queued = now;
        if moved {
            self.progress_at = Instant::now();
        }
        moved
    }

    /// The socket took all it could: remember its send queue for [`reader_progressed`].
    fn full(&mut self, stream: &TcpStream) -> io::Result<bool> {
        self.queued = unacked(stream);
        Ok(false)
    }

    /// Write what the socket takes now; `Ok(true)` once everything is written. A file part
    /// needs the socket in non-blocking mode (`sendfile` has no flags argument).
    pub fn write_some(&mut self, stream: &TcpStream) -> io::Result<bool> {
        loop {
            let head = &self.head[self.head_pos..];
            let body: &[u8] = match &self.rest {
                Rest::Bytes(b, pos) => &b[*pos..],
                Rest::Static(b, pos) => &b[*pos..],
                _ => &[],
            };
            let n = if !head.is_empty() || !body.is_empty() {
                let (hl, bl) = (head.len(), body.len());
                let n = match send_now(stream, &[IoSlice::new(head), IoSlice::new(body)]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.full(stream),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let to_head = n.min(hl);
                self.head_pos += to_head;
                if n > to_head {
                    match &mut self.rest {
                        Rest::Bytes(_, pos) | Rest::Static(_, pos) => *pos += n - to_head,
                        _ => unreachable!("body bytes were only sent from a bytes body"),
                    }
                }
                if self.head_pos == self.head.len() && n - to_head == bl && bl > 0 {
                    self.rest = Rest::None;
                }
                n as u64
            } else if let Rest::File { file, offset, left } = &mut self.rest {
                if *left == 0 {
                    self.rest = Rest::None;
                    continue;
                }
                let chunk = NonZeroUsize::new((*left).min(1 << 30) as usize).expect("left > 0");
                let off = usize::try_from(*offset).map_err(|_| io::Error::other("file offset too large"))?;
                let n = match socket2::SockRef::from(stream).sendfile(&*file, off, Some(chunk)) {
                    Ok(0) => {
                        // The file shrank under us: the client was promised more bytes. Closing
                        // is the only honest signal left.
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than its length"));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.full(stream),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                *offset += n as u64;
                *left -= n as u64;
                n as u64
            } else {
                return Ok(true);
            };
            self.sent += n;
            self.progress_at = Instant::now();
        }
    }
}

/// Start writing a response: the head (in `scratch`) and as much of the body as the socket
/// takes now, never waiting. The socket must be in non-blocking mode when the body is a file.
pub fn start_response(
    stream: &TcpStream,
    resp: &mut Response,
    minor_version: u8,
    keep_alive: bool,
    head_only: bool,
    scratch: &mut Vec<u8>,
    pace: Pace,
) -> io::Result<Written> {
    scratch.clear();
    encode_head(resp, minor_version, keep_alive, scratch);
    let no_body = head_only || resp.status < 200 || resp.status == 204 || resp.status == 304;
    let body = if no_body { Body::Empty } else { std::mem::replace(&mut resp.body, Body::Empty) };
    if let Body::Stream(produce) = body {
        return write_stream(stream, scratch, produce, minor_version != 0, pace).map(Written::Done);
    }
    let len = body.len();
    // The fast path: head and an in-memory body in one `send`, no allocation.
    let bytes: &[u8] = match &body {
        Body::Bytes(b) => b,
        Body::Static(b) => b,
        _ => &[],
    };
    let mut n = 0;
    loop {
        match send_now(stream, &[IoSlice::new(scratch), IoSlice::new(bytes)]) {
            Ok(k) => n = k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        break;
    }
    let all_bytes = scratch.len() + bytes.len();
    if n == all_bytes && !matches!(body, Body::File { .. }) {
        return Ok(Written::Done(len));
    }
    let now = Instant::now();
    let head_pos = n.min(scratch.len());
    let body_done = n - head_pos;
    let rest = match body {
        Body::Empty => Rest::None,
        Body::Bytes(b) => Rest::Bytes(b, body_done),
        Body::Static(b) => Rest::Static(b, body_done),
        Body::File { file, offset, len } => Rest::File { file, offset, left: len },
        Body::Stream(_) => unreachable!("streams are written above"),
    };
    let mut out = Outgoing {
        head: scratch[head_pos..].to_vec(),
        head_pos: 0,
        rest,
        started: now,
        progress_at: now,
        sent: n as u64,
        pace,
        queued: unacked(stream),
    };
    if out.write_some(stream)? {
        return Ok(Written::Done(len));
    }
    Ok(Written::Pending(out, len))
}

/// Write a streamed body on the worker: the head, then the producer's output in chunks, then the
/// final chunk (HTTP/1.1) or a write shutdown (HTTP/1.0, where the end of the connection ends the
/// body). Returns the body's length (payload bytes, without the chunk framing).
fn write_stream(stream: &TcpStream, head: &[u8], produce: StreamFn, chunked: bool, pace: Pace) -> io::Result<u64> {
    let started = Instant::now();
    let mut sink = StreamSink::new(stream, chunked, pace);
    sink.send_all(head)?;
    {
        let mut buffered = io::BufWriter::with_capacity(STREAM_CHUNK, &mut sink);
        // A panic in the producer must not kill the worker: it fails the response like an error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(&mut buffered)))
            .map_err(|_| io::Error::other("the stream producer panicked"))??;
        io::Write::flush(&mut buffered)?;
    }
    if chunked {
        sink.send_all(b"0\r\n\r\n")?;
    } else {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    crate::debug!("streamed {} bytes in {:?}", sink.sent, started.elapsed());
    Ok(sink.sent)
}

/// The socket side of a streamed body: one chunk per `write`, waiting for the (non-blocking)
/// socket with `poll` under the pace. Only the time spent waiting for the socket counts against
/// the pace (a producer that is slow to compute, a long database query, is not the reader's
/// fault): `Pace::deadline` on a clock that runs only while we wait. Progress is bytes the
/// socket took or bytes the reader took from it (the send queue shrank, [`unacked`]): the kernel
/// says a full socket is writable only once a third of its buffer has drained, which a steady
/// reader of a 4 MiB buffer at 40 KiB/s takes longer than `stall` to do, so waiting for that
/// alone cut off readers that kept the pace. Waits are short ([`PROGRESS_CHECK`] at most) and
/// each ends by looking for progress.
struct StreamSink<'s> {
    stream: &'s TcpStream,
    chunked: bool,
    sent: u64,
    /// Time spent waiting for the socket so far (the stream's clock).
    blocked: Duration,
    /// `blocked` when the reader last made progress.
    progress: Duration,
    /// The send queue when last looked at while waiting.
    queued: Option<u64>,
    /// Where the clock starts (any fixed instant: `Pace::deadline` wants instants).
    origin: Instant,
    pace: Pace,
}

/// Longest single wait of a stream for its socket before it looks for progress again.
const PROGRESS_CHECK: Duration = Duration::from_millis(500);

/// Bytes written to a TCP socket that its peer has not acknowledged yet (`SIOCOUTQ`, what
/// `ss` shows as Send-Q). It shrinks as the reader takes data, whether or not the socket has room
/// for more. `None` where it cannot be known.
pub fn unacked(stream: &TcpStream) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int to the pointer we pass.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        (rc == 0 && n >= 0).then_some(n as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

impl StreamSink<'_> {
    fn new(stream: &TcpStream, chunked: bool, pace: Pace) -> StreamSink<'_> {
        StreamSink {
            stream,
            chunked,
            sent: 0,
            blocked: Duration::ZERO,
            progress: Duration::ZERO,
            queued: None,
            origin: Instant::now(),
            pace,
        }
    }

    fn send_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        while !bytes.is_empty() {
            match send_now(self.stream, &[IoSlice::new(bytes)]) {
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.progress = self.blocked;
                    self.queued = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = self.origin + self.blocked;
                    let stalled = self.origin + self.progress + self.pace.stall;
                    let deadline = self.pace.deadline(self.origin, self.sent, self.origin + self.progress);
                    if now >= deadline {
                        let why =
                            if deadline >= stalled { "client stopped reading" } else { "client reads too slowly" };
                        return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                    }
                    if self.queued.is_none() {
                        self.queued = unacked(self.stream);
                    }
                    let wait = (deadline - now).min(PROGRESS_CHECK);
                    let t = Instant::now();
                    let mut fd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut fd, 1, ms) };
                    self.blocked += t.elapsed();
                    // The reader took bytes though the socket may not say it has room yet.
                    let queued = unacked(self.stream);
                    if let (Some(before), Some(after)) = (self.queued, queued) {
                        if after < before {
                            self.progress = self.blocked;
                        }
                    }
                    self.queued = queued;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl io::Write for StreamSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.chunked {
            let mut frame = Vec::with_capacity(buf.len() + 16);
            frame.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
            frame.extend_from_slice(buf);
            frame.extend_from_slice(b"\r\n");
            self.send_all(&frame)?;
        } else {
            self.send_all(buf)?;
        }
        self.sent += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Write a small message (a rejection, a `100 Continue`, a `101` head) to a socket we may not
/// wait on: whatever it takes now. True when all of it went.
pub fn send_small(stream: &TcpStream, bytes: &[u8]) -> bool {
    matches!(send_now(stream, &[IoSlice::new(bytes)]), Ok(n) if n == bytes.len())
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
    fn decimals_are_written_like_to_string() {
        for n in [0u64, 7, 10, 99, 100, 200, 1_000_007, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
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

    fn pace() -> Pace {
        Pace { grace: Duration::from_secs(5), min_rate: 1024, stall: Duration::from_secs(5) }
    }

    /// A connected pair: (client, server side in non-blocking mode, as the layer holds it).
    fn pair() -> (TcpStream, TcpStream) {
        let (server, client) = crate::util::tcp_pair();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    /// Decode a chunked body; `None` when the final chunk is missing.
    fn dechunk(raw: &[u8]) -> (String, Option<Vec<u8>>) {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(raw[..at].to_vec()).unwrap();
        let (mut rest, mut body) = (&raw[at..], Vec::new());
        loop {
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return (head, None) };
            let len = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
            rest = &rest[eol + 2..];
            if len == 0 {
                assert_eq!(rest, b"\r\n");
                return (head, Some(body));
            }
            if rest.len() < len + 2 {
                return (head, None);
            }
            body.extend_from_slice(&rest[..len]);
            assert_eq!(&rest[len..len + 2], b"\r\n");
            rest = &rest[len + 2..];
        }
    }

    #[test]
    fn a_stream_is_chunked_and_ends_with_the_last_chunk() {
        let (mut client, server) = pair();
        // Bigger than the socket buffers, so the writer must wait for the reader.
        let big = vec![b'x'; 8 << 20];
        let reader = std::thread::spawn(move || {
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut client, &mut raw).unwrap();
            raw
        });
        let mut resp = Response::new(200).with_body(Body::Stream(Box::new(move |w| {
            w.write_all(b"hello, ")?;
            w.write_all(&big)?;
            w.write_all(b"end")
        })));
        let head = head_of(&resp, 1, true);
        assert!(head.contains("transfer-encoding: chunked\r\n") && !head.contains("content-length"), "{head}");
        let n = match start_response(&server, &mut resp, 1, true, false, &mut Vec::new(), pace()).unwrap() {
            Written::Done(n) => n,
            Written::Pending(..) => panic!("a stream is written whole by the worker"),
        };
        assert_eq!(n, 7 + (8 << 20) + 3);
        drop(server);
        let (head, body) = dechunk(&reader.join().unwrap());
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        let body = body.expect("the final chunk");
        assert_eq!(body.len() as u64, n);
        assert!(body.starts_with(b"hello, xx") && body.ends_with(b"xend"));
    }

    #[test]
    fn a_failed_stream_has_no_last_chunk_and_http10_streams_end_with_the_connection() {
        use std::io::Write as _;
        let (mut client, server) = pair();
        let mut resp = Response::new(200)
            .with_body(Body::Stream(Box::new(|w| w.write_all(b"partial").and(Err(io::Error::other("query failed"))))));
        assert!(start_response(&server, &mut resp, 1, true, false, &mut Vec::new(), pace()).is_err());
        drop(server);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut raw).unwrap();
        assert_eq!(dechunk(&raw).1, None, "{:?}", String::from_utf8_lossy(&raw));

        let mut panicking = Response::new(200).with_body(Body::Stream(Box::new(|_| panic!("producer bug"))));
        let (_c, server) = pair();
        assert!(start_response(&server, &mut panicking, 1, true, false, &mut Vec::new(), pace()).is_err());

        let h = head_of(&Response::new(200).with_body(Body::Stream(Box::new(|_| Ok(())))), 0, true);
        assert!(h.contains("connection: close\r\n") && !h.contains("chunked") && !h.contains("content-length"), "{h}");
        let (mut client, server) = pair();
        let mut resp = Response::new(200).with_body(Body::Stream(Box::new(|w| w.write_all(b"old client"))));
        assert!(matches!(
            start_response(&server, &mut resp, 0, true, false, &mut Vec::new(), pace()),
            Ok(Written::Done(10))
        ));
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut raw).unwrap();
        assert!(raw.ends_with(b"\r\n\r\nold client"));
        let _ = client.flush();
    }

    #[test]
    fn a_reader_that_stops_reading_is_cut_off() {
        let (_client, server) = pair();
        let quick = Pace { grace: Duration::from_millis(200), min_rate: 1024, stall: Duration::from_millis(300) };
        let mut resp = Response::new(200).with_body(Body::Stream(Box::new(|w| {
            let block = vec![b'y'; 1 << 20];
            loop {
                w.write_all(&block)?;
            }
        })));
        let t = Instant::now();
        let err = match start_response(&server, &mut resp, 1, true, false, &mut Vec::new(), quick) {
            Err(e) => e,
            Ok(_) => panic!("an unread stream cannot finish"),
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    /// A connected pair whose server side (non-blocking) has a big send buffer and whose client
    /// side a small receive buffer: once full, the server's socket is writable again only after
    /// a third of its send buffer has drained, as a socket whose buffer the kernel grew to
    /// megabytes is for a slow reader over a real network.
    fn slow_socket_pair() -> (TcpStream, TcpStream) {
        use socket2::{Domain, Socket, Type};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        sock.connect(&listener.local_addr().unwrap().into()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(384 * 1024).unwrap();
        server.set_nonblocking(true).unwrap();
        (sock.into(), server)
    }

    #[test]
    fn a_reader_draining_a_full_socket_is_progress_before_the_socket_is_writable() {
        // The dispatcher's side of the same problem (a download, `Outgoing`): at the deadline it
        // asks `reader_progressed` before it closes a connection whose socket never said it was
        // writable again.
        let (mut client, server) = slow_socket_pair();
        let pace = Pace { grace: Duration::from_secs(1), min_rate: 0, stall: Duration::from_secs(30) };
        let mut resp = Response::new(200).with_body(Body::Bytes(vec![b'z'; 4 << 20]));
        let Ok(Written::Pending(mut out, _)) =
            start_response(&server, &mut resp, 1, true, false, &mut Vec::new(), pace)
        else {
            panic!("4 MiB do not fit the socket")
        };
        assert!(!out.reader_progressed(&server), "nothing was read");
        // The reader takes 64 KiB: far less than the third of the send buffer after which the
        // socket is writable again...
        let mut buf = vec![0u8; 64 * 1024];
        std::io::Read::read_exact(&mut client, &mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut fd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&server), events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut fd, 1, 0) }, 0, "the socket is not writable yet");
        // ...but it is reading: progress, and the deadline moves on.
        let before = out.deadline();
        assert!(out.reader_progressed(&server));
        assert!(out.deadline() > before);
        assert!(!out.reader_progressed(&server), "no more reading, no more progress");
    }

    #[test]
    fn a_steady_reader_of_a_full_socket_is_not_cut_off() {
        // A big send buffer and a small receive buffer: once full, the socket is said to be
        // writable only after a third of the send buffer has drained, which at this reader's pace
        // (about 200 KiB/s, far above `min_rate`) takes longer than `stall`. Bytes the reader
        // takes are progress all the same.
        let (mut client, server) = slow_socket_pair();
        let reader = std::thread::spawn(move || {
            let (mut raw, mut buf) = (Vec::new(), vec![0u8; 8 * 1024]);
            loop {
                match std::io::Read::read(&mut client, &mut buf) {
                    Ok(0) | Err(_) => return raw,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        let quick = Pace { grace: Duration::from_millis(300), min_rate: 16 * 1024, stall: Duration::from_millis(400) };
        let total = 1 << 20;
        let mut resp = Response::new(200).with_body(Body::Stream(Box::new(move |w| {
            for _ in 0..total / STREAM_CHUNK {
                w.write_all(&[b'z'; STREAM_CHUNK])?;
            }
            Ok(())
        })));
        let t = Instant::now();
        let sent = start_response(&server, &mut resp, 1, true, false, &mut Vec::new(), quick);
        let took = t.elapsed();
        drop(server);
        let (_, body) = dechunk(&reader.join().unwrap());
        match sent {
            Ok(Written::Done(n)) => assert_eq!(n, total as u64),
            Ok(Written::Pending(..)) => panic!("a stream is written whole by the worker"),
            Err(e) => panic!("a steady reader was cut off after {took:?}: {e}"),
        }
        assert_eq!(body.map(|b| b.len()), Some(total));
        assert!(took > quick.stall * 4, "the reader was slow enough to matter: {took:?}");
    }

    #[test]
    fn not_modified_has_no_length() {
        let h = head_of(&Response::new(304), 1, true);
        assert!(!h.contains("content-length"));
    }
}
