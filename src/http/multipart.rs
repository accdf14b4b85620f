//! A streaming, byte-exact `multipart/form-data` parser (RFC 7578 over RFC 2046).
//!
//! Why it exists: the archived `multipart` crate (RUSTSEC-2023-0050) changed uploaded bytes when a
//! CRLF straddled the end of a read (upstream issue #139). An upload server must store exactly what
//! the client sent, whatever the size and however its writes were split. This module is the
//! replacement: a sans-IO push [`Parser`] plus a small driver over any reader, [`parse_reader`].
//!
//! What it must never do:
//! - **change a byte**: concatenated, the [`Event::Data`] slices of a part are exactly the bytes
//!   between the blank line that ends the part's head and the CRLF of the next delimiter;
//! - **buffer a whole part**: data is handed on as soon as it is known not to belong to a
//!   delimiter; between two feeds the parser holds back at most `boundary.len() + 3` bytes (a
//!   proper prefix of `CRLF--boundary`), and its one buffer never grows past
//!   `max(Limits::max_header_bytes, boundary.len() + 4)` bytes — inputs are processed in place;
//! - **read past the closing boundary**: once `--boundary--` is seen, [`Parser::feed`] returns
//!   `Ok(true)` and ignores everything after it (the epilogue), and [`parse_reader`] stops calling
//!   `read`. Draining the rest of the request body (for keep-alive) is the caller's business.
//!
//! The grammar, and the decisions taken where the RFCs leave room:
//! - The body is an optional preamble, then `--boundary`, transport padding (spaces and tabs,
//!   ignored) and CRLF. A first delimiter with no CRLF before it is accepted at the very start of
//!   the body only. The preamble is skipped but bounded: more than `max_header_bytes` bytes before
//!   the first delimiter is [`MultipartError::Malformed`], so a body that is not multipart at all
//!   fails fast instead of being read to its end.
//! - Each part is a head — CRLF-terminated header lines, then an empty line — and a body that
//!   ends at the next `CRLF--boundary`. By RFC 2046 that sequence anywhere in the data *is* a
//!   delimiter (the sender picks a boundary that does not occur in the data). Right after a
//!   delimiter comes `--` (the end) or optional padding and CRLF (the next part); anything else is
//!   `Malformed`. A part may have an empty head (`--b CRLF CRLF`); it then has no name and is
//!   rejected. Data that starts with `--boundary` right after the head's blank line is data: the
//!   delimiter needs its own CRLF.
//! - Head lines must end in CRLF; a bare CR or LF in a head, obsolete line folding (a line that
//!   starts with a space or tab), a line without a colon or a bad header name is `Malformed`.
//!   More than `max_headers_per_part` lines, or a head (all lines with their CRLFs, plus the empty
//!   line) longer than `max_header_bytes`, is [`MultipartError::HeaderTooLarge`]. Header values
//!   are decoded as UTF-8 — exact when valid (browsers send raw UTF-8 file names), lossy
//!   (U+FFFD) otherwise.
//! - `Content-Disposition` must be present once, of type `form-data`, with a `name` parameter
//!   (an empty name is kept as `""`). Header and parameter names are case-insensitive; values are
//!   tokens or quoted strings. In a quoted string only `\"` and `\\` are escapes; any other
//!   backslash is kept as is, so a Windows path such as `"C:\dir\a.txt"` survives (browsers do
//!   not escape backslashes; they send `"` as `%22`, which is also kept as is — no other decoding
//!   is done). A repeated `name`, `filename` or `filename*` parameter is `Malformed` (two
//!   readings of one part are a smuggling risk). `filename=""` is kept as `Some("")`.
//! - `filename*` (RFC 5987, `charset'lang'percent-encoded`) wins over `filename`. Charsets
//!   `UTF-8` (strict) and `ISO-8859-1` (bytes mapped to chars) are understood, case-insensitively;
//!   an undecodable value is ignored in favour of `filename`, and is `Malformed` when there is no
//!   `filename` to fall back on.
//! - `Content-Type` of a part is optional (`None`); other part headers are ignored. A repeated
//!   `Content-Disposition` or `Content-Type` is `Malformed`.
//! - More than `max_parts` parts is [`MultipartError::TooManyParts`], raised when the extra part
//!   starts. A body of no parts at all (`--boundary--`) is valid; the caller decides whether that
//!   is acceptable.
//! - A boundary must be 1 to 70 printable ASCII characters, not ending in a space (RFC 2046 is
//!   stricter; real clients are not). [`Parser::new`] with an invalid boundary gives a parser
//!   whose every call fails with `Malformed` rather than a panic.
//! - [`Parser::finish`]: the closing delimiter seen is `Ok`; input that stopped after the first
//!   delimiter, or an empty body, is [`MultipartError::Truncated`]; input that never reached a
//!   first delimiter is `Malformed` ("no opening boundary").
//! - After any error the parser is spent: later calls fail with `Malformed`. Errors returned by
//!   the event callback are passed through unchanged and also stop the parser.

use std::fmt;
use std::io::{self, Read};

use memchr::memmem;

/// Longest boundary RFC 2046 allows.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Size of the read buffer used by [`parse_reader`].
const READ_CHUNK: usize = 256 * 1024;

/// Extracts the boundary from a request's `Content-Type`, e.g.
/// `multipart/form-data; boundary="----WebKitFormBoundary7MA4"`.
///
/// The media type and the parameter name are case-insensitive; the value may be a token or a
/// quoted string. `None` when the media type is not `multipart/form-data`, when the parameters do
/// not parse, or when the boundary is missing, repeated, empty, longer than 70 characters or not
/// printable ASCII.
pub fn boundary_from_content_type(content_type: &str) -> Option<String> {
    let (media, params) = match content_type.find(';') {
        Some(i) => (&content_type[..i], &content_type[i + 1..]),
        None => (content_type, ""),
    };
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let mut boundary = None;
    for (name, value) in parse_params(params).ok()? {
        if name.eq_ignore_ascii_case("boundary") {
            if boundary.is_some() {
                return None;
            }
            boundary = Some(value);
        }
    }
    boundary.filter(|b| valid_boundary(b))
}

fn valid_boundary(boundary: &str) -> bool {
    let b = boundary.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_BOUNDARY_LEN
        && b.iter().all(|c| (0x20..=0x7e).contains(c))
        && b[b.len() - 1] != b' '
}

/// Limits that keep a hostile body from costing more than it should. The total size is the
/// body reader's business, not this module's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most parts accepted in one body (fields and files together).
    pub max_parts: usize,
    /// Largest part head, in bytes: every header line with its CRLF plus the empty line. Also
    /// bounds the preamble and the transport padding after a boundary.
    pub max_header_bytes: usize,
    /// Most header lines in one part head.
    pub max_headers_per_part: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_parts: 100, max_header_bytes: 8 * 1024, max_headers_per_part: 16 }
    }
}

/// What the head of a part says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartHead {
    /// The form field name (`name` of `Content-Disposition`).
    pub name: String,
    /// The client's file name (`filename*` if decodable, else `filename`); `None` for a plain
    /// field. Never trust it as a path.
    pub filename: Option<String>,
    /// The part's `Content-Type`, as sent.
    pub content_type: Option<String>,
}

/// What the parser reports, in body order: `Part`, then zero or more `Data`, then `PartEnd`, for
/// each part.
#[derive(Debug)]
pub enum Event<'a> {
    /// A part starts; its head is parsed.
    Part(PartHead),
    /// The next bytes of the current part's body; never empty. Splits carry no meaning.
    Data(&'a [u8]),
    /// The current part's body is complete.
    PartEnd,
}

