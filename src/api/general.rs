//! `GET /` and `GET /health`: the contract's "General" section.
//! Must never: fail because the database is down (`/health` is how you find out it is).

use std::sync::Arc;

use serde_json::json;

use super::{App, VERSION};
use crate::http::{Response, Router};

pub fn routes(r: &mut Router, app: &Arc<App>) {
    // The same bytes every time: serialised once, no allocation per request.
    let welcome: &'static [u8] = Box::leak(
        serde_json::to_vec(&json!({ "message": "Welcome to Adcluster API", "version": VERSION, "docs": "/docs" }))
            .expect("a JSON literal serialises")
            .into_boxed_slice(),
    );
    // Both are quick (see `Route::quick`): fixed bytes, and two atomics.
    r.add("GET", "/", move |_| Ok(Response::static_bytes(200, "application/json", welcome)))
    .quick()
    .doc(json!({
        "tags": ["general"], "summary": "Welcome message", "operationId": "root",
        "responses": { "200": { "description": "Welcome", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Welcome" } } } } }
    }));

    let app = app.clone();
    r.add("GET", "/health", move |_| {
        let db_up = app.db.is_up();
        Ok(Response::json(
            200,
            &Health {
                database: if db_up { "up" } else { "down" },
                spool: app.db.spool_depth(),
                status: if db_up { "ok" } else { "degraded" },
                uptime_seconds: app.started.elapsed().as_secs_f64(),
                version: VERSION,
            },
        ))
    })
    .quick()
    .doc(json!({
        "tags": ["general"], "summary": "Health check", "operationId": "health",
        "responses": { "200": { "description": "Service status", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } } }
    }));
}

/// The body of `GET /health`: a struct rather than a `json!` map, so a probe costs one
/// allocation (the serialised bytes), not one per key. Fields in the order `json!` wrote them.
#[derive(serde::Serialize)]
struct Health {
    database: &'static str,
    spool: usize,
    status: &'static str,
    uptime_seconds: f64,
    version: &'static str,
}

/// Schemas of this section, for the OpenAPI document.
pub fn schemas() -> serde_json::Value {
    json!({
        "Welcome": {
            "type": "object", "required": ["message", "version", "docs"],
            "properties": { "message": { "type": "string" }, "version": { "type": "string" }, "docs": { "type": "string" } }
        },
        "Health": {
            "type": "object", "required": ["status", "database", "version", "uptime_seconds"],
            "properties": {
                "status": { "type": "string", "enum": ["ok", "degraded"] },
                "database": { "type": "string", "enum": ["up", "down"] },
                "version": { "type": "string" },
                "uptime_seconds": { "type": "number" },
                "spool": { "type": "integer", "minimum": 0, "description": "upload records waiting to be written to the database" }
            }
        }
    })
}
