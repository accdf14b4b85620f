//! The connection layer: HTTP/1.x over `std::net`, on `httparse`, with our own listener, worker
//! pool, limits and timeouts. It knows nothing of the application: it turns bytes into
//! `Request`s, finds the route, calls the handler and writes the `Response`.
//!
//! Where a request goes, in order:
//! 1. `server.rs` — the dispatcher thread accepts the socket (`gate.rs` counts it, in all and
//!    per client address) and polls it until a complete request has arrived — the head
//!    (`parse.rs` decides "complete"), and a small body too — then queues it for a worker (a
//!    large body first needs one of the few transfer slots);
//! 2. a worker parses the head, asks `router.rs` for the route (404, 405, 307 and 413 are
//!    answered here), wraps the body in a `body::BodyReader`, and calls the handler;
//! 3. the handler's `Response` (or `HttpError`) is written by `response.rs`, never waiting on the
//!    socket: what the client does not take at once, the dispatcher finishes. The connection
//!    then waits a moment for its next request in the hot set (`hot.rs`), where any idle worker
//!    takes it up, then in the dispatcher; or it leaves the layer (WebSocket upgrade).
//!
//! Must never: hold application state, or know any route's meaning.

pub mod body;
pub mod gate;
pub mod hot;
pub mod multipart;
pub mod parse;
pub mod response;
pub mod router;
pub mod server;
pub mod static_file;

pub use body::BodyError;
pub use response::{Body, Response};
pub use router::{HttpError, Request, Router};
pub use server::{Server, ServerConfig, ShutdownHandle, Stats};
