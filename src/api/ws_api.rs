//! The WebSocket endpoints on the HTTP side: the upgrade routes (`/ws`, `/ws/{client_id}`,
//! `/ws/{client_id}/{group}`) and the REST API under `/api/ws/` (the contract's "WebSocket
//! REST API"). The sessions themselves live in `crate::ws`.
//!
//! An upgrade is checked completely before the `101`: a WebSocket handshake over HTTP/1.1 (else
//! `426`), valid id and group (`400`), a valid token when `WS_AUTH=required` (`401`; with
//! `optional` a token that is not valid counts as none), a superuser's token for the reserved
//! group `admins` (`403`), a free session slot and thread (`503`).
//!
//! Tokens and the database: a token's signature and expiry are always checked. Whether its user
//! still exists and is active is checked too while PostgreSQL is up; while it is down (degraded
//! mode) it is checked in the account cache when the account is there, and otherwise the token
//! alone is trusted, because the contract keeps WebSocket messaging and this REST API working
//! without the database. An answer whose token was checked that way (the `101` included) says
//! `X-Data-Stale: true`, as every answer served from memory does.
//!
//! Must never: log a query string (tokens travel in `?token=`), or block on the hub.

use std::sync::Arc;

use serde_json::{json, Value};

use super::extract::{Fields, NO_NUL_PATTERN};
use super::openapi::{schema_ref, Op};
use super::App;
use crate::auth::{bearer_token, stale_mark, unauthorized};
use crate::config::WsAuth;
use crate::http::{HttpError, Request, Response, Router};
use crate::ws::hub::NotSent;
use crate::ws::protocol::{valid_name, ADMINS_GROUP, MESSAGE_MAX};

pub fn routes(r: &mut Router, app: &Arc<App>) {
    // The upgrade routes: not HTTP operations, so not in the OpenAPI document.
    let a = app.clone();
    r.add("GET", "/ws", move |req| upgrade(&a, req, None, None));
    let a = app.clone();
    r.add("GET", "/ws/{client_id}", move |req| {
        let id = req.param("client_id").to_string();
        upgrade(&a, req, Some(id), None)
    });
    let a = app.clone();
    r.add("GET", "/ws/{client_id}/{group}", move |req| {
        let id = req.param("client_id").to_string();
        let group = req.param("group").to_string();
        upgrade(&a, req, Some(id), Some(group))
    });

    let a = app.clone();
    r.add("GET", "/api/ws/clients", move |_| Ok(clients(&a))).doc(
        Op::new("websocket", "Connected WebSocket clients", "ws_clients")
            .json(200, "Connected clients, oldest first", schema_ref("WsClients"))
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/api/ws/groups", move |_| Ok(groups(&a))).doc(
        Op::new("websocket", "WebSocket groups and their sizes", "ws_groups")
            .json(200, "Groups, by name", schema_ref("WsGroups"))
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/api/ws/groups/{group_name}", move |req| group(&a, req)).doc(
        Op::new("websocket", "The members of a WebSocket group", "ws_group")
            .param("path", "group_name", true, json!({ "type": "string" }))
            .json(200, "The group's members", schema_ref("WsGroup"))
            .errors(&[404])
            .build(),
    );
    let a = app.clone();
    r.add("POST", "/api/ws/send_to/{client_id}", move |req| send_to(&a, req)).doc(
        Op::new("websocket", "Send a private message from the server to a client", "ws_send_to")
            .param("path", "client_id", true, json!({ "type": "string" }))
            .body(&[("application/json", schema_ref("WsMessage"))])
            .secured()
            .json(200, "Queued for the client", schema_ref("WsSent"))
            .errors(&[401, 404, 422])
            .build(),
    );
    let a = app.clone();
    r.add("POST", "/api/ws/broadcast_to_group/{group_name}", move |req| broadcast(&a, req)).doc(
        Op::new("websocket", "Send a message from the server to every member of a group", "ws_broadcast_to_group")
            .param("path", "group_name", true, json!({ "type": "string" }))
            .body(&[("application/json", schema_ref("WsMessage"))])
            .secured()
            .json(200, "Queued for the members", schema_ref("WsGroupSent"))
            .errors(&[401, 404, 422])
            .build(),
    );
}

/// `sec-websocket-key` as the RFC writes it, for error messages.
fn header_title(name: &str) -> String {
    name.split('-')
        .map(|w| match w {
            "websocket" => "WebSocket".to_string(),
            _ => w[..1].to_ascii_uppercase() + &w[1..],
        })
        .collect::<Vec<_>>()
        .join("-")
}

const NAME_RULE: &str = "use 1 to 64 characters of A-Z a-z 0-9 _ . -";

