//! Queries on `users`. Every query is parameterised; each is one of the statements prepared once
//! per pooled connection (`stmt.rs`), so it runs in one round trip (bind and execute).
//! Must never: return the password hash to anything but the login check (`User::to_json`
//! leaves it out).

use std::time::SystemTime;

use postgres::types::ToSql;
use postgres::Row;
use serde::Serialize;

use crate::util::time::Rfc3339;

use super::stmt::{self, Prepared, Stmt};
use super::DbError;

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The contract's user object: never the hash. Serialises straight from this row (no
    /// intermediate `Value`); its fields are in the order `json!` gave them (alphabetical).
    pub fn to_json(&self) -> UserJson<'_> {
        UserJson {
            created_at: Rfc3339(self.created_at),
            email: &self.email,
            full_name: self.full_name.as_deref(),
            id: self.id,
            is_active: self.is_active,
            is_superuser: self.is_superuser,
        }
    }

    fn from_row(row: &Row) -> User {
        User::from_row_at(row, 0)
    }

    /// The user in the columns [`cols!`] of `row`, starting at column `base`.
    fn from_row_at(row: &Row, base: usize) -> User {
        User {
            id: row.get(base),
            email: row.get(base + 1),
            hashed_password: row.get(base + 2),
            full_name: row.get(base + 3),
            is_active: row.get(base + 4),
            is_superuser: row.get(base + 5),
            created_at: row.get(base + 6),
        }
    }
}

/// A user as the contract shows it ([`User::to_json`]): every field but the hash, borrowed.
#[derive(Debug, Serialize)]
pub struct UserJson<'a> {
    created_at: Rfc3339,
    email: &'a str,
    full_name: Option<&'a str>,
    id: i64,
    is_active: bool,
    is_superuser: bool,
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
/// The caller's `is_active` ($1) and a page of users ($2 skip, $3 limit) in one round trip: no
/// row when the caller does not exist, one row with a NULL user when the page is empty.
pub(super) const PAGE_FOR_CALLER: &str = concat!(
    "SELECT c.ok, u.* FROM (SELECT is_active AND email = $4 AS ok FROM users WHERE id = $1) c \
     LEFT JOIN LATERAL (SELECT ",
    cols!(),
    " FROM users ORDER BY id OFFSET $2 LIMIT $3) u ON true ORDER BY u.id"
);

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

/// What [`page_for_caller`] found.
pub enum CallerPage {
    /// The caller exists and is active: here is the page.
    Page(Vec<User>),
    /// The caller does not exist or is not active (answer 401, and show nothing of the page).
    Refused,
}

/// A page of users, ordered by id, for the token owner `caller`, checking in the same round trip
/// that the caller exists, is active and is still the token's account (its email): the bearer
/// check and the read it guards in one query, with no window between them and no cache to go
/// stale.
pub fn page_for_caller(
    c: &mut impl Prepared,
    caller: &crate::auth::Bearer,
    skip: i64,
    limit: i64,
) -> Result<CallerPage, DbError> {
    let rows = stmt::query(c, Stmt::UsersPageForCaller, &[&caller.id, &skip, &limit, &caller.email])?;
    match rows.first() {
        Some(first) if first.get::<_, bool>(0) => Ok(CallerPage::Page(
            rows.iter().filter(|r| r.get::<_, Option<i64>>(1).is_some()).map(|r| User::from_row_at(r, 1)).collect(),
        )),
        _ => Ok(CallerPage::Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::pool::tests::TestDb;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_json_view_is_the_contract_object_without_the_hash() {
        let mut u = User {
            id: 7,
            email: "a\"b@x.io".into(),
            hashed_password: "$argon2id$secret".into(),
            full_name: Some("Ann".into()),
            is_active: true,
            is_superuser: false,
            created_at: UNIX_EPOCH + Duration::from_secs(1_795_678_653) + Duration::from_micros(42),
        };
        // Byte for byte what the `json!` map it replaced wrote (keys in that map's order).
        assert_eq!(
            serde_json::to_string(&u.to_json()).unwrap(),
            r#"{"created_at":"2026-11-26T07:37:33.000042Z","email":"a\"b@x.io","full_name":"Ann","id":7,"is_active":true,"is_superuser":false}"#
        );
        u.full_name = None;
        let v = serde_json::to_value(u.to_json()).unwrap();
        assert_eq!(v["full_name"], serde_json::Value::Null);
        assert!(v.get("hashed_password").is_none());
        assert_eq!(v.as_object().unwrap().len(), 6);
    }

    #[test]
    fn page_for_caller_checks_the_caller_in_the_same_query() {
        let db = TestDb::new("page_caller");
        let mut c = db.create_and_connect();
        crate::db::migrate::migrate(&mut c).unwrap();
        let ids: Vec<i64> =
            (0..3).map(|i| insert(&mut c, &format!("u{i}@x.io"), "h", None, false).unwrap().id).collect();
        let page = |c: &mut postgres::Client, caller: i64, skip, limit| {
            let email = ids.iter().position(|&i| i == caller).map_or("nobody@x.io".into(), |p| format!("u{p}@x.io"));
            let bearer = crate::auth::Bearer { id: caller, email };
            match page_for_caller(c, &bearer, skip, limit).unwrap() {
                CallerPage::Page(p) => Some(p.iter().map(|u| u.id).collect::<Vec<_>>()),
                CallerPage::Refused => None,
            }
        };
        assert_eq!(page(&mut c, ids[0], 0, 100), Some(ids.clone()));
        assert_eq!(page(&mut c, ids[0], 1, 1), Some(vec![ids[1]]));
        // An empty page for an active caller is an empty page, not a refusal.
        assert_eq!(page(&mut c, ids[0], 10, 100), Some(vec![]));
        // A caller that does not exist, or is inactive, is refused, whatever the page.
        assert_eq!(page(&mut c, 999_999, 0, 100), None);
        c.execute("UPDATE users SET is_active = false WHERE id = $1", &[&ids[2]]).unwrap();
        assert_eq!(page(&mut c, ids[2], 0, 100), None);
        assert_eq!(page(&mut c, ids[2], 10, 100), None);
        // The inactive user is still listed for an active caller.
        assert_eq!(page(&mut c, ids[1], 0, 100), Some(ids.clone()));
        // A token issued to another email (the id was given to a new account after a restore)
        // is refused too.
        let stranger = crate::auth::Bearer { id: ids[0], email: "gone@x.io".into() };
        assert!(matches!(page_for_caller(&mut c, &stranger, 0, 100).unwrap(), CallerPage::Refused));
    }
}
