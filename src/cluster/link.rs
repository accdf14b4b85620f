//! The hub's `Link` to the other instances: what both cluster threads share (the publishing
//! queue, who is reachable, whether a resynchronisation is due), and the `Link` the hub calls.
//!
//! The publishing queue is a `sync_channel` of `QUEUE_ITEMS` items whose payloads together stay
//! under `CLUSTER_QUEUE_KB` (an atomic byte count). Producers: the hub, from any session thread
//! or HTTP worker, with `try_send` only — a sender never waits on the database. Consumer: the
//! publisher thread. When it is full, a message is refused (its sender gets an error frame) and
//! a presence event is dropped and replaced by a later snapshot (`resync`).
//!
//! `heard` (instance → when we last heard from it on our listening connection) is locked alone,
//! briefly, by the listener and by the hub (under the hub lock: the order is hub, then `heard`).
//!
//! Must never: block, or call into the hub (the hub may be calling us under its lock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::wire;
use crate::ws::hub::{Event, Link, Unreachable};

/// Most items in the publishing queue (the byte bound usually bites first).
pub const QUEUE_ITEMS: usize = 16 * 1024;

/// A presence row to write in the same statement as the notification.
#[derive(Debug, Clone)]
pub enum Write {
    Upsert { id: String, serial: u64, group: Option<String>, at: SystemTime },
    Group { id: String, serial: u64, group: Option<String> },
    Delete { id: String, serial: u64 },
}

/// Where a notification goes.
#[derive(Debug, Clone)]
pub enum Channel {
    All,
    /// One instance's channel; its name.
    Instance(String),
}

/// One thing for the publisher to do.
pub enum Item {
    Notify {
        channel: Channel,
        json: String,
        write: Option<Write>,
        /// A message of this local client (told when it is lost).
        sender: Option<Sender>,
    },
    /// Leave the cluster (delete our rows, tell the others) and end; answers when done.
    Stop(SyncSender<()>),
}

/// The local client a queued message is from, and what to call the message when telling it the
/// message may be lost ("your message to b").
pub struct Sender {
    pub id: String,
    pub what: String,
}

impl Sender {
    fn new(id: &str, what: String) -> Option<Sender> {
        Some(Sender { id: id.to_string(), what })
    }
}

/// What the cluster threads and the link share.
pub struct Shared {
    pub me: Arc<str>,
    pub my_channel: String,
    pub tx: SyncSender<Item>,
    pub queued_bytes: AtomicUsize,
    pub max_bytes: usize,
    /// The publisher has a working connection.
    pub publishing: AtomicBool,
    /// The listener is connected, listening and has read the others' presence.
    pub listening: AtomicBool,
    /// Our whole presence must be written again (a presence event was lost, or we reconnected).
    pub resync: AtomicBool,
    /// The listener lost its connection: the publisher's is probably dead too (the sync client
    /// only notices on its next statement, which would lose a message). It reconnects first.
    pub publisher_stale: AtomicBool,
    /// When each other instance was last heard on the current listening connection.
    pub heard: Mutex<HashMap<Arc<str>, Instant>>,
    /// An instance not heard for this long cannot be reached.
    pub window: std::time::Duration,
    /// While the publisher is inside one statement (or the few of a snapshot): when it began, in milliseconds since
    /// `born` (0: it is not in one). A statement that does not come back (a PostgreSQL that
    /// hangs) would otherwise let messages be answered `sent` while they wait behind it, until
    /// the heartbeats run out (`window`).
    pub sending_since_ms: AtomicU64,
    /// The clock of `sending_since_ms`.
    pub born: Instant,
}

/// How long one publishing statement may take before new messages are refused as
/// unreachable rather than queued behind it.
pub const STUCK_AFTER_MS: u64 = 1000;

impl Shared {
    /// Milliseconds since `born`, at least 1 (0 means "not sending").
    pub fn now_ms(&self) -> u64 {
        (self.born.elapsed().as_millis() as u64).max(1)
    }

    /// The publisher has been inside one statement for more than [`STUCK_AFTER_MS`].
    pub fn publisher_stuck(&self) -> bool {
        let since = self.sending_since_ms.load(Ordering::SeqCst);
        since != 0 && self.now_ms().saturating_sub(since) > STUCK_AFTER_MS
    }

