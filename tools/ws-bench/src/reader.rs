//! Reader threads: each owns the read side of 1/R of the connections through one epoll set
//! (level-triggered), reads with non-blocking `recv`, parses frames in place, stamps every read
//! with the shared monotonic clock and records latencies into its own tables (no lock on the hot
//! path). Must never block on a socket (the only write it makes is a pong or a close reply,
//! a few bytes under the connection's write lock) and never share its tables until it is joined.
//!
//! Why epoll and not a thread per client: 10,000 clients would be 10,000 more threads on a
//! 2-core machine already running a server with a thread per session; the load generator must stay
//! lean. A few readers (default 2, one per core) with epoll cost one `epoll_wait` per batch of
//! ready sockets, and the time of a socket's frames is taken right after its `recv`.
//!
//! Bounds: the adoption channel of each reader holds at most `ADOPT_QUEUE` connections (the
//! connectors block when it is full; the reader drains it every `TICK`); a connection's partial
//! frame buffer holds at most one frame (`frame::MAX_PAYLOAD` + header) before the connection is
//! dropped as broken; the latency tables grow by one entry per benchmark message delivered (a
//! phase is bounded by its `--rate` × `--seconds`, or by what flat-out achieves in `--seconds`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::frame::{self, In, Kind};
use crate::stats::Fan;

pub const ADOPT_QUEUE: usize = 1024;
const TICK_MS: i32 = 20;
const SCRATCH: usize = 64 * 1024;
const MAX_EVENTS: usize = 256;
/// Kept error texts and close codes per reader (the first ones; the rest are only counted).
const KEEP: usize = 5;

/// What the main thread and the readers share: the clock, the phase, the measurement window and a
/// few counters the driver watches live.
pub struct Shared {
    pub start: Instant,
    pub stop: AtomicBool,
    /// Teardown: closes from now on are ours, not the server's.
    pub closing: AtomicBool,
    /// Index of the phase running (marks of other phases are counted, not recorded).
    pub phase: AtomicU32,
    /// Latencies are recorded for messages of the running phase with `seq >=` this.
    pub measure_from_seq: AtomicU64,
    /// Frames that arrive within [start, end] (ns on the shared clock) count as deliveries.
    pub win_start_ns: AtomicU64,
    pub win_end_ns: AtomicU64,
    /// Frames carrying a mark of the running phase (reset by the driver at each phase).
    pub marked: AtomicU64,
    pub frames: AtomicU64,
    pub pongs: AtomicU64,
    /// Connections adopted and not yet finished.
    pub open: AtomicU64,
    pub last_frame_ns: AtomicU64,
    /// The flat-out sender waits here for deliveries.
    pub gate: Mutex<()>,
    pub gate_cv: Condvar,
    pub gate_waiting: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            phase: AtomicU32::new(u32::MAX),
            measure_from_seq: AtomicU64::new(u64::MAX),
            win_start_ns: AtomicU64::new(u64::MAX),
            win_end_ns: AtomicU64::new(u64::MAX),
            marked: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            open: AtomicU64::new(0),
            last_frame_ns: AtomicU64::new(0),
            gate: Mutex::new(()),
            gate_cv: Condvar::new(),
            gate_waiting: AtomicBool::new(false),
        }
    }

    /// Nanoseconds since the tool started (monotonic).
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One phase's records in one reader.
#[derive(Default)]
pub struct PhaseStats {
    /// `/send_to`: the recipient's `private` frame, latency from the sender's write.
    pub private: Vec<u64>,
    /// `/send_to`: the sender's `sent` frame.
    pub sent: Vec<u64>,
    /// `/group`: per message sequence number.
    pub fan: Vec<Fan>,
    /// Frames that arrived inside the measurement window, by kind.
    pub window_kinds: [u64; Kind::ALL.len()],
}

impl PhaseStats {
    pub fn window_frames(&self) -> u64 {
        self.window_kinds.iter().sum()
    }
}

/// Everything one reader saw, handed back when it is joined.
#[derive(Default)]
pub struct ReaderStats {
    pub phases: Vec<PhaseStats>,
    pub kinds: [u64; Kind::ALL.len()],
    pub errors: Vec<String>,
    pub error_frames: u64,
    /// Close frames from the server outside teardown, and their first codes.
    pub server_closes: u64,
    pub close_codes: Vec<Option<u16>>,
    /// Connections that ended (EOF, reset, protocol error) outside teardown without a close frame.
    pub dropped: u64,
    pub protocol_errors: Vec<String>,
    pub pings: u64,
}

pub struct Adopt {
    pub conn: Arc<Conn>,
    pub leftover: Vec<u8>,
}

