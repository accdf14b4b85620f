//! The login rate limit: after `max_failures` failed logins for one email from one address
//! within `window`, further attempts for that pair get 429 with `Retry-After` until the oldest
//! failure leaves the window. A successful login clears the pair.
//!
//! Reserve, then hash: `reserve` counts an attempt as a failure *before* its password is checked
//! (in the same lock as the check), and `release` takes the slot back when the attempt ended
//! without a verdict on the password (503, 500). So 18 wrong passwords sent at once for one pair
//! get ten `401`s and eight `429`s, not eighteen `401`s because all were checked before any was
//! recorded. A successful login clears the pair (`reset`).
//!
//! State is in memory (a restart forgets it), behind one `Mutex` held only for map updates.
//! Bound: at most `max_keys` pairs; when full, expired pairs are swept, and if it is still full
//! the new pair is not tracked (logged once per sweep) — memory stays bounded under a flood of
//! distinct emails, at the price of not limiting that flood (Argon2 already makes each try cost).
//! Must never: do I/O or hashing under its lock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A failure slot taken by `LoginLimiter::reserve` (`at: None`: the pair is not tracked, the
/// map being full).
#[derive(Debug, Clone, Copy)]
#[must_use = "a slot is either kept (a failed login) or released"]
pub struct Slot {
    at: Option<Instant>,
}

pub struct LoginLimiter {
    failures: Mutex<HashMap<(String, IpAddr), VecDeque<Instant>>>,
    pub max_failures: usize,
    pub window: Duration,
    pub max_keys: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new(10, Duration::from_secs(15 * 60), 100_000)
    }
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration, max_keys: usize) -> LoginLimiter {
        LoginLimiter { failures: Mutex::new(HashMap::new()), max_failures, window, max_keys }
    }

    fn key(email: &str, ip: IpAddr) -> (String, IpAddr) {
        (email.trim().to_lowercase(), ip)
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

    /// `Err(retry_after)` when this pair is locked out at `now`.
    pub fn check(&self, email: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&Self::key(email, ip)) {
            Some(times) => self.locked(times, now),
            None => Ok(()),
        }
    }

    /// Take a failure slot for one attempt at `now`: `Err(retry_after)` when the pair is locked
    /// out, else a slot that stays counted unless `release`d (or the pair `reset`).
    pub fn reserve(&self, email: &str, ip: IpAddr, now: Instant) -> Result<Slot, Duration> {
        let key = Self::key(email, ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(times) = map.get_mut(&key) {
            self.locked(times, now)?;
        } else if map.len() >= self.max_keys {
            let window = self.window;
            map.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
            if map.len() >= self.max_keys {
                return Ok(Slot { at: None });
            }
        }
        map.entry(key).or_default().push_back(now);
        Ok(Slot { at: Some(now) })
    }

    /// Give back a slot of an attempt that got no verdict on its password.
    pub fn release(&self, email: &str, ip: IpAddr, slot: Slot) {
        let Some(at) = slot.at else { return };
        let key = Self::key(email, ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(times) = map.get_mut(&key) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                map.remove(&key);
            }
        }
    }

    pub fn record_failure(&self, email: &str, ip: IpAddr, now: Instant) {
        let key = Self::key(email, ip);
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.max_keys {
            let window = self.window;
            map.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < window));
            if map.len() >= self.max_keys {
                return;
            }
        }
        let times = map.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    pub fn reset(&self, email: &str, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&Self::key(email, ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_lock_the_pair_until_the_window_passes() {
        let lim = LoginLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(lim.check("A@x.io", ip, t0).is_ok(), "attempt {i}");
            lim.record_failure("A@x.io", ip, t0 + Duration::from_secs(i));
        }
        let retry = lim.check("a@X.io", ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(retry, Duration::from_secs(15 * 60 - 10));
        assert!(lim.check("a@x.io", other, t0).is_ok(), "another address is not locked");
        assert!(lim.check("b@x.io", ip, t0).is_ok(), "another email is not locked");
        // The oldest failure leaves the window: one more try is allowed.
        assert!(lim.check("a@x.io", ip, t0 + Duration::from_secs(15 * 60)).is_ok());
        lim.reset("a@x.io", ip);
        assert!(lim.check("a@x.io", ip, t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn reserved_slots_count_before_the_verdict_and_can_be_given_back() {
        let lim = LoginLimiter::new(3, Duration::from_secs(60), 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        // Three attempts in flight at once take the three slots; the fourth is refused before
        // any of them has been checked.
        let slots: Vec<Slot> = (0..3).map(|_| lim.reserve("a@x.io", ip, t0).unwrap()).collect();
        assert!(lim.reserve("A@x.io", ip, t0).is_err());
        // One of them ends without a verdict (503): its slot comes back.
        lim.release("a@x.io", ip, slots[0]);
        let again = lim.reserve("a@x.io", ip, t0).unwrap();
        assert!(lim.reserve("a@x.io", ip, t0).is_err());
        // A success clears the pair.
        lim.reset("a@x.io", ip);
        assert!(lim.check("a@x.io", ip, t0).is_ok());
        lim.release("a@x.io", ip, again);
        assert!(lim.failures.lock().unwrap().is_empty());
        // After the window the slots expire.
        for _ in 0..3 {
            let _ = lim.reserve("b@x.io", ip, t0).unwrap();
        }
        assert!(lim.reserve("b@x.io", ip, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let lim = LoginLimiter::new(2, Duration::from_secs(60), 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            lim.record_failure(&format!("u{i}@x.io"), ip, t0);
        }
        assert_eq!(lim.failures.lock().unwrap().len(), 3);
        // After the window, old pairs are swept to make room.
        lim.record_failure("late@x.io", ip, t0 + Duration::from_secs(61));
        assert_eq!(lim.failures.lock().unwrap().len(), 1);
    }
}
