//! The socket side of a WebSocket session: the outbound queue and its writer (`Outbound`), the
//! shared flusher thread for clients whose socket is full (`Flusher`), and the reader thread of
//! each session (`run`). The protocol rules are in `protocol.rs`, the bookkeeping in `hub.rs`;
//! the thread model as a whole is described in `ws/mod.rs`.
//!
//! Back-pressure lives in the reader (`pace_reading`): before reading the next frame it waits
//! while its own queue is over the high-water mark, or while its fan-out is still queued
//! elsewhere (see `ws/mod.rs`).
//!
//! Must never: block a sender on a client's socket (every write is `MSG_DONTWAIT`), let two
//! writers interleave frames on one socket (the `writing` token), or hold the queue's lock
//! during a system call.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::hub::{Member, Outbox, Pushed};
use super::incoming::{Decoder, Incoming, Violation};
use super::protocol::{self, ClientError, Encoded, ErrorCode};
use super::{Ws, WsSettings};
use crate::util::fifo::FifoGate;
use crate::{debug, info, warn};

/// Most frames handed to one `sendmsg` (each is one `iovec`).
const FRAMES_PER_WRITE: usize = 128;
/// A sender that finds the queue's writer token free writes for the recipient inline, at most
/// this many rounds (each non-blocking); if more keeps arriving, the flusher takes over.
const INLINE_ROUNDS: usize = 4;

/// Most writes the flusher makes for one socket in one turn before serving the others.
const FLUSHER_ROUNDS: usize = 16;
/// Most bytes the reader takes from its socket in one `recv`. It asks the socket how much is
/// there (`FIONREAD`) and allocates only that, so a reader waiting for its client holds no
/// buffer at all (`incoming::Decoder`).
const READ_MAX: usize = 16 * 1024;

/// Most messages a reader runs from what its client has already sent before it writes what they
/// queued (`Deferral`).
const DEFER_MESSAGES: usize = 16;

thread_local! {
    /// The outboxes whose writer token this thread took while a [`Deferral`] was active: their
    /// writing waits for `Deferral::flush`. `None`: a push that takes the token writes at once.
    /// Each outbox is listed at most once per flush (it keeps the token until then), so the list
    /// is at most the number of clients this thread's messages reached.
    static DEFERRED: RefCell<Option<Vec<Arc<Outbound>>>> = const { RefCell::new(None) };
}

/// Writes deferred while a reader runs messages its client had already sent (the second and
/// later of a run; the first too when the client's previous run had several, see `read_loop`).
/// A fan-out queues each recipient's frame and takes its writer token, and the writing
/// happens once for all of them, so a client reached by several of those messages gets them in
/// one `sendmsg`. Active from `start` to `flush`; the reader flushes before it waits for
/// anything, and dropping flushes too (every way out of `read_loop`, a panic included), so a
/// token is never left taken.
struct Deferral<'a> {
    /// The list's buffer while no deferral is active, kept so that a fan-out to 1,000 does not
    /// grow a new one for every run.
    spare: Vec<Arc<Outbound>>,
    /// The hub's fan-out gate: a flush that writes to several clients is a fan-out, and takes
    /// its turn like one (`Hub::writers`).
    writers: &'a FifoGate,
}

impl<'a> Deferral<'a> {
    fn new(writers: &'a FifoGate) -> Deferral<'a> {
        Deferral { spare: Vec::new(), writers }
    }

    /// From now until `flush`, a push on this thread that takes a writer token leaves the
    /// writing to `flush`.
    fn start(&mut self) {
        DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(std::mem::take(&mut self.spare));
            }
        });
    }

    /// Stop deferring and write every deferred outbox.
    fn flush(&mut self) {
        let Some(mut list) = DEFERRED.with(|d| d.borrow_mut().take()) else {
            return;
        };
        let _turn = (list.len() > 1).then(|| self.writers.enter());
        for out in list.drain(..) {
            out.write_turn(Writer::Sender);
        }
        self.spare = list;
    }
}

impl Drop for Deferral<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A fan-out's frame, and the queues whose writer token a push took with nothing queued (the
/// frame's direct writes, done together when the fan-out's pushes are over, `fan_out`).
type Batch = (Encoded, Vec<(Arc<Outbound>, RawFd)>);

/// A fan-out writes its batch every this many recipients, not only at its end: the first
/// members of a 1,000-member group must not wait for the last one's turn in the loop (with the
/// whole group in one batch, the first receiver's p99 went from 0.4 to 1.1 ms in
/// `scripts/bench.sh ws` (c)). One system call for 64 sends costs each of them 4 ns.
const BATCH_FLUSH: usize = 64;

thread_local! {
    /// The fan-out running on this thread (`fan_out`). At most `BATCH_FLUSH` entries.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Runs `push_each`, a fan-out's pushes of `frame` to its `recipients`, with the frame's direct
/// writes (each recipient whose queue was empty and whose token was free) done together, every
/// `BATCH_FLUSH` recipients and at the end: one io_uring submission for each such batch where
/// the kernel allows it
/// (`util::uring`), else one `send` each as without a batch. A recipient's token is taken at
/// its push, as always, so whatever others push to it meanwhile queues behind this frame, and
/// the write at the end carries on with it (`after_direct`). Dropping the batch writes it too (a
/// panic in `push_each` included), so a token is never left taken. A push of another frame
/// inside, or a push while a [`Deferral`] is active, goes its usual way.
pub fn fan_out<R>(frame: &Encoded, recipients: usize, push_each: impl FnOnce() -> R) -> R {
    struct Flush;
    impl Drop for Flush {
        fn drop(&mut self) {
            if let Some((frame, outs)) = BATCH.with(|b| b.borrow_mut().take()) {
                write_batch(&frame, &outs);
            }
        }
    }
    let nested = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let nested = b.is_some();
        if !nested {
            *b = Some((frame.clone(), Vec::with_capacity(recipients.min(BATCH_FLUSH))));
        }
        nested
    });
    if nested {
        return push_each();
    }
    let _flush = Flush;
    push_each()
}

/// The direct writes of one fan-out: `frame` to each of `outs` (token held, nothing queued).
fn write_batch(frame: &Encoded, outs: &[(Arc<Outbound>, RawFd)]) {
    if outs.len() < 2 {
        for (out, fd) in outs {
            out.write_direct(*fd, frame);
        }
        return;
    }
    crate::util::uring::with_ring(|ring| match ring {
        Some(ring) => {
            let fds: Vec<RawFd> = outs.iter().map(|(_, fd)| *fd).collect();
            let mut results = Vec::with_capacity(fds.len());
            ring.send_all(&fds, frame, &mut results);
            for ((out, _), sent) in outs.iter().zip(results) {
                out.after_direct(frame, sent);
            }
        }
        None => {
            for (out, fd) in outs {
                out.write_direct(*fd, frame);
            }
        }
    });
}

/// If a fan-out of `frame` is batching on this thread, list `out` (whose token the caller took,
/// with nothing queued) for its write, and say so; the list is written once it holds
/// `BATCH_FLUSH`, and what is left at the fan-out's end.
fn batch_write(out: &Outbound, fd: RawFd, frame: &Encoded) -> bool {
    let listed = BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some((f, outs)) if Arc::ptr_eq(f, frame) => {
            outs.push((out.arc(), fd));
            Some((outs.len() >= BATCH_FLUSH).then(|| std::mem::replace(outs, Vec::with_capacity(BATCH_FLUSH))))
        }
        _ => None,
    });
    match listed {
        None => false,
        Some(None) => true,
        Some(Some(full)) => {
            // Written with the thread-local released: nothing in the write pushes, but it must
            // not matter if something did.
            write_batch(frame, &full);
            true
        }
    }
}

