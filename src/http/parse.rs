//! Request-head parsing: plain functions over bytes, no sockets.
//!
//! `parse_head` looks at the bytes a connection has buffered so far and answers one of three
//! things: "need more bytes", "here is a complete head (and how many bytes it used)", or "this
//! head is bad, answer it with this status". Everything here is tested by feeding byte slices;
//! the connection code only moves bytes between sockets and these functions.
//!
//! Must never: allocate in proportion to anything but the head itself, accept a head larger than
//! the configured limit, or guess at a body framing it does not understand (a request with both
//! `Transfer-Encoding` and `Content-Length`, or a `Transfer-Encoding` other than `chunked`, is
//! refused: that ambiguity is how request smuggling works).

use std::fmt;

/// Limits on a request head. A head over either limit is answered `431`.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest request line plus headers, in bytes, including the blank line.
    pub max_head_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { max_head_bytes: 16 * 1024, max_headers: 100 }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no `Content-Length`, no `Transfer-Encoding`), or `Content-Length: 0`.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head. Header names are lower-cased; values are kept as sent (decoded as
/// UTF-8, lossily: a header value with invalid UTF-8 cannot match anything we look for).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The path part of the target, still percent-encoded, always starting with `/`
    /// (or exactly `*` for `OPTIONS *`).
    pub path: String,
    /// The query string without the `?`, still percent-encoded; empty when absent.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// Whether the client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
}

impl RequestHead {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client asked for a protocol upgrade to `proto` (e.g. `websocket`).
    /// Never over HTTP/1.0, which has no `Upgrade` (RFC 9110 §7.8: a server must ignore it).
    pub fn wants_upgrade(&self, proto: &str) -> bool {
        if self.minor_version == 0 {
            return false;
        }
        let upgrade =
            self.header("upgrade").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(proto)));
        upgrade && connection_has(self, "upgrade")
    }
}

/// Why a head was refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Over `max_head_bytes` or `max_headers`: 431.
    TooLarge,
    /// Not HTTP/1.x we understand: 400, with a human reason.
    Malformed(&'static str),
    /// A `Transfer-Encoding` we do not implement: 501.
    UnsupportedEncoding,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
            HeadError::UnsupportedEncoding => 501,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("Request header fields too large"),
            HeadError::Malformed(why) => write!(f, "Malformed request: {why}"),
            HeadError::UnsupportedEncoding => f.write_str("Unsupported Transfer-Encoding"),
        }
    }
}

/// Outcome of looking at the buffered bytes.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet; read more (the buffer is still under the limit).
    Partial,
    /// A complete head that used the first `usize` bytes of the buffer.
    Complete(RequestHead, usize),
}

/// Parse a request head from the start of `buf`.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Parsed, HeadError> {
    // httparse's header slots: on the stack for the usual limits (no allocation per request),
    // on the heap only for a configured limit above `STACK_HEADERS`.
    const STACK_HEADERS: usize = 128;
    let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let storage: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADERS {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut on_heap
    };
    let mut req = httparse::Request::new(storage);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes { Err(HeadError::TooLarge) } else { Ok(Parsed::Partial) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("unsupported HTTP version")),
        Err(httparse::Error::Token) => return Err(HeadError::Malformed("invalid method or header name")),
        Err(_) => return Err(HeadError::Malformed("invalid request line or header")),
    };
    if used > limits.max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default().to_string();
    let minor_version = req.version.unwrap_or(1);
    let (path, query) = split_target(req.path.unwrap_or_default())?;
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let mut head = RequestHead {
        method,
        path,
        query,
        minor_version,
        headers,
        framing: Framing::None,
        keep_alive: false,
        expect_continue: false,
    };
    if minor_version == 1 {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is a 400.
        match head.headers.iter().filter(|(n, _)| n == "host").count() {
            0 => return Err(HeadError::Malformed("missing Host header")),
            1 => {}
            _ => return Err(HeadError::Malformed("more than one Host header")),
        }
    }
    head.framing = framing(&head)?;
    head.keep_alive =
        if minor_version == 0 { connection_has(&head, "keep-alive") } else { !connection_has(&head, "close") };
    head.expect_continue =
        minor_version == 1 && head.header("expect").is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    Ok(Parsed::Complete(head, used))
}

