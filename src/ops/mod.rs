//! Operations: what the server does for the people who run it, beside serving clients.
//! `alert.rs` tells them when the database goes away and comes back.
//! Must never: hold up a request, or leak a secret into an alert or a log line.

pub mod alert;
