//! Several instances on one database (`CLUSTER=postgres`, the contract's "Several instances"):
//! the WebSocket hubs of all instances act as one, through PostgreSQL `LISTEN`/`NOTIFY` and two
//! presence tables (`sql/0014_cluster.sql`). No other service. See `docs/cluster.md`.
//!
//! - `wire.rs` — pure: the JSON of each notification, channel names, the payload-row rule.
//! - `link.rs` — the hub's `Link`: the bounded publishing queue, who is reachable.
//! - `publisher.rs` — the `cluster-pub` thread: sends the queue in order on its own connection.
//! - `listener.rs` — the `cluster-listen` thread: `LISTEN`s, applies, heartbeats, reaps.
//!
//! The hub (`ws/hub.rs`) holds every client of the cluster; the ones held elsewhere differ by one
//! field (`home: Remote`). The hub publishes through the link (an in-memory queue: no sender
//! ever waits on the database) and the listener applies through the hub's `remote_*` methods.
//!
//! # Threads, connections, queues
//!
//! Two threads, each with one `postgres::Client` of its own (outside the request pool), both
//! started by `start` and living as long as the process: `cluster-pub` and `cluster-listen`.
//! One queue: the publishing queue (`link.rs`), at most `link::QUEUE_ITEMS` items and
//! `CLUSTER_QUEUE_KB` of payload; full → a message is refused with an error frame to its
//! sender, a presence change is replaced by a later snapshot.
//!
//! # Order
//!
//! One publisher per instance sends in queue order on one connection, and PostgreSQL delivers
//! notifications in commit order: what one sender sends one recipient arrives in order, large
//! payloads included (their row is inserted in the same statement as the notification naming
//! it, and the listener reads it before looking at the next notification).
//!
//! # When the database is away
//!
//! Each instance goes on serving its own clients (local delivery never touches the database).
//! A message for a client on another instance is refused at once with an error frame
//! (`client_not_found`, saying why) — never queued for later, never dropped silently. Presence
//! changes are written again whole when the database returns, and the others apply the
//! difference with `join`/`leave` notices.
//!
//! With `CLUSTER=off` (the default) nothing here runs: no thread, no `LISTEN`, no write.
//!
//! Must never: hold a hub lock across I/O; block a WebSocket sender; log a message's text.

pub mod link;
pub mod listener;
pub mod publisher;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::DbConfig;
use crate::ws::Ws;
use link::{Item, PgLink, Shared};

/// The cluster settings (from the configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance's name (`INSTANCE_ID`; default host name and port).
    pub instance: String,
    /// `CLUSTER_PRESENCE_TIMEOUT_SECS`.
    pub presence_timeout: Duration,
    /// `CLUSTER_QUEUE_KB`, in bytes.
    pub queue_bytes: usize,
}

/// The default `INSTANCE_ID`: this machine's host name and the port the server listens on.
pub fn default_instance_id(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    format!("{host}:{port}")
}

/// A running cluster membership.
pub struct Cluster {
    tx: SyncSender<Item>,
}

/// Join the cluster: connect the hub to the link, start both threads.
pub fn start(ws: Arc<Ws>, db: &DbConfig, settings: &Settings) -> std::io::Result<Cluster> {
    let mut pg = db.pg_config().map_err(|e| std::io::Error::other(e.to_string()))?;
    pg.application_name("adcluster-cluster");
    let timing = listener::Timing::from_timeout(settings.presence_timeout);
    let (tx, rx) = sync_channel(link::QUEUE_ITEMS);
    let me: Arc<str> = Arc::from(settings.instance.as_str());
    let shared = Arc::new(Shared {
        my_channel: wire::instance_channel(&me),
        me,
        tx: tx.clone(),
        queued_bytes: AtomicUsize::new(0),
        max_bytes: settings.queue_bytes,
        publishing: AtomicBool::new(false),
        listening: AtomicBool::new(false),
        // At start: write our (empty) presence, clearing what an earlier run left behind.
        resync: AtomicBool::new(true),
        publisher_stale: AtomicBool::new(false),
        heard: Mutex::new(Default::default()),
        window: timing.stale,
        sending_since_ms: AtomicU64::new(0),
        born: Instant::now(),
    });
    ws.hub.set_link(Arc::new(PgLink(shared.clone())));
    let (s, p, w) = (shared.clone(), pg.clone(), ws.clone());
    std::thread::Builder::new().name("cluster-pub".into()).spawn(move || publisher::run(s, rx, p, w))?;
    std::thread::Builder::new().name("cluster-listen".into()).spawn(move || listener::run(shared, pg, ws, timing))?;
    crate::info!(
        "cluster: instance {} joining through PostgreSQL (presence timeout {:?})",
        settings.instance,
        settings.presence_timeout
    );
    Ok(Cluster { tx })
}

impl Cluster {
    /// Leave the cluster on shutdown: our rows go and the others drop our clients at once
    /// (instead of after the presence timeout). Waits at most `timeout`.
    pub fn stop(&self, timeout: Duration) {
        let (done_tx, done_rx) = sync_channel(1);
        let until = Instant::now() + timeout;
        let mut item = Item::Stop(done_tx);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < until => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = done_rx.recv_timeout(until.saturating_duration_since(Instant::now()));
    }
}