/// Why a body was rejected.
#[derive(Debug)]
pub enum MultipartError {
    /// The body breaks the multipart grammar; the message says where.
    Malformed(String),
    /// The body has more parts than `Limits::max_parts`.
    TooManyParts,
    /// A part head is larger than `Limits::max_header_bytes` or has more lines than
    /// `Limits::max_headers_per_part`.
    HeaderTooLarge,
    /// The input ended before the closing boundary.
    Truncated,
    /// Reading the body failed; the `io::Error` is kept as is so that callers can recognise
    /// their own errors inside it (a body-size limit, a timeout).
    Io(io::Error),
    /// The event callback (the sink: a file being written, a field being collected) refused the
    /// data; it may carry any error, which callers can downcast.
    Sink(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::Malformed(msg) => write!(f, "malformed multipart body: {msg}"),
            MultipartError::TooManyParts => f.write_str("the multipart body has more parts than this server accepts"),
            MultipartError::HeaderTooLarge => {
                f.write_str("a part of the multipart body has a header block larger than this server accepts")
            }
            MultipartError::Truncated => f.write_str("the multipart body ended before its closing boundary"),
            MultipartError::Io(e) => write!(f, "reading the multipart body failed: {e}"),
            MultipartError::Sink(e) => write!(f, "storing a multipart part failed: {e}"),
        }
    }
}

impl std::error::Error for MultipartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MultipartError::Io(e) => Some(e),
            MultipartError::Sink(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<io::Error> for MultipartError {
    fn from(e: io::Error) -> Self {
        MultipartError::Io(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter; bytes are discarded (and counted).
    Preamble,
    /// Inside a part's body; bytes are emitted.
    Body,
    /// Just after `CRLF--boundary`.
    AfterDelimiter,
    /// Seen `-` after a delimiter; one more makes the closing delimiter.
    Dash,
    /// Seen transport padding after a delimiter.
    Padding,
    /// Seen CR after a delimiter (and padding); LF starts a part.
    Cr,
    /// Collecting a part head.
    Head,
    /// The closing delimiter was seen.
    Done,
    /// An error was returned; the parser is spent.
    Failed,
}

/// A sans-IO push parser: give it the body in pieces of any size with [`Parser::feed`].
#[derive(Debug)]
pub struct Parser {
    /// `CRLF--boundary`. The boundary holds no CR, so a delimiter never overlaps itself and the
    /// only place a partial delimiter can start inside a held-back prefix is its first byte.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    limits: Limits,
    state: State,
    /// In `Preamble`/`Body`: the held-back bytes, always a proper prefix of `delimiter` (at the
    /// start, a virtual CRLF so that a delimiter at the very start needs none). In `Head`: the
    /// head so far, at most `max_header_bytes`. Empty otherwise.
    buf: Vec<u8>,
    /// Parts started so far.
    parts: usize,
    /// Preamble bytes discarded, counting the 2 virtual ones.
    preamble: usize,
    /// Padding bytes after the current delimiter.
    padding: usize,
    /// Whether any input was fed, to tell an empty body from one without a boundary.
    seen_input: bool,
    /// Why the parser is spent, when it is.
    failure: String,
}

impl Parser {
    /// A parser for bodies delimited by `boundary` (without the leading `--`), as returned by
    /// [`boundary_from_content_type`]. An invalid boundary yields a parser that only fails.
    pub fn new(boundary: &str, limits: Limits) -> Parser {
        let mut delimiter = Vec::with_capacity(boundary.len() + 4);
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(boundary.as_bytes());
        let finder = memmem::Finder::new(&delimiter).into_owned();
        let valid = valid_boundary(boundary);
        Parser {
            delimiter,
            finder,
            limits,
            state: if valid { State::Preamble } else { State::Failed },
            buf: b"\r\n".to_vec(),
            parts: 0,
            preamble: 0,
            padding: 0,
            seen_input: false,
            failure: if valid {
                String::new()
            } else {
                format!("invalid boundary {boundary:?}: it must be 1 to {MAX_BOUNDARY_LEN} printable ASCII characters")
            },
        }
    }

    /// Feed the next bytes of the body. Calls `on` for each event in order. Data events may be
    /// split arbitrarily but concatenated they equal the part's body exactly. Returns `Ok(true)`
    /// once the closing boundary `--boundary--` has been seen (anything after it — the epilogue —
    /// is ignored, now and in later calls), `Ok(false)` if more input is needed.
    pub fn feed<F>(&mut self, input: &[u8], mut on: F) -> Result<bool, MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        match self.state {
            State::Done => return Ok(true),
            State::Failed => return Err(MultipartError::Malformed(self.failure.clone())),
            _ => {}
        }
        self.seen_input |= !input.is_empty();
        match self.run(input, &mut on) {
            Ok(done) => Ok(done),
            Err(e) => {
                self.failure = format!("the parser already stopped at an error: {e}");
                self.state = State::Failed;
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Call at end of input: `Ok` once the closing boundary was seen, else
    /// [`MultipartError::Truncated`] (or `Malformed` when no opening boundary was ever found in
    /// a non-empty body, or when the parser already failed).
    pub fn finish(&self) -> Result<(), MultipartError> {
        match self.state {
            State::Done => Ok(()),
            State::Failed => Err(MultipartError::Malformed(self.failure.clone())),
            State::Preamble if self.seen_input => Err(self.no_opening_boundary()),
            _ => Err(MultipartError::Truncated),
        }
    }

    /// Whether the closing boundary has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Parts started so far.
    pub fn parts(&self) -> usize {
        self.parts
    }

    fn no_opening_boundary(&self) -> MultipartError {
        MultipartError::Malformed(format!(
            "no opening boundary line {:?} found",
            String::from_utf8_lossy(&self.delimiter[2..])
        ))
    }

    fn run<F>(&mut self, input: &[u8], on: &mut F) -> Result<bool, MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(true),
                State::Failed => return Err(MultipartError::Malformed(self.failure.clone())),
                _ if rest.is_empty() => return Ok(false),
                State::Preamble | State::Body => match self.scan(rest, on)? {
                    Some(n) => pos += n,
                    None => return Ok(false),
                },
                State::Head => pos += self.head(rest, on)?,
                State::AfterDelimiter | State::Dash | State::Padding | State::Cr => {
                    self.step(rest[0])?;
                    pos += 1;
                }
            }
        }
    }

    /// Looks for the delimiter in held-back bytes + `data`. Emits what cannot be part of it.
    /// Returns how many bytes of `data` were consumed through the delimiter, or `None` when all
    /// of `data` was consumed (emitted or held back) without completing one.
    fn scan<F>(&mut self, data: &[u8], on: &mut F) -> Result<Option<usize>, MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        let held = self.buf.len();
        if held > 0 {
            debug_assert!(held < self.delimiter.len() && self.delimiter.starts_with(&self.buf));
            // The held bytes are a prefix of the delimiter; only their first byte is a CR, so the
            // only delimiter they can start is the one starting at their first byte.
            let need = &self.delimiter[held..];
            if data.len() >= need.len() {
                if data.starts_with(need) {
                    let consumed = need.len();
                    self.buf.clear();
                    self.delimiter_found(on)?;
                    return Ok(Some(consumed));
                }
            } else if need.starts_with(data) {
                self.buf.extend_from_slice(data);
                return Ok(None);
            }
            // Not a delimiter after all: the held bytes are data.
            let bytes = std::mem::take(&mut self.buf);
            let emitted = self.emit(&bytes, on);
            self.buf = bytes;
            self.buf.clear();
            emitted?;
        }
        match self.finder.find(data) {
            Some(i) => {
                self.emit(&data[..i], on)?;
                self.delimiter_found(on)?;
                Ok(Some(i + self.delimiter.len()))
            }
            None => {
                let keep = partial_delimiter_suffix(data, &self.delimiter);
                let cut = data.len() - keep;
                self.emit(&data[..cut], on)?;
                self.buf.extend_from_slice(&data[cut..]);
                Ok(None)
            }
        }
    }

    fn emit<F>(&mut self, bytes: &[u8], on: &mut F) -> Result<(), MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.state == State::Body {
            return on(Event::Data(bytes));
        }
        // Preamble: discarded, but bounded. The first 2 bytes counted are the virtual CRLF.
        self.preamble += bytes.len();
        if self.preamble > self.limits.max_header_bytes.saturating_add(2) {
            return Err(MultipartError::Malformed(format!(
                "no opening boundary line {:?} within the first {} bytes of the body",
                String::from_utf8_lossy(&self.delimiter[2..]),
                self.limits.max_header_bytes
            )));
        }
        Ok(())
    }

    fn delimiter_found<F>(&mut self, on: &mut F) -> Result<(), MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        let in_part = self.state == State::Body;
        self.state = State::AfterDelimiter;
        self.padding = 0;
        if in_part {
            on(Event::PartEnd)?;
        }
        Ok(())
    }

    /// One byte of what follows a delimiter: `--`, or padding then CRLF.
    fn step(&mut self, byte: u8) -> Result<(), MultipartError> {
        self.state = match (self.state, byte) {
            (State::AfterDelimiter, b'-') => State::Dash,
            (State::Dash, b'-') => State::Done,
            (State::AfterDelimiter | State::Padding, b' ' | b'\t') => {
                self.padding += 1;
                if self.padding > self.limits.max_header_bytes {
                    return Err(MultipartError::HeaderTooLarge);
                }
                State::Padding
            }
            (State::AfterDelimiter | State::Padding, b'\r') => State::Cr,
            (State::Cr, b'\n') => {
                if self.parts >= self.limits.max_parts {
                    return Err(MultipartError::TooManyParts);
                }
                self.parts += 1;
                self.buf.clear();
                State::Head
            }
            (state, _) => {
                let expected = match state {
                    State::Dash => "\"-\"",
                    State::Cr => "LF",
                    _ => "CRLF or \"--\"",
                };
                return Err(MultipartError::Malformed(format!(
                    "unexpected byte '{}' after boundary line {:?}; expected {expected}",
                    [byte].escape_ascii(),
                    String::from_utf8_lossy(&self.delimiter[2..])
                )));
            }
        };
        Ok(())
    }

    /// Collects the part head from `data`; once it is complete, parses it and emits `Part`.
    /// Returns the bytes of `data` consumed (never past the head's end).
    fn head<F>(&mut self, data: &[u8], on: &mut F) -> Result<usize, MultipartError>
    where
        F: FnMut(Event<'_>) -> Result<(), MultipartError>,
    {
        let max = self.limits.max_header_bytes;
        let old = self.buf.len();
        let take = data.len().min(max.saturating_sub(old));
        self.buf.extend_from_slice(&data[..take]);
        let end = if self.buf.starts_with(b"\r\n") {
            Some(2) // no header lines at all
        } else {
            let from = old.saturating_sub(3);
            memmem::find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 4)
        };
        match end {
            Some(end) => {
                self.buf.truncate(end);
                let head = parse_head(&self.buf, &self.limits)?;
                self.buf.clear();
                self.state = State::Body;
                on(Event::Part(head))?;
                Ok(end - old)
            }
            None if self.buf.len() >= max => Err(MultipartError::HeaderTooLarge),
            None => Ok(take),
        }
    }
}