/// Check a handshake and hand the connection to a new session.
fn upgrade(
    app: &Arc<App>,
    req: &mut Request<'_>,
    id: Option<String>,
    group: Option<String>,
) -> Result<Response, HttpError> {
    if !req.head.wants_upgrade("websocket") {
        return Err(HttpError::new(426, "This is a WebSocket endpoint: connect with a WebSocket client")
            .header("upgrade", "websocket"));
    }
    if let Some(id) = &id {
        if !valid_name(id) {
            return Err(HttpError::new(400, format!("Invalid client_id: {NAME_RULE}")));
        }
    }
    if let Some(g) = &group {
        if !valid_name(g) {
            return Err(HttpError::new(400, format!("Invalid group name: {NAME_RULE}")));
        }
    }
    // RFC 6455 §11.3.1, §11.3.5: each of these appears at most once; two keys or two versions
    // are a malformed handshake (§4.2.1: 400), not a choice of the first.
    for name in ["sec-websocket-key", "sec-websocket-version"] {
        if req.head.headers.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(HttpError::new(400, format!("Duplicate {} header", header_title(name))));
        }
    }
    // The handshake is a GET without a body: bytes after its head belong to the WebSocket, so
    // a declared body would be read as frames (and fail as a protocol error after the 101).
    if req.head.framing != crate::http::parse::Framing::None {
        return Err(HttpError::new(400, "A WebSocket handshake has no body"));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HttpError::new(426, "Unsupported WebSocket version: use 13").header("sec-websocket-version", "13"));
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    if !valid_key(key) {
        return Err(HttpError::new(400, "Missing or invalid Sec-WebSocket-Key"));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Checked { superuser: admin, stale } = check_ws_token(app, req)?;
    if group.as_deref() == Some(ADMINS_GROUP) && !admin {
        return Err(HttpError::new(
            403,
            "The group admins is reserved for superusers: connect with a superuser's token",
        ));
    }
    let then = app
        .ws
        .open_session(id, group, admin, req.peer)
        .map_err(|e| HttpError::new(e.status, e.message).header("retry-after", "5"))?;
    let mut headers = vec![("upgrade".into(), "websocket".into()), ("sec-websocket-accept".into(), accept)];
    if stale {
        headers.push(("x-data-stale".into(), "true".into()));
    }
    Ok(Response::upgrade(headers, then))
}

/// A `Sec-WebSocket-Key` is base64 of 16 bytes: 22 base64 characters and `==`.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24 && b[22..] == *b"==" && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// What a token check found out about the caller.
#[derive(Debug, Clone, Copy, Default)]
struct Checked {
    /// A superuser's token (who may be in the reserved group `admins`).
    superuser: bool,
    /// Checked from memory while the database is away: the answer carries `X-Data-Stale: true`.
    stale: bool,
}

/// The token of a connect: `?token=` or `Authorization: Bearer`. With `WS_AUTH=required` a
/// connect without a valid one is a `401`; with `optional` a token that is not valid (expired,
/// forged, of a deactivated account) counts as none, as the contract has it: the client
/// connects, and is not a superuser (so `/ws/{id}/admins` is a `403`).
fn check_ws_token(app: &App, req: &Request<'_>) -> Result<Checked, HttpError> {
    let from_query = crate::http::parse::last(&req.query()?, "token").filter(|t| !t.is_empty()).map(str::to_string);
    let token = from_query.or_else(|| bearer_token(req).map(str::to_string));
    let required = app.config.ws_auth == WsAuth::Required;
    match token {
        None if required => Err(unauthorized()),
        None => Ok(Checked::default()),
        Some(t) => match token_user_ok(app, &t) {
            Err(e) if e.status == 401 && !required => Ok(Checked::default()),
            checked => checked,
        },
    }
}

/// A token is good when it verifies and names an active user: checked in the database while it is
/// up, in the account cache while it is down (an account not in memory: the token alone).
/// Returns whether that user is a superuser; while the database is down that is known only for
/// an account in memory, and otherwise the answer is no (the reserved group waits for the
/// database).
fn token_user_ok(app: &App, token: &str) -> Result<Checked, HttpError> {
    let bearer = app.auth.token_bearer(token).ok_or_else(unauthorized)?;
    let id = bearer.id;
    let db = &app.db;
    if !db.is_up() {
        // Degraded mode: an account in memory must still be active (and the token's); one not in
        // memory is trusted on its token alone, so that messaging keeps working.
        return match db.cache.by_id(id) {
            Some(u) if !u.is_active || !bearer.owns(&u) => Err(unauthorized()),
            Some(u) => Ok(Checked { superuser: u.is_superuser, stale: true }),
            None => Ok(Checked { superuser: false, stale: true }),
        };
    }
    let found =
        db.conn().map_err(|e| db.saw(e)).and_then(|mut c| crate::db::users::by_id(&mut c, id).map_err(|e| db.saw(e)));
    if let Ok(Some(u)) = &found {
        db.cache.put(u);
    }
    match found {
        Ok(Some(u)) if u.is_active && bearer.owns(&u) => Ok(Checked { superuser: u.is_superuser, stale: false }),
        Ok(_) => Err(unauthorized()),
        Err(e) if e.is_unavailable() => Ok(Checked { superuser: false, stale: true }),
        Err(e) => {
            crate::error!("database error while checking a WebSocket token: {e}");
            Err(HttpError::new(500, "Internal Server Error"))
        }
    }
}

