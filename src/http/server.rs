//! The listener, the dispatcher and the worker pool: every thread of the HTTP layer is started
//! in `Server::run`, and this comment is the whole map.
//!
//! Threads:
//! - **dispatcher** (one, `http-dispatch`): owns the listening socket and every connection that
//!   is *not* ready for a worker: freshly accepted ones, idle keep-alive ones, and ones whose
//!   request head is still arriving. It `poll(2)`s them all, reads what arrives, and moves a
//!   connection to the worker queue only once a complete request head is buffered. So an idle
//!   client or a slow-loris client (one header byte every few seconds) costs one socket and a
//!   few bytes here, never a worker. It closes connections whose head does not complete within
//!   `head_timeout` (408) and idle ones after `idle_timeout`. Accept errors (EMFILE and the
//!   like) are logged and retried after a pause; they never stop the listener.
//! - **workers** (`workers` of them, `http-worker-N`): take a connection from the queue, serve the
//!   request (reading its body, calling the handler, writing the response), then wait briefly
//!   (`keepalive_linger`) for the next request on the same connection — but only while nobody is
//!   queued for a worker. Otherwise the connection goes back to the dispatcher. A handler may
//!   ask for the connection's next request to be held back (`Response::hold`, at most
//!   `MAX_HOLD`): the connection then waits in the dispatcher, out of its poll set, costing no
//!   worker — how a 503 with `Retry-After` is enforced on a client that ignores it.
//!
//! Queues and their bounds:
//! - the **worker queue** (`Shared::queue`, a `Mutex<VecDeque>` + `Condvar`): filled by the
//!   dispatcher, drained by workers. Every connection is in exactly one place (dispatcher,
//!   queue, or a worker) and the dispatcher refuses connections beyond `max_connections` (it
//!   answers 503 and closes), so the queue never holds more than `max_connections`.
//! - the **return list** (`Shared::returns`): connections a worker hands back to the dispatcher;
//!   bounded the same way. A byte on the wake pipe tells the dispatcher to look.
//!
//! Shutdown (`ShutdownHandle::trigger`, from SIGINT/SIGTERM): the dispatcher stops accepting and
//! closes the connections it holds; workers finish the requests they have and those already
//! queued (answering with `Connection: close`), then exit. `run` waits for them up to
//! `shutdown_grace` and returns.
//!
//! Must never: block the dispatcher on a socket (it only reads sockets `poll` says are
//! readable), hold a lock while doing socket I/O, or let a handler panic kill a worker.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::body::{BodyError, BodyReader, Wire};
use super::parse::{parse_head, Framing, HeadError, HeadLimits, Parsed, RequestHead};
use super::response::{write_response, Pace, Response};
use super::router::{HttpError, Match, Request, Router};
use crate::{debug, error, info, warn};

/// Tunables of the connection layer. Every limit of the layer is here.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Size of the worker pool.
    pub workers: usize,
    /// Most connections held at once (idle, arriving, queued and in service). Beyond it new
    /// connections get a 503 and are closed.
    pub max_connections: usize,
    /// Time allowed for a whole request head to arrive, from its first byte (or from accept).
    pub head_timeout: Duration,
    /// Longest silence allowed while reading a request body.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Longest stall allowed while writing a response.
    pub write_timeout: Duration,
    /// How long a worker waits for the next request on its connection before handing it back
    /// to the dispatcher (only while no connection is queued).
    pub keepalive_linger: Duration,
    /// How long `run` waits for requests in flight at shutdown.
    pub shutdown_grace: Duration,
    /// Head size and header count limits.
    pub head_limits: HeadLimits,
    /// A request whose `Content-Length` body is at most this big is handed to a worker only
    /// once the whole body has arrived (the dispatcher reads it), so a client dribbling a small
    /// body costs a socket, not a worker. Larger bodies (uploads) stream in the worker, under
    /// `body_timeout` and `min_body_rate`.
    pub preread_body_bytes: u64,
    /// Slowest average rate (bytes per second) a streamed body may arrive at, once
    /// `body_timeout` has passed (slower gets a 408), and a streamed file may be read at (slower
    /// is cut off). Bounds how long one upload or download holds a worker.
    pub min_body_rate: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 64,
            max_connections: 4096,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            keepalive_linger: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(30),
            head_limits: HeadLimits::default(),
            preread_body_bytes: 64 * 1024,
            min_body_rate: 16 * 1024,
        }
    }
}

