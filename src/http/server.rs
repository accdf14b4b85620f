//! The listener, the dispatcher and the worker pool: every thread of the HTTP layer is started
//! in `Server::run`, and this comment is the whole map.
//!
//! Threads:
//! - **dispatcher** (one, `http-dispatch`): owns the listening socket and every connection that
//!   is *not* in a worker's hands: freshly accepted ones, idle keep-alive ones, ones whose request
//!   head or small body is still arriving, ones parked until a transfer slot frees, and ones whose
//!   response the socket did not take at once. It `poll(2)`s them all — for reading or for
//!   writing — and never waits on any one of them. A connection goes to the worker queue only
//!   once its request is complete in memory: the head, plus the body when it is small
//!   (`preread_body_bytes`, whatever its framing: `Content-Length`, chunked, or after a
//!   `100 Continue` the dispatcher sends itself). So an idle client, a slow-loris head, a stalled
//!   or dribbled small body, and a client that does not read its response each cost one socket
//!   and a few bytes here, never a worker. Every such wait has a fixed deadline that bytes
//!   arriving do not push back: `head_timeout` for a head, `body_timeout` plus the body's length
//!   at `min_body_rate` for a small body (then 408), `idle_timeout` between requests, and `Pace`
//!   for a response (a reader slower than `min_body_rate` after `body_timeout`, or silent for
//!   `body_timeout`, is cut off). Accept errors (EMFILE and the like) are logged and retried
//!   after a pause; they never stop the listener.
//! - **workers** (`workers` of them, `http-worker-N`): take a complete request from the queue,
//!   call the handler, and start writing its response without ever waiting on the socket: what
//!   the socket does not take at once is handed to the dispatcher to finish. A keep-alive
//!   connection whose next request is not already buffered then goes to the **hot set**
//!   (`hot.rs`) for `keepalive_linger`: idle workers wait in one `epoll_wait` over the hot set
//!   and the queue's signal, so whichever worker is free takes up the next request that arrives
//!   — under load without sleeping at all. Past the linger, the hot set hands the connection
//!   back to the dispatcher; a partial request read from a hot connection goes back to it at
//!   once (the dispatcher keeps the head clock). A handler may ask for the
//!   connection's next request to be held back (`Response::hold`, at most `MAX_HOLD`): the
//!   connection then waits in the dispatcher, out of its poll set, costing no worker.
//!   At most `workers - 1` workers run handlers that may wait (routes not declared `quick`) at
//!   once; a further such request is **deferred** (kept, unread further, in arrival order) until
//!   one of them returns, so one worker always remains for quick routes such as `/health`.
//!
//! Long transfers — a request body too large to pre-read (uploads), and a streamed response body
//! (`Body::Stream`, produced by code while it is sent) — are the one thing a worker still waits
//! on a client for, and only under `Pace` (so each ends in bounded time). At most
//! `transfer_workers` workers do so at once (by default half the pool; the rest are kept for
//! short requests) and at most `max_transfers_per_addr` for one client address (by default half
//! of those, so that one address cannot take them all). A large-body
//! request beyond those caps is parked in the dispatcher, unread, until a slot frees (or 503
//! after `body_timeout`); a stream that finds no slot is answered 503 at once. A body its route
//! would refuse (its declared length, or the payload of the chunks buffered so far, over the
//! route's `body_limit`) takes no slot: a worker answers 413 at once, reading no more of it. So
//! routes whose limit is within the pre-read (the app's open ones) never hold a slot; a chunked
//! body to such a route whose framing overflows `CHUNK_FRAMING_ROOM` is a 400 at once. See
//! `docs/decisions.md` ("Slow peers cost a socket").
//!
//! Queues and their bounds:
//! - the **worker queue** (`Shared::queue`, a `Mutex<VecDeque>`, signalled through the hot
//!   set's eventfd when a worker is idle): filled by the dispatcher, drained by workers. Every
//!   connection is in exactly one place (dispatcher, queue, hot set, or a worker), and `gate.rs` refuses connections beyond `max_connections` (503) and
//!   beyond `max_connections_per_addr` from one address (429), so no list here holds more than
//!   `max_connections`.
//! - the **return list** (`Shared::returns`): connections a worker hands back to the dispatcher;
//!   bounded the same way. A byte on the wake socket tells the dispatcher to look.
//! - the **parked list** (the dispatcher's own): large-body requests waiting for a transfer slot.
//! - the **deferred list** (`WorkQueue::deferred`): requests for handlers that may wait, put
//!   aside while `workers - 1` such handlers run; bounded like the queue.
//! - the **hot set** (`Shared::hot`): answered keep-alive connections for `keepalive_linger`;
//!   bounded like the others (its own doc says what else it holds).
//!
//! Shutdown (`ShutdownHandle::trigger`, from SIGINT/SIGTERM): the dispatcher stops accepting and
//! closes the connections it holds that have no response in progress; workers finish the
//! requests they have and those already queued (answering with `Connection: close`), then exit;
//! the dispatcher finishes writing the responses it holds and exits after the last worker. `run`
//! waits for all of them up to `shutdown_grace` and returns. A connection handed back after the
//! dispatcher has gone is closed by whoever hands it back (`Returns::closed`), never lost.
//!
//! Panics: a handler's panic is a 500 (`catch_unwind` around the call); anything else that
//! panics in a worker (writing, draining, an upgrade closure) loses that one connection — its
//! counts are given back by `Conn`'s slots on unwinding — and the worker goes on serving. The
//! pool's live count is kept by a drop guard, so even a worker that dies is counted out.
//!
//! Must never: wait on a socket in the dispatcher (it reads and writes only what `poll` says is
//! ready, non-blocking), hold a lock while doing socket I/O, or let a panic shrink the pool.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::body::{is_disconnect, wait_ready, BodyError, BodyReader, ChunkedDecoder, Wire};
use super::gate::{ConnSlot, Gate, GateLimits, Refusal, TransferSlot};
use super::hot::{HotItem, HotSet, Woken};
use super::parse::{find_head_end, parse_head, Framing, HeadLimits, Parsed, RequestHead};
use super::response::{encode_head, send_small, start_response, Body, Outgoing, Pace, Response, Written};
use super::router::{HttpError, Match, Request, Router};
use crate::{debug, error, info, warn};

/// Tunables of the connection layer. Every limit of the layer is here.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Size of the worker pool.
    pub workers: usize,
    /// Most connections held at once (idle, arriving, queued, in service, being written).
    /// Beyond it new connections get a 503 and are closed.
    pub max_connections: usize,
    /// Most connections from one client address at once; beyond it a 429.
    pub max_connections_per_addr: usize,
    /// Most workers busy with a long transfer (a large request body) at once; 0: half the pool
    /// (at least one). The others are kept for short requests.
    pub transfer_workers: usize,
    /// Most long transfers from one client address at once; 0: half the transfer workers (at
    /// least one), so one address never holds every slot.
    pub max_transfers_per_addr: usize,
    /// Time allowed for a whole request head to arrive, from its first byte.
    pub head_timeout: Duration,
    /// How long a request body (or a response) may take before it must keep `min_body_rate`;
    /// also the longest silence allowed while a large body arrives or a client takes a response.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// How long an answered keep-alive connection stays in the hot set, where any idle worker
    /// takes up its next request, before it is handed back to the dispatcher.
    pub keepalive_linger: Duration,
    /// How long `run` waits for requests in flight at shutdown.
    pub shutdown_grace: Duration,
    /// Head size and header count limits.
    pub head_limits: HeadLimits,
    /// A request whose body (any framing) is at most this big is handed to a worker only once
    /// the whole body has arrived (the dispatcher reads it). Larger bodies are long transfers.
    pub preread_body_bytes: u64,
    /// Slowest average rate (bytes per second) a request body may arrive at, and a response be
    /// read at, once `body_timeout` has passed. Slower is cut off (a body gets a 408).
    pub min_body_rate: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 64,
            max_connections: 4096,
            max_connections_per_addr: 1024,
            transfer_workers: 0,
            max_transfers_per_addr: 0,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            keepalive_linger: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(30),
            head_limits: HeadLimits::default(),
            preread_body_bytes: 64 * 1024,
            min_body_rate: 16 * 1024,
        }
    }
}