/// Length of the longest suffix of `data`, shorter than `delimiter`, that is a prefix of it.
fn partial_delimiter_suffix(data: &[u8], delimiter: &[u8]) -> usize {
    let start = data.len().saturating_sub(delimiter.len() - 1);
    let tail = &data[start..];
    memchr::memchr_iter(delimiter[0], tail).find(|&i| delimiter.starts_with(&tail[i..])).map_or(0, |i| tail.len() - i)
}

/// Parses a complete part head: header lines each ending in CRLF, then CRLF.
fn parse_head(head: &[u8], limits: &Limits) -> Result<PartHead, MultipartError> {
    let malformed = |msg: &str| MultipartError::Malformed(msg.to_string());
    let mut lines = &head[..head.len() - 2];
    let mut count = 0;
    let mut disposition = None;
    let mut content_type = None;
    while !lines.is_empty() {
        let (line, rest) = match memmem::find(lines, b"\r\n") {
            Some(i) => (&lines[..i], &lines[i + 2..]),
            None => (lines, &b""[..]),
        };
        lines = rest;
        count += 1;
        if count > limits.max_headers_per_part {
            return Err(MultipartError::HeaderTooLarge);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(malformed("a part header line starts with whitespace (obsolete line folding is not accepted)"));
        }
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(malformed("a part header holds a bare CR or LF"));
        }
        let colon = memchr::memchr(b':', line).ok_or_else(|| malformed("a part header line has no colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(malformed("a part header has an invalid name"));
        }
        let value = trim_ows(&line[colon + 1..]);
        let value = String::from_utf8_lossy(value).into_owned();
        let slot = if name.eq_ignore_ascii_case(b"content-disposition") {
            &mut disposition
        } else if name.eq_ignore_ascii_case(b"content-type") {
            &mut content_type
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(MultipartError::Malformed(format!("a part has two {} headers", String::from_utf8_lossy(name))));
        }
        *slot = Some(value);
    }
    let disposition = disposition.ok_or_else(|| malformed("a part has no Content-Disposition header"))?;
    let (name, filename) = parse_disposition(&disposition)?;
    Ok(PartHead { name, filename, content_type })
}

/// `form-data; name="x"; filename="y"; filename*=UTF-8''z` → (name, filename).
fn parse_disposition(value: &str) -> Result<(String, Option<String>), MultipartError> {
    let (kind, params) = match value.find(';') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, ""),
    };
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::Malformed(format!(
            "a part's Content-Disposition is {:?}, not form-data",
            kind.trim()
        )));
    }
    let params = parse_params(params)
        .map_err(|m| MultipartError::Malformed(format!("a part's Content-Disposition is malformed: {m}")))?;
    let (mut name, mut filename, mut filename_ext) = (None, None, None);
    for (key, val) in params {
        let slot = if key.eq_ignore_ascii_case("name") {
            &mut name
        } else if key.eq_ignore_ascii_case("filename") {
            &mut filename
        } else if key.eq_ignore_ascii_case("filename*") {
            &mut filename_ext
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(MultipartError::Malformed(format!(
                "a part's Content-Disposition repeats the {key:?} parameter"
            )));
        }
        *slot = Some(val);
    }
    let name = name.ok_or_else(|| MultipartError::Malformed("a part's Content-Disposition has no name".to_string()))?;
    let filename = match filename_ext {
        Some(ext) => match decode_ext_value(&ext) {
            Some(decoded) => Some(decoded),
            None if filename.is_some() => filename,
            None => {
                return Err(MultipartError::Malformed(format!(
                    "a part's filename* {ext:?} cannot be decoded (UTF-8 or ISO-8859-1 expected)"
                )))
            }
        },
        None => filename,
    };
    Ok((name, filename))
}

