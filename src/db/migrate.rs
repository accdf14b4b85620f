//! Schema migrations: the numbered SQL files of `sql/`, embedded in the binary and applied in order.
//!
//! [`migrate`] records each applied file in `schema_migrations` and applies only the missing ones,
//! each in its own transaction, under a transaction-level advisory lock, so that it is idempotent
//! and two servers (or `adcluster migrate` and a server) starting at once do not race. It runs at
//! start, from `adcluster migrate`, and when the monitor sees the database come back.
//!
//! This module must never: apply a migration twice or out of order; leave a half-applied migration
//! behind (a failing file rolls back with its record); or read SQL from disk at run time (the files
//! are compiled in, so the binary and its schema cannot drift apart). Migration files must not
//! contain `BEGIN`/`COMMIT`, and a released file is never edited: add a new number instead.

use super::pool::DbError;

/// Every migration, in the order they are applied: `(version, name, sql)`. Versions are unique
/// and increasing; the file `sql/NNNN_name.sql` has version `NNNN`.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "accounts", include_str!("../../sql/0001_accounts.sql")),
    (2, "uploads", include_str!("../../sql/0002_uploads.sql")),
    (3, "spool", include_str!("../../sql/0003_spool.sql")),
    (14, "cluster", include_str!("../../sql/0014_cluster.sql")),
];

/// Key of the advisory lock that serialises migrators across processes ("adcmigr" in ASCII).
/// Any fixed number works, as long as nothing else in the database uses it.
pub const MIGRATION_LOCK_KEY: i64 = 0x0061_6463_6d69_6772;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies every migration of [`MIGRATIONS`] that `schema_migrations` does not list yet, and
/// returns the versions applied by this call (empty when the schema was up to date).
///
/// Each migration runs in its own transaction, which first takes
/// `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)` (released at commit or rollback), creates
/// `schema_migrations` if needed, checks the version again under the lock, runs the file with
/// `batch_execute`, and records it. A failing file is rolled back whole and stops the run:
/// later files are not attempted. Versions recorded in the database but unknown to this binary
/// (a newer binary ran before) are left alone.
pub fn migrate(client: &mut postgres::Client) -> Result<Vec<i32>, DbError> {
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
        tx.batch_execute(CREATE_TABLE)?;
        let done = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&version])?.is_some();
        if done {
            tx.rollback()?;
            continue;
        }
        tx.batch_execute(sql).map_err(|e| annotate(e, version, name))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])?;
        tx.commit()?;
        applied.push(version);
    }
    Ok(applied)
}

/// Names the failing migration in a query error, keeping unavailability as it is.
fn annotate(e: postgres::Error, version: i32, name: &str) -> DbError {
    match DbError::from(e) {
        DbError::Query { code, message } => {
            DbError::Query { code, message: format!("migration {version:04}_{name} failed: {message}") }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::pool::tests::TestDb;

    #[test]
    fn migrations_are_ordered_and_unique() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(MIGRATIONS.iter().all(|(v, n, sql)| *v > 0 && !n.is_empty() && !sql.trim().is_empty()));
    }

    #[test]
    fn migrate_twice_applies_once() {
        let db = TestDb::new("migrate");
        let mut client = db.create_and_connect();
        let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(migrate(&mut client).unwrap(), all);
        assert_eq!(migrate(&mut client).unwrap(), Vec::<i32>::new());
        let rows = client.query("SELECT version, name FROM schema_migrations ORDER BY version", &[]).unwrap();
        let recorded: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let expected: Vec<(i32, String)> = MIGRATIONS.iter().map(|(v, n, _)| (*v, n.to_string())).collect();
        assert_eq!(recorded, expected);
        for table in ["users", "teams", "team_members"] {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_name = $1",
                    &[&table],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "{table}");
        }
    }

    #[test]
    fn concurrent_migrators_apply_each_version_once() {
        let db = TestDb::new("migrace");
        drop(db.create_and_connect());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let cfg = db.cfg.clone();
                std::thread::spawn(move || {
                    let mut c = cfg.pg_config().unwrap().connect(postgres::NoTls).unwrap();
                    migrate(&mut c).unwrap()
                })
            })
            .collect();
        let mut total: Vec<i32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        total.sort();
        let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(total, all);
    }

    #[test]
    fn email_is_unique_case_insensitively() {
        let db = TestDb::new("email");
        let mut client = db.create_and_connect();
        migrate(&mut client).unwrap();
        let insert = "INSERT INTO users (email, hashed_password) VALUES ($1, 'x')";
        client.execute(insert, &[&"A@x.io"]).unwrap();
        let err = DbError::from(client.execute(insert, &[&"a@X.io"]).unwrap_err());
        assert_eq!(err.code(), Some("23505"), "{err}");
        assert!(err.is_unique_violation());
        assert!(!err.is_unavailable());
        client.execute(insert, &[&"b@x.io"]).unwrap();
    }

    #[test]
    fn schema_defaults_and_cascades() {
        let db = TestDb::new("schema");
        let mut client = db.create_and_connect();
        migrate(&mut client).unwrap();
        let row = client
            .query_one(
                "INSERT INTO users (email, hashed_password) VALUES ('u@x.io', 'h') \
                 RETURNING id, is_active, is_superuser, full_name IS NULL",
                &[],
            )
            .unwrap();
        let uid: i64 = row.get(0);
        assert!(row.get::<_, bool>(1));
        assert!(!row.get::<_, bool>(2));
        assert!(row.get::<_, bool>(3));
        let tid: i64 = client.query_one("INSERT INTO teams (name) VALUES ('t') RETURNING id", &[]).unwrap().get(0);
        client.execute("INSERT INTO team_members (team_id, user_id) VALUES ($1, $2)", &[&tid, &uid]).unwrap();
        let err = DbError::from(client.execute("INSERT INTO teams (name) VALUES ('t')", &[]).unwrap_err());
        assert!(err.is_unique_violation());
        client.execute("DELETE FROM users WHERE id = $1", &[&uid]).unwrap();
        let n: i64 = client.query_one("SELECT count(*) FROM team_members", &[]).unwrap().get(0);
        assert_eq!(n, 0);
    }
}
