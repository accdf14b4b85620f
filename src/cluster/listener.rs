//! The listener thread (`cluster-listen`): one dedicated connection (not from the request
//! pool) that `LISTEN`s on the shared channel and on this instance's own, applies what it hears
//! to the hub in the order it arrives, heartbeats, and reaps instances that stopped
//! heartbeating. It reconnects by itself every `RETRY` while the database is away.
//!
//! On each (re)connection, in this order: `LISTEN`; register this instance; ask the publisher
//! for a snapshot of our clients (which also clears the rows of an earlier run with the same
//! `INSTANCE_ID`; the publisher writes it once we are listening, and publishes nothing before:
//! see `publisher.rs`); read every other instance's clients from `ws_clients` and make the hub agree
//! (with `join`/`leave` notices for what changed meanwhile). Listening before reading means no
//! change is missed; one seen twice is applied once (every remote client carries its origin).
//!
//! Every `interval` (`CLUSTER_PRESENCE_TIMEOUT_SECS` / 5) it updates `last_seen` and sends a
//! heartbeat notification (which is how the others know our listener is alive, so they can
//! reach our clients). An instance whose `last_seen` is older than 3 intervals is reaped —
//! its rows deleted and a `d` notification sent in one statement, so exactly one instance does
//! it — and every instance drops its clients with `leave` notices: within 4 intervals of its
//! death, inside the timeout. A freshly (re)connected listener waits 3 intervals before reaping,
//! so that after an outage the others have time to heartbeat again.
//!
//! Must never: hold a hub lock (the hub's `remote_*` methods take and drop it); block on a
//! client (the hub only queues).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::link::Shared;
use super::publisher::RETRY;
use super::wire::{self, Body, Payload};
use crate::ws::hub::{Origin, RemoteClient};
use crate::ws::Ws;

/// Most notifications taken before the heartbeat clock is looked at again.
const BATCH: usize = 512;

/// Payload rows older than this are swept (a listener that far behind has lost its place).
const PAYLOAD_TTL_SECS: f64 = 60.0;
/// How often the listener sweeps old payload rows: a row lives at most `PAYLOAD_TTL_SECS` plus
/// this plus one heartbeat interval. (Every 50 heartbeats it was 150 s at the default timing.)
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The heartbeat clock.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat period.
    pub interval: Duration,
    /// An instance silent this long is reaped (and, on our side, unreachable).
    pub stale: Duration,
}

impl Timing {
    pub fn from_timeout(timeout: Duration) -> Timing {
        let interval = (timeout / 5).max(Duration::from_millis(100));
        Timing { interval, stale: interval * 3 }
    }
}

pub fn run(shared: Arc<Shared>, pg: postgres::Config, ws: Arc<Ws>, timing: Timing) {
    let mut down_logged = false;
    loop {
        let result = session(&shared, &pg, &ws, timing, &mut down_logged);
        shared.listening.store(false, Ordering::SeqCst);
        shared.publisher_stale.store(true, Ordering::SeqCst);
        shared.forget(None);
        if let Err(e) = result {
            if !down_logged {
                crate::warn!(
                    "cluster: listening connection unavailable: {e}; messages to clients on other instances \
                     are refused until it is back"
                );
                down_logged = true;
            }
        }
        std::thread::sleep(RETRY);
    }
}

fn session(
    shared: &Shared,
    pg: &postgres::Config,
    ws: &Ws,
    timing: Timing,
    down_logged: &mut bool,
) -> Result<(), String> {
    let mut c = pg.connect(postgres::NoTls).map_err(|e| e.to_string())?;
    test_delay();
    c.batch_execute(&format!("LISTEN {}; LISTEN {}", wire::ALL_CHANNEL, shared.my_channel))
        .map_err(|e| e.to_string())?;
    register(&mut c, shared)?;
    shared.resync.store(true, Ordering::SeqCst);
    bootstrap(&mut c, shared, ws)?;
    shared.listening.store(true, Ordering::SeqCst);
    if std::mem::take(down_logged) {
        crate::info!("cluster: listening again; cross-instance delivery resumed");
    } else {
        crate::info!("cluster: instance {} listening", shared.me);
    }
    let since = Instant::now();
    let mut next_beat = Instant::now();
    let mut last_sweep: Option<Instant> = None;
    loop {
        if Instant::now() >= next_beat {
            heartbeat(&mut c, shared)?;
            if since.elapsed() >= timing.stale {
                reap(&mut c, shared, timing)?;
                prune(&mut c, shared, ws)?;
            }
            if last_sweep.map_or(true, |t| t.elapsed() >= SWEEP_EVERY) {
                sweep(&mut c)?;
                last_sweep = Some(Instant::now());
            }
            next_beat = Instant::now() + timing.interval;
        }
        let wait = next_beat.saturating_duration_since(Instant::now());
        let mut batch = Vec::new();
        {
            let mut notes = c.notifications();
            let first = notes.timeout_iter(wait).next().map_err(|e| e.to_string());
            if let Some(first) = first? {
                batch.push(first);
                let mut pending = notes.iter();
                while batch.len() < BATCH {
                    match pending.next().map_err(|e| e.to_string())? {
                        Some(n) => batch.push(n),
                        None => break,
                    }
                }
            }
        }
        if batch.is_empty() && c.is_closed() {
            return Err("the connection was closed".into());
        }
        for note in batch {
            if apply(&mut c, shared, ws, note.payload())? {
                // Someone new (or back): answer with a heartbeat now rather than at the next tick.
                next_beat = Instant::now();
            }
        }
    }
}

