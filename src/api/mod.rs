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
pub mod general;
pub mod openapi;
pub mod pages;
pub mod teams;
pub mod testing;
pub mod users;

/// Version reported by `/`, `/health` and the OpenAPI document.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by all handlers. Cheap to clone (an `Arc`).
pub struct App {
    pub config: Config,
    pub started: Instant,
    pub db: Arc<crate::db::Db>,
    pub auth: crate::auth::Auth,
}

/// Build the route table. Order matters only where a literal and a parameter overlap
/// (`/users/me` before `/users/{user_id}`).
pub fn build_router(app: Arc<App>) -> Router {
    let mut r = Router::new(app.config.max_json_bytes);
    general::routes(&mut r, &app);
    auth::routes(&mut r, &app);
    users::routes(&mut r, &app);
    teams::routes(&mut r, &app);
    pages::routes(&mut r);
    if app.config.test_routes {
        testing::routes(&mut r);
    }
    // Last, so the document sees every route above.
    docs::routes(&mut r);
    r
}
