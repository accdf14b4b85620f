//! The hot set: keep-alive connections a worker has just answered, waiting a moment
//! (`keepalive_linger`) for their next request where *any* idle worker can pick it up, plus the
//! signal that a connection was queued for the workers. Idle workers wait here, in one
//! `epoll_wait` over all of it, instead of each watching one connection of its own.
//!
//! Why: under load the next request of some hot connection is nearly always ready when a worker
//! finishes one, so the worker goes straight on to it — no sleep, no wake-up of another thread.
//! A worker that watched only its own connection slept between every two requests; the
//! context switches were a third of the server's CPU time on `GET /` (`perf record`, see
//! `docs/performance.md`).
//!
//! Ownership and bounds: the set owns every connection in it (a slot each, in a `Mutex`); an
//! item is in exactly one of the set, a worker, or elsewhere. Each item is registered in the
//! epoll instance `EPOLLONESHOT`, so a readiness event hands it to exactly one worker, which
//! takes it out of its slot. Slots are bounded by the server's connection limit (every item is a
//! connection counted by the gate). `order`, the expiry line, gets one 16-byte entry per insert
//! and loses it when that insert expires or is skipped as stale: at most about `linger` times
//! the request rate (8,000 entries at 160,000 req/s and 50 ms). The queue signal is an
//! `eventfd` registered edge-triggered: each write wakes one waiter; it cannot fill up (a
//! 64-bit counter nobody needs to read).
//!
//! Harvest: one `epoll_wait` takes up to `HARVEST` readable items; its caller keeps the first,
//! the rest wait in `ready` (tokens, at most `HARVEST` per concurrent waiter) for the next
//! waiters, which take them without a system call. A waiter asleep in `epoll_wait` meanwhile is signalled to
//! come for them, so no readable item waits for a new event. Under load this made `epoll_wait`
//! 0.08 calls per `GET /` instead of 1 (`docs/performance.md`).
//!
//! Lock: `inner`, held for a few field updates and, in `insert`, one `epoll_ctl` (a system call
//! that never waits on a peer); never across `epoll_wait` or the signal's write.
//!
//! Must never: block except in `wait`, hand one item to two workers, or lose an item (what
//! expires is returned to the caller, never dropped here).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An item of the hot set: a socket that remembers whether it is registered with the set's epoll
/// instance (registration outlives a stay in the set, so coming back costs one `EPOLL_CTL_MOD`).
pub trait HotItem: AsRawFd {
    fn registered(&mut self) -> &mut bool;
}

/// What `wait` returned.
pub enum Woken<T> {
    /// This item's socket is readable (or hung up): it is the caller's now.
    Ready(T),
    /// The queue signal, a stale event, or the timeout: look at the queue and the clock again.
    Look,
}

/// Token of the queue signal in the epoll instance (item tokens are `generation << 32 | slot`,
/// and generations stay below `u32::MAX`).
const SIGNAL: u64 = u64::MAX;

struct Slot<T> {
    generation: u32,
    item: Option<(T, Instant)>,
}

struct Inner<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// (deadline, token) in insert order; deadlines come in order as the linger is fixed.
    order: VecDeque<(Instant, u64)>,
    /// Tokens of items whose readiness one `epoll_wait` reported beside the item its caller
    /// took: the next waiters take them from here without a system call. A waiter calls
    /// `epoll_wait` only after finding this empty, so it holds at most `HARVEST` tokens per
    /// waiter that was in `epoll_wait` at once (the pollers: one per core). A token whose item
    /// has expired or been drained since is stale and skipped.
    ready: VecDeque<u64>,
}

pub struct HotSet<T> {
    epoll: OwnedFd,
    signal: OwnedFd,
    inner: Mutex<Inner<T>>,
    len: AtomicUsize,
    /// One waiter at a time waits with a timeout (until the oldest item expires); the others
    /// wait without one, so a quiet set does not wake every idle worker at each expiry.
    timekeeper: AtomicBool,
    /// Waiters without a timeout. An insert while nobody keeps the time wakes one of them, so
    /// an item never outlives its deadline for want of a clock.
    untimed: AtomicUsize,
    /// `expired` looks at the line at most once per `LOOK_EVERY` (every poller calls it before
    /// each wait; under load that was a lock per request for nothing): nanoseconds after `base`.
    next_look: AtomicU64,
    base: Instant,
    /// `Inner::ready`'s length, readable without the lock (so an empty list costs no lock).
    pending: AtomicUsize,
}

