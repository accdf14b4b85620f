//! The application: the route table and the state handlers share. One file per resource;
//! `build_router` is the one place that lists every route, so "where does `GET /x` go?" is
//! answered by searching this file.
//!
//! Must never: touch sockets (that is `http/`), or hold a lock across I/O.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::http::Router;

pub mod auth;
pub mod docs;
pub mod extract;
pub mod files;
pub mod general;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod teams;
/// Only in debug builds: a release binary has no test route at all (docs/decisions.md).
#[cfg(debug_assertions)]
pub mod testing;
pub mod users;
pub mod ws_api;

/// Version reported by `/`, `/health` and the OpenAPI document.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest body of the routes anyone may call without a token (`POST /auth/login`, `POST
/// /users/`): far above what they take (an email, a password of at most 1,024 characters, a name
/// of at most 200), and no more than the HTTP layer reads before a handler runs (64 KiB), so
/// that such a body never takes one of the few transfer slots meant for uploads: a longer one is
/// refused with `413` on its declared length, at once. `MAX_JSON_BYTES` still applies when lower.
pub const OPEN_BODY_MAX: u64 = 64 * 1024;

/// State shared by all handlers. Cheap to clone (an `Arc`).
pub struct App {
    pub config: Config,
    pub started: Instant,
    pub db: Arc<crate::db::Db>,
    pub auth: crate::auth::Auth,
    /// WebSocket sessions and the hub (registry and groups).
    pub ws: Arc<crate::ws::Ws>,
    /// Request counters and the rest of `/metrics` (served on `METRICS_ADDR` only).
    pub metrics: Arc<metrics::Metrics>,
}

impl App {
    /// A database connection, or the contract's 503 (`Database unavailable`) when there is none.
    pub fn conn(&self) -> Result<crate::db::Conn, crate::http::HttpError> {
        self.db.conn().map_err(|e| self.db_err(e))
    }

    /// The response for a database error: 503 when the database is unavailable, else 500.
    pub fn db_err(&self, e: crate::db::DbError) -> crate::http::HttpError {
        crate::auth::db_error(&self.db, e)
    }
}