impl ServerConfig {
    fn transfer_share(&self) -> usize {
        let n = if self.transfer_workers == 0 { self.workers / 2 } else { self.transfer_workers };
        n.clamp(1, self.workers.max(1))
    }

    /// Transfer slots one client address may hold: `max_transfers_per_addr`, or with 0 half of
    /// [`transfer_share`](Self::transfer_share), so that one address never holds them all.
    fn transfers_per_addr(&self) -> usize {
        match self.max_transfers_per_addr {
            0 => (self.transfer_share() / 2).max(1),
            n => n,
        }
    }

    fn pace(&self) -> Pace {
        Pace { grace: self.body_timeout, min_rate: self.min_body_rate, stall: self.body_timeout }
    }

    /// The fixed deadline of a body of `len` bytes that starts arriving now.
    fn body_deadline(&self, len: u64) -> Instant {
        let rate = if self.min_body_rate == 0 { u64::MAX } else { self.min_body_rate };
        Instant::now() + self.body_timeout + Duration::from_secs_f64(len as f64 / rate as f64)
    }
}

/// A small body being read by the dispatcher.
enum PreBody {
    /// Nothing to pre-read (no body, or a long transfer).
    None,
    /// `Content-Length`: the request is complete at this many unconsumed bytes (head + body).
    Length(usize),
    /// Chunked: the decoder has seen `fed` bytes of the body so far, `data` of them payload;
    /// `limit` is its route's body limit, looked up once with the head (`route_limit`).
    Chunked { dec: ChunkedDecoder, fed: usize, data: u64, limit: Option<u64> },
}

/// How far a connection's next request has arrived. Kept between reads, so a head or body that
/// trickles in is looked at once per new byte, never from the start again.
struct ReqState {
    /// The first byte of the request is in (the head clock runs).
    started: bool,
    /// Unconsumed bytes already searched for the end of the head.
    scanned: usize,
    /// Length of the complete head, once found and valid.
    head_len: Option<usize>,
    /// The head parsed when it was found complete, so the worker does not parse it again.
    head: Option<RequestHead>,
    body: PreBody,
    /// `100 Continue` was sent for this request.
    continued: bool,
    /// The body is too large to pre-read: a long transfer.
    transfer: bool,
}

impl Default for ReqState {
    fn default() -> Self {
        ReqState {
            started: false,
            scanned: 0,
            head_len: None,
            head: None,
            body: PreBody::None,
            continued: false,
            transfer: false,
        }
    }
}

/// What to do with a connection after a response the dispatcher is finishing.
#[derive(Clone, Copy)]
struct AfterWrite {
    keep_alive: bool,
    hold: Option<Duration>,
}

/// A connection and the bytes read from it but not yet consumed. Its socket is non-blocking
/// for as long as it is ours. Dropping it closes the socket and gives its counts back.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// When the dispatcher gives up on it (head, body, idle, parked or write deadline).
    deadline: Instant,
    /// Not to be read before this instant (a handler's `Response::hold`): the dispatcher leaves
    /// the socket out of its poll set until then.
    not_before: Option<Instant>,
    req: ReqState,
    /// A response the socket did not take at once, and what follows it.
    out: Option<(Box<Outgoing>, AfterWrite)>,
    /// Held while a worker reads a large body.
    transfer: Option<TransferSlot>,
    /// Registered with the hot set's epoll instance (from an earlier stay there).
    registered: bool,
    _slot: ConnSlot,
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl HotItem for Conn {
    fn registered(&mut self) -> &mut bool {
        &mut self.registered
    }
}

impl Conn {
    fn unconsumed(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            // An idle connection keeps no big buffer: 10,000 idle clients cost sockets, not RAM.
            self.buf = Vec::new();
        }
    }

    fn ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

/// What the buffered bytes of a connection amount to.
enum Progress {
    /// More bytes are needed.
    Wait,
    /// A complete request (head, and its small body) is buffered, or a bad one a worker answers.
    Ready,
    /// A complete head whose body is a long transfer: needs a transfer slot.
    Transfer,
    /// Answer this status and close.
    Reject(u16, String),
}

