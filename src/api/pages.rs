//! Files from `public/`, embedded in the binary at build time (see `build.rs`): the WebSocket
//! test pages at the root (`/socket_test.html`), everything under `/static/...` except the
//! database GUI's page (`public/dbgui/`), which only `adcluster db-gui` serves, on its own port.
//! Must never: read `public/` from disk at run time (the binary alone must serve them).

use crate::http::{HttpError, Response, Router};

include!(concat!(env!("OUT_DIR"), "/public_files.rs"));

/// The embedded file at `path` (relative to `public/`).
pub fn find(path: &str) -> Option<&'static [u8]> {
    PUBLIC_FILES.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

/// `Content-Type` by file extension (case-insensitive); `application/octet-stream` otherwise.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "ico" => "image/x-icon",
        "pdf" => "application/pdf",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "rtf" => "application/rtf",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        "odp" => "application/vnd.oasis.opendocument.presentation",
        "hwp" => "application/x-hwp",
        "hwpx" => "application/hwp+zip",
        "zip" => "application/zip",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        _ => "application/octet-stream",
    }
}

/// Files of `public/` that belong to another application (`db-gui`), not to the API server.
const NOT_OURS: &[&str] = &["dbgui/"];

fn serve(path: &str) -> Result<Response, HttpError> {
    let theirs = NOT_OURS.iter().any(|p| path.starts_with(p));
    let bytes = find(path).filter(|_| !theirs).ok_or_else(|| HttpError::new(404, "Not Found"))?;
    Ok(Response::static_bytes(200, content_type_for(path), bytes).header("cache-control", "no-cache"))
}

pub fn routes(r: &mut Router) {
    // Top-level HTML pages get their own routes, so an unknown path stays a plain 404/405.
    for (path, _) in PUBLIC_FILES.iter().filter(|(p, _)| !p.contains('/') && p.ends_with(".html")) {
        let pattern: &'static str = Box::leak(format!("/{path}").into_boxed_str());
        r.add("GET", pattern, move |_| serve(path)).doc(serde_json::json!({
            "tags": ["pages"], "summary": format!("The {path} page"),
            "responses": { "200": { "description": "HTML page", "content": { "text/html": {} } } }
        }));
    }
    r.add("GET", "/static/{file:path}", |req| serve(req.param("file")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("a.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("x.tar.gz"), "application/octet-stream");
        assert_eq!(content_type_for("noext"), "application/octet-stream");
        assert_eq!(content_type_for("p.JPEG"), "image/jpeg");
    }

    #[test]
    fn the_db_gui_page_is_not_served_by_the_api_server() {
        assert!(find("dbgui/index.html").is_some(), "the page moved: update NOT_OURS");
        assert_eq!(serve("dbgui/index.html").err().map(|e| e.status), Some(404));
        assert!(serve("socket_test.html").is_ok());
    }
}
