//! Authentication: password hashing (`password.rs`, Argon2id), tokens (`token.rs`, HS256 JWT),
//! the login rate limit (`ratelimit.rs`), the hashing gate, and the bearer check handlers use.
//!
//! Argon2 work runs on its own small pool of threads (`HashPool`, one per core, named
//! `argon2-N`) at the lowest CPU priority (`SCHED_IDLE`), so a login flood slows logins, not the rest
//! of the server: a worker serving `/health` always wins the CPU over a hash. A worker that needs
//! a hash queues the job and waits; at most `max_waiting` jobs wait, beyond that the request is
//! answered 503 at once. So a login flood can hold at most `threads + max_waiting` HTTP workers,
//! each for at most `HASH_WAIT_MAX` (a machine so busy that the idle-priority hashing threads
//! get no CPU for that long answers 503 too, instead of holding the worker for as long as the
//! load lasts; the job it gave up on is skipped).
//! Must never: log or echo a password or a token; tell an unknown email apart from a wrong
//! password (same status, same body, one hash spent either way).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub mod password;
pub mod ratelimit;
pub mod token;

use crate::db::users::{self, User};
use crate::db::Db;
use crate::http::{HttpError, Request, Response};

/// Too many hashes queued (answer 503), or the hash job failed.
#[derive(Debug)]
pub enum HashError {
    Busy,
    Failed,
}

type Job = Box<dyn FnOnce() + Send>;

/// Longest a request waits for its hash (queue and hashing together): a hash takes about 40 ms,
/// so this is only reached when the hashing threads, at the lowest priority, get no CPU. As long
/// as a client is likely to wait (`BODY_TIMEOUT_SECS`'s default): a shorter bound would turn a
/// busy machine's slow logins into refused ones (the pool's unit test took 7.5 s, seen once by
/// hand in nextest's timing, while the machine compiled).
pub const HASH_WAIT_MAX: Duration = Duration::from_secs(30);

/// The Argon2 thread pool. The queue (`jobs`) is owned by the pool, holds at most `max_waiting`
/// jobs, and refuses more (`HashError::Busy`) rather than block the caller.
pub struct HashPool {
    jobs: Mutex<VecDeque<Job>>,
    cv: Condvar,
    pub threads: usize,
    pub max_waiting: usize,
    /// How long `run` waits for a result before giving up with `Busy` (`HASH_WAIT_MAX`).
    pub max_wait: Duration,
}

impl HashPool {
    /// Start `threads` hashing threads at the lowest priority (`lowest_priority`).
    pub fn start(threads: usize, max_waiting: usize, max_wait: Duration) -> std::io::Result<Arc<HashPool>> {
        let pool = Arc::new(HashPool {
            jobs: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            threads: threads.max(1),
            max_waiting,
            max_wait,
        });
        for i in 0..pool.threads {
            let p = pool.clone();
            std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
                lowest_priority();
                loop {
                    let job = {
                        let mut q = p.jobs.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if let Some(j) = q.pop_front() {
                                break j;
                            }
                            q = p.cv.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    // A panicking job drops its reply channel; the caller sees `Failed`.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        }
        Ok(pool)
    }

    /// Whether a job queued now would be refused. A cheap early check, so a request that
    /// will be answered 503 anyway does no other work first (it can still race; `run` decides).
    pub fn is_full(&self) -> bool {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).len() >= self.max_waiting
    }

    /// Run `f` on a hashing thread and wait for its result, at most `max_wait` (then `Busy`, and
    /// `f` is skipped if it has not started).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        {
            let abandoned = abandoned.clone();
            let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.max_waiting {
                return Err(HashError::Busy);
            }
            q.push_back(Box::new(move || {
                if !abandoned.load(Ordering::Acquire) {
                    let _ = tx.send(f());
                }
            }));
        }
        self.cv.notify_one();
        match rx.recv_timeout(self.max_wait) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::Release);
                Err(HashError::Busy)
            }
            Err(RecvTimeoutError::Disconnected) => Err(HashError::Failed),
        }
    }
}

/// Put the calling thread in `SCHED_IDLE`: it runs only when no other thread wants the CPU, and
/// any other thread that wakes up takes the CPU from it at once. Lowering one's own priority
/// needs no privilege. Where that fails, nice 19 (the lowest weight in the normal class, which
/// the scheduler may still let finish its time slice before a woken worker runs).
fn lowest_priority() {
    // SAFETY: both calls act on this thread's own id (Linux threads have their own scheduling
    // policy and nice value) and read only the parameter struct passed by reference. A failure
    // only leaves the thread at a higher priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
}

impl From<HashError> for HttpError {
    fn from(e: HashError) -> HttpError {
        match e {
            // The same connection is not read again for that second: a client that ignores
            // `Retry-After` cannot turn refusals into a flood that starves everything else.
            HashError::Busy => HttpError::new(503, "Server busy; try again shortly")
                .header("retry-after", "1")
                .hold(std::time::Duration::from_secs(1)),
            HashError::Failed => HttpError::new(500, "Internal Server Error"),
        }
    }
}