/// Whether a [`Deferral`] is active on this thread.
fn deferring() -> bool {
    DEFERRED.with(|d| d.borrow().is_some())
}

/// List `out` for the active [`Deferral`]'s flush (the caller checked `deferring`).
fn defer_write(out: &Outbound) {
    DEFERRED.with(|d| d.borrow_mut().as_mut().expect("a deferral is active").push(out.arc()));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections below never panic half-way through an update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `sendmsg(bufs, MSG_DONTWAIT | MSG_NOSIGNAL)`: write what the socket takes now, never wait.
fn send_nonblocking(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(stream).send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// `send(buf, MSG_DONTWAIT | MSG_NOSIGNAL)`: the same for one frame (the usual case of a
/// fan-out), without the `msghdr` and `iovec` that `sendmsg` copies in.
fn send_one_nonblocking(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

// ---------------------------------------------------------------------------------------------
// The outbound queue

/// Who is writing: a sender that found the token free, or the flusher thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    Sender,
    Flusher,
}

/// What a writing turn ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Queue empty; the token is released.
    Idle,
    /// The socket is full (or the sender's turn is over): the flusher holds the token.
    Blocked,
    /// The connection is dead; the token is released.
    Dead,
}

struct OutState {
    /// The socket's descriptor once attached (-1 before), kept here beside the lock that every
    /// push takes anyway: reading it through the shared `TcpStream` cost a cache miss per
    /// recipient of a fan-out. `Outbound::stream` owns it.
    fd: RawFd,
    /// Encoded frames not yet fully written, oldest first.
    queue: VecDeque<Encoded>,
    /// Bytes of `queue[0]` already written.
    front_written: usize,
    /// Unwritten bytes in `queue`.
    bytes: usize,
    /// The writer token: someone is writing this queue (a sender, or the flusher).
    writing: bool,
    /// `push` only queues until the hub has registered the session (`Outbox::start`).
    started: bool,
    /// A close frame is queued: nothing more is accepted.
    closing: bool,
    /// The close frame is written and the socket is shut down for writing.
    fin: bool,
    /// The socket is shut down; everything queued was dropped.
    dead: bool,
    /// A close frame to send in place of the queue (slow consumer), waiting for the writer that
    /// holds the token: only it knows which queued bytes are already on their way.
    pending_close: Option<Encoded>,
    /// The session's reader waits for the queue to drain below the low-water mark.
    drain_waiter: bool,
}

impl OutState {
    /// Drop every queued frame but one already half written (the stream must stay well formed).
    /// Only while nobody is in the middle of writing from the queue.
    fn discard_unstarted(&mut self) {
        let keep = if self.front_written > 0 { self.queue.pop_front() } else { None };
        self.queue.clear();
        self.bytes = 0;
        if let Some(front) = keep {
            self.bytes = front.len() - self.front_written;
            self.queue.push_back(front);
        }
    }
}

/// One client's outbound side: a bounded queue of encoded frames and the rules for writing it.
///
/// Owner: the session (its reader thread holds an `Arc`), the hub's registry entry, and — while
/// the socket is full or the connection is closing — the flusher. Bound: `queue_frames` frames
/// and `queue_bytes` bytes, and its share of `queue_total_bytes` while all queues together are
/// past that; a push beyond any is refused with `Pushed::Full` (the hub then evicts the client
/// with 1008). Control frames (pong, ping, close) go through the same queue,
/// so frames never interleave.
pub struct Outbound {
    /// The session's socket (shared with its reader: one descriptor per session), used here
    /// for writing and for shutting it down. Attached once the `101` is written; the queue is
    /// registered in the hub (and may receive frames) a moment before that.
    stream: OnceLock<Arc<TcpStream>>,
    state: Mutex<OutState>,
    max_frames: usize,
    max_bytes: usize,
    /// `WS_QUEUE_TOTAL_MB`: over it (`protocol::live_frame_bytes`), a push to a queue holding
    /// `fair_share` bytes or more is refused like a full one.
    max_total: usize,
    /// The total divided among `WS_MAX_CLIENTS`: while no queue holds more, the queues together
    /// stay within the total.
    fair_share: usize,
    /// Back-pressure marks: above `high` (frames or bytes) the session stops reading its client
    /// until the queue is back under `low`. Half and a quarter of the hard limits.
    high: (usize, usize),
    low: (usize, usize),
    /// Signalled when the queue drops under `low` (or the session dies) while the reader waits.
    drained: Condvar,
    close_grace: Duration,
    flusher: Arc<Flusher>,
    me: Weak<Outbound>,
}

impl Outbound {
    /// A queue without a socket yet: `push` only queues until `attach` and `start`.
    pub fn new(settings: &WsSettings, flusher: Arc<Flusher>) -> Arc<Outbound> {
        Arc::new_cyclic(|me| Outbound {
            stream: OnceLock::new(),
            state: Mutex::new(OutState {
                fd: -1,
                queue: VecDeque::new(),
                front_written: 0,
                bytes: 0,
                writing: false,
                started: false,
                closing: false,
                fin: false,
                dead: false,
                pending_close: None,
                drain_waiter: false,
            }),
            max_frames: settings.queue_frames.max(1),
            max_bytes: settings.queue_bytes.max(1),
            max_total: settings.queue_total_bytes.max(1),
            fair_share: settings.queue_total_bytes / settings.max_clients.max(1),
            high: ((settings.queue_frames / 2).max(1), (settings.queue_bytes / 2).max(1)),
            low: ((settings.queue_frames / 4).max(1), (settings.queue_bytes / 4).max(1)),
            drained: Condvar::new(),
            close_grace: settings.close_grace,
            flusher,
            me: me.clone(),
        })
    }

    /// Give the queue its socket (once, before `start`).
    pub fn attach(&self, stream: Arc<TcpStream>) {
        let fd = stream.as_raw_fd();
        if self.stream.set(stream).is_ok() {
            lock(&self.state).fd = fd;
        }
    }

    fn fd(&self) -> RawFd {
        // poll(2) ignores negative descriptors.
        self.stream.get().map_or(-1, |s| s.as_raw_fd())
    }

    fn shutdown(&self, how: Shutdown) {
        if let Some(s) = self.stream.get() {
            let _ = s.shutdown(how);
        }
    }

    fn arc(&self) -> Arc<Outbound> {
        self.me.upgrade().expect("an Outbound is only used through its Arc")
    }

    /// Whether the session is over from the sending side (closing, or dead).
    pub fn is_closing(&self) -> bool {
        let st = lock(&self.state);
        st.closing || st.dead
    }

    fn below(&self, st: &OutState, mark: (usize, usize)) -> bool {
        st.queue.len() <= mark.0 && st.bytes <= mark.1
    }

    /// Unwritten bytes queued, and whether the queue is above its high-water mark.
    pub fn backlog(&self) -> (usize, bool) {
        let st = lock(&self.state);
        (st.bytes, !self.below(&st, self.high))
    }

    /// Bytes in the socket's own send queue that the client has not acknowledged yet
    /// (`SIOCOUTQ`; `None` before the socket is attached or where it cannot be known). It shrinks
    /// as the client reads even while the socket stays too full for our queue to move.
    pub fn unacked(&self) -> Option<u64> {
        self.stream.get().and_then(|s| crate::http::response::unacked(s))
    }

    /// Wait up to `timeout` for the queue to drain under its low-water mark. True when it has
    /// (or the session is closing: nothing more will drain).
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if st.dead || st.closing || self.below(&st, self.low) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            st.drain_waiter = true;
            st = self.drained.wait_timeout(st, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Write what is queued until the queue is empty, the socket is full, or (for a sender)
    /// the inline rounds are used up. The caller holds the writer token.
    fn write_turn(&self, who: Writer) -> Turn {
        let mut batch: Vec<Encoded> = Vec::new();
        // The usual case of a fan-out: one frame queued. It is written from here, without the
        // two vectors of the general case (a 1,000-member fan-out made 2,000 allocations).
        let mut single: Option<Encoded>;
        let mut rounds = 0;
        loop {
            let offset;
            {
                let mut st = lock(&self.state);
                if st.dead {
                    st.writing = false;
                    return Turn::Dead;
                }
                if let Some(close) = st.pending_close.take() {
                    st.discard_unstarted();
                    st.bytes += close.len();
                    st.queue.push_back(close);
                }
                if st.queue.is_empty() {
                    st.writing = false;
                    let fin = st.closing && !st.fin;
                    st.fin |= fin;
                    drop(st);
                    if fin {
                        // The close frame is out: end our side (FIN after the data).
                        self.shutdown(Shutdown::Write);
                    }
                    return Turn::Idle;
                }
                if who == Writer::Sender && rounds >= INLINE_ROUNDS {
                    drop(st);
                    self.flusher.adopt(self.arc());
                    return Turn::Blocked;
                }
                if who == Writer::Flusher && rounds >= FLUSHER_ROUNDS {
                    // Keep the token and yield: the flusher comes back after a turn for every
                    // other socket it is writing, so one busy client cannot monopolise it.
                    return Turn::Blocked;
                }
                offset = st.front_written;
                batch.clear();
                single = None;
                if st.queue.len() == 1 {
                    single = st.queue.front().cloned();
                } else {
                    batch.extend(st.queue.iter().take(FRAMES_PER_WRITE).cloned());
                }
            }
            let Some(stream) = self.stream.get() else {
                // Not attached (`start` comes after `attach`, so this cannot happen): a queue
                // without a socket cannot be written.
                self.kill();
                return Turn::Dead;
            };
            let sent = match &single {
                Some(f) => send_one_nonblocking(stream.as_fd(), &f[offset..]),
                None => {
                    let slices: Vec<IoSlice<'_>> = batch
                        .iter()
                        .enumerate()
                        .map(|(i, f)| IoSlice::new(if i == 0 { &f[offset..] } else { &f[..] }))
                        .collect();
                    send_nonblocking(stream, &slices)
                }
            };
            match sent {
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if who == Writer::Sender {
                        self.flusher.adopt(self.arc());
                    }
                    return Turn::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("ws write failed: {e}");
                    self.kill();
                    return Turn::Dead;
                }
            }
            rounds += 1;
        }
    }

    /// Write `frame` with the token held and the queue empty when it was taken (frames pushed
    /// since then are behind it). What the socket does not take goes to the front of the queue,
    /// and the turn goes on as any other: it ends with the token released or with the flusher.
    /// `fd` is the attached socket's (`OutState::fd`, never -1 here).
    fn write_direct(&self, fd: RawFd, frame: &Encoded) -> Turn {
        // SAFETY: `fd` is the descriptor of `self.stream`, set once and never taken back, so it
        // stays open as long as `self`, which outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sent = loop {
            match send_one_nonblocking(fd, frame) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                sent => break sent,
            }
        };
        self.after_direct(frame, sent)
    }

    /// The rest of `write_direct` once `frame`'s write has been tried (here or in a batch,
    /// `fan_out`): what the socket did not take goes to the front of the queue, and the turn
    /// goes on with whatever was queued behind it meanwhile.
    fn after_direct(&self, frame: &Encoded, sent: io::Result<usize>) -> Turn {
        let written = match sent {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => {
                debug!("ws write failed: {e}");
                self.kill();
                return Turn::Dead;
            }
        };
        if written < frame.len() {
            let mut st = lock(&self.state);
            if !st.dead {
                st.queue.push_front(frame.clone());
                st.front_written = written;
                st.bytes += frame.len() - written;
            }
        }
        self.write_turn(Writer::Sender)
    }

    /// `n` bytes were written from the front of the queue.
    fn advance(&self, n: usize) {
        let mut st = lock(&self.state);
        if st.dead {
            return;
        }
        st.bytes -= n;
        let mut done = st.front_written + n;
        while let Some(front) = st.queue.front() {
            if done < front.len() {
                break;
            }
            done -= front.len();
            st.queue.pop_front();
        }
        st.front_written = done;
        if st.drain_waiter && self.below(&st, self.low) {
            st.drain_waiter = false;
            self.drained.notify_all();
        }
    }

    /// Shut the socket down now and drop everything queued. Wakes the reader (its `read`
    /// returns 0). Idempotent.
    pub fn kill(&self) {
        {
            let mut st = lock(&self.state);
            if st.dead {
                return;
            }
            st.dead = true;
            st.queue.clear();
            st.bytes = 0;
            st.front_written = 0;
        }
        self.drained.notify_all();
        self.shutdown(Shutdown::Both);
    }

    /// The reader has finished. An abrupt end kills the socket; a closing one is left to finish
    /// writing (the flusher's deadline bounds it).
    pub fn finish(&self) {
        let done = {
            let st = lock(&self.state);
            !st.closing || st.queue.is_empty()
        };
        if done {
            self.kill();
        }
    }
}

