//! The PostgreSQL connection settings, the connection pool, and the database's creation.
//!
//! [`DbConfig`] holds the `DB_*` / `DATABASE_URL` settings and turns them into a
//! `postgres::Config`; [`ensure_database`] creates the configured database when it is missing;
//! [`build_pool`] makes the r2d2 pool that every request borrows a connection from. [`DbError`] is
//! the error of every database operation, and [`DbError::is_unavailable`] is how the server tells
//! "PostgreSQL is down" (answer `503 Database unavailable`, serve from memory) from "this query
//! failed" (a bug or a constraint, e.g. `409` on a unique violation).
//!
//! This module must never: put the database password (or a `DATABASE_URL`, which may embed it)
//! into an error message, a log line or `Debug` output; block or fail at start-up because
//! PostgreSQL is down (the pool connects lazily, and a checkout waits at most the checkout
//! timeout); or build SQL from configuration without quoting it.

use std::error::Error as _;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

/// The pool type the server uses: r2d2 behind a first-come-first-served gate (`gate.rs`).
pub type DbPool = super::gate::FairPool;

/// A connection borrowed from [`DbPool`]; goes back to the pool when dropped. Derefs to
/// [`Tracked`] and through it to `postgres::Client`.
pub type PooledClient = super::gate::Checkout;

/// How long after a connection was last seen healthy a checkout skips the health check.
pub const RECENTLY_HEALTHY: Duration = Duration::from_secs(1);

/// A pooled client, when it was last known to work, and its prepared statements (`stmt.rs`),
/// which live and die with the connection: a replaced connection starts with none.
pub struct Tracked {
    pub(super) client: postgres::Client,
    healthy_at: Instant,
    pub(super) stmts: super::stmt::StmtCache,
}

impl Deref for Tracked {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// r2d2's manager for our connections: `PostgresConnectionManager`, except that the checkout
/// health check (an empty query, one round trip) is skipped for a connection that went back to
/// the pool unbroken less than [`RECENTLY_HEALTHY`] ago. Under load that is almost every
/// checkout, which halves the round trips of a one-query request; an idle connection (the
/// case a PostgreSQL restart leaves dead) is still checked before use.
pub struct Manager(PostgresConnectionManager<NoTls>, super::stmt::SchemaEpoch);

impl r2d2::ManageConnection for Manager {
    type Connection = Tracked;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Tracked, postgres::Error> {
        Ok(Tracked {
            client: self.0.connect()?,
            healthy_at: Instant::now(),
            stmts: super::stmt::StmtCache::new(self.1.clone()),
        })
    }

