//! `GET /` and `GET /health`: the contract's "General" section.
//! Must never: fail because the database is down (`/health` is how you find out it is).

use std::sync::Arc;

use serde_json::json;

use super::{App, VERSION};
use crate::http::{Response, Router};

pub fn routes(r: &mut Router, app: &Arc<App>) {
    r.add("GET", "/", |_| {
        Ok(Response::json(200, &json!({ "message": "Welcome to Adcluster API", "version": VERSION, "docs": "/docs" })))
    })
    .doc(json!({
        "tags": ["general"], "summary": "Welcome message", "operationId": "root",
        "responses": { "200": { "description": "Welcome", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Welcome" } } } } }
    }));

    let app = app.clone();
    r.add("GET", "/health", move |_| {
        let db_up = app.db.is_up();
        Ok(Response::json(
            200,
            &json!({
                "status": if db_up { "ok" } else { "degraded" },
                "database": if db_up { "up" } else { "down" },
                "version": VERSION,
                "uptime_seconds": app.started.elapsed().as_secs_f64(),
                "spool": app.db.spool_depth(),
            }),
        ))
    })
    .doc(json!({
        "tags": ["general"], "summary": "Health check", "operationId": "health",
        "responses": { "200": { "description": "Service status", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } } }
    }));
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
