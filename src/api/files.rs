//! Files: the contract's "Files" section — uploads (`POST /api/upload`, `/api/upload/multiple`),
//! the listing, deletion, and `GET`/`HEAD /uploads/{category}/{name}`.
//!
//! An upload streams: multipart parser (`http::multipart`) → a temp file in `UPLOAD_DIR/.tmp/`
//! (hashed and counted as it is written) → `fsync` → an intent in `DATA_DIR/intents/`
//! (`db::intent`, durable) → atomic `rename` into the category folder → the record in the
//! database → the intent removed; an intent a crash left is resolved at the next start (record
//! found: the file stays; none: it goes). Nothing of a file is held in memory. A part that crosses
//! `MAX_UPLOAD_MB` stops the upload at once (413); a client that goes away, a bad part, or a
//! database failure removes every file of the request (all or nothing). While the database is
//! away, the records go to the spool (`db::spool`, durable before the `201`) instead, and into
//! the database when it is back; a spool that cannot be written answers 503 and removes the files.
//! Must never: serve or delete anything outside `UPLOAD_DIR/<category>/`, derive a stored name
//! from the client's file name, leave a temp file behind, or move a file into a category folder
//! before its intent is durable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::openapi::{schema_ref, Op};
use super::pages::content_type_for;
use super::App;
use crate::db::files::{self as records, is_plain_name, FileRecord};
use crate::db::intent;
use crate::http::multipart::{self, Event, MultipartError};
use crate::http::router::issue;
use crate::http::{static_file, BodyError, HttpError, Request, Response, Router};
use crate::util::hash_pipe::HashPipe;
use crate::{error, warn};

/// The categories of the contract (`db::files::CATEGORIES`), and the extensions of the first two.
pub use crate::db::files::CATEGORIES;
const IMAGES: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tiff", "svg"];
const DOCUMENTS: &[&str] =
    &["txt", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "hwp", "hwpx", "pdf", "rtf", "odt", "ods", "odp"];

/// Headers on every answer from `/uploads/`: never sniff, never run as a page.
const SERVE_HEADERS: &[(&str, &str)] = &[("x-content-type-options", "nosniff"), ("content-security-policy", "sandbox")];

/// Extra body bytes allowed beyond the files themselves (part heads, boundaries, small fields).
const FORM_OVERHEAD: u64 = 1024 * 1024;

/// The lower-cased extension of a file name, if it has a plain one (letters and digits, at most
/// 16); `None` for names without one (`README`, `.bashrc`, `a.`).
pub fn extension(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() || ext.len() > 16 || !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(ext.to_ascii_lowercase())
}

/// The category of a file name, by extension, case-insensitively.
pub fn category_for(name: &str) -> &'static str {
    match extension(name) {
        Some(e) if IMAGES.contains(&e.as_str()) => "images",
        Some(e) if DOCUMENTS.contains(&e.as_str()) => "documents",
        _ => "files",
    }
}

/// Longest client file name kept, in characters.
const NAME_MAX: usize = 255;

/// The last path component of a client's file name (browsers on Windows used to send the full
/// path), trimmed, at most [`NAME_MAX`] characters, a longer one cut in its stem so that its
/// extension (and so its category and stored name) is kept; "upload" when nothing is left.
pub fn client_basename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    let base: String = base.chars().filter(|c| !c.is_control()).collect();
    let base = if base.chars().count() <= NAME_MAX {
        base
    } else if let (Some(_), Some((stem, ext))) = (extension(&base), base.rsplit_once('.')) {
        // `extension` vouches for `ext`: at most 16 ASCII letters and digits.
        let stem: String = stem.chars().take(NAME_MAX - 1 - ext.len()).collect();
        format!("{stem}.{ext}")
    } else {
        base.chars().take(NAME_MAX).collect()
    };
    if base.is_empty() || base == "." || base == ".." {
        "upload".to_string()
    } else {
        base
    }
}

