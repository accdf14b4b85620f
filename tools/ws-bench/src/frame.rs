//! WebSocket frames on the client side, as plain functions over bytes: client frames out (masked,
//! through tungstenite's `Frame::format`), server frames in (headers through tungstenite's
//! `FrameHeader::parse`, payloads borrowed in place), and the matching of server JSON frames to
//! the benchmark's own messages. Must never touch a socket, a lock or a clock.
//!
//! A benchmark message text is `wsb:<phase>:<seq>:<send_ns>` (then `:` and padding when asked):
//! the phase index, a sequence number dense from 0 within the phase, and the send time in
//! nanoseconds since the tool started (its own monotonic clock, shared by every thread).

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// Largest server frame payload accepted (the contract's messages are at most 64 KiB of text).
pub const MAX_PAYLOAD: u64 = 1 << 20;

fn masked(mut frame: Frame, mask: [u8; 4]) -> Vec<u8> {
    frame.header_mut().mask = Some(mask);
    let mut out = Vec::with_capacity(frame.len() + 4);
    frame.format(&mut out).expect("writing to a Vec cannot fail");
    out
}

/// A masked client text frame.
pub fn text(data: &str, mask: [u8; 4]) -> Vec<u8> {
    masked(Frame::message(data.as_bytes().to_vec(), OpCode::Data(Data::Text), true), mask)
}

pub fn ping(data: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked(Frame::ping(data.to_vec()), mask)
}

pub fn pong(data: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked(Frame::pong(data.to_vec()), mask)
}

/// A close frame with status 1000 (normal closure).
pub fn close_normal(mask: [u8; 4]) -> Vec<u8> {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::frame::CloseFrame;
    masked(Frame::close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })), mask)
}

/// One server frame, its payload borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum In<'a> {
    Text(&'a [u8]),
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The close code, if the frame carried one.
    Close(Option<u16>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

/// The first complete frame at the start of `buf` and the bytes it took; `None` when the frame
/// is not complete yet. Server frames must be unmasked and unfragmented (neither server under
/// test fragments its frames).
pub fn next_frame(buf: &[u8]) -> Result<Option<(In<'_>, usize)>, FrameError> {
    let mut cur = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(FrameError(format!("bad frame header: {e}"))),
    };
    if header.mask.is_some() {
        return Err(FrameError("masked frame from the server".into()));
    }
    if len > MAX_PAYLOAD {
        return Err(FrameError(format!("frame of {len} bytes from the server")));
    }
    let start = cur.position() as usize;
    let end = start + len as usize;
    if end > buf.len() {
        return Ok(None);
    }
    let payload = &buf[start..end];
    let frame = match header.opcode {
        OpCode::Data(Data::Text) if header.is_final => In::Text(payload),
        OpCode::Data(Data::Binary) if header.is_final => In::Binary,
        OpCode::Control(Control::Ping) => In::Ping(payload),
        OpCode::Control(Control::Pong) => In::Pong,
        OpCode::Control(Control::Close) => {
            In::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
        }
        other => return Err(FrameError(format!("unexpected frame {other:?} (final: {})", header.is_final))),
    };
    Ok(Some((frame, end)))
}

/// Calls `f` for every complete frame at the start of `buf` and returns how many bytes they
/// took; an incomplete frame at the end is left for the next read.
pub fn parse_frames(buf: &[u8], mut f: impl FnMut(In<'_>)) -> Result<usize, FrameError> {
    let mut pos = 0usize;
    while let Some((frame, used)) = next_frame(&buf[pos..])? {
        f(frame);
        pos += used;
    }
    Ok(pos)
}

/// The kinds of server frame the benchmark tells apart (`"type"` of the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Join,
    Leave,
    Private,
    Sent,
    Group,
    Error,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 8] =
        [Kind::Welcome, Kind::Join, Kind::Leave, Kind::Private, Kind::Sent, Kind::Group, Kind::Error, Kind::Other];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Private => "private",
            Kind::Sent => "sent",
            Kind::Group => "group",
            Kind::Error => "error",
            Kind::Other => "other",
        }
    }
}

