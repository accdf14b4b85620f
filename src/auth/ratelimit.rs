//! The login rate limit: after `max_failures` failed logins for one email from one address
//! within `window`, further attempts for that pair get 429 with `Retry-After` until the oldest
//! failure leaves the window. A successful login clears the pair's failures.
//!
//! Reserve, then hash: every attempt takes a `Slot` (`reserve`) *before* its password is checked,
//! under the same lock as the check. Per (email, address) pair the limiter keeps two things
//! apart: the recorded failures (times, within `window`) and the attempts in flight (a count).
//! - recorded failures reach `max_failures`: `Err(retry_after)` at once (429, `Retry-After` until
//!   the oldest failure leaves the window);
//! - failures + in-flight reach `max_failures` (or others of the pair already wait): the caller
//!   takes a ticket and waits on a `Condvar`, first come first served (`Pair::queue`: a newcomer
//!   never takes a freed place ahead of a waiter), for an in-flight attempt of the pair to end,
//!   then decides again. An in-flight attempt is not a failure (64
//!   parallel *correct* logins are never answered `429`), but it may become one, so the budget is
//!   not handed out twice: 18 parallel *wrong* passwords get ten `401`s and eight `429`s, never
//!   eighteen `401`s. The wait is bounded by `max_wait` (`MAX_WAIT`, 250 ms): when it passes the
//!   answer is `Refused::Busy` (`503 Server busy`, `Retry-After: 1`, and the connection's next
//!   request held for that second in the dispatcher, like a full hashing pool), not a `429`: the
//!   budget is held by attempts being checked, not by failures. Why so short: the waiter is an
//!   HTTP worker. With a 5 s bound, 64 looping correct logins for one account kept 54 of the 64
//!   workers waiting here and `/health` p99 beside them rose from 23 ms to 851 ms
//!   (`scripts/bench.sh users`); 250 ms is about one round of the pair's ten verifications on two
//!   cores (≈ 35 ms each), so a small burst still gets through and a flood costs a worker at most
//!   a quarter of a second before its connection is parked.
//!
//! A slot ends exactly once: `succeeded` (clears the pair's failures), `failed` (records one), or
//! dropped without a verdict (503, 500, 403 inactive, a panic, an early return): the in-flight
//! count goes back and nothing is recorded. Every end wakes the pair's waiters. A `Slot` cannot
//! leak: its `Drop` ends it.
//!
//! The lock: one `Mutex` owned by the limiter, held only for map updates — never during I/O,
//! hashing, or the wait (`Condvar::wait_timeout` releases it). One `Condvar` for all pairs; an end
//! notifies only when that pair has waiters, and a waiter woken for another pair re-checks and
//! waits again until its own deadline.
//! Cost of a wait: the HTTP worker that called `reserve` is blocked at most `max_wait`; at most
//! `max_failures` attempts per tracked pair are ever past `reserve` at once, so a burst for one pair holds
//! at most `max_failures` hashing slots and the rest of the burst's workers for `max_wait`.
//!
//! Size: at most `max_keys` pairs (each: a key, at most `max_failures` instants, two counters).
//! A pair with neither failures nor attempts in flight is removed. When full, pairs whose
//! failures all left the window and that have nothing in flight are swept; if it is still full
//! the new pair is not tracked (its slot is a no-op) — memory stays bounded under a flood of
//! distinct emails, at the price of not limiting that flood (Argon2 already makes each try cost).
//! State is in memory (a restart forgets it).
//! Must never: do I/O or hashing under its lock, or count an attempt still being checked as a
//! failure.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why `LoginLimiter::reserve` gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The pair's recorded failures lock it out (`429` with this `Retry-After`).
    Locked(Duration),
    /// The pair's budget stayed held by attempts still being checked for the whole `max_wait`:
    /// not a failure, so not a `429` (the contract keeps `429` for failed attempts), but
    /// `503 Server busy` with `Retry-After: 1`, like a full hashing pool.
    Busy,
}

