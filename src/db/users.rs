//! Queries on `users`. Every query is parameterised; each runs in one round trip
//! (`query_typed`: no separate prepare).
//! Must never: return the password hash to anything but the login check (`User::to_json`
//! leaves it out).

use std::time::SystemTime;

use postgres::types::{ToSql, Type};
use postgres::Row;
use serde_json::{json, Value};

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

const COLS: &str = "id, email, hashed_password, full_name, is_active, is_superuser, created_at";

fn rows(c: &mut postgres::Client, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<User>, DbError> {
    Ok(c.query_typed(sql, params)?.iter().map(User::from_row).collect())
}

/// Insert a user. A duplicate email (in any case) is `DbError::is_unique_violation`.
pub fn insert(
    c: &mut postgres::Client,
    email: &str,
    hash: &str,
    full_name: Option<&str>,
    superuser: bool,
) -> Result<User, DbError> {
    let sql = format!(
        "INSERT INTO users (email, hashed_password, full_name, is_superuser) VALUES ($1, $2, $3, $4) RETURNING {COLS}"
    );
    let mut out = rows(
        c,
        &sql,
        &[(&email, Type::TEXT), (&hash, Type::TEXT), (&full_name, Type::TEXT), (&superuser, Type::BOOL)],
    )?;
    out.pop().ok_or_else(|| DbError::Query { code: None, message: "INSERT returned no row".into() })
}

pub fn by_id(c: &mut postgres::Client, id: i64) -> Result<Option<User>, DbError> {
    Ok(rows(c, &format!("SELECT {COLS} FROM users WHERE id = $1"), &[(&id, Type::INT8)])?.pop())
}

/// Several users by id in one round trip (the caller and the user asked for, say).
pub fn by_ids(c: &mut postgres::Client, ids: &[i64]) -> Result<Vec<User>, DbError> {
    rows(c, &format!("SELECT {COLS} FROM users WHERE id = ANY($1)"), &[(&ids, Type::INT8_ARRAY)])
}

/// By email, case-insensitively (the unique index is on `lower(email)`).
pub fn by_email(c: &mut postgres::Client, email: &str) -> Result<Option<User>, DbError> {
    Ok(rows(c, &format!("SELECT {COLS} FROM users WHERE lower(email) = lower($1)"), &[(&email, Type::TEXT)])?.pop())
}

/// A page of users, ordered by id.
pub fn list(c: &mut postgres::Client, skip: i64, limit: i64) -> Result<Vec<User>, DbError> {
    rows(
        c,
        &format!("SELECT {COLS} FROM users ORDER BY id OFFSET $1 LIMIT $2"),
        &[(&skip, Type::INT8), (&limit, Type::INT8)],
    )
}