/// The string value of the top-level-looking key `key` in a compact or spaced JSON object:
/// finds `"key"`, then optional spaces, `:`, optional spaces and a string. The value is returned
/// raw (escapes not decoded), which is all the matching below needs. A key's name cannot occur
/// unescaped inside another string, so a message text cannot fake it.
pub fn str_field<'a>(json: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat_len = key.len() + 2;
    let mut from = 0;
    while from + pat_len <= json.len() {
        let at = from
            + json[from..]
                .windows(pat_len)
                .position(|w| w[0] == b'"' && &w[1..pat_len - 1] == key.as_bytes() && w[pat_len - 1] == b'"')?;
        let mut i = at + pat_len;
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if json.get(i) == Some(&b':') {
            i += 1;
            while json.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            if json.get(i) != Some(&b'"') {
                return None;
            }
            let start = i + 1;
            let mut j = start;
            while j < json.len() {
                match json[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(&json[start..j]),
                    _ => j += 1,
                }
            }
            return None;
        }
        from = at + 1;
    }
    None
}

pub fn kind(json: &[u8]) -> Kind {
    match str_field(json, "type") {
        Some(b"welcome") => Kind::Welcome,
        Some(b"join") => Kind::Join,
        Some(b"leave") => Kind::Leave,
        Some(b"private") => Kind::Private,
        Some(b"sent") => Kind::Sent,
        Some(b"group") => Kind::Group,
        Some(b"error") => Kind::Error,
        _ => Kind::Other,
    }
}

/// A benchmark message found in a frame's `"message"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub phase: u32,
    pub seq: u64,
    pub send_ns: u64,
}