/// Debug builds only: `ADCLUSTER_TEST_LISTEN_DELAY_MS` holds each newly connected listener back
/// that long before its `LISTEN`, so that a test can make it slower than the publisher
/// (`tests/cluster.rs`). Not compiled into a release build.
#[cfg(debug_assertions)]
fn test_delay() {
    if let Some(ms) = std::env::var("ADCLUSTER_TEST_LISTEN_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

#[cfg(not(debug_assertions))]
fn test_delay() {}

fn register(c: &mut postgres::Client, shared: &Shared) -> Result<(), String> {
    let me: &str = &shared.me;
    c.execute(
        "INSERT INTO ws_instances (instance_id) VALUES ($1) \
         ON CONFLICT (instance_id) DO UPDATE SET last_seen = now()",
        &[&me],
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Read the other instances' clients and make the hub agree.
fn bootstrap(c: &mut postgres::Client, shared: &Shared, ws: &Ws) -> Result<(), String> {
    let me: &str = &shared.me;
    let rows = c
        .query(
            "SELECT i.instance_id, c.client_id, c.serial, c.group_name, c.connected_at \
             FROM ws_instances i LEFT JOIN ws_clients c ON c.instance_id = i.instance_id \
             WHERE i.instance_id <> $1",
            &[&me],
        )
        .map_err(|e| e.to_string())?;
    let mut all: HashMap<String, Vec<RemoteClient>> = HashMap::new();
    for row in rows {
        let instance: String = row.get(0);
        let list = all.entry(instance).or_default();
        if let Some(id) = row.get::<_, Option<String>>(1) {
            let serial: i64 = row.get(2);
            list.push(RemoteClient { id, serial: serial as u64, group: row.get(3), connected_at: row.get(4) });
        }
    }
    for instance in ws.hub.remote_instances() {
        if !all.contains_key(&*instance) {
            ws.hub.remote_replace(&instance, &[]);
        }
    }
    for (instance, clients) in &all {
        ws.hub.remote_replace(instance, clients);
    }
    Ok(())
}

fn heartbeat(c: &mut postgres::Client, shared: &Shared) -> Result<(), String> {
    let me: &str = &shared.me;
    let row = c
        .query_one(
            "WITH u AS (UPDATE ws_instances SET last_seen = now() WHERE instance_id = $1 RETURNING 1) \
             SELECT (SELECT count(*) FROM u), pg_notify($2, $3)::text",
            &[&me, &wire::ALL_CHANNEL, &wire::encode_heartbeat(me)],
        )
        .map_err(|e| e.to_string())?;
    if row.get::<_, i64>(0) == 0 {
        // Our row is gone: we were reaped (heartbeats late) or someone cleaned the table.
        crate::warn!("cluster: this instance was taken for dead by the others; registering again");
        register(c, shared)?;
        shared.resync.store(true, Ordering::SeqCst);
    }
    Ok(())
}

fn reap(c: &mut postgres::Client, shared: &Shared, timing: Timing) -> Result<(), String> {
    let me: &str = &shared.me;
    let rows = c
        .query(
            "WITH d AS (DELETE FROM ws_instances \
                        WHERE instance_id <> $1 AND last_seen < now() - make_interval(secs => $2) \
                        RETURNING instance_id), \
                  c AS (DELETE FROM ws_clients WHERE instance_id IN (SELECT instance_id FROM d)) \
             SELECT d.instance_id, pg_notify($3, json_build_object('o', $1::text, 'k', 'd', 'i', d.instance_id)::text)::text \
             FROM d",
            &[&me, &timing.stale.as_secs_f64(), &wire::ALL_CHANNEL],
        )
        .map_err(|e| e.to_string())?;
    for row in rows {
        let dead: String = row.get(0);
        crate::warn!("cluster: instance {dead} stopped heartbeating; its clients are dropped");
    }
    Ok(())
}

/// Drop the clients of instances that have no row and have not been heard lately: reaped while
/// this listener missed the `d` notification, or never registered at all (a notification
/// written by hand). An instance that was reaped but lives goes on heartbeating, so it is kept
/// until it registers again.
fn prune(c: &mut postgres::Client, shared: &Shared, ws: &Ws) -> Result<(), String> {
    let rows = c.query("SELECT instance_id FROM ws_instances", &[]).map_err(|e| e.to_string())?;
    let live: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    for instance in ws.hub.remote_instances() {
        if !live.contains(&*instance) && !shared.recently_heard(&instance) {
            crate::warn!("cluster: instance {instance} is neither registered nor heard; its clients are dropped");
            shared.forget(Some(&instance));
            ws.hub.remote_replace(&instance, &[]);
        }
    }
    Ok(())
}

fn sweep(c: &mut postgres::Client) -> Result<(), String> {
    c.execute(
        "DELETE FROM ws_cluster_payloads WHERE created_at < now() - make_interval(secs => $1)",
        &[&PAYLOAD_TTL_SECS],
    )
    .map_err(|e| e.to_string())?;
    c.execute(
        "DELETE FROM ws_clients c WHERE NOT EXISTS (SELECT 1 FROM ws_instances i WHERE i.instance_id = c.instance_id)",
        &[],
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Apply one notification. True when it came from an instance we had not heard lately.
fn apply(c: &mut postgres::Client, shared: &Shared, ws: &Ws, payload: &str) -> Result<bool, String> {
    let json: Cow<str> = match wire::payload(payload) {
        Some(Payload::Inline(s)) => Cow::Borrowed(s),
        Some(Payload::Row { id, delete }) => {
            let sql = if delete {
                "DELETE FROM ws_cluster_payloads WHERE id = $1 RETURNING body"
            } else {
                "SELECT body FROM ws_cluster_payloads WHERE id = $1"
            };
            match c.query_opt(sql, &[&id]).map_err(|e| e.to_string())? {
                Some(row) => Cow::Owned(row.get(0)),
                None => {
                    crate::warn!("cluster: payload row {id} is gone (this listener fell too far behind); skipped");
                    return Ok(false);
                }
            }
        }
        None => {
            crate::warn!("cluster: a notification with a malformed payload reference was skipped");
            return Ok(false);
        }
    };
    let incoming = match wire::decode(&json) {
        Ok(i) => i,
        Err(e) => {
            crate::warn!("cluster: a notification that does not parse was skipped: {e}");
            return Ok(false);
        }
    };
    let me: &str = &shared.me;
    if let Body::Dead { i } = &incoming.body {
        if i == me {
            crate::warn!("cluster: this instance was reaped by {}; registering again", incoming.o);
            register(c, shared)?;
            shared.resync.store(true, Ordering::SeqCst);
        } else {
            shared.forget(Some(i));
            ws.hub.remote_replace(i, &[]);
        }
        return Ok(false);
    }
    if incoming.o == me {
        return Ok(false);
    }
    let new = shared.heard(&incoming.o);
    let instance: Arc<str> = Arc::from(incoming.o.as_str());
    let origin = |serial: u64| Origin { instance: instance.clone(), serial };
    match incoming.body {
        Body::Connected { id, s, g, t } => ws.hub.remote_connect(origin(s), &id, g.as_deref(), wire::from_micros(t)),
        Body::Moved { id, s, g } => ws.hub.remote_moved(&origin(s), &id, g.as_deref()),
        Body::Gone { id, s } => ws.hub.remote_gone(&origin(s), &id),
        Body::Private { f, to, m } => {
            if !ws.hub.remote_private(&f, &to, &m) {
                crate::debug!("cluster: private message for {to}, who is no longer here, dropped");
            }
        }
        // Only the instances that held members when it was sent deliver it (see `Event::Group`).
        Body::Group { f, g, m, i } => {
            if i.is_empty() || i.iter().any(|x| x == me) {
                ws.hub.remote_group(&f, &g, &m)
            }
        }
        Body::Broadcast { f, m } => ws.hub.remote_broadcast(&f, &m),
        Body::Snapshot { c } => ws.hub.remote_replace(&instance, &wire::snapshot_clients(c)),
        Body::Heartbeat | Body::Dead { .. } => {}
    }
    Ok(new)
}