    fn is_valid(&self, conn: &mut Tracked) -> Result<(), postgres::Error> {
        if conn.healthy_at.elapsed() < RECENTLY_HEALTHY {
            return Ok(());
        }
        self.0.is_valid(&mut conn.client)?;
        conn.healthy_at = Instant::now();
        Ok(())
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        let broken = self.0.has_broken(&mut conn.client);
        if !broken {
            conn.healthy_at = Instant::now();
        }
        broken
    }
}

/// Longest database name PostgreSQL keeps (NAMEDATALEN - 1); longer names are silently truncated
/// by the server, which would make the existence check lie, so they are refused.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// How to reach PostgreSQL, and how the pool behaves.
///
/// `Debug` shows neither the password nor the URL (which may embed one).
#[derive(Clone)]
pub struct DbConfig {
    /// `DB_HOST`: host name, IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// `DB_PORT`.
    pub port: u16,
    /// `DB_NAME`: the database to use (created when missing).
    pub dbname: String,
    /// `DB_USER`.
    pub user: String,
    /// `DB_PASSWORD`; empty means none. Never logged.
    pub password: String,
    /// `DATABASE_URL` (`postgres://user:pass@host:port/db?...` or `key=value ...`): when set, it
    /// replaces every field above. Never logged (it may hold the password).
    pub url: Option<String>,
    /// Most connections the pool opens at once.
    pub pool_size: u32,
    /// Longest a request waits for a pooled connection before giving up with an "unavailable"
    /// error. Short, so a request fails fast while PostgreSQL is down.
    pub checkout_timeout: Duration,
    /// Longest one connection attempt (TCP connect + start-up) may take. A `connect_timeout` in
    /// `DATABASE_URL` wins over this.
    pub connect_timeout: Duration,
    /// Longest one statement on a pooled connection may run (PostgreSQL's `statement_timeout`,
    /// waiting for a lock included); zero: no limit. Bounds how long a request's worker can be
    /// held by a query stuck behind a lock or a slow plan.
    pub statement_timeout: Duration,
}

impl Default for DbConfig {
    /// The defaults of the configuration table: `localhost:5432`, database `adcluster_db`, user
    /// `postgres`, no password; a pool of 10, 2 s checkout timeout, 5 s connect timeout, 10 s
    /// statement timeout.
    fn default() -> DbConfig {
        DbConfig {
            host: "localhost".into(),
            port: 5432,
            dbname: "adcluster_db".into(),
            user: "postgres".into(),
            password: String::new(),
            url: None,
            pool_size: 10,
            checkout_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// The default of `DB_STATEMENT_TIMEOUT_MS`: far above any query the server makes (the slowest,
/// a file listing or a spool replay batch, take milliseconds), far below a client's patience.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &if self.password.is_empty() { "<empty>" } else { "<redacted>" })
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl DbConfig {
    /// The connection settings as a `postgres::Config`: parsed from `url` when set, else built
    /// from the fields. Also sets the connect timeout (unless the URL has its own), TCP
    /// keepalives, and a TCP user timeout, so that a dead peer is noticed within about
    /// `connect_timeout + 10 s` instead of the kernel's default of many minutes: a pool health
    /// check or query on a connection whose server vanished must not hold a worker for long.
    pub fn pg_config(&self) -> Result<postgres::Config, DbError> {
        let mut config = match &self.url {
            Some(url) => url.parse::<postgres::Config>().map_err(|e| {
                // The parser's messages can quote a character of the input: keep only those that
                // name an option, which cannot hold the password.
                let detail = e
                    .source()
                    .map(|s| s.to_string())
                    .filter(|s| s.starts_with("invalid value for option"))
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                DbError::Config(format!(
                    "DATABASE_URL is not a valid PostgreSQL connection string{detail}; expected \
                     postgres://USER:PASSWORD@HOST:PORT/DBNAME"
                ))
            })?,
            None => {
                let mut c = postgres::Config::new();
                c.host(&self.host).port(self.port).dbname(&self.dbname).user(&self.user);
                if !self.password.is_empty() {
                    c.password(&self.password);
                }
                c
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(self.connect_timeout + Duration::from_secs(10));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        if config.get_application_name().is_none() {
            config.application_name("adcluster");
        }
        if config.get_hosts().is_empty() {
            return Err(DbError::Config(
                "DATABASE_URL names no host; expected postgres://USER:PASSWORD@HOST:PORT/DBNAME".into(),
            ));
        }
        if config.get_user().is_none() {
            config.user(&self.user);
        }
        Ok(config)
    }

    /// The name of the database the server uses: the URL's when `url` is set (libpq's rule: the
    /// user name when the URL names none), else `dbname`.
    pub fn target_dbname(&self) -> Result<String, DbError> {
        let config = self.pg_config()?;
        Ok(config.get_dbname().or(config.get_user()).unwrap_or(&self.user).to_owned())
    }

    /// A description safe to log: `user@host:port/dbname`, without the password.
    pub fn describe(&self) -> String {
        match self.pg_config() {
            Ok(c) => {
                let host = match c.get_hosts().first() {
                    Some(postgres::config::Host::Tcp(h)) => h.clone(),
                    Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "?".into(),
                };
                let port = c.get_ports().first().copied().unwrap_or(5432);
                format!(
                    "{}@{host}:{port}/{}",
                    c.get_user().unwrap_or("?"),
                    c.get_dbname().or(c.get_user()).unwrap_or("?")
                )
            }
            Err(_) => "<invalid DATABASE_URL>".into(),
        }
    }
}

/// The error of every database operation. `Display` never contains the password.
#[derive(Debug, Clone)]
pub enum DbError {
    /// The configuration cannot work (bad `DATABASE_URL`, bad database name). Fix and restart.
    Config(String),
    /// PostgreSQL cannot be reached or used right now: connection refused or timed out, connection
    /// lost, pool checkout timed out, server shutting down or starting up, too many connections,
    /// authentication refused, database missing. The server answers `503` and retries later.
    Unavailable(String),
    /// PostgreSQL ran the request and refused it (syntax, constraint, permission...).
    /// `code` is the SQLSTATE, e.g. `23505` for a unique violation.
    Query {
        /// The five-character SQLSTATE, when the server sent one.
        code: Option<String>,
        /// The server's message (plus detail), or the client library's.
        message: String,
    },
}

impl DbError {
    /// True when the database as a whole is unusable right now (map to `503 Database
    /// unavailable` with `Retry-After`, and let the monitor notice), as opposed to one query
    /// having failed ([`DbError::Query`], a `4xx`/`500` matter) or a configuration mistake.
    ///
    /// Unavailable: connection refused / reset / timed out; connection closed under us; pool
    /// checkout timeout; SQLSTATE class 08 (connection exception), 57P01 admin_shutdown,
    /// 57P02 crash_shutdown, 57P03 cannot_connect_now, 53300 too_many_connections,
    /// 3D000 invalid_catalog_name (database dropped or not created yet), class 28 (authentication
    /// refused: a configuration problem, but from a client's side the database is just not
    /// usable; the log says which), and 57014 query_canceled (a statement past
    /// `DB_STATEMENT_TIMEOUT_MS`: PostgreSQL is up but this request cannot be served now, so
    /// `503` as for a busy pool, which `db::is_busy_pool` tells from an outage), and so are
    /// 40P01 deadlock_detected, 40001 serialization_failure and 55P03 lock_not_available (a
    /// transaction PostgreSQL gave up on for another's sake: worth retrying, not a `500`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }

    /// The SQLSTATE of a [`DbError::Query`], e.g. `Some("23505")`.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Query { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True for SQLSTATE 23505 unique_violation (e.g. email already registered → `409`).
    pub fn is_unique_violation(&self) -> bool {
        self.code() == Some(SqlState::UNIQUE_VIOLATION.code())
    }

    /// True for SQLSTATE 23503 foreign_key_violation (e.g. a member added to a team whose user
    /// was deleted meanwhile → `404`).
    pub fn is_foreign_key_violation(&self) -> bool {
        self.code() == Some(SqlState::FOREIGN_KEY_VIOLATION.code())
    }

    /// The error for a failed pool checkout: always "unavailable" (the pool could not produce a
    /// healthy connection within the checkout timeout).
    pub fn from_pool(e: impl fmt::Display) -> DbError {
        DbError::Unavailable(format!("no database connection available: {e}"))
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Config(m) => write!(f, "database configuration error: {m}"),
            DbError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            DbError::Query { code: Some(code), message } => write!(f, "database error {code}: {message}"),
            DbError::Query { code: None, message } => write!(f, "database error: {message}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<r2d2::Error> for DbError {
    fn from(e: r2d2::Error) -> DbError {
        DbError::from_pool(e)
    }
}

impl From<super::gate::CheckoutError> for DbError {
    fn from(e: super::gate::CheckoutError) -> DbError {
        DbError::from_pool(e)
    }
}

/// The start of the error for a statement cancelled by `statement_timeout`: how
/// `db::is_busy_pool` tells it (PostgreSQL up, this query too slow) from an outage.
pub const STATEMENT_TIMEOUT_WORDING: &str = "a statement ran past DB_STATEMENT_TIMEOUT_MS";

/// The start of the error for a transaction PostgreSQL cancelled to resolve a conflict with
/// another session (deadlock, serialization failure, lock not available): PostgreSQL is up and
/// the same request would likely succeed a moment later, so `503` like a busy pool.
pub const CONFLICT_WORDING: &str = "the transaction lost a conflict with another session; try again";

/// SQLSTATEs that mean "the database is not usable now", not "this statement is wrong".
fn unavailable_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection_exception and subclasses
        || c.starts_with("28") // invalid_authorization_specification, invalid_password
        || c == SqlState::ADMIN_SHUTDOWN.code()
        || c == SqlState::CRASH_SHUTDOWN.code()
        || c == SqlState::CANNOT_CONNECT_NOW.code()
        || c == SqlState::TOO_MANY_CONNECTIONS.code()
        || c == SqlState::INVALID_CATALOG_NAME.code()
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        // postgres::Error's Display is only its kind ("error connecting to server"); the cause
        // (the OS error, the server's message) is in `source()`. None of them holds the password.
        let mut message = e.to_string();
        if let Some(db) = e.as_db_error() {
            message = db.message().to_owned();
            if let Some(detail) = db.detail() {
                message.push_str(" (");
                message.push_str(detail);
                message.push(')');
            }
            let code = db.code();
            if code == &SqlState::QUERY_CANCELED {
                // Our statement timeout (or an administrator's `pg_cancel_backend`): PostgreSQL is
                // up, this query waited or ran too long. A 503 like a busy pool, not an outage.
                return DbError::Unavailable(format!("{STATEMENT_TIMEOUT_WORDING} ({message}) [57014]"));
            }
            if [SqlState::T_R_DEADLOCK_DETECTED, SqlState::T_R_SERIALIZATION_FAILURE, SqlState::LOCK_NOT_AVAILABLE]
                .contains(code)
            {
                return DbError::Unavailable(format!("{CONFLICT_WORDING} ({message}) [{}]", code.code()));
            }
            if unavailable_state(code) {
                return DbError::Unavailable(format!("{} [{}]", message, code.code()));
            }
            return DbError::Query { code: Some(code.code().to_owned()), message };
        }
        // postgres::Error does not expose its kind; its Display is exactly the kind's text.
        // Connecting (refused, unreachable, timed out), I/O on a live connection (reset), a closed
        // connection, the connect timeout, TLS and authentication failures without a SQLSTATE
        // (e.g. the server wants a password and none is configured) all mean "out of reach".
        const OUT_OF_REACH: &[&str] = &[
            "error connecting to server",
            "error communicating with the server",
            "connection closed",
            "timeout waiting for server",
            "error performing TLS handshake",
            "authentication error",
        ];
        let io_cause = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        let out_of_reach = e.is_closed() || io_cause.is_some() || OUT_OF_REACH.contains(&&*message);
        if let Some(cause) = e.source() {
            message = format!("{message}: {cause}");
        }
        if out_of_reach {
            return DbError::Unavailable(message);
        }
        DbError::Query { code: None, message }
    }
}

/// `name` as a double-quoted SQL identifier: any `"` inside is doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the configured database when it does not exist.
///
/// Connects with the same credentials to the maintenance database `postgres` (or `template1`
/// when `postgres` does not exist), checks `pg_database` with a parameterised query, and runs
/// `CREATE DATABASE "<name>"` (identifier quoted) only when missing. A concurrent creator winning
/// the race (SQLSTATE 42P04 duplicate_database) counts as success. PostgreSQL being down gives an
/// [`DbError::is_unavailable`] error; the caller starts anyway and retries from the monitor.
pub fn ensure_database(cfg: &DbConfig) -> Result<(), DbError> {
    let name = cfg.target_dbname()?;
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        return Err(DbError::Config(format!(
            "database name must be 1 to {MAX_IDENTIFIER_BYTES} bytes without NUL; got {} bytes",
            name.len()
        )));
    }
    let mut admin = connect_maintenance(cfg)?;
    let exists = admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])?.is_some();
    if exists {
        return Ok(());
    }
    match admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))) {
        Ok(()) => Ok(()),
        // Someone else created it between our check and our CREATE. PostgreSQL reports this as
        // 42P04 duplicate_database, or, when both CREATEs run at the same moment, as 23505
        // unique_violation on pg_database's name index.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops the configured database (`restore` undoing the database it created for a restore that
/// failed). Refused by PostgreSQL while anyone is connected to it: nothing is forced.
pub fn drop_database(cfg: &DbConfig) -> Result<(), DbError> {
    let name = cfg.target_dbname()?;
    let mut admin = connect_maintenance(cfg)?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(&name)))?;
    Ok(())
}