/// How many buffered bytes make a request ready for a worker: its head, plus its body when that
/// is small enough to pre-read (and the client is not waiting for `100 Continue`). `Ok(None)`
/// while the head is incomplete.
fn ready_len(buf: &[u8], cfg: &ServerConfig) -> Result<Option<usize>, HeadError> {
    match parse_head(buf, &cfg.head_limits)? {
        Parsed::Partial => Ok(None),
        Parsed::Complete(head, used) => Ok(Some(match head.framing {
            Framing::Length(n) if n <= cfg.preread_body_bytes && !head.expect_continue => used + n as usize,
            _ => used,
        })),
    }
}

/// Whether a buffered request is ready for a worker (complete, or bad: the worker answers it).
fn is_ready(buf: &[u8], cfg: &ServerConfig) -> bool {
    match ready_len(buf, cfg) {
        Ok(Some(n)) => buf.len() >= n,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// A connection and the bytes read from it but not yet consumed.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// When the dispatcher gives up on it (head timeout or idle timeout).
    deadline: Instant,
    /// Not to be read before this instant (a handler's `Response::hold`): the dispatcher leaves
    /// the socket out of its poll set until then.
    not_before: Option<Instant>,
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
}

/// State shared by the dispatcher and the workers.
struct Shared {
    cfg: ServerConfig,
    router: Arc<Router>,
    /// Connections with a complete head, waiting for a worker. See the module doc for its bound.
    queue: Mutex<VecDeque<Conn>>,
    queue_cv: Condvar,
    /// Length of `queue`, readable without the lock (workers check it before lingering).
    queued: AtomicUsize,
    /// Connections handed back by workers, for the dispatcher to poll.
    returns: Mutex<Vec<Conn>>,
    /// Connections currently owned by this layer, wherever they are.
    open: AtomicUsize,
    stopping: AtomicBool,
    wake: WakePipe,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-changed (each
    // critical section is a single push or pop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A non-blocking pipe the dispatcher polls, so other threads can wake it.
struct WakePipe {
    read_fd: RawFd,
    write_fd: RawFd,
}

impl WakePipe {
    fn new() -> io::Result<WakePipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WakePipe { read_fd: fds[0], write_fd: fds[1] })
    }

    fn wake(&self) {
        // A full pipe already means "wake up"; any error here is harmless.
        // SAFETY: writing one byte from a valid buffer to a fd we own.
        unsafe { libc::write(self.write_fd, b"x".as_ptr().cast(), 1) };
    }

    fn drain(&self) {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a valid buffer from a non-blocking fd we own.
        while unsafe { libc::read(self.read_fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

impl Drop for WakePipe {
    fn drop(&mut self) {
        // SAFETY: closing fds we own, once.
        unsafe {
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
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
        self.shared.wake.wake();
        let _guard = lock(&self.shared.queue);
        self.shared.queue_cv.notify_all();
    }

    pub fn is_triggered(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    pub fn bind(addr: &str, cfg: ServerConfig, router: Arc<Router>) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            cfg,
            router,
            queue: Mutex::new(VecDeque::new()),
            queue_cv: Condvar::new(),
            queued: AtomicUsize::new(0),
            returns: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            wake: WakePipe::new()?,
        });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.shared.clone() }
    }

    /// Serve until shut down. Returns once the dispatcher has stopped and the workers have
    /// finished (or `shutdown_grace` has passed).
    pub fn run(self) -> io::Result<()> {
        let Server { listener, shared } = self;
        let alive = Arc::new((Mutex::new(shared.cfg.workers), Condvar::new()));
        for i in 0..shared.cfg.workers {
            let shared = shared.clone();
            let alive = alive.clone();
            thread::Builder::new().name(format!("http-worker-{i}")).spawn(move || {
                worker_loop(&shared);
                let (count, cv) = &*alive;
                *lock(count) -= 1;
                cv.notify_all();
            })?;
        }
        let dispatcher = {
            let shared = shared.clone();
            thread::Builder::new().name("http-dispatch".into()).spawn(move || dispatcher_loop(listener, &shared))?
        };
        if dispatcher.join().is_err() {
            error!("the dispatcher thread panicked; shutting down");
        }
        ShutdownHandle { shared: shared.clone() }.trigger();
        let deadline = Instant::now() + shared.cfg.shutdown_grace;
        let (count, cv) = &*alive;
        let mut left = lock(count);
        while *left > 0 {
            let now = Instant::now();
            if now >= deadline {
                warn!("shutdown grace period over with {} worker(s) still busy; exiting anyway", *left);
                break;
            }
            left = cv.wait_timeout(left, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The dispatcher

fn dispatcher_loop(listener: TcpListener, shared: &Shared) {
    let cfg = &shared.cfg;
    let mut waiting: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut accept_paused_until: Option<Instant> = None;
    let mut read_buf = vec![0u8; 16 * 1024];
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        waiting.append(&mut lock(&shared.returns));
        let now = Instant::now();
        expire(&mut waiting, now, shared);

        if accept_paused_until.is_some_and(|t| t <= now) {
            accept_paused_until = None;
        }
        fds.clear();
        fds.push(pollfd(shared.wake.read_fd));
        let listening = accept_paused_until.is_none();
        if listening {
            fds.push(pollfd(listener.as_raw_fd()));
        }
        // Held connections whose time has come: serve what they already sent, or poll them again.
        for i in (0..waiting.len()).rev() {
            if waiting[i].not_before.is_some_and(|t| t <= now) {
                waiting[i].not_before = None;
                if is_ready(waiting[i].unconsumed(), cfg) {
                    let conn = waiting.swap_remove(i);
                    enqueue(shared, conn);
                }
            }
        }
        let base = fds.len();
        // A held connection is polled for nothing (events 0): it stays in step with `waiting`
        // but cannot wake the dispatcher.
        fds.extend(waiting.iter().map(|c| {
            let mut p = pollfd(c.stream.as_raw_fd());
            if c.not_before.is_some() {
                p.events = 0;
            }
            p
        }));

        let mut timeout = Duration::from_secs(1);
        if let Some(t) = waiting.iter().filter_map(|c| c.not_before).min() {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if let Some(t) = accept_paused_until {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if let Some(d) = waiting.iter().map(|c| c.deadline).min() {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: `fds` is a valid, initialised slice of pollfd for the duration of the call.
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
            shared.wake.drain();
        }

        // Readable connections, back to front so `swap_remove` only moves visited entries.
        for i in (0..waiting.len()).rev() {
            let revents = fds[base + i].revents;
            if revents == 0 {
                continue;
            }
            if waiting[i].not_before.is_some() {
                // Polled for nothing, so this is an error or hang-up the kernel reports anyway:
                // the peer is gone. Left in the set it would make every poll return at once.
                if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    waiting.swap_remove(i);
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            match read_waiting(&mut waiting[i], &mut read_buf, cfg) {
                Progress::Wait => {}
                Progress::Ready => {
                    let conn = waiting.swap_remove(i);
                    enqueue(shared, conn);
                }
                Progress::Close => {
                    waiting.swap_remove(i);
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                }
                Progress::Reject(err) => {
                    let mut conn = waiting.swap_remove(i);
                    reject(&mut conn, err.status(), &err.to_string());
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }

        if listening && fds[1].revents != 0 {
            accept_some(&listener, shared, &mut waiting, &mut accept_paused_until);
        }
    }
    // Shutting down: drop the listener (new connects are refused) and what we hold.
    drop(listener);
    let n = waiting.len() + lock(&shared.returns).len();
    shared.open.fetch_sub(n, Ordering::SeqCst);
    debug!("dispatcher stopped; closed {n} waiting connection(s)");
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// Close connections past their deadline: idle ones silently, half-sent heads with a 408.
fn expire(waiting: &mut Vec<Conn>, now: Instant, shared: &Shared) {
    let before = waiting.len();
    waiting.retain_mut(|c| {
        if c.deadline > now {
            return true;
        }
        if !c.unconsumed().is_empty() {
            let head_done = matches!(parse_head(c.unconsumed(), &shared.cfg.head_limits), Ok(Parsed::Complete(..)));
            reject(c, 408, if head_done { "Request body timeout" } else { "Request header timeout" });
        }
        false
    });
    shared.open.fetch_sub(before - waiting.len(), Ordering::SeqCst);
}

enum Progress {
    Wait,
    Ready,
    Close,
    Reject(HeadError),
}

/// Read what a readable waiting connection has sent and see whether a head is complete.
fn read_waiting(conn: &mut Conn, read_buf: &mut [u8], cfg: &ServerConfig) -> Progress {
    let was_idle = conn.unconsumed().is_empty();
    let cap = cfg.head_limits.max_head_bytes + 1 + cfg.preread_body_bytes as usize;
    let room = cap.saturating_sub(conn.buf.len()).clamp(1, read_buf.len());
    match conn.stream.read(&mut read_buf[..room]) {
        Ok(0) => return Progress::Close,
        Ok(n) => conn.buf.extend_from_slice(&read_buf[..n]),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Progress::Wait,
        Err(_) => return Progress::Close,
    }
    if was_idle {
        // The first byte of a new request starts the head clock.
        conn.deadline = Instant::now() + cfg.head_timeout;
    }
    match ready_len(conn.unconsumed(), cfg) {
        Ok(Some(n)) if conn.unconsumed().len() >= n => Progress::Ready,
        Ok(Some(_)) => {
            // The head is in; the (small) body is arriving. Each piece of it restarts the body
            // clock; the connection costs a socket here, never a worker.
            conn.deadline = Instant::now() + cfg.body_timeout;
            Progress::Wait
        }
        Ok(None) => Progress::Wait,
        Err(e) => Progress::Reject(e),
    }
}

fn accept_some(listener: &TcpListener, shared: &Shared, waiting: &mut Vec<Conn>, paused: &mut Option<Instant>) {
    let cfg = &shared.cfg;
    // Bounded so a flood of connects cannot starve the connections already waiting.
    for _ in 0..256 {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.open.load(Ordering::SeqCst) >= cfg.max_connections {
                    warn!("connection limit ({}) reached; refusing {peer}", cfg.max_connections);
                    let mut conn = new_conn(stream, peer, cfg);
                    reject(&mut conn, 503, "Server busy: too many connections");
                    continue;
                }
                shared.open.fetch_add(1, Ordering::SeqCst);
                waiting.push(new_conn(stream, peer, cfg));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. Pausing lets in-flight
                // connections finish and free it; the listener itself is fine.
                warn!(
                    "accept failed: {e}; pausing accepts for 100 ms (open connections: {})",
                    shared.open.load(Ordering::SeqCst)
                );
                *paused = Some(Instant::now() + Duration::from_millis(100));
                return;
            }
        }
    }
}

fn new_conn(stream: TcpStream, peer: SocketAddr, cfg: &ServerConfig) -> Conn {
    // Accepted sockets inherit nothing from the non-blocking listener on Linux, but be explicit:
    // workers use blocking reads with timeouts; the dispatcher only reads when poll says so.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    Conn { stream, peer, buf: Vec::new(), pos: 0, deadline: Instant::now() + cfg.head_timeout, not_before: None }
}

/// Answer an error on a connection we are about to close, without waiting on the client.
fn reject(conn: &mut Conn, status: u16, detail: &str) {
    let _ = conn.stream.set_write_timeout(Some(Duration::from_millis(200)));
    let mut resp = Response::detail(status, detail);
    let mut scratch = Vec::new();
    let _ = write_response(&mut conn.stream, &mut resp, 1, false, false, &mut scratch, None);
    let _ = conn.stream.shutdown(NetShutdown::Write);
    info!("- - {status} - 0us {}", conn.peer);
}

fn enqueue(shared: &Shared, conn: Conn) {
    let mut q = lock(&shared.queue);
    q.push_back(conn);
    shared.queued.store(q.len(), Ordering::SeqCst);
    drop(q);
    shared.queue_cv.notify_one();
}

// ---------------------------------------------------------------------------------------------
// Workers

fn worker_loop(shared: &Shared) {
    let mut scratch = Vec::with_capacity(16 * 1024);
    while let Some(conn) = next_conn(shared) {
        serve_conn(shared, conn, &mut scratch);
    }
}

fn next_conn(shared: &Shared) -> Option<Conn> {
    let mut q = lock(&shared.queue);
    loop {
        if let Some(conn) = q.pop_front() {
            shared.queued.store(q.len(), Ordering::SeqCst);
            return Some(conn);
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
        q = shared.queue_cv.wait(q).unwrap_or_else(|p| p.into_inner());
    }
}

/// What happened to a connection after one exchange.
enum After {
    KeepAlive,
    /// Keep the connection, but do not read its next request before this long.
    Hold(Duration),
    Close,
    /// The connection left the HTTP layer (WebSocket).
    Upgraded,
}

fn serve_conn(shared: &Shared, mut conn: Conn, scratch: &mut Vec<u8>) {
    let cfg = &shared.cfg;
    let _ = conn.stream.set_read_timeout(Some(cfg.body_timeout));
    let _ = conn.stream.set_write_timeout(Some(cfg.write_timeout));
    loop {
        let (head, used) = match parse_head(conn.unconsumed(), &cfg.head_limits) {
            Ok(Parsed::Complete(head, used)) => (head, used),
            Ok(Parsed::Partial) => return give_back(shared, conn),
            Err(e) => {
                reject(&mut conn, e.status(), &e.to_string());
                return close(shared, conn);
            }
        };
        conn.pos += used;
        match serve_one(shared, &mut conn, head, scratch) {
            After::KeepAlive => {}
            After::Hold(d) => {
                conn.not_before = Some(Instant::now() + d);
                return give_back(shared, conn);
            }
            After::Close => return close(shared, conn),
            After::Upgraded => {
                shared.open.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
        conn.compact();
        match wait_for_next_request(shared, conn) {
            Some(c) => conn = c,
            None => return,
        }
    }
}

/// After a response: keep the connection while the next request arrives quickly and nobody is
/// waiting for a worker; otherwise hand it back to the dispatcher (or close it when stopping).
/// Returns the connection when a complete head (or a bad one, for `serve_conn` to answer) is
/// buffered.
fn wait_for_next_request(shared: &Shared, mut conn: Conn) -> Option<Conn> {
    let cfg = &shared.cfg;
    let until = Instant::now() + cfg.keepalive_linger;
    let mut tmp = [0u8; 8192];
    loop {
        if is_ready(conn.unconsumed(), cfg) {
            return Some(conn);
        }
        let now = Instant::now();
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if stopping && conn.unconsumed().is_empty() {
            close(shared, conn);
            return None;
        }
        if now >= until || stopping || shared.queued.load(Ordering::SeqCst) > 0 {
            give_back(shared, conn);
            return None;
        }
        let slice = (until - now).min(Duration::from_millis(5));
        let mut fd = pollfd(conn.stream.as_raw_fd());
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fd, 1, slice.as_millis().max(1) as libc::c_int) };
        if ready > 0 {
            match conn.stream.read(&mut tmp) {
                Ok(0) | Err(_) => {
                    close(shared, conn);
                    return None;
                }
                Ok(n) => conn.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
}

fn give_back(shared: &Shared, mut conn: Conn) {
    if shared.stopping.load(Ordering::SeqCst) {
        return close(shared, conn);
    }
    conn.compact();
    let from = conn.not_before.unwrap_or_else(Instant::now);
    conn.deadline = from + if conn.buf.is_empty() { shared.cfg.idle_timeout } else { shared.cfg.head_timeout };
    lock(&shared.returns).push(conn);
    shared.wake.wake();
}

fn close(shared: &Shared, conn: Conn) {
    drop(conn);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// Serve one request whose head has been parsed and consumed.
fn serve_one(shared: &Shared, conn: &mut Conn, head: RequestHead, scratch: &mut Vec<u8>) -> After {
    let started = Instant::now();
    let router = &shared.router;
    let minor = head.minor_version;
    let head_only = head.method == "HEAD";
    let mut keep_alive = head.keep_alive;
    let method = head.method.clone();
    let path = head.path.clone();

    let found = router.find(&head.method, &head.path);
    let limit = match &found {
        Match::Found(route, _) => route.body_limit,
        _ => router.default_body_limit,
    };
    let query = head.query.clone();
    let framing = head.framing;
    let expect_continue = head.expect_continue;
    let wire = Wire { stream: &mut conn.stream, buf: &mut conn.buf, pos: &mut conn.pos };
    let body =
        BodyReader::new(wire, framing, limit, expect_continue).pace(shared.cfg.body_timeout, shared.cfg.min_body_rate);
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
                match catch_unwind(AssertUnwindSafe(|| route.call(&mut req))) {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(err)) => err.into_response(),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "non-string panic".into());
                        error!("handler for {method} {path} panicked: {what}");
                        keep_alive = false;
                        Response::detail(500, "Internal Server Error")
                    }
                }
            }
        }
        Match::MethodNotAllowed(allow) => Response::detail(405, "Method Not Allowed").header("allow", allow.join(", ")),
        Match::Redirect(to) => {
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
    drop(req);
    if resp.close || shared.stopping.load(Ordering::SeqCst) {
        keep_alive = false;
    }

    let upgrade = resp.upgrade.take();
    let hold = resp.hold;
    let pace = Pace { grace: shared.cfg.body_timeout, min_rate: shared.cfg.min_body_rate };
    let result = write_response(&mut conn.stream, &mut resp, minor, keep_alive, head_only, scratch, Some(pace));
    log_request(&method, &path, resp.status, result.as_ref().ok().copied(), started, conn.peer);
    if let Err(e) = result {
        debug!("write to {} failed: {e}", conn.peer);
        return After::Close;
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
            let _ = stream.set_read_timeout(None);
            let _ = stream.set_write_timeout(None);
            then(stream, leftover);
            return After::Upgraded;
        }
    }
    if body_left {
        linger_close(&mut conn.stream);
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
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(NetShutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let until = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 16 * 1024];
    let mut budget: usize = 4 * 1024 * 1024;
    while Instant::now() < until && budget > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

fn log_request(method: &str, path: &str, status: u16, bytes: Option<u64>, started: Instant, peer: SocketAddr) {
    // The path only: a query string may hold a token.
    let bytes = bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
    info!("{method} {path} {status} {bytes} {}us {peer}", started.elapsed().as_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_drops_consumed_bytes_and_big_idle_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        let mut conn =
            Conn { stream, peer, buf: b"abcdef".to_vec(), pos: 4, deadline: Instant::now(), not_before: None };
        conn.compact();
        assert_eq!(conn.buf, b"ef");
        conn.buf = Vec::with_capacity(100_000);
        conn.compact();
        assert_eq!(conn.buf.capacity(), 0);
    }
}
