//! The WebSocket protocol of the contract, as plain functions over strings and bytes: parse a
//! client's text frame into a `Command`, build every server frame (JSON with `type` and an
//! RFC 3339 `timestamp`) and encode it once into WebSocket frame bytes, validate client ids and
//! group names.
//!
//! Must never: touch a socket, a lock or the clock beyond reading the time for `timestamp`.
//! Its one piece of state is a counter: the bytes of encoded frames alive in the process
//! (`live_frame_bytes`, kept by `FrameBytes` itself). Everything here is tested without a network.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};

/// Longest client id or group name, in characters (all ASCII, so also bytes).
pub const NAME_MAX: usize = 64;

/// Largest client message (the whole text of a frame), in bytes. A larger one closes the
/// connection with 1009.
pub const MESSAGE_MAX: usize = 64 * 1024;

/// The reserved group: the server's alerts go to it, and only a client connected with a
/// superuser's token may be in it.
pub const ADMINS_GROUP: &str = "admins";

/// Deepest JSON nesting a client frame may have before we refuse to parse it. Parsing is
/// recursive and session threads have small stacks; no command needs more than one level.
pub const JSON_DEPTH_MAX: usize = 16;

/// One encoded WebSocket frame, shared by every recipient of a fan-out.
pub type Encoded = Arc<FrameBytes>;

/// Bytes of every encoded frame alive in this process (a frame shared by many queues counts once),
/// so that the sum of all outbound queues can be held to `WS_QUEUE_TOTAL_MB` (`session::Outbound`).
/// Owner: [`FrameBytes`], which adds its length when made and takes it back when dropped; nobody
/// else writes it. Bound: what the queues may hold, plus the frames being fanned out right now.
static LIVE_FRAME_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The bytes of one encoded frame, counted in [`live_frame_bytes`] while they exist.
pub struct FrameBytes(Box<[u8]>);

impl FrameBytes {
    fn new(bytes: Vec<u8>) -> FrameBytes {
        let bytes = bytes.into_boxed_slice();
        LIVE_FRAME_BYTES.fetch_add(bytes.len(), Ordering::Relaxed);
        FrameBytes(bytes)
    }
}

impl Drop for FrameBytes {
    fn drop(&mut self) {
        LIVE_FRAME_BYTES.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

impl std::ops::Deref for FrameBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for FrameBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameBytes({} bytes)", self.0.len())
    }
}

/// Bytes of all encoded frames alive in this process: queued for clients, or being sent.
pub fn live_frame_bytes() -> usize {
    LIVE_FRAME_BYTES.load(Ordering::Relaxed)
}

/// Whether `name` is a valid client id or group name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/send_to <id> <message>` or `{"action": "send_to", ...}`.
    SendTo { to: String, message: String },
    /// `/group <message>` or `{"action": "group", ...}`.
    Group { message: String },
    /// `/join <group>` or `{"action": "join", ...}`.
    Join { group: String },
    /// `/leave`.
    Leave,
    /// `/groups`.
    Groups,
    /// `/members [<group>]`; `None`: the sender's own group.
    Members { group: Option<String> },
    /// Text not starting with `/`: to the sender's group, or to everyone when it has none.
    Text { message: String },
}

/// Error codes of the contract's `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ClientNotFound,
    NotInGroup,
    UnknownCommand,
    BadRequest,
    Unsupported,
    /// A reserved group (`admins`) without a superuser's token.
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ClientNotFound => "client_not_found",
            ErrorCode::NotInGroup => "not_in_group",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A problem with a client frame: goes back to the sender as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError { code, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ClientError {
        ClientError::new(ErrorCode::BadRequest, message)
    }
}

/// Parse one client text frame.
///
/// - Text starting with `/` is a command. Arguments are separated by single spaces; the message
///   of `/send_to` and `/group` is everything after its separator, spaces included.
/// - Text starting with `{` (after leading whitespace) is a JSON frame: it must be an object
///   with an `action` (`send_to`, `group`, `join`; also `leave`, `groups`, `members`).
///   Anything that does not parse is `bad_request`.
/// - Anything else is a plain message (`Command::Text`).
pub fn parse_client_text(text: &str) -> Result<Command, ClientError> {
    if let Some(command) = text.strip_prefix('/') {
        return parse_slash(command);
    }
    if text.trim_start().starts_with('{') {
        return parse_json(text);
    }
    Ok(Command::Text { message: text.to_string() })
}

