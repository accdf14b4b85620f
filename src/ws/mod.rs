//! Real-time messaging: WebSocket sessions, the client registry and groups (the contract's
//! "WebSocket" section). The HTTP side — validation, auth, the `101` — is `api/ws_api.rs`; from
//! the `101` on, the socket is ours.
//!
//! - `protocol.rs` — pure: client commands, server frames, names. No sockets, no locks.
//! - `incoming.rs` — pure: the client's bytes to messages (RFC 6455 frames), or the rule broken.
//! - `hub.rs` — the registry and the groups behind one lock; the rules of every command.
//! - `session.rs` — the socket side: the reader thread, the outbound queue, the flusher.
//! - `handoff.rs` — how the worker that answers an upgrade hands the session thread its
//!   registration and then its socket.
//!
//! # Threads
//!
//! - **One reader thread per session** (`ws-session`, stack `WS_THREAD_STACK_KB`). Started by
//!   the HTTP worker that answers the upgrade (before the `101`, so a failed spawn is still a
//!   `503`; the worker also registers the client in the hub before the `101`, so a client that
//!   has read its `101` can be found), it reads the socket: it parses frames
//!   (`incoming::Decoder`, 64 KiB limit, no buffer held while it waits), runs commands against
//!   the hub, answers pings, sends a ping every `WS_PING_INTERVAL_SECS` and drops a client
//!   silent for `WS_PING_TIMEOUT_SECS` (only whole messages break the silence).
//!   At most `WS_MAX_CLIENTS` sessions exist (a counter reserved before the `101`; over it the
//!   upgrade is answered `503`), and at most `WS_MAX_CLIENTS_PER_ADDR` from one client address
//!   (`429`), so that one address cannot take every session. The thread ends with the connection.
//! - **One flusher thread for all sessions** (`ws-flush`, started with the first session). It
//!   finishes writing queues whose socket was full (`poll` for `POLLOUT`; at most
//!   `FLUSHER_ROUNDS` writes per socket per turn, round-robin) and shuts down
//!   connections whose close handshake has not finished within `CLOSE_GRACE`.
//!
//! # Writing: a token, not a thread per session
//!
//! Each session has one bounded outbound queue (`session::Outbound`: a `Mutex<VecDeque<Arc<[u8]>>>`
//! of encoded frames). Whoever pushes a frame onto a queue whose writer token is free takes the
//! token and writes right away on its own thread, never waiting: a frame that finds the queue
//! empty goes straight to the socket with one `send(MSG_DONTWAIT)` and enters the queue only if
//! the socket does not take all of it; otherwise one `sendmsg(MSG_DONTWAIT)` takes everything
//! queued (one `iovec` per frame, up to 128 in one call). Pushes that find the token taken only
//! queue. If the socket is full (`EAGAIN`), the token passes to the flusher, which writes the
//! rest when `poll` says the socket is writable. So exactly one writer at a time per socket
//! (frames never interleave, per-sender order is kept), and **no sender ever blocks on a
//! client's socket**.
//!
//! One exception to "right away": a reader running several messages that its client has already
//! sent (`session::Deferral`, at most 16, while their fan-out stays under half a queue) only takes
//! the tokens for the second and later ones, and writes each of those queues once after the last
//! message, before it waits for anything. A recipient of 8 such messages gets them in one or two
//! `sendmsg`s. The first message of a run is deferred too when the client's last run had
//! several (it streams), so a steady stream is written once per run.
//!
//! **Fan-outs take turns** (`Hub::writers`, a `util::fifo::FifoGate`): a loop that writes one
//! frame to several clients (a `/group`, a broadcast, a reader's deferred writes) first takes one
//! of as many permits as the process may use cores, first come first served, and gives it back
//! when its loop ends. Eight fan-outs in flight used to be eight runnable threads sharing the
//! process's time slice by slice, so each finished only when all of them did; now each runs to
//! its end in turn. The wait is for other fan-outs, never for a client: each of their writes is
//! non-blocking.
//!
//! **A fan-out's writes go to the kernel together** (`session::fan_out`): while a fan-out pushes
//! its frame, each recipient whose queue is empty has its writer token taken as always, but the
//! write waits until 64 such recipients are listed (or the loop ends), and each 64 are one
//! io_uring submission (`util::uring`: one system call instead of 64; each send still
//! `MSG_DONTWAIT`, and the fan-out waits for every completion). Frames pushed to such a
//! recipient meanwhile queue behind the fan-out's frame and follow it at once. Without io_uring
//! (`WS_IO_URING=off`, or a kernel that does not allow it) each recipient gets its own `send`.
//!
//! Why not a writer thread per session, as the design notes sketch: two threads per session
//! would be 20,000 threads at the 10,000-client goal, and this machine's `kernel.pid_max` is
//! 32768 (every thread takes a pid) with `vm.max_map_count` 65530 (each thread is four
//! mappings) — beyond the ceiling. Even one thread per session meets these limits before
//! 20,000 sessions: `WS_MAX_CLIENTS` is lowered at start to what fits (`util::rlimit`). With
//! the token, threads are one per session plus one, and a fan-out costs one non-blocking
//! `sendmsg` per recipient with no thread wake-up at all.
//! See `docs/decisions.md`.
//!
//! # Queues, bounds, and what happens when full
//!
//! - **Outbound queue** (per session; owners: the session, its hub entry, the flusher while it
//!   holds the token). Bound: `WS_QUEUE_FRAMES` frames and `WS_QUEUE_KB` KiB. Above half of
//!   either (the high-water mark) the session's reader stops reading its client until the queue
//!   is under a quarter (back-pressure: a client that sends faster than it reads its own copies
//!   is slowed by TCP, not closed). A push beyond the hard bound can then only come from others:
//!   the client does not read what others send it, and is a slow consumer — the hub removes it
//!   (its group hears `leave`), its queue is replaced by a close frame `1008`, and the flusher
//!   shuts the socket down if that frame cannot be written within `CLOSE_GRACE`. The sender is
//!   never blocked on a recipient.
//! - **All outbound queues together** (`protocol::live_frame_bytes`, every encoded frame alive,
//!   a shared one once). Bound: `WS_QUEUE_TOTAL_MB`. Past it, a client whose queue holds more
//!   than its share (the total over `WS_MAX_CLIENTS`) is a slow consumer at its next frame, as
//!   above; clients that keep up (empty queues) are not touched. Without it, clients that never
//!   read could hold `WS_QUEUE_KB` each: 40 GiB at the defaults.
//! - **Fan-out in flight** (per session, its reader's own list): the frames its commands sent to
//!   several clients, while any queue still holds them. Above `WS_QUEUE_KB` (weighted by how
//!   many queues hold each) the reader pauses, at most a second per frame, so one broadcaster
//!   cannot keep thousands of queues full (`session::pace_reading`).
//! - **Fan-out line** (`Hub::writers`, owned by the hub): threads waiting for a fan-out turn, at
//!   most one entry per thread that fans out (session readers, HTTP handlers of the server's
//!   messages, the cluster listener). Never full: a waiter waits until the fan-outs ahead of it
//!   have finished their non-blocking loops.
//! - **Flusher inbox** (`adopt` and `watch` lists): each session is in each at most once at a
//!   time, so both are bounded by `WS_MAX_CLIENTS`.
//! - A fan-out frame is encoded once; every recipient's queue holds the same `Arc<[u8]>`.
//! - A group's recipients are listed once per change of the group (`hub::Group`): a message to
//!   1,000 members clones one `Arc` under the hub lock, not 1,000 registry entries.
//!
//! # Locks
//!
//! `Hub::state` (registry + groups, one lock, see `hub.rs`) and each session's queue lock (with
//! its `drained` condvar, which only the session's own reader waits on). Order: the hub lock
//! may be held while a *not yet started* queue is locked (the welcome frame); never the other
//! way round. Frames are encoded after the hub lock is dropped. The flusher's inbox lock,
//! `Ws::flusher` and the fan-out gate's own lock are only ever taken alone. No socket I/O
//! happens under any of them. A fan-out turn is not a lock on data: it is held across the
//! fan-out's non-blocking sends (and the queue locks they take), never while waiting for
//! anything else, and never taken twice by one thread (a reader's deferred writes take theirs
//! at the flush, after the pushes that listed them have given theirs back).
//!
//! # Shutdown
//!
//! `Ws::shutdown` (from the signal handler, alongside the HTTP layer's) refuses new sessions,
//! empties the hub and queues a close `1001` for every client; `Ws::wait_idle` lets `main` give
//! the sessions a moment to finish their close handshakes before the process exits.
//!
//! Must never: do socket I/O or call the database while holding a hub or queue lock; block a
//! sender on a client; log a token or a query string.