/// Events one `epoll_wait` may report. Under load most waits find several connections readable;
/// taking them in one call instead of one call each is what `Inner::ready` is for.
const HARVEST: usize = 16;

/// How often `expired` really looks: an item may stay this much past its deadline.
const LOOK_EVERY: Duration = Duration::from_millis(1);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl<T: HotItem> HotSet<T> {
    pub fn new() -> io::Result<HotSet<T>> {
        // SAFETY: plain system calls with constant flags; each returned descriptor is checked
        // and then owned by exactly one OwnedFd.
        let (epoll, signal) = unsafe {
            let ep = OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let ev = OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?);
            (ep, ev)
        };
        let set = HotSet {
            epoll,
            signal,
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                order: VecDeque::new(),
                ready: VecDeque::new(),
            }),
            len: AtomicUsize::new(0),
            timekeeper: AtomicBool::new(false),
            untimed: AtomicUsize::new(0),
            next_look: AtomicU64::new(0),
            base: Instant::now(),
            pending: AtomicUsize::new(0),
        };
        set.ctl(libc::EPOLL_CTL_ADD, set.signal.as_raw_fd(), (libc::EPOLLIN | libc::EPOLLET) as u32, SIGNAL)?;
        Ok(set)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the kernel copies it.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Each critical section is a few field updates that cannot panic half-way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Items in the set now (a hint: it can change as soon as it is read).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Put an item in the set until `deadline`. On error (the epoll registration failed) the
    /// item is given back untouched.
    pub fn insert(&self, mut item: T, deadline: Instant) -> Result<(), (T, io::Error)> {
        let mut inner = self.lock();
        let index = match inner.free.pop() {
            Some(i) => i as usize,
            None => {
                inner.slots.push(Slot { generation: 0, item: None });
                inner.slots.len() - 1
            }
        };
        let token = (inner.slots[index].generation as u64) << 32 | index as u64;
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
        let fd = item.as_raw_fd();
        // Registered from an earlier stay: re-arm with the new token; else add it.
        let armed = if *item.registered() {
            self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
                .or_else(|_| self.ctl(libc::EPOLL_CTL_ADD, fd, events, token))
        } else {
            self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
        };
        if let Err(e) = armed {
            *item.registered() = false;
            inner.free.push(index as u32);
            return Err((item, e));
        }
        *item.registered() = true;
        inner.slots[index].item = Some((item, deadline));
        inner.order.push_back((deadline, token));
        drop(inner);
        // A waiter counts itself untimed before it looks at `len`; we raise `len` before we
        // look at the count: either it sees the item (and keeps the time), or we wake it.
        self.len.fetch_add(1, Ordering::SeqCst);
        if !self.timekeeper.load(Ordering::SeqCst) && self.untimed.load(Ordering::SeqCst) > 0 {
            self.signal();
        }
        Ok(())
    }

    /// Take the item of `token` out of its slot, if it is still the one the token names.
    fn take(inner: &mut Inner<T>, token: u64) -> Option<T> {
        let index = (token & 0xffff_ffff) as usize;
        let slot = inner.slots.get_mut(index)?;
        if slot.generation as u64 != token >> 32 || slot.item.is_none() {
            return None;
        }
        let (item, _) = slot.item.take()?;
        slot.generation = (slot.generation + 1) % (u32::MAX - 1);
        inner.free.push(index as u32);
        Some(item)
    }

    /// Wake one waiter (a connection was queued, the server is stopping, or items wait in
    /// `ready`).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. It can only fail when the
        // counter is at its maximum, and then a wake-up is pending anyway.
        unsafe { libc::write(self.signal.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Wait for one item to become readable, the signal, or (for the one waiter that keeps the
    /// time) the oldest item's deadline; at most `cap`. An item another wait found readable
    /// (`Inner::ready`) is taken first, without waiting.
    pub fn wait(&self, cap: Option<Duration>) -> Woken<T> {
        // Counted as a waiter before looking at `ready`; `harvest` pushes before it looks at the
        // waiters (all SeqCst): either this wait sees the token, or it is signalled.
        self.untimed.fetch_add(1, Ordering::SeqCst);
        if let Some(item) = self.take_ready() {
            self.untimed.fetch_sub(1, Ordering::SeqCst);
            return Woken::Ready(item);
        }
        let keeping = !self.is_empty() && !self.timekeeper.swap(true, Ordering::SeqCst);
        if keeping {
            self.untimed.fetch_sub(1, Ordering::SeqCst);
        }
        let until_oldest = if keeping {
            self.lock().order.front().map(|(d, _)| d.saturating_duration_since(Instant::now()))
        } else {
            None
        };
        let timeout = match (until_oldest, cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Round up, and at least `LOOK_EVERY`: a deadline 0.4 ms away (or just past, while
        // `expired` waits for its next look) is not a busy loop of zero-timeouts.
        let ms = timeout.map_or(-1, |d| d.as_micros().div_ceil(1000).clamp(1, 60_000) as libc::c_int);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; HARVEST];
        // SAFETY: room for exactly HARVEST events, as maxevents says; the kernel writes only those.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), evs.as_mut_ptr(), HARVEST as libc::c_int, ms) };
        if keeping {
            self.timekeeper.store(false, Ordering::SeqCst);
        } else {
            self.untimed.fetch_sub(1, Ordering::SeqCst);
        }
        let n = usize::try_from(n).unwrap_or(0);
        match self.harvest(evs[..n].iter().map(|e| e.u64)) {
            Some(item) => Woken::Ready(item),
            None => Woken::Look,
        }
    }

    /// Sort what one `epoll_wait` reported: the first live item is the caller's, the others wait
    /// in `ready` for the next waiters (one sleeping in `epoll_wait` is signalled to come for
    /// them). With the queue signal among the events, the caller gets no item (it is to look at
    /// the queue) and every item goes to `ready`.
    fn harvest(&self, tokens: impl Iterator<Item = u64> + Clone) -> Option<T> {
        let signalled = tokens.clone().any(|t| t == SIGNAL);
        let mut mine = None;
        let mut pushed = 0;
        let mut inner = self.lock();
        for token in tokens.filter(|&t| t != SIGNAL) {
            if mine.is_none() && !signalled {
                // A stale token (its item expired meanwhile) is dropped here.
                mine = Self::take(&mut inner, token);
            } else {
                inner.ready.push_back(token);
                pushed += 1;
            }
        }
        drop(inner);
        if mine.is_some() {
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        if pushed > 0 {
            self.pending.fetch_add(pushed, Ordering::SeqCst);
            if self.untimed.load(Ordering::SeqCst) > 0 || self.timekeeper.load(Ordering::SeqCst) {
                self.signal();
            }
        }
        mine
    }

    /// The first live item of `ready`, if any (stale tokens are dropped on the way).
    fn take_ready(&self) -> Option<T> {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut inner = self.lock();
        while let Some(token) = inner.ready.pop_front() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            if let Some(item) = Self::take(&mut inner, token) {
                drop(inner);
                self.len.fetch_sub(1, Ordering::SeqCst);
                return Some(item);
            }
        }
        None
    }

    /// Items whose deadline has passed, taken out of the set (and out of the epoll instance).
    pub fn expired(&self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        let at = now.saturating_duration_since(self.base).as_nanos() as u64;
        if at < self.next_look.load(Ordering::Relaxed) {
            return out;
        }
        self.next_look.store(at + LOOK_EVERY.as_nanos() as u64, Ordering::Relaxed);
        let mut inner = self.lock();
        while let Some(&(deadline, token)) = inner.order.front() {
            if deadline > now {
                break;
            }
            inner.order.pop_front();
            // None for an entry whose item was taken since: a stale entry, dropped here.
            if let Some(item) = Self::take(&mut inner, token) {
                out.push(item);
            }
        }
        drop(inner);
        self.forget(&mut out);
        out
    }

    /// Every item, taken out of the set (shutdown).
    pub fn drain(&self) -> Vec<T> {
        let mut inner = self.lock();
        inner.order.clear();
        self.pending.fetch_sub(inner.ready.len(), Ordering::SeqCst);
        inner.ready.clear();
        let mut out = Vec::new();
        for i in 0..inner.slots.len() {
            let token = (inner.slots[i].generation as u64) << 32 | i as u64;
            if let Some(item) = Self::take(&mut inner, token) {
                out.push(item);
            }
        }
        drop(inner);
        self.forget(&mut out);
        out
    }

    fn forget(&self, items: &mut [T]) {
        self.len.fetch_sub(items.len(), Ordering::SeqCst);
        for item in items {
            // Out of the epoll instance, so a request arriving later wakes nobody here.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, item.as_raw_fd(), 0, 0);
            *item.registered() = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    struct Item(UnixStream, bool, u32);
    impl AsRawFd for Item {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    impl HotItem for Item {
        fn registered(&mut self) -> &mut bool {
            &mut self.1
        }
    }

    fn pair(n: u32) -> (Item, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Item(a, false, n), b)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// `n` items in the set until `deadline`, each made readable; their peers, to keep open.
    fn readable(set: &HotSet<Item>, n: u32, deadline: Instant) -> Vec<UnixStream> {
        (0..n)
            .map(|i| {
                let (item, mut peer) = pair(i);
                set.insert(item, deadline).map_err(|e| e.1).unwrap();
                peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                peer
            })
            .collect()
    }

    #[test]
    fn a_readable_item_is_handed_out_once_and_the_quiet_one_stays() {
        let set = HotSet::new().unwrap();
        let (a, mut pa) = pair(1);
        let (b, _pb) = pair(2);
        set.insert(a, far()).map_err(|e| e.1).unwrap();
        set.insert(b, far()).map_err(|e| e.1).unwrap();
        pa.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let Woken::Ready(got) = set.wait(Some(Duration::from_secs(5))) else { panic!("no item") };
        assert_eq!(got.2, 1);
        assert_eq!(set.len(), 1);
        // The quiet one is not handed out, and `a` (taken) cannot come again.
        assert!(matches!(set.wait(Some(Duration::from_millis(20))), Woken::Look));
        // Back in the set (already registered: re-armed), readable again: handed out again.
        set.insert(got, far()).map_err(|e| e.1).unwrap();
        let Woken::Ready(again) = set.wait(Some(Duration::from_secs(5))) else { panic!("not re-armed") };
        assert_eq!(again.2, 1);
    }

    #[test]
    fn the_signal_wakes_a_waiter_and_expiry_returns_items_unlost() {
        let set = Arc::new(HotSet::<Item>::new().unwrap());
        let s = set.clone();
        let waiter = std::thread::spawn(move || matches!(s.wait(None), Woken::Look));
        std::thread::sleep(Duration::from_millis(50));
        set.signal();
        assert!(waiter.join().unwrap(), "the signal must wake a waiter with no timeout");

        let (a, mut pa) = pair(7);
        set.insert(a, Instant::now()).map_err(|e| e.1).unwrap();
        let gone = set.expired(Instant::now() + Duration::from_millis(1));
        assert_eq!(gone.iter().map(|i| i.2).collect::<Vec<_>>(), vec![7]);
        assert!(set.is_empty());
        // Out of the epoll instance: data arriving now wakes nobody.
        pa.write_all(b"x").unwrap();
        assert!(matches!(set.wait(Some(Duration::from_millis(20))), Woken::Look));
    }

    #[test]
    fn the_timekeeper_wakes_at_the_oldest_deadline() {
        let set = HotSet::new().unwrap();
        let (a, _pa) = pair(3);
        set.insert(a, Instant::now() + Duration::from_millis(30)).map_err(|e| e.1).unwrap();
        let t = Instant::now();
        assert!(matches!(set.wait(None), Woken::Look), "no event: the timeout ends the wait");
        assert!(t.elapsed() >= Duration::from_millis(25));
        assert_eq!(set.expired(Instant::now()).len(), 1);
    }

    #[test]
    fn an_insert_while_nobody_keeps_the_time_wakes_an_untimed_waiter() {
        let set = Arc::new(HotSet::<Item>::new().unwrap());
        let s = set.clone();
        // Waits without a timeout: the set is empty, so there is no deadline to keep.
        let waiter = std::thread::spawn(move || matches!(s.wait(None), Woken::Look));
        std::thread::sleep(Duration::from_millis(50));
        let (a, _pa) = pair(9);
        set.insert(a, Instant::now() + Duration::from_millis(10)).map_err(|e| e.1).unwrap();
        assert!(waiter.join().unwrap(), "the waiter must wake to keep the new item's time");
        // Woken, it waits again as the timekeeper and returns at the deadline.
        assert!(matches!(set.wait(None), Woken::Look));
        assert_eq!(set.expired(Instant::now()).len(), 1);
    }

    #[test]
    fn one_wait_takes_every_readable_item_and_the_next_waits_serve_them_without_an_event() {
        let set = HotSet::new().unwrap();
        let _peers = readable(&set, 4, far());
        let Woken::Ready(first) = set.wait(Some(Duration::from_secs(5))) else { panic!("no item") };
        // The three others were reported by the same epoll_wait and kept for the next waits.
        assert_eq!(set.pending.load(Ordering::SeqCst), 3);
        let mut got = vec![first.2];
        for _ in 0..3 {
            // EPOLLONESHOT: epoll has nothing more to say about them; only `ready` can serve them.
            let Woken::Ready(item) = set.wait(Some(Duration::from_millis(1))) else {
                panic!("a harvested item was lost")
            };
            got.push(item.2);
        }
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(set.is_empty());
        assert!(matches!(set.wait(Some(Duration::from_millis(20))), Woken::Look));
    }

    /// More readable items than one `epoll_wait` takes: the first call takes `HARVEST`, the
    /// rest are reported by a later one, and every item is handed out exactly once.
    #[test]
    fn past_the_harvest_limit_the_rest_come_from_the_next_epoll_wait() {
        let set = HotSet::new().unwrap();
        let n = HARVEST as u32 + 4;
        let _peers = readable(&set, n, far());
        let Woken::Ready(first) = set.wait(Some(Duration::from_secs(5))) else { panic!("no item") };
        assert_eq!(set.pending.load(Ordering::SeqCst), HARVEST - 1, "one call takes HARVEST events");
        let mut got = vec![first.2];
        while got.len() < n as usize {
            match set.wait(Some(Duration::from_secs(5))) {
                Woken::Ready(item) => got.push(item.2),
                Woken::Look => panic!("{} of {n} items handed out, then nothing", got.len()),
            }
        }
        got.sort();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert!(set.is_empty());
        assert!(matches!(set.wait(Some(Duration::from_millis(20))), Woken::Look));
    }

    #[test]
    fn a_harvested_item_that_expires_is_handed_out_once_by_expiry_only() {
        let set = HotSet::new().unwrap();
        let _peers = readable(&set, 2, Instant::now());
        let Woken::Ready(first) = set.wait(Some(Duration::from_secs(5))) else { panic!("no item") };
        let gone = set.expired(Instant::now() + Duration::from_millis(2));
        assert_eq!(gone.iter().map(|i| i.2).collect::<Vec<_>>(), vec![1 - first.2]);
        // Its token in `ready` is stale now: skipped, not handed out a second time.
        assert!(matches!(set.wait(Some(Duration::from_millis(20))), Woken::Look));
        assert_eq!(set.pending.load(Ordering::SeqCst), 0);
        assert!(set.is_empty());
    }

    #[test]
    fn items_left_for_others_wake_a_waiter_asleep_in_epoll() {
        let set = Arc::new(HotSet::<Item>::new().unwrap());
        // Two items that are not readable: only `harvest`, called by hand below, reports them.
        let (a, _pa) = pair(1);
        let (b, _pb) = pair(2);
        set.insert(a, far()).map_err(|e| e.1).unwrap();
        set.insert(b, far()).map_err(|e| e.1).unwrap();
        let tokens: Vec<u64> = set.lock().order.iter().map(|&(_, t)| t).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = set.clone();
        std::thread::spawn(move || loop {
            // No timeout: only an event or the signal ends this wait.
            if let Woken::Ready(item) = s.wait(None) {
                tx.send(item.2).unwrap();
                return;
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let mine = set.harvest(tokens.iter().copied()).expect("the first item is the caller's");
        let theirs =
            rx.recv_timeout(Duration::from_secs(10)).expect("the sleeping waiter was not told about the other item");
        assert_eq!(mine.2 + theirs, 3);
    }

    #[test]
    fn drain_takes_everything() {
        let set = HotSet::new().unwrap();
        let items: Vec<_> = (0..5).map(pair).collect();
        let mut peers = Vec::new();
        for (item, peer) in items {
            set.insert(item, far()).map_err(|e| e.1).unwrap();
            peers.push(peer);
        }
        let mut got: Vec<u32> = set.drain().into_iter().map(|i| i.2).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(set.is_empty());
    }
}