/// Build the route table. Order matters only where a literal and a parameter overlap
/// (`/users/me` before `/users/{user_id}`).
pub fn build_router(app: Arc<App>) -> Router {
    let mut r = Router::new(app.config.max_json_bytes);
    general::routes(&mut r, &app);
    auth::routes(&mut r, &app);
    users::routes(&mut r, &app);
    teams::routes(&mut r, &app);
    files::routes(&mut r, &app);
    ws_api::routes(&mut r, &app);
    pages::routes(&mut r);
    #[cfg(debug_assertions)]
    if app.config.test_routes {
        testing::routes(&mut r);
    }
    // Last, so the document sees every route above.
    docs::routes(&mut r);
    // Last of all: every route above gets its request counters and timer.
    app.metrics.instrument(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// An app whose database is never reached (the pool connects lazily).
    pub(crate) fn offline_app(test_routes: bool) -> Arc<App> {
        let env = |k: &str| match k {
            "ADCLUSTER_TEST_ROUTES" if test_routes => Some("true".to_string()),
            _ => None,
        };
        let (raw, _) = crate::config::RawConfig::layer(None, &env, &[]).unwrap();
        let config = Config::from_raw(&raw).unwrap();
        let db = Arc::new(crate::db::Db::new(crate::db::DbConfig::default()).unwrap());
        let auth = crate::auth::Auth {
            keys: crate::auth::token::TokenKeys::new(&[7u8; 32]),
            token_ttl: config.access_token_expire,
            limiter: crate::auth::ratelimit::LoginLimiter::default(),
            hasher: crate::auth::HashPool::start(1, 1, crate::auth::HASH_WAIT_MAX).unwrap(),
        };
        let ws = Arc::new(crate::ws::Ws::new(crate::ws::WsSettings::from_config(&config)));
        Arc::new(App { config, started: Instant::now(), db, auth, ws, metrics: Default::default() })
    }

    /// Routes deliberately left out of the OpenAPI document.
    fn undocumented(method: &str, pattern: &str) -> bool {
        matches!(pattern, "/openapi.json" | "/docs" | "/redoc" | "/static/{file:path}")
            || pattern.starts_with("/__test/")
            || (method == "GET" && (pattern == "/ws" || pattern.starts_with("/ws/")))
    }

    #[test]
    fn the_document_and_the_router_list_the_same_routes() {
        let router = build_router(offline_app(true));
        let doc = docs::document(&router);
        let mut in_doc = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                in_doc.insert((method.to_uppercase(), path.clone()));
            }
        }
        let mut in_router = BTreeSet::new();
        for route in router.routes() {
            if undocumented(route.method, route.pattern) {
                assert!(route.doc.is_none(), "{} {} is documented but listed as hidden", route.method, route.pattern);
                continue;
            }
            assert!(route.doc.is_some(), "{} {} has no OpenAPI operation", route.method, route.pattern);
            in_router.insert((route.method.to_string(), route.pattern.replace(":path}", "}")));
        }
        assert_eq!(in_doc, in_router);
    }

    #[test]
    fn every_contract_route_exists() {
        let router = build_router(offline_app(false));
        // The HTTP routes of the contract (docs/api.md).
        let contract = [
            ("GET", "/"),
            ("GET", "/health"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/redoc"),
            ("POST", "/auth/login"),
            ("POST", "/users/"),
            ("GET", "/users/"),
            ("GET", "/users/me"),
            ("GET", "/users/{user_id}"),
            ("POST", "/teams/"),
            ("GET", "/teams/"),
            ("GET", "/teams/{team_id}"),
            ("POST", "/teams/{team_id}/members"),
            ("POST", "/api/upload"),
            ("POST", "/api/upload/multiple"),
            ("GET", "/api/files"),
            ("DELETE", "/api/files/{filename}"),
            ("GET", "/uploads/{category}/{name}"),
            ("GET", "/ws"),
            ("GET", "/ws/{client_id}"),
            ("GET", "/ws/{client_id}/{group}"),
            ("GET", "/api/ws/clients"),
            ("GET", "/api/ws/groups"),
            ("GET", "/api/ws/groups/{group_name}"),
            ("POST", "/api/ws/send_to/{client_id}"),
            ("POST", "/api/ws/broadcast_to_group/{group_name}"),
        ];
        for (method, pattern) in contract {
            assert!(
                router.routes().iter().any(|r| r.method == method && r.pattern == pattern),
                "contract route {method} {pattern} is missing"
            );
        }
        // No test routes unless asked for.
        assert!(!router.routes().iter().any(|r| r.pattern.starts_with("/__test/")));
    }

    /// `docs/api.md` is the project's own reference: it names every route of the router (as
    /// `` `METHOD /pattern` ``, `{file:path}` written `{file}`) and every setting of the
    /// configuration table (as `` `NAME` ``), so neither can be added without its docs.
    #[test]
    fn docs_api_md_names_every_route_and_setting() {
        let doc = include_str!("../../docs/api.md");
        let router = build_router(offline_app(true));
        let mut missing = Vec::new();
        for route in router.routes() {
            let name = format!("`{} {}`", route.method, route.pattern.replace(":path}", "}"));
            // A route may be named with its query or body after the path: `GET /users/?skip=0`.
            let bare = name.trim_end_matches('`');
            if !doc.contains(&name) && !doc.contains(&format!("{bare}?")) && !doc.contains(&format!("{bare} ")) {
                missing.push(name);
            }
        }
        for setting in crate::config::SETTINGS {
            if !doc.contains(&format!("`{}`", setting.var)) {
                missing.push(format!("setting `{}`", setting.var));
            }
        }
        assert!(missing.is_empty(), "docs/api.md does not name: {}", missing.join(", "));
        // And the other way round for routes: every `METHOD /path` in a table row of the HTTP
        // sections exists (the db-gui section lists another application's routes).
        let http_part = doc.split("## Database GUI").next().unwrap();
        for row in http_part.lines().filter(|l| l.starts_with("| `")) {
            let cell = row.trim_start_matches("| `");
            let Some((method, rest)) = cell.split_once(' ') else { continue };
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) || !rest.starts_with('/') {
                continue;
            }
            let path = rest.split(['`', '?', ' ']).next().unwrap();
            let exists = router.routes().iter().any(|r| r.method == method && r.pattern.replace(":path}", "}") == path)
                || (path == "/metrics" && method == "GET");
            assert!(exists, "docs/api.md documents {method} {path}, which the router does not have");
        }
    }

    /// Every server frame type and error code the WebSocket protocol code can send is named in
    /// `docs/api.md` (as `` `name` ``). Read from the source of `ws/protocol.rs`, where each
    /// frame is built with `frame_json("type", ...)` and each code is `ErrorCode::X => "code"`,
    /// so a new frame or code cannot be added without its docs.
    #[test]
    fn docs_api_md_names_every_websocket_frame_and_error_code() {
        let doc = include_str!("../../docs/api.md");
        let protocol = include_str!("../ws/protocol.rs");
        let code = protocol.split("\n#[cfg(test)]").next().unwrap();
        let quoted_after = |marker: &str| -> Vec<String> {
            code.split(marker).skip(1).filter_map(|rest| rest.split('"').next().map(str::to_string)).collect()
        };
        let frames = quoted_after("frame_json(\"");
        let codes = quoted_after("=> \"");
        assert!(frames.len() >= 12 && frames.contains(&"welcome".to_string()), "frames read: {frames:?}");
        assert!(codes.contains(&"client_not_found".to_string()), "codes read: {codes:?}");
        let missing: Vec<&String> =
            frames.iter().chain(&codes).filter(|name| !doc.contains(&format!("`{name}`"))).collect();
        assert!(missing.is_empty(), "docs/api.md does not name the WebSocket frame types or codes {missing:?}");
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = docs::document(&build_router(offline_app(true)));
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
    }
}