mod handoff;
pub mod hub;
pub mod incoming;
pub mod protocol;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::response::UpgradeFn;

pub use hub::Hub;

/// How long a closing connection may take to finish its close handshake before its socket is
/// shut down.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The limits and timings of sessions (from the configuration).
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Most sessions at once (`WS_MAX_CLIENTS`).
    pub max_clients: usize,
    /// Most sessions from one client address at once (`WS_MAX_CLIENTS_PER_ADDR`); 0: no cap.
    pub max_clients_per_addr: usize,
    /// Most frames in one client's outbound queue (`WS_QUEUE_FRAMES`).
    pub queue_frames: usize,
    /// Most bytes in one client's outbound queue (`WS_QUEUE_KB`).
    pub queue_bytes: usize,
    /// Most bytes of frames alive in all queues together (`WS_QUEUE_TOTAL_MB`; a frame shared by
    /// many queues counts once): past it, a push to a client whose queue is not empty evicts it.
    pub queue_total_bytes: usize,
    /// Stack size of a session's reader thread (`WS_THREAD_STACK_KB`).
    pub stack_size: usize,
    /// A ping this often (`WS_PING_INTERVAL_SECS`).
    pub ping_interval: Duration,
    /// A client silent this long is dropped (`WS_PING_TIMEOUT_SECS`).
    pub ping_timeout: Duration,
    /// See `CLOSE_GRACE`.
    pub close_grace: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            max_clients: 10_000,
            max_clients_per_addr: 1024,
            queue_frames: 1024,
            queue_bytes: 4 * 1024 * 1024,
            queue_total_bytes: 256 * 1024 * 1024,
            stack_size: 128 * 1024,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            close_grace: CLOSE_GRACE,
        }
    }
}