struct Slot {
    conn: Arc<Conn>,
    pending: Vec<u8>,
    got_close: bool,
}

pub fn spawn(id: usize, shared: Arc<Shared>) -> (SyncSender<Adopt>, std::thread::JoinHandle<ReaderStats>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(ADOPT_QUEUE);
    let h = std::thread::Builder::new()
        .name(format!("reader-{id}"))
        .stack_size(256 * 1024)
        .spawn(move || Reader::new(shared, rx).run())
        .expect("spawn a reader thread");
    (tx, h)
}

struct Reader {
    shared: Arc<Shared>,
    rx: Receiver<Adopt>,
    epfd: i32,
    slots: Vec<Option<Slot>>,
    stats: ReaderStats,
    scratch: Vec<u8>,
}

impl Reader {
    fn new(shared: Arc<Shared>, rx: Receiver<Adopt>) -> Reader {
        // SAFETY: plain syscall.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        Reader { shared, rx, epfd, slots: Vec::new(), stats: ReaderStats::default(), scratch: vec![0; SCRATCH] }
    }

    fn run(mut self) -> ReaderStats {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let mut adopt_open = true;
        while !self.shared.stop.load(Ordering::Acquire) {
            while adopt_open {
                match self.rx.try_recv() {
                    Ok(a) => self.adopt(a),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => adopt_open = false,
                }
            }
            // SAFETY: events is a valid buffer of MAX_EVENTS entries.
            let n = unsafe { libc::epoll_wait(self.epfd, events.as_mut_ptr(), MAX_EVENTS as i32, TICK_MS) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("epoll_wait: {e}");
            }
            let mut batch = Batch::default();
            for ev in &events[..n as usize] {
                self.service(ev.u64 as usize, &mut batch);
            }
            self.flush(&batch);
        }
        // SAFETY: our own fd.
        unsafe { libc::close(self.epfd) };
        self.stats
    }