/// Look at what a connection has buffered since last time: find the end of the head (searching
/// only the new bytes), parse it once, and follow a small body's arrival. May send the
/// `100 Continue` of a small body (the dispatcher reads that body itself).
fn advance(conn: &mut Conn, cfg: &ServerConfig, router: &Router) -> Progress {
    let avail = conn.buf.len() - conn.pos;
    if !conn.req.started {
        if avail == 0 {
            return Progress::Wait;
        }
        // The first byte of a new request starts the head clock.
        conn.req.started = true;
        conn.deadline = Instant::now() + cfg.head_timeout;
    }
    let head_len = match conn.req.head_len {
        Some(n) => n,
        None => {
            let buf = &conn.buf[conn.pos..];
            let Some(end) = find_head_end(buf, conn.req.scanned) else {
                conn.req.scanned = buf.len();
                if buf.len() >= cfg.head_limits.max_head_bytes {
                    return Progress::Reject(431, super::parse::HeadError::TooLarge.to_string());
                }
                return Progress::Wait;
            };
            let head = match parse_head(&buf[..end], &cfg.head_limits) {
                Ok(Parsed::Complete(head, used)) => {
                    conn.req.head_len = Some(used);
                    head
                }
                Ok(Parsed::Partial) => {
                    // Blank lines before a request line: keep looking after them.
                    conn.req.scanned = end;
                    return Progress::Wait;
                }
                Err(e) => return Progress::Reject(e.status(), e.to_string()),
            };
            let used = conn.req.head_len.unwrap_or(end);
            let (framing, expect_continue) = (head.framing, head.expect_continue);
            // Only a body that may be large needs its route's limit here.
            let limit = match framing {
                Framing::Chunked => route_limit(router, &head),
                Framing::Length(n) if n > cfg.preread_body_bytes => route_limit(router, &head),
                _ => None,
            };
            conn.req.head = Some(head);
            match framing {
                Framing::None => return Progress::Ready,
                Framing::Length(n) if n <= cfg.preread_body_bytes => {
                    conn.req.body = PreBody::Length(used + n as usize);
                    conn.deadline = cfg.body_deadline(n);
                }
                Framing::Chunked => {
                    conn.req.body = PreBody::Chunked { dec: ChunkedDecoder::new(), fed: 0, data: 0, limit };
                    conn.deadline = cfg.body_deadline(cfg.preread_body_bytes);
                }
                Framing::Length(n) => {
                    if limit.is_some_and(|l| n > l) {
                        // Refused on its declared length by a worker at once, reading none of
                        // it: a body its route would refuse never takes a transfer slot.
                        return Progress::Ready;
                    }
                    conn.req.transfer = true;
                    return Progress::Transfer;
                }
            }
            if expect_continue {
                // The body is small and read here, so ask for it now. (A handler that refuses
                // the request without reading the body finds it already buffered.)
                conn.req.continued = true;
                if !send_small(&conn.stream, b"HTTP/1.1 100 Continue\r\n\r\n") {
                    return Progress::Reject(400, "Connection unusable".into());
                }
            }
            used
        }
    };
    if conn.req.transfer {
        return Progress::Transfer;
    }
    let buf = &conn.buf[conn.pos..];
    match &mut conn.req.body {
        PreBody::None => Progress::Ready,
        PreBody::Length(total) => {
            if buf.len() >= *total {
                Progress::Ready
            } else {
                Progress::Wait
            }
        }
        PreBody::Chunked { dec, fed, data, limit } => {
            let mut rest = &buf[head_len + *fed..];
            while !rest.is_empty() && !dec.is_done() {
                match dec.feed(rest) {
                    Ok((used, run)) => {
                        *fed += used;
                        *data += run.len() as u64;
                        rest = &rest[used..];
                    }
                    // Bad framing: the worker's body reader finds it again and answers 400.
                    Err(_) => return Progress::Ready,
                }
            }
            if dec.is_done() {
                return Progress::Ready;
            }
            // A route that takes no more than the pre-read is given the buffer's room for chunk
            // framing too, so that its payload, not the framing around it, decides: over the
            // limit it is a 413 at once, never a transfer slot; framing beyond the room is a 400.
            let small = limit.is_some_and(|l| l <= cfg.preread_body_bytes);
            let threshold = cfg.preread_body_bytes + if small { CHUNK_FRAMING_ROOM as u64 } else { 0 };
            if limit.is_some_and(|l| *data > l) {
                // Already over its route's limit: the worker's body reader finds that in the
                // bytes buffered here and answers 413 without waiting for the peer.
                Progress::Ready
            } else if small && *fed as u64 > threshold {
                // The payload still fits the route, so the framing overflowed its room: chunks
                // of a few bytes each. Refused here: such a body must not get a transfer slot (a
                // worker waiting on a client for a 12 KiB login sent as 1-byte chunks).
                Progress::Reject(400, too_much_chunk_framing(cfg.preread_body_bytes))
            } else if *fed as u64 > threshold {
                conn.req.transfer = true;
                Progress::Transfer
            } else {
                Progress::Wait
            }
        }
    }
}

/// The body limit of the route `head` asks for; `None` for an unknown route or method (its answer
/// does not depend on the body).
fn route_limit(router: &Router, head: &RequestHead) -> Option<u64> {
    match router.find(&head.method, &head.path) {
        Match::Found(route, _) => Some(route.body_limit),
        _ => None,
    }
}

/// Room in a connection's buffer beyond the pre-read body, for chunk framing (`read_more`): a
/// chunked body to a route that takes at most the pre-read may spend this much on chunk sizes,
/// extensions and line ends (a 64 KiB body in chunks of 100 bytes spends about 4 KiB); more is a
/// `400` (`too_much_chunk_framing`).
const CHUNK_FRAMING_ROOM: usize = 4096;

/// The `400` detail for a small body whose chunk framing overflowed [`CHUNK_FRAMING_ROOM`].
fn too_much_chunk_framing(preread: u64) -> String {
    format!(
        "Chunked body has too much framing: a body of at most {preread} bytes may take at most {} bytes \
         on the wire, chunk framing included ({CHUNK_FRAMING_ROOM} bytes of room for it); send larger \
         chunks or a Content-Length",
        preread + CHUNK_FRAMING_ROOM as u64
    )
}

/// State shared by the dispatcher and the workers.
struct Shared {
    cfg: ServerConfig,
    router: Arc<Router>,
    gate: Arc<Gate>,
    /// Connections with a complete request, waiting for a worker. See the module doc for its bound.
    queue: Mutex<WorkQueue>,
    /// Spare workers sleep here (see `next_work`).
    spare_cv: Condvar,
    /// Answered keep-alive connections waiting for their next request; pollers wait here.
    hot: HotSet<Conn>,
    /// Workers in the polling role (waiting in the hot set, or on their way to it); never above
    /// `pollers_max` (`raise_pollers`).
    pollers: AtomicUsize,
    /// Connections in the queue and the deferred list, readable without the lock (a poller
    /// looks at it before it goes back to the hot set).
    waiting: AtomicUsize,
    /// At most this many workers wait in the hot set: one per core (and no more than workers).
    /// More would not serve more, and each readiness event would wake a sleeping one.
    pollers_max: usize,
    /// Workers inside handlers that may wait (routes not declared quick). Kept below the pool
    /// size (`slow_cap`), so that one worker is always left for quick routes: `/health` is
    /// answered while every other worker waits on a login's hash or the database.
    slow: AtomicUsize,
    /// Connections handed back by workers, for the dispatcher to poll.
    returns: Mutex<Returns>,
    stopping: AtomicBool,
    /// Write end of the dispatcher's wake socket (non-blocking; a full buffer already means
    /// "wake up").
    wake: UnixStream,
}

/// The worker queue and the count of spare workers asleep on it, under one lock.
#[derive(Default)]
struct WorkQueue {
    conns: VecDeque<Conn>,
    /// Requests for routes that may wait, put aside while all workers but one are inside such
    /// handlers (`Shared::slow`); taken, oldest first, as soon as one leaves. Bounded like the
    /// queue (each entry is a connection the gate counts).
    deferred: VecDeque<Conn>,
    /// Workers asleep on `Shared::spare_cv`.
    spares: usize,
}

#[derive(Default)]
struct Returns {
    conns: Vec<Conn>,
    /// The dispatcher has exited: nobody will take these any more.
    closed: bool,
}

impl Shared {
    fn wake(&self) {
        let _ = (&self.wake).write(b"x");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-changed (each
    // critical section is a single push or pop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops a running server. Cheap to clone; safe to call from any thread, any number of times.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        if !self.shared.stopping.swap(true, Ordering::SeqCst) {
            info!("shutting down: no new connections; finishing requests in flight");
        }
        self.shared.wake();
        // Each poller that wakes for it signals the next (`next_work`).
        self.shared.hot.signal();
        let _guard = lock(&self.shared.queue);
        self.shared.spare_cv.notify_all();
    }

    pub fn is_triggered(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    wake_rx: UnixStream,
    shared: Arc<Shared>,
}

/// The number of live pool threads (workers and the dispatcher), kept by drop guards.
type Alive = Arc<(Mutex<usize>, Condvar)>;

/// Counts its thread out when it ends, however it ends (a panic included).
struct AliveGuard(Alive);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let (count, cv) = &*self.0;
        *lock(count) -= 1;
        cv.notify_all();
    }
}

/// Read-only figures of a server, for metrics. Cheap to clone; reading takes the admission
/// lock for a moment (a scrape, not the request path).
#[derive(Clone)]
pub struct Stats(Arc<Gate>);