fn parse_slash(text: &str) -> Result<Command, ClientError> {
    let (name, args) = match text.split_once(' ') {
        Some((n, a)) => (n, Some(a)),
        None => (text, None),
    };
    match name {
        "send_to" => {
            let usage = "usage: /send_to <client_id> <message>";
            let (to, message) = args.and_then(|a| a.split_once(' ')).ok_or_else(|| ClientError::bad(usage))?;
            check_name("client_id", to)?;
            check_message(message)?;
            Ok(Command::SendTo { to: to.to_string(), message: message.to_string() })
        }
        "group" => {
            let message = args.ok_or_else(|| ClientError::bad("usage: /group <message>"))?;
            check_message(message)?;
            Ok(Command::Group { message: message.to_string() })
        }
        "join" => {
            let group = args.ok_or_else(|| ClientError::bad("usage: /join <group>"))?;
            check_name("group", group)?;
            Ok(Command::Join { group: group.to_string() })
        }
        "leave" => no_args(args, "/leave").map(|_| Command::Leave),
        "groups" => no_args(args, "/groups").map(|_| Command::Groups),
        "members" => match args {
            None => Ok(Command::Members { group: None }),
            Some(g) => {
                check_name("group", g)?;
                Ok(Command::Members { group: Some(g.to_string()) })
            }
        },
        _ => Err(ClientError::new(
            ErrorCode::UnknownCommand,
            format!(
                "unknown command /{}; commands: /send_to, /group, /join, /leave, /groups, /members",
                truncate(name, 40)
            ),
        )),
    }
}

fn no_args(args: Option<&str>, command: &str) -> Result<(), ClientError> {
    match args {
        None => Ok(()),
        Some(_) => Err(ClientError::bad(format!("{command} takes no arguments"))),
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ClientError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ClientError::bad(format!("invalid {what} {:?}: use 1 to 64 of A-Z a-z 0-9 _ . -", truncate(name, 70))))
    }
}

fn check_message(message: &str) -> Result<(), ClientError> {
    if message.is_empty() {
        Err(ClientError::bad("the message is empty"))
    } else {
        Ok(())
    }
}

