//! The statements the server runs often, prepared once per pooled connection and reused.
//!
//! A query sent as text (`query_typed`, the simple protocol) is parsed and planned by PostgreSQL
//! every time; a prepared one only binds and executes. [`Stmt`] lists, at compile time, every
//! statement worth preparing (the SQL text stays beside its row mapping in `users.rs` and
//! `files.rs`); [`StmtCache`] is the per-connection array of prepared ones, filled lazily, kept in
//! the pool's connection wrapper (`pool::Tracked`), so it lives and dies with the connection: a
//! replaced connection starts empty.
//!
//! Invalidation: `FairPool::schema_changed` (called when a migration is applied) and a statement
//! PostgreSQL calls stale (a cached plan that no longer fits the schema, e.g. after an `adcluster
//! migrate` run by another process) bump the pool's epoch ([`SchemaEpoch`]); a cache from an older epoch drops its statements before
//! the next use (which closes them on the server). A statement the server calls stale is
//! re-prepared and the query run once more: those errors come before anything is executed.
//!
//! Size: at most [`Stmt::COUNT`] statements per connection, so `pool_size × COUNT` on the server.
//! Must never: prepare a statement built at run time (the cache would grow without bound and the
//! SQL would not be reviewed); hold a statement across connections (a `Statement` belongs to the
//! connection that prepared it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row, Statement};

use super::{files, users, DbError};

/// Every statement prepared per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stmt {
    UserInsert,
    UserById,
    UsersByIds,
    UserByEmail,
    UsersList,
    UsersPageForCaller,
    FileInsert,
    FilesList,
    FileByName,
    FileDelete,
}

impl Stmt {
    /// How many there are: the size of every connection's cache.
    pub const COUNT: usize = 10;
    /// All of them, in cache-slot order.
    pub const ALL: [Stmt; Stmt::COUNT] = [
        Stmt::UserInsert,
        Stmt::UserById,
        Stmt::UsersByIds,
        Stmt::UserByEmail,
        Stmt::UsersList,
        Stmt::UsersPageForCaller,
        Stmt::FileInsert,
        Stmt::FilesList,
        Stmt::FileByName,
        Stmt::FileDelete,
    ];

    /// The SQL text.
    pub fn sql(self) -> &'static str {
        match self {
            Stmt::UserInsert => users::INSERT,
            Stmt::UserById => users::BY_ID,
            Stmt::UsersByIds => users::BY_IDS,
            Stmt::UserByEmail => users::BY_EMAIL,
            Stmt::UsersList => users::LIST,
            Stmt::UsersPageForCaller => users::PAGE_FOR_CALLER,
            Stmt::FileInsert => files::INSERT,
            Stmt::FilesList => files::LIST,
            Stmt::FileByName => files::BY_FILENAME,
            Stmt::FileDelete => files::DELETE,
        }
    }

    /// The parameter types, fixed at prepare time (as `query_typed` fixed them before).
    pub fn types(self) -> &'static [Type] {
        match self {
            Stmt::UserInsert => &[Type::TEXT, Type::TEXT, Type::TEXT, Type::BOOL],
            Stmt::UserById => &[Type::INT8],
            Stmt::UsersByIds => &[Type::INT8_ARRAY],
            Stmt::UserByEmail => &[Type::TEXT],
            Stmt::UsersList => &[Type::INT8, Type::INT8],
            Stmt::UsersPageForCaller => &[Type::INT8, Type::INT8, Type::INT8, Type::TEXT],
            Stmt::FileInsert => {
                &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::INT8, Type::TIMESTAMPTZ]
            }
            Stmt::FilesList => &[Type::TEXT, Type::INT8],
            Stmt::FileByName | Stmt::FileDelete => &[Type::TEXT],
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// The schema epoch of one pool: bumped whenever the schema may have changed under its prepared
/// statements. Shared by the pool ([`super::gate::FairPool::schema_changed`]) and every cache of
/// its connections.
pub type SchemaEpoch = Arc<AtomicU64>;

/// One connection's prepared statements, by [`Stmt`] slot, from one schema epoch.
pub struct StmtCache {
    source: SchemaEpoch,
    epoch: u64,
    slots: [Option<Statement>; Stmt::COUNT],
}

impl StmtCache {
    /// An empty cache following the pool's `source` epoch.
    pub fn new(source: SchemaEpoch) -> StmtCache {
        let epoch = source.load(Ordering::Acquire);
        StmtCache { source, epoch, slots: Default::default() }
    }

    /// The schema changed (a migration was applied, or the server called a plan stale): every
    /// cache of the pool drops its statements before its next use.
    pub fn schema_changed(&self) {
        self.source.fetch_add(1, Ordering::AcqRel);
    }