/// A connection to `postgres`, or to `template1` when `postgres` has been dropped.
fn connect_maintenance(cfg: &DbConfig) -> Result<postgres::Client, DbError> {
    let mut config = cfg.pg_config()?;
    config.dbname("postgres");
    match config.connect(NoTls) {
        Ok(c) => Ok(c),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            config.dbname("template1");
            Ok(config.connect(NoTls)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Builds the pool without connecting: it never blocks and never fails because PostgreSQL is
/// down. Connections are opened on demand (by r2d2's own small helper thread pool) up to
/// `pool_size`; checkouts are served in arrival order (`gate.rs`); a checkout that cannot get a
/// healthy connection within `checkout_timeout` fails with an [`DbError::is_unavailable`] error
/// (convert with `DbError::from` / `?`).
pub fn build_pool(cfg: &DbConfig) -> Result<DbPool, DbError> {
    let epoch = super::stmt::SchemaEpoch::default();
    let mut pg = cfg.pg_config()?;
    if !cfg.statement_timeout.is_zero() {
        // A start-up option of the pooled connections only (not of migrations, the monitor's probe,
        // the cluster listener or the GUI, which have their own bounds): no round trip. An
        // `options` of `DATABASE_URL` is kept, ours after it.
        let ours = format!("-c statement_timeout={}", cfg.statement_timeout.as_millis());
        let options = match pg.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        pg.options(&options);
    }
    let manager = Manager(PostgresConnectionManager::new(pg, NoTls), epoch.clone());
    let pool = r2d2::Pool::builder()
        .max_size(cfg.pool_size.max(1))
        // No connection at start: start-up must not wait for (or fail on) the database.
        .min_idle(Some(0))
        .connection_timeout(cfg.checkout_timeout)
        // Health check on checkout (an empty query, one round trip), skipped by `Manager` for a
        // connection returned healthy within the last second. Without it, after PostgreSQL restarts every idle pooled
        // connection is dead, and each one would fail one request before r2d2 notices; with it,
        // a dead connection is dropped and replaced inside the checkout, and when the server is
        // still down the checkout fails as "unavailable" instead of handing out a corpse. The
        // TCP user timeout and keepalives from `pg_config` bound how long the check can hang on
        // a vanished peer.
        .test_on_check_out(true)
        // Recycle idle connections after 10 minutes and all connections after 30, so that the
        // pool follows a failover or a restarted server without keeping stale sessions around.
        .idle_timeout(Some(Duration::from_secs(600)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        .build_unchecked(manager);
    Ok(super::gate::FairPool::new(pool, cfg.checkout_timeout, epoch))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;

    /// Settings for the test server: the `DB_*` environment variables when set, else
    /// `127.0.0.1:5432`, user `postgres`, no password.
    pub(crate) fn test_config(dbname: &str) -> DbConfig {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        DbConfig {
            host: env("DB_HOST", "127.0.0.1"),
            port: env("DB_PORT", "5432").parse().expect("DB_PORT"),
            dbname: dbname.to_owned(),
            user: env("DB_USER", "postgres"),
            password: env("DB_PASSWORD", ""),
            url: None,
            pool_size: 4,
            checkout_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }

    /// A uniquely named database, dropped (`WITH (FORCE)`) when this guard goes out of scope,
    /// even when the test panics.
    pub(crate) struct TestDb {
        /// Settings pointing at the test database.
        pub(crate) cfg: DbConfig,
    }

    impl TestDb {
        /// A fresh name; the database is created by [`ensure_database`] (tested here) or by the
        /// caller.
        pub(crate) fn new(tag: &str) -> TestDb {
            let mut r = [0u8; 6];
            getrandom::fill(&mut r).unwrap();
            let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let name = format!("adc_test_{tag}_{}_{suffix}", std::process::id());
            TestDb { cfg: test_config(&name) }
        }

        /// Creates the database and returns a client connected to it.
        pub(crate) fn create_and_connect(&self) -> postgres::Client {
            ensure_database(&self.cfg).expect("ensure_database");
            self.cfg.pg_config().unwrap().connect(NoTls).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if let Ok(mut admin) = connect_maintenance(&self.cfg) {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&self.cfg.dbname)));
            }
        }
    }

    fn db_exists(cfg: &DbConfig, name: &str) -> bool {
        connect_maintenance(cfg)
            .unwrap()
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .unwrap()
            .is_some()
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("x\"; DROP TABLE y; --"), "\"x\"\"; DROP TABLE y; --\"");
    }

    #[test]
    fn ensure_database_creates_once_and_tolerates_repeats() {
        let db = TestDb::new("ensure");
        assert!(!db_exists(&db.cfg, &db.cfg.dbname));
        ensure_database(&db.cfg).unwrap();
        assert!(db_exists(&db.cfg, &db.cfg.dbname));
        ensure_database(&db.cfg).unwrap();
        let mut c = db.cfg.pg_config().unwrap().connect(NoTls).unwrap();
        let row = c.query_one("SELECT current_database()", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), db.cfg.dbname);
    }

    #[test]
    fn ensure_database_quotes_odd_names() {
        let mut db = TestDb::new("q");
        db.cfg.dbname = format!("{}\"Mixed Case", db.cfg.dbname);
        ensure_database(&db.cfg).unwrap();
        assert!(db_exists(&db.cfg, &db.cfg.dbname));
    }

    #[test]
    fn ensure_database_concurrent_creators_all_succeed() {
        let db = TestDb::new("race");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let cfg = db.cfg.clone();
                std::thread::spawn(move || ensure_database(&cfg))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert!(db_exists(&db.cfg, &db.cfg.dbname));
    }

    #[test]
    fn ensure_database_with_url() {
        let db = TestDb::new("url");
        let c = &db.cfg;
        let mut cfg = DbConfig {
            url: Some(format!("postgres://{}@{}:{}/{}", c.user, c.host, c.port, c.dbname)),
            dbname: "ignored_when_url_is_set".into(),
            ..c.clone()
        };
        if !c.password.is_empty() {
            cfg.url = Some(format!(
                "host={} port={} user={} password={} dbname={}",
                c.host, c.port, c.user, c.password, c.dbname
            ));
        }
        assert_eq!(cfg.target_dbname().unwrap(), c.dbname);
        ensure_database(&cfg).unwrap();
        assert!(db_exists(c, &c.dbname));
    }

    #[test]
    fn too_long_database_name_is_a_config_error() {
        let cfg = test_config(&"x".repeat(64));
        let err = ensure_database(&cfg).unwrap_err();
        assert!(matches!(err, DbError::Config(_)), "{err}");
    }

    #[test]
    fn pool_against_closed_port_fails_fast_as_unavailable() {
        let cfg = DbConfig {
            host: "127.0.0.1".into(),
            port: 1,
            password: "hunter2-very-secret".into(),
            checkout_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            ..DbConfig::default()
        };
        let start = Instant::now();
        let pool = build_pool(&cfg).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "build_pool blocked");
        let start = Instant::now();
        let err = DbError::from(pool.get().err().expect("checkout must fail"));
        let took = start.elapsed();
        println!("checkout against a closed port failed after {took:?}: {err}");
        assert!(took < Duration::from_secs(10));
        assert!(err.is_unavailable(), "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let secret = "s3cr3t-Pa55word";
        let cfg = DbConfig {
            url: Some(format!("postgres://postgres:{secret}@127.0.0.1:1/somedb")),
            checkout_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(1),
            ..DbConfig::default()
        };
        assert!(!format!("{cfg:?}").contains(secret));
        assert!(!cfg.describe().contains(secret));
        assert_eq!(cfg.describe(), "postgres@127.0.0.1:1/somedb");

        let err = ensure_database(&cfg).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");

        let pool = build_pool(&cfg).unwrap();
        let err = DbError::from(pool.get().err().expect("checkout must fail"));
        assert!(err.is_unavailable());
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret));

        // Unparsable URLs: the message must not echo the input.
        for url in [
            format!("postgres://u:{secret}@host:notaport/db"),
            format!("postgres://u:{secret}@[::1/db"),
            format!("host=h password='{secret}"),
            format!("host=h password={secret} bogus"),
        ] {
            let cfg = DbConfig { url: Some(url.clone()), ..DbConfig::default() };
            // Some of these parse; then there is no message to check.
            if let Err(err) = cfg.pg_config() {
                assert!(matches!(err, DbError::Config(_)));
                assert!(!err.to_string().contains(secret), "{err}");
                assert!(!format!("{err:?}").contains(secret), "{err:?}");
            }
        }
    }

    #[test]
    fn wrong_password_is_unavailable_and_not_echoed() {
        // With trust auth the server ignores passwords; this only checks the classification of
        // a missing database (3D000), which also covers "the database was dropped".
        let cfg = test_config("adc_test_surely_missing_database_xyz");
        let err = DbError::from(cfg.pg_config().unwrap().connect(NoTls).err().expect("connect must fail"));
        assert!(err.is_unavailable(), "{err}");
        assert!(err.to_string().contains("3D000"), "{err}");
    }

    #[test]
    fn pool_serves_and_query_errors_are_not_unavailable() {
        let db = TestDb::new("pool");
        ensure_database(&db.cfg).unwrap();
        let pool = build_pool(&db.cfg).unwrap();
        let mut conn = pool.get().unwrap();
        let one: i32 = conn.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
        let err = DbError::from(conn.batch_execute("SELEC oops").unwrap_err());
        assert!(!err.is_unavailable());
        assert_eq!(err.code(), Some("42601"));
        let err = DbError::from(conn.query("SELECT 1/0", &[]).unwrap_err());
        assert_eq!(err.code(), Some("22012"));
        assert!(!err.is_unavailable());
    }

    #[test]
    fn a_deadlock_or_a_lock_not_free_is_a_busy_database_not_a_failed_query() {
        let db = TestDb::new("deadlock");
        let mut a = db.create_and_connect();
        a.batch_execute("CREATE TABLE t1 (x int); CREATE TABLE t2 (x int)").unwrap();
        let mut b = db.cfg.pg_config().unwrap().connect(NoTls).unwrap();
        // a holds t1 and wants t2; b holds t2 and wants t1: PostgreSQL cancels one of them.
        a.batch_execute("BEGIN; LOCK TABLE t1").unwrap();
        b.batch_execute("BEGIN; LOCK TABLE t2").unwrap();
        let other = std::thread::spawn(move || {
            let r = b.batch_execute("LOCK TABLE t1").map_err(DbError::from);
            let _ = b.batch_execute("ROLLBACK");
            r
        });
        std::thread::sleep(Duration::from_millis(200));
        let mine = a.batch_execute("LOCK TABLE t2").map_err(DbError::from);
        let _ = a.batch_execute("ROLLBACK");
        let theirs = other.join().unwrap();
        let err = mine.err().or(theirs.err()).expect("one side is the deadlock's victim");
        assert!(err.is_unavailable() && crate::db::is_busy_pool(&err), "{err}");
        assert!(err.to_string().contains("[40P01]"), "{err}");
        // NOWAIT on a taken lock: 55P03, the same.
        a.batch_execute("BEGIN; LOCK TABLE t1").unwrap();
        let mut c = db.cfg.pg_config().unwrap().connect(NoTls).unwrap();
        let err = DbError::from(c.batch_execute("BEGIN; LOCK TABLE t1 NOWAIT").unwrap_err());
        assert!(err.is_unavailable() && crate::db::is_busy_pool(&err), "{err}");
        assert!(err.to_string().contains("[55P03]"), "{err}");
        // A statement that is wrong stays a failed query.
        let err = DbError::from(a.batch_execute("SELECT * FROM missing_table").unwrap_err());
        assert!(!err.is_unavailable() && err.code() == Some("42P01"), "{err}");
    }

    #[test]
    fn a_statement_past_the_timeout_is_a_busy_database_and_the_connection_lives_on() {
        let db = TestDb::new("stmt_to");
        let mut admin = db.create_and_connect();
        admin.batch_execute("CREATE TABLE t (x int)").unwrap();
        let mut cfg = db.cfg.clone();
        cfg.pool_size = 1;
        cfg.statement_timeout = Duration::from_millis(200);
        // A `DATABASE_URL` with options of its own keeps them.
        cfg.url = Some(format!(
            "postgres://{}@{}:{}/{}?options=-c%20work_mem%3D5MB",
            cfg.user, cfg.host, cfg.port, cfg.dbname
        ));
        let pool = build_pool(&cfg).unwrap();
        let mut conn = pool.get().unwrap();
        let row = conn.query_one("SELECT current_setting('statement_timeout'), current_setting('work_mem')", &[]);
        let (timeout, work_mem): (String, String) = row.map(|r| (r.get(0), r.get(1))).unwrap();
        assert_eq!((timeout.as_str(), work_mem.as_str()), ("200ms", "5MB"));
        // Blocked behind a lock held from outside: cut off, not left waiting.
        let mut tx = admin.transaction().unwrap();
        tx.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE").unwrap();
        let err = DbError::from(conn.query("SELECT count(*) FROM t", &[]).unwrap_err());
        assert!(err.is_unavailable() && crate::db::is_busy_pool(&err), "{err}");
        assert!(err.to_string().contains("[57014]"), "{err}");
        tx.rollback().unwrap();
        // The same pooled connection serves the next query.
        let n: i64 = conn.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
        assert_eq!(n, 0);
        drop(conn);
        // Zero: no limit (PostgreSQL's default of 0 stays).
        cfg.statement_timeout = Duration::ZERO;
        cfg.url = None;
        let pool = build_pool(&cfg).unwrap();
        let timeout: String = pool.get().unwrap().query_one("SHOW statement_timeout", &[]).unwrap().get(0);
        assert_eq!(timeout, "0");
    }

    #[test]
    fn admin_shutdown_of_a_pooled_connection_is_unavailable() {
        let db = TestDb::new("kill");
        let mut admin = db.create_and_connect();
        let pool = build_pool(&db.cfg).unwrap();
        let mut conn = pool.get().unwrap();
        let pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
        let err = DbError::from(conn.query("SELECT 1", &[]).unwrap_err());
        assert!(err.is_unavailable(), "{err}");
        drop(conn);
        // The pool replaces the dead connection on the next checkout.
        let mut conn = pool.get().unwrap();
        let one: i32 = conn.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
    }

    #[test]
    fn an_idle_connection_killed_under_the_pool_is_replaced_at_checkout() {
        let db = TestDb::new("idle");
        let mut admin = db.create_and_connect();
        let mut cfg = db.cfg.clone();
        cfg.pool_size = 1;
        let pool = build_pool(&cfg).unwrap();
        let pid: i32 = pool.get().unwrap().query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        // Returned healthy just now: the next checkout skips the check and gets the same one.
        let again: i32 = pool.get().unwrap().query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        assert_eq!(again, pid);
        // Killed while idle for longer than RECENTLY_HEALTHY: the checkout notices and reconnects.
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
        std::thread::sleep(RECENTLY_HEALTHY + Duration::from_millis(200));
        let fresh: i32 = pool.get().unwrap().query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        assert_ne!(fresh, pid);
    }
}