impl Stats {
    /// Open HTTP connections (not counting upgraded WebSockets).
    pub fn open_connections(&self) -> usize {
        self.0.open()
    }
}

/// Most connections waiting in the kernel to be accepted (the listen backlog). The kernel caps
/// it at `net.core.somaxconn` (4096 on current kernels).
const BACKLOG_MAX: usize = 4096;

/// A listening socket on `addr` whose backlog holds a burst of up to `max_connections` new
/// connections (at most `BACKLOG_MAX`). The standard library listens with 128, which a probe's
/// burst of thousands of reconnecting WebSocket clients overflowed: each overflow is a dropped
/// SYN that the client only sends again after a second.
fn listen(addr: &str, max_connections: usize) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // listen(2) again on a listening socket only changes its backlog.
    socket2::SockRef::from(&listener).listen(max_connections.clamp(128, BACKLOG_MAX) as i32)?;
    Ok(listener)
}

impl Server {
    pub fn stats(&self) -> Stats {
        Stats(self.shared.gate.clone())
    }

    pub fn bind(addr: &str, cfg: ServerConfig, router: Arc<Router>) -> io::Result<Server> {
        let listener = listen(addr, cfg.max_connections)?;
        listener.set_nonblocking(true)?;
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let gate = Gate::new(
            GateLimits {
                max_open: cfg.max_connections,
                max_open_per_addr: cfg.max_connections_per_addr.max(1),
                max_transfers: cfg.transfer_share(),
                max_transfers_per_addr: cfg.transfers_per_addr(),
            },
            wake.try_clone()?,
        );
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let pollers_max = cores.min(cfg.workers).max(1);
        let shared = Arc::new(Shared {
            cfg,
            router,
            gate,
            queue: Mutex::new(WorkQueue::default()),
            spare_cv: Condvar::new(),
            hot: HotSet::new()?,
            pollers: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            pollers_max,
            slow: AtomicUsize::new(0),
            returns: Mutex::new(Returns::default()),
            stopping: AtomicBool::new(false),
            wake,
        });
        Ok(Server { listener, wake_rx, shared })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.shared.clone() }
    }

    /// Serve until shut down. Returns once the dispatcher and the workers have finished (or
    /// `shutdown_grace` has passed).
    pub fn run(self) -> io::Result<()> {
        let Server { listener, wake_rx, shared } = self;
        let workers = shared.cfg.workers;
        let alive: Alive = Arc::new((Mutex::new(workers + 1), Condvar::new()));
        for i in 0..workers {
            let shared = shared.clone();
            let guard = AliveGuard(alive.clone());
            thread::Builder::new().name(format!("http-worker-{i}")).spawn(move || {
                let _guard = guard;
                worker_loop(&shared);
            })?;
        }
        {
            let shared = shared.clone();
            let guard = AliveGuard(alive.clone());
            let alive = alive.clone();
            thread::Builder::new().name("http-dispatch".into()).spawn(move || {
                let _guard = guard;
                if catch_unwind(AssertUnwindSafe(|| dispatcher_loop(listener, wake_rx, &shared, &alive))).is_err() {
                    error!("the dispatcher thread panicked; shutting down");
                    ShutdownHandle { shared: shared.clone() }.trigger();
                    lock(&shared.returns).closed = true;
                }
            })?;
        }
        let (count, cv) = &*alive;
        // Serve until shutdown is triggered (or the dispatcher dies), then allow the grace.
        let mut left = lock(count);
        while !shared.stopping.load(Ordering::SeqCst) {
            left = cv.wait_timeout(left, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner()).0;
        }
        let deadline = Instant::now() + shared.cfg.shutdown_grace;
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                warn!("shutdown grace period over with {} HTTP thread(s) still busy; exiting anyway", *left);
                break;
            }
            left = cv.wait_timeout(left, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The dispatcher

fn dispatcher_loop(listener: TcpListener, mut wake_rx: UnixStream, shared: &Shared, alive: &Alive) {
    let cfg = &shared.cfg;
    let mut listener = Some(listener);
    let mut waiting: Vec<Conn> = Vec::new();
    let mut parked: VecDeque<Conn> = VecDeque::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut accept_paused_until: Option<Instant> = None;
    let mut read_buf = vec![0u8; 16 * 1024];
    loop {
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if stopping && listener.is_some() {
            // Drop the listener (new connects are refused) and what we hold that is not a
            // response in progress.
            listener = None;
            let before = waiting.len() + parked.len();
            waiting.retain(|c| c.out.is_some());
            parked.clear();
            debug!("dispatcher stopping; closed {} waiting connection(s)", before - waiting.len());
        }
        let returned = std::mem::take(&mut lock(&shared.returns).conns);
        for conn in returned {
            place(shared, conn, &mut waiting, &mut parked);
        }
        if stopping {
            waiting.retain(|c| c.out.is_some());
            // Exit once no response is left to finish and every worker has gone (none can hand
            // a connection back after that).
            if waiting.is_empty() && *lock(&alive.0) <= 1 {
                break;
            }
        }
        let now = Instant::now();
        expire(&mut waiting, &mut parked, now);
        admit_parked(shared, &mut parked);

        if accept_paused_until.is_some_and(|t| t <= now) {
            accept_paused_until = None;
        }
        fds.clear();
        fds.push(pollfd(wake_rx.as_raw_fd(), libc::POLLIN));
        let listening = match &listener {
            Some(l) if accept_paused_until.is_none() => {
                fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
                true
            }
            _ => false,
        };
        // Held connections whose time has come: serve what they already sent, or poll them again.
        for i in (0..waiting.len()).rev() {
            if waiting[i].not_before.is_some_and(|t| t <= now) {
                let mut conn = waiting.swap_remove(i);
                conn.not_before = None;
                place(shared, conn, &mut waiting, &mut parked);
            }
        }
        let base = fds.len();
        for c in &waiting {
            let events = if c.out.is_some() {
                libc::POLLOUT
            } else if c.not_before.is_some() {
                0
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let mut timeout = if stopping { Duration::from_millis(50) } else { Duration::from_secs(1) };
        let soonest = waiting
            .iter()
            .flat_map(|c| [Some(c.deadline), c.not_before])
            .chain(parked.iter().map(|c| Some(c.deadline)))
            .chain([accept_paused_until])
            .flatten()
            .min();
        if let Some(t) = soonest {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: `fds` is a valid, initialised slice of pollfd that outlives the call; poll only
        // writes the `revents` fields.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                error!("poll failed: {err}");
                thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut sink = [0u8; 256];
            while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
        }

        // Ready connections, back to front so `swap_remove` only moves visited entries.
        for i in (0..waiting.len()).rev() {
            let revents = fds[base + i].revents;
            if revents == 0 {
                continue;
            }
            if waiting[i].out.is_some() {
                let conn = waiting.swap_remove(i);
                if let Some(conn) = write_pending(conn, cfg) {
                    place(shared, conn, &mut waiting, &mut parked);
                }
                continue;
            }
            if waiting[i].not_before.is_some() {
                // Polled for nothing, so this is an error or hang-up the kernel reports anyway:
                // the peer is gone. Left in the set it would make every poll return at once.
                if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    waiting.swap_remove(i);
                }
                continue;
            }
            if !read_more(&mut waiting[i], &mut read_buf, cfg) {
                waiting.swap_remove(i);
                continue;
            }
            let conn = waiting.swap_remove(i);
            place(shared, conn, &mut waiting, &mut parked);
        }

        if listening && fds[1].revents != 0 {
            if let Some(l) = &listener {
                accept_some(l, shared, &mut waiting, &mut accept_paused_until);
            }
        }
    }
    // Whatever a worker hands back from now on, it closes itself.
    let late = {
        let mut r = lock(&shared.returns);
        r.closed = true;
        std::mem::take(&mut r.conns)
    };
    debug!("dispatcher stopped ({} late connection(s) closed)", late.len());
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// Put a connection where it belongs now: a worker (complete request), a transfer slot or the
/// parked list (large body), closed (bad request), or the poll set.
fn place(shared: &Shared, mut conn: Conn, waiting: &mut Vec<Conn>, parked: &mut VecDeque<Conn>) {
    if conn.out.is_some() || conn.not_before.is_some() {
        waiting.push(conn);
        return;
    }
    if shared.stopping.load(Ordering::SeqCst) {
        // No new request is started once shutdown has begun (the workers may be gone).
        return;
    }
    match advance(&mut conn, &shared.cfg, &shared.router) {
        Progress::Wait => waiting.push(conn),
        Progress::Ready => enqueue(shared, conn),
        Progress::Transfer => match shared.gate.transfer(conn.ip()) {
            Ok(slot) => {
                conn.transfer = Some(slot);
                enqueue(shared, conn);
            }
            Err(_) => {
                // Unread until a slot frees; the client waits (for `100 Continue`, or with its
                // body in the socket buffers).
                conn.deadline = Instant::now() + shared.cfg.body_timeout;
                parked.push_back(conn);
            }
        },
        Progress::Reject(status, detail) => reject(&conn.stream, conn.peer, status, &detail, None),
    }
}

/// Give free transfer slots to parked requests, oldest first (skipping addresses at their own
/// cap).
fn admit_parked(shared: &Shared, parked: &mut VecDeque<Conn>) {
    let mut i = 0;
    while i < parked.len() {
        match shared.gate.transfer(parked[i].ip()) {
            Ok(slot) => {
                let mut conn = parked.remove(i).expect("in range");
                conn.transfer = Some(slot);
                enqueue(shared, conn);
            }
            Err(Refusal::AddrFull) => i += 1,
            Err(Refusal::Full) => return,
        }
    }
}

/// Write more of a pending response. Returns the connection unless it is finished with.
fn write_pending(mut conn: Conn, cfg: &ServerConfig) -> Option<Conn> {
    let (out, after) = conn.out.as_mut().expect("a pending response");
    match out.write_some(&conn.stream) {
        Ok(false) => {
            conn.deadline = out.deadline();
            Some(conn)
        }
        Ok(true) => {
            let after = *after;
            conn.out = None;
            if !after.keep_alive {
                let _ = conn.stream.shutdown(NetShutdown::Write);
                return None;
            }
            let now = Instant::now();
            conn.not_before = after.hold.map(|d| now + d);
            conn.deadline = conn.not_before.unwrap_or(now) + cfg.idle_timeout;
            conn.compact();
            Some(conn)
        }
        Err(e) => {
            debug!("writing a response to {} failed: {e}", conn.peer);
            None
        }
    }
}

/// Close connections past their deadline: idle ones and slow readers silently, half-sent
/// requests with a 408, parked ones with a 503.
fn expire(waiting: &mut Vec<Conn>, parked: &mut VecDeque<Conn>, now: Instant) {
    waiting.retain_mut(|c| {
        if c.deadline > now {
            return true;
        }
        if let Some((out, _)) = c.out.as_mut() {
            // A reader that took bytes since the socket filled is reading, though the socket
            // may not say it is writable yet: its deadline moves on (within the pace's rate).
            if out.reader_progressed(&c.stream) {
                c.deadline = out.deadline();
                if c.deadline > now {
                    return true;
                }
            }
            debug!("{} reads its response too slowly; closing", c.peer);
        } else if c.not_before.is_none() && c.req.started {
            let what = if c.req.head_len.is_some() { "Request body timeout" } else { "Request header timeout" };
            reject(&c.stream, c.peer, 408, what, None);
        }
        false
    });
    while parked.front().is_some_and(|c| c.deadline <= now) {
        let c = parked.pop_front().expect("checked");
        reject(&c.stream, c.peer, 503, "Server busy: too many uploads in progress; try again", Some("5"));
    }
    // Parked connections are in arrival order, but one re-parked after a hold may be later than
    // its neighbours; catch those too.
    parked.retain(|c| {
        if c.deadline > now {
            return true;
        }
        reject(&c.stream, c.peer, 503, "Server busy: too many uploads in progress; try again", Some("5"));
        false
    });
}

/// Read what a readable waiting connection has sent. False when it is gone.
fn read_more(conn: &mut Conn, read_buf: &mut [u8], cfg: &ServerConfig) -> bool {
    // Enough for the largest head and pre-read body (with room for chunk framing), no more.
    let cap = cfg.head_limits.max_head_bytes + cfg.preread_body_bytes as usize + CHUNK_FRAMING_ROOM;
    let room = cap.saturating_sub(conn.buf.len() - conn.pos).clamp(1, read_buf.len());
    match conn.stream.read(&mut read_buf[..room]) {
        Ok(0) => false,
        Ok(n) => {
            conn.compact();
            conn.buf.extend_from_slice(&read_buf[..n]);
            true
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => true,
        Err(_) => false,
    }
}

fn accept_some(listener: &TcpListener, shared: &Shared, waiting: &mut Vec<Conn>, paused: &mut Option<Instant>) {
    let cfg = &shared.cfg;
    // Bounded so a flood of connects cannot starve the connections already waiting.
    for _ in 0..256 {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Ours are non-blocking for as long as we hold them: nobody here waits on a
                // socket except through poll.
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                match shared.gate.admit(peer.ip()) {
                    Ok(slot) => waiting.push(Conn {
                        stream,
                        peer,
                        buf: Vec::new(),
                        pos: 0,
                        deadline: Instant::now() + cfg.head_timeout,
                        not_before: None,
                        req: ReqState::default(),
                        out: None,
                        transfer: None,
                        registered: false,
                        _slot: slot,
                    }),
                    Err(Refusal::Full) => {
                        warn!("connection limit ({}) reached; refusing {peer}", cfg.max_connections);
                        reject(&stream, peer, 503, "Server busy: too many connections", Some("5"));
                    }
                    Err(Refusal::AddrFull) => {
                        debug!("per-address connection limit ({}) reached for {peer}", cfg.max_connections_per_addr);
                        reject(&stream, peer, 429, "Too many connections from your address", Some("5"));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. Pausing lets in-flight
                // connections finish and free it; the listener itself is fine.
                warn!("accept failed: {e}; pausing accepts for 100 ms (open connections: {})", shared.gate.open());
                *paused = Some(Instant::now() + Duration::from_millis(100));
                return;
            }
        }
    }
}

/// Answer an error on a connection we are about to close, without waiting on the client: what
/// the socket takes now, then our side is shut. The caller drops the connection.
fn reject(stream: &TcpStream, peer: SocketAddr, status: u16, detail: &str, retry_after: Option<&str>) {
    let mut resp = Response::detail(status, detail);
    if let Some(s) = retry_after {
        resp = resp.header("retry-after", s);
    }
    let mut bytes = Vec::with_capacity(256);
    encode_head(&resp, 1, false, &mut bytes);
    if let super::response::Body::Bytes(b) = &resp.body {
        bytes.extend_from_slice(b);
    }
    send_small(stream, &bytes);
    let _ = stream.shutdown(NetShutdown::Write);
    info!("- - {status} - 0us {peer}");
}

fn enqueue(shared: &Shared, conn: Conn) {
    let mut q = lock(&shared.queue);
    q.conns.push_back(conn);
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    wake_for_queue(shared, &q);
}

/// Wake one worker for a queued connection: a spare if one sleeps, else a poller. Called with
/// the queue lock held, after counting the connection in `waiting`. Spares count themselves
/// under that lock, pollers before they look at `waiting` (`next_work`): so either that worker
/// sees the connection, or we see the worker.
fn wake_for_queue(shared: &Shared, q: &WorkQueue) {
    if q.spares > 0 {
        shared.spare_cv.notify_one();
    } else if shared.pollers.load(Ordering::SeqCst) > 0 {
        shared.hot.signal();
    }
}

/// Most workers inside handlers that may wait: all but one (with a pool of one, that one).
fn slow_cap(shared: &Shared) -> usize {
    shared.cfg.workers.saturating_sub(1).max(1)
}

/// A worker inside a handler that may wait; counted out when dropped (a panic included), and
/// then a deferred request, if any, gets a worker.
struct SlowGuard<'a>(&'a Shared);

impl SlowGuard<'_> {
    /// Count this worker in, unless that would leave no worker for quick routes.
    fn enter(shared: &Shared) -> Option<SlowGuard<'_>> {
        if shared.slow.fetch_add(1, Ordering::SeqCst) < slow_cap(shared) {
            Some(SlowGuard(shared))
        } else {
            shared.slow.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }
}

impl Drop for SlowGuard<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        shared.slow.fetch_sub(1, Ordering::SeqCst);
        // `defer` counts a connection in `waiting` before it looks at `slow`, and we look at
        // `waiting` after leaving `slow` (SeqCst): either it sees the free place, or we see it.
        if shared.waiting.load(Ordering::SeqCst) > 0 {
            let q = lock(&shared.queue);
            if !q.deferred.is_empty() {
                wake_for_queue(shared, &q);
            }
        }
    }
}