/// Decodes an RFC 5987 ext-value: `charset'language'percent-encoded`.
fn decode_ext_value(value: &str) -> Option<String> {
    let mut fields = value.splitn(3, '\'');
    let charset = fields.next()?;
    let _language = fields.next()?;
    let encoded = fields.next()?.as_bytes();
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            bytes.push(encoded[i]);
            i += 1;
        }
    }
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(bytes).ok()
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Some(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

/// Parses `; key=value; key="quoted"` parameters. Keys are returned as sent.
fn parse_params(mut rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(is_ows_char);
        if rest.is_empty() {
            return Ok(out);
        }
        if let Some(after) = rest.strip_prefix(';') {
            rest = after;
            continue;
        }
        let end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..end].trim_end_matches(is_ows_char);
        if key.is_empty() || !key.bytes().all(is_tchar) {
            return Err(format!("bad parameter name {key:?}"));
        }
        if !rest[end..].starts_with('=') {
            return Err(format!("parameter {key:?} has no value"));
        }
        rest = rest[end + 1..].trim_start_matches(is_ows_char);
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let (value, after) =
                parse_quoted(quoted).ok_or_else(|| format!("parameter {key:?} has an unterminated quoted value"))?;
            rest = after.trim_start_matches(is_ows_char);
            if !(rest.is_empty() || rest.starts_with(';')) {
                return Err(format!("unexpected text after the quoted value of {key:?}"));
            }
            value
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            let value = rest[..end].trim_end_matches(is_ows_char);
            if value.is_empty() {
                return Err(format!("parameter {key:?} has an empty value"));
            }
            rest = &rest[end..];
            value.to_string()
        };
        out.push((key.to_string(), value));
    }
}

/// `s` follows an opening quote. Returns the unescaped value and what follows the closing
/// quote. Only `\"` and `\\` are escapes; a lone backslash is kept. A `\"` that ends the
/// parameter (only white space, `;` or nothing follows) is a backslash and the closing quote:
/// browsers send names and paths ending in a backslash raw (WHATWG escapes `"` as `%22` and
/// leaves backslashes alone).
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' if s[i + 1..].starts_with('"') && ends_parameter(&s[i + 2..]) => {
                out.push('\\');
                return Some((out, &s[i + 2..]));
            }
            '\\' => match s[i + 1..].chars().next() {
                Some(next @ ('"' | '\\')) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            _ => out.push(c),
        }
    }
    None
}

/// Whether `rest` (what follows a quote) is the end of a parameter: white space, then `;` or
/// nothing.
fn ends_parameter(rest: &str) -> bool {
    let rest = rest.trim_start_matches(is_ows_char);
    rest.is_empty() || rest.starts_with(';')
}

