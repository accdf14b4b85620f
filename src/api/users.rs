//! `/users/...`: the contract's "Users" section.
//! While the database is away, `/users/me` and `/users/{id}` answer from the account cache with
//! `X-Data-Stale: true` (503 for an account not in memory); sign-up and the list answer 503.
//! Must never: return a password hash, or create a user when sign-up is closed and the caller
//! is not a superuser.

use std::sync::Arc;

use serde_json::{json, Value};

use super::extract::{normalize_email, pagination, path_i64, Fields, EMAIL_MAX, NO_NUL_PATTERN};
use super::openapi::{int64, schema_ref, skip, Op};
use super::App;
use crate::auth::{bearer_token, db_unavailable, load_users, password, stale_mark, unauthorized};
use crate::db::users::{self, User};
use crate::http::{HttpError, Request, Response, Router};

/// Password length bounds, in characters.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 1024;
/// Full name length bound, in characters.
pub const FULL_NAME_MAX: usize = 200;

pub fn routes(r: &mut Router, app: &Arc<App>) {
    let a = app.clone();
    let limit = app.config.max_json_bytes.min(super::OPEN_BODY_MAX);
    r.add("POST", "/users/", move |req| create(&a, req)).limit(limit).doc(
        Op::new("users", "Create a user (sign up)", "create_user")
            .body(&[("application/json", schema_ref("UserCreate"))])
            .json(201, "The new user", schema_ref("User"))
            .errors(&[401, 403, 409, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/users/", move |req| list(&a, req)).doc(
        Op::new("users", "List users, ordered by id", "list_users")
            .param("query", "skip", false, skip())
            .param("query", "limit", false, json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }))
            .secured()
            .json(200, "A page of users", json!({ "type": "array", "items": schema_ref("User") }))
            .errors(&[401, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/users/me", move |req| {
        let me = a.auth.current_user(&a.db, req)?;
        Ok(me.mark(Response::json(200, &me.to_json())))
    })
    .doc(
        Op::new("users", "The caller", "read_users_me")
            .secured()
            .json(200, "The caller", schema_ref("User"))
            .errors(&[401, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/users/{user_id}", move |req| get(&a, req)).doc(
        Op::new("users", "A user by id", "read_user")
            .param("path", "user_id", true, int64(i64::MIN))
            .secured()
            .json(200, "The user", schema_ref("User"))
            .errors(&[401, 404, 422, 503])
            .build(),
    );
}

fn create(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    if !app.config.allow_signup {
        let caller = app.auth.current_user(&app.db, req)?;
        if !caller.is_superuser {
            return Err(HttpError::new(403, "Sign-up is closed; ask an administrator to create your account"));
        }
    }
    let mut f = Fields::from_json(req)?;
    let email = f.required_str("email");
    let password = f.required_str("password");
    let full_name = f.optional_str("full_name");
    let email = email.and_then(|e| match normalize_email(&e) {
        Ok(e) => Some(e),
        Err(why) => {
            f.problem("email", format!("value is not a valid email address: {why}"), "value_error");
            None
        }
    });
    if let Some(p) = &password {
        f.check_len("password", p, PASSWORD_MIN, PASSWORD_MAX);
    }
    if let Some(n) = &full_name {
        f.check_len("full_name", n, 0, FULL_NAME_MAX);
    }
    f.finish()?;
    let (email, password) = (email.unwrap_or_default(), password.unwrap_or_default());
    // Known down: answer at once, without spending a hash on a write that cannot happen.
    if !app.db.is_up() {
        return Err(crate::auth::db_unavailable());
    }
    let hash = app.auth.hasher.run(move || password::hash_password(&password))?.map_err(|e| {
        crate::error!("password hashing failed: {e}");
        HttpError::new(500, "Internal Server Error")
    })?;
    let mut c = app.conn()?;
    match users::insert(&mut c, &email, &hash, full_name.as_deref(), false) {
        Ok(user) => {
            app.db.cache.put(&user);
            Ok(Response::json(201, &user.to_json()))
        }
        Err(e) if e.is_unique_violation() => Err(HttpError::new(409, "Email already registered")),
        Err(e) => Err(app.db_err(e)),
    }
}

fn list(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    // The caller check and the page in one round trip (one checkout, one query).
    let caller = bearer_token(req).and_then(|t| app.auth.token_bearer(t)).ok_or_else(unauthorized)?;
    let (skip, limit) = pagination(req).map_err(|e| app.auth.caller_first(&app.db, req, e))?;
    let mut c = app.conn()?;
    match users::page_for_caller(&mut c, &caller, skip, limit).map_err(|e| app.db_err(e))? {
        users::CallerPage::Page(page) => {
            for u in &page {
                app.db.cache.put(u);
            }
            Ok(Response::json(200, &page.iter().map(User::to_json).collect::<Vec<_>>()))
        }
        users::CallerPage::Refused => Err(unauthorized()),
    }
}

fn get(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    // The caller and the target in one round trip (or from memory while the database is away).
    let caller = bearer_token(req).and_then(|t| app.auth.token_bearer(t)).ok_or_else(unauthorized)?;
    let target = path_i64(req, "user_id").map_err(|e| app.auth.caller_first(&app.db, req, e))?;
    let (found, stale) = load_users(&app.db, &[caller.id, target])?;
    match found.iter().find(|u| u.id == caller.id) {
        Some(u) if u.is_active && caller.owns(u) => {}
        Some(_) => return Err(unauthorized()),
        None if stale => return Err(db_unavailable()),
        None => return Err(unauthorized()),
    }
    match found.into_iter().find(|u| u.id == target) {
        Some(u) => Ok(stale_mark(stale, Response::json(200, &u.to_json()))),
        // Not in memory is not "not found": the database, which would know, is away.
        None if stale => Err(db_unavailable()),
        None => Err(HttpError::new(404, "User not found")),
    }
}

pub fn schemas() -> Value {
    json!({
        "User": {
            "type": "object",
            "required": ["id", "email", "full_name", "is_active", "is_superuser", "created_at"],
            "properties": {
                "id": { "type": "integer" },
                "email": { "type": "string" },
                "full_name": { "anyOf": [{ "type": "string" }, { "type": "null" }] },
                "is_active": { "type": "boolean" },
                "is_superuser": { "type": "boolean" },
                "created_at": { "type": "string", "format": "date-time" }
            }
        },
        "UserCreate": {
            "type": "object", "required": ["email", "password"],
            "properties": {
                "email": { "type": "string", "format": "email", "maxLength": EMAIL_MAX, "pattern": NO_NUL_PATTERN },
                "password": {
                    "type": "string", "minLength": PASSWORD_MIN, "maxLength": PASSWORD_MAX, "pattern": NO_NUL_PATTERN
                },
                "full_name": {
                    "anyOf": [{ "type": "string", "maxLength": FULL_NAME_MAX, "pattern": NO_NUL_PATTERN }, { "type": "null" }]
                }
            }
        }
    })
}
