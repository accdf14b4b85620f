//! `POST /auth/login`: the contract's "Authentication" section. JSON `{"email","password"}` or an
//! OAuth2 password form (`username`, `password`), as Swagger UI's Authorize button sends it.
//! While the database is away, the account comes from the memory cache (the answer carries
//! `X-Data-Stale: true`); an account not in memory answers 503; the rate limit applies the same.
//! Must never: answer an unknown email differently from a wrong password (same 401 body, and
//! one Argon2 verification spent either way), or log what was typed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::extract::{is_form, Fields, NO_NUL_PATTERN};
use super::openapi::{schema_ref, Op};
use super::App;
use crate::auth::ratelimit::Refused;
use crate::auth::{db_unavailable, load_user_by_email, password, stale_mark};
use crate::db::users::User;
use crate::http::{HttpError, Request, Response, Router};

pub fn routes(r: &mut Router, app: &Arc<App>) {
    let app = app.clone();
    let limit = app.config.max_json_bytes.min(super::OPEN_BODY_MAX);
    r.add("POST", "/auth/login", move |req| login(&app, req)).limit(limit).doc(
        Op::new("auth", "Log in and get an access token", "login")
            .body(&[
                ("application/json", schema_ref("LoginRequest")),
                ("application/x-www-form-urlencoded", schema_ref("OAuth2PasswordForm")),
            ])
            .json(200, "An access token", schema_ref("Token"))
            .errors(&[401, 403, 422, 429, 503])
            .build(),
    );
}

fn login(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    // A form by its content type — unless the body is plainly a JSON object, which is what
    // `curl -d '{...}'` sends under the form content type. Any other type is JSON's rule, as on
    // every JSON route: no type or a JSON one, else 422 (`text/plain` is not read as JSON).
    let body = req.body_bytes()?;
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let (email_field, mut fields) = if is_form(req) && !looks_like_json {
        ("username", Fields::parse_form(&body)?)
    } else if is_form(req) {
        ("email", Fields::parse_json(&body)?)
    } else {
        ("email", Fields::parse_declared_json(req.header("content-type"), &body)?)
    };
    let email = fields.required_str(email_field);
    let password = fields.required_str("password");
    fields.finish()?;
    // The form stored at sign-up (NFC, trimmed), so that a decomposed `ü` finds its account and
    // counts against the same failure budget.
    let (email, password) = (super::extract::email_nfc(&email.unwrap_or_default()), password.unwrap_or_default());

    let ip = req.peer.ip();
    // Take a place in the pair's budget before anything is checked (see `auth::ratelimit`):
    // attempts sent at once cannot all be checked before the limit applies.
    let slot = app.auth.limiter.reserve(&email, ip, Instant::now()).map_err(|refused| match refused {
        Refused::Locked(retry) => HttpError::new(429, "Too many failed login attempts; try again later")
            .header("retry-after", retry.as_secs().to_string()),
        // Attempts still being checked held the pair's budget for the whole wait: not failures.
        Refused::Busy => crate::auth::HashError::Busy.into(),
    })?;
    let outcome = check_credentials(app, &email, password);
    match &outcome {
        // A verdict on the password: a success clears the pair's failures, a 401 records one.
        Ok(_) => slot.succeeded(),
        Err(e) if e.status == 401 => slot.failed(Instant::now()),
        // No verdict (busy, database away, inactive account with the right password): the slot
        // ends when dropped, recording nothing.
        Err(_) => drop(slot),
    }
    let (user, stale) = outcome?;
    let ttl = app.auth.token_ttl.as_secs();
    let token = app.auth.keys.issue(user.id, &user.email, ttl, crate::util::time::unix_now());
    let resp = Response::json(200, &json!({ "access_token": token, "token_type": "bearer", "expires_in": ttl }));
    Ok(stale_mark(stale, resp))
}

/// The account for `email` if `password` is its password: 401 when not (unknown email or wrong
/// password alike), 403 for an inactive account, 503 when the hashing pool is full or when the
/// database is away and the account is not in memory. Also says whether it came from memory.
fn check_credentials(app: &App, email: &str, password: String) -> Result<(User, bool), HttpError> {
    // Under a login flood, refuse before touching the database: a refused login must be cheap.
    if app.auth.hasher.is_full() {
        return Err(crate::auth::HashError::Busy.into());
    }
    let (user, stale) = load_user_by_email(&app.db, email.trim())?;
    if user.is_none() && stale {
        return Err(db_unavailable());
    }
    let stored = user.as_ref().map(|u| u.hashed_password.clone());
    let verified = app.auth.hasher.run(move || match stored {
        Some(hash) => password::verify_password(&password, &hash),
        None => {
            password::burn_verify(&password);
            false
        }
    })?;
    let user = match user {
        Some(u) if verified => u,
        _ => return Err(HttpError::new(401, "Incorrect email or password").header("www-authenticate", "Bearer")),
    };
    if !user.is_active {
        return Err(HttpError::new(403, "Inactive user"));
    }
    Ok((user, stale))
}

pub fn schemas() -> serde_json::Value {
    json!({
        "LoginRequest": {
            "type": "object", "required": ["email", "password"],
            "properties": {
                "email": { "type": "string", "pattern": NO_NUL_PATTERN },
                "password": { "type": "string", "pattern": NO_NUL_PATTERN }
            }
        },
        "OAuth2PasswordForm": {
            "type": "object", "required": ["username", "password"],
            "properties": {
                "grant_type": { "type": "string" },
                "username": { "type": "string", "description": "the account's email", "pattern": NO_NUL_PATTERN },
                "password": { "type": "string", "format": "password", "pattern": NO_NUL_PATTERN },
                "scope": { "type": "string" },
                "client_id": { "type": "string" },
                "client_secret": { "type": "string" }
            }
        },
        "Token": {
            "type": "object", "required": ["access_token", "token_type", "expires_in"],
            "properties": {
                "access_token": { "type": "string" },
                "token_type": { "type": "string", "enum": ["bearer"] },
                "expires_in": { "type": "integer" }
            }
        }
    })
}