    /// How many statements are prepared right now.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when nothing is prepared.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every statement (they are closed on the server with the connection's next message).
    pub fn clear(&mut self) {
        self.slots = Default::default();
    }

    /// The statement `s` on `client`, prepared now if this cache does not hold it (or holds it
    /// from an older schema epoch).
    fn get(&mut self, client: &mut postgres::Client, s: Stmt) -> Result<Statement, postgres::Error> {
        let now = self.source.load(Ordering::Acquire);
        if self.epoch != now {
            self.clear();
            self.epoch = now;
        }
        let slot = &mut self.slots[s.slot()];
        if let Some(st) = slot {
            return Ok(st.clone());
        }
        let st = client.prepare_typed(s.sql(), s.types())?;
        *slot = Some(st.clone());
        Ok(st)
    }
}

/// Something a [`Stmt`] can run on: a pooled connection (cached statements) or a plain client or
/// transaction (the CLI, tests: prepared for the one call).
pub trait Prepared {
    /// What the statement runs on.
    type Client: GenericClient;
    /// The client and the statement `s` prepared on it.
    fn prepared(&mut self, s: Stmt) -> Result<(&mut Self::Client, Statement), postgres::Error>;
    /// The server called a cached statement stale: forget this pool's statements (every
    /// connection's, as the schema changed for all of them).
    fn forget(&mut self) {}
}

impl Prepared for super::pool::Tracked {
    type Client = postgres::Client;
    fn prepared(&mut self, s: Stmt) -> Result<(&mut postgres::Client, Statement), postgres::Error> {
        let st = self.stmts.get(&mut self.client, s)?;
        Ok((&mut self.client, st))
    }
    fn forget(&mut self) {
        self.stmts.schema_changed();
        self.stmts.clear();
    }
}

impl Prepared for super::gate::Checkout {
    type Client = postgres::Client;
    fn prepared(&mut self, s: Stmt) -> Result<(&mut postgres::Client, Statement), postgres::Error> {
        (**self).prepared(s)
    }
    fn forget(&mut self) {
        (**self).forget()
    }
}

impl Prepared for postgres::Client {
    type Client = postgres::Client;
    fn prepared(&mut self, s: Stmt) -> Result<(&mut postgres::Client, Statement), postgres::Error> {
        let st = self.prepare_typed(s.sql(), s.types())?;
        Ok((self, st))
    }
}

impl<'a> Prepared for postgres::Transaction<'a> {
    type Client = postgres::Transaction<'a>;
    fn prepared(&mut self, s: Stmt) -> Result<(&mut postgres::Transaction<'a>, Statement), postgres::Error> {
        let st = self.prepare_typed(s.sql(), s.types())?;
        Ok((self, st))
    }
}

/// Errors PostgreSQL raises at bind time for a statement prepared before a schema change
/// ("cached plan must not change result type") or no longer known to the session: nothing was
/// executed, so preparing again and retrying once is safe.
fn is_stale(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            (db.code() == &SqlState::FEATURE_NOT_SUPPORTED && db.message().contains("cached plan"))
                || db.code() == &SqlState::INVALID_SQL_STATEMENT_NAME
        }
        None => false,
    }
}

/// Run `s` with `f` (which gets the client and the statement), re-preparing and retrying once if
/// the statement was stale.
pub fn run<P: Prepared, T>(
    c: &mut P,
    s: Stmt,
    f: impl Fn(&mut P::Client, &Statement) -> Result<T, postgres::Error>,
) -> Result<T, DbError> {
    let (client, st) = c.prepared(s)?;
    match f(client, &st) {
        Err(e) if is_stale(&e) => {
            crate::debug!("prepared statement {s:?} was stale ({e}); preparing it again");
            c.forget();
            let (client, st) = c.prepared(s)?;
            Ok(f(client, &st)?)
        }
        r => Ok(r?),
    }
}

/// The rows of `s` with `params`.
pub fn query<P: Prepared>(c: &mut P, s: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
    run(c, s, |client, st| client.query(st, params))
}

