//! Request bodies: the chunked decoder (plain state machine over bytes) and `BodyReader`,
//! the `Read` a handler uses to pull a request body off the connection.
//!
//! `ChunkedDecoder` never buffers data: it hands back slices of the input it was given, so a
//! multi-gigabyte chunked upload streams through in constant memory. `BodyReader` enforces the
//! route's byte limit while reading (a body that crosses it fails the read with
//! `BodyError::TooLarge`, which the handler answers 413), keeps the body to its `Pace` (waiting
//! in `poll` a second at a time on the non-blocking socket; too slow, silent too long or past
//! its total deadline is `BodyError::Stalled`, 408), and reports a client that reset the
//! connection as `BodyError::Truncated` (the client's doing, not a server error).
//!
//! Must never: read past the end of the body (the next pipelined request lives there), accept a
//! chunk size or chunk extension without bound, or send `100 Continue` before the handler
//! actually asks for the body.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::response::Pace;

/// Why reading a body failed. Travels inside `io::Error` (kind `Other`) so that any `Read`
/// consumer passes it through; `BodyError::of` gets it back out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body is larger than the route allows: 413.
    TooLarge { limit: u64 },
    /// The client sent nothing for longer than the body timeout: 408.
    Stalled,
    /// Bad chunked framing: 400.
    BadChunk(&'static str),
    /// The connection closed before the body ended (the client went away).
    Truncated,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(f, "Request body too large (limit {limit} bytes)")
            }
            BodyError::Stalled => f.write_str("Request body timeout"),
            BodyError::BadChunk(why) => write!(f, "Malformed chunked body: {why}"),
            BodyError::Truncated => f.write_str("Request body ended early"),
        }
    }
}

impl std::error::Error for BodyError {}

impl BodyError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::Stalled => 408,
            BodyError::BadChunk(_) | BodyError::Truncated => 400,
        }
    }

    /// Recover a `BodyError` carried by an `io::Error`, if it is one.
    pub fn of(err: &io::Error) -> Option<&BodyError> {
        err.get_ref().and_then(|e| e.downcast_ref::<BodyError>())
    }

    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

const MAX_SIZE_LINE: usize = 1024;
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: an optional `;ext`, up to the line end.
    Ext {
        value: u64,
    },
    /// Saw `\r` after a size line; expect `\n`.
    SizeLf {
        value: u64,
    },
    /// Inside chunk data.
    Data {
        left: u64,
    },
    /// After chunk data: expect `\r`.
    DataCr,
    /// After chunk data `\r`: expect `\n`.
    DataLf,
    /// After the last (0) chunk: trailer lines; `at_line_start` tells an empty line apart.
    Trailer {
        at_line_start: bool,
    },
    /// Saw `\r` in the trailer section.
    TrailerLf {
        at_line_start: bool,
    },
    Done,
}

/// Decoder for `Transfer-Encoding: chunked`, fed arbitrary slices.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder { state: State::Size { value: 0, digits: 0 }, line_bytes: 0, trailer_bytes: 0 }
    }

    /// True once the terminating zero chunk and trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume framing from `input` up to and including at most one run of data. Returns how
    /// many bytes of `input` were used and the data run found (possibly empty). Each call uses at
    /// least one byte unless `input` is empty or the body is done.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<(usize, &'a [u8]), BodyError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Data { left } => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data { left } };
                    return Ok((i + n, &input[i..i + n]));
                }
                State::Done => break,
                _ => {}
            }
            i += 1;
            self.state = self.step(b)?;
        }
        Ok((i, &input[i..i]))
    }

    fn step(&mut self, b: u8) -> Result<State, BodyError> {
        Ok(match self.state {
            State::Size { value, digits } => {
                self.line_bytes += 1;
                if let Some(d) = (b as char).to_digit(16) {
                    if digits >= 15 {
                        return Err(BodyError::BadChunk("chunk size too large"));
                    }
                    State::Size { value: value * 16 + u64::from(d), digits: digits + 1 }
                } else if digits == 0 {
                    return Err(BodyError::BadChunk("expected a hex chunk size"));
                } else {
                    match b {
                        b'\r' => State::SizeLf { value },
                        b'\n' => self.end_size_line(value),
                        b';' | b' ' | b'\t' => State::Ext { value },
                        _ => return Err(BodyError::BadChunk("invalid chunk size")),
                    }
                }
            }
            State::Ext { value } => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_SIZE_LINE {
                    return Err(BodyError::BadChunk("chunk extension too long"));
                }
                match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => self.end_size_line(value),
                    _ => State::Ext { value },
                }
            }
            State::SizeLf { value } => {
                if b != b'\n' {
                    return Err(BodyError::BadChunk("expected LF after chunk size"));
                }
                self.end_size_line(value)
            }
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' => State::Size { value: 0, digits: 0 },
                _ => return Err(BodyError::BadChunk("expected CRLF after chunk data")),
            },
            State::DataLf => {
                if b != b'\n' {
                    return Err(BodyError::BadChunk("expected CRLF after chunk data"));
                }
                State::Size { value: 0, digits: 0 }
            }
            State::Trailer { at_line_start } => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(BodyError::BadChunk("trailers too large"));
                }
                match b {
                    b'\r' => State::TrailerLf { at_line_start },
                    b'\n' if at_line_start => State::Done,
                    b'\n' => State::Trailer { at_line_start: true },
                    _ => State::Trailer { at_line_start: false },
                }
            }
            State::TrailerLf { at_line_start } => {
                if b != b'\n' {
                    return Err(BodyError::BadChunk("expected LF in trailers"));
                }
                if at_line_start {
                    State::Done
                } else {
                    State::Trailer { at_line_start: true }
                }
            }
            State::Data { .. } | State::Done => unreachable!("handled in feed"),
        })
    }

    fn end_size_line(&mut self, value: u64) -> State {
        self.line_bytes = 0;
        if value == 0 {
            State::Trailer { at_line_start: true }
        } else {
            State::Data { left: value }
        }
    }
}