    fn adopt(&mut self, a: Adopt) {
        let slot = self.slots.len();
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: slot as u64 };
        // SAFETY: valid fds and event struct.
        let rc = unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, a.conn.fd(), &mut ev) };
        assert!(rc == 0, "epoll_ctl ADD: {}", std::io::Error::last_os_error());
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        self.slots.push(Some(Slot { conn: a.conn, pending: Vec::new(), got_close: false }));
        if !a.leftover.is_empty() {
            // Frames that came with the welcome: parse them now (stamped now).
            let mut batch = Batch::default();
            let data = a.leftover;
            self.consume(slot, &data, &mut batch);
            self.flush(&batch);
        }
    }

    fn service(&mut self, slot: usize, batch: &mut Batch) {
        loop {
            let Some(s) = self.slots.get(slot).and_then(Option::as_ref) else { return };
            let fd = s.conn.fd();
            // SAFETY: scratch is a valid buffer of its length.
            let n = unsafe { libc::recv(fd, self.scratch.as_mut_ptr().cast(), self.scratch.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                let n = n as usize;
                let data = std::mem::take(&mut self.scratch);
                let full = n == data.len();
                self.consume(slot, &data[..n], batch);
                self.scratch = data;
                if !full {
                    return;
                }
                continue;
            }
            if n == 0 {
                self.finish(slot, None);
                return;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return,
                std::io::ErrorKind::Interrupted => continue,
                _ => {
                    self.finish(slot, Some(format!("recv: {e}")));
                    return;
                }
            }
        }
    }

    /// Parses `data` (just read from `slot`, or the leftover of its handshake) after whatever
    /// partial frame the slot held.
    fn consume(&mut self, slot: usize, data: &[u8], batch: &mut Batch) {
        let now = self.shared.now_ns();
        batch.reads += 1;
        batch.now = now;
        let phase = self.shared.phase.load(Ordering::Acquire);
        let from_seq = self.shared.measure_from_seq.load(Ordering::Acquire);
        let in_window = now >= self.shared.win_start_ns.load(Ordering::Acquire)
            && now <= self.shared.win_end_ns.load(Ordering::Acquire);
        let closing = self.shared.closing.load(Ordering::Acquire);

        let Some(s) = self.slots[slot].as_mut() else { return };
        let owned: Vec<u8>;
        let buf: &[u8] = if s.pending.is_empty() {
            data
        } else {
            s.pending.extend_from_slice(data);
            owned = std::mem::take(&mut s.pending);
            &owned
        };
        let stats = &mut self.stats;
        let mut pings: VecDeque<Vec<u8>> = VecDeque::new();
        let mut close: Option<Option<u16>> = None;
        let result = frame::parse_frames(buf, |f| match f {
            In::Text(t) => {
                batch.frames += 1;
                let k = frame::kind(t);
                stats.kinds[k as usize] += 1;
                let ph = (phase != u32::MAX).then_some(phase as usize);
                if let Some(p) = ph {
                    if stats.phases.len() <= p {
                        stats.phases.resize_with(p + 1, PhaseStats::default);
                    }
                    if in_window {
                        stats.phases[p].window_kinds[k as usize] += 1;
                    }
                }
                if k == Kind::Error {
                    stats.error_frames += 1;
                    if stats.errors.len() < KEEP {
                        stats.errors.push(String::from_utf8_lossy(t).into_owned());
                    }
                }
                if let (Some(p), Some(m)) = (ph, frame::mark(t)) {
                    if m.phase as usize == p {
                        batch.marked += 1;
                        if m.seq >= from_seq {
                            let lat = now.saturating_sub(m.send_ns);
                            let ps = &mut stats.phases[p];
                            match k {
                                Kind::Private => ps.private.push(lat),
                                Kind::Sent => ps.sent.push(lat),
                                Kind::Group => {
                                    let i = m.seq as usize;
                                    if ps.fan.len() <= i {
                                        ps.fan.resize(i + 1, Fan::default());
                                    }
                                    ps.fan[i].record(lat);
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            In::Binary => batch.frames += 1,
            In::Ping(p) => pings.push_back(p.to_vec()),
            In::Pong => batch.pongs += 1,
            In::Close(code) => close = Some(code),
        });
        let s = self.slots[slot].as_mut().expect("slot present");
        match result {
            Ok(used) => {
                if used < buf.len() {
                    s.pending.extend_from_slice(&buf[used..]);
                }
            }
            Err(e) => {
                self.finish(slot, Some(format!("frame: {}", e.0)));
                return;
            }
        }
        for p in pings {
            self.stats.pings += 1;
            let _ = s.conn.send(&frame::pong(&p, s.conn.mask()));
        }
        if let Some(code) = close {
            if !s.got_close {
                s.got_close = true;
                if !closing {
                    self.stats.server_closes += 1;
                    if self.stats.close_codes.len() < KEEP {
                        self.stats.close_codes.push(code);
                    }
                }
                // Answer the close; the server then ends the TCP connection and we see EOF.
                let _ = s.conn.send_close();
            }
        }
        if s.pending.len() > frame::MAX_PAYLOAD as usize + 16 {
            self.finish(slot, Some("partial frame too large".into()));
        }
    }

    /// The connection is over: deregister it and count how it ended.
    fn finish(&mut self, slot: usize, error: Option<String>) {
        let Some(s) = self.slots[slot].take() else { return };
        // SAFETY: deregistering our own fd; a null event is allowed for DEL.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, s.conn.fd(), std::ptr::null_mut()) };
        s.conn.closed.store(true, Ordering::Release);
        s.conn.shutdown();
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        let ours = self.shared.closing.load(Ordering::Acquire) || s.conn.close_sent.load(Ordering::Acquire);
        if !ours && !s.got_close {
            self.stats.dropped += 1;
        }
        if let Some(e) = error {
            if !ours && self.stats.protocol_errors.len() < KEEP {
                self.stats.protocol_errors.push(format!("client {}: {e}", s.conn.idx));
            }
        }
    }

    fn flush(&self, b: &Batch) {
        if b.reads == 0 {
            return;
        }
        let sh = &self.shared;
        if b.frames > 0 {
            sh.frames.fetch_add(b.frames, Ordering::AcqRel);
            sh.last_frame_ns.fetch_max(b.now, Ordering::AcqRel);
        }
        if b.pongs > 0 {
            sh.pongs.fetch_add(b.pongs, Ordering::AcqRel);
        }
        if b.marked > 0 {
            sh.marked.fetch_add(b.marked, Ordering::SeqCst);
            if sh.gate_waiting.load(Ordering::SeqCst) {
                let _g = sh.gate.lock().unwrap_or_else(|e| e.into_inner());
                sh.gate_cv.notify_all();
            }
        }
    }
}

/// Counters of one `epoll_wait` round, published to `Shared` once per round.
#[derive(Default)]
struct Batch {
    reads: u64,
    frames: u64,
    marked: u64,
    pongs: u64,
    now: u64,
}

/// Waits on the gate until `done()` or `timeout`; the readers notify after delivering marks.
pub fn wait_gate(shared: &Shared, timeout: Duration, done: impl Fn() -> bool) {
    if done() {
        return;
    }
    let g = shared.gate.lock().unwrap_or_else(|e| e.into_inner());
    shared.gate_waiting.store(true, Ordering::SeqCst);
    if !done() {
        let _ = shared.gate_cv.wait_timeout(g, timeout);
    }
    shared.gate_waiting.store(false, Ordering::SeqCst);
}