/// The number of rows `s` changed.
pub fn execute<P: Prepared>(c: &mut P, s: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
    run(c, s, |client, st| client.execute(st, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::pool::tests::TestDb;
    use crate::db::pool::{build_pool, ensure_database};
    use std::time::Duration;

    fn migrated_pool(tag: &str, size: u32) -> (TestDb, crate::db::DbPool) {
        let db = TestDb::new(tag);
        ensure_database(&db.cfg).unwrap();
        let mut cfg = db.cfg.clone();
        cfg.pool_size = size;
        let pool = build_pool(&cfg).unwrap();
        crate::db::migrate::migrate(&mut pool.get().unwrap()).unwrap();
        (db, pool)
    }

    /// The statements the session holds on the server, by the simple protocol (which prepares
    /// nothing itself).
    fn server_statements(c: &mut postgres::Client) -> Vec<String> {
        c.simple_query("SELECT statement FROM pg_prepared_statements ORDER BY statement")
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_slots_are_the_enum_order() {
        for (i, s) in Stmt::ALL.iter().enumerate() {
            assert_eq!(s.slot(), i, "{s:?}");
        }
    }

    /// Every statement prepares against the migrated schema, with the types it declares.
    #[test]
    fn every_statement_prepares_against_the_schema() {
        let (_db, pool) = migrated_pool("stmt_all", 1);
        let mut c = pool.get().unwrap();
        for s in Stmt::ALL {
            let (_, st) = c.prepared(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(st.params(), s.types(), "{s:?}");
        }
        assert_eq!(c.stmts.len(), Stmt::COUNT);
    }

    /// A statement is prepared once per connection and reused; the server's session shows it.
    #[test]
    fn statements_are_prepared_once_per_connection_and_reused() {
        let (_db, pool) = migrated_pool("stmt_reuse", 1);
        let mut c = pool.get().unwrap();
        assert!(server_statements(&mut c).is_empty());
        for id in 0..5i64 {
            let rows = query(&mut c, Stmt::UserById, &[&id]).unwrap();
            assert!(rows.is_empty());
        }
        assert_eq!(server_statements(&mut c), [Stmt::UserById.sql()], "one statement prepared for five queries");
        assert_eq!(c.stmts.len(), 1);
        drop(c);
        // Back in the pool and out again: the same connection, still prepared.
        let c = pool.get().unwrap();
        assert_eq!(c.stmts.len(), 1);
    }

    /// A migration (an epoch bump) drops the cache before the next use; the statements are
    /// closed on the server and prepared again.
    #[test]
    fn a_schema_change_drops_the_cache() {
        let (_db, pool) = migrated_pool("stmt_epoch", 1);
        let mut c = pool.get().unwrap();
        query(&mut c, Stmt::UserById, &[&1i64]).unwrap();
        query(&mut c, Stmt::FilesList, &[&None::<&str>, &None::<i64>]).unwrap();
        assert_eq!(c.stmts.len(), 2);
        pool.schema_changed();
        query(&mut c, Stmt::UserById, &[&1i64]).unwrap();
        assert_eq!(c.stmts.len(), 1, "the older statements were dropped");
        // The dropped ones were closed on the server (the Close goes with the next message).
        assert_eq!(server_statements(&mut c), [Stmt::UserById.sql()]);
    }

    /// Another process changes the result type under a prepared statement: the query is
    /// prepared again and answers, instead of failing with "cached plan must not change result
    /// type".
    #[test]
    fn a_statement_made_stale_by_another_session_is_prepared_again() {
        let (db, pool) = migrated_pool("stmt_stale", 1);
        let mut c = pool.get().unwrap();
        let mut other = db.cfg.pg_config().unwrap().connect(postgres::NoTls).unwrap();
        other.execute("INSERT INTO users (email, hashed_password) VALUES ('a@x.io', 'h')", &[]).unwrap();
        let id: i64 = other.query_one("SELECT id FROM users", &[]).unwrap().get(0);
        assert_eq!(crate::db::users::by_id(&mut c, id).unwrap().unwrap().email, "a@x.io");
        // A column type the statement's result depends on changes (text -> varchar).
        other.batch_execute("ALTER TABLE users ALTER COLUMN full_name TYPE varchar(300)").unwrap();
        let u = crate::db::users::by_id(&mut c, id).unwrap().unwrap();
        assert_eq!(u.email, "a@x.io");
    }

    /// A replaced connection (the old one killed) starts with an empty cache and works.
    #[test]
    fn a_replaced_connection_starts_with_no_statements() {
        let (db, pool) = migrated_pool("stmt_replaced", 1);
        let mut admin = db.cfg.pg_config().unwrap().connect(postgres::NoTls).unwrap();
        let mut c = pool.get().unwrap();
        query(&mut c, Stmt::UserById, &[&1i64]).unwrap();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        drop(c);
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
        std::thread::sleep(super::super::pool::RECENTLY_HEALTHY + Duration::from_millis(200));
        let mut c = pool.get().unwrap();
        assert!(c.stmts.is_empty());
        assert!(query(&mut c, Stmt::UserById, &[&1i64]).unwrap().is_empty());
    }
}