/// The connection a body is read from: the socket plus bytes already read past the head.
/// Owned by the worker serving the connection; the handler borrows it through `BodyReader`.
/// The socket is in non-blocking mode: reads wait in `poll`, so every wait checks the pace.
pub struct Wire<'c> {
    pub stream: &'c mut TcpStream,
    /// Bytes read from the socket but not yet consumed, starting at `*pos`.
    pub buf: &'c mut Vec<u8>,
    pub pos: &'c mut usize,
}

/// Whether an I/O error means the client went away (reset, aborted): a `Truncated` body, not a
/// server fault.
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// Wait until `fd` is ready for `events` (`libc::POLLIN`/`POLLOUT`), at most `timeout`.
/// True when it is (or has an error or hang-up to report).
pub fn wait_ready(fd: std::os::fd::RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    let ms = timeout.as_millis().clamp(1, 60_000) as libc::c_int;
    // SAFETY: one valid, initialised pollfd that outlives the call; poll only writes `revents`.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

/// `Read` over one request body. Created by the connection layer; handed to handlers inside
/// `Request`. Reading past the body's end returns 0.
pub struct BodyReader<'c> {
    wire: Wire<'c>,
    framing: Framing,
    /// Bytes still expected for `Content-Length` framing.
    left: u64,
    chunked: ChunkedDecoder,
    /// Largest body the route accepts.
    limit: u64,
    /// Body bytes handed out so far.
    read: u64,
    /// `Expect: 100-continue` was sent and we have not answered it yet.
    pending_continue: bool,
    /// The whole body has been consumed from the wire.
    done: bool,
    /// Pace: once `pace.grace` has passed since `started`, the body must have averaged at least
    /// `pace.min_rate` bytes per second, and no silence may last `pace.stall`, or reads fail
    /// with `Stalled`. See `BodyReader::pace`.
    started: Instant,
    progress_at: Instant,
    pace: Pace,
    /// When the last read returned to the handler (at first: when the reader was made).
    /// Time from then to the next read is the handler's own (a database query before it reads
    /// its body, writing what it read to disk): it does not count against the client, so every
    /// clock above is moved on by it (`credit_time_away`). Otherwise a handler that waited 30 s on
    /// the database would find a body the client sent at once "too slow" and answer 408.
    left_at: Instant,
    /// A total deadline: the whole body by then (its declared length at the minimum rate, or
    /// the route's limit at that rate for a chunked body); the drain's second.
    deadline: Option<Instant>,
    /// A read failed (limit, timeout, bad framing): the rest of the body is in an unknown
    /// state and the connection must not be reused.
    failed: bool,
}

pub use super::parse::Framing;