impl WsSettings {
    pub fn from_config(c: &crate::config::Config) -> WsSettings {
        WsSettings {
            max_clients: c.ws_max_clients,
            max_clients_per_addr: c.ws_max_clients_per_addr,
            queue_frames: c.ws_queue_frames,
            queue_bytes: c.ws_queue_kb.saturating_mul(1024),
            queue_total_bytes: c.ws_queue_total_mb.saturating_mul(1024 * 1024),
            stack_size: c.ws_thread_stack_kb.saturating_mul(1024),
            ping_interval: c.ws_ping_interval,
            ping_timeout: c.ws_ping_timeout,
            close_grace: CLOSE_GRACE,
        }
    }
}

/// Why a session could not be opened (answered before the upgrade, with `Retry-After`).
#[derive(Debug)]
pub struct Refused {
    /// `503` (the server's limit, a thread that cannot start, shutdown) or `429` (this
    /// address's limit).
    pub status: u16,
    pub message: String,
}

impl Refused {
    fn busy(message: &str) -> Refused {
        Refused { status: 503, message: message.into() }
    }
}

/// The WebSocket side of the server: the hub, the session count, the flusher.
pub struct Ws {
    pub hub: Hub,
    pub settings: WsSettings,
    /// Sessions whose reader thread exists (or is about to). Bounded by `max_clients`.
    sessions: AtomicUsize,
    /// Sessions per client address (owner: the slots; an address leaves the map with its last
    /// session, so it holds at most `max_clients` entries). Bounded per address by
    /// `max_clients_per_addr`; empty when that is 0.
    per_addr: Mutex<HashMap<IpAddr, usize>>,
    stopping: AtomicBool,
    /// Started with the first session.
    flusher: Mutex<Option<Arc<session::Flusher>>>,
}

