//! The fair checkout: a first-come-first-served gate in front of the r2d2 pool.
//!
//! r2d2 hands a returned connection to whichever thread asks next: a request that arrives just as
//! a connection comes back takes it ahead of threads that have waited for many milliseconds (and
//! a thread that gives a connection back and asks again at once gets the same one back). Under a
//! steady overload that is where the latency tail comes from. [`FairPool`] puts a gate of
//! `pool_size` permits in front of the pool: a checkout first takes a permit, in arrival order,
//! and only then asks r2d2, which, as at most `pool_size` permits are out, always has an idle
//! connection or room to open one. The gate itself is `util::fifo::FifoGate`: a released permit
//! goes straight to the longest waiter (handoff), never back into a free count a newcomer could
//! grab.
//!
//! Queue: the gate's line of waiters holds at most one entry per thread that is waiting (so at
//! most the number of threads that check out: the HTTP workers plus the monitor and a few
//! others). Each waiter leaves it when served or when its wait reaches the checkout timeout
//! (`DB_CHECKOUT_TIMEOUT_MS`), whichever comes first; the whole checkout (gate plus r2d2) is
//! bounded by that one timeout.
//! Must never: hand out more than `pool_size` permits; lose a permit (a waiter that times out
//! while being granted one takes it, then gives it back through [`Checkout`]'s drop); let a
//! newcomer pass a waiter.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pool::{Manager, Tracked};
use crate::util::fifo::FifoGate;

/// The start of [`CheckoutError::Busy`]'s message: how `db::is_busy_pool` tells a busy pool
/// (not an outage) from a connection error once both are a `DbError::Unavailable`.
pub const BUSY_WORDING: &str = "every pooled connection stayed busy for";

/// Why a checkout failed. Always "the database is unavailable" to the caller
/// ([`super::DbError::from_pool`]).
#[derive(Debug)]
pub enum CheckoutError {
    /// Every connection stayed busy for the whole checkout timeout.
    Busy(Duration),
    /// r2d2 could not produce a healthy connection (PostgreSQL down, refused, slow to answer).
    Pool(r2d2::Error),
}

impl fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckoutError::Busy(t) => write!(f, "{BUSY_WORDING} {} ms", t.as_millis()),
            CheckoutError::Pool(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckoutError {}

/// The r2d2 pool behind the first-come-first-served gate. Every checkout of the server goes
/// through [`FairPool::get`].
pub struct FairPool {
    pool: r2d2::Pool<Manager>,
    gate: Arc<FifoGate>,
    timeout: Duration,
    /// The schema epoch of this pool's statement caches (`stmt.rs`).
    epoch: super::stmt::SchemaEpoch,
}

impl FairPool {
    /// Wrap `pool`: as many permits as the pool has connections at most; a checkout waits at
    /// most `timeout` in all. `epoch` is the one `pool`'s manager gives its connections' caches.
    pub fn new(pool: r2d2::Pool<Manager>, timeout: Duration, epoch: super::stmt::SchemaEpoch) -> FairPool {
        let size = pool.max_size() as usize;
        FairPool { pool, gate: Arc::new(FifoGate::new(size)), timeout, epoch }
    }

    /// The schema changed (a migration was applied): every connection drops its prepared
    /// statements before its next query.
    pub fn schema_changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection, waiting at most the checkout timeout, in line behind earlier callers.
    pub fn get(&self) -> Result<Checkout, CheckoutError> {
        self.get_timeout(self.timeout)
    }

    /// [`FairPool::get`] with another bound on the wait.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Checkout, CheckoutError> {
        let start = Instant::now();
        let deadline = start + timeout;
        if !self.gate.acquire(Some(deadline)) {
            return Err(CheckoutError::Busy(timeout));
        }
        // Holding a permit: r2d2 has an idle connection or room for one; the wait left is only
        // for a health check or for opening a connection.
        let left = deadline.saturating_duration_since(Instant::now());
        match self.pool.get_timeout(left.max(Duration::from_millis(1))) {
            Ok(conn) => Ok(Checkout { conn: ManuallyDrop::new(conn), gate: self.gate.clone() }),
            Err(e) => {
                self.gate.release();
                Err(CheckoutError::Pool(e))
            }
        }
    }

    /// r2d2's view: connections open and idle.
    pub fn state(&self) -> r2d2::State {
        self.pool.state()
    }

    /// Most connections (and permits).
    pub fn max_size(&self) -> u32 {
        self.pool.max_size()
    }

    /// Threads waiting in line right now.
    pub fn waiting(&self) -> usize {
        self.gate.waiting()
    }

    /// Permits not held by anyone right now (at most the pool's size).
    pub fn free_permits(&self) -> usize {
        self.gate.free()
    }
}

