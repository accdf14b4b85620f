//! The database: an r2d2 pool of `postgres::Client`s (`pool.rs`), the schema migrations
//! (`migrate.rs`), the queries of each resource (`users.rs`, `teams.rs`, `files.rs`), the memory
//! cache of accounts (`cache.rs`), the write-behind spool of upload records (`spool.rs`), the
//! intents of uploads being committed (`intent.rs`), and the monitor that knows whether
//! PostgreSQL is up (this file).
//!
//! The server must start and serve without the database. Whether PostgreSQL is up is decided by
//! the monitor alone, from its own probe — never from a request's pool checkout: a checkout that
//! times out because every pooled connection is busy says nothing about PostgreSQL (no alert, no
//! degraded trust). A request that sees the database fail only wakes the monitor early.
//!
//! The probe: a connection of its own (not from the pool), opened with a 2 s connect timeout;
//! on first success since start it also creates the database when missing and applies pending
//! migrations; then `SELECT 1`. It runs on the `db-probe` thread and the monitor waits at most
//! `PROBE_TIMEOUT` (3 s) for its answer, so a PostgreSQL that hangs (a vanished host, a frozen
//! server) is declared down in time too. Probing every `PROBE_INTERVAL` (1 s) in both states,
//! an outage and its end are each seen within about 1 s (stop, refused connection) and at most
//! `PROBE_INTERVAL + PROBE_TIMEOUT` = 4 s (a hang) — inside the contract's 5 s.
//!
//! While the database is known down, `Db::conn` fails at once (no pool wait), so every request
//! that needs it answers `503` immediately; accounts are served from `cache`, uploads go to the
//! spool. On the way back up the monitor applies pending migrations (in the probe) and wakes the
//! `spool-replay` thread.
//!
//! Causes: each change of state is logged with its reason (`connection refused`, `password
//! authentication failed`, `role "x" does not exist`, a host that does not resolve), at `warn`
//! when down, and again whenever the reason changes while down; a reason that will not heal by
//! itself (credentials, a missing role) says so.
//!
//! Threads: `db-monitor` (one, `Db::start_monitor`): probes, logs, alerts; holds no lock across
//! I/O except `prober`, which only it (and `main`, once, before the monitor starts) takes.
//! `db-probe` (one, started by the first probe): owns the probe connection; takes one request at
//! a time from a channel of capacity 1 (a probe still running is waited for, never queued twice).
//! `spool-replay` (one, `Db::attach_spool`): see `spool.rs`; it also resolves the upload intents
//! a crashed process left (`intent.rs`) once the database is up.
//! `db-refresh` (one, with the monitor): every `ACCOUNT_CACHE_REFRESH_SECS` while the database
//! is up, reads every cached account again with one pooled connection (`Db::refresh_accounts`,
//! 10,000 ids a query), so that the cache the server falls back on in an outage is at most that
//! old. Holds the cache's lock only to copy the ids and to apply each batch.
//! Must never: block a request on the pool while the database is known down, call a busy pool an
//! outage, or log a password.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod batch;
pub mod cache;
pub mod files;
pub mod gate;
pub mod intent;
pub mod migrate;
pub mod pool;
pub mod spool;
pub mod stmt;
pub mod teams;
pub mod users;

pub use pool::{DbConfig, DbError, DbPool};

use crate::{debug, info, warn};

/// A pooled connection; derefs to `postgres::Client`.
pub type Conn = pool::PooledClient;

/// Called with `true` when the database comes up and `false` when it goes down.
pub type StateHook = Arc<dyn Fn(bool) + Send + Sync>;

/// The default of `ACCOUNT_CACHE_REFRESH_SECS`.
pub const DEFAULT_ACCOUNT_REFRESH: Duration = Duration::from_secs(10);

/// How often the monitor probes, whatever the state.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest the monitor waits for one probe before counting it as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connect timeout of the probe's own connection.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What one probe found: the migrations it applied, or why the database is not usable.
type ProbeResult = Result<Vec<i32>, DbError>;

/// The monitor's side of the `db-probe` thread.
struct Prober {
    requests: SyncSender<u64>,
    answers: Receiver<(u64, ProbeResult)>,
    seq: u64,
    /// A probe sent and not answered yet (it timed out): wait for it rather than send another.
    outstanding: Option<u64>,
}

