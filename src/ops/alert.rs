//! Database alerts (the contract's "Degraded mode"): on each change of database state the
//! monitor calls `Alerter::fire`, which sends `{"type": "alert", "event": "database_down" |
//! "database_up", ...}` to the WebSocket group `admins` and, when `ALERT_COMMAND` is set, runs
//! that command (`sh -c`) with the same JSON on its standard input.
//!
//! Thread: one short-lived `alert-command` thread per state change (changes are at most one per
//! monitor check, i.e. per second), which waits for the command up to `COMMAND_TIMEOUT` and then
//! kills it. The monitor never waits for the command.
//! Must never: block the monitor, log the command's text (it may hold a webhook token), or put
//! a host, user or password in the alert (anyone may join `admins` unless `WS_AUTH=required`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::ws::protocol::encode_text;
use crate::ws::Ws;
use crate::{info, warn};

/// How long an `ALERT_COMMAND` may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket group that receives alerts.
pub const ADMINS: &str = "admins";

pub struct Alerter {
    pub ws: Arc<Ws>,
    pub command: Option<String>,
    /// The database, as it may be shown (`user@host:port/db`).
    pub database: String,
}

/// The alert frame for a state change.
/// The frame names no host, user or database: anyone may join the `admins` group when
/// `WS_AUTH=optional`. Which database it is goes to the log only.
pub fn alert_json(up: bool, at: SystemTime) -> Value {
    let (event, message) = if up {
        ("database_up", "The database is reachable again; writes are accepted.")
    } else {
        ("database_down", "The database is unreachable; serving in degraded mode.")
    };
    json!({
        "type": "alert",
        "event": event,
        "message": message,
        "timestamp": crate::util::time::rfc3339(at),
    })
}

impl Alerter {
    pub fn fire(&self, up: bool) {
        let alert = alert_json(up, SystemTime::now());
        let text = alert.to_string();
        let sent = self.ws.hub.send_to_group(ADMINS, &encode_text(text.clone()));
        info!(
            "alert {} ({}) sent to {sent} member(s) of the {ADMINS} group",
            alert["event"].as_str().unwrap_or(""),
            self.database
        );
        if let Some(cmd) = &self.command {
            let cmd = cmd.clone();
            let spawned = std::thread::Builder::new().name("alert-command".into()).spawn(move || run(&cmd, &text));
            if let Err(e) = spawned {
                warn!("cannot start the alert command thread: {e}");
            }
        }
    }
}

/// Run `sh -c cmd` with `payload` on its standard input; wait at most `COMMAND_TIMEOUT`.
fn run(cmd: &str, payload: &str) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!("ALERT_COMMAND could not be started: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is its own business.
        let _ = stdin.write_all(payload.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let until = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                warn!("ALERT_COMMAND failed ({status})");
                return;
            }
            Ok(None) if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                warn!("ALERT_COMMAND did not finish within {COMMAND_TIMEOUT:?}; killed");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                warn!("cannot wait for ALERT_COMMAND: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_shape() {
        let a = alert_json(false, std::time::UNIX_EPOCH);
        assert_eq!(a["type"], "alert");
        assert_eq!(a["event"], "database_down");
        assert_eq!(a["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(alert_json(true, SystemTime::now())["event"], "database_up");
        assert!(a.get("database").is_none(), "the frame must not name the database");
    }
}