impl Outbox for Outbound {
    fn push(&self, frame: &Encoded) -> Pushed {
        let defer = deferring();
        let direct = {
            let mut st = lock(&self.state);
            if st.closing || st.dead {
                return Pushed::Closed;
            }
            // A client whose queue is empty is keeping up: its frame goes out at once (or waits
            // for one writer's turn) whatever the total. One that is behind is closed when its
            // own queue is full, or when all queues together are and it holds more than its
            // share of the total: then the memory is going to clients that do not read, and
            // each of them goes at its next frame. (The total is read last: it is one cache
            // line that every frame's birth and death writes.)
            let behind = !st.queue.is_empty();
            let full = st.queue.len() >= self.max_frames
                || (behind && st.bytes + frame.len() > self.max_bytes)
                || (behind && st.bytes >= self.fair_share && protocol::live_frame_bytes() > self.max_total);
            if full {
                return Pushed::Full;
            }
            let take = !st.writing && st.started;
            st.writing |= take;
            // The usual case of a fan-out: the token is free and nothing is queued. The frame
            // goes straight to the socket from here and enters the queue only if the socket
            // does not take all of it.
            let direct = take && !defer && st.queue.is_empty() && st.fd >= 0;
            if !direct {
                st.queue.push_back(frame.clone());
                st.bytes += frame.len();
            }
            if !take {
                return Pushed::Queued;
            }
            direct.then_some(st.fd)
        };
        if let Some(fd) = direct {
            if !batch_write(self, fd, frame) {
                self.write_direct(fd, frame);
            }
        } else if defer {
            defer_write(self);
        } else {
            self.write_turn(Writer::Sender);
        }
        Pushed::Queued
    }

    fn start(&self) {
        {
            let mut st = lock(&self.state);
            st.started = true;
            if st.writing || st.queue.is_empty() || st.dead {
                return;
            }
            st.writing = true;
        }
        self.write_turn(Writer::Sender);
    }

