//! Serving one file from disk: `ETag`, `Last-Modified`, `If-None-Match` / `If-Modified-Since`
//! (304), a single `Range` (206, or 416 when unsatisfiable; under `If-Range` only for this very
//! version), streamed without loading the file.
//!
//! The header logic (`parse_range`, `etag_matches`, `if_range_holds`) is plain functions; `serve` does the I/O.
//! It knows nothing of which files may be served: the caller decides the path (and must have
//! refused anything outside its root before calling). Must never: follow a symlink at the last
//! path component (opened with `O_NOFOLLOW`), serve anything but a regular file, or read the
//! whole file into memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::response::{Body, Response};
use super::router::Request;

/// The outcome of a `Range` header against a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable single range: send the whole file (also for multiple ranges, which we do not
    /// serve as multipart/byteranges — RFC 9110 allows ignoring `Range`).
    Full,
    /// Bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Parse `bytes=a-b`, `bytes=a-`, `bytes=-n`.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(h) = header else { return RangeAnswer::Full };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return RangeAnswer::Full };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAnswer::Full };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let Some(n) = num(b) else { return RangeAnswer::Full };
            if n == 0 || size == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial { start: size.saturating_sub(n), end: size - 1 }
        }
        (false, _) => {
            let Some(start) = num(a) else { return RangeAnswer::Full };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match num(b) {
                    Some(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial { start, end }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, `*` matches anything).
pub fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.split(',').any(|t| t.trim() == "*" || bare(t) == bare(etag))
}

/// Whether `Range` applies under an `If-Range` header (RFC 9110 13.1.5): no header, or one that
/// names this very file, an entity tag by strong comparison (a weak one never matches) or exactly
/// its `Last-Modified`. Otherwise the client's copy is of another version: send the whole file.
pub fn if_range_holds(header: Option<&str>, etag: &str, last_modified: &str) -> bool {
    match header.map(str::trim) {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => v == etag,
        Some(v) => v == last_modified,
    }
}

/// Serve the regular file at `path`. `Ok(None)` when there is no such regular file (the caller
/// answers 404). `extra` headers are added to every answer (e.g. `nosniff`).
pub fn serve(
    req: &Request<'_>,
    path: &Path,
    content_type: &str,
    extra: &[(&'static str, &'static str)],
) -> io::Result<Option<Response>> {
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound) || e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let size = meta.len();
    let mtime = UNIX_EPOCH + Duration::from_secs(meta.mtime().max(0) as u64);
    let etag = format!("\"{:x}-{:x}-{:x}\"", size, meta.mtime(), meta.mtime_nsec());
    let last_modified = crate::util::time::http_date(mtime);

    let mut base = Response::new(200)
        .header("etag", etag.clone())
        .header("last-modified", last_modified.clone())
        .header("accept-ranges", "bytes");
    for (k, v) in extra {
        base = base.header(*k, *v);
    }

    let not_modified = match req.header("if-none-match") {
        Some(inm) => etag_matches(inm, &etag),
        None => req.header("if-modified-since").is_some_and(|ims| ims.trim() == last_modified),
    };
    if not_modified {
        base.status = 304;
        return Ok(Some(base));
    }

    let base = base.header("content-type", content_type);
    let range = req.header("range").filter(|_| if_range_holds(req.header("if-range"), &etag, &last_modified));
    match parse_range(range, size) {
        RangeAnswer::Full => Ok(Some(base.with_body(Body::File { file, offset: 0, len: size }))),
        RangeAnswer::Partial { start, end } => {
            let len = end - start + 1;
            let mut resp = base.header("content-range", format!("bytes {start}-{end}/{size}")).with_body(Body::File {
                file,
                offset: start,
                len,
            });
            resp.status = 206;
            Ok(Some(resp))
        }
        RangeAnswer::Unsatisfiable => {
            let mut resp =
                Response::detail(416, "Range Not Satisfiable").header("content-range", format!("bytes */{size}"));
            for (k, v) in extra {
                resp = resp.header(*k, *v);
            }
            Ok(Some(resp))
        }
    }
}

/// Open a file for reading without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_range_needs_this_very_file() {
        let (etag, date) = ("\"a-b-c\"", "Tue, 01 Dec 2026 10:00:00 GMT");
        assert!(if_range_holds(None, etag, date));
        assert!(if_range_holds(Some(" \"a-b-c\" "), etag, date));
        assert!(if_range_holds(Some(date), etag, date));
        for other in ["\"nope\"", "W/\"a-b-c\"", "Tue, 01 Dec 2026 10:00:01 GMT", "garbage"] {
            assert!(!if_range_holds(Some(other), etag, date), "{other}");
        }
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(parse_range(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(parse_range(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Partial { start: 8, end: 9 });
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-3"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Full);
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("W/\"a\", \"b\"", "\"a\""));
        assert!(etag_matches("*", "\"zz\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }
}
