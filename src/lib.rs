//! The Adcluster server as a library: `main.rs` is only the command line over it.
//!
//! Layout:
//! - `http/`   the connection layer: listener, worker pool, parsing, routing — knows no app;
//! - `api/`    the application: one file per resource, and the route table (`api/mod.rs`);
//! - `auth/`   passwords (Argon2id), tokens (HS256 JWT), login rate limit, the bearer check;
//! - `db/`     the PostgreSQL pool, migrations, queries, the monitor thread;
//! - `ws/`     WebSocket sessions, the client registry and groups (hub), the protocol;
//! - `cluster/` several instances on one database: LISTEN/NOTIFY, presence, the hub's link;
//! - `config`  settings: defaults < .env < environment < flags;
//! - `dbgui/`  the database web GUI (`adcluster db-gui`): its own router on the same `http/` layer;
//! - `ops/`    operator concerns: database alerts, the `backup` and `restore` commands;
//! - `util/`   logging, time formatting, limits (open files, threads), small shared pieces.
//!
//! Must never: let `http/` or `db/` know the application (each imports only `util/` and the log
//! macros, so either can be read and tested alone); `api/` is where the concerns meet.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod dbgui;
pub mod http;
pub mod ops;
pub mod util;
pub mod ws;