/// A fresh stored name: 128 random bits in hex, plus the lower-cased extension.
fn stored_name(original: &str) -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(match extension(original) {
        Some(ext) => format!("{hex}.{ext}"),
        None => hex,
    })
}

/// A file being received or received: its temp path is removed on drop unless it was moved.
struct Staged {
    tmp: PathBuf,
    file: Option<File>,
    hasher: Option<HashPipe>,
    record: FileRecord,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Bytes between two writeback kicks (4 MiB measured a little faster than 8 on this machine).
const WRITEBACK_STEP: u64 = 4 * 1024 * 1024;

/// When a write crosses a `WRITEBACK_STEP` boundary, ask the kernel to start writing the step
/// just completed to disk (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts the writeback and
/// returns; it neither waits nor makes anything durable — the `fsync` at the end still does).
/// The final `fsync` then has little left to flush (`scripts/bench.sh files`: 0.51 of `dd`
/// before, 0.70–0.82 after; BENCHMARKS.md). A failure here only loses the head start.
fn start_writeback(file: &File, before: u64, after: u64) {
    if before / WRITEBACK_STEP == after / WRITEBACK_STEP {
        return;
    }
    use std::os::fd::AsRawFd;
    let end = after / WRITEBACK_STEP * WRITEBACK_STEP;
    let (Ok(offset), Ok(len)) = (i64::try_from(end - WRITEBACK_STEP), i64::try_from(WRITEBACK_STEP)) else { return };
    // SAFETY: a plain syscall on a file descriptor we own, with in-range offsets.
    unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
}

fn too_large(limit: u64) -> MultipartError {
    MultipartError::Io(io::Error::other(BodyError::TooLarge { limit }))
}

/// The one 413 of both upload routes, whichever limit the request crossed first (the body's,
/// checked by the connection layer, or one file's): it states `MAX_UPLOAD_MB` in bytes.
fn too_large_detail(per_file: u64) -> String {
    format!("File too large (limit {per_file} bytes per file)")
}

/// Receive the file parts named `field` of a multipart body into temp files.
fn receive(
    app: &App,
    req: &mut Request<'_>,
    field: &str,
    max_files: usize,
    uploader: i64,
) -> Result<Vec<Staged>, HttpError> {
    let missing = || HttpError::validation_list(vec![issue(&["body", field], "Field required", "missing")]);
    let Some(boundary) = req.header("content-type").and_then(multipart::boundary_from_content_type) else {
        return Err(missing());
    };
    let upload_dir = &app.config.upload_dir;
    let tmp_dir = upload_dir.join(".tmp");
    fs::create_dir_all(&tmp_dir).map_err(|e| storage_error("create the upload temp folder", &e))?;
    let limit = app.config.max_upload_bytes;
    let limits = multipart::Limits { max_parts: max_files + 32, ..multipart::Limits::default() };

    let mut done: Vec<Staged> = Vec::new();
    let mut current: Option<Staged> = None;
    let result = multipart::parse_reader(&mut req.body, &boundary, limits, |event| {
        match event {
            Event::Part(head) => {
                current = None;
                // A browser sends `filename=""` when no file was chosen: not a file.
                let Some(filename) = head.filename.filter(|f| head.name == field && !f.is_empty()) else {
                    return Ok(());
                };
                if done.len() >= max_files {
                    return Err(MultipartError::Sink(Box::new(TooManyFiles)));
                }
                let original = client_basename(&filename);
                let name = stored_name(&original).map_err(MultipartError::Io)?;
                let tmp = tmp_dir.join(crate::util::tmp_owner::temp_name(&name));
                let file = File::options().write(true).create_new(true).open(&tmp).map_err(MultipartError::Io)?;
                let content_type = head
                    .content_type
                    .map(|ct| ct.trim().to_string())
                    .filter(|ct| {
                        !ct.is_empty() && ct.len() <= 255 && ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                    })
                    .unwrap_or_else(|| content_type_for(&original).to_string());
                current = Some(Staged {
                    tmp,
                    file: Some(file),
                    hasher: Some(HashPipe::new().map_err(MultipartError::Io)?),
                    record: FileRecord {
                        category: category_for(&original).to_string(),
                        filename: name,
                        original_filename: original,
                        size: 0,
                        content_type,
                        sha256: String::new(),
                        uploader_id: Some(uploader),
                        uploaded_at: SystemTime::now(),
                    },
                });
            }
            Event::Data(bytes) => {
                if let Some(s) = current.as_mut() {
                    s.record.size += bytes.len() as i64;
                    if s.record.size as u64 > limit {
                        return Err(too_large(limit));
                    }
                    let file = s.file.as_mut().expect("open while receiving");
                    file.write_all(bytes).map_err(MultipartError::Io)?;
                    start_writeback(file, s.record.size as u64 - bytes.len() as u64, s.record.size as u64);
                    s.hasher.as_mut().expect("hashing while receiving").update(bytes);
                }
            }
            Event::PartEnd => {
                if let Some(mut s) = current.take() {
                    let file = s.file.take().expect("open while receiving");
                    file.sync_all().map_err(MultipartError::Io)?;
                    let hasher = s.hasher.take().expect("hashing while receiving");
                    s.record.sha256 = hasher.finish().map_err(MultipartError::Io)?;
                    done.push(s);
                }
            }
        }
        Ok(())
    });
    drop(current);
    match result {
        Ok(()) if done.is_empty() => Err(missing()),
        Ok(()) => Ok(done),
        Err(e) => Err(multipart_error(e, field, max_files, limit)),
    }
}

/// More file parts than `MAX_UPLOAD_FILES`: a validation error, as FastAPI words a too-long list.
#[derive(Debug)]
struct TooManyFiles;

impl std::fmt::Display for TooManyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many files")
    }
}

