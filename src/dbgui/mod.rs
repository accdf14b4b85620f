//! The database web GUI (`adcluster db-gui`): a second application on the same `http/` layer,
//! with its own router, port, connection pool and page. It is not part of `api/` and shares
//! nothing with the server but the configuration and the HTTP layer.
//!
//! - `api.rs`    the routes and the access rules (token, session cookie, same-origin writes);
//! - `query.rs`  running a statement in a read-only (or `--allow-writes`) transaction, and
//!   PostgreSQL's values as JSON;
//! - `export.rs` CSV and JSON exports, streamed from a cursor;
//! - `store.rs`  saved queries (a file in `DATA_DIR`) and the history (memory).
//!
//! Threads: those of the HTTP layer ([`WORKERS`] workers, see `http/server.rs`) and r2d2's
//! helper threads for the pool ([`POOL_SIZE`] connections at most, opened on demand). A
//! streamed export holds one worker and one connection until it is sent.
//!
//! Must never: accept an `/api` call without the token, log a statement's text at `info`, run a
//! statement outside a transaction it ends itself, or listen anywhere but where it was told
//! (default `127.0.0.1:3030`: the database is not for the network to see).

pub mod api;
pub mod export;
pub mod query;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::Config;
use crate::db::DbConfig;

/// HTTP workers of the GUI: a tool for a few people, and each export holds one.
pub const WORKERS: usize = 8;
/// Most PostgreSQL connections the GUI opens.
pub const POOL_SIZE: u32 = 8;
/// Rows a query returns when its request names no `limit`.
pub const DEFAULT_QUERY_LIMIT: usize = 1000;
/// Rows a table page shows when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// The session cookie's name.
pub const COOKIE: &str = "adcluster_dbgui";

/// The command-line options of `db-gui` (beyond the shared settings).
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub allow_writes: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { host: "127.0.0.1".into(), port: 3030, allow_writes: false }
    }
}

/// What the handlers share.
pub struct Gui {
    pub pool: query::Pool,
    pub mode: query::Mode,
    /// The access token (from `DB_GUI_TOKEN` or random).
    pub token: String,
    /// The session cookie's value: a hash of the token, so the token itself never sits in the
    /// browser's cookie jar.
    pub session: String,
    pub max_rows: usize,
    pub database: String,
    pub saved: store::Saved,
    pub history: store::History,
    /// Statements running under a client's `request_id`, for `POST /api/cancel`. Held only to
    /// insert, remove or clone one token (never across I/O); at most one entry per running
    /// statement, so bounded by the pool size.
    pub running: Mutex<HashMap<String, postgres::CancelToken>>,
}

/// Lock a mutex whose data a panic cannot leave half-changed (single inserts and removes).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gui {
    /// Build the GUI's state from the configuration (no connection is made yet).
    pub fn new(cfg: &Config, db: &DbConfig, allow_writes: bool) -> Result<Arc<Gui>, String> {
        let mut pg = db.pg_config().map_err(|e| e.to_string())?;
        pg.application_name("adcluster db-gui");
        let manager = r2d2_postgres::PostgresConnectionManager::new(pg, postgres::NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(db.checkout_timeout.max(Duration::from_secs(5)))
            .test_on_check_out(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .build_unchecked(manager);
        let token = match &cfg.db_gui_token {
            Some(t) => t.clone(),
            None => random_token().map_err(|e| format!("cannot make a random token: {e}"))?,
        };
        Ok(Arc::new(Gui {
            pool,
            mode: query::Mode { allow_writes, timeout: cfg.db_gui_timeout },
            session: session_value(&token),
            token,
            max_rows: cfg.db_gui_max_rows,
            database: db.describe(),
            saved: store::Saved::open(&cfg.data_dir)?,
            history: store::History::new(cfg.db_gui_history),
            running: Mutex::new(HashMap::new()),
        }))
    }
}

/// 32 random bytes, hex.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    Ok(hex(&raw))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cookie value for a token.
pub fn session_value(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(format!("adcluster-db-gui-session\0{token}").as_bytes()))
}

/// Compare two secrets in time independent of where they differ (and of their lengths: both
/// are hashed to 32 bytes first).
pub fn ct_eq(a: &str, b: &str) -> bool {
    use sha2::Digest;
    let (x, y) = (sha2::Sha256::digest(a.as_bytes()), sha2::Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(!ct_eq("", "a"));
        assert_eq!(random_token().unwrap().len(), 64);
        assert_ne!(random_token().unwrap(), random_token().unwrap());
        assert_ne!(session_value("t"), "t");
    }
}