    /// Note that `instance` spoke. True when it was not known to be reachable (new, or silent
    /// past the window): then we heartbeat back at once, so it can reach us without waiting.
    pub fn heard(&self, instance: &str) -> bool {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        match h.get_mut(instance) {
            Some(t) => {
                let was_stale = t.elapsed() > self.window;
                *t = Instant::now();
                was_stale
            }
            None => {
                h.insert(Arc::from(instance), Instant::now());
                true
            }
        }
    }

    /// Whether `instance` was heard within the window.
    pub fn recently_heard(&self, instance: &str) -> bool {
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.get(instance).is_some_and(|t| t.elapsed() <= self.window)
    }

    pub fn forget(&self, instance: Option<&str>) {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        match instance {
            Some(i) => {
                h.remove(i);
            }
            None => h.clear(),
        }
    }

    /// Queue an item; `false` when the queue is full (items or bytes) or the publisher is gone.
    fn queue(&self, channel: Channel, json: String, write: Option<Write>, sender: Option<Sender>) -> bool {
        let n = json.len();
        if self.queued_bytes.fetch_add(n, Ordering::SeqCst) + n > self.max_bytes {
            self.queued_bytes.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        match self.tx.try_send(Item::Notify { channel, json, write, sender }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(n, Ordering::SeqCst);
                false
            }
        }
    }
}

/// The `Link` the hub holds.
pub struct PgLink(pub Arc<Shared>);

impl Link for PgLink {
    fn instance(&self) -> &str {
        &self.0.me
    }

    fn publish(&self, ev: Event<'_>) -> Result<(), Unreachable> {
        let s = &self.0;
        let json = wire::encode(&s.me, &ev);
        let (channel, write, sender) = match ev {
            Event::Connected { id, serial, group, connected_at } => (
                Channel::All,
                Some(Write::Upsert { id: id.into(), serial, group: group.map(Into::into), at: connected_at }),
                None,
            ),
            Event::Moved { id, serial, group } => {
                (Channel::All, Some(Write::Group { id: id.into(), serial, group: group.map(Into::into) }), None)
            }
            Event::Gone { id, serial } => (Channel::All, Some(Write::Delete { id: id.into(), serial }), None),
            Event::Private { from, to, instance, .. } => (
                Channel::Instance(wire::instance_channel(instance)),
                None,
                Sender::new(from, format!("your message to {to}")),
            ),
            Event::Group { from, group, .. } => {
                (Channel::All, None, Sender::new(from, format!("your message to the group {group}")))
            }
            Event::Broadcast { from, .. } => (Channel::All, None, Sender::new(from, "your message to everyone".into())),
        };
        if write.is_some() {
            // Presence: never an error for the caller. When it cannot be queued, the whole
            // presence of this instance is written again once the publisher can.
            if !s.publishing.load(Ordering::SeqCst) || !s.queue(channel, json, write, None) {
                s.resync.store(true, Ordering::SeqCst);
            }
            return Ok(());
        }
        if !s.publishing.load(Ordering::SeqCst) || !s.listening.load(Ordering::SeqCst) {
            return Err(Unreachable("the database that links the instances cannot be reached now".into()));
        }
        if s.publisher_stuck() {
            return Err(Unreachable("the database that links the instances does not answer now".into()));
        }
        if !s.queue(channel, json, None, sender) {
            return Err(Unreachable("the queue to the other instances is full (CLUSTER_QUEUE_KB)".into()));
        }
        Ok(())
    }

    fn reachable(&self, instance: &str) -> bool {
        let s = &self.0;
        if !s.publishing.load(Ordering::SeqCst) || !s.listening.load(Ordering::SeqCst) {
            return false;
        }
        let h = s.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.get(instance).is_some_and(|t| t.elapsed() <= s.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};
    use std::time::Duration;

    fn shared(max_bytes: usize, items: usize) -> (Arc<Shared>, Receiver<Item>) {
        let (tx, rx) = sync_channel(items);
        let s = Arc::new(Shared {
            me: Arc::from("me"),
            my_channel: wire::instance_channel("me"),
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            publishing: AtomicBool::new(true),
            listening: AtomicBool::new(true),
            resync: AtomicBool::new(false),
            publisher_stale: AtomicBool::new(false),
            heard: Mutex::new(HashMap::new()),
            window: Duration::from_secs(3),
            sending_since_ms: AtomicU64::new(0),
            born: Instant::now(),
        });
        (s, rx)
    }

    fn private(message: &str) -> Event<'_> {
        Event::Private { from: "a", to: "b", instance: "i2", message }
    }