/// At most `n` characters of `s`, for echoing client input in an error.
fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// How deep `text` nests JSON arrays and objects (strings are skipped). A cheap scan that
/// lets us refuse absurd nesting before a recursive parser sees it.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn parse_json(text: &str) -> Result<Command, ClientError> {
    if json_depth(text) > JSON_DEPTH_MAX {
        return Err(ClientError::bad("JSON frame nested too deeply"));
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| ClientError::bad(format!("malformed JSON frame: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ClientError::bad("a JSON frame must be an object with an \"action\""));
    };
    let field = |name: &str| -> Result<Option<&str>, ClientError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ClientError::bad(format!("\"{name}\" must be a string"))),
        }
    };
    let required = |name: &str| -> Result<&str, ClientError> {
        field(name)?.ok_or_else(|| ClientError::bad(format!("\"{name}\" is required")))
    };
    let action = field("action")?.ok_or_else(|| ClientError::bad("a JSON frame needs an \"action\""))?;
    match action {
        "send_to" => {
            let to = required("to")?;
            check_name("client_id", to)?;
            let message = required("message")?;
            check_message(message)?;
            Ok(Command::SendTo { to: to.to_string(), message: message.to_string() })
        }
        "group" => {
            let message = required("message")?;
            check_message(message)?;
            Ok(Command::Group { message: message.to_string() })
        }
        "join" => {
            let group = required("group")?;
            check_name("group", group)?;
            Ok(Command::Join { group: group.to_string() })
        }
        "leave" => Ok(Command::Leave),
        "groups" => Ok(Command::Groups),
        "members" => match field("group")? {
            None => Ok(Command::Members { group: None }),
            Some(g) => {
                check_name("group", g)?;
                Ok(Command::Members { group: Some(g.to_string()) })
            }
        },
        other => Err(ClientError::new(
            ErrorCode::UnknownCommand,
            format!("unknown action {:?}; actions: send_to, group, join, leave, groups, members", truncate(other, 40)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Server frames

/// `{"type": ..., <fields>, "timestamp": ...}` as JSON text. `fields` must be an object.
fn frame_json(kind: &str, fields: Value) -> String {
    let mut map = match fields {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    map.insert("type".into(), Value::from(kind));
    map.insert("timestamp".into(), Value::from(crate::util::time::rfc3339(std::time::SystemTime::now())));
    Value::Object(map).to_string()
}

/// Every frame the server sends, before encoding.
#[derive(Debug, Clone)]
pub enum ServerFrame<'a> {
    Welcome { client_id: &'a str, group: Option<&'a str> },
    Join { client_id: &'a str, group: &'a str },
    Leave { client_id: &'a str, group: &'a str },
    Private { from: &'a str, to: &'a str, message: &'a str },
    Sent { to: &'a str, message: &'a str },
    Group { from: &'a str, group: &'a str, message: &'a str },
    Joined { group: &'a str },
    Left { group: &'a str },
    Groups { groups: &'a [GroupInfo] },
    Members { group: &'a str, members: &'a [Arc<str>] },
    Broadcast { from: &'a str, message: &'a str },
    Error { code: ErrorCode, message: &'a str },
}

/// A group and its size, as `/groups` and `GET /api/ws/groups` list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInfo {
    pub name: String,
    pub member_count: usize,
}

impl ServerFrame<'_> {
    /// The JSON text of the frame, with `type` and `timestamp`.
    pub fn to_json(&self) -> String {
        match self {
            ServerFrame::Welcome { client_id, group } => {
                frame_json("welcome", json!({ "client_id": client_id, "group": group }))
            }
            ServerFrame::Join { client_id, group } => {
                frame_json("join", json!({ "client_id": client_id, "group": group }))
            }
            ServerFrame::Leave { client_id, group } => {
                frame_json("leave", json!({ "client_id": client_id, "group": group }))
            }
            ServerFrame::Private { from, to, message } => {
                frame_json("private", json!({ "from": from, "to": to, "message": message }))
            }
            ServerFrame::Sent { to, message } => frame_json("sent", json!({ "to": to, "message": message })),
            ServerFrame::Group { from, group, message } => {
                frame_json("group", json!({ "from": from, "group": group, "message": message }))
            }
            ServerFrame::Joined { group } => frame_json("joined", json!({ "group": group })),
            ServerFrame::Left { group } => frame_json("left", json!({ "group": group })),
            ServerFrame::Groups { groups } => frame_json("groups", json!({ "groups": groups })),
            ServerFrame::Members { group, members } => {
                let members: Vec<&str> = members.iter().map(|m| &**m).collect();
                frame_json("members", json!({ "group": group, "members": members }))
            }
            ServerFrame::Broadcast { from, message } => {
                frame_json("broadcast", json!({ "from": from, "message": message }))
            }
            ServerFrame::Error { code, message } => {
                frame_json("error", json!({ "error": code.as_str(), "message": message }))
            }
        }
    }

    /// The frame encoded once as a WebSocket text frame, ready for any number of recipients.
    pub fn encode(&self) -> Encoded {
        encode_text(self.to_json())
    }
}

fn format_frame(frame: Frame) -> Encoded {
    let mut out = Vec::with_capacity(frame.len());
    // Formatting into a Vec cannot fail.
    frame.format(&mut out).expect("formatting a frame into memory");
    Arc::new(FrameBytes::new(out))
}

/// An unmasked (server-to-client) text frame.
pub fn encode_text(text: String) -> Encoded {
    format_frame(Frame::message(text.into_bytes(), OpCode::Data(OpData::Text), true))
}

/// A ping frame with an empty payload.
pub fn encode_ping() -> Encoded {
    format_frame(Frame::ping(Vec::new()))
}

/// A pong answering a ping with `payload`.
pub fn encode_pong(payload: &[u8]) -> Encoded {
    format_frame(Frame::pong(payload.to_vec()))
}

/// A close frame with a code and a reason (at most 123 bytes; longer reasons are cut).
pub fn encode_close(code: u16, reason: &str) -> Encoded {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let close = CloseFrame { code: CloseCode::from(code), reason: reason[..end].to_string().into() };
    format_frame(Frame::close(Some(close)))
}

/// The length of the whole frame (header and payload) at the start of `bytes`, once all of it
/// is there. For tests and diagnostics, like [`decode_frame`].
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    let mut cursor = std::io::Cursor::new(bytes);
    let (_, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor).ok()??;
    let total = cursor.position() as usize + len as usize;
    (bytes.len() >= total).then_some(total)
}

/// Decode one unmasked frame produced by the `encode_*` functions: (opcode byte, payload).
/// For tests and diagnostics; the server never parses its own frames.
pub fn decode_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut cursor = std::io::Cursor::new(bytes);
    let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor).ok()??;
    let start = cursor.position() as usize;
    let payload = bytes.get(start..start + len as usize)?.to_vec();
    let opcode = match header.opcode {
        OpCode::Data(OpData::Continue) => 0x0,
        OpCode::Data(OpData::Text) => 0x1,
        OpCode::Data(OpData::Binary) => 0x2,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close) => 0x8,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping) => 0x9,
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Pong) => 0xA,
        _ => 0xF,
    };
    Some((opcode, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(text: &str) -> Command {
        parse_client_text(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    fn err(text: &str) -> ErrorCode {
        parse_client_text(text).expect_err(text).code
    }

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("A-z_0.9"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name(""));
        for bad in ["a b", "a/b", "é", "a:b", "a%20", "a\n", "<script>"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn slash_commands() {
        assert_eq!(
            cmd("/send_to bob hello  world "),
            Command::SendTo { to: "bob".into(), message: "hello  world ".into() }
        );
        assert_eq!(cmd("/group hi there"), Command::Group { message: "hi there".into() });
        assert_eq!(cmd("/join room-1"), Command::Join { group: "room-1".into() });
        assert_eq!(cmd("/leave"), Command::Leave);
        assert_eq!(cmd("/groups"), Command::Groups);
        assert_eq!(cmd("/members"), Command::Members { group: None });
        assert_eq!(cmd("/members g"), Command::Members { group: Some("g".into()) });
    }

    #[test]
    fn malformed_commands_are_bad_requests() {
        for text in [
            "/send_to",
            "/send_to bob",
            "/send_to bob ",
            "/send_to b@d hi",
            "/group",
            "/group ",
            "/join",
            "/join a b",
            "/join ",
            "/leave now",
            "/groups x",
            "/members bad name",
        ] {
            assert_eq!(err(text), ErrorCode::BadRequest, "{text:?}");
        }
        assert_eq!(err("/nope"), ErrorCode::UnknownCommand);
        assert_eq!(err("/"), ErrorCode::UnknownCommand);
        assert_eq!(err("/SEND_TO bob hi"), ErrorCode::UnknownCommand);
    }

    #[test]
    fn plain_text() {
        assert_eq!(cmd("hello"), Command::Text { message: "hello".into() });
        assert_eq!(cmd(" /not a command"), Command::Text { message: " /not a command".into() });
        assert_eq!(cmd("[1, 2]"), Command::Text { message: "[1, 2]".into() });
        assert_eq!(cmd(""), Command::Text { message: "".into() });
    }

    #[test]
    fn json_frames() {
        assert_eq!(
            cmd(r#"{"action": "send_to", "to": "bob", "message": "hi"}"#),
            Command::SendTo { to: "bob".into(), message: "hi".into() }
        );
        assert_eq!(cmd(r#" {"action":"group","message":"m"}"#), Command::Group { message: "m".into() });
        assert_eq!(cmd(r#"{"action":"join","group":"g"}"#), Command::Join { group: "g".into() });
        assert_eq!(cmd(r#"{"action":"leave"}"#), Command::Leave);
        assert_eq!(cmd(r#"{"action":"groups"}"#), Command::Groups);
        assert_eq!(cmd(r#"{"action":"members","group":"g"}"#), Command::Members { group: Some("g".into()) });
        for bad in [
            "{",
            "{not json}",
            r#"{"message":"no action"}"#,
            r#"{"action":7}"#,
            r#"{"action":"send_to","message":"no recipient"}"#,
            r#"{"action":"send_to","to":"bob"}"#,
            r#"{"action":"send_to","to":"bob","message":5}"#,
            r#"{"action":"send_to","to":"b b","message":"x"}"#,
            r#"{"action":"join"}"#,
            r#"{"action":"join","group":""}"#,
            r#"{"action":"group","message":""}"#,
        ] {
            assert_eq!(err(bad), ErrorCode::BadRequest, "{bad}");
        }
        assert_eq!(err(r#"{"action":"dance"}"#), ErrorCode::UnknownCommand);
    }

    #[test]
    fn deep_json_is_refused_without_parsing() {
        let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert_eq!(err(&deep), ErrorCode::BadRequest);
        assert_eq!(json_depth(r#"{"a":"{{{{[[[[","b":[1,{"c":2}]}"#), 3);
        assert_eq!(json_depth(r#"{"a":"\"{{"}"#), 1);
        assert_eq!(json_depth("plain"), 0);
    }

    fn decoded_json(e: &Encoded) -> Value {
        let (op, payload) = decode_frame(e).expect("a frame");
        assert_eq!(op, 0x1, "a text frame");
        serde_json::from_slice(&payload).unwrap()
    }

    #[test]
    fn server_frames_have_type_and_timestamp() {
        let members: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let groups = vec![GroupInfo { name: "g".into(), member_count: 2 }];
        let cases = [
            (ServerFrame::Welcome { client_id: "a", group: None }, json!({"client_id": "a", "group": null})),
            (ServerFrame::Join { client_id: "a", group: "g" }, json!({"client_id": "a", "group": "g"})),
            (ServerFrame::Leave { client_id: "a", group: "g" }, json!({"client_id": "a", "group": "g"})),
            (
                ServerFrame::Private { from: "a", to: "b", message: "m" },
                json!({"from": "a", "to": "b", "message": "m"}),
            ),
            (ServerFrame::Sent { to: "b", message: "m" }, json!({"to": "b", "message": "m"})),
            (
                ServerFrame::Group { from: "a", group: "g", message: "m" },
                json!({"from": "a", "group": "g", "message": "m"}),
            ),
            (ServerFrame::Joined { group: "g" }, json!({"group": "g"})),
            (ServerFrame::Left { group: "g" }, json!({"group": "g"})),
            (ServerFrame::Groups { groups: &groups }, json!({"groups": [{"name": "g", "member_count": 2}]})),
            (ServerFrame::Members { group: "g", members: &members }, json!({"group": "g", "members": ["a", "b"]})),
            (ServerFrame::Broadcast { from: "a", message: "m" }, json!({"from": "a", "message": "m"})),
            (
                ServerFrame::Error { code: ErrorCode::NotInGroup, message: "x" },
                json!({"error": "not_in_group", "message": "x"}),
            ),
        ];
        for (frame, fields) in cases {
            let v = decoded_json(&frame.encode());
            let kind = format!("{frame:?}").split([' ', '{']).next().unwrap().to_lowercase();
            assert_eq!(v["type"], kind.as_str(), "{v}");
            let ts = v["timestamp"].as_str().unwrap();
            assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
            for (k, want) in fields.as_object().unwrap() {
                assert_eq!(&v[k], want, "{kind}.{k}");
            }
            assert_eq!(v.as_object().unwrap().len(), fields.as_object().unwrap().len() + 2, "{v}");
        }
    }

    #[test]
    fn control_frames() {
        let (op, payload) = decode_frame(&encode_close(4000, "replaced")).unwrap();
        assert_eq!(op, 0x8);
        assert_eq!(&payload[..2], &4000u16.to_be_bytes());
        assert_eq!(&payload[2..], b"replaced");
        let long = "é".repeat(100);
        let (_, payload) = decode_frame(&encode_close(1008, &long)).unwrap();
        assert!(payload.len() <= 125 && std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(decode_frame(&encode_ping()).unwrap(), (0x9, vec![]));
        assert_eq!(decode_frame(&encode_pong(b"xy")).unwrap(), (0xA, b"xy".to_vec()));
        // A big text frame uses the 64-bit length form and round-trips.
        let big = "z".repeat(70_000);
        let (op, payload) = decode_frame(&encode_text(big.clone())).unwrap();
        assert_eq!((op, payload.len()), (1, big.len()));
    }

    /// At each edge of the three length forms (7-bit, 16-bit, 64-bit): the whole frame is
    /// measured, and a frame one byte short is not there yet.
    #[test]
    fn frame_len_measures_whole_frames_only() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let frame = encode_text("a".repeat(n));
            assert_eq!(frame_len(&frame), Some(frame.len()), "{n}");
            assert_eq!(frame_len(&frame[..frame.len() - 1]), None, "{n}");
            let mut two = frame.to_vec();
            two.extend_from_slice(&frame);
            assert_eq!(frame_len(&two), Some(frame.len()), "{n}");
        }
        assert_eq!(frame_len(&[0x81]), None);
    }
}
