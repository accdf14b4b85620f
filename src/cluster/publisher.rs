//! The publisher thread (`cluster-pub`): takes the queue's items in order and sends each as a
//! `NOTIFY` on its own connection — one connection, one item at a time, so what one instance
//! publishes reaches every listener in the order it was queued (PostgreSQL delivers
//! notifications in commit order). A presence change is written in the same statement as its
//! notification (one commit: a reader of the table and a listener never disagree for long).
//! A payload over NOTIFY's limit is inserted into `ws_cluster_payloads` in the same statement
//! as the notification that names its row, so the large path keeps the order too.
//!
//! The connection runs with `synchronous_commit = off`: notifications are not durable anyway,
//! and a commit that waits for the WAL flush would add a disk sync to every message.
//!
//! Nothing is published while this instance's listener is not listening (at start, and after
//! it lost its connection until it has `LISTEN`ed again): every notification from an instance
//! counts as a sign that it can be reached, so a word sent before we listen would invite
//! messages that nobody here hears. (Found by the outage test: after a restart of the
//! database, the publisher's snapshot reached the others before our `LISTEN`, and a message
//! for one of our clients was answered `sent` and lost.)
//!
//! On a database error the item in hand and everything queued is failed: each message's local
//! sender gets an error frame (it may or may not have been delivered: the connection broke),
//! presence is rewritten whole (a snapshot) once a connection works again — and every
//! `RESYNC_EVERY` anyway, so that any divergence heals. Then it reconnects
//! every `RETRY`.
//!
//! Must never: hold a hub lock (it calls the hub only through its public methods, which take
//! and drop it), or retry an item (a late duplicate would break per-sender order).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::{GenericClient, Statement};

use super::link::{Channel, Item, Sender, Shared, Write};
use super::wire;
use crate::ws::hub::RemoteClient;
use crate::ws::protocol::ErrorCode;
use crate::ws::Ws;

/// Pause between connection attempts while the database is away.
pub const RETRY: Duration = Duration::from_millis(500);

/// How often a connected publisher looks again whether the listener is listening.
const LISTENER_WAIT: Duration = Duration::from_millis(50);

/// An idle publishing connection is checked this often.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// Our whole presence is re-sent this often even when nothing was lost, so that whatever the
/// others got wrong (a takeover decided on skewed clocks, a payload row swept before it was
/// read) heals within this time.
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);

struct Conn {
    client: postgres::Client,
    notify: Statement,
    notify_row: Statement,
    notify_row_once: Statement,
    upsert: Statement,
    regroup: Statement,
    delete: Statement,
}

fn connect(pg: &postgres::Config) -> Result<Conn, postgres::Error> {
    let mut client = pg.connect(postgres::NoTls)?;
    client.batch_execute("SET synchronous_commit TO off")?;
    let notify = client.prepare("SELECT pg_notify($1, $2)")?;
    let notify_row = client.prepare(
        "WITH p AS (INSERT INTO ws_cluster_payloads (body) VALUES ($2) RETURNING id) \
         SELECT pg_notify($1, '@' || p.id) FROM p",
    )?;
    let notify_row_once = client.prepare(
        "WITH p AS (INSERT INTO ws_cluster_payloads (body) VALUES ($2) RETURNING id) \
         SELECT pg_notify($1, '@d' || p.id) FROM p",
    )?;
    let upsert = client.prepare(
        "WITH w AS (INSERT INTO ws_clients (instance_id, client_id, serial, group_name, connected_at) \
                    VALUES ($3, $4, $5, $6, $7) \
                    ON CONFLICT (instance_id, client_id) DO UPDATE \
                    SET serial = EXCLUDED.serial, group_name = EXCLUDED.group_name, \
                        connected_at = EXCLUDED.connected_at) \
         SELECT pg_notify($1, $2)",
    )?;
    let regroup = client.prepare(
        "WITH w AS (UPDATE ws_clients SET group_name = $6 \
                    WHERE instance_id = $3 AND client_id = $4 AND serial = $5) \
         SELECT pg_notify($1, $2)",
    )?;
    let delete = client.prepare(
        "WITH w AS (DELETE FROM ws_clients WHERE instance_id = $3 AND client_id = $4 AND serial = $5) \
         SELECT pg_notify($1, $2)",
    )?;
    Ok(Conn { client, notify, notify_row, notify_row_once, upsert, regroup, delete })
}