/// Everything authentication needs at run time.
pub struct Auth {
    pub keys: token::TokenKeys,
    pub token_ttl: Duration,
    pub limiter: ratelimit::LoginLimiter,
    pub hasher: Arc<HashPool>,
}

/// The 401 of the contract for any bad or missing token.
pub fn unauthorized() -> HttpError {
    HttpError::new(401, "Could not validate credentials").header("www-authenticate", "Bearer")
}

/// The 503 of the contract when the database is needed and not there.
pub fn db_unavailable() -> HttpError {
    HttpError::new(503, "Database unavailable").header("retry-after", "5")
}

/// Map a database error to the response: unavailable → 503, anything else → 500 (logged).
pub fn db_error(db: &Db, err: crate::db::DbError) -> HttpError {
    let err = db.saw(err);
    if err.is_unavailable() {
        db_unavailable()
    } else {
        crate::error!("database error: {err}");
        HttpError::new(500, "Internal Server Error")
    }
}

/// The token from `Authorization: Bearer <token>`, if any.
pub fn bearer_token<'r>(req: &'r Request<'_>) -> Option<&'r str> {
    let value = req.header("authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The caller of a protected endpoint. `stale`: the account came from the memory cache because
/// the database is away; the answer then carries `X-Data-Stale: true` ([`Caller::mark`]).
pub struct Caller {
    /// Shared with the other requests of its read's batch (`db/batch.rs`): no copy per request.
    pub user: Arc<User>,
    pub stale: bool,
}

impl std::ops::Deref for Caller {
    type Target = User;
    fn deref(&self) -> &User {
        &self.user
    }
}

impl Caller {
    /// `resp`, with `X-Data-Stale: true` when the caller was served from memory.
    pub fn mark(&self, resp: Response) -> Response {
        stale_mark(self.stale, resp)
    }
}

/// `resp`, with `X-Data-Stale: true` when `stale`.
pub fn stale_mark(stale: bool, resp: Response) -> Response {
    if stale {
        resp.header("x-data-stale", "true")
    } else {
        resp
    }
}

/// Users by id: from the database while it is up (refreshing the account cache, and dropping
/// from it the ids the database no longer has), else — or when the connection fails on the way,
/// but not when the pool is merely busy (`db::is_busy_pool`: that answers 503) — from the cache. Returns the users found and whether they came from the cache. From the cache,
/// a missing id is unknown rather than absent: the caller answers 503 for it, not 404.
pub fn load_users(db: &Db, ids: &[i64]) -> Result<(Vec<Arc<User>>, bool), HttpError> {
    if db.is_up() {
        match db.users_by_ids(ids) {
            Ok(found) => {
                for u in &found {
                    db.cache.put(u);
                }
                for id in ids.iter().filter(|id| !found.iter().any(|u| u.id == **id)) {
                    db.cache.forget(*id);
                }
                return Ok((found, false));
            }
            // A busy pool is not an outage: no answers from memory for it.
            Err(e) if e.is_unavailable() && !crate::db::is_busy_pool(&e) => {
                db.saw(e);
            }
            Err(e) => return Err(db_error(db, e)),
        }
    }
    Ok((ids.iter().filter_map(|&id| db.cache.by_id(id)).map(Arc::new).collect(), true))
}

/// A user by email, like [`load_users`]: `Ok((None, true))` means "not in memory and the database
/// is away" (answer 503), `Ok((None, false))` "no such account".
pub fn load_user_by_email(db: &Db, email: &str) -> Result<(Option<User>, bool), HttpError> {
    if db.is_up() {
        match db.conn().and_then(|mut c| users::by_email(&mut c, email)) {
            Ok(found) => {
                if let Some(u) = &found {
                    db.cache.put(u);
                }
                return Ok((found, false));
            }
            Err(e) if e.is_unavailable() && !crate::db::is_busy_pool(&e) => {
                db.saw(e);
            }
            Err(e) => return Err(db_error(db, e)),
        }
    }
    Ok((db.cache.by_email(email), true))
}

/// Whom a valid token speaks for: the account id in its `sub` and the email that account had
/// when the token was issued. The id alone is not enough: ids come from a sequence, and a
/// restore winds the sequence back, so after one the id of a removed account can be given to a
/// new one; the old token must not open the new account. A token is its account's while the
/// account with its id still has its email ([`Bearer::owns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub id: i64,
    pub email: String,
}

impl Bearer {
    /// Whether `u` is the account this token was issued to (same id, same email as stored).
    pub fn owns(&self, u: &User) -> bool {
        u.id == self.id && u.email == self.email
    }
}

impl Auth {
    /// Whom a token speaks for, if the token is valid now (signature, algorithm, expiry).
    pub fn token_bearer(&self, token: &str) -> Option<Bearer> {
        let claims = self.keys.verify(token, crate::util::time::unix_now()).ok()?;
        Some(Bearer { id: claims.user_id()?, email: claims.email })
    }

    /// The caller of a protected endpoint: a valid token of an active, existing user, or 401.
    /// While the database is away the account comes from memory (`Caller::stale`); a token of
    /// an account not in memory then answers 503 (it cannot be checked).
    pub fn current_user(&self, db: &Db, req: &Request<'_>) -> Result<Caller, HttpError> {
        let bearer = bearer_token(req).and_then(|t| self.token_bearer(t)).ok_or_else(unauthorized)?;
        let (found, stale) = load_users(db, &[bearer.id])?;
        match found.into_iter().next() {
            Some(u) if u.is_active && bearer.owns(&u) => Ok(Caller { user: u, stale }),
            Some(_) => Err(unauthorized()),
            None if stale => Err(db_unavailable()),
            None => Err(unauthorized()),
        }
    }

    /// `err` (a request's own parameter is bad), unless the caller is not let in: then that
    /// `401`. The caller comes before the parameters, as FastAPI resolves a route's token
    /// dependency before it validates the route's own path, query and body (`GET /users/abc`
    /// without a token is a `401`). Routes that look the caller up in the same query as the read
    /// it guards call this only when a parameter is bad, so their usual path stays one round
    /// trip.
    pub fn caller_first(&self, db: &Db, req: &Request<'_>, err: HttpError) -> HttpError {
        match self.current_user(db, req) {
            Err(refused) => refused,
            Ok(_) => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hold the pool's only hashing thread with a job until the returned sender is used; the
    /// handle gives that job's `run` result. The thread runs at the lowest priority, so on a
    /// machine busy with other tests a short `max_wait` may pass before the job starts: the job
    /// is then skipped, and another is tried.
    fn hold_the_thread(
        pool: &Arc<HashPool>,
    ) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<Result<(), HashError>>) {
        for _ in 0..100 {
            let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let p = pool.clone();
            let blocker = std::thread::spawn(move || {
                p.run(move || {
                    started_tx.send(()).unwrap();
                    release_rx.recv_timeout(Duration::from_secs(30)).unwrap()
                })
            });
            // An error: the job was given up on (and dropped) before it started.
            if started_rx.recv().is_ok() {
                return (release_tx, blocker);
            }
            assert!(matches!(blocker.join().unwrap(), Err(HashError::Busy)));
        }
        panic!("the hashing thread never started a job in 100 tries");
    }

    /// `pool.run(f)` until it is not `Busy` (see `hold_the_thread`: a short `max_wait` on a busy
    /// machine).
    fn run_until_served<T: Send + 'static>(pool: &HashPool, f: impl Fn() -> T + Send + Clone + 'static) -> T {
        for _ in 0..100 {
            match pool.run(f.clone()) {
                Err(HashError::Busy) => continue,
                done => return done.unwrap(),
            }
        }
        panic!("no job was served in 100 tries");
    }

    #[test]
    fn hash_pool_runs_jobs_and_refuses_beyond_its_queue() {
        let pool = HashPool::start(1, 1, HASH_WAIT_MAX).unwrap();
        assert_eq!(pool.run(|| 6 * 7).unwrap(), 42);
        // Block the only thread, fill the one queue slot, and the next job is refused at once.
        let (release_tx, blocker) = hold_the_thread(&pool);
        let p = pool.clone();
        let queued = std::thread::spawn(move || p.run(|| 7).unwrap());
        while pool.jobs.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        assert!(matches!(pool.run(|| ()), Err(HashError::Busy)));
        release_tx.send(()).unwrap();
        blocker.join().unwrap().unwrap();
        assert_eq!(queued.join().unwrap(), 7);
        // A panicking job is a failure for its caller only; the pool goes on.
        assert!(matches!(pool.run(|| -> u8 { panic!("boom") }), Err(HashError::Failed)));
        assert_eq!(pool.run(|| 1).unwrap(), 1);
    }

    #[test]
    fn a_hash_that_gets_no_cpu_in_time_is_busy_and_skipped() {
        let pool = HashPool::start(1, 4, Duration::from_millis(200)).unwrap();
        // The only hashing thread held (as by a machine too busy to run it).
        let (release_tx, blocker) = hold_the_thread(&pool);
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        assert!(matches!(pool.run(move || r.store(true, Ordering::SeqCst)), Err(HashError::Busy)));
        // Once the thread is free, the abandoned job is skipped. (The blocker gave up waiting
        // too, unless its result came in before its thread woke to see the deadline.)
        release_tx.send(()).unwrap();
        assert!(matches!(blocker.join().unwrap(), Err(HashError::Busy) | Ok(())));
        assert_eq!(run_until_served(&pool, || 5), 5);
        assert!(!ran.load(Ordering::SeqCst), "a job given up on was run");
    }
}