fn is_ows_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Convenience driver over any reader: reads in 64 KiB chunks, feeds a [`Parser`], stops reading
/// at the closing boundary, and returns [`MultipartError::Truncated`] on EOF before it. Reader
/// errors (other than `Interrupted`, which is retried) come back as [`MultipartError::Io`] with
/// the `io::Error` untouched.
pub fn parse_reader<R: Read, F>(mut reader: R, boundary: &str, limits: Limits, mut on: F) -> Result<(), MultipartError>
where
    F: FnMut(Event<'_>) -> Result<(), MultipartError>,
{
    let mut parser = Parser::new(boundary, limits);
    if parser.state == State::Failed {
        return parser.finish();
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return parser.finish(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(MultipartError::Io(e)),
        };
        if parser.feed(&buf[..n], &mut on)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---------- deterministic PRNG ----------

    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            // splitmix64 of the seed, so that small seeds give unrelated streams
            let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            Rng((z ^ (z >> 31)) | 1)
        }
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + self.below(hi - lo + 1)
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    // ---------- building bodies ----------

    const BOUNDARIES: &[&str] = &[
        "----WebKitFormBoundary7MA4YWxkTrZu0gW",
        "boundary",
        "b",
        "-",
        "--",
        "-----------------------------9051914041544843365972754266",
        "a b:c=d?e",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
    ];

    #[derive(Clone, Debug, PartialEq)]
    struct TestPart {
        head: PartHead,
        data: Vec<u8>,
    }

    fn field(name: &str, data: &[u8]) -> TestPart {
        TestPart { head: PartHead { name: name.to_string(), filename: None, content_type: None }, data: data.to_vec() }
    }

    fn file(name: &str, filename: &str, content_type: Option<&str>, data: &[u8]) -> TestPart {
        TestPart {
            head: PartHead {
                name: name.to_string(),
                filename: Some(filename.to_string()),
                content_type: content_type.map(str::to_string),
            },
            data: data.to_vec(),
        }
    }

    #[derive(Default, Clone)]
    struct Layout {
        preamble: Vec<u8>,
        padding: Vec<u8>,
        epilogue: Vec<u8>,
    }

    struct Built {
        body: Vec<u8>,
        /// Where each part's data lies in `body`.
        spans: Vec<(usize, usize)>,
    }

    fn quote(s: &str) -> String {
        s.replace('\\', "\\\\").replace('"', "\\\"")
    }

    fn build(boundary: &str, parts: &[TestPart], layout: &Layout) -> Built {
        let mut body = layout.preamble.clone();
        if !body.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        let mut spans = Vec::new();
        for part in parts {
            body.extend_from_slice(&layout.padding);
            body.extend_from_slice(b"\r\n");
            let mut head = format!("Content-Disposition: form-data; name=\"{}\"", quote(&part.head.name));
            if let Some(f) = &part.head.filename {
                head.push_str(&format!("; filename=\"{}\"", quote(f)));
            }
            head.push_str("\r\n");
            if let Some(ct) = &part.head.content_type {
                head.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            head.push_str("\r\n");
            body.extend_from_slice(head.as_bytes());
            let start = body.len();
            body.extend_from_slice(&part.data);
            spans.push((start, body.len()));
            body.extend_from_slice(b"\r\n--");
            body.extend_from_slice(boundary.as_bytes());
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(&layout.epilogue);
        Built { body, spans }
    }

    fn delimiter(boundary: &str) -> Vec<u8> {
        let mut d = b"\r\n--".to_vec();
        d.extend_from_slice(boundary.as_bytes());
        d
    }

    /// Replaces the last byte of every full delimiter in `data` with NUL (which no boundary
    /// holds, so no new delimiter can appear).
    fn scrub(data: &mut [u8], boundary: &str) {
        let d = delimiter(boundary);
        while let Some(i) = memmem::find(data, &d) {
            data[i + d.len() - 1] = 0;
        }
    }

    /// Data of `len` bytes of one of several kinds, never holding a full delimiter.
    fn gen_data(rng: &mut Rng, kind: usize, len: usize, boundary: &str) -> Vec<u8> {
        let d = delimiter(boundary);
        let mut data = Vec::with_capacity(len + d.len() + 8);
        while data.len() < len {
            match kind {
                // all byte values
                0 => data.push(rng.byte()),
                // runs of CR, LF and '-'
                1 => {
                    let c = *rng.pick(b"\r\n-");
                    for _ in 0..rng.range(1, 5) {
                        data.push(c);
                    }
                }
                // near-delimiters: every proper prefix of CRLF--boundary, the boundary's own
                // prefixes, "--boundary" without CRLF, and bits of noise
                2 => match rng.below(7) {
                    0 => data.extend_from_slice(&d[..rng.below(d.len())]),
                    1 => data.extend_from_slice(&boundary.as_bytes()[..rng.below(boundary.len())]),
                    2 => {
                        data.extend_from_slice(b"--");
                        data.extend_from_slice(boundary.as_bytes());
                        if rng.below(2) == 0 {
                            data.extend_from_slice(b"--");
                        }
                    }
                    3 => data.extend_from_slice(&d), // scrubbed below
                    4 => data.push(*rng.pick(b"\r\n-")),
                    _ => data.push(rng.byte()),
                },
                // text with line breaks
                _ => {
                    if rng.below(20) == 0 {
                        data.extend_from_slice(b"\r\n");
                    } else {
                        data.push(b'a' + rng.below(26) as u8);
                    }
                }
            }
        }
        data.truncate(len);
        scrub(&mut data, boundary);
        data
    }

    /// A valid boundary of 1 to 70 characters, mostly dashes (the nastiest for prefix matching).
    fn gen_boundary(rng: &mut Rng) -> String {
        let len = rng.range(1, MAX_BOUNDARY_LEN);
        let mut b: String = (0..len).map(|_| *rng.pick(&['-', '-', '-', 'a', 'Z', ' ', '='])).collect();
        if b.ends_with(' ') {
            b.pop();
            b.push('-');
        }
        assert!(valid_boundary(&b));
        b
    }

    fn gen_size(rng: &mut Rng) -> usize {
        match rng.below(8) {
            0 => *rng.pick(&[0, 1, 8191, 8192, 8193]),
            1 | 2 => rng.range(0, 3000),
            _ => rng.range(0, 200),
        }
    }

    fn gen_parts(rng: &mut Rng, boundary: &str, max_parts: usize) -> Vec<TestPart> {
        let names = ["file", "files", "title", "파일", "a\"q\"", "back\\slash", ""];
        let filenames = ["report.pdf", "사진 01.JPG", "C:\\dir\\a.txt", "say \"hi\".txt", ""];
        let n = rng.range(0, max_parts);
        (0..n)
            .map(|_| {
                let kind = rng.below(4);
                let size = gen_size(rng);
                let data = gen_data(rng, kind, size, boundary);
                let name = *rng.pick(&names);
                match rng.below(3) {
                    0 => field(name, &data),
                    1 => file(name, filenames[rng.below(filenames.len())], None, &data),
                    _ => file(name, filenames[rng.below(filenames.len())], Some("application/octet-stream"), &data),
                }
            })
            .collect()
    }

    fn gen_layout(rng: &mut Rng, boundary: &str) -> Layout {
        let mut layout = Layout::default();
        if rng.below(4) == 0 {
            let len = rng.range(1, 60);
            let kind = rng.below(4);
            layout.preamble = gen_data(rng, kind, len, boundary);
            // a preamble starting with "--boundary" would be the first delimiter itself
            if layout.preamble.starts_with(b"--") {
                layout.preamble[0] = b'x';
            }
        }
        if rng.below(4) == 0 {
            layout.padding = b" \t ".to_vec();
        }
        if rng.below(3) == 0 {
            layout.epilogue = b"\r\nepilogue \r\n--junk--\r\n".to_vec();
        }
        layout
    }

    // ---------- driving the parser ----------

    #[derive(Default)]
    struct Collector {
        parts: Vec<TestPart>,
        open: bool,
    }

    impl Collector {
        fn on(&mut self, event: Event<'_>) -> Result<(), MultipartError> {
            match event {
                Event::Part(head) => {
                    assert!(!self.open, "Part while a part is open");
                    self.parts.push(TestPart { head, data: Vec::new() });
                    self.open = true;
                }
                Event::Data(bytes) => {
                    assert!(self.open, "Data outside a part");
                    assert!(!bytes.is_empty(), "empty Data event");
                    self.parts.last_mut().unwrap().data.extend_from_slice(bytes);
                }
                Event::PartEnd => {
                    assert!(self.open, "PartEnd outside a part");
                    self.open = false;
                }
            }
            Ok(())
        }
    }

    /// Checks the parser's buffer bounds after a feed, and — when `built` is known and the
    /// parser is inside a part — that it holds back exactly the longest suffix of that part's
    /// bytes so far that could start a delimiter, having emitted everything before it.
    fn check_after_feed(parser: &Parser, c: &Collector, built: Option<&Built>, fed: usize) {
        let d = parser.delimiter.len();
        assert!(parser.buf.len() <= parser.limits.max_header_bytes.max(d));
        if matches!(parser.state, State::Preamble | State::Body) {
            assert!(parser.buf.len() < d);
            assert!(parser.delimiter.starts_with(&parser.buf));
        }
        let (Some(built), State::Body) = (built, parser.state) else {
            return;
        };
        let (start, _) = built.spans[c.parts.len() - 1];
        let stream = &built.body[start..fed];
        let hold = (1..d)
            .rev()
            .find(|&h| h <= stream.len() && parser.delimiter.starts_with(&stream[stream.len() - h..]))
            .unwrap_or(0);
        assert_eq!(parser.buf, &stream[stream.len() - hold..], "held-back bytes");
        assert_eq!(c.parts.last().unwrap().data.len(), stream.len() - hold, "bytes emitted so far");
    }

    /// Feeds `body` in chunks of the given sizes (the last chunk takes the rest).
    fn run_chunks(
        boundary: &str,
        limits: Limits,
        body: &[u8],
        built: Option<&Built>,
        mut sizes: impl FnMut() -> usize,
    ) -> Result<Vec<TestPart>, MultipartError> {
        let mut parser = Parser::new(boundary, limits);
        let mut c = Collector::default();
        let mut pos = 0;
        while pos < body.len() {
            let n = sizes().clamp(1, body.len() - pos);
            let done = parser.feed(&body[pos..pos + n], |e| c.on(e))?;
            pos += n;
            check_after_feed(&parser, &c, built, pos);
            if done {
                assert!(!c.open);
                assert!(parser.is_done());
                // the epilogue is ignored
                assert!(parser.feed(b"\r\n--x\r\nanything", |e| c.on(e))?);
                break;
            }
        }
        parser.finish()?;
        Ok(c.parts)
    }

    fn random_size(rng: &mut Rng, boundary_len: usize) -> usize {
        match rng.below(10) {
            0..=4 => rng.range(1, 8),
            5 | 6 => rng.range(1, boundary_len + 6),
            7 => rng.range(1, 300),
            8 => rng.range(1, 5000),
            _ => 1,
        }
    }

    /// A reader returning random small chunks, with an occasional `Interrupted`.
    struct ChunkyReader<'a> {
        data: &'a [u8],
        rng: Rng,
        reads_after_end: usize,
    }

    impl Read for ChunkyReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                self.reads_after_end += 1;
                return Ok(0);
            }
            if self.rng.below(16) == 0 {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = self.rng.range(1, 17).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn run_reader(boundary: &str, body: &[u8], seed: u64) -> Result<(Vec<TestPart>, usize), MultipartError> {
        let mut c = Collector::default();
        let mut reader = ChunkyReader { data: body, rng: Rng::new(seed), reads_after_end: 0 };
        parse_reader(&mut reader, boundary, Limits::default(), |e| c.on(e))?;
        Ok((c.parts, reader.data.len()))
    }

    fn roomy() -> Limits {
        Limits { max_parts: 1000, ..Limits::default() }
    }

    // ---------- property tests ----------

    #[test]
    fn random_bodies_in_random_reads_are_byte_exact() {
        let mut cases = 0;
        for seed in 0..1500u64 {
            let mut rng = Rng::new(seed);
            let random_boundary;
            let boundary = if rng.below(4) == 0 {
                random_boundary = gen_boundary(&mut rng);
                &random_boundary
            } else {
                *rng.pick(BOUNDARIES)
            };
            let parts = gen_parts(&mut rng, boundary, 4);
            let layout = gen_layout(&mut rng, boundary);
            let built = build(boundary, &parts, &layout);
            let body = &built.body;

            let whole = run_chunks(boundary, roomy(), body, Some(&built), || usize::MAX);
            assert_eq!(whole.unwrap(), parts, "seed {seed}: one feed");

            let mut sizes = Rng::new(seed ^ 0xabcd);
            let got = run_chunks(boundary, roomy(), body, Some(&built), || random_size(&mut sizes, boundary.len()));
            assert_eq!(got.unwrap(), parts, "seed {seed}: random feeds");

            let (got, left) = run_reader(boundary, body, seed).unwrap();
            assert_eq!(got, parts, "seed {seed}: parse_reader");
            // it stopped at the closing boundary: at most one short read beyond it
            assert!(left <= layout.epilogue.len());
            cases += 3;
        }
        assert_eq!(cases, 4500);
    }

    #[test]
    fn edge_sizes_of_every_data_kind() {
        for (i, &boundary) in BOUNDARIES.iter().enumerate() {
            for kind in 0..4 {
                for size in [0usize, 1, 2, 3, 8191, 8192, 8193] {
                    let seed = (i * 100 + kind * 10) as u64 + size as u64;
                    let mut rng = Rng::new(seed);
                    let data = gen_data(&mut rng, kind, size, boundary);
                    let parts =
                        vec![file("file", "x.bin", Some("application/octet-stream"), &data), field("after", b"tail")];
                    let built = build(boundary, &parts, &Layout::default());
                    let mut sizes = Rng::new(seed + 1);
                    let got = run_chunks(boundary, roomy(), &built.body, Some(&built), || {
                        random_size(&mut sizes, boundary.len())
                    })
                    .unwrap();
                    assert_eq!(got, parts, "boundary {boundary:?} kind {kind} size {size}");
                    if size <= 8193 && kind == 2 {
                        // one byte at a time
                        let got = run_chunks(boundary, roomy(), &built.body, Some(&built), || 1).unwrap();
                        assert_eq!(got, parts);
                    }
                    let (got, _) = run_reader(boundary, &built.body, seed).unwrap();
                    assert_eq!(got, parts);
                }
            }
        }
    }

    #[test]
    fn every_split_into_two_feeds() {
        let mut cases = 0;
        for seed in 0..24u64 {
            let mut rng = Rng::new(1000 + seed);
            let boundary = BOUNDARIES[seed as usize % BOUNDARIES.len()];
            let parts = vec![
                field("title", &gen_data(&mut rng, 2, 40, boundary)),
                file("file", "사진.jpg", Some("image/jpeg"), &gen_data(&mut rng, (seed % 4) as usize, 90, boundary)),
                file("files", "b.txt", None, &gen_data(&mut rng, 1, 30, boundary)),
            ];
            let layout = if seed % 3 == 0 { gen_layout(&mut rng, boundary) } else { Layout::default() };
            let built = build(boundary, &parts, &layout);
            let body = &built.body;
            for cut in 0..=body.len() {
                let mut first = true;
                let got = run_chunks(boundary, roomy(), body, Some(&built), || {
                    if std::mem::take(&mut first) {
                        cut
                    } else {
                        usize::MAX
                    }
                });
                assert_eq!(got.unwrap(), parts, "seed {seed} cut {cut}");
                cases += 1;
            }
        }
        assert!(cases > 24 * 300, "{cases}");
    }

    #[test]
    fn every_split_into_three_feeds() {
        let mut cases = 0;
        for (i, boundary) in ["b", "-", "xy-z"].into_iter().enumerate() {
            let parts = vec![
                field("a", b"\r\n-\r\r\n--"),
                file("f", "n", None, format!("--{boundary}\r\n-{boundary}").as_bytes()),
            ];
            let built = build(boundary, &parts, &Layout::default());
            let body = &built.body;
            for a in 0..=body.len() {
                for b in a..=body.len() {
                    let mut cuts = [a, b - a].into_iter();
                    let got = run_chunks(boundary, roomy(), body, Some(&built), || cuts.next().unwrap_or(usize::MAX));
                    assert_eq!(got.unwrap(), parts, "boundary {i} cuts {a} {b}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 3000, "{cases}");
    }

    #[test]
    fn crlf_straddling_every_read_end() {
        // The upstream bug: 8191 bytes, a CRLF split across two reads.
        let boundary = "----WebKitFormBoundaryAbc123";
        let mut rng = Rng::new(7);
        let mut data = gen_data(&mut rng, 3, 8191, boundary);
        data[8190] = b'\r';
        let parts = vec![file("file", "a.bin", None, &data)];
        let built = build(boundary, &parts, &Layout::default());
        let body = &built.body;
        let crs: Vec<usize> = memchr::memchr_iter(b'\r', body).collect();
        for &cr in &crs {
            let mut cuts = [cr + 1, 1].into_iter();
            let got = run_chunks(boundary, roomy(), body, Some(&built), || cuts.next().unwrap_or(usize::MAX));
            assert_eq!(got.unwrap(), parts, "cut after CR at {cr}");
        }
    }

    // ---------- the grammar ----------

    fn parse_all(boundary: &str, limits: Limits, body: &[u8]) -> Result<Vec<TestPart>, MultipartError> {
        run_chunks(boundary, limits, body, None, || usize::MAX)
    }

    fn parse_bytewise(boundary: &str, limits: Limits, body: &[u8]) -> Result<Vec<TestPart>, MultipartError> {
        run_chunks(boundary, limits, body, None, || 1)
    }

    fn one_part(head: &str) -> Vec<u8> {
        format!("--b\r\n{head}\r\n\r\nvalue\r\n--b--").into_bytes()
    }

    fn head_of(head: &str) -> Result<PartHead, MultipartError> {
        let parts = parse_all("b", Limits::default(), &one_part(head))?;
        assert_eq!(parts[0].data, b"value");
        Ok(parts[0].head.clone())
    }

    #[test]
    fn accepts_what_clients_send() {
        // curl-like body with preamble-free start, LF-free data, epilogue
        let body = b"--X\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--X\r\n\
Content-Disposition: form-data; name=\"f\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n\
hello\r\nworld\r\n\r\n--X--\r\n";
        let parts = parse_all("X", Limits::default(), body).unwrap();
        assert_eq!(parts, vec![field("a", b"1"), file("f", "f.txt", Some("text/plain"), b"hello\r\nworld\r\n")]);
        // zero parts
        assert_eq!(parse_all("X", Limits::default(), b"--X--").unwrap(), vec![]);
        // a preamble, transport padding, an empty part body, no epilogue CRLF
        let body = b"preamble\r\n--X \t\r\nContent-Disposition: form-data; name=e\r\n\r\n\r\n--X--";
        assert_eq!(parse_bytewise("X", Limits::default(), body).unwrap(), vec![field("e", b"")]);
        // a body starting with CRLF before the first delimiter
        let body = b"\r\n--X\r\nContent-Disposition: form-data; name=e\r\n\r\nv\r\n--X--";
        assert_eq!(parse_all("X", Limits::default(), body).unwrap(), vec![field("e", b"v")]);
        // "--X" after the head's blank line is data: a delimiter needs its own CRLF
        let body = b"--X\r\nContent-Disposition: form-data; name=e\r\n\r\n--X\r\n--X--";
        assert_eq!(parse_all("X", Limits::default(), body).unwrap(), vec![field("e", b"--X")]);
    }

    #[test]
    fn part_heads() {
        let h = head_of("content-disposition: Form-Data; NAME=\"n\"; FileName=\"a b.txt\"").unwrap();
        assert_eq!(h.name, "n");
        assert_eq!(h.filename.as_deref(), Some("a b.txt"));
        assert_eq!(h.content_type, None);

        let h =
            head_of("Content-Disposition: form-data;name=tok;filename=plain.txt\r\nCONTENT-TYPE:  image/png ").unwrap();
        assert_eq!(h.name, "tok");
        assert_eq!(h.filename.as_deref(), Some("plain.txt"));
        assert_eq!(h.content_type.as_deref(), Some("image/png"));

        // escapes: only \" and \\; other backslashes kept
        let h = head_of(r#"Content-Disposition: form-data; name="a\"b\\c"; filename="C:\dir\x.txt""#).unwrap();
        assert_eq!(h.name, "a\"b\\c");
        assert_eq!(h.filename.as_deref(), Some("C:\\dir\\x.txt"));
        // A value ending in a backslash, as browsers send it (found by schemathesis).
        let h = head_of(r#"Content-Disposition: form-data; name="x`%22\"; filename="C:\dir\""#).unwrap();
        assert_eq!(h.name, "x`%22\\");
        assert_eq!(h.filename.as_deref(), Some("C:\\dir\\"));

        // raw UTF-8 kept exactly, ';' inside quotes, unknown params and headers ignored
        let h =
            head_of("Content-Disposition: form-data; x=1; name=\"파일;이름\"; filename=\"사진 %22.jpg\"\r\nX-Other: y")
                .unwrap();
        assert_eq!(h.name, "파일;이름");
        assert_eq!(h.filename.as_deref(), Some("사진 %22.jpg"));

        // empty filename is kept
        let h = head_of("Content-Disposition: form-data; name=\"f\"; filename=\"\"").unwrap();
        assert_eq!(h.filename.as_deref(), Some(""));

        // invalid UTF-8 is decoded lossily
        let body = b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"\xff.txt\"\r\n\r\nv\r\n--b--";
        let parts = parse_all("b", Limits::default(), body).unwrap();
        assert_eq!(parts[0].head.filename.as_deref(), Some("\u{fffd}.txt"));
    }

    #[test]
    fn filename_star() {
        let h = head_of("Content-Disposition: form-data; name=f; filename=\"fallback.txt\"; filename*=UTF-8''%EC%82%AC%EC%A7%84%20a.jpg").unwrap();
        assert_eq!(h.filename.as_deref(), Some("사진 a.jpg"));
        // order does not matter; charset is case-insensitive; language is ignored
        let h = head_of("Content-Disposition: form-data; name=f; filename*=utf-8'ko'%E2%82%AC; filename=x").unwrap();
        assert_eq!(h.filename.as_deref(), Some("€"));
        let h = head_of("Content-Disposition: form-data; name=f; filename*=ISO-8859-1''caf%E9.txt").unwrap();
        assert_eq!(h.filename.as_deref(), Some("café.txt"));
        // quoted ext-value tolerated
        let h = head_of("Content-Disposition: form-data; name=f; filename*=\"UTF-8''a%2Fb\"").unwrap();
        assert_eq!(h.filename.as_deref(), Some("a/b"));
        // undecodable: falls back to filename ...
        for bad in ["koi8-r''%C1", "UTF-8''%FF", "UTF-8''%4", "UTF-8''%zz", "no-quotes"] {
            let h =
                head_of(&format!("Content-Disposition: form-data; name=f; filename=ok.txt; filename*={bad}")).unwrap();
            assert_eq!(h.filename.as_deref(), Some("ok.txt"), "{bad}");
            // ... or is an error without one
            let e = head_of(&format!("Content-Disposition: form-data; name=f; filename*={bad}"));
            assert!(matches!(e, Err(MultipartError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn malformed_heads() {
        for head in [
            "Content-Disposition: form-data; filename=\"x\"",         // no name
            "Content-Type: text/plain",                               // no disposition
            "",                                                       // empty head
            "Content-Disposition: attachment; name=\"x\"",            // not form-data
            "Content-Disposition: form-data; name=\"x\"\r\n folded",  // obsolete folding
            "Content-Disposition: form-data; name=\"x\"\r\nno colon", // no colon
            "Bad Name: v\r\nContent-Disposition: form-data; name=x",  // bad header name
            ": v\r\nContent-Disposition: form-data; name=x",          // empty header name
            "Content-Disposition: form-data; name=\"x",               // unterminated quote
            "Content-Disposition: form-data; name=\"x\" y",           // junk after quote
            "Content-Disposition: form-data; name",                   // param without value
            "Content-Disposition: form-data; name=",                  // empty value
            "Content-Disposition: form-data; name=a; name=b",         // repeated param
            "Content-Disposition: form-data; name=a; filename=a; FILENAME=b",
            "Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b",
            "Content-Disposition: form-data; name=a\r\nContent-Type: a\r\ncontent-type: b",
            "Content-Disposition: form-data; name=a\rb", // bare CR
            "Content-Disposition: form-data; name=a\nb", // bare LF
        ] {
            let r = head_of(head);
            assert!(matches!(r, Err(MultipartError::Malformed(_))), "{head:?}: {r:?}");
            let r = parse_bytewise("b", Limits::default(), &one_part(head));
            assert!(matches!(r, Err(MultipartError::Malformed(_))), "{head:?}: {r:?}");
        }
    }

    // ---------- errors ----------

    #[test]
    fn truncated_bodies() {
        let boundary = "bnd";
        let parts = vec![field("a", b"1\r\n2"), file("f", "x", Some("t/p"), b"abc")];
        let built = build(boundary, &parts, &Layout::default());
        let body = &built.body;
        let first_delim_end = 2 + boundary.len();
        for len in 0..body.len() {
            for sizes in [usize::MAX, 1] {
                let r = run_chunks(boundary, roomy(), &body[..len], None, || sizes);
                match r {
                    Err(MultipartError::Truncated) => assert!(len == 0 || len >= first_delim_end),
                    Err(MultipartError::Malformed(m)) => {
                        assert!(len < first_delim_end && m.contains("no opening boundary"), "{m}")
                    }
                    other => panic!("prefix {len}: {other:?}"),
                }
            }
            let r = run_reader(boundary, &body[..len], len as u64);
            assert!(r.is_err(), "prefix {len}");
        }
        assert_eq!(parse_all(boundary, roomy(), body).unwrap(), parts);
    }

    #[test]
    fn garbage_instead_of_the_first_boundary() {
        // short garbage: found out at the end
        let r = parse_all("b", Limits::default(), b"{\"not\": \"multipart\"}");
        assert!(matches!(r, Err(MultipartError::Malformed(ref m)) if m.contains("no opening boundary")));
        // "--b" not at the start and without CRLF is not a delimiter
        let r = parse_all("b", Limits::default(), b"x--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--b--");
        assert!(r.is_ok()); // "x--b...\r\n" is preamble, the "\r\n--b--" closes: no parts
        assert_eq!(r.unwrap(), vec![]);
        // long garbage: stopped as soon as the preamble budget is spent, even bytewise
        let limits = Limits { max_header_bytes: 100, ..Limits::default() };
        let garbage = vec![b'z'; 10_000];
        let mut parser = Parser::new("b", limits.clone());
        let mut fed = 0;
        let err = loop {
            match parser.feed(&garbage[fed..fed + 1], |_| Ok(())) {
                Ok(false) => fed += 1,
                Ok(true) => panic!("done on garbage"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, MultipartError::Malformed(_)), "{err}");
        assert!(fed <= 103, "{fed}");
        // a preamble of exactly the budget is fine, one byte more is not
        for (len, ok) in [(100, true), (101, false)] {
            let mut body = vec![b'p'; len];
            body.extend_from_slice(b"\r\n--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b--");
            for sizes in [usize::MAX, 1, 7] {
                let r = run_chunks("b", limits.clone(), &body, None, || sizes);
                assert_eq!(r.is_ok(), ok, "{len} {sizes}: {r:?}");
            }
        }
        // junk after a delimiter
        for body in [
            &b"--bX"[..],
            b"--b-x",
            b"--b\rx",
            b"--b \tx",
            b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--bX--",
        ] {
            let r = parse_bytewise("b", Limits::default(), body);
            assert!(matches!(r, Err(MultipartError::Malformed(_))), "{body:?}: {r:?}");
        }
    }

    #[test]
    fn too_many_parts() {
        let parts: Vec<TestPart> = (0..5).map(|i| field(&format!("f{i}"), b"v")).collect();
        let built = build("b", &parts, &Layout::default());
        for max_parts in 0..=6 {
            let limits = Limits { max_parts, ..Limits::default() };
            for sizes in [usize::MAX, 1] {
                let r = run_chunks("b", limits.clone(), &built.body, None, || sizes);
                if max_parts >= 5 {
                    assert_eq!(r.unwrap(), parts);
                } else {
                    assert!(matches!(r, Err(MultipartError::TooManyParts)), "{r:?}");
                }
            }
        }
        let r = parse_all("b", Limits::default(), &{
            let many: Vec<TestPart> = (0..101).map(|_| field("x", b"")).collect();
            build("b", &many, &Layout::default()).body
        });
        assert!(matches!(r, Err(MultipartError::TooManyParts)));
    }

    #[test]
    fn oversized_heads() {
        let head = "Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n";
        let body = format!("--b\r\n{head}data\r\n--b--");
        for (max, ok) in [(head.len(), true), (head.len() - 1, false), (0, false)] {
            let limits = Limits { max_header_bytes: max, ..Limits::default() };
            for sizes in [usize::MAX, 1, 3, 10] {
                let r = run_chunks("b", limits.clone(), body.as_bytes(), None, || sizes);
                match r {
                    Ok(parts) => {
                        assert!(ok);
                        assert_eq!(parts, vec![file("file", "a.txt", None, b"data")]);
                    }
                    Err(MultipartError::HeaderTooLarge) => assert!(!ok, "{max} {sizes}"),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        // an endless head is stopped at the limit, with the buffer bounded
        let mut parser = Parser::new("b", Limits::default());
        assert!(!parser.feed(b"--b\r\nX-Long: ", |_| Ok(())).unwrap());
        let chunk = vec![b'a'; 1000];
        let err = loop {
            match parser.feed(&chunk, |_| Ok(())) {
                Ok(_) => assert!(parser.buf.len() <= 8 * 1024),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, MultipartError::HeaderTooLarge));
        // too many header lines
        let mut lines = String::from("Content-Disposition: form-data; name=a");
        for i in 0..15 {
            lines.push_str(&format!("\r\nX-{i}: v"));
        }
        assert!(head_of(&lines).is_ok()); // 16 lines
        lines.push_str("\r\nX-16: v");
        assert!(matches!(head_of(&lines), Err(MultipartError::HeaderTooLarge)));
        // endless padding after a boundary
        let mut body = b"--b".to_vec();
        body.extend(std::iter::repeat(b' ').take(9000));
        let r = parse_all("b", Limits::default(), &body);
        assert!(matches!(r, Err(MultipartError::HeaderTooLarge)));
    }

    #[test]
    fn errors_stop_the_parser() {
        // a sink error is passed through and the parser is spent
        let body = one_part("Content-Disposition: form-data; name=a");
        let mut parser = Parser::new("b", Limits::default());
        let r = parser.feed(&body, |e| match e {
            Event::Data(_) => Err(MultipartError::Sink("disk full".into())),
            _ => Ok(()),
        });
        match r {
            Err(MultipartError::Sink(e)) => assert_eq!(e.to_string(), "disk full"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parser.feed(b"more", |_| Ok(())), Err(MultipartError::Malformed(_))));
        assert!(matches!(parser.finish(), Err(MultipartError::Malformed(_))));

        // reader errors keep their io::Error
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"))
            }
        }
        match parse_reader(Failing, "b", Limits::default(), |_| Ok(())) {
            Err(MultipartError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                assert_eq!(e.to_string(), "body too large");
            }
            other => panic!("{other:?}"),
        }

        // an invalid boundary gives a parser that only fails
        for bad in ["", "a\r\nb", "trailing ", &"x".repeat(71), "é"] {
            let mut p = Parser::new(bad, Limits::default());
            assert!(matches!(p.feed(b"--", |_| Ok(())), Err(MultipartError::Malformed(_))), "{bad:?}");
            let r = parse_reader(&b"--x--"[..], bad, Limits::default(), |_| Ok(()));
            assert!(matches!(r, Err(MultipartError::Malformed(_))), "{bad:?}");
        }

        // empty body
        assert!(matches!(Parser::new("b", Limits::default()).finish(), Err(MultipartError::Truncated)));
        assert!(matches!(parse_reader(&b""[..], "b", Limits::default(), |_| Ok(())), Err(MultipartError::Truncated)));
        // Display and source
        let e = MultipartError::Io(io::Error::other("x"));
        assert!(std::error::Error::source(&e).is_some());
        assert!(MultipartError::Truncated.to_string().contains("closing boundary"));
    }

    #[test]
    fn parse_reader_stops_at_the_closing_boundary() {
        struct Exploding<'a>(&'a [u8]);
        impl Read for Exploding<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(!self.0.is_empty(), "read past the closing boundary");
                let n = buf.len().min(self.0.len()).min(5);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let body = one_part("Content-Disposition: form-data; name=a");
        let mut got = Vec::new();
        parse_reader(Exploding(&body), "b", Limits::default(), |e| {
            if let Event::Data(d) = e {
                got.extend_from_slice(d);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, b"value");
    }

    #[test]
    fn boundary_from_content_type_variants() {
        let ok = [
            ("multipart/form-data; boundary=abc", "abc"),
            ("Multipart/Form-Data; BOUNDARY=abc", "abc"),
            ("multipart/form-data;boundary=\"a b:c\"", "a b:c"),
            (
                "multipart/form-data; charset=utf-8; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
                "----WebKitFormBoundary7MA4YWxkTrZu0gW",
            ),
            ("multipart/form-data; boundary=\"q\\\"x\"", "q\"x"),
            ("multipart/form-data ; boundary = abc ; x=y", "abc"),
            ("multipart/form-data; boundary=----=_Part_0", "----=_Part_0"),
        ];
        for (ct, b) in ok {
            assert_eq!(boundary_from_content_type(ct).as_deref(), Some(b), "{ct}");
        }
        let long = format!("multipart/form-data; boundary={}", "x".repeat(70));
        assert!(boundary_from_content_type(&long).is_some());
        let too_long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        for ct in [
            "multipart/mixed; boundary=abc",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=\"ends in space \"",
            "multipart/form-data; boundary=caf\u{e9}",
            "text/plain; boundary=abc",
            &too_long,
        ] {
            assert_eq!(boundary_from_content_type(ct), None, "{ct}");
        }
    }
}