/// Run the publisher until `Item::Stop` (or until every sender is gone).
pub fn run(shared: Arc<Shared>, rx: Receiver<Item>, pg: postgres::Config, ws: Arc<Ws>) {
    let mut conn: Option<Conn> = None;
    let mut down_logged = false;
    let mut idle_since = Instant::now();
    let mut last_snapshot = Instant::now();
    loop {
        if last_snapshot.elapsed() >= RESYNC_EVERY {
            shared.resync.store(true, Ordering::SeqCst);
        }
        if shared.publisher_stale.swap(false, Ordering::SeqCst) && conn.is_some() {
            // The listener lost the database: do not trust this connection with a message.
            conn = None;
            shared.publishing.store(false, Ordering::SeqCst);
        }
        let Some(c) = conn.as_mut() else {
            match connect(&pg) {
                Ok(c) => {
                    if down_logged {
                        crate::info!("cluster: publishing connection is back");
                    }
                    down_logged = false;
                    conn = Some(c);
                    shared.publishing.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    if !down_logged {
                        crate::warn!("cluster: cannot open the publishing connection: {e}; retrying");
                        down_logged = true;
                    }
                    if fail_queued(&shared, &rx, &ws) {
                        return;
                    }
                    std::thread::sleep(RETRY);
                }
            }
            continue;
        };
        if !shared.listening.load(Ordering::SeqCst) {
            // Our listener is not `LISTEN`ing yet (starting, or back from an outage). Publish
            // nothing until it is: any word from us tells the others we can be reached
            // (`Shared::heard`), and what they sent us before we listen would be lost. Queued
            // messages are failed to their senders; presence waits for the snapshot. A stop
            // asked meanwhile ends here without removing our rows: the others reap them.
            if fail_queued(&shared, &rx, &ws) {
                return;
            }
            std::thread::sleep(LISTENER_WAIT);
            continue;
        }
        if shared.resync.swap(false, Ordering::SeqCst) {
            last_snapshot = Instant::now();
            let clients = ws.hub.local_clients();
            // A snapshot is statements too: one that does not come back stops messages the same way.
            shared.sending_since_ms.store(shared.now_ms(), Ordering::SeqCst);
            let written = snapshot(&mut c.client, &shared, &clients);
            shared.sending_since_ms.store(0, Ordering::SeqCst);
            if let Err(e) = written {
                crate::warn!("cluster: cannot write this instance's presence: {e}");
                shared.resync.store(true, Ordering::SeqCst);
                conn = None;
                shared.publishing.store(false, Ordering::SeqCst);
                continue;
            }
        }
        let next = rx.recv_timeout(Duration::from_millis(200));
        if next.is_ok() {
            idle_since = Instant::now();
        }
        match next {
            Ok(Item::Notify { channel, json, write, sender }) => {
                shared.queued_bytes.fetch_sub(json.len(), Ordering::SeqCst);
                shared.sending_since_ms.store(shared.now_ms(), Ordering::SeqCst);
                let sent = send(c, &shared.me, &channel, &json, write.as_ref());
                shared.sending_since_ms.store(0, Ordering::SeqCst);
                if let Err(e) = sent {
                    crate::warn!("cluster: lost the publishing connection: {e}");
                    shared.publishing.store(false, Ordering::SeqCst);
                    conn = None;
                    lost(&shared, &ws, sender.as_ref(), write.is_some());
                    if fail_queued(&shared, &rx, &ws) {
                        return;
                    }
                }
            }
            Ok(Item::Stop(done)) => {
                if let Err(e) = leave(&mut c.client, &shared) {
                    crate::warn!("cluster: could not remove this instance's presence: {e}");
                }
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                // Idle: check the connection now and then, so that it is not the next message
                // that finds it dead.
                if idle_since.elapsed() >= IDLE_CHECK {
                    idle_since = Instant::now();
                    if c.client.simple_query("").is_err() {
                        shared.publishing.store(false, Ordering::SeqCst);
                        conn = None;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn send(c: &mut Conn, me: &str, channel: &Channel, json: &str, write: Option<&Write>) -> Result<(), postgres::Error> {
    let chan = match channel {
        Channel::All => wire::ALL_CHANNEL,
        Channel::Instance(name) => name.as_str(),
    };
    if wire::too_big(json) {
        let stmt = if matches!(channel, Channel::Instance(_)) { &c.notify_row_once } else { &c.notify_row };
        c.client.execute(stmt, &[&chan, &json])?;
        return Ok(());
    }
    match write {
        None => c.client.execute(&c.notify, &[&chan, &json])?,
        Some(Write::Upsert { id, serial, group, at }) => {
            c.client.execute(&c.upsert, &[&chan, &json, &me, id, &(*serial as i64), group, at])?
        }
        Some(Write::Group { id, serial, group }) => {
            c.client.execute(&c.regroup, &[&chan, &json, &me, id, &(*serial as i64), group])?
        }
        Some(Write::Delete { id, serial }) => {
            c.client.execute(&c.delete, &[&chan, &json, &me, id, &(*serial as i64)])?
        }
    };
    Ok(())
}

/// A notification on `ALL_CHANNEL`, through a payload row when it is too big.
fn notify_all(c: &mut impl GenericClient, json: &str) -> Result<(), postgres::Error> {
    if wire::too_big(json) {
        c.execute(
            "WITH p AS (INSERT INTO ws_cluster_payloads (body) VALUES ($2) RETURNING id) \
             SELECT pg_notify($1, '@' || p.id) FROM p",
            &[&wire::ALL_CHANNEL, &json],
        )?;
    } else {
        c.execute("SELECT pg_notify($1, $2)", &[&wire::ALL_CHANNEL, &json])?;
    }
    Ok(())
}

/// Write our whole presence again and tell the others (`y`): at start (which also clears the
/// rows of a previous run with the same `INSTANCE_ID`), after a reconnection, after a lost event.
fn snapshot(client: &mut postgres::Client, shared: &Shared, clients: &[RemoteClient]) -> Result<(), postgres::Error> {
    let me: &str = &shared.me;
    let mut tx = client.transaction()?;
    tx.execute(
        "INSERT INTO ws_instances (instance_id) VALUES ($1) \
         ON CONFLICT (instance_id) DO UPDATE SET last_seen = now()",
        &[&me],
    )?;
    tx.execute("DELETE FROM ws_clients WHERE instance_id = $1", &[&me])?;
    let ids: Vec<&str> = clients.iter().map(|c| c.id.as_str()).collect();
    let serials: Vec<i64> = clients.iter().map(|c| c.serial as i64).collect();
    let groups: Vec<Option<&str>> = clients.iter().map(|c| c.group.as_deref()).collect();
    let times: Vec<std::time::SystemTime> = clients.iter().map(|c| c.connected_at).collect();
    tx.execute(
        "INSERT INTO ws_clients (instance_id, client_id, serial, group_name, connected_at) \
         SELECT $1, * FROM unnest($2::text[], $3::int8[], $4::text[], $5::timestamptz[])",
        &[&me, &ids, &serials, &groups, &times],
    )?;
    notify_all(&mut tx, &wire::encode_snapshot(me, clients))?;
    tx.commit()
}

/// Leave the cluster: our rows go, the others drop our clients (an empty snapshot).
fn leave(client: &mut postgres::Client, shared: &Shared) -> Result<(), postgres::Error> {
    let me: &str = &shared.me;
    let mut tx = client.transaction()?;
    tx.execute("DELETE FROM ws_clients WHERE instance_id = $1", &[&me])?;
    tx.execute("DELETE FROM ws_instances WHERE instance_id = $1", &[&me])?;
    notify_all(&mut tx, &wire::encode_snapshot(me, &[]))?;
    tx.commit()
}

/// An item that did not go out: its sender hears it, a presence change is rewritten later.
fn lost(shared: &Shared, ws: &Ws, sender: Option<&Sender>, presence: bool) {
    if presence {
        shared.resync.store(true, Ordering::SeqCst);
    }
    if let Some(s) = sender.filter(|s| s.id != "server") {
        ws.hub.tell(&s.id, ErrorCode::ClientNotFound, &lost_text(&s.what));
    }
}

/// The error a sender gets for a message that may be lost: which message (its recipient), and why.
fn lost_text(what: &str) -> String {
    format!(
        "{what} may not have been delivered to clients on other instances: the connection to the \
         database that links the instances was lost"
    )
}

/// Fail everything queued (the connection is down). True when asked to stop.
fn fail_queued(shared: &Shared, rx: &Receiver<Item>, ws: &Ws) -> bool {
    while let Ok(item) = rx.try_recv() {
        match item {
            Item::Notify { json, write, sender, .. } => {
                shared.queued_bytes.fetch_sub(json.len(), Ordering::SeqCst);
                lost(shared, ws, sender.as_ref(), write.is_some());
            }
            Item::Stop(done) => {
                let _ = done.send(());
                return true;
            }
        }
    }
    false
}
