//! What instances say to each other, as plain functions: the JSON of each notification, the
//! channel names, and the choice between a plain `NOTIFY` and a payload row. No sockets, no
//! database, no locks; tested below.
//!
//! Every notification is one JSON object with the sender instance `o` and a kind `k`:
//!
//! | `k` | meaning | fields |
//! |---|---|---|
//! | `c` | a client connected to `o` | `id`, `s` (its serial on `o`), `g` (group or null), `t` (connected_at, µs since 1970) |
//! | `m` | it changed group | `id`, `s`, `g` |
//! | `x` | it is gone | `id`, `s` |
//! | `p` | a private message for a client of the instance listening on that channel | `f` (sender), `to`, `m` |
//! | `g` | a group message, for the instances `i` (those holding members when it was sent) | `f`, `g`, `m`, `i` |
//! | `b` | a message to everyone | `f`, `m` |
//! | `y` | snapshot: every client `o` holds, replacing what was known (empty: `o` stopped) | `c`: `[[id, s, g, t], ...]` |
//! | `h` | heartbeat of `o`'s listening connection | |
//! | `d` | instance `i` stopped heartbeating and was reaped (sent by the reaper, built in SQL) | `i` |
//!
//! A notification whose JSON exceeds `NOTIFY_MAX` goes into `ws_cluster_payloads` and the
//! notification carries `@<id>` (several readers: swept after a minute) or `@d<id>` (one reader,
//! which deletes the row). Must never: panic on what another instance (or anyone with access to
//! the database) sent; such a notification is skipped and logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::ws::hub::{Event, RemoteClient};

/// Largest payload sent inline. PostgreSQL refuses a `NOTIFY` payload of 8000 bytes or more;
/// a little room is kept.
pub const NOTIFY_MAX: usize = 7900;

/// The channel every instance listens on.
pub const ALL_CHANNEL: &str = "adcluster";

/// The channel of one instance (private messages for its clients). A digest of the name, so
/// any `INSTANCE_ID` makes a valid, short identifier.
pub fn instance_channel(instance: &str) -> String {
    let digest = Sha256::digest(instance.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("adcluster_{hex}")
}

pub fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

pub fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// The JSON of a hub event sent by `origin`.
pub fn encode(origin: &str, ev: &Event<'_>) -> String {
    let v = match ev {
        Event::Connected { id, serial, group, connected_at } => {
            json!({ "o": origin, "k": "c", "id": id, "s": serial, "g": group, "t": micros(*connected_at) })
        }
        Event::Moved { id, serial, group } => json!({ "o": origin, "k": "m", "id": id, "s": serial, "g": group }),
        Event::Gone { id, serial } => json!({ "o": origin, "k": "x", "id": id, "s": serial }),
        Event::Private { from, to, message, .. } => json!({ "o": origin, "k": "p", "f": from, "to": to, "m": message }),
        Event::Group { from, group, message, to } => {
            let to: Vec<&str> = to.iter().map(|i| &**i).collect();
            json!({ "o": origin, "k": "g", "f": from, "g": group, "m": message, "i": to })
        }
        Event::Broadcast { from, message } => json!({ "o": origin, "k": "b", "f": from, "m": message }),
    };
    v.to_string()
}

/// The snapshot of `origin`'s clients.
pub fn encode_snapshot(origin: &str, clients: &[RemoteClient]) -> String {
    let list: Vec<serde_json::Value> =
        clients.iter().map(|c| json!([c.id, c.serial, c.group, micros(c.connected_at)])).collect();
    json!({ "o": origin, "k": "y", "c": list }).to_string()
}

pub fn encode_heartbeat(origin: &str) -> String {
    json!({ "o": origin, "k": "h" }).to_string()
}

/// A notification as received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Incoming {
    /// The instance that sent it.
    pub o: String,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "k")]
pub enum Body {
    #[serde(rename = "c")]
    Connected { id: String, s: u64, g: Option<String>, t: i64 },
    #[serde(rename = "m")]
    Moved { id: String, s: u64, g: Option<String> },
    #[serde(rename = "x")]
    Gone { id: String, s: u64 },
    #[serde(rename = "p")]
    Private { f: String, to: String, m: String },
    #[serde(rename = "g")]
    Group {
        f: String,
        g: String,
        m: String,
        /// The instances that held members when it was sent (empty: every instance).
        #[serde(default)]
        i: Vec<String>,
    },
    #[serde(rename = "b")]
    Broadcast { f: String, m: String },
    #[serde(rename = "y")]
    Snapshot { c: Vec<(String, u64, Option<String>, i64)> },
    #[serde(rename = "h")]
    Heartbeat,
    #[serde(rename = "d")]
    Dead { i: String },
}

/// Decode a notification's JSON.
pub fn decode(json: &str) -> Result<Incoming, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// The clients of a snapshot.
pub fn snapshot_clients(c: Vec<(String, u64, Option<String>, i64)>) -> Vec<RemoteClient> {
    c.into_iter()
        .map(|(id, serial, group, t)| RemoteClient { id, serial, group, connected_at: from_micros(t) })
        .collect()
}