    #[test]
    fn the_queue_bound_is_exact_in_bytes_and_items() {
        let one = wire::encode("me", &private("x")).len();
        let (s, rx) = shared(3 * one, 100);
        let link = PgLink(s.clone());
        for _ in 0..3 {
            assert_eq!(link.publish(private("x")), Ok(()));
        }
        // The fourth would pass the byte bound by one message: refused, with the setting named.
        let err = link.publish(private("x")).unwrap_err();
        assert!(err.0.contains("CLUSTER_QUEUE_KB"), "{}", err.0);
        // A presence event that does not fit is not an error: a snapshot is due instead.
        assert_eq!(link.publish(Event::Gone { id: "a", serial: 1 }), Ok(()));
        assert!(s.resync.load(Ordering::SeqCst));
        // Taking one out (what the publisher does) makes room for exactly one.
        let Ok(Item::Notify { json, sender, .. }) = rx.try_recv() else { panic!("an item") };
        s.queued_bytes.fetch_sub(json.len(), Ordering::SeqCst);
        // A message says whose it is and to whom, for the error its sender gets if it is lost.
        let sender = sender.expect("a message has a sender");
        assert_eq!((sender.id.as_str(), sender.what.as_str()), ("a", "your message to b"));
        assert_eq!(link.publish(private("x")), Ok(()));
        assert!(link.publish(private("x")).is_err());

        // The item bound holds too.
        let (s, _rx) = shared(usize::MAX, 2);
        let link = PgLink(s.clone());
        assert!(link.publish(private("x")).is_ok() && link.publish(private("x")).is_ok());
        assert!(link.publish(private("x")).is_err());
        assert_eq!(s.queued_bytes.load(Ordering::SeqCst), 2 * one, "a refused item leaves no bytes counted");
    }

    #[test]
    fn a_publisher_stuck_in_a_statement_refuses_new_messages() {
        let (s, _rx) = shared(usize::MAX, 10);
        let link = PgLink(s.clone());
        assert!(link.publish(private("x")).is_ok());
        // In a statement for half a second: still queued behind it.
        s.sending_since_ms.store(s.now_ms(), Ordering::SeqCst);
        assert!(link.publish(private("x")).is_ok());
        // For longer than STUCK_AFTER_MS (the clock moved on): the sender is told now.
        std::thread::sleep(Duration::from_millis(STUCK_AFTER_MS + 100));
        let err = link.publish(private("x")).expect_err("refused");
        assert!(err.0.contains("does not answer"), "{}", err.0);
        // The statement came back.
        s.sending_since_ms.store(0, Ordering::SeqCst);
        assert!(link.publish(private("x")).is_ok());
    }

    #[test]
    fn reachable_needs_both_connections_and_a_recent_word() {
        let (s, _rx) = shared(usize::MAX, 10);
        let link = PgLink(s.clone());
        assert!(!link.reachable("i2"), "never heard");
        assert!(s.heard("i2"), "first word: answer with a heartbeat");
        assert!(!s.heard("i2"), "known already");
        assert!(link.reachable("i2"));
        s.listening.store(false, Ordering::SeqCst);
        assert!(!link.reachable("i2"));
        assert!(link.publish(private("x")).is_err(), "refused while not listening");
        s.listening.store(true, Ordering::SeqCst);
        s.publishing.store(false, Ordering::SeqCst);
        assert!(!link.reachable("i2"));
        s.publishing.store(true, Ordering::SeqCst);
        s.forget(Some("i2"));
        assert!(!link.reachable("i2"));
        // Silent past the window: unreachable, and its next word is answered again.
        s.heard.lock().unwrap().insert(Arc::from("i3"), Instant::now() - Duration::from_secs(10));
        assert!(!link.reachable("i3"));
        assert!(s.heard("i3"));
    }
}