/// Put a request for a route that may wait aside until a worker can take it (see `slow`).
fn defer(shared: &Shared, conn: Conn) {
    let mut q = lock(&shared.queue);
    q.deferred.push_back(conn);
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    // A worker that left a waiting handler since we counted has already looked: wake one for it.
    if shared.slow.load(Ordering::SeqCst) < slow_cap(shared) {
        wake_for_queue(shared, &q);
    }
}

/// Called before a handler that may wait (any route not declared `quick`): if this worker was
/// one of the hot set's pollers, a spare takes its place, so the hot set stays watched while
/// this worker waits on the database, a hash or a client.
fn before_waiting(shared: &Shared) {
    if shared.pollers.load(Ordering::SeqCst) < shared.pollers_max {
        let q = lock(&shared.queue);
        if q.spares > 0 {
            shared.spare_cv.notify_one();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

fn worker_loop(shared: &Shared) {
    let mut scratch = Vec::with_capacity(16 * 1024);
    while let Some(work) = next_work(shared) {
        let (conn, hot) = match work {
            Work::Queued(conn) => (conn, false),
            Work::Hot(conn) => (conn, true),
        };
        let peer = conn.peer;
        // A handler's panic is caught closer to it (a 500); this catches the rest, so the
        // worker lives on. The connection is dropped during the unwinding (its slots with it).
        let served = catch_unwind(AssertUnwindSafe(|| {
            let conn = if hot { take_up_hot(shared, conn) } else { Some(conn) };
            if let Some(conn) = conn {
                serve_conn(shared, conn, &mut scratch);
            }
        }));
        if let Err(panic) = served {
            error!("a worker caught a panic while serving {peer}: {}; connection closed", panic_message(&*panic));
            scratch = Vec::with_capacity(16 * 1024);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// What a worker found to do.
enum Work {
    /// A connection with a complete request, from the dispatcher.
    Queued(Conn),
    /// A hot connection that became readable: its next request is (at least partly) there.
    Hot(Conn),
}

/// The next piece of work, queued connections first; `None` once stopping with nothing queued.
///
/// A worker without work takes one of two roles. Up to `pollers_max` are **pollers**: they wait
/// in the hot set (`hot.rs`) for a keep-alive connection's next request, or for the queue's
/// signal when no spare is left. The rest are **spares**, asleep on `spare_cv` until a
/// connection is queued or a poller leaves for a handler that may wait (`before_waiting`).
/// Under load a poller that finishes a quick request finds the next one ready and goes on
/// without sleeping; with one poller per core, a request that arrives wakes at most one thread.
fn next_work(shared: &Shared) -> Option<Work> {
    loop {
        // Under load a poller comes back here after every quick request: with nothing queued,
        // it goes straight back to the hot set without taking the queue lock. A poller counts
        // itself before it looks at `waiting`, and `enqueue` counts the connection before it
        // looks at the pollers (all SeqCst): either it sees the connection, or it is signalled.
        if shared.waiting.load(Ordering::SeqCst) == 0
            && !shared.stopping.load(Ordering::SeqCst)
            && raise_pollers(shared)
        {
            if shared.waiting.load(Ordering::SeqCst) == 0 {
                if let Some(conn) = poll_hot(shared) {
                    return Some(Work::Hot(conn));
                }
                continue;
            }
            shared.pollers.fetch_sub(1, Ordering::SeqCst);
        }
        let mut q = lock(&shared.queue);
        if let Some(conn) = q.conns.pop_front() {
            shared.waiting.fetch_sub(1, Ordering::SeqCst);
            if !q.conns.is_empty() {
                // One wake-up may have been meant for several connections: pass it on.
                wake_for_queue(shared, &q);
            }
            return Some(Work::Queued(conn));
        }
        if !q.deferred.is_empty() && shared.slow.load(Ordering::SeqCst) < slow_cap(shared) {
            if let Some(conn) = q.deferred.pop_front() {
                shared.waiting.fetch_sub(1, Ordering::SeqCst);
                return Some(Work::Queued(conn));
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            drop(q);
            // Hot connections have no request in progress: closed, like the dispatcher's idle
            // ones. Then the next poller is woken to see the stop too.
            drop(shared.hot.drain());
            shared.hot.signal();
            return None;
        }
        if raise_pollers(shared) {
            drop(q);
            if let Some(conn) = poll_hot(shared) {
                return Some(Work::Hot(conn));
            }
            continue;
        }
        q.spares += 1;
        q = shared.spare_cv.wait(q).unwrap_or_else(|p| p.into_inner());
        q.spares -= 1;
    }
}

/// Take a poller's place, if one of the `pollers_max` is free.
fn raise_pollers(shared: &Shared) -> bool {
    shared
        .pollers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| (p < shared.pollers_max).then_some(p + 1))
        .is_ok()
}

/// As a poller (counted by `raise_pollers`): expire what lingered too long, then wait in the hot
/// set once. Leaves the poller's place; returns a connection that became readable, if any.
fn poll_hot(shared: &Shared) -> Option<Conn> {
    for conn in shared.hot.expired(Instant::now()) {
        give_back(shared, conn);
    }
    let woken = shared.hot.wait(None);
    shared.pollers.fetch_sub(1, Ordering::SeqCst);
    match woken {
        Woken::Ready(conn) => Some(conn),
        Woken::Look => None,
    }
}

/// Read what a hot connection has sent (its socket said readable). Returns it when a complete
/// request is buffered (with its transfer slot if it needs one); otherwise it is handed back to
/// the dispatcher (a partial request: the dispatcher keeps the head clock), closed, or
/// answered with an error.
fn take_up_hot(shared: &Shared, mut conn: Conn) -> Option<Conn> {
    let mut tmp = [0u8; 8192];
    match conn.stream.read(&mut tmp) {
        Ok(0) => return None,
        Ok(n) => conn.buf.extend_from_slice(&tmp[..n]),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
        Err(_) => return None,
    }
    // A partial request goes to the dispatcher, which keeps the head clock.
    match buffered_request(shared, conn) {
        Buffered::Request(conn) => Some(conn),
        Buffered::Handled => None,
        Buffered::Partial(conn) => {
            give_back(shared, conn);
            None
        }
    }
}

/// What a connection's buffered bytes came to (`buffered_request`).
enum Buffered {
    /// A complete request, with its transfer slot if it needs one.
    Request(Conn),
    /// Dealt with: answered with an error, or parked in the dispatcher for a transfer slot.
    Handled,
    /// More bytes are needed; the caller decides where the connection waits for them.
    Partial(Conn),
}

fn buffered_request(shared: &Shared, mut conn: Conn) -> Buffered {
    match advance(&mut conn, &shared.cfg, &shared.router) {
        Progress::Ready => Buffered::Request(conn),
        Progress::Transfer => match shared.gate.transfer(conn.ip()) {
            Ok(slot) => {
                conn.transfer = Some(slot);
                Buffered::Request(conn)
            }
            Err(_) => {
                give_back(shared, conn);
                Buffered::Handled
            }
        },
        Progress::Reject(status, detail) => {
            reject(&conn.stream, conn.peer, status, &detail, None);
            Buffered::Handled
        }
        Progress::Wait => Buffered::Partial(conn),
    }
}

/// What happened to a connection after one exchange.
enum After {
    KeepAlive,
    /// Keep the connection, but do not read its next request before this long.
    Hold(Duration),
    /// The response is not all written: the dispatcher finishes it.
    Pending,
    Close,
    /// The connection left the HTTP layer (WebSocket).
    Upgraded,
}

fn serve_conn(shared: &Shared, mut conn: Conn, scratch: &mut Vec<u8>) {
    let cfg = &shared.cfg;
    loop {
        let head_len = conn.req.head_len.unwrap_or(0);
        // Parsed once, when it was found complete (`advance`); parsing again is only a fallback.
        let parsed = match conn.req.head.take() {
            Some(head) => Some(head),
            None => match parse_head(&conn.buf[conn.pos..conn.pos + head_len], &cfg.head_limits) {
                Ok(Parsed::Complete(head, _)) => Some(head),
                _ => None,
            },
        };
        let Some(head) = parsed else {
            reject(&conn.stream, conn.peer, 400, "Malformed request", None);
            return;
        };
        let found = shared.router.find(&head.method, &head.path);
        let slow_guard = match &found {
            Match::Found(route, _) if !route.quick => match SlowGuard::enter(shared) {
                Some(guard) => Some(guard),
                None => {
                    // Every other worker waits in a handler: keep this one for quick routes.
                    conn.req.head = Some(head);
                    return defer(shared, conn);
                }
            },
            _ => None,
        };
        conn.pos += head_len;
        let continued = std::mem::take(&mut conn.req).continued;
        let after = serve_one(shared, &mut conn, head, (found, slow_guard), continued, scratch);
        conn.transfer = None;
        match after {
            After::KeepAlive => {}
            After::Hold(d) => {
                conn.not_before = Some(Instant::now() + d);
                return give_back(shared, conn);
            }
            After::Pending => return give_back(shared, conn),
            After::Close | After::Upgraded => return,
        }
        conn.compact();
        match after_response(shared, conn) {
            Some(c) => conn = c,
            None => return,
        }
    }
}

/// After a response: go on with the next request if it is already buffered (pipelined);
/// otherwise put the connection in the hot set (or, with part of a request buffered, hand it to
/// the dispatcher, which keeps the head clock). Returns the connection when a complete request is
/// buffered (with its transfer slot if it needs one).
fn after_response(shared: &Shared, conn: Conn) -> Option<Conn> {
    let conn = match buffered_request(shared, conn) {
        Buffered::Request(conn) => return Some(conn),
        Buffered::Handled => return None,
        Buffered::Partial(conn) => conn,
    };
    if shared.stopping.load(Ordering::SeqCst) {
        // No new request is started once shutdown has begun.
        return None;
    }
    if conn.req.started {
        give_back(shared, conn);
        return None;
    }
    if let Err((conn, e)) = shared.hot.insert(conn, Instant::now() + shared.cfg.keepalive_linger) {
        debug!("the hot set refused {}: {e}; handed to the dispatcher", conn.peer);
        give_back(shared, conn);
    }
    None
}

/// Hand a connection to the dispatcher (to finish its response, hold it, or wait for its next
/// request). If the dispatcher has already exited, the connection is closed here.
fn give_back(shared: &Shared, mut conn: Conn) {
    if conn.out.is_none() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        conn.compact();
        if !conn.req.started {
            conn.deadline = conn.not_before.unwrap_or_else(Instant::now) + shared.cfg.idle_timeout;
        }
    }
    let mut r = lock(&shared.returns);
    if r.closed {
        drop(r);
        drop(conn);
        return;
    }
    r.conns.push(conn);
    drop(r);
    shared.wake();
}

/// Serve one request whose head has been parsed and consumed.
fn serve_one(
    shared: &Shared,
    conn: &mut Conn,
    head: RequestHead,
    (found, slow_guard): (Match<'_>, Option<SlowGuard<'_>>),
    continued: bool,
    scratch: &mut Vec<u8>,
) -> After {
    let started = Instant::now();
    let cfg = &shared.cfg;
    let router = &shared.router;
    let minor = head.minor_version;
    let head_only = head.method == "HEAD";
    let mut keep_alive = head.keep_alive;

    let limit = match &found {
        Match::Found(route, _) => route.body_limit,
        _ => router.default_body_limit,
    };
    let framing = head.framing;
    let expect_continue = head.expect_continue && !continued;
    let wire = Wire { stream: &mut conn.stream, buf: &mut conn.buf, pos: &mut conn.pos };
    let body = BodyReader::new(wire, framing, limit, expect_continue).pace(cfg.pace());
    let mut req = Request { head, peer: conn.peer, params: Vec::new(), body };

    let mut resp = match found {
        Match::Found(route, params) => {
            if matches!(framing, Framing::Length(n) if n > route.body_limit) {
                // Refused on its declared length, before reading a byte of it (and before any
                // `100 Continue`).
                keep_alive = false;
                match &route.too_large_detail {
                    Some(detail) => HttpError::new(413, detail.clone()).into_response(),
                    None => HttpError::from(BodyError::TooLarge { limit: route.body_limit }).into_response(),
                }
            } else {
                req.params = params;
                if !route.quick {
                    before_waiting(shared);
                }
                let called = catch_unwind(AssertUnwindSafe(|| route.call(&mut req)));
                // Counted only while the handler runs: what follows (writing, a streamed body)
                // is bounded by the transfer share, not by this reserve.
                drop(slow_guard);
                match called {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(err)) => err.into_response(),
                    Err(panic) => {
                        error!(
                            "handler for {} {} panicked: {}",
                            req.head.method,
                            req.head.path,
                            panic_message(&*panic)
                        );
                        keep_alive = false;
                        Response::detail(500, "Internal Server Error")
                    }
                }
            }
        }
        Match::MethodNotAllowed(allow) => Response::detail(405, "Method Not Allowed").header("allow", allow.join(", ")),
        Match::Redirect(to) => {
            let query = &req.head.query;
            let location = if query.is_empty() { to } else { format!("{to}?{query}") };
            Response::new(307).header("location", location)
        }
        Match::NotFound => Response::detail(404, "Not Found"),
    };

    // Whatever of the body the handler left unread must go before the next request can be
    // read. A little is drained; a lot (or a body the client has not sent yet) means close.
    let mut body_left = false;
    if resp.upgrade.is_none() && !req.body.is_done() {
        body_left = !req.body.drain(64 * 1024);
        if body_left {
            keep_alive = false;
        }
    }
    // The head outlives the request (its body reader borrows the connection) for the log line.
    let Request { head, .. } = req;
    let (method, path) = (head.method.as_str(), head.path.as_str());
    if resp.close || shared.stopping.load(Ordering::SeqCst) {
        keep_alive = false;
    }

    // A streamed body is written by this worker (its producer is code): like a large request
    // body, a long transfer, so it needs a transfer slot (unless the request already holds one).
    if matches!(resp.body, Body::Stream(_)) && !head_only && conn.transfer.is_none() {
        match shared.gate.transfer(conn.peer.ip()) {
            Ok(slot) => conn.transfer = Some(slot),
            Err(_) => {
                keep_alive = false;
                resp = Response::detail(503, "Server busy: too many transfers in progress; try again")
                    .header("retry-after", "5");
            }
        }
    }
    let upgrade = resp.upgrade.take();
    let hold = resp.hold;
    let result = start_response(&conn.stream, &mut resp, minor, keep_alive, head_only, scratch, cfg.pace());
    let (written, len) = match result {
        Ok(Written::Done(len)) => (true, len),
        Ok(Written::Pending(out, len)) => {
            if upgrade.is_some() || body_left {
                // A 101 head is tiny; a socket that cannot take it is not worth keeping. After a
                // refused body, close rather than hand a half-read connection around.
                log_request(method, path, resp.status, None, started, conn.peer);
                return After::Close;
            }
            conn.deadline = out.deadline();
            conn.out = Some((Box::new(out), AfterWrite { keep_alive, hold: hold.map(|d| d.min(MAX_HOLD)) }));
            (false, len)
        }
        Err(e) => {
            log_request(method, path, resp.status, None, started, conn.peer);
            debug!("write to {} failed: {e}", conn.peer);
            return After::Close;
        }
    };
    log_request(method, path, resp.status, Some(len), started, conn.peer);
    if !written {
        return After::Pending;
    }
    if let Some(then) = upgrade {
        if resp.status == 101 {
            let leftover = conn.unconsumed().to_vec();
            let stream = match conn.stream.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    error!("cannot hand the upgraded socket over: {e}");
                    return After::Close;
                }
            };
            // The session reads with timeouts and writes with MSG_DONTWAIT: a blocking socket.
            let _ = stream.set_nonblocking(false);
            then(stream, leftover);
            return After::Upgraded;
        }
    }
    if body_left {
        linger_close(&conn.stream);
        return After::Close;
    }
    match (keep_alive, hold) {
        (true, Some(d)) => After::Hold(d.min(MAX_HOLD)),
        (true, None) => After::KeepAlive,
        (false, _) => After::Close,
    }
}

/// The longest a handler may hold a connection's next request back (`Response::hold`).
pub const MAX_HOLD: Duration = Duration::from_secs(5);

/// Close after refusing a body the client may still be sending: stop writing, then read and
/// discard for a short while, so the client reads our response instead of a reset.
fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(NetShutdown::Write);
    let until = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 16 * 1024];
    let mut budget: usize = 4 * 1024 * 1024;
    while budget > 0 {
        let now = Instant::now();
        if now >= until || !wait_ready(stream.as_raw_fd(), libc::POLLIN, until - now) {
            break;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) => break,
            Ok(n) => budget = budget.saturating_sub(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) if is_disconnect(&e) => break,
            Err(_) => break,
        }
    }
}