impl Prober {
    fn start(cfg: &DbConfig) -> std::io::Result<Prober> {
        let (requests, rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let (tx, answers) = std::sync::mpsc::sync_channel::<(u64, ProbeResult)>(1);
        let mut cfg = cfg.clone();
        cfg.connect_timeout = cfg.connect_timeout.min(PROBE_CONNECT_TIMEOUT);
        std::thread::Builder::new().name("db-probe".into()).spawn(move || {
            let mut conn: Option<postgres::Client> = None;
            let mut migrated = false;
            for seq in rx {
                let r = probe_once(&cfg, &mut conn, &mut migrated);
                if let Err(e) = &r {
                    conn = None;
                    // The database was dropped (or a fresh cluster came up): create and migrate again.
                    if e.to_string().contains("[3D000]") {
                        migrated = false;
                    }
                }
                if tx.send((seq, r)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Prober { requests, answers, seq: 0, outstanding: None })
    }
}

/// One probe on the probe's own connection (see the module doc).
fn probe_once(cfg: &DbConfig, conn: &mut Option<postgres::Client>, migrated: &mut bool) -> ProbeResult {
    if !*migrated {
        pool::ensure_database(cfg)?;
    }
    if !conn.as_ref().is_some_and(|c| !c.is_closed()) {
        *conn = Some(cfg.pg_config()?.connect(postgres::NoTls)?);
    }
    let c = conn.as_mut().expect("connected above");
    let applied = if *migrated { Vec::new() } else { migrate::migrate(c)? };
    *migrated = true;
    c.simple_query("SELECT 1")?;
    Ok(applied)
}

/// A plain-words note on an outage's cause, for the log: whether it will heal by itself.
pub fn cause_hint(err: &DbError) -> &'static str {
    let s = err.to_string();
    if s.contains("[28P01]") || s.contains("password authentication failed") {
        " — PostgreSQL refused the password: this will not heal by itself; fix DB_PASSWORD (or DATABASE_URL) \
         and restart"
    } else if s.contains("[28000]") && s.contains("does not exist") {
        " — that role does not exist on this PostgreSQL: this will not heal by itself; fix DB_USER (or \
         DATABASE_URL), or create the role"
    } else if s.contains("[28") || s.contains("authentication error") {
        " — PostgreSQL refuses this login (credentials or pg_hba.conf): this will not heal by itself"
    } else if s.contains("failed to lookup address") {
        " — the host name does not resolve: check DB_HOST (or DATABASE_URL) and DNS"
    } else if s.contains("Connection refused") {
        " — nothing listens there: PostgreSQL is stopped or restarting, or DB_HOST/DB_PORT are wrong"
    } else {
        ""
    }
}

/// [`cause_hint`], or the general advice when the cause is not one it knows: for commands that
/// fail at once rather than wait for the database (backup, restore, migrate, user create).
pub fn unreachable_hint(err: &DbError) -> &'static str {
    match cause_hint(err) {
        "" => " — is PostgreSQL running? check DATABASE_URL or DB_HOST/DB_PORT",
        known => known,
    }
}

/// Whether an "unavailable" error is only a pool checkout that timed out with no connection error
/// behind it: every pooled connection was busy, which says nothing about PostgreSQL. Such an error
/// must not lead to degraded trust (serving accounts from memory); a connection error (refused,
/// closed mid-query) is evidence of an outage. r2d2 gives the last connection error to one waiter
/// only, so in the first moment of an outage some waiters see a bare timeout too: they answer 503
/// until the monitor, woken by the first error, has decided (within about a second).
pub fn is_busy_pool(err: &DbError) -> bool {
    // r2d2's own wording, the fair gate's (`gate::CheckoutError::Busy`), a statement cut off by
    // `DB_STATEMENT_TIMEOUT_MS`, and a transaction cancelled for another's sake (a deadlock):
    // busy in the same sense, PostgreSQL answered.
    matches!(err, DbError::Unavailable(m)
        if m.ends_with("timed out waiting for connection")
            || m.contains(gate::BUSY_WORDING)
            || m.starts_with(pool::STATEMENT_TIMEOUT_WORDING)
            || m.starts_with(pool::CONFLICT_WORDING))
}

/// How many batches of reads by id may run at once (`batch.rs`): a quarter of the pool, at least
/// one. On 2 cores (pool 4) one leader gave a shorter tail than two at the same throughput
/// (`docs/decisions.md`); a bigger pool means a bigger machine, where one batch at a time
/// would cap the reads.
fn batch_leaders(pool_size: u32) -> usize {
    (pool_size as usize / 4).max(1)
}

/// What was last logged and alerted.
#[derive(Default)]
struct Announced {
    /// `None` before the first check.
    up: Option<bool>,
    /// The cause last logged while down.
    cause: Option<String>,
}

pub struct Db {
    pool: DbPool,
    cfg: DbConfig,
    /// The monitor's verdict. Only `check` writes it.
    up: AtomicBool,
    /// The database exists and its migrations have been applied since this process started.
    ready: AtomicBool,
    /// Wakes the monitor early (a request saw the database fail).
    nudge: (Mutex<bool>, Condvar),
    /// The state last logged and alerted. Only `check` takes this lock, never across I/O.
    announced: Mutex<Announced>,
    /// The probe thread's channels; created by the first probe. Taken by `check` only.
    prober: Mutex<Option<Prober>>,
    /// Accounts seen since start (see `cache.rs`).
    pub cache: cache::AccountCache,
    /// The spool, once `main` has attached it.
    spool: OnceLock<Arc<spool::Spool>>,
    /// The upload intents, attached with the spool.
    intents: OnceLock<Arc<intent::Intents>>,
    /// Reads of users by id, combined (`batch.rs`).
    /// Rows as `Arc`s: a batch hands each of its requests its rows without copying them.
    user_reads: batch::Batcher<Arc<users::User>>,
    /// How often the monitor refreshes every cached account while the database is up
    /// (`ACCOUNT_CACHE_REFRESH_SECS`): the most the cache can be behind when the database leaves.
    account_refresh: Duration,
}

/// Ids per query of an account refresh: bounds one statement's parameter and its rows.
const REFRESH_BATCH: usize = 10_000;

impl Db {
    pub fn new(cfg: DbConfig) -> Result<Db, DbError> {
        Db::with_cache(cfg, cache::DEFAULT_CAPACITY)
    }

    /// A `Db` whose account cache holds at most `cache_capacity` accounts, refreshed every
    /// `DEFAULT_ACCOUNT_REFRESH`.
    pub fn with_cache(cfg: DbConfig, cache_capacity: usize) -> Result<Db, DbError> {
        Db::with_cache_refreshed(cfg, cache_capacity, DEFAULT_ACCOUNT_REFRESH)
    }

    /// A `Db` whose account cache holds at most `cache_capacity` accounts, each read again from
    /// the database every `refresh` while it is up.
    pub fn with_cache_refreshed(cfg: DbConfig, cache_capacity: usize, refresh: Duration) -> Result<Db, DbError> {
        let pool = pool::build_pool(&cfg)?;
        let user_reads = batch::Batcher::new(batch_leaders(cfg.pool_size), |u: &Arc<users::User>| u.id);
        Ok(Db {
            pool,
            cfg,
            up: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            nudge: (Mutex::new(false), Condvar::new()),
            announced: Mutex::new(Announced::default()),
            prober: Mutex::new(None),
            cache: cache::AccountCache::new(cache_capacity),
            spool: OnceLock::new(),
            intents: OnceLock::new(),
            user_reads,
            account_refresh: refresh.max(Duration::from_secs(1)),
        })
    }

    /// Read every cached account again (in batches) and bring the cache in line: deactivated,
    /// demoted or renamed accounts change, deleted ones go. Changes made elsewhere (another
    /// instance, SQL by hand) would otherwise wait for the account's next request, and a
    /// database that leaves first would leave them out of date for the whole outage.
    pub fn refresh_accounts(&self) -> Result<(), DbError> {
        let versions = self.cache.versions();
        let mut c = self.conn()?;
        for chunk in versions.chunks(REFRESH_BATCH) {
            let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            let found = users::by_ids(&mut c, &ids)?;
            self.cache.reconcile(chunk, &found);
        }
        Ok(())
    }

    pub fn config(&self) -> &DbConfig {
        &self.cfg
    }

    /// Whether the database was usable at the monitor's last probe.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The spool, when attached.
    pub fn spool(&self) -> Option<&Arc<spool::Spool>> {
        self.spool.get()
    }

    /// The upload intents, when attached.
    pub fn intents(&self) -> Option<&Arc<intent::Intents>> {
        self.intents.get()
    }

    /// Resolve the intents a crashed process left (`intent.rs`): those whose records are in the
    /// spool at once; the rest when the database is up. Returns how many stay undecided.
    pub fn resolve_intents(&self) -> usize {
        let (Some(intents), Some(spool)) = (self.intents(), self.spool()) else { return 0 };
        if intents.pending() == 0 {
            return 0;
        }
        // The spool first, then the database (see `intent.rs`).
        let spooled = match spool.spooled_names() {
            Ok(names) => names,
            Err(e) => {
                warn!("upload intents: cannot read the spool ({e}); trying again later");
                return intents.pending();
            }
        };
        let mut conn = if self.is_up() { self.conn().ok() } else { None };
        let left = intents.resolve(&spooled, conn.as_mut().map(|c| -> &mut postgres::Client { c }));
        if left > 0 && conn.is_some() {
            warn!("upload intents: {left} could not be decided yet; trying again shortly");
        }
        left
    }

    /// Pooled connections `(in use, idle)`, for metrics (r2d2 takes its lock for a moment).
    pub fn pool_state(&self) -> (u32, u32) {
        let st = self.pool.state();
        (st.connections.saturating_sub(st.idle_connections), st.idle_connections)
    }

    /// Upload records waiting in the spool (0 without one).
    pub fn spool_depth(&self) -> usize {
        self.spool().map_or(0, |s| s.depth())
    }

    /// A connection from the pool. Fails at once, without touching the pool, while the monitor
    /// says the database is down (or has not been reached and migrated since start).
    pub fn conn(&self) -> Result<Conn, DbError> {
        if !self.is_up() || !self.ready.load(Ordering::SeqCst) {
            return Err(DbError::Unavailable("the database is down (the monitor's last probe failed)".into()));
        }
        self.pool.get().map_err(|e| self.saw(DbError::from_pool(e)))
    }

    /// The users among `ids`, read in one query shared with the other threads reading users by
    /// id at the same moment (`batch.rs`). Fails as [`Db::conn`] does; waiting in line counts
    /// against the checkout timeout.
    pub fn users_by_ids(&self, ids: &[i64]) -> Result<Vec<Arc<users::User>>, DbError> {
        let deadline = Instant::now() + self.cfg.checkout_timeout;
        let read = |keys: &[i64]| {
            let rows = self.conn().and_then(|mut c| users::by_ids(&mut c, keys))?;
            Ok(rows.into_iter().map(Arc::new).collect())
        };
        self.user_reads
            .get(ids, deadline, &read, |waited| self.saw(DbError::from_pool(gate::CheckoutError::Busy(waited))))
    }

    /// Record an error seen by a request: an "unavailable" one wakes the monitor, which probes at
    /// once and decides. Returns the error for `?` chains.
    pub fn saw(&self, err: DbError) -> DbError {
        if err.is_unavailable() && self.is_up() {
            let (lock, cv) = &self.nudge;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        err
    }

    /// One probe through the `db-probe` thread, waiting at most `PROBE_TIMEOUT`.
    fn probe(&self) -> ProbeResult {
        let mut guard = self.prober.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(
                Prober::start(&self.cfg)
                    .map_err(|e| DbError::Unavailable(format!("cannot start the probe thread: {e}")))?,
            );
        }
        let p = guard.as_mut().expect("started above");
        let want = match p.outstanding {
            Some(seq) => seq,
            None => {
                p.seq += 1;
                if p.requests.try_send(p.seq).is_err() {
                    *guard = None;
                    return Err(DbError::Unavailable("the probe thread is gone; restarting it".into()));
                }
                p.outstanding = Some(p.seq);
                p.seq
            }
        };
        let deadline = Instant::now() + PROBE_TIMEOUT;
        loop {
            match p.answers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((seq, r)) if seq == want => {
                    p.outstanding = None;
                    return r;
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(DbError::Unavailable(format!(
                        "no answer from PostgreSQL within {} s (a host that vanished, or a server that hangs)",
                        PROBE_TIMEOUT.as_secs()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    *guard = None;
                    return Err(DbError::Unavailable("the probe thread is gone; restarting it".into()));
                }
            }
        }
    }

    /// Probe now and set the state, logging a change (and a change of cause while down).
    /// Returns the new state.
    pub fn check(&self, hook: Option<&StateHook>) -> bool {
        let result = self.probe();
        if let Ok(applied) = &result {
            if !applied.is_empty() {
                info!("applied migrations {applied:?}");
                // Prepared statements of the old schema must not outlive it (`stmt.rs`).
                self.pool.schema_changed();
            }
            self.ready.store(true, Ordering::SeqCst);
        }
        let now_up = result.is_ok();
        self.up.store(now_up, Ordering::SeqCst);
        let cause = result.err().map(|e| format!("{e}{}", cause_hint(&e)));
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        if announced.up != Some(now_up) {
            // Starting with the database up is the normal case, not a change worth an alert;
            // starting without it is.
            let first_and_up = announced.up.is_none() && now_up;
            announced.up = Some(now_up);
            announced.cause = cause.clone();
            drop(announced);
            match &cause {
                None => info!("database is up ({})", self.cfg.describe()),
                Some(c) => warn!("database is down ({}); serving in degraded mode. Cause: {c}", self.cfg.describe()),
            }
            if let Some(hook) = hook.filter(|_| !first_and_up) {
                hook(now_up);
            }
        } else if !now_up && announced.cause != cause {
            announced.cause = cause.clone();
            drop(announced);
            warn!("database is still down ({}); the cause changed: {}", self.cfg.describe(), cause.unwrap_or_default());
        } else {
            drop(announced);
        }
        if now_up && self.spool_depth() > 0 {
            if let Some(s) = self.spool() {
                s.kick();
            }
        }
        now_up
    }

    /// Start the `db-monitor` thread.
    pub fn start_monitor(self: &Arc<Self>, hook: Option<StateHook>) -> std::io::Result<()> {
        let db = self.clone();
        // Not on the monitor's thread: a refresh is a query, which a hung PostgreSQL would hold,
        // and the monitor must go on probing.
        std::thread::Builder::new().name("db-refresh".into()).spawn(move || loop {
            std::thread::sleep(db.account_refresh);
            if db.is_up() && !db.cache.is_empty() {
                if let Err(e) = db.refresh_accounts() {
                    debug!("account cache refresh skipped: {e}");
                }
            }
        })?;
        let db = self.clone();
        std::thread::Builder::new().name("db-monitor".into()).spawn(move || loop {
            db.check(hook.as_ref());
            let (lock, cv) = &db.nudge;
            let mut nudged = lock.lock().unwrap_or_else(|p| p.into_inner());
            if !*nudged {
                nudged = cv.wait_timeout(nudged, PROBE_INTERVAL).unwrap_or_else(|p| p.into_inner()).0;
            }
            *nudged = false;
        })?;
        Ok(())
    }

    /// Attach the spool and the upload intents and start the `spool-replay` thread, which
    /// writes the spool into the database whenever the monitor says it is up (woken by the
    /// monitor, and every 5 s), and then resolves the intents left pending.
    pub fn attach_spool(
        self: &Arc<Self>,
        spool: Arc<spool::Spool>,
        intents: Arc<intent::Intents>,
    ) -> std::io::Result<()> {
        if self.spool.set(spool.clone()).is_err() || self.intents.set(intents).is_err() {
            return Err(std::io::Error::other("a spool is already attached"));
        }
        let db = self.clone();
        std::thread::Builder::new().name("spool-replay".into()).spawn(move || {
            let mut last_prune: Option<Instant> = None;
            loop {
                spool.wait_kick(Duration::from_secs(5));
                if !db.is_up() {
                    continue;
                }
                if spool.depth() > 0 {
                    let mut c = match db.conn() {
                        Ok(c) => c,
                        Err(_) => continue,
                    };
                    if let Err(e) = spool.replay(&mut c) {
                        warn!("spool: replay stopped ({e}); it resumes when the database is usable again");
                        db.saw(e);
                        continue;
                    }
                    if !last_prune.is_some_and(|t| t.elapsed() < Duration::from_secs(3600)) {
                        last_prune = Some(Instant::now());
                        if let Err(e) = spool::prune_applied(&mut c) {
                            warn!("spool: cannot prune spool_applied: {e}");
                        }
                    }
                }
                // Intents a crashed process left and that were not decided at start (the
                // database was away): decided now (nothing to do when there are none).
                db.resolve_intents();
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_checkout_timeout_is_a_busy_pool() {
        // The pool's only connection is held: the next checkout times out with no cause.
        let test_db = pool::tests::TestDb::new("busy");
        let mut cfg = test_db.cfg.clone();
        cfg.pool_size = 1;
        cfg.checkout_timeout = Duration::from_millis(200);
        pool::ensure_database(&cfg).unwrap();
        let p = pool::build_pool(&cfg).unwrap();
        let held = p.get().unwrap();
        let busy = DbError::from_pool(p.get().err().expect("busy"));
        assert!(busy.is_unavailable() && is_busy_pool(&busy), "{busy}");
        drop(held);
        // Nothing listens: the timeout carries the connection error, which is not "busy".
        let cfg = DbConfig {
            host: "127.0.0.1".into(),
            port: 1,
            checkout_timeout: Duration::from_millis(300),
            ..DbConfig::default()
        };
        let down = DbError::from_pool(pool::build_pool(&cfg).unwrap().get().err().expect("down"));
        assert!(down.is_unavailable() && !is_busy_pool(&down), "{down}");
        let closed = DbError::Unavailable("connection closed".into());
        assert!(!is_busy_pool(&closed));
    }

    #[test]
    fn hints_say_what_will_not_heal() {
        let pw = DbError::Unavailable("password authentication failed for user \"x\" [28P01]".into());
        assert!(cause_hint(&pw).contains("will not heal"));
        let role = DbError::Unavailable("role \"nobody\" does not exist [28000]".into());
        assert!(cause_hint(&role).contains("DB_USER"));
        let refused = DbError::Unavailable("error connecting to server: Connection refused (os error 111)".into());
        assert!(cause_hint(&refused).contains("nothing listens"));
        let dns = DbError::Unavailable("error connecting to server: failed to lookup address information".into());
        assert!(cause_hint(&dns).contains("DB_HOST"));
        assert_eq!(cause_hint(&DbError::Unavailable("something else".into())), "");
        // The one-shot commands' advice: the known cause's, else the general one (a refused
        // password was told "is PostgreSQL running?").
        assert!(unreachable_hint(&pw).contains("fix DB_PASSWORD"));
        assert!(unreachable_hint(&DbError::Unavailable("something else".into())).contains("is PostgreSQL running?"));
    }

    #[test]
    fn a_busy_pool_is_not_an_outage_and_a_stopped_server_is_seen_fast() {
        // Nothing listens on port 1: the probe is refused at once and the state is down.
        let cfg = DbConfig { host: "127.0.0.1".into(), port: 1, ..DbConfig::default() };
        let db = Db::new(cfg).unwrap();
        let t = Instant::now();
        assert!(!db.check(None));
        assert!(t.elapsed() < PROBE_TIMEOUT, "a refused probe is answered at once: {:?}", t.elapsed());
        // While down, a checkout fails without waiting for the pool.
        let t = Instant::now();
        assert!(db.conn().err().expect("down").is_unavailable());
        assert!(t.elapsed() < Duration::from_millis(100));
        // An unavailable error seen by a request does not flip the state by itself.
        let test_db = pool::tests::TestDb::new("monitor");
        let db_up = Db::new(test_db.cfg.clone()).unwrap();
        assert!(db_up.check(None), "the test PostgreSQL must be reachable");
        db_up.saw(DbError::Unavailable("no database connection available: timed out waiting for connection".into()));
        assert!(db_up.is_up(), "a checkout timeout is not an outage");
    }

    /// Many threads reading users by id at once (so their reads are combined, `batch.rs`) each
    /// get exactly the users they asked for, with their own rows, from the real PostgreSQL.
    #[test]
    fn concurrent_reads_by_id_each_get_exactly_their_own_users() {
        let test_db = pool::tests::TestDb::new("batch");
        let mut cfg = test_db.cfg.clone();
        cfg.pool_size = 4;
        let db = Arc::new(Db::new(cfg).unwrap());
        assert!(db.check(None), "the test PostgreSQL must be reachable");
        let ids: Arc<Vec<i64>> = Arc::new({
            let mut c = db.conn().unwrap();
            (0..40).map(|i| users::insert(&mut *c, &format!("b{i}@x.io"), "h", None, false).unwrap().id).collect()
        });
        let threads: Vec<_> = (0..24)
            .map(|t| {
                let (db, ids) = (db.clone(), ids.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let (a, b) = (ids[(t + round) % ids.len()], ids[(t * 7 + round + 1) % ids.len()]);
                        let mut got: Vec<(i64, String)> = db
                            .users_by_ids(&[a, b, -1])
                            .unwrap()
                            .into_iter()
                            .map(|u| (u.id, u.email.clone()))
                            .collect();
                        got.sort();
                        let mut want: Vec<(i64, String)> = [a, b]
                            .iter()
                            .map(|id| (*id, format!("b{}@x.io", ids.iter().position(|x| x == id).unwrap())))
                            .collect();
                        want.sort();
                        want.dedup();
                        assert_eq!(got, want, "thread {t} round {round}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
