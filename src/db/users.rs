//! Queries on `users`. Every query is parameterised; each is one of the statements prepared once
//! per pooled connection (`stmt.rs`), so it runs in one round trip (bind and execute).
//! Must never: return the password hash to anything but the login check (`User::to_json`
//! leaves it out).

use std::time::SystemTime;

use postgres::types::ToSql;
use postgres::Row;
use serde_json::{json, Value};

use super::stmt::{self, Prepared, Stmt};
use super::DbError;

/// A user row.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub hashed_password: String,
    pub full_name: Option<String>,
    pub is_active: bool,
    pub is_superuser: bool,
    pub created_at: SystemTime,
}

impl User {
    /// The contract's user object: never the hash.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "full_name": self.full_name,
            "is_active": self.is_active,
            "is_superuser": self.is_superuser,
            "created_at": crate::util::time::rfc3339(self.created_at),
        })
    }

    fn from_row(row: &Row) -> User {
        User {
            id: row.get(0),
            email: row.get(1),
            hashed_password: row.get(2),
            full_name: row.get(3),
            is_active: row.get(4),
            is_superuser: row.get(5),
            created_at: row.get(6),
        }
    }
}

/// The columns of [`User::from_row`], in its order.
macro_rules! cols {
    () => {
        "id, email, hashed_password, full_name, is_active, is_superuser, created_at"
    };
}

// The statements of this file, prepared once per pooled connection (`stmt.rs` lists them).
pub(super) const INSERT: &str = concat!(
    "INSERT INTO users (email, hashed_password, full_name, is_superuser) VALUES ($1, $2, $3, $4) RETURNING ",
    cols!()
);
pub(super) const BY_ID: &str = concat!("SELECT ", cols!(), " FROM users WHERE id = $1");
pub(super) const BY_IDS: &str = concat!("SELECT ", cols!(), " FROM users WHERE id = ANY($1)");
pub(super) const BY_EMAIL: &str = concat!("SELECT ", cols!(), " FROM users WHERE lower(email) = lower($1)");
pub(super) const LIST: &str = concat!("SELECT ", cols!(), " FROM users ORDER BY id OFFSET $1 LIMIT $2");

fn rows(c: &mut impl Prepared, s: Stmt, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<User>, DbError> {
    Ok(stmt::query(c, s, params)?.iter().map(User::from_row).collect())
}

/// Insert a user. A duplicate email (in any case) is `DbError::is_unique_violation`.
pub fn insert(
    c: &mut impl Prepared,
    email: &str,
    hash: &str,
    full_name: Option<&str>,
    superuser: bool,
) -> Result<User, DbError> {
    let mut out = rows(c, Stmt::UserInsert, &[&email, &hash, &full_name, &superuser])?;
    out.pop().ok_or_else(|| DbError::Query { code: None, message: "INSERT returned no row".into() })
}

pub fn by_id(c: &mut impl Prepared, id: i64) -> Result<Option<User>, DbError> {
    Ok(rows(c, Stmt::UserById, &[&id])?.pop())
}

/// Several users by id in one round trip (the caller and the user asked for, say).
pub fn by_ids(c: &mut impl Prepared, ids: &[i64]) -> Result<Vec<User>, DbError> {
    rows(c, Stmt::UsersByIds, &[&ids])
}

/// By email, case-insensitively (the unique index is on `lower(email)`).
pub fn by_email(c: &mut impl Prepared, email: &str) -> Result<Option<User>, DbError> {
    Ok(rows(c, Stmt::UserByEmail, &[&email])?.pop())
}

/// A page of users, ordered by id.
pub fn list(c: &mut impl Prepared, skip: i64, limit: i64) -> Result<Vec<User>, DbError> {
    rows(c, Stmt::UsersList, &[&skip, &limit])
}