/// What a notification's payload points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The JSON itself.
    Inline(&'a str),
    /// A row of `ws_cluster_payloads`; `delete`: this reader is the only one and removes it.
    Row { id: i64, delete: bool },
}

/// Read a notification payload. `None` for a reference that does not parse.
pub fn payload(text: &str) -> Option<Payload<'_>> {
    match text.strip_prefix('@') {
        None => Some(Payload::Inline(text)),
        Some(rest) => match rest.strip_prefix('d') {
            Some(n) => n.parse().ok().map(|id| Payload::Row { id, delete: true }),
            None => rest.parse().ok().map(|id| Payload::Row { id, delete: false }),
        },
    }
}

/// Whether `json` must go through a payload row.
pub fn too_big(json: &str) -> bool {
    json.len() > NOTIFY_MAX
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn events_round_trip() {
        let t = from_micros(1_700_000_000_123_456);
        let to: [Arc<str>; 2] = [Arc::from("n1"), Arc::from("n3")];
        let cases: Vec<(Event, Body)> = vec![
            (
                Event::Connected { id: "a", serial: 7, group: Some("g"), connected_at: t },
                Body::Connected { id: "a".into(), s: 7, g: Some("g".into()), t: 1_700_000_000_123_456 },
            ),
            (Event::Moved { id: "a", serial: 7, group: None }, Body::Moved { id: "a".into(), s: 7, g: None }),
            (Event::Gone { id: "a", serial: 7 }, Body::Gone { id: "a".into(), s: 7 }),
            (
                Event::Private { from: "a", to: "b", instance: "i2", message: "hi \"there\"\n" },
                Body::Private { f: "a".into(), to: "b".into(), m: "hi \"there\"\n".into() },
            ),
            (
                Event::Group { from: "server", group: "g", message: "x", to: &to },
                Body::Group { f: "server".into(), g: "g".into(), m: "x".into(), i: vec!["n1".into(), "n3".into()] },
            ),
            (Event::Broadcast { from: "a", message: "é" }, Body::Broadcast { f: "a".into(), m: "é".into() }),
        ];
        for (ev, body) in cases {
            let text = encode("host:8000", &ev);
            assert_eq!(decode(&text).unwrap(), Incoming { o: "host:8000".into(), body }, "{text}");
        }
        let snap = vec![
            RemoteClient { id: "a".into(), serial: 1, group: None, connected_at: t },
            RemoteClient { id: "b".into(), serial: 2, group: Some("g".into()), connected_at: t },
        ];
        let Body::Snapshot { c } = decode(&encode_snapshot("i", &snap)).unwrap().body else { panic!() };
        assert_eq!(snapshot_clients(c), snap);
        assert_eq!(decode(&encode_heartbeat("i")).unwrap().body, Body::Heartbeat);
        // What the reaper builds in SQL.
        assert_eq!(decode(r#"{"o":"i1","k":"d","i":"i2"}"#).unwrap().body, Body::Dead { i: "i2".into() });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in ["", "{", "[]", r#"{"o":"i"}"#, r#"{"o":"i","k":"zz"}"#, r#"{"o":"i","k":"c","id":1}"#] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_references() {
        assert_eq!(payload("{\"o\":1}"), Some(Payload::Inline("{\"o\":1}")));
        assert_eq!(payload("@42"), Some(Payload::Row { id: 42, delete: false }));
        assert_eq!(payload("@d42"), Some(Payload::Row { id: 42, delete: true }));
        assert_eq!(payload("@x"), None);
        assert_eq!(payload("@d"), None);
    }

    #[test]
    fn the_notify_limit_is_respected_at_the_edge() {
        // A message whose JSON is exactly at the limit goes inline; one byte more does not.
        let base = encode("i", &Event::Private { from: "a", to: "b", instance: "j", message: "" });
        let fill = "x".repeat(NOTIFY_MAX - base.len());
        let at = encode("i", &Event::Private { from: "a", to: "b", instance: "j", message: &fill });
        assert_eq!(at.len(), NOTIFY_MAX);
        assert!(!too_big(&at));
        let over = encode("i", &Event::Private { from: "a", to: "b", instance: "j", message: &format!("{fill}x") });
        assert!(too_big(&over));
        // Multi-byte characters count in bytes, as PostgreSQL counts them.
        let wide = encode("i", &Event::Private { from: "a", to: "b", instance: "j", message: &"é".repeat(4000) });
        assert!(too_big(&wide));
    }

    #[test]
    fn channels_are_short_identifiers() {
        let c = instance_channel("a very long host name with spaces and : colons:8000");
        assert!(c.len() <= 63 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{c}");
        assert_ne!(instance_channel("h:1"), instance_channel("h:2"));
        assert_eq!(instance_channel("h:1"), instance_channel("h:1"));
    }
}