/// How long `reserve` waits at most for an in-flight attempt of its pair to end before answering
/// `Refused::Busy` (see the module doc).
pub const MAX_WAIT: Duration = Duration::from_millis(250);

type Key = (String, IpAddr);

/// One (email, address) pair's state.
#[derive(Debug, Default)]
struct Pair {
    /// Recorded failures, oldest first, at most `max_failures`.
    failures: VecDeque<Instant>,
    /// Attempts past `reserve` whose slot has not ended.
    in_flight: usize,
    /// Callers of `reserve` waiting for one of those to end, by ticket, first come first served:
    /// a newcomer never takes a freed place ahead of them (no barging), or under a steady stream
    /// of attempts (a client that re-sends at once) a waiter could be passed over until its
    /// `max_wait` ran out.
    queue: VecDeque<u64>,
    /// The next ticket of this pair.
    next_ticket: u64,
}

impl Pair {
    fn waiters(&self) -> usize {
        self.queue.len()
    }

    /// Take `ticket` out of the line (its holder gave up). Whether others still wait.
    fn leave(&mut self, ticket: u64) -> bool {
        self.queue.retain(|t| *t != ticket);
        !self.queue.is_empty()
    }
}

/// One login attempt's place in the budget, taken by `LoginLimiter::reserve`. End it with
/// `succeeded` or `failed`; dropping it ends it without a verdict. `key: None`: the pair is not
/// tracked (the map was full) and the slot is a no-op.
#[must_use = "a slot ends with succeeded(), failed(), or when dropped (no verdict)"]
pub struct Slot<'a> {
    limiter: &'a LoginLimiter,
    key: Option<Key>,
}

impl Slot<'_> {
    /// The password was right: the pair's failures are cleared.
    pub fn succeeded(mut self) {
        if let Some(key) = self.key.take() {
            self.limiter.end(key, Verdict::Success, Instant::now());
        }
    }

    /// The password was wrong (or the email unknown): one failure at `now` is recorded.
    pub fn failed(mut self, now: Instant) {
        if let Some(key) = self.key.take() {
            self.limiter.end(key, Verdict::Failure, now);
        }
    }
}

impl Drop for Slot<'_> {
    /// No verdict on the password (503, 500, 403, a panic): the place is given back.
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.limiter.end(key, Verdict::None, Instant::now());
        }
    }
}

enum Verdict {
    Success,
    Failure,
    None,
}