/// A reserved session: gives its place back when dropped (when the reader thread ends).
struct Slot(Arc<Ws>, Option<IpAddr>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.1 {
            let mut map = self.0.per_addr.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl Ws {
    pub fn new(settings: WsSettings) -> Ws {
        Ws {
            hub: Hub::new(),
            settings,
            sessions: AtomicUsize::new(0),
            per_addr: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            flusher: Mutex::new(None),
        }
    }

    /// Sessions open now (including ones finishing their close handshake).
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// A place for a session from `ip`: one of `max_clients`, and of `max_clients_per_addr` for
    /// that address.
    fn reserve(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let max = self.settings.max_clients;
        self.sessions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|_| Refused::busy("Too many WebSocket clients; try again later"))?;
        let per_addr = self.settings.max_clients_per_addr;
        if per_addr == 0 {
            return Ok(Slot(self.clone(), None));
        }
        let mut map = self.per_addr.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= per_addr {
            drop(map);
            self.sessions.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused { status: 429, message: "Too many WebSocket sessions from your address".into() });
        }
        *n += 1;
        Ok(Slot(self.clone(), Some(ip)))
    }

    fn flusher(&self) -> std::io::Result<Arc<session::Flusher>> {
        let mut f = self.flusher.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = &*f {
            return Ok(f.clone());
        }
        let started = session::Flusher::start()?;
        *f = Some(started.clone());
        Ok(started)
    }

    /// Open a session for a validated upgrade, before its `101` is written: reserve its place,
    /// start its reader thread (waiting for the socket), and register the client in the hub —
    /// so by the time the client reads the `101` it can be found, and its welcome is queued.
    /// Returns what `Response::upgrade` runs after the `101`. If the `101` is never written,
    /// the thread sees the hand-off dropped, unregisters the client and ends.
    pub fn open_session(
        self: &Arc<Self>,
        id: Option<String>,
        group: Option<String>,
        admin: bool,
        peer: SocketAddr,
    ) -> Result<UpgradeFn, Refused> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Refused::busy("Server is shutting down"));
        }
        let slot = self.reserve(peer.ip())?;
        let flusher = self.flusher().map_err(|e| {
            crate::error!("cannot start the ws flusher thread: {e}");
            Refused::busy("Cannot start a WebSocket session now")
        })?;
        let out = session::Outbound::new(&self.settings, flusher);
        // Two hand-overs: the registration (right below), then, after the 101, the socket and
        // any bytes the client sent after its request head.
        let (tx, rx) = handoff::pair::<hub::Member, (TcpStream, Vec<u8>)>();
        let ws = self.clone();
        let thread_out = out.clone();
        std::thread::Builder::new()
            .name("ws-session".into())
            .stack_size(self.settings.stack_size)
            .spawn(move || {
                let _slot = slot;
                let Some(member) = rx.first() else { return };
                // `second` consumes the hand-off: not held for the session's life.
                match rx.second() {
                    Some((stream, leftover)) => session::run(&ws, &member, &thread_out, stream, leftover, peer),
                    None => {
                        // The 101 was never written: the client never connected.
                        ws.hub.disconnect(&member);
                        thread_out.kill();
                    }
                }
            })
            .map_err(|e| {
                // EAGAIN here is a thread limit: the service's (systemd's TasksMax, a container's
                // pids limit), the user's (`ulimit -u`) or the machine's (kernel.pid_max).
                crate::warn!(
                    "cannot start a ws session thread: {e} (each session is a thread: check the service's TasksMax or pids limit, ulimit -u, kernel.pid_max)"
                );
                Refused::busy("Cannot start a WebSocket session now")
            })?;
        // Nothing can fail from here on: register (a takeover closes the older connection now).
        let member = self.hub.connect(id.as_deref(), group.as_deref(), admin, out);
        if self.stopping.load(Ordering::SeqCst) {
            // `shutdown` ran between the check above and the registration: its sweep of the
            // registry may have missed this client. Sweep again (it is idempotent).
            self.hub.shutdown();
        }
        tx.first(member);
        Ok(Box::new(move |stream, leftover| {
            // The thread is waiting; if it is gone the socket is simply dropped with the hand-off.
            tx.second((stream, leftover));
        }))
    }

    /// Server shutdown: no new sessions; every client gets a close `1001`.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            let n = self.hub.shutdown();
            if n > 0 {
                crate::info!("closing {n} WebSocket session(s)");
            }
        }
    }

    /// Wait until every session has ended, at most `timeout`. True when none is left.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.sessions() > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}