impl<'c> BodyReader<'c> {
    /// `expect_continue`: the client waits for `100 Continue` and nobody has sent it yet.
    pub fn new(wire: Wire<'c>, framing: Framing, limit: u64, expect_continue: bool) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            wire,
            framing,
            left,
            chunked: ChunkedDecoder::new(),
            limit,
            read: 0,
            pending_continue: expect_continue && framing != Framing::None,
            done: framing == Framing::None,
            failed: false,
            started: Instant::now(),
            progress_at: Instant::now(),
            left_at: Instant::now(),
            pace: Pace { grace: Duration::MAX, min_rate: 0, stall: Duration::from_secs(30) },
            deadline: None,
        }
    }

    /// Require the body to keep `pace`, so a client dribbling a body cannot hold a worker for
    /// long: it may take `grace` plus one second per `min_rate` bytes read, never fall silent
    /// for `stall`, and must be complete by the total deadline (declared length, or the route
    /// limit for a chunked body, at `min_rate`, plus `grace`); then it gets a 408.
    pub fn pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        if pace.min_rate > 0 {
            let total = match self.framing {
                Framing::Length(n) => n,
                _ => self.limit,
            };
            let secs = Duration::from_secs_f64(total as f64 / pace.min_rate as f64);
            self.deadline = self.started.checked_add(pace.grace.saturating_add(secs));
        }
        self
    }

    fn check_pace(&self) -> io::Result<()> {
        let now = Instant::now();
        let late = self.deadline.is_some_and(|d| now >= d)
            || now >= self.pace.deadline(self.started, self.read, self.progress_at);
        if late {
            return Err(BodyError::Stalled.into_io());
        }
        Ok(())
    }

    /// Move every clock of the pace on by the time since the handler last had a read return:
    /// that time was the server's, not the client's (see `left_at`).
    fn credit_time_away(&mut self) {
        let away = self.left_at.elapsed();
        let later = |t: Instant| t.checked_add(away).unwrap_or(t);
        self.started = later(self.started);
        self.progress_at = later(self.progress_at);
        self.deadline = self.deadline.map(later);
    }

    /// One read from the socket, waiting (in `poll`, a second at a time, checking the pace)
    /// while nothing has arrived.
    fn read_socket(&mut self, into: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.wire.stream.read(into) {
                Ok(n) => {
                    self.progress_at = Instant::now();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    self.check_pace()?;
                    wait_ready(self.wire.stream.as_raw_fd(), libc::POLLIN, Duration::from_secs(1));
                }
                Err(e) if is_disconnect(&e) => return Err(BodyError::Truncated.into_io()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Make sure unconsumed bytes are available, reading from the socket when the buffer is
    /// drained. Returns how many are available (0 at end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        if *self.wire.pos >= self.wire.buf.len() {
            self.wire.buf.clear();
            *self.wire.pos = 0;
            if self.wire.buf.capacity() < 64 * 1024 {
                self.wire.buf.reserve(64 * 1024);
            }
            let cap = self.wire.buf.capacity();
            let mut buf = std::mem::take(self.wire.buf);
            buf.resize(cap, 0);
            let result = self.read_socket(&mut buf[..]);
            buf.truncate(*result.as_ref().unwrap_or(&0));
            *self.wire.buf = buf;
            result?;
        }
        Ok(self.wire.buf.len() - *self.wire.pos)
    }

    /// True when the whole body has been read (or there was none).
    pub fn is_done(&self) -> bool {
        self.done && !self.failed
    }

    /// Read the whole body into memory (for JSON and form bodies; the limit still applies).
    pub fn read_all(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        self.read_to_end(&mut out).map_err(|e| match BodyError::of(&e) {
            Some(b) => b.clone(),
            None => BodyError::Truncated,
        })?;
        Ok(out)
    }

    /// Read and throw away the rest of the body, up to `max` bytes, so the connection can
    /// serve its next request. Returns true when the body ended within that budget.
    pub fn drain(&mut self, max: u64) -> bool {
        if self.failed || self.pending_continue {
            // After a failure the framing is lost; with a pending `100 Continue` the client has
            // not sent the body and may or may not send it. Either way: close, don't guess.
            return false;
        }
        self.limit = self.read.saturating_add(max);
        // At most a second for what is left: a client dribbling the body of a request we have
        // already answered must not keep the worker. (The time the handler took is credited
        // first, so that it does not stretch that second.)
        self.credit_time_away();
        self.left_at = Instant::now();
        self.deadline = Some(self.left_at + Duration::from_secs(1));
        let mut scratch = [0u8; 8192];
        self.drain_loop(&mut scratch)
    }

    fn drain_loop(&mut self, scratch: &mut [u8]) -> bool {
        while !self.done {
            match self.read(scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        self.is_done()
    }

    fn send_continue(&mut self) -> io::Result<()> {
        if self.pending_continue {
            self.pending_continue = false;
            if !super::response::send_small(self.wire.stream, b"HTTP/1.1 100 Continue\r\n\r\n") {
                return Err(BodyError::Truncated.into_io());
            }
        }
        Ok(())
    }

    fn account(&mut self, n: usize) -> io::Result<()> {
        self.read += n as u64;
        if self.read > self.limit {
            self.failed = true;
            return Err(BodyError::TooLarge { limit: self.limit }.into_io());
        }
        Ok(())
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("request body already failed"));
        }
        if self.done || out.is_empty() {
            return Ok(0);
        }
        self.credit_time_away();
        let result = self.read_inner(out);
        self.left_at = Instant::now();
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

impl BodyReader<'_> {
    fn read_inner(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.check_pace()?;
        if let Framing::Length(total) = self.framing {
            if total > self.limit {
                return Err(BodyError::TooLarge { limit: self.limit }.into_io());
            }
        }
        self.send_continue()?;
        // A large read of a `Content-Length` body with nothing buffered goes straight from the
        // socket into the caller's buffer: no copy through ours (uploads stream this way).
        if matches!(self.framing, Framing::Length(_)) && *self.wire.pos >= self.wire.buf.len() && out.len() >= 16 * 1024
        {
            let want = out.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = self.read_socket(&mut out[..want])?;
            if n == 0 {
                return Err(BodyError::Truncated.into_io());
            }
            self.left -= n as u64;
            if self.left == 0 {
                self.done = true;
            }
            self.account(n)?;
            return Ok(n);
        }
        loop {
            if self.fill()? == 0 {
                return Err(BodyError::Truncated.into_io());
            }
            let avail = &self.wire.buf[*self.wire.pos..];
            match self.framing {
                Framing::None => unreachable!("done is set for bodiless requests"),
                Framing::Length(_) => {
                    let n = avail.len().min(out.len()).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    out[..n].copy_from_slice(&avail[..n]);
                    *self.wire.pos += n;
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.done = true;
                    }
                    self.account(n)?;
                    return Ok(n);
                }
                Framing::Chunked => {
                    // Feed at most as many bytes as `out` can take, so data never has to be
                    // held back between calls.
                    let window = &avail[..avail.len().min(out.len().max(1))];
                    let (used, data) = self.chunked.feed(window).map_err(BodyError::into_io)?;
                    let n = data.len();
                    out[..n].copy_from_slice(data);
                    *self.wire.pos += used;
                    if self.chunked.is_done() {
                        self.done = true;
                    }
                    if n > 0 || self.done {
                        self.account(n)?;
                        return Ok(n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode a whole chunked body fed in the given piece sizes (cycled).
    fn decode(body: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, usize), BodyError> {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < body.len() && !dec.is_done() {
            let end = (pos + pieces[k % pieces.len()]).min(body.len());
            k += 1;
            let mut slice = &body[pos..end];
            while !slice.is_empty() && !dec.is_done() {
                let (used, data) = dec.feed(slice)?;
                assert!(used > 0 || dec.is_done());
                out.extend_from_slice(data);
                slice = &slice[used..];
                pos += used;
            }
        }
        assert!(dec.is_done(), "decoder did not finish");
        Ok((out, pos))
    }

    fn encode(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        out
    }

    #[test]
    fn split_at_every_offset() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut body = encode(&data, 37);
        body.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let end = body.len() - b"GET /next HTTP/1.1\r\n".len();
        for cut in 0..=end {
            let mut dec = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut used_total = 0;
            for part in [&body[..cut], &body[cut..]] {
                let mut slice = part;
                while !slice.is_empty() && !dec.is_done() {
                    let (used, d) = dec.feed(slice).unwrap();
                    out.extend_from_slice(d);
                    slice = &slice[used..];
                    used_total += used;
                }
            }
            assert!(dec.is_done(), "cut {cut}");
            assert_eq!(out, data, "cut {cut}");
            assert_eq!(used_total, end, "decoder must stop at the end of the body (cut {cut})");
        }
    }

    #[test]
    fn byte_by_byte_and_odd_pieces() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i ^ (i >> 3)) as u8).collect();
        for chunk in [1, 2, 13, 4096, 5000] {
            let body = encode(&data, chunk);
            for pieces in [&[1usize][..], &[3, 1, 7], &[64, 1, 1, 1000]] {
                let (out, used) = decode(&body, pieces).unwrap();
                assert_eq!(out, data);
                assert_eq!(used, body.len());
            }
        }
    }

    #[test]
    fn bare_lf_and_empty_body() {
        let (out, _) = decode(b"3\nabc\n0\n\n", &[100]).unwrap();
        assert_eq!(out, b"abc");
        let (out, _) = decode(b"0\r\n\r\n", &[1]).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn bad_framing() {
        for bad in [b"x\r\n".as_slice(), b"3\r\nabcX", b"3\rX", b"1234567890abcdef0\r\n", b"3\r\nabc\r\n0\r\nX: y\rZ"] {
            let mut dec = ChunkedDecoder::new();
            let mut slice = bad;
            let mut failed = false;
            while !slice.is_empty() {
                match dec.feed(slice) {
                    Ok((used, _)) => slice = &slice[used..],
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "{bad:?} should fail");
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; 2000], b"\r\n"].concat();
        let mut dec = ChunkedDecoder::new();
        assert!(dec.feed(&long_ext).is_err());
    }
}