/// Where a request head ends in `buf` (the index just past its blank line: `\r\n\r\n` or a
/// bare `\n\n`), searching only from about `from` on: the caller passes how many bytes it has
/// already searched, so a head that arrives a byte at a time costs linear time in all. Only an
/// end past `from` is reported.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    for i in memchr::memchr_iter(b'\n', &buf[start.min(buf.len())..]).map(|i| i + start) {
        let end = match &buf[i + 1..] {
            [b'\n', ..] => i + 2,
            [b'\r', b'\n', ..] => i + 3,
            _ => continue,
        };
        if end > from {
            return Some(end);
        }
    }
    None
}

/// Split a request target into (path, query). Accepts origin-form (`/a?b`), absolute-form
/// (`http://host/a?b`, which proxies send) and `*`.
fn split_target(target: &str) -> Result<(String, String), HeadError> {
    let rest = if target.starts_with('/') || target == "*" {
        target
    } else if let Some(after) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        match after.find('/') {
            Some(i) => &after[i..],
            None => "/",
        }
    } else {
        return Err(HeadError::Malformed("request target must start with '/'"));
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    // A fragment is never sent by a correct client; drop it rather than route on it.
    let path = path.split('#').next().unwrap_or_default();
    Ok((path.to_string(), query.to_string()))
}

fn framing(head: &RequestHead) -> Result<Framing, HeadError> {
    let mut te: Option<&str> = None;
    let mut cl: Option<u64> = None;
    for (name, value) in &head.headers {
        match name.as_str() {
            "transfer-encoding" => {
                if te.is_some() {
                    return Err(HeadError::Malformed("repeated Transfer-Encoding"));
                }
                te = Some(value);
            }
            "content-length" => {
                // `Content-Length: 5, 5` and repeated equal values are allowed by RFC 9110;
                // differing values are not.
                for part in value.split(',') {
                    let part = part.trim();
                    if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(HeadError::Malformed("invalid Content-Length"));
                    }
                    let n: u64 = part.parse().map_err(|_| HeadError::Malformed("invalid Content-Length"))?;
                    if cl.is_some_and(|prev| prev != n) {
                        return Err(HeadError::Malformed("conflicting Content-Length values"));
                    }
                    cl = Some(n);
                }
            }
            _ => {}
        }
    }
    match (te, cl) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("both Transfer-Encoding and Content-Length")),
        (Some(te), None) => {
            if te.trim().eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(HeadError::UnsupportedEncoding)
            }
        }
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