fn log_request(method: &str, path: &str, status: u16, bytes: Option<u64>, started: Instant, peer: SocketAddr) {
    // Nothing is formatted (nor the clock read) when the line would not be written.
    if !crate::util::log::enabled(crate::util::log::Level::Info) {
        return;
    }
    // The path only: a query string may hold a token.
    let bytes = bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
    info!("{method} {path} {status} {bytes} {}us {peer}", started.elapsed().as_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_backlog_holds_a_burst_bigger_than_the_default_128() {
        // The backlog of a listening socket, as the kernel reports it (`ss -lt` shows the same:
        // TCP_INFO's `tcpi_sacked` on a listener).
        fn backlog(l: &TcpListener) -> u32 {
            // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: a valid descriptor, and a buffer of `len` bytes that we own.
            let r = unsafe {
                libc::getsockopt(
                    l.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&mut info as *mut libc::tcp_info).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            info.tcpi_sacked
        }
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert_eq!(backlog(&TcpListener::bind("127.0.0.1:0").unwrap()), 128.min(somaxconn), "std's own");
        assert_eq!(backlog(&listen("127.0.0.1:0", 4096).unwrap()), 4096.min(somaxconn));
        assert_eq!(backlog(&listen("127.0.0.1:0", 1000).unwrap()), 1000.min(somaxconn), "MAX_CONNECTIONS");
        assert_eq!(backlog(&listen("127.0.0.1:0", 100_000).unwrap()), (BACKLOG_MAX as u32).min(somaxconn));
        assert_eq!(backlog(&listen("127.0.0.1:0", 10).unwrap()), 128.min(somaxconn), "never under std's");
    }

    #[test]
    fn compact_drops_consumed_bytes_and_big_idle_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        let (wake, _rx) = UnixStream::pair().unwrap();
        let gate = Gate::new(
            GateLimits { max_open: 1, max_open_per_addr: 1, max_transfers: 1, max_transfers_per_addr: 1 },
            wake,
        );
        let mut conn = Conn {
            stream,
            peer,
            buf: b"abcdef".to_vec(),
            pos: 4,
            deadline: Instant::now(),
            not_before: None,
            req: ReqState::default(),
            out: None,
            transfer: None,
            registered: false,
            _slot: gate.admit(peer.ip()).unwrap(),
        };
        conn.compact();
        assert_eq!(conn.buf, b"ef");
        conn.buf = Vec::with_capacity(100_000);
        conn.compact();
        assert_eq!(conn.buf.capacity(), 0);
    }
}
