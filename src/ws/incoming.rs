//! What a client sends, from bytes to messages: RFC 6455 frames on the server's side. Pure: no
//! sockets, no locks. The session's reader (`session.rs`) reads the socket into a [`Decoder`]
//! and runs the messages it hands back; a client that breaks a rule gets a [`Violation`], which
//! names the close code the contract asks for (1002, 1007 or 1009).
//!
//! Why our own and not tungstenite's `WebSocketContext` (which the design card names): the
//! context keeps a read buffer for its whole life, and a session's reader idles for most of it.
//! With 10,000 clients that buffer was 10 MB of the server's memory. A `Decoder` holds nothing
//! between messages: its buffer is freed as soon as every byte in it has been decoded (see
//! `docs/decisions.md`). tungstenite still encodes our frames and answers the handshake.
//!
//! Must never: hold more than one message (`max` bytes), one frame header and one read's worth
//! of bytes; accept an unmasked frame, a reserved bit or opcode, a fragmented or oversized
//! control frame, or text that is not UTF-8.

use std::io;

/// Smallest buffer a read allocates. Above glibc's per-thread cache (blocks up to 1032 bytes),
/// so that a buffer freed by a reader that then idles goes back to the shared heap, where the
/// next reader can use it, instead of staying in the idle thread's cache.
pub const READ_MIN: usize = 2048;

/// One message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// A binary message (its bytes are not kept: the contract has no use for them).
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// A close frame: the code to echo (1000 for a close without one, 1002 for a code that may
    /// not be sent on the wire).
    Close(u16),
}

/// A rule the client broke; the connection is closed with [`Violation::code`].
#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    /// 1002: a frame RFC 6455 does not allow here.
    Protocol(&'static str),
    /// 1009: a message (or a frame) over the limit; the size the client announced.
    TooBig(u64),
    /// 1007: a text message, or a close reason, that is not UTF-8.
    Utf8,
}

impl Violation {
    /// The close code the connection ends with.
    pub fn code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::TooBig(_) => 1009,
            Violation::Utf8 => 1007,
        }
    }

    /// The reason sent in the close frame.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Protocol(_) => "protocol error",
            Violation::TooBig(_) => "message too big",
            Violation::Utf8 => "invalid UTF-8",
        }
    }

    /// What happened, for the log.
    pub fn detail(&self, max: usize) -> String {
        match self {
            Violation::Protocol(what) => (*what).to_string(),
            Violation::TooBig(n) => format!("a message of at least {n} bytes, over the limit of {max}"),
            Violation::Utf8 => "invalid UTF-8 in a text frame or close reason".into(),
        }
    }
}

/// A frame's header, once all of it has arrived.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Bytes before the payload.
    len: usize,
    payload: u64,
}

const CONTINUE: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The header at the start of `b`: `None` until all of it is there. Checks what can be checked
/// before the payload arrives, so that an oversized frame is refused without reading it.
fn header(b: &[u8], max: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *b else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set (no extension was negotiated)"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    match opcode {
        CONTINUE | TEXT | BINARY | CLOSE | PING | PONG => {}
        3..=7 => return Err(Violation::Protocol("reserved data opcode")),
        _ => return Err(Violation::Protocol("reserved control opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("unmasked frame from a client"));
    }
    let (extra, payload) = match b1 & 0x7F {
        126 => match b.get(2..4) {
            Some(x) => (2, u64::from(u16::from_be_bytes([x[0], x[1]]))),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            // RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0.
            Some(x) if x[0] & 0x80 != 0 => {
                return Err(Violation::Protocol("64-bit payload length with its top bit set"))
            }
            Some(x) => (8, u64::from_be_bytes(x.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        n => (0, u64::from(n)),
    };
    if opcode & 0x8 != 0 {
        if !fin {
            return Err(Violation::Protocol("fragmented control frame"));
        }
        if payload > 125 {
            return Err(Violation::Protocol("control frame over 125 bytes"));
        }
    }
    if payload > max as u64 {
        return Err(Violation::TooBig(payload));
    }
    let len = 2 + extra + 4;
    let Some(m) = b.get(len - 4..len) else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: [m[0], m[1], m[2], m[3]], len, payload }))
}

fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m).collect()
}

/// The close code to echo for a close frame's payload (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<u16, Violation> {
    match payload {
        [] => Ok(1000),
        [_] => Err(Violation::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::Utf8);
            }
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes an endpoint may send: those of IANA's registry up to 1014 (1012-1014 were
            // added after RFC 6455) except 1004-1006 (reserved, or only reported locally), and
            // 3000-4999 (registered and private). 1015 is local only; 1016 and up unassigned.
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            Ok(if allowed { code } else { 1002 })
        }
    }
}

/// A fragmented data message being put together.
struct Partial {
    text: bool,
    data: Vec<u8>,
}