/// The message text for a benchmark message, with `pad` bytes of padding.
pub fn mark_text(m: Mark, pad: usize) -> String {
    let mut s = format!("wsb:{}:{}:{}", m.phase, m.seq, m.send_ns);
    if pad > 0 {
        s.push(':');
        s.push_str(&"x".repeat(pad));
    }
    s
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The benchmark mark in a frame's `"message"`, if it carries one.
pub fn mark(json: &[u8]) -> Option<Mark> {
    let msg = str_field(json, "message")?;
    let rest = msg.strip_prefix(b"wsb:")?;
    let mut parts = rest.splitn(4, |&b| b == b':');
    let phase = parse_u64(parts.next()?)?;
    let seq = parse_u64(parts.next()?)?;
    let send_ns = parse_u64(parts.next()?)?;
    Some(Mark { phase: u32::try_from(phase).ok()?, seq, send_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        // Small frames only: 2-byte header, 4-byte mask.
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let len = (frame[1] & 0x7f) as usize;
        let mask = &frame[2..6];
        (frame[0], frame[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect())
    }

    #[test]
    fn client_frames_are_masked() {
        let f = text("/group hi", [1, 2, 3, 4]);
        assert_eq!(unmask(&f), (0x81, b"/group hi".to_vec()));
        assert_eq!(unmask(&ping(b"p", [9, 9, 9, 9])), (0x89, b"p".to_vec()));
        assert_eq!(unmask(&pong(b"q", [0, 1, 0, 1])), (0x8a, b"q".to_vec()));
        assert_eq!(unmask(&close_normal([5, 6, 7, 8])), (0x88, vec![0x03, 0xe8]));
    }

    fn server_text(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Frame::message(s.as_bytes().to_vec(), OpCode::Data(Data::Text), true).format(&mut out).unwrap();
        out
    }

    #[test]
    fn parses_complete_frames_and_keeps_the_tail() {
        let long = "y".repeat(300); // a 16-bit length
        let mut buf = server_text("{\"type\":\"welcome\"}");
        buf.extend(server_text(&long));
        buf.extend([0x89, 0x01, b'z']); // ping "z"
        buf.extend([0x88, 0x02, 0x0f, 0xa0]); // close 4000
        let whole = buf.len();
        buf.extend(&server_text("partial")[..4]);
        let mut seen = Vec::new();
        let used = parse_frames(&buf, |f| {
            seen.push(match f {
                In::Text(t) => format!("text {}", t.len()),
                In::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
                In::Close(c) => format!("close {c:?}"),
                other => format!("{other:?}"),
            })
        })
        .unwrap();
        assert_eq!(used, whole);
        assert_eq!(seen, ["text 18", "text 300", "ping z", "close Some(4000)"]);
        // Every split point: the frames before it parse, the rest waits.
        let buf = [server_text("abc"), server_text("defgh")].concat();
        for cut in 0..=buf.len() {
            let mut n = 0;
            let used = parse_frames(&buf[..cut], |_| n += 1).unwrap();
            let expect = if cut >= buf.len() {
                (2, buf.len())
            } else if cut >= 5 {
                (1, 5)
            } else {
                (0, 0)
            };
            assert_eq!((n, used), expect, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_masked_and_fragmented_server_frames() {
        assert!(parse_frames(&text("x", [1, 1, 1, 1]), |_| {}).is_err());
        assert!(parse_frames(&[0x01, 0x01, b'a'], |_| {}).is_err()); // text, not final
    }

    #[test]
    fn matches_frames_of_both_servers() {
        let m = Mark { phase: 2, seq: 17, send_ns: 123_456_789 };
        let msg = mark_text(m, 0);
        assert_eq!(msg, "wsb:2:17:123456789");
        // Our server (serde_json, keys sorted) and Node (JSON.stringify, insertion order).
        let ours = format!(
            r#"{{"from":"b-0","group":"bg-0","message":"{msg}","timestamp":"2026-11-26T08:00:00.000000Z","type":"group"}}"#
        );
        let node = format!(
            r#"{{"type":"private","from":"b-0","to":"b-1","message":"{msg}","timestamp":"2026-11-26T08:00:00.000Z"}}"#
        );
        let spaced = format!(r#"{{"type": "sent", "to": "b-1", "message" : "{}"}}"#, mark_text(m, 5));
        assert_eq!((kind(ours.as_bytes()), mark(ours.as_bytes())), (Kind::Group, Some(m)));
        assert_eq!((kind(node.as_bytes()), mark(node.as_bytes())), (Kind::Private, Some(m)));
        assert_eq!((kind(spaced.as_bytes()), mark(spaced.as_bytes())), (Kind::Sent, Some(m)));
    }

    #[test]
    fn foreign_text_does_not_match() {
        let join = br#"{"type":"join","client_id":"b-3","group":"bg-0","timestamp":"t"}"#;
        assert_eq!((kind(join), mark(join)), (Kind::Join, None));
        // A message that quotes a type and a mark is still a plain group message without a mark.
        let tricky = br#"{"type":"group","message":"x \"type\":\"error\" wsb:1:2:3","from":"z"}"#;
        assert_eq!((kind(tricky), mark(tricky)), (Kind::Group, None));
        let escaped_end = br#"{"message":"a\\","type":"welcome"}"#;
        assert_eq!(kind(escaped_end), Kind::Welcome);
        for bad in ["wsb:1:2", "wsb:1:x:3", "wsb::1:2", "wsb:1:2:99999999999999999999"] {
            let f = format!(r#"{{"type":"group","message":"{bad}"}}"#);
            assert_eq!(mark(f.as_bytes()), None, "{bad}");
        }
        assert_eq!(kind(b"not json"), Kind::Other);
        assert_eq!(str_field(br#"{"type":1}"#, "type"), None);
        assert_eq!(str_field(br#"{"a":"type","type":"x"}"#, "type"), Some(&b"x"[..]));
    }
}
