//! Routes for the test suite only, under `/__test/`, added when `ADCLUSTER_TEST_ROUTES=true`
//! (never by default). They give the connection-layer tests a body to read, a handler that
//! panics (and an upgrade that does), a large in-memory response, a streamed one and a handler
//! that takes its time, against the real binary.
//!
//! This module is compiled only with `debug_assertions` (`cargo build`, and the binary that
//! `cargo nextest run` / `cargo test` build for the integration tests); a release binary does
//! not contain it, so no setting can turn these routes on there (docs/decisions.md).
//! Must never: be compiled into a release build, or do anything but what their names say.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::{HttpError, Request, Response, Router};

/// The query parameter `name` as a number: `default` when absent or not a number, at most `max`.
fn number(req: &Request<'_>, name: &str, default: u64, max: u64) -> Result<u64, HttpError> {
    Ok(crate::http::parse::last(&req.query()?, name).and_then(|v| v.parse().ok()).unwrap_or(default).min(max))
}

pub fn routes(r: &mut Router) {
    // Reads the whole body (within the JSON limit) and reports its length and sha256; with
    // `?sleep_ms=` it first sleeps that long (at most 10 s), as a handler that waits on the
    // database before it reads its body.
    r.add("POST", "/__test/echo", |req| {
        let ms = number(req, "sleep_ms", 0, 10_000)?;
        std::thread::sleep(Duration::from_millis(ms));
        let body = req.body_bytes()?;
        let digest = Sha256::digest(&body);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Response::json(200, &json!({ "length": body.len(), "sha256": hex })))
    });
    r.add("GET", "/__test/panic", |_| -> Result<Response, HttpError> { panic!("test panic") });
    // A 503 that holds the connection's next request back for `ms` milliseconds.
    r.add("GET", "/__test/hold", |req| {
        let ms = number(req, "ms", 1000, 5000)?;
        Err(HttpError::new(503, "held").header("retry-after", "1").hold(Duration::from_millis(ms)))
    });
    // An upgrade whose closure panics (after the 101 is written): the worker must live on.
    r.add("GET", "/__test/panic_upgrade", |_| {
        Ok(Response::upgrade(Vec::new(), Box::new(|_, _| panic!("test panic in an upgrade"))))
    });
    // An in-memory body of `kb` KiB (at most 64 MiB), for clients that do not read it.
    r.add("GET", "/__test/big", |req| {
        let kb = number(req, "kb", 1024, 65536)? as usize;
        Ok(Response::bytes(200, "application/octet-stream", vec![b'b'; kb * 1024]))
    });
    // A streamed body of `kb` KiB (chunked, produced while it is sent).
    r.add("GET", "/__test/stream", |req| {
        let kb = number(req, "kb", 1024, 1 << 20)? as usize;
        Ok(Response::new(200).with_body(crate::http::Body::Stream(Box::new(move |w| {
            let block = [b's'; 1024];
            for _ in 0..kb {
                w.write_all(&block)?;
            }
            Ok(())
        }))))
    });
    r.add("GET", "/__test/sleep", |req| {
        let ms = number(req, "ms", 100, 10_000)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(Response::json(200, &json!({ "slept_ms": ms })))
    });
}