fn connection_has(head: &RequestHead, token: &str) -> bool {
    head.headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Decode `%XX` escapes (and, when `plus_is_space`, `+` as a space, for form and query
/// encoding). Returns `None` for a malformed escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parse `a=1&b=two` into decoded pairs, in order. Pairs that do not decode are skipped by
/// the caller's choice: this returns `None` for the whole string if any escape is bad, so a
/// handler can answer 422 rather than silently ignore a parameter. A name given more than once
/// keeps every value here; a handler reading one value asks [`last`].
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Some(out)
}

/// The value of `name` among parsed pairs: the last one given, as FastAPI (Starlette's
/// `QueryParams.get`, `FormData.get`) reads a parameter sent twice.
pub fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().rfind(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (RequestHead, usize) {
        match parse_head(bytes, &HeadLimits::default()) {
            Ok(Parsed::Complete(h, n)) => (h, n),
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn simple_get_keeps_alive_on_1_1() {
        let raw = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\nEXTRA";
        let (h, n) = complete(raw);
        assert_eq!(n, raw.len() - 5);
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/health");
        assert_eq!(h.query, "x=1");
        assert!(h.keep_alive);
        assert_eq!(h.framing, Framing::None);
        assert_eq!(h.header("host"), Some("a"));
    }

    #[test]
    fn http_1_0_closes_unless_asked() {
        let (h, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let (h, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn every_split_offset_is_partial_until_the_end() {
        let raw = b"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        for cut in 0..raw.len() {
            match parse_head(&raw[..cut], &HeadLimits::default()) {
                Ok(Parsed::Partial) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let (h, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.expect_continue);
    }

    #[test]
    fn framing_rules() {
        let (h, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        ];
        for raw in bad {
            assert_eq!(parse_head(raw, &HeadLimits::default()).unwrap_err().status(), 400, "{raw:?}");
        }
        let gz = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse_head(gz, &HeadLimits::default()).unwrap_err(), HeadError::UnsupportedEncoding);
    }

    #[test]
    fn limits_give_431() {
        let limits = HeadLimits { max_head_bytes: 64, max_headers: 3 };
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(parse_head(&long, &limits).unwrap_err(), HeadError::TooLarge);
        let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(parse_head(many, &limits).unwrap_err(), HeadError::TooLarge);
        let three = b"GET / HTTP/1.1\r\nHost: a\r\nb: 2\r\nc: 3\r\n\r\n";
        assert!(matches!(parse_head(three, &limits), Ok(Parsed::Complete(..))));
        // Exactly at the byte limit is fine; one more is not.
        let base = b"GET / HTTP/1.1\r\nHost: \r\n\r\n".len();
        let fill = |n: usize| [b"GET / HTTP/1.1\r\nHost: ".as_slice(), &vec![b'a'; n], b"\r\n\r\n"].concat();
        assert!(matches!(parse_head(&fill(64 - base), &limits), Ok(Parsed::Complete(..))));
        assert_eq!(parse_head(&fill(65 - base), &limits).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn malformed_heads_give_400() {
        for raw in [
            b"GET\r\n\r\n".as_slice(),
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET relative HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(parse_head(raw, &HeadLimits::default()).unwrap_err().status(), 400, "{raw:?}");
        }
    }

    #[test]
    fn absolute_form_and_upgrade() {
        let (h, _) = complete(
            b"GET http://h:1/ws/a?token=t HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        );
        assert_eq!(h.path, "/ws/a");
        assert_eq!(h.query, "token=t");
        assert!(h.wants_upgrade("websocket"));
        let (h, _) = complete(b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(!h.wants_upgrade("websocket"), "HTTP/1.0 has no upgrade");
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let none = b"GET / HTTP/1.1\r\nX: y\r\n\r\n";
        assert_eq!(parse_head(none, &HeadLimits::default()).unwrap_err(), HeadError::Malformed("missing Host header"));
        let two = b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n";
        assert_eq!(
            parse_head(two, &HeadLimits::default()).unwrap_err(),
            HeadError::Malformed("more than one Host header")
        );
        // HTTP/1.0 predates Host: none is fine.
        assert!(matches!(parse_head(b"GET / HTTP/1.0\r\n\r\n", &HeadLimits::default()), Ok(Parsed::Complete(..))));
    }

    #[test]
    fn head_end_is_found_incrementally() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        let end = raw.len() - 4;
        // Fed one byte at a time, each search starts where the last stopped, and the end is found
        // exactly when its last byte arrives.
        let mut scanned = 0;
        for n in 1..=raw.len() {
            match find_head_end(&raw[..n], scanned) {
                Some(e) => {
                    assert_eq!((e, n), (end, end));
                    break;
                }
                None => scanned = n,
            }
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(find_head_end(b"a\r\nb\r\n", 0), None);
        // An end already reported is not reported again.
        assert_eq!(find_head_end(b"\n\nGET", 2), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb", false).as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%e2%82%ac", false).as_deref(), Some("€"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(
            parse_query("skip=1&limit=&x&e=a%20b").unwrap(),
            vec![
                ("skip".into(), "1".into()),
                ("limit".into(), "".into()),
                ("x".into(), "".into()),
                ("e".into(), "a b".into())
            ]
        );
    }
}