/// The client's side of one connection: bytes in, messages out.
///
/// Holds the bytes read but not yet decoded (at most one frame header, one frame up to `max`
/// and one read), and a fragmented message while it is incomplete (at most `max`). The buffer
/// is freed whenever it has been decoded to the last byte.
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the undecoded bytes of `buf` start.
    start: usize,
    partial: Option<Partial>,
    max: usize,
}

impl Decoder {
    /// A decoder for messages of at most `max` bytes, starting with bytes already read (those
    /// that came after the upgrade request).
    pub fn new(max: usize, leftover: Vec<u8>) -> Decoder {
        let mut d = Decoder { buf: leftover, start: 0, partial: None, max };
        d.release_if_done();
        d
    }

    /// Read at most `want` more bytes with `read` (given the space to fill, it returns how many
    /// bytes it put there, as `Read::read` does). Returns what `read` returned.
    pub fn read_with(&mut self, want: usize, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(want.max(READ_MIN));
        }
        self.buf.resize(len + want, 0);
        let result = read(&mut self.buf[len..]);
        self.buf.truncate(len + result.as_ref().map_or(0, |n| (*n).min(want)));
        self.release_if_done();
        result
    }

    /// Feed bytes (for tests, and for callers that read elsewhere).
    pub fn feed(&mut self, bytes: &[u8]) {
        let _ = self.read_with(bytes.len(), |space| {
            space.copy_from_slice(bytes);
            Ok(bytes.len())
        });
    }

    /// True when no byte waits to be decoded and no message is half assembled.
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.buf.capacity() == 0 && self.partial.is_none()
    }

    /// The next whole message among the bytes read so far; `Ok(None)` when more must be read.
    pub fn message(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(h) = header(rest, self.max)? else { return Ok(None) };
            if h.opcode & 0x8 == 0 {
                match (&self.partial, h.opcode) {
                    (None, CONTINUE) => {
                        return Err(Violation::Protocol("continuation frame without a message to continue"))
                    }
                    (Some(_), TEXT | BINARY) => {
                        return Err(Violation::Protocol("new message before the previous one was finished"))
                    }
                    (Some(p), _) if p.data.len() as u64 + h.payload > self.max as u64 => {
                        return Err(Violation::TooBig(p.data.len() as u64 + h.payload))
                    }
                    _ => {}
                }
            }
            let end = h.len + h.payload as usize;
            if rest.len() < end {
                return Ok(None);
            }
            let payload = unmask(&rest[h.len..end], h.mask);
            self.start += end;
            self.release_if_done();
            let message = match h.opcode {
                PING => Incoming::Ping(payload),
                PONG => Incoming::Pong,
                CLOSE => Incoming::Close(close_code(&payload)?),
                CONTINUE => {
                    let p = self.partial.as_mut().expect("checked above");
                    p.data.extend_from_slice(&payload);
                    if !h.fin {
                        continue;
                    }
                    let p = self.partial.take().expect("checked above");
                    whole(p.text, p.data)?
                }
                op if !h.fin => {
                    self.partial = Some(Partial { text: op == TEXT, data: payload });
                    continue;
                }
                op => whole(op == TEXT, payload)?,
            };
            return Ok(Some(message));
        }
    }

    fn release_if_done(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

fn whole(text: bool, data: Vec<u8>) -> Result<Incoming, Violation> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(data).map(Incoming::Text).map_err(|_| Violation::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `b0` is FIN, RSV and opcode; masked with `MASK` unless `masked` is false.
    fn raw(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = vec![b0];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&MASK);
            f.extend(unmask(payload, MASK));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        raw(b0, payload, true)
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut d = Decoder::new(MAX, Vec::new());
        d.feed(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.message()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn messages_of_every_kind() {
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x82, &[1, 2, 3]));
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x8A, b""));
        bytes.extend(frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']));
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![
                Incoming::Text("hello".into()),
                Incoming::Binary,
                Incoming::Ping(b"p".to_vec()),
                Incoming::Pong,
                Incoming::Close(1000)
            ]
        );
    }

    #[test]
    fn every_split_of_the_bytes_gives_the_same_messages() {
        let mut bytes = frame(0x01, b"frag");
        bytes.extend(frame(0x89, b"in between"));
        bytes.extend(frame(0x80, "mented é".as_bytes()));
        bytes.extend(frame(0x81, &vec![b'x'; 300]));
        let want = decode_all(&bytes).unwrap();
        assert_eq!(want.len(), 3);
        assert_eq!(want[1], Incoming::Text("fragmented é".into()));
        for cut in 0..bytes.len() {
            let mut d = Decoder::new(MAX, bytes[..cut].to_vec());
            let mut got = Vec::new();
            while let Some(m) = d.message().unwrap() {
                got.push(m);
            }
            d.feed(&bytes[cut..]);
            while let Some(m) = d.message().unwrap() {
                got.push(m);
            }
            assert_eq!(got, want, "split at {cut}");
            assert!(d.is_idle(), "split at {cut}: bytes kept after the last message");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut bytes = frame(0x81, &[b'a'; 200]);
        bytes.extend(frame(0x88, &[]));
        let mut d = Decoder::new(MAX, Vec::new());
        let mut got = Vec::new();
        for b in &bytes {
            d.feed(&[*b]);
            while let Some(m) = d.message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Incoming::Text("a".repeat(200)), Incoming::Close(1000)]);
    }

    #[test]
    fn nothing_is_kept_between_messages() {
        let mut d = Decoder::new(MAX, Vec::new());
        assert!(d.is_idle());
        let f = frame(0x81, b"hi");
        d.feed(&f[..3]);
        assert_eq!(d.message(), Ok(None));
        assert!(!d.is_idle(), "a partial frame is kept");
        d.feed(&f[3..]);
        assert_eq!(d.message(), Ok(Some(Incoming::Text("hi".into()))));
        assert!(d.is_idle(), "the buffer is freed once decoded");
        d.feed(&frame(0x01, b"a"));
        assert_eq!(d.message(), Ok(None));
        assert!(!d.is_idle(), "a fragmented message is kept");
    }

    #[test]
    fn a_read_allocates_at_least_read_min() {
        let mut d = Decoder::new(MAX, Vec::new());
        let n = d.read_with(3, |space| {
            space.copy_from_slice(&frame(0x81, b"x")[..3]);
            Ok(3)
        });
        assert_eq!(n.unwrap(), 3);
        assert!(d.buf.capacity() >= READ_MIN);
        // A read that fails or returns less keeps only what it read.
        let e = d.read_with(10, |_| Err(io::Error::from(io::ErrorKind::WouldBlock)));
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(d.buf.len(), 3);
    }

    #[test]
    fn rule_breakers() {
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (frame(0xC1, b"x"), Violation::Protocol("reserved bits set (no extension was negotiated)")),
            (frame(0x83, b"x"), Violation::Protocol("reserved data opcode")),
            (frame(0x8B, b"x"), Violation::Protocol("reserved control opcode")),
            (raw(0x81, b"x", false), Violation::Protocol("unmasked frame from a client")),
            (frame(0x09, b"x"), Violation::Protocol("fragmented control frame")),
            (frame(0x89, &[0; 126]), Violation::Protocol("control frame over 125 bytes")),
            (frame(0x80, b"x"), Violation::Protocol("continuation frame without a message to continue")),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                Violation::Protocol("new message before the previous one was finished"),
            ),
            (frame(0x88, &[3]), Violation::Protocol("close frame with a 1-byte payload")),
            (frame(0x81, &[0xff, 0xfe]), Violation::Utf8),
            ([frame(0x01, &[0xc3]), frame(0x80, &[0x28])].concat(), Violation::Utf8),
            (frame(0x88, &[0x03, 0xE8, 0xff]), Violation::Utf8),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(&bytes), Err(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn the_size_limit_is_checked_at_the_header_and_across_fragments() {
        // Exactly the limit passes; one byte more is refused before its payload arrives.
        assert_eq!(decode_all(&frame(0x81, &vec![b'a'; MAX])).unwrap(), vec![Incoming::Text("a".repeat(MAX))]);
        let over = frame(0x81, &vec![b'a'; MAX + 1]);
        let mut d = Decoder::new(MAX, Vec::new());
        d.feed(&over[..14]);
        assert_eq!(d.message(), Err(Violation::TooBig(MAX as u64 + 1)));
        // A 64-bit length far over the limit.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(decode_all(&huge), Err(Violation::TooBig(i64::MAX as u64)));
        // One whose top bit is set breaks the framing itself (RFC 6455 §5.2): 1002, not 1009.
        let mut bad = vec![0x81, 0x80 | 127];
        bad.extend_from_slice(&(u64::MAX / 2 + 6).to_be_bytes());
        bad.extend_from_slice(&MASK);
        assert!(matches!(decode_all(&bad), Err(Violation::Protocol(_))));
        // Fragments that add up to one byte over.
        let mut frags = frame(0x01, &vec![b'a'; MAX / 2]);
        frags.extend(frame(0x80, &vec![b'a'; MAX / 2 + 1]));
        assert_eq!(decode_all(&frags), Err(Violation::TooBig(MAX as u64 + 1)));
        let mut frags = frame(0x01, &vec![b'a'; MAX / 2]);
        frags.extend(frame(0x80, &vec![b'a'; MAX / 2]));
        assert_eq!(decode_all(&frags).unwrap().len(), 1);
    }

    #[test]
    fn close_codes_echoed_as_the_rfc_allows() {
        let close = |code: u16| decode_all(&frame(0x88, &code.to_be_bytes())).unwrap();
        for ok in [1000, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999] {
            assert_eq!(close(ok), vec![Incoming::Close(ok)], "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(close(bad), vec![Incoming::Close(1002)], "{bad}");
        }
    }

    #[test]
    fn violations_name_their_close_codes() {
        assert_eq!(
            (Violation::Protocol("x").code(), Violation::TooBig(1).code(), Violation::Utf8.code()),
            (1002, 1009, 1007)
        );
        assert!(Violation::TooBig(70_000).detail(MAX).contains("70000"));
    }
}