    fn close(&self, code: u16, reason: &str, discard_queued: bool) {
        let write_now = {
            let mut st = lock(&self.state);
            if st.closing || st.dead {
                return;
            }
            st.closing = true;
            let frame = protocol::encode_close(code, reason);
            if discard_queued && st.writing {
                // A writer may be sending queued frames right now: it does the discarding.
                st.pending_close = Some(frame);
            } else {
                if discard_queued {
                    st.discard_unstarted();
                }
                st.bytes += frame.len();
                st.queue.push_back(frame);
            }
            let take = st.started && !st.writing;
            st.writing |= take;
            take
        };
        self.flusher.watch(self.arc(), Instant::now() + self.close_grace);
        if write_now {
            self.write_turn(Writer::Sender);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The flusher

/// Work handed to the flusher by other threads.
#[derive(Default)]
struct Inbox {
    /// Queues whose socket was full: the flusher now holds their writer token.
    adopt: Vec<Arc<Outbound>>,
    /// Closing sessions and when to give up on them (shut the socket down for good).
    watch: Vec<(Arc<Outbound>, Instant)>,
}

/// One thread (`ws-flush`) for every session at once: it finishes writing queues whose socket
/// was full (polling for `POLLOUT`) and shuts down closing connections whose grace has passed.
///
/// Its lists are bounded by the number of sessions (a session is in each at most once at a
/// time: the writer token and the one-time close guarantee it). It never blocks on a socket.
pub struct Flusher {
    inbox: Mutex<Inbox>,
    wake_tx: UnixStream,
}

impl Flusher {
    /// Start the flusher thread.
    pub fn start() -> io::Result<Arc<Flusher>> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let flusher = Arc::new(Flusher { inbox: Mutex::new(Inbox::default()), wake_tx });
        let f = flusher.clone();
        std::thread::Builder::new().name("ws-flush".into()).stack_size(256 * 1024).spawn(move || f.run(wake_rx))?;
        Ok(flusher)
    }

    fn wake(&self) {
        // A full pipe already means "wake up".
        let _ = (&self.wake_tx).write(b"x");
    }

    fn adopt(&self, out: Arc<Outbound>) {
        lock(&self.inbox).adopt.push(out);
        self.wake();
    }

    fn watch(&self, out: Arc<Outbound>, deadline: Instant) {
        lock(&self.inbox).watch.push((out, deadline));
        self.wake();
    }

    fn run(&self, mut wake_rx: UnixStream) {
        let mut writing: Vec<Arc<Outbound>> = Vec::new();
        let mut watching: Vec<(Arc<Outbound>, Instant)> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut sink = [0u8; 64];
        loop {
            {
                let mut inbox = lock(&self.inbox);
                writing.append(&mut inbox.adopt);
                watching.append(&mut inbox.watch);
            }
            // Closing sessions past their grace: shut them down (this also ends their reader).
            let now = Instant::now();
            watching.retain(|(out, deadline)| {
                if *deadline <= now {
                    out.kill();
                    false
                } else {
                    !lock(&out.state).dead
                }
            });
            // Killed meanwhile (their token no longer matters).
            writing.retain(|out| !lock(&out.state).dead);
            fds.clear();
            fds.push(libc::pollfd { fd: wake_rx.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            fds.extend(writing.iter().map(|o| libc::pollfd { fd: o.fd(), events: libc::POLLOUT, revents: 0 }));
            let timeout_ms = match watching.iter().map(|(_, d)| *d).min() {
                Some(d) => d.saturating_duration_since(now).as_millis().clamp(1, 60_000) as libc::c_int,
                None => -1,
            };
            // SAFETY: `fds` is a valid slice of initialised pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    warn!("ws flusher: poll failed: {err}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[0].revents != 0 {
                while matches!(wake_rx.read(&mut sink), Ok(n) if n > 0) {}
            }
            // Back to front, so `swap_remove` only moves entries already visited.
            for i in (0..writing.len()).rev() {
                if fds[i + 1].revents == 0 {
                    continue;
                }
                if writing[i].write_turn(Writer::Flusher) != Turn::Blocked {
                    writing.swap_remove(i);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reader

/// Why a read gave no message.
enum Failed {
    /// The client broke a rule of the protocol.
    Violation(Violation),
    /// The connection ended (end of stream) without a close frame.
    Eof,
    Io(io::Error),
}

/// The next message the client has sent: from what was read already, else after one read of
/// the socket. `wait`: how long to wait for the socket to be readable (`None`: not at all, only
/// what has already arrived, for running the messages a client has already sent in one go,
/// `Deferral`). `Ok(None)`: no whole message yet (nothing arrived in time, or only part of one).
fn next_message(d: &mut Decoder, stream: &TcpStream, wait: Option<Duration>) -> Result<Option<Incoming>, Failed> {
    if let Some(m) = d.message().map_err(Failed::Violation)? {
        return Ok(Some(m));
    }
    match fill(d, stream, wait) {
        Ok(0) => return Err(Failed::Eof),
        Ok(_) => {}
        Err(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Failed::Io(e)),
    }
    d.message().map_err(Failed::Violation)
}

/// One read of the socket into `d`, of as many bytes as are there (at most `READ_MAX`): the
/// buffer is allocated for the read, never held while waiting. `Ok(0)`: end of stream.
/// `TimedOut` when nothing arrived within `wait`, `WouldBlock` when `wait` is `None` and
/// nothing is there.
fn fill(d: &mut Decoder, stream: &TcpStream, wait: Option<Duration>) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    if let Some(wait) = wait {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = wait.as_millis().clamp(1, libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            0 => return Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
    }
    let mut ready: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut ready) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready <= 0 {
        if wait.is_none() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Readable with nothing to read: the end of the stream or an error; `recv` says which.
        let mut one = [0u8; 1];
        let n = recv(fd, &mut one)?;
        if n > 0 {
            d.feed(&one[..n]);
        }
        return Ok(n);
    }
    d.read_with((ready as usize).min(READ_MAX), |space| recv(fd, space))
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call; `fd` is the
    // session's socket, open for the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The body of a session's reader thread, from the socket handed over by the HTTP layer to the
/// end of the connection. The client is already registered (`member`, with `out` as its queue,
/// holding at least the welcome frame): attach the socket and start writing, then read frames
/// and run them, ping, time out, and leave the hub on any kind of end.
pub fn run(ws: &Ws, member: &Member, out: &Arc<Outbound>, stream: TcpStream, leftover: Vec<u8>, peer: SocketAddr) {
    let stream = Arc::new(stream);
    out.attach(stream.clone());
    out.start();
    debug!("ws {} connected from {peer}", member.id);
    let end = read_loop(ws, &stream, leftover, member, out);
    // Whatever ended it, the client is gone from the registry and its group hears `leave`
    // (unless it was replaced or evicted: then its entry is already someone else's or gone).
    // Its queue takes nothing more from here on (closing, or dead for a dropped connection)
    // before the group hears it: when a whole group goes at once, each `leave` then reaches
    // only the members still there, not the thousands whose own end is a moment behind.
    if let End::Dropped(_) = end {
        out.kill();
    }
    ws.hub.disconnect(member);
    match end {
        End::Closed => {
            drain(&stream, ws.settings.close_grace);
            debug!("ws {} closed the connection", member.id);
        }
        End::ClosedByServer(why) => {
            drain(&stream, ws.settings.close_grace);
            info!("ws {} disconnected: {why}", member.id);
        }
        End::Dropped(why) => debug!("ws {} dropped: {why}", member.id),
    }
    out.finish();
}

enum End {
    /// The client sent a close frame; ours answers it.
    Closed,
    /// We closed it (a close frame is queued, or the socket is shut).
    ClosedByServer(String),
    /// The connection ended without a close handshake.
    Dropped(String),
}

fn read_loop(ws: &Ws, stream: &TcpStream, leftover: Vec<u8>, member: &Member, out: &Arc<Outbound>) -> End {
    let s = &ws.settings;
    // Wake at least this often to ping and to check the silence timeout.
    let tick = s.ping_interval.min(s.ping_timeout).max(Duration::from_millis(10));
    let mut decoder = Decoder::new(protocol::MESSAGE_MAX, leftover);
    // Only run what has already arrived (the rest of a run of messages, see below).
    let mut nonblocking = false;
    let mut last_seen = Instant::now();
    let mut next_ping = last_seen + s.ping_interval;
    let hub = &ws.hub;
    let mut fanout = VecDeque::new();
    // Messages the client has already sent run one after the other with their writes deferred
    // (at most DEFER_MESSAGES), then everything they queued is written before the next wait.
    // The first message of a run is deferred too when the last run had several: a client that
    // streams is likely sending more while this one fans out. Otherwise its writes go out at
    // once (a queue round trip less per recipient, for the many clients that send one at a time).
    let mut deferral = Deferral::new(hub.writers());
    let mut run = 0;
    let mut streaming = false;
    loop {
        if !nonblocking {
            deferral.flush();
            if let Some(end) = pace_reading(s, member, out, &mut fanout, &mut last_seen) {
                return end;
            }
        }
        if nonblocking || streaming {
            deferral.start();
        }
        let result = next_message(&mut decoder, stream, (!nonblocking).then_some(tick));
        let now = Instant::now();
        let got_message = matches!(result, Ok(Some(_)));
        match result {
            Ok(None) => {}
            Ok(Some(message)) => {
                last_seen = now;
                match message {
                    Incoming::Text(text) => match protocol::parse_client_text(&text) {
                        Ok(cmd) => fanout.extend(hub.handle(member, cmd)),
                        Err(e) => hub.send_error(member, out.clone(), &e),
                    },
                    Incoming::Binary => hub.send_error(
                        member,
                        out.clone(),
                        &ClientError::new(ErrorCode::Unsupported, "binary frames are not supported: send text"),
                    ),
                    Incoming::Ping(payload) => {
                        hub.push_own(member, out.clone(), &protocol::encode_pong(&payload));
                    }
                    Incoming::Pong => {}
                    Incoming::Close(code) => {
                        // Echo the client's code (1000 when it sent none, 1002 for one that may
                        // not be sent on the wire) before its group hears `leave`: from here on
                        // its queue takes nothing more, so a group whose members all say goodbye
                        // at once (a mass disconnect) is not sent the `leave` notices of those
                        // who have already gone.
                        out.close(code, "", false);
                        hub.disconnect(member);
                        return End::Closed;
                    }
                }
            }
            Err(Failed::Violation(v)) => {
                let detail = v.detail(protocol::MESSAGE_MAX);
                return server_close(hub, member, out, v.code(), v.reason(), detail);
            }
            Err(Failed::Eof) => return End::Dropped("connection closed without a close frame".into()),
            Err(Failed::Io(e)) => return End::Dropped(format!("read failed: {e}")),
        }
        // Go on with what has already arrived while the run stays short and small: its writes
        // are all still queued, so its fan-out must stay under half a queue (what
        // `pace_reading` lets through without a pause) and its own queue under the high-water
        // mark.
        run += usize::from(got_message);
        nonblocking =
            got_message && run < DEFER_MESSAGES && !out.backlog().1 && fanout_bytes(&mut fanout) <= s.queue_bytes / 2;
        if !nonblocking {
            if run > 0 {
                streaming = run > 1;
            }
            run = 0;
        }
        if out.is_closing() {
            // Replaced, evicted as a slow consumer, or the server is shutting down: whoever
            // closed it has already taken it out of the hub.
            return End::ClosedByServer("closed by the server".into());
        }
        if now.duration_since(last_seen) >= s.ping_timeout {
            out.kill();
            return End::Dropped(format!("silent for {} s (ping timeout)", s.ping_timeout.as_secs_f32()));
        }
        if now >= next_ping {
            hub.push_own(member, out.clone(), &protocol::encode_ping());
            next_ping = now + s.ping_interval;
        }
    }
}

/// Longest pause of a sender's reading while its fan-out drains (see `pace_reading`).
const FANOUT_MAX_PAUSE: Duration = Duration::from_secs(1);
/// Most fan-out frames a session keeps track of.
const FANOUT_TRACKED: usize = 1024;

/// What a queue entry costs beside the frame it points to (the frame is shared, not copied).
const QUEUE_ENTRY_BYTES: usize = std::mem::size_of::<Encoded>();

/// The memory a session's fan-out still holds in recipients' queues: each frame once (the
/// queues share it) and one entry per queue holding it. Forgets the frames no queue holds any
/// more, and keeps the newest `FANOUT_TRACKED`.
///
/// Once it counted each frame's bytes once per queue holding it. With a dozen members of a
/// group not reading, that passed `queue_bytes` while each of their queues was still far from its
/// own limit, so the sender was held to one message per `FANOUT_MAX_PAUSE` and so was everyone
/// in the group, for as long as those queues took to fill at that pace: about 1,000 s at the
/// default limits (a probe found the readers of such a group getting a message a second, tens
/// of seconds late).
fn fanout_bytes(f: &mut VecDeque<Encoded>) -> usize {
    f.retain(|frame| Arc::strong_count(frame) > 1);
    while f.len() > FANOUT_TRACKED {
        f.pop_front();
    }
    f.iter().map(|frame| frame.len() + QUEUE_ENTRY_BYTES * (Arc::strong_count(frame) - 1)).sum::<usize>()
}

/// Back-pressure, before the next frame is read from the client:
///
/// - **Its own queue.** Above the high-water mark (half the hard limit) the client is not read
///   until the queue drains under the low-water mark (a quarter): a client that sends faster
///   than it reads its own copies (`/group` echoes, `sent` receipts, pongs) is slowed down by
///   TCP, never closed for it. If neither the queue nor the socket's own send queue (the
///   bytes the client has not acknowledged, `Outbound::unacked`) makes progress for
///   `ping_timeout`, the client reads nothing at all and is dropped. The socket's queue moves
///   each time the client's receive window opens again (every few tens of KiB it reads), while
///   ours moves only once the socket has room: after a third of its send buffer, megabytes, has
///   been read.
/// - **Its fan-out.** The frames its commands sent to others (`fanout`, the `Arc`s handed back
///   by `Hub::handle`) count for as long as some queue still holds them (the `Arc`'s count), as
///   the memory they hold (`fanout_bytes`): above `queue_bytes` in all, it is not read until
///   that falls under half, or for at most `FANOUT_MAX_PAUSE`. A pause that ends with nothing
///   drained means the recipients holding those frames do not read at all: the frames are
///   forgotten, so the sender (and with it its group) is not held up by them again; their
///   own queue limits bound what they hold and close them when full. So one client's broadcast
///   cannot hold more than about one queue's worth of memory at a time, and clients that do
///   not read cost the others at most one pause.
///
/// Returns how the session ends when the client has to go.
fn pace_reading(
    s: &WsSettings,
    member: &Member,
    out: &Arc<Outbound>,
    fanout: &mut VecDeque<Encoded>,
    last_seen: &mut Instant,
) -> Option<End> {
    let (mut bytes, high) = out.backlog();
    if high {
        let mut progress_at = Instant::now();
        let mut in_socket = out.unacked();
        while !out.wait_drained(Duration::from_millis(250)) {
            // Progress is our queue going under its lowest level so far, or the socket's own
            // send queue shrinking since the last look: a slow reader behind a send buffer of
            // megabytes takes bytes for a long time before the socket has room for ours again.
            let (now_bytes, _) = out.backlog();
            let now_in_socket = out.unacked();
            let socket_moved = matches!((now_in_socket, in_socket), (Some(now), Some(before)) if now < before);
            in_socket = now_in_socket;
            if now_bytes < bytes || socket_moved {
                progress_at = Instant::now();
                bytes = bytes.min(now_bytes);
            }
            if progress_at.elapsed() >= s.ping_timeout {
                info!(
                    "ws client {} is not reading: neither its queue nor its socket's send queue has moved for {} s; disconnecting",
                    member.id,
                    s.ping_timeout.as_secs()
                );
                out.kill();
                return Some(End::Dropped("not reading its own queue".into()));
            }
        }
        // It reads: it is alive, however long it was not read.
        *last_seen = Instant::now();
    }
    let held = fanout_bytes(fanout);
    if held > s.queue_bytes {
        let until = Instant::now() + FANOUT_MAX_PAUSE;
        let mut now_held = held;
        while now_held > s.queue_bytes / 2 && Instant::now() < until && !out.is_closing() {
            std::thread::sleep(Duration::from_millis(2));
            now_held = fanout_bytes(fanout);
        }
        if now_held >= held {
            // Nothing drained in a whole pause: whoever holds these frames is not reading.
            fanout.clear();
        }
        *last_seen = Instant::now();
    }
    None
}

fn server_close(
    hub: &super::hub::Hub,
    member: &Member,
    out: &Outbound,
    code: u16,
    reason: &str,
    detail: String,
) -> End {
    // The close frame first, then `leave` to the group (as for a client's close, `read_loop`).
    out.close(code, reason, false);
    hub.disconnect(member);
    End::ClosedByServer(format!("{reason} ({code}): {detail}"))
}

/// After a close: read and discard until the client closes its side (so our close frame is
/// not lost to a reset), or the grace period is over.
fn drain(stream: &TcpStream, grace: Duration) {
    let until = Instant::now() + grace;
    let _ = stream.set_read_timeout(Some(grace.clamp(Duration::from_millis(10), Duration::from_secs(1))));
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        match (&*stream).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(frames: usize, bytes: usize) -> WsSettings {
        WsSettings { queue_frames: frames, queue_bytes: bytes, ..WsSettings::default() }
    }

    use crate::util::tcp_pair as pair;

    /// An outbound queue with `frames`/`bytes` limits attached to a fresh connection (not yet
    /// started), and the client's end of it.
    fn attached(frames: usize, bytes: usize) -> (Arc<Outbound>, TcpStream) {
        let (server, client) = pair();
        let out = Outbound::new(&settings(frames, bytes), Flusher::start().unwrap());
        out.attach(Arc::new(server));
        (out, client)
    }

    fn read_frames(client: &mut TcpStream, want: usize) -> Vec<(u8, Vec<u8>)> {
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut tmp = [0u8; 65536];
        while frames.len() < want {
            let n = client.read(&mut tmp).unwrap();
            assert!(n > 0, "closed after {} frames", frames.len());
            buf.extend_from_slice(&tmp[..n]);
            while let Some(len) = protocol::frame_len(&buf) {
                frames.push(protocol::decode_frame(&buf).expect("a whole frame"));
                buf.drain(..len);
            }
        }
        frames
    }

    /// A client of `group` with its session's reader thread running (as `Ws::open_session` and
    /// the `101` start one) on a fresh connection: the client's end and the thread.
    fn session(ws: &Arc<Ws>, id: &str, group: &str) -> (TcpStream, std::thread::JoinHandle<()>) {
        let (server, client) = pair();
        let out = Outbound::new(&ws.settings, Flusher::start().unwrap());
        let member = ws.hub.connect(Some(id), Some(group), false, out.clone());
        let (ws, peer) = (ws.clone(), server.peer_addr().unwrap());
        (client, std::thread::spawn(move || run(&ws, &member, &out, server, Vec::new(), peer)))
    }

    /// A client's close frame (1000), masked as a client's must be.
    const CLIENT_CLOSE: [u8; 8] = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2];

    /// Every frame until the server ends the connection: (opcode, `type` of a text frame).
    fn frames_to_end(client: &mut TcpStream) -> Vec<(u8, String)> {
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).expect("the server ends the connection");
        let mut frames = Vec::new();
        while let Some(len) = protocol::frame_len(&bytes) {
            let (op, payload) = protocol::decode_frame(&bytes).expect("a whole frame");
            let kind = serde_json::from_slice::<serde_json::Value>(&payload).ok();
            frames.push((op, kind.and_then(|v| v["type"].as_str().map(String::from)).unwrap_or_default()));
            bytes.drain(..len);
        }
        frames
    }

    #[test]
    fn a_client_that_said_goodbye_is_answered_at_once_and_sent_no_more_notices() {
        // A, B, C and D in one group, then every fan-out held back (all the writers' permits
        // taken), as when a whole group disconnects at once and the `leave` notices queue for
        // their turn. A and B close: each must get its close answered now, not after its own
        // `leave` has had its turn, and B must not be sent A's `leave` (it has gone).
        let ws = Arc::new(Ws::new(WsSettings::default()));
        let mut clients: Vec<_> = ["a", "b", "c", "d"].iter().map(|id| session(&ws, id, "g")).collect();
        for (i, (client, _)) in clients.iter_mut().enumerate() {
            // welcome, then a `join` for each member after it
            let first = read_frames(client, 4 - i);
            assert_eq!(first.len(), 4 - i);
        }
        let gate = ws.hub.writers();
        let mut held = Vec::new();
        while gate.free() > 0 {
            held.push(gate.enter());
        }
        for who in [0, 1] {
            clients[who].0.write_all(&CLIENT_CLOSE).unwrap();
            let answer = read_frames(&mut clients[who].0, 1);
            assert_eq!(answer[0], (0x8, 1000u16.to_be_bytes().to_vec()), "the close is echoed");
        }
        drop(held);
        for who in [0, 1] {
            let rest = frames_to_end(&mut clients[who].0);
            assert!(rest.is_empty(), "after its close answer, client {who} was sent {rest:?}");
        }
        for who in [2, 3] {
            let leaves = read_frames(&mut clients[who].0, 2);
            let kinds: Vec<_> =
                leaves.iter().map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap()).collect();
            assert!(kinds.iter().all(|k| k["type"] == "leave"), "{kinds:?}");
        }
        for (client, thread) in clients {
            drop(client);
            thread.join().unwrap();
        }
    }

    #[test]
    fn all_queues_together_are_held_to_their_total() {
        // The count is process-wide: the exact sums below hold because nextest runs each test
        // in a process of its own (the suite's runner); limits start from what is alive now.
        let chunk = |i: usize| protocol::encode_text(format!("{i:04}{}", "x".repeat(1020)));
        let base = protocol::live_frame_bytes();
        let total = 8 * chunk(0).len();
        let queue = |total: usize| {
            let s = WsSettings { queue_total_bytes: base + total, max_clients: 4, ..settings(1000, 1 << 20) };
            Outbound::new(&s, Flusher::start().unwrap())
        };
        // Not started: every push queues. The first eight fit under the total.
        let (lagging, other) = (queue(total), queue(total));
        for i in 0..8 {
            assert_eq!(lagging.push(&chunk(i)), Pushed::Queued, "frame {i}");
        }
        assert_eq!(protocol::live_frame_bytes() - base, total);
        // Over it with the next frame: a queue that is behind by more than its share of the
        // total (a quarter: four clients) is refused, though its own limit (1 MiB) is far off.
        assert_eq!(lagging.push(&chunk(8)), Pushed::Full);
        // Another client takes frames until it holds its share, then it is refused too.
        let len = chunk(0).len();
        let share = (base + total) / 4;
        let mut taken = 0;
        while other.push(&chunk(100 + taken)) == Pushed::Queued {
            taken += 1;
            assert!(taken < 100, "the total never refused the second client");
        }
        assert_eq!(taken, share.div_ceil(len).max(1));
        // A frame shared by many queues counts once.
        let shared = chunk(10);
        let before = protocol::live_frame_bytes();
        let many: Vec<_> = (0..50).map(|_| queue(1 << 30)).collect();
        for q in &many {
            assert_eq!(q.push(&shared), Pushed::Queued);
        }
        assert_eq!(protocol::live_frame_bytes(), before);
        // Memory given back: the lagging client's frames are freed with its queue.
        drop((lagging, other, many, shared));
        assert_eq!(protocol::live_frame_bytes(), base);
        let fresh = queue(total);
        for i in 0..8 {
            assert_eq!(fresh.push(&chunk(i)), Pushed::Queued, "frame {i} after the others went");
        }
    }

    #[test]
    fn frames_arrive_in_order_and_only_after_start() {
        let (out, mut client) = attached(1000, 1 << 20);
        for i in 0..10 {
            assert_eq!(out.push(&protocol::encode_text(format!("m{i}"))), Pushed::Queued);
        }
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert!(client.read(&mut [0u8; 16]).is_err(), "nothing is written before start");
        out.start();
        for i in 10..500 {
            out.push(&protocol::encode_text(format!("m{i}")));
        }
        let frames = read_frames(&mut client, 500);
        for (i, (op, p)) in frames.iter().enumerate() {
            assert_eq!((*op, String::from_utf8_lossy(p).into_owned()), (1, format!("m{i}")));
        }
    }

    /// Under a deferral, a push that takes the writer token leaves the writing to the flush:
    /// the client sees nothing until then, then every frame in order, with the ones another
    /// thread pushed meanwhile (they waited behind the token). After a flush a push writes at
    /// once until the next start; dropping the deferral flushes too.
    #[test]
    fn deferred_writes_wait_for_the_flush_and_keep_their_order() {
        let (out, mut client) = attached(1000, 1 << 20);
        out.start();
        let text = |i: usize| protocol::encode_text(format!("m{i}"));
        let nothing_yet = |client: &mut TcpStream| {
            client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            client.read(&mut [0u8; 16]).is_err()
        };
        let writers = FifoGate::new(1);
        let mut deferral = Deferral::new(&writers);
        deferral.start();
        for i in 0..3 {
            assert_eq!(out.push(&text(i)), Pushed::Queued);
        }
        let other = out.clone();
        std::thread::spawn(move || other.push(&protocol::encode_text("m3".to_string()))).join().unwrap();
        assert!(nothing_yet(&mut client), "nothing is written before the flush");
        deferral.flush();
        let got: Vec<String> =
            read_frames(&mut client, 4).into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(got, ["m0", "m1", "m2", "m3"]);
        out.push(&text(4));
        assert_eq!(read_frames(&mut client, 1)[0].1, b"m4", "after a flush, a push writes at once");
        deferral.start();
        out.push(&text(5));
        assert!(nothing_yet(&mut client), "deferred again after start");
        drop(deferral);
        assert_eq!(read_frames(&mut client, 1)[0].1, b"m5", "dropping flushes");
        out.push(&text(6));
        assert_eq!(read_frames(&mut client, 1)[0].1, b"m6");
    }

    /// A flush that writes to several clients is a fan-out: it waits for its turn at the hub's
    /// gate (`Hub::writers`) like any other, and writes nothing before it.
    #[test]
    fn a_deferred_flush_to_several_clients_takes_its_turn() {
        let writers = Arc::new(FifoGate::new(1));
        let (a, mut client_a) = attached(1000, 1 << 20);
        let (b, mut client_b) = attached(1000, 1 << 20);
        a.start();
        b.start();
        let turn = writers.enter();
        let flusher = {
            let (writers, a, b) = (writers.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut deferral = Deferral::new(&writers);
                deferral.start();
                a.push(&protocol::encode_text("to a".to_string()));
                b.push(&protocol::encode_text("to b".to_string()));
                deferral.flush();
            })
        };
        crate::util::within("the flush did not wait for its turn", || writers.waiting() == 1);
        client_a.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert!(client_a.read(&mut [0u8; 16]).is_err(), "nothing is written before its turn");
        drop(turn);
        flusher.join().unwrap();
        assert_eq!(read_frames(&mut client_a, 1)[0].1, b"to a");
        assert_eq!(read_frames(&mut client_b, 1)[0].1, b"to b");
        assert_eq!(writers.free(), 1);
    }

    #[test]
    fn a_full_socket_never_blocks_the_sender_and_the_flusher_finishes_the_job() {
        let (out, mut client) = attached(100_000, 256 << 20);
        out.start();
        // 32 MiB: far more than the socket buffers hold while the client reads nothing.
        let frame = protocol::encode_text("x".repeat(32 * 1024));
        let started = Instant::now();
        for _ in 0..1024 {
            assert_eq!(out.push(&frame), Pushed::Queued);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "pushing must not wait for the reader");
        let frames = read_frames(&mut client, 1024);
        assert!(frames.iter().all(|(op, p)| *op == 1 && p.len() == 32 * 1024));
    }

    #[test]
    fn a_slow_consumer_close_mid_write_keeps_the_stream_well_formed() {
        // The close comes while frames are being written (by the pusher or the flusher); the
        // bytes on the wire must still be whole frames, then the close frame, then the end.
        let flusher = Flusher::start().unwrap();
        let mut discarded_some = false;
        for round in 0..150usize {
            let (server, mut client) = pair();
            let out = Outbound::new(&settings(1_000_000, 1 << 30), flusher.clone());
            out.attach(Arc::new(server));
            out.start();
            let reader = std::thread::spawn(move || {
                client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut all = Vec::new();
                let mut tmp = [0u8; 65536];
                loop {
                    match client.read(&mut tmp) {
                        Ok(0) => return all,
                        Ok(n) => all.extend_from_slice(&tmp[..n]),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let frame = protocol::encode_text("z".repeat(3000 + round * 37));
            let n = 400;
            let pusher = {
                let (out, frame) = (out.clone(), frame.clone());
                std::thread::spawn(move || {
                    for _ in 0..n {
                        out.push(&frame);
                    }
                })
            };
            // Close at a moment that moves from round to round.
            let spin = Instant::now() + Duration::from_micros((round as u64 * 53) % 3000);
            while Instant::now() < spin {}
            out.close(1008, "slow", true);
            pusher.join().unwrap();
            let all = reader.join().unwrap();
            let mut pos = 0;
            let mut texts = 0;
            loop {
                let len = protocol::frame_len(&all[pos..])
                    .unwrap_or_else(|| panic!("round {round}: a broken frame after {texts} frames"));
                let (op, payload) = protocol::decode_frame(&all[pos..]).expect("a whole frame");
                pos += len;
                if op == 0x8 {
                    assert_eq!(&payload[..2], &1008u16.to_be_bytes(), "round {round}");
                    break;
                }
                assert_eq!((op, len), (1, frame.len()), "round {round}: frame {texts}");
                texts += 1;
            }
            assert_eq!(pos, all.len(), "round {round}: bytes after the close frame");
            discarded_some |= texts < n;
        }
        assert!(discarded_some, "the close never came before the last frame");
    }

    /// Several threads push at once while the client reads slowly: a push that finds the queue
    /// idle writes its frame itself (outside the lock), the others queue behind it, and a frame
    /// the socket takes only in part goes back to the front. Every frame must arrive whole, and
    /// each thread's frames in the order it pushed them.
    /// Frame `i` of a pusher: its padding (every fourth a big one that writes end part-way
    /// through).
    fn pad_of(i: usize) -> usize {
        if i % 4 == 1 {
            20_000 + 997 * (i % 40)
        } else {
            i % 300
        }
    }

    /// A client that reads in small bites with pauses (the socket keeps filling and draining)
    /// until it has `want` whole frames; everything it read.
    fn slow_reader(mut client: TcpStream, want: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let (mut all, mut tmp) = (Vec::new(), [0u8; 8192]);
            // Whole frames seen so far, and where the next one starts.
            let (mut frames, mut pos) = (0, 0);
            for reads in 1u32.. {
                let n = client.read(&mut tmp).unwrap();
                assert!(n > 0, "closed after {frames} frames");
                all.extend_from_slice(&tmp[..n]);
                while let Some(len) = protocol::frame_len(&all[pos..]) {
                    pos += len;
                    frames += 1;
                }
                if frames == want {
                    break;
                }
                if reads % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            all
        })
    }

    /// `all` holds, for each of `threads` pushers, its frames `t:i:padding` for i in 0..each,
    /// in order and whole (interleaved between pushers in any way).
    fn assert_each_pushers_order(all: &[u8], threads: usize, each: usize) {
        let mut next = vec![0usize; threads];
        let mut pos = 0;
        while pos < all.len() {
            let len = protocol::frame_len(&all[pos..]).expect("a broken frame");
            let (op, payload) = protocol::decode_frame(&all[pos..]).expect("a whole frame");
            pos += len;
            assert_eq!(op, 1);
            let text = String::from_utf8(payload).unwrap();
            let mut parts = text.splitn(3, ':');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}: frame {i} came when {} was due", next[t]);
            assert_eq!(parts.next().unwrap().len(), pad_of(i), "thread {t}: frame {i} is not whole");
            next[t] += 1;
        }
        assert_eq!(next, vec![each; threads]);
    }

    /// A started queue on a fresh connection with a small send buffer (not a small receive
    /// buffer: set after the handshake, it can close the window for seconds), and its client.
    fn small_buffered() -> (Arc<Outbound>, TcpStream) {
        let (server, client) = pair();
        socket2::SockRef::from(&server).set_send_buffer_size(16 * 1024).unwrap();
        let out = Outbound::new(&settings(1_000_000, 1 << 30), Flusher::start().unwrap());
        out.attach(Arc::new(server));
        out.start();
        (out, client)
    }

    #[test]
    fn concurrent_pushers_keep_each_ones_order_and_every_frame_whole() {
        const THREADS: usize = 4;
        const EACH: usize = 600;
        let (out, client) = small_buffered();
        let reader = slow_reader(client, THREADS * EACH);
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let out = out.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let text = format!("{t}:{i}:{}", "p".repeat(pad_of(i)));
                        assert_eq!(out.push(&protocol::encode_text(text)), Pushed::Queued);
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        assert_each_pushers_order(&reader.join().unwrap(), THREADS, EACH);
    }

    #[test]
    fn a_batched_write_the_socket_only_partly_takes_stays_ahead_of_what_queued_behind_it() {
        // Inside a fan-out a push takes the writer token and leaves the write for the end; a
        // frame pushed to that client meanwhile queues behind. The batch's write of a frame too
        // big for the socket ends part-way: the rest must go out before the frame behind it.
        let _ = crate::util::uring::configure(true);
        let (out, mut client) = small_buffered();
        let (other, mut other_client) = small_buffered();
        let big = protocol::encode_text("b".repeat(300_000));
        let behind = protocol::encode_text("behind".to_string());
        fan_out(&big, 2, || {
            assert_eq!(out.push(&big), Pushed::Queued);
            assert_eq!(other.push(&big), Pushed::Queued);
            assert_eq!(out.push(&behind), Pushed::Queued);
        });
        let frames = read_frames(&mut client, 2);
        assert_eq!(frames[0], (1, "b".repeat(300_000).into_bytes()), "the big frame, whole and first");
        assert_eq!(frames[1], (1, b"behind".to_vec()));
        assert_eq!(read_frames(&mut other_client, 1)[0].1.len(), 300_000);
    }

    #[test]
    fn a_fan_out_past_one_batch_writes_every_batch_and_the_rest() {
        // BATCH_FLUSH recipients make a batch written mid-loop: 2 full ones and 1 left over (a
        // single one, written the plain way) for 2 * BATCH_FLUSH + 1; then a frame pushed the
        // usual way comes after the fan-out's frame everywhere.
        let _ = crate::util::uring::configure(true);
        let n = 2 * BATCH_FLUSH + 1;
        let (outs, mut clients): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (out, client) = attached(16, 1 << 20);
                out.start();
                (out, client)
            })
            .unzip();
        let frame = protocol::encode_text("fan".to_string());
        let listed = std::cell::Cell::new(0);
        fan_out(&frame, n, || {
            for out in &outs {
                assert_eq!(out.push(&frame), Pushed::Queued);
                // The batch is written once it holds BATCH_FLUSH, inside the loop.
                listed.set(BATCH.with(|b| b.borrow().as_ref().map_or(0, |(_, l)| l.len())));
                assert!(listed.get() < BATCH_FLUSH, "a full batch waited for the loop's end");
            }
        });
        assert_eq!(listed.get(), 1, "one recipient left for the end");
        let after = protocol::encode_text("after".to_string());
        for out in &outs {
            assert_eq!(out.push(&after), Pushed::Queued);
        }
        for client in &mut clients {
            let frames = read_frames(client, 2);
            assert_eq!((frames[0].1.as_slice(), frames[1].1.as_slice()), (&b"fan"[..], &b"after"[..]));
        }
    }

    #[test]
    fn batched_fan_outs_keep_each_recipients_order_and_every_frame_whole() {
        // Several threads each fan frames out to the same clients at once, through `fan_out`
        // (one io_uring submission per fan-out where the kernel allows it): every client gets
        // each pusher's frames in order and whole, while its socket keeps filling (small send
        // buffer, slow reader) and the batch's writes end part-way or find no room.
        const THREADS: usize = 3;
        const EACH: usize = 300;
        const CLIENTS: usize = 32;
        let with_ring = crate::util::uring::configure(true).is_ok();
        let before = crate::util::uring::sends();
        let (outs, readers): (Vec<_>, Vec<_>) = (0..CLIENTS)
            .map(|_| {
                let (out, client) = small_buffered();
                (out, slow_reader(client, THREADS * EACH))
            })
            .unzip();
        let outs = Arc::new(outs);
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let outs = outs.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let frame = protocol::encode_text(format!("{t}:{i}:{}", "p".repeat(pad_of(i))));
                        fan_out(&frame, outs.len(), || {
                            for out in outs.iter() {
                                assert_eq!(out.push(&frame), Pushed::Queued);
                            }
                        });
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        for reader in readers {
            assert_each_pushers_order(&reader.join().unwrap(), THREADS, EACH);
        }
        if with_ring {
            assert!(crate::util::uring::sends() > before, "no fan-out went through the ring");
        } else {
            eprintln!("no io_uring here: the fan-outs were written one send at a time");
        }
    }

    #[test]
    fn bounds_and_close() {
        let (out, mut client) = attached(3, 1 << 20);
        for _ in 0..3 {
            assert_eq!(out.push(&protocol::encode_text("a".into())), Pushed::Queued);
        }
        assert_eq!(out.push(&protocol::encode_text("b".into())), Pushed::Full);
        // The close frame goes in place of the queue when discarding.
        out.close(1008, "slow", true);
        assert_eq!(out.push(&protocol::encode_text("c".into())), Pushed::Closed);
        out.start();
        let frames = read_frames(&mut client, 1);
        assert_eq!(frames[0].0, 0x8);
        assert_eq!(&frames[0].1[..2], &1008u16.to_be_bytes());
        // Then our side is shut for writing: the client reads EOF.
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0);
        // A byte cap as well as a frame cap.
        let (server, _client) = pair();
        let out = Outbound::new(&settings(100, 100), Flusher::start().unwrap());
        out.attach(Arc::new(server));
        assert_eq!(out.push(&protocol::encode_text("y".repeat(90))), Pushed::Queued);
        assert_eq!(out.push(&protocol::encode_text("y".repeat(20))), Pushed::Full);
    }
}