impl std::error::Error for TooManyFiles {}

fn multipart_error(e: MultipartError, field: &str, max_files: usize, per_file: u64) -> HttpError {
    match e {
        // A second `file` part on the one-file route is refused rather than dropped (a user who
        // sent two files learns that one would not be kept).
        MultipartError::Sink(inner) if inner.is::<TooManyFiles>() && max_files == 1 => HttpError::validation(
            &["body", field],
            "Only one file part is accepted here; send several to /api/upload/multiple",
            "too_long",
        ),
        MultipartError::Sink(inner) if inner.is::<TooManyFiles>() => HttpError::validation(
            &["body", field],
            format!("List should have at most {max_files} items after validation"),
            "too_long",
        ),
        MultipartError::Io(io) => match BodyError::of(&io) {
            Some(BodyError::TooLarge { .. }) => HttpError::new(413, too_large_detail(per_file)),
            Some(b) => HttpError::from(b.clone()),
            None => storage_error("write the upload", &io),
        },
        MultipartError::TooManyParts => HttpError::new(413, "Too many parts in the form"),
        other => HttpError::new(400, capitalize(&other.to_string())),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn storage_error(what: &str, e: &io::Error) -> HttpError {
    error!("cannot {what}: {e}");
    HttpError::new(500, "Could not store the file")
}

/// Move staged files into their category folders and record them, all or nothing. The intent
/// (`db::intent`) is durable before the first rename and cleared once the records are (or the
/// files are removed again), so a crash in between leaves nothing a restart cannot decide.
fn commit(app: &App, staged: Vec<Staged>) -> Result<Vec<FileRecord>, HttpError> {
    let root = &app.config.upload_dir;
    let records: Vec<FileRecord> = staged.iter().map(|s| s.record.clone()).collect();
    let intents = app.db.intents();
    let intent = match intents.map(|i| i.write(&records)).transpose() {
        Ok(i) => i,
        Err(e) => return Err(storage_error("write the upload intent", &e)),
    };
    // Removes what was placed (durably), then the intent: the files are gone before it is.
    let undo = |placed: &[PathBuf], intent: Option<intent::Intent>| {
        for p in placed {
            let _ = fs::remove_file(p);
            if let Some(dir) = p.parent() {
                let _ = sync_dir(dir);
            }
        }
        if let (Some(i), Some(intent)) = (intents, intent) {
            i.clear(intent);
        }
    };
    intent::crash_point("before-rename");
    let mut placed: Vec<PathBuf> = Vec::new();
    for s in &staged {
        let dir = root.join(&s.record.category);
        let target = dir.join(&s.record.filename);
        let moved = fs::create_dir_all(&dir).and_then(|_| fs::rename(&s.tmp, &target)).and_then(|_| sync_dir(&dir));
        if let Err(e) = moved {
            undo(&placed, intent);
            return Err(storage_error("move the upload into place", &e));
        }
        placed.push(target);
    }
    intent::crash_point("after-rename");
    let saved = app.db.conn().and_then(|mut c| records::insert_all(&mut c, &records));
    let durable = match saved {
        Ok(()) => Ok(()),
        // The database is away (known down, or lost on the way: the insert may or may not have
        // committed; replay is idempotent either way): the record goes to the spool, on disk
        // before the answer, and into the database when it is back.
        Err(e) if e.is_unavailable() && app.db.spool().is_some() => {
            app.db.saw(e);
            let spool = app.db.spool().expect("checked above");
            spool.append(&records).map_err(|io| {
                error!("cannot write the upload spool ({}): {io}", spool.path().display());
                crate::auth::db_unavailable()
            })
        }
        Err(e) => Err(app.db_err(e)),
    };
    match durable {
        Ok(()) => {
            intent::crash_point("after-record");
            if let (Some(i), Some(intent)) = (intents, intent) {
                i.clear(intent);
            }
            Ok(records)
        }
        Err(e) => {
            undo(&placed, intent);
            Err(e)
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// At start-up: claim this process's temp-file tag and remove what dead processes left
/// (see `util::tmp_owner`).
pub fn sweep_temp(upload_dir: &Path) -> std::io::Result<()> {
    crate::util::tmp_owner::claim(&upload_dir.join(".tmp"))
}

/// At exit: remove this process's temp files (uploads interrupted by the end of the shutdown
/// grace).
pub fn remove_own_temp(upload_dir: &Path) {
    crate::util::tmp_owner::remove_own(&upload_dir.join(".tmp"));
}

pub fn routes(r: &mut Router, app: &Arc<App>) {
    let max = app.config.max_upload_bytes;
    let max_files = app.config.max_upload_files;
    let a = app.clone();
    r.add("POST", "/api/upload", move |req| {
        let user = a.auth.current_user(&a.db, req)?;
        let staged = receive(&a, req, "file", 1, user.id)?;
        let mut saved = commit(&a, staged)?;
        Ok(user.mark(Response::json(201, &saved.remove(0).to_json())))
    })
    .limit(max.saturating_add(FORM_OVERHEAD))
    .too_large_detail(too_large_detail(max))
    .doc(
        Op::new("files", "Upload one file (multipart field `file`)", "upload_file")
            .body(&[("multipart/form-data", schema_ref("UploadOne"))])
            .secured()
            .json(201, "The stored file", schema_ref("FileRecord"))
            .errors(&[400, 401, 413, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("POST", "/api/upload/multiple", move |req| {
        let user = a.auth.current_user(&a.db, req)?;
        let staged = receive(&a, req, "files", max_files, user.id)?;
        let saved = commit(&a, staged)?;
        let files: Vec<Value> = saved.iter().map(FileRecord::to_json).collect();
        Ok(user.mark(Response::json(201, &json!({ "count": files.len(), "files": files }))))
    })
    .limit(max.saturating_mul(max_files as u64).saturating_add(FORM_OVERHEAD))
    .too_large_detail(too_large_detail(max))
    .doc(
        Op::new("files", "Upload several files (repeated multipart field `files`), all or nothing", "upload_files")
            .body(&[(
                "multipart/form-data",
                // Inline, so the document states this server's MAX_UPLOAD_FILES.
                json!({
                    "type": "object", "required": ["files"],
                    "properties": { "files": {
                        "type": "array", "minItems": 1, "maxItems": max_files,
                        "items": { "type": "string", "format": "binary" }
                    } }
                }),
            )])
            .secured()
            .json(201, "The stored files", schema_ref("FileList"))
            .errors(&[400, 401, 413, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/api/files", move |req| list(&a, req)).doc(
        Op::new("files", "List uploaded files, newest first", "list_files")
            .param("query", "category", false, json!({ "type": "string", "enum": CATEGORIES }))
            .param("query", "mine", false, json!({ "type": "boolean", "default": false }))
            .secured()
            .json(200, "Files", schema_ref("FileList"))
            .errors(&[401, 422, 503])
            .build(),
    );
    let a = app.clone();
    r.add("DELETE", "/api/files/{filename}", move |req| delete(&a, req)).doc(
        Op::new("files", "Delete a file (its uploader or a superuser)", "delete_file")
            .secured()
            .json(200, "Deleted", schema_ref("FileDeleted"))
            .errors(&[400, 401, 403, 404, 503])
            .build(),
    );
    let a = app.clone();
    r.add("GET", "/uploads/{category}/{name}", move |req| serve(&a, req)).doc(
        Op::new("files", "Download an uploaded file (Range, ETag and HEAD supported)", "get_upload")
            .param("path", "category", true, json!({ "type": "string", "enum": CATEGORIES }))
            .bytes(200, "The file's bytes")
            .bytes(206, "The requested range")
            .bytes(304, "Not modified")
            .errors(&[404, 416])
            .build(),
    );
}

fn list(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let caller = app.auth.current_user(&app.db, req)?;
    let pairs = req.query()?;
    let category = crate::http::parse::last(&pairs, "category");
    if let Some(c) = category {
        if !CATEGORIES.contains(&c) {
            return Err(HttpError::validation(
                &["query", "category"],
                "Input should be 'images', 'documents' or 'files'",
                "enum",
            ));
        }
    }
    let mine = match crate::http::parse::last(&pairs, "mine") {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| {
            HttpError::validation(
                &["query", "mine"],
                "Input should be a valid boolean, unable to interpret input",
                "bool_parsing",
            )
        })?,
    };
    let mut c = app.conn()?;
    let found = records::list(&mut c, category, mine.then_some(caller.id)).map_err(|e| app.db_err(e))?;
    let files: Vec<Value> = found.iter().map(FileRecord::to_json).collect();
    Ok(Response::json(200, &json!({ "count": files.len(), "files": files })))
}

/// A query boolean as FastAPI (pydantic) reads one.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

fn delete(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let name = req.param("filename").to_string();
    let caller = app.auth.current_user(&app.db, req)?;
    // NUL (which PostgreSQL refuses in text) or any control character cannot be a stored name.
    if name.contains(['/', '\\']) || name.contains("..") || name.chars().any(char::is_control) {
        return Err(HttpError::new(400, "Invalid filename"));
    }
    let mut c = app.conn()?;
    let record = records::by_filename(&mut c, &name).map_err(|e| app.db_err(e))?;
    let Some(record) = record else { return Err(HttpError::new(404, "File not found")) };
    if !caller.is_superuser && record.uploader_id != Some(caller.id) {
        return Err(HttpError::new(403, "Only the uploader or a superuser may delete this file"));
    }
    // Two deletes of one file at once: both found the record, only one removes it.
    if !records::delete(&mut c, &name).map_err(|e| app.db_err(e))? {
        return Err(HttpError::new(404, "File not found"));
    }
    let path = app.config.upload_dir.join(&record.category).join(&record.filename);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!("record of {} deleted but the file could not be: {e}", record.filename);
        }
    }
    Ok(Response::json(200, &json!({ "status": "deleted", "filename": name })))
}

fn serve(app: &App, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let not_found = || HttpError::new(404, "Not Found").header("x-content-type-options", "nosniff");
    let category = req.param("category");
    let name = req.param("name");
    if !CATEGORIES.contains(&category) || !is_plain_name(name) {
        return Err(not_found());
    }
    let root = &app.config.upload_dir;
    let path = root.join(category).join(name);
    // The category folder itself must be the real one, not a symlink planted to lead elsewhere.
    let inside = match (fs::canonicalize(root), fs::canonicalize(root.join(category))) {
        (Ok(r), Ok(dir)) => dir == r.join(category),
        _ => false,
    };
    if !inside {
        return Err(not_found());
    }
    match static_file::serve(req, &path, content_type_for(name), SERVE_HEADERS) {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(not_found()),
        Err(e) => Err(storage_error("read an upload", &e)),
    }
}

pub fn schemas() -> Value {
    json!({
        "FileRecord": {
            "type": "object",
            "required": ["filename", "original_filename", "category", "size", "content_type", "url", "uploaded_at", "uploaded_by"],
            "properties": {
                "filename": { "type": "string" },
                "original_filename": { "type": "string" },
                "category": { "type": "string", "enum": CATEGORIES },
                "size": { "type": "integer", "minimum": 0 },
                "content_type": { "type": "string" },
                "url": { "type": "string" },
                "uploaded_at": { "type": "string", "format": "date-time" },
                "uploaded_by": {
                    "anyOf": [{ "type": "integer" }, { "type": "null" }],
                    "description": "the uploader's user id (null once that account is deleted)"
                }
            }
        },
        "FileList": {
            "type": "object", "required": ["files", "count"],
            "properties": { "files": { "type": "array", "items": schema_ref("FileRecord") }, "count": { "type": "integer" } }
        },
        "FileDeleted": {
            "type": "object", "required": ["status", "filename"],
            "properties": { "status": { "type": "string", "enum": ["deleted"] }, "filename": { "type": "string" } }
        },
        "UploadOne": {
            "type": "object", "required": ["file"],
            "properties": { "file": { "type": "string", "format": "binary" } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_by_extension() {
        assert_eq!(category_for("a.JPG"), "images");
        assert_eq!(category_for("x.tar.Svg"), "images");
        assert_eq!(category_for("report.HWPX"), "documents");
        assert_eq!(category_for("notes.txt"), "documents");
        assert_eq!(category_for("archive.zip"), "files");
        assert_eq!(category_for("README"), "files");
        assert_eq!(category_for(".bashrc"), "files");
        assert_eq!(category_for("trailing."), "files");
    }

    #[test]
    fn names() {
        assert_eq!(client_basename("C:\\Users\\me\\photo.PNG"), "photo.PNG");
        assert_eq!(client_basename("../../etc/passwd"), "passwd");
        assert_eq!(client_basename("   "), "upload");
        assert_eq!(client_basename("dir/.."), "upload");
        // Too long: the stem is cut, the extension (and so the category) kept.
        let long = client_basename(&format!("{}.png", "a".repeat(252)));
        assert_eq!((long.chars().count(), category_for(&long)), (255, "images"));
        assert!(long.ends_with("a.png"), "{long}");
        let long = client_basename(&format!("{}.PDF", "b".repeat(300)));
        assert_eq!((long.chars().count(), extension(&long).as_deref()), (255, Some("pdf")));
        let long = client_basename(&"é".repeat(300));
        assert_eq!(long.chars().count(), 255);
        assert_eq!(client_basename(&format!("{}.png", "c".repeat(251))).chars().count(), 255, "255 exactly is kept");
        let n = stored_name("Photo.JPEG").unwrap();
        assert!(n.ends_with(".jpeg") && n.len() == 32 + 5, "{n}");
        assert_ne!(stored_name("a.png").unwrap(), stored_name("a.png").unwrap());
        assert_eq!(stored_name("noext").unwrap().len(), 32);
        assert!(is_plain_name("abc.png"));
        for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "a..b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
