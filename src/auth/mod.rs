//! Authentication: password hashing (`password.rs`, Argon2id), tokens (`token.rs`, HS256 JWT),
//! the login rate limit (`ratelimit.rs`), the hashing gate, and the bearer check handlers use.
//!
//! The hashing gate bounds CPU-heavy Argon2 work: at most `running` hashes at once (one per
//! core by default) and at most `waiting` requests queued behind them; beyond that a login or
//! sign-up answers 503 at once. So a login flood can occupy at most `running + waiting` HTTP
//! workers, and the rest keep serving everything else.
//! Must never: log or echo a password or a token; tell an unknown email apart from a wrong
//! password (same status, same body, one hash spent either way).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub mod password;
pub mod ratelimit;
pub mod token;

use crate::db::users::{self, User};
use crate::db::Db;
use crate::http::{HttpError, Request};

/// Too many hashes queued: answer 503.
#[derive(Debug)]
pub struct Busy;

/// A counting gate with a bounded queue. State: (running, waiting).
pub struct HashGate {
    state: Mutex<(usize, usize)>,
    cv: Condvar,
    pub running: usize,
    pub waiting: usize,
}

impl HashGate {
    pub fn new(running: usize, waiting: usize) -> HashGate {
        HashGate { state: Mutex::new((0, 0)), cv: Condvar::new(), running: running.max(1), waiting }
    }

    /// Run `f` when a slot is free; `Err(Busy)` when the queue is full.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, Busy> {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 >= self.running {
                if s.1 >= self.waiting {
                    return Err(Busy);
                }
                s.1 += 1;
                while s.0 >= self.running {
                    s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.1 -= 1;
            }
            s.0 += 1;
        }
        // Release the slot even if `f` panics.
        struct Release<'a>(&'a HashGate);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                s.0 -= 1;
                self.0.cv.notify_one();
            }
        }
        let _release = Release(self);
        Ok(f())
    }
}

impl From<Busy> for HttpError {
    fn from(_: Busy) -> HttpError {
        HttpError::new(503, "Server busy; try again shortly").header("retry-after", "1")
    }
}

/// Everything authentication needs at run time.
pub struct Auth {
    pub keys: token::TokenKeys,
    pub token_ttl: Duration,
    pub limiter: ratelimit::LoginLimiter,
    pub gate: HashGate,
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

impl Auth {
    /// The user id a token names, if the token is valid now (signature, algorithm, expiry).
    pub fn token_user_id(&self, token: &str) -> Option<i64> {
        self.keys.verify(token, crate::util::time::unix_now()).ok().and_then(|c| c.user_id())
    }

    /// The caller of a protected endpoint: a valid token of an active, existing user, or 401.
    pub fn current_user(&self, db: &Db, req: &Request<'_>) -> Result<User, HttpError> {
        let id = bearer_token(req).and_then(|t| self.token_user_id(t)).ok_or_else(unauthorized)?;
        let mut c = db.conn().map_err(|e| db_error(db, e))?;
        match users::by_id(&mut c, id).map_err(|e| db_error(db, e))? {
            Some(u) if u.is_active => Ok(u),
            _ => Err(unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn gate_bounds_running_and_waiting() {
        let gate = Arc::new(HashGate::new(1, 1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let holder = std::thread::spawn(move || g.run(|| rx.recv().unwrap()).unwrap());
        while gate.state.lock().unwrap().0 == 0 {
            std::thread::yield_now();
        }
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.run(|| 7).unwrap());
        while gate.state.lock().unwrap().1 == 0 {
            std::thread::yield_now();
        }
        // One running, one waiting: a third is refused at once.
        assert!(gate.run(|| ()).is_err());
        tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(waiter.join().unwrap(), 7);
        assert_eq!(*gate.state.lock().unwrap(), (0, 0));
    }
}
