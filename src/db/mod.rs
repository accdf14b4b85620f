//! The database: an r2d2 pool of `postgres::Client`s (`pool.rs`), the schema migrations
//! (`migrate.rs`), the queries of each resource (`users.rs`, `teams.rs`), and the monitor thread
//! that knows whether PostgreSQL is up.
//!
//! The server must start and serve without the database. `Db::probe` (at start, then from the
//! monitor thread) creates the database when missing and applies pending migrations; until that
//! has succeeded once, `Db::conn` fails at once with "unavailable" instead of waiting on the pool.
//!
//! Thread: `db-monitor` (one, started by `Db::start_monitor`) probes every second while the
//! database is down and every five seconds while it is up; it owns no lock across I/O.
//! Must never: block a request longer than the pool's checkout timeout, or log a password.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub mod files;
pub mod gate;
pub mod migrate;
pub mod pool;
pub mod stmt;
pub mod teams;
pub mod users;

pub use pool::{DbConfig, DbError, DbPool};

use crate::{info, warn};

/// A pooled connection; derefs to `postgres::Client`.
pub type Conn = pool::PooledClient;

/// Called with `true` when the database comes up and `false` when it goes down.
pub type StateHook = Arc<dyn Fn(bool) + Send + Sync>;

pub struct Db {
    pool: DbPool,
    cfg: DbConfig,
    /// Last known state: set by the monitor, cleared by any request that finds it unavailable.
    up: AtomicBool,
    /// The database exists and its migrations have been applied since this process started.
    ready: AtomicBool,
    /// Wakes the monitor early (a request saw the database fail).
    nudge: (Mutex<bool>, Condvar),
    /// The state last logged and alerted (`None` before the first check). Only `check` (the
    /// monitor, and `main` once at start) takes this lock, never across I/O.
    announced: Mutex<Option<bool>>,
}

impl Db {
    pub fn new(cfg: DbConfig) -> Result<Db, DbError> {
        let pool = pool::build_pool(&cfg)?;
        Ok(Db {
            pool,
            cfg,
            up: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            nudge: (Mutex::new(false), Condvar::new()),
            announced: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &DbConfig {
        &self.cfg
    }

    /// Whether the database was reachable at the last check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// A connection from the pool; fails fast when the database is known to be unready.
    pub fn conn(&self) -> Result<Conn, DbError> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err(DbError::Unavailable("the database has not been reached since start".into()));
        }
        self.pool.get().map_err(|e| self.saw(DbError::from_pool(e)))
    }

    /// Record an error seen by a request: an "unavailable" one marks the database down and
    /// wakes the monitor. Returns the error for `?` chains.
    pub fn saw(&self, err: DbError) -> DbError {
        if err.is_unavailable() && self.up.swap(false, Ordering::SeqCst) {
            warn!("database went away: {err}");
            let (lock, cv) = &self.nudge;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        err
    }

    /// One check: on the first success, create the database if missing and migrate; then
    /// `SELECT 1` through the pool. Returns whether the database is usable.
    pub fn probe(&self) -> bool {
        if !self.ready.load(Ordering::SeqCst) {
            match self.prepare() {
                Ok(applied) => {
                    if !applied.is_empty() {
                        info!("applied migrations {applied:?}");
                    }
                    self.ready.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    crate::debug!("database not ready: {e}");
                    return false;
                }
            }
        }
        match self.pool.get() {
            Ok(mut c) => c.simple_query("SELECT 1").is_ok(),
            Err(_) => false,
        }
    }

    fn prepare(&self) -> Result<Vec<i32>, DbError> {
        pool::ensure_database(&self.cfg)?;
        let mut client = self.pool.get()?;
        let applied = migrate::migrate(&mut client)?;
        if !applied.is_empty() {
            // Prepared statements of the old schema must not outlive it (`stmt.rs`).
            self.pool.schema_changed();
        }
        Ok(applied)
    }

    /// Probe now and set the state, logging a change. Returns the new state.
    pub fn check(&self, hook: Option<&StateHook>) -> bool {
        let now_up = self.probe();
        self.up.store(now_up, Ordering::SeqCst);
        // Compare with what was last announced, not with `up`: a request may have cleared `up`
        // first (`saw`), and the change must still be logged and alerted once.
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        if *announced != Some(now_up) {
            // Starting with the database up is the normal case, not a change worth an alert;
            // starting without it is.
            let first_and_up = announced.is_none() && now_up;
            *announced = Some(now_up);
            drop(announced);
            if now_up {
                info!("database is up ({})", self.cfg.describe());
            } else {
                warn!("database is down ({}); serving in degraded mode", self.cfg.describe());
            }
            if let Some(hook) = hook.filter(|_| !first_and_up) {
                hook(now_up);
            }
        }
        now_up
    }

    /// Start the `db-monitor` thread.
    pub fn start_monitor(self: &Arc<Self>, hook: Option<StateHook>) -> std::io::Result<()> {
        let db = self.clone();
        std::thread::Builder::new().name("db-monitor".into()).spawn(move || loop {
            let up = db.check(hook.as_ref());
            let wait = if up { Duration::from_secs(5) } else { Duration::from_secs(1) };
            let (lock, cv) = &db.nudge;
            let mut nudged = lock.lock().unwrap_or_else(|p| p.into_inner());
            if !*nudged {
                nudged = cv.wait_timeout(nudged, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            *nudged = false;
        })?;
        Ok(())
    }
}