pub struct LoginLimiter {
    pairs: Mutex<HashMap<Key, Pair>>,
    /// Signalled when a slot of a pair with waiters ends.
    ended: Condvar,
    pub max_failures: usize,
    pub window: Duration,
    pub max_keys: usize,
    pub max_wait: Duration,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new(10, Duration::from_secs(15 * 60), 100_000)
    }
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration, max_keys: usize) -> LoginLimiter {
        LoginLimiter {
            pairs: Mutex::new(HashMap::new()),
            ended: Condvar::new(),
            max_failures,
            window,
            max_keys,
            max_wait: MAX_WAIT,
        }
    }

    fn key(email: &str, ip: IpAddr) -> Key {
        (email.trim().to_lowercase(), ip)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Pair>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the failures of `times` that left the window; `Err(retry_after)` when the rest lock
    /// the pair out at `now`.
    fn locked(&self, times: &mut VecDeque<Instant>, now: Instant) -> Result<(), Duration> {
        while times.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            times.pop_front();
        }
        match times.front() {
            Some(oldest) if times.len() >= self.max_failures => {
                let retry = self.window.saturating_sub(now.duration_since(*oldest));
                Err(retry.max(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    /// Make room for a new pair when the map is full: sweep pairs with nothing in flight and
    /// no waiters whose failures all left the window. Whether there is room now.
    fn room(&self, map: &mut HashMap<Key, Pair>, now: Instant) -> bool {
        if map.len() < self.max_keys {
            return true;
        }
        let window = self.window;
        map.retain(|_, p| {
            p.in_flight > 0 || p.waiters() > 0 || p.failures.back().is_some_and(|t| now.duration_since(*t) < window)
        });
        map.len() < self.max_keys
    }

    /// `Err(retry_after)` when this pair's recorded failures lock it out at `now` (what the
    /// tests inspect; the server only ever asks through `reserve`).
    #[cfg(test)]
    pub fn check(&self, email: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.lock().get_mut(&Self::key(email, ip)) {
            Some(pair) => self.locked(&mut pair.failures, now),
            None => Ok(()),
        }
    }

    /// Take a place for one attempt at `now`: `Refused::Locked(retry_after)` when the pair's
    /// failures lock it out, `Refused::Busy` when its budget stayed held by attempts in flight for
    /// `max_wait`; else a `Slot`. May block the caller up to `max_wait` (see the module doc).
    pub fn reserve(&self, email: &str, ip: IpAddr, now: Instant) -> Result<Slot<'_>, Refused> {
        let key = Self::key(email, ip);
        let started = Instant::now();
        let deadline = started + self.max_wait;
        let mut map = self.lock();
        // Our place in the pair's line, once we had to wait.
        let mut ticket: Option<u64> = None;
        loop {
            // `now` moves on by the time spent waiting.
            let now = now + started.elapsed();
            let Some(pair) = map.get_mut(&key) else {
                // (A pair with a ticket in its line is never removed: only an empty line lets go.)
                if !self.room(&mut map, now) {
                    return Ok(Slot { limiter: self, key: None });
                }
                map.insert(key.clone(), Pair { in_flight: 1, ..Pair::default() });
                return Ok(Slot { limiter: self, key: Some(key) });
            };
            if let Err(retry) = self.locked(&mut pair.failures, now) {
                let others = ticket.is_some_and(|t| pair.leave(t));
                drop(map);
                if others {
                    self.ended.notify_all();
                }
                return Err(Refused::Locked(retry));
            }
            let my_turn = match ticket {
                None => pair.queue.is_empty(),
                Some(t) => pair.queue.front() == Some(&t),
            };
            if my_turn && pair.failures.len() + pair.in_flight < self.max_failures {
                if ticket.is_some() {
                    pair.queue.pop_front();
                }
                pair.in_flight += 1;
                // Room for the next in line too: wake it (one end may free several places).
                let next = !pair.queue.is_empty() && pair.failures.len() + pair.in_flight < self.max_failures;
                drop(map);
                if next {
                    self.ended.notify_all();
                }
                return Ok(Slot { limiter: self, key: Some(key) });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let others = ticket.is_some_and(|t| pair.leave(t));
                drop(map);
                if others {
                    self.ended.notify_all();
                }
                return Err(Refused::Busy);
            }
            if ticket.is_none() {
                let t = pair.next_ticket;
                pair.next_ticket += 1;
                pair.queue.push_back(t);
                ticket = Some(t);
            }
            map = self.ended.wait_timeout(map, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn end(&self, key: Key, verdict: Verdict, now: Instant) {
        let mut map = self.lock();
        let Some(pair) = map.get_mut(&key) else { return };
        pair.in_flight = pair.in_flight.saturating_sub(1);
        match verdict {
            Verdict::Success => pair.failures.clear(),
            Verdict::Failure => {
                pair.failures.push_back(now);
                while pair.failures.len() > self.max_failures {
                    pair.failures.pop_front();
                }
            }
            Verdict::None => {}
        }
        let wake = pair.waiters() > 0;
        if pair.in_flight == 0 && pair.waiters() == 0 && pair.failures.is_empty() {
            map.remove(&key);
        }
        drop(map);
        if wake {
            self.ended.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn ip() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn ten_failures_lock_the_pair_until_the_window_passes() {
        let lim = LoginLimiter::default();
        let ip = ip();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(lim.check("A@x.io", ip, t0).is_ok(), "attempt {i}");
            lim.reserve("A@x.io", ip, t0).unwrap().failed(t0 + Duration::from_secs(i));
        }
        let retry = lim.check("a@X.io", ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(15 * 60 - 10));
        assert!(lim.reserve("a@x.io", ip, t0 + Duration::from_secs(10)).is_err());
        assert!(lim.check("a@x.io", other, t0).is_ok(), "another address is not locked");
        assert!(lim.check("b@x.io", ip, t0).is_ok(), "another email is not locked");
        // The oldest failure leaves the window: one more try is allowed.
        assert!(lim.check("a@x.io", ip, t0 + Duration::from_secs(15 * 60)).is_ok());
        // A success clears the pair.
        let t1 = t0 + Duration::from_secs(15 * 60);
        lim.reserve("a@x.io", ip, t1).unwrap().succeeded();
        assert!(lim.check("a@x.io", ip, t0 + Duration::from_secs(11)).is_ok());
        assert!(lim.lock().is_empty(), "a pair with nothing left is removed");
    }

    #[test]
    fn a_success_clears_the_failures_and_no_verdict_records_nothing() {
        let lim = LoginLimiter::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        lim.reserve("a@x.io", ip(), t0).unwrap().failed(t0);
        lim.reserve("a@x.io", ip(), t0).unwrap().failed(t0);
        drop(lim.reserve("a@x.io", ip(), t0).unwrap()); // 503: no verdict
        assert_eq!(lim.lock()[&LoginLimiter::key("a@x.io", ip())].failures.len(), 2);
        lim.reserve("a@x.io", ip(), t0).unwrap().succeeded();
        assert!(lim.lock().is_empty());
    }

    /// Run `attempt` on `n` threads released together; their results in thread order.
    fn all_at_once<T: Send + 'static>(
        lim: &Arc<LoginLimiter>,
        n: usize,
        attempt: fn(&LoginLimiter) -> Result<T, Refused>,
    ) -> Vec<Result<T, Refused>> {
        let start = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (lim, start) = (lim.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    attempt(&lim)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn in_flight_attempts_beyond_the_budget_that_succeed_are_all_admitted() {
        let lim = Arc::new(LoginLimiter::new(3, Duration::from_secs(60), 100));
        let results = all_at_once(&lim, 24, |lim| {
            let slot = lim.reserve("a@x.io", ip(), Instant::now())?;
            // The password check, outside the lock.
            let inside = lim.lock()[&LoginLimiter::key("a@x.io", ip())].in_flight;
            std::thread::sleep(Duration::from_millis(20));
            slot.succeeded();
            Ok(inside)
        });
        for r in results {
            let inside = r.expect("a correct login is never refused");
            assert!(inside <= 3, "at most max_failures attempts past reserve, saw {inside}");
        }
        assert!(lim.lock().is_empty());
    }

    #[test]
    fn parallel_failures_stop_at_exactly_the_maximum() {
        let lim = Arc::new(LoginLimiter::new(10, Duration::from_secs(60), 100));
        let results = all_at_once(&lim, 18, |lim| {
            let slot = lim.reserve("a@x.io", ip(), Instant::now())?;
            std::thread::sleep(Duration::from_millis(20));
            slot.failed(Instant::now());
            Ok(())
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10, "{results:?}");
        for r in results.iter().filter_map(|r| r.err()) {
            // Refused by recorded failures, not by the wait bound.
            assert!(matches!(r, Refused::Locked(d) if d > Duration::from_secs(50)), "{r:?}");
        }
        assert!(lim.reserve("a@x.io", ip(), Instant::now()).is_err());
    }

    #[test]
    fn a_dropped_slot_frees_its_place_and_wakes_a_waiter() {
        let mut lim = LoginLimiter::new(2, Duration::from_secs(60), 100);
        // Long enough that a loaded machine cannot turn "woken" into "gave up waiting"; a
        // waiter nobody wakes still fails the test (it gives up after this and gets `Busy`).
        lim.max_wait = Duration::from_secs(10);
        let lim = Arc::new(lim);
        let t0 = Instant::now();
        let a = lim.reserve("a@x.io", ip(), t0).unwrap();
        let _b = lim.reserve("a@x.io", ip(), t0).unwrap();
        let waiter = {
            let lim = lim.clone();
            std::thread::spawn(move || lim.reserve("a@x.io", ip(), Instant::now()).map(Slot::succeeded))
        };
        // Let the waiter block, then end `a` by a panic (an attempt that never got a verdict).
        while lim.lock()[&LoginLimiter::key("a@x.io", ip())].waiters() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _a = a;
            panic!("the handler failed");
        }));
        assert!(panicked.is_err());
        assert_eq!(waiter.join().unwrap(), Ok(()), "the freed place went to the waiter");
        let pair = &lim.lock()[&LoginLimiter::key("a@x.io", ip())];
        assert_eq!((pair.in_flight, pair.failures.len(), pair.waiters()), (1, 0, 0));
    }

    #[test]
    fn a_freed_place_goes_to_the_first_waiter_not_to_a_newcomer() {
        let mut lim = LoginLimiter::new(1, Duration::from_secs(60), 100);
        lim.max_wait = Duration::from_millis(300);
        let lim = Arc::new(lim);
        let a = lim.reserve("a@x.io", ip(), Instant::now()).unwrap();
        let (got, got_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let lim = lim.clone();
            std::thread::spawn(move || {
                let slot = lim.reserve("a@x.io", ip(), Instant::now());
                got.send(slot.is_ok()).unwrap();
                release_rx.recv().unwrap();
                drop(slot);
            })
        };
        while lim.lock()[&LoginLimiter::key("a@x.io", ip())].waiters() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // End `a` and at once ask as a newcomer: the place is the waiter's, so the newcomer waits
        // behind it (and, the waiter holding on, runs out of its wait).
        a.succeeded();
        let newcomer = lim.reserve("a@x.io", ip(), Instant::now());
        assert!(got_rx.recv().unwrap(), "the waiter got the freed place");
        assert_eq!(newcomer.err(), Some(Refused::Busy), "the newcomer did not jump the line");
        release.send(()).unwrap();
        waiter.join().unwrap();
        // The line is empty again: the next attempt goes straight through.
        lim.reserve("a@x.io", ip(), Instant::now()).unwrap().succeeded();
    }

    #[test]
    fn the_wait_is_bounded() {
        let mut lim = LoginLimiter::new(2, Duration::from_secs(60), 100);
        lim.max_wait = Duration::from_millis(100);
        let t0 = Instant::now();
        let _held = [lim.reserve("a@x.io", ip(), t0).unwrap(), lim.reserve("a@x.io", ip(), t0).unwrap()];
        let asked = Instant::now();
        assert_eq!(lim.reserve("a@x.io", ip(), t0).err(), Some(Refused::Busy));
        let waited = asked.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        // Generous: the bound holds, give or take scheduling.
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Another pair is not held up.
        assert!(lim.reserve("b@x.io", ip(), t0).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let lim = LoginLimiter::new(2, Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for i in 0..10 {
            lim.reserve(&format!("u{i}@x.io"), ip(), t0).unwrap().failed(t0);
        }
        assert_eq!(lim.lock().len(), 3);
        // Full: a new pair is not tracked, its slot is a no-op.
        lim.reserve("new@x.io", ip(), t0).unwrap().failed(t0);
        assert_eq!(lim.lock().len(), 3);
        // After the window, old pairs are swept to make room; a pair in flight is not swept.
        let held = lim.reserve("late@x.io", ip(), t0 + Duration::from_secs(61)).unwrap();
        assert_eq!(lim.lock().len(), 1);
        let later = t0 + Duration::from_secs(200);
        lim.reserve("later@x.io", ip(), later).unwrap().failed(later);
        assert_eq!(lim.lock().len(), 2);
        drop(held);
        assert_eq!(lim.lock().len(), 1);
    }
}