/// A checked-out connection and its permit. Derefs to the pooled connection (and through it to
/// `postgres::Client`). On drop the connection goes back to r2d2 first, then the permit to the
/// next in line, so whoever gets the permit finds the connection idle.
pub struct Checkout {
    conn: ManuallyDrop<r2d2::PooledConnection<Manager>>,
    gate: Arc<FifoGate>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // SAFETY: `conn` is dropped exactly once, here, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.conn) };
        self.gate.release();
    }
}

impl Deref for Checkout {
    type Target = Tracked;
    fn deref(&self) -> &Tracked {
        &self.conn
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut Tracked {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::pool::tests::TestDb;
    use crate::db::pool::{build_pool, ensure_database};
    use std::sync::mpsc;

    /// A fresh database and a fair pool of `size` connections on it (30 s checkout timeout).
    fn pool_of(tag: &str, size: u32) -> (TestDb, Arc<FairPool>) {
        let db = TestDb::new(tag);
        ensure_database(&db.cfg).unwrap();
        let mut cfg = db.cfg.clone();
        cfg.pool_size = size;
        cfg.checkout_timeout = Duration::from_secs(30);
        let pool = Arc::new(build_pool(&cfg).unwrap());
        (db, pool)
    }

    /// Waits (without a time bound on correctness) until `n` threads queue in the gate.
    fn until_waiting(pool: &FairPool, n: usize) {
        while pool.waiting() != n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One connection; it is held while A, then B line up; then the holder releases it and at
    /// once asks again (the newcomer that r2d2 alone would serve first, as the connection is idle
    /// the moment it asks). Served in arrival order: A, B, then the holder.
    #[test]
    fn waiters_are_served_first_come_first_served() {
        let (_db, pool) = pool_of("gate_fifo", 1);
        let held = pool.get().unwrap();
        let (tx, rx) = mpsc::channel::<&'static str>();
        let mut threads = Vec::new();
        for (i, name) in ["A", "B", "C", "D"].into_iter().enumerate() {
            let (p, tx) = (pool.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                let mut c = p.get().expect("checkout");
                // Use the connection, so a waiter is served a working one.
                let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
                assert_eq!(one, 1);
                tx.send(name).unwrap();
                drop(c);
            }));
            until_waiting(&pool, i + 1);
        }
        drop(held);
        // The releasing thread asks again at once: it must queue behind A..D.
        let again = pool.get().unwrap();
        tx.send("holder").unwrap();
        drop(again);
        for t in threads {
            t.join().unwrap();
        }
        drop(tx);
        let order: Vec<_> = rx.iter().collect();
        assert_eq!(order, ["A", "B", "C", "D", "holder"]);
        assert_eq!(pool.free_permits(), 1);
        assert_eq!(pool.waiting(), 0);
    }

    /// A waiter that reaches the checkout timeout leaves the line with "busy" (not a lost
    /// permit): the next waiter, and later callers, are still served.
    #[test]
    fn a_waiter_that_times_out_leaves_the_line_and_loses_no_permit() {
        let (_db, pool) = pool_of("gate_timeout", 1);
        let held = pool.get().unwrap();
        // The head of the line gives up (short timeout); the second one must still be served.
        let p = pool.clone();
        let quitter = std::thread::spawn(move || p.get_timeout(Duration::from_millis(200)).err());
        until_waiting(&pool, 1);
        let p = pool.clone();
        let patient =
            std::thread::spawn(move || p.get().map(|mut c| c.query_one("SELECT 2", &[]).unwrap().get::<_, i32>(0)));
        let err = quitter.join().unwrap().expect("the quitter must time out");
        assert!(matches!(err, CheckoutError::Busy(_)), "{err}");
        let err = crate::db::DbError::from(err);
        assert!(err.is_unavailable() && crate::db::is_busy_pool(&err), "{err}");
        until_waiting(&pool, 1);
        drop(held);
        assert_eq!(patient.join().unwrap().unwrap(), 2);
        assert_eq!(pool.free_permits(), 1);
        // And the pool is whole: two checkouts in a row work.
        drop(pool.get().unwrap());
        drop(pool.get().unwrap());
    }

    /// Many threads hammering a pool of 2: never more than 2 out at once, and every permit
    /// comes back.
    #[test]
    fn permits_are_never_exceeded_and_all_come_back() {
        let (_db, pool) = pool_of("gate_count", 2);
        let out = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (p, out) = (pool.clone(), out.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mut c = p.get().unwrap();
                        let now = out.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= 2, "{now} checkouts at once");
                        c.query_one("SELECT 1", &[]).unwrap();
                        out.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.free_permits(), 2);
        assert!(pool.state().connections <= 2);
    }
}