/// The caller of a POST route: a bearer token (see the module doc for the database's part).
/// Returns whether it was checked from memory (the answer then says `X-Data-Stale: true`).
fn require_caller(app: &App, req: &Request<'_>) -> Result<bool, HttpError> {
    let token = bearer_token(req).ok_or_else(unauthorized)?;
    token_user_ok(app, token).map(|c| c.stale)
}

fn clients(app: &App) -> Response {
    let list: Vec<Value> = app
        .ws
        .hub
        .clients()
        .into_iter()
        .map(|c| {
            json!({
                "client_id": c.client_id,
                "group": c.group,
                "connected_at": crate::util::time::rfc3339(c.connected_at),
            })
        })
        .collect();
    Response::json(200, &json!({ "count": list.len(), "clients": list }))
}

fn groups(app: &App) -> Response {
    let list = app.ws.hub.groups();
    Response::json(200, &json!({ "count": list.len(), "groups": list }))
}

fn group(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let name = req.param("group_name");
    let members = app.ws.hub.members(name).ok_or_else(|| HttpError::new(404, "Group not found"))?;
    Ok(Response::json(200, &json!({ "group": name, "member_count": members.len(), "members": members })))
}

/// `{"message": string}`, at most [`MESSAGE_MAX`] bytes: the contract's limit of a WebSocket
/// message holds for the server's own messages too (a client may rely on it), so a larger one is
/// a `422`, not a frame no client could have sent.
fn message_body(req: &mut Request<'_>) -> Result<String, HttpError> {
    let mut f = Fields::from_json(req)?;
    let message = f.required_str("message");
    if message.as_ref().is_some_and(|m| m.len() > MESSAGE_MAX) {
        f.problem("message", format!("String should have at most {MESSAGE_MAX} bytes of UTF-8"), "string_too_long");
    }
    f.finish()?;
    Ok(message.unwrap_or_default())
}

fn send_to(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let stale = require_caller(app, req)?;
    let message = message_body(req)?;
    let id = req.param("client_id").to_string();
    match app.ws.hub.send_from_server(&id, &message) {
        Ok(()) => {}
        Err(NotSent::NotConnected) => return Err(HttpError::new(404, "Client not connected")),
        Err(NotSent::Unreachable(why)) => {
            return Err(HttpError::new(503, format!("Client {id} is connected to another instance and {}", why.0))
                .header("retry-after", "5"))
        }
    }
    Ok(stale_mark(stale, Response::json(200, &json!({ "status": "sent", "client_id": id }))))
}

fn broadcast(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let stale = require_caller(app, req)?;
    let message = message_body(req)?;
    let group = req.param("group_name").to_string();
    let recipients =
        app.ws.hub.group_from_server(&group, &message).ok_or_else(|| HttpError::new(404, "Group not found"))?;
    Ok(stale_mark(stale, Response::json(200, &json!({ "status": "sent", "group": group, "recipients": recipients }))))
}

/// Schemas of this section, for the OpenAPI document.
pub fn schemas() -> Value {
    json!({
        "WsClient": {
            "type": "object", "required": ["client_id", "group", "connected_at"],
            "properties": {
                "client_id": { "type": "string" },
                "group": { "anyOf": [{ "type": "string" }, { "type": "null" }] },
                "connected_at": { "type": "string", "format": "date-time" }
            }
        },
        "WsClients": {
            "type": "object", "required": ["clients", "count"],
            "properties": {
                "clients": { "type": "array", "items": { "$ref": "#/components/schemas/WsClient" } },
                "count": { "type": "integer" }
            }
        },
        "WsGroupInfo": {
            "type": "object", "required": ["name", "member_count"],
            "properties": { "name": { "type": "string" }, "member_count": { "type": "integer" } }
        },
        "WsGroups": {
            "type": "object", "required": ["groups", "count"],
            "properties": {
                "groups": { "type": "array", "items": { "$ref": "#/components/schemas/WsGroupInfo" } },
                "count": { "type": "integer" }
            }
        },
        "WsGroup": {
            "type": "object", "required": ["group", "members", "member_count"],
            "properties": {
                "group": { "type": "string" },
                "members": { "type": "array", "items": { "type": "string" } },
                "member_count": { "type": "integer" }
            }
        },
        "WsMessage": {
            "type": "object", "required": ["message"],
            "properties": { "message": {
                "type": "string", "pattern": NO_NUL_PATTERN,
                "description": format!("at most {MESSAGE_MAX} bytes of UTF-8")
            } }
        },
        "WsSent": {
            "type": "object", "required": ["status", "client_id"],
            "properties": { "status": { "type": "string", "enum": ["sent"] }, "client_id": { "type": "string" } }
        },
        "WsGroupSent": {
            "type": "object", "required": ["status", "group", "recipients"],
            "properties": {
                "status": { "type": "string", "enum": ["sent"] },
                "group": { "type": "string" },
                "recipients": { "type": "integer" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ!="));
        assert!(!valid_key(""));
    }
}
