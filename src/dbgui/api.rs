//! The GUI's routes: the page, its assets, and the JSON API. `build_router` lists them all.
//!
//! Access: `GET /?token=<token>` sets the session cookie (`HttpOnly`, `SameSite=Strict`);
//! every `/api/...` route needs that cookie or `Authorization: Bearer <token>` (else `401`),
//! and every `POST`/`DELETE` whose `Origin` (or `Sec-Fetch-Site`) says another site is refused
//! with `403` before anything else happens. Secrets are compared in constant time.
//!
//! Must never: answer an `/api` route without checking both, build SQL from a table name without
//! `quote_ident`, or log a statement's text at `info` (the request log shows paths only).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::export::{Export, Format};
use super::query::{self, Session, SqlError};
use super::store::HistoryEntry;
use super::{ct_eq, Gui, COOKIE, DEFAULT_PAGE_LIMIT, DEFAULT_QUERY_LIMIT};
use crate::db::pool::quote_ident;
use crate::http::{Body, HttpError, Request, Response, Router};

static PAGE: &[u8] = include_bytes!("../../public/dbgui/index.html");
static SCRIPT: &[u8] = include_bytes!("../../public/dbgui/dbgui.js");
static STYLE: &[u8] = include_bytes!("../../public/dbgui/dbgui.css");

/// The page may load only its own script and style and talk only to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

type Handler = fn(&Arc<Gui>, &mut Request<'_>) -> Result<Response, HttpError>;

/// The route table of the GUI.
pub fn build_router(gui: Arc<Gui>, body_limit: u64) -> Router {
    let mut r = Router::new(body_limit);
    {
        let gui = gui.clone();
        r.add("GET", "/", move |req| page(&gui, req));
    }
    r.add("GET", "/dbgui.js", |_| Ok(asset("text/javascript; charset=utf-8", SCRIPT)));
    r.add("GET", "/dbgui.css", |_| Ok(asset("text/css; charset=utf-8", STYLE)));
    let api: &[(&'static str, &'static str, Handler)] = &[
        ("GET", "/api/info", info),
        ("GET", "/api/tables", tables),
        ("GET", "/api/tables/{schema}/{name}", table),
        ("POST", "/api/query", run_query),
        ("POST", "/api/export", export),
        ("POST", "/api/cancel", cancel),
        ("GET", "/api/saved", saved_list),
        ("POST", "/api/saved", saved_add),
        ("DELETE", "/api/saved/{id}", saved_delete),
        ("GET", "/api/history", history),
    ];
    for &(method, pattern, handler) in api {
        let gui = gui.clone();
        r.add(method, pattern, move |req| {
            guard(&gui, req)?;
            handler(&gui, req).map(|resp| resp.header("cache-control", "no-store"))
        });
    }
    r
}

fn asset(content_type: &str, bytes: &'static [u8]) -> Response {
    Response::static_bytes(200, content_type, bytes)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
}

/// CSRF first (`403`), then the token (`401`).
fn guard(gui: &Gui, req: &Request<'_>) -> Result<(), HttpError> {
    if matches!(req.method(), "POST" | "DELETE" | "PUT" | "PATCH") && cross_site(req) {
        return Err(HttpError::new(403, "Cross-site request refused"));
    }
    if !authorized(gui, req) {
        return Err(HttpError::new(
            401,
            "Not authenticated: open the link `adcluster db-gui` printed, or send Authorization: Bearer <token>",
        )
        .header("www-authenticate", "Bearer"));
    }
    Ok(())
}

/// Whether the request says it comes from a page of another site.
pub fn cross_site(req: &Request<'_>) -> bool {
    if req.header("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    match req.header("origin") {
        None => false,
        Some(origin) => {
            let host = req.header("host").unwrap_or("");
            !origin.trim().eq_ignore_ascii_case(&format!("http://{host}"))
        }
    }
}

fn authorized(gui: &Gui, req: &Request<'_>) -> bool {
    if let Some(auth) = req.header("authorization") {
        if let Some((scheme, token)) = auth.trim().split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && ct_eq(token.trim(), &gui.token) {
                return true;
            }
        }
    }
    req.head
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && ct_eq(value, &gui.session))
}

/// `GET /`: the page; with `?token=` the right token also sets the session cookie.
fn page(gui: &Gui, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let token = crate::http::parse::last(&req.query()?, "token").map(str::to_string);
    let mut resp = match &token {
        Some(t) if !ct_eq(t, &gui.token) => Response::bytes(
            401,
            "text/html; charset=utf-8",
            b"<!doctype html><title>db-gui: wrong token</title><p>This link's token is not valid (the token changes \
              each time <code>adcluster db-gui</code> starts unless DB_GUI_TOKEN is set). Open the link it printed last."
                .to_vec(),
        ),
        _ => Response::static_bytes(200, "text/html; charset=utf-8", PAGE),
    };
    if token.as_deref().is_some_and(|t| ct_eq(t, &gui.token)) {
        resp = resp.header("set-cookie", format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", gui.session));
    }
    Ok(resp
        .header("content-security-policy", CSP)
        .header("referrer-policy", "no-referrer")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("cache-control", "no-store"))
}

/// A statement's error as a response: `400` with PostgreSQL's message (and its SQLSTATE,
/// position and hint), `503` when the database cannot be reached.
fn sql_error_response(e: &SqlError) -> Response {
    if e.unavailable {
        return HttpError::new(503, "Database unavailable").header("retry-after", "5").into_response();
    }
    Response::json(400, &e.to_json())
}

fn json_body(req: &mut Request<'_>) -> Result<Value, HttpError> {
    let bytes = req.body_bytes()?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| HttpError::validation(&["body"], format!("JSON decode error: {e}"), "json_invalid"))?;
    if !v.is_object() {
        return Err(HttpError::validation(&["body"], "Input should be a valid dictionary", "dict_type"));
    }
    Ok(v)
}

fn sql_field(body: &Value) -> Result<String, HttpError> {
    match body.get("sql") {
        None | Some(Value::Null) => Err(HttpError::validation(&["body", "sql"], "Field required", "missing")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(HttpError::validation(&["body", "sql"], "sql must not be empty", "value_error"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(HttpError::validation(&["body", "sql"], "Input should be a valid string", "string_type")),
    }
}

/// An integer of at least `min` (else `422`), or `default` when absent; above `cap` it is
/// lowered to `cap` (a row limit past `DB_GUI_MAX_ROWS` gets that many rows and `truncated`).
fn bounded(v: Option<&Value>, loc: &[&str], default: usize, min: i64, cap: usize) -> Result<usize, HttpError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| HttpError::validation(loc, "Input should be a valid integer", "int_parsing"))?,
    };
    if n < min {
        return Err(HttpError::validation(
            loc,
            format!("Input should be greater than or equal to {min}"),
            "greater_than_equal",
        ));
    }
    Ok((n as u64).min(cap as u64) as usize)
}

fn record(gui: &Gui, sql: &str, kind: &'static str, started: Instant, rows: Option<u64>, error: Option<&str>) {
    crate::debug!("db-gui {kind}: {sql}");
    gui.history.push(HistoryEntry {
        sql: sql.to_string(),
        at: crate::util::time::rfc3339(std::time::SystemTime::now()),
        elapsed_ms: (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        row_count: rows,
        error: error.map(str::to_string),
        kind,
    });
}

fn info(gui: &Arc<Gui>, _req: &mut Request<'_>) -> Result<Response, HttpError> {
    let version = Session::begin(&gui.pool, gui.mode)
        .and_then(|mut s| s.catalog("SELECT current_setting('server_version')", &[]))
        .ok()
        .and_then(|rows| rows.first().map(|r| r.get::<_, String>(0)));
    Ok(Response::json(
        200,
        &json!({
            "read_only": !gui.mode.allow_writes,
            "database": gui.database,
            "server_version": version,
            "timeout_secs": gui.mode.timeout.as_secs_f64(),
            "max_rows": gui.max_rows,
            "default_limit": DEFAULT_QUERY_LIMIT.min(gui.max_rows),
        }),
    ))
}

const KINDS: &str = "('r','p','v','m','f')";

fn kind_name(k: &str) -> &'static str {
    match k {
        "r" => "table",
        "p" => "partitioned table",
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        _ => "other",
    }
}

/// Rows of a relation: exact (`count(*)`) for tables, partitioned tables and materialized views
/// whose data is at most `EXACT_COUNT_MAX_BYTES`, else PostgreSQL's estimate; `(rows, exact)`.
/// Views and foreign tables are not counted (that could run any query for as long as the
/// timeout allows): `None`.
fn row_count(
    s: &mut Session,
    quoted: &str,
    kind: &str,
    heap_bytes: i64,
    estimate: f64,
) -> Result<(Option<i64>, bool), SqlError> {
    if !matches!(kind, "r" | "m" | "p") {
        return Ok((None, false));
    }
    if heap_bytes <= query::EXACT_COUNT_MAX_BYTES {
        if let Some(n) = s.try_savepoint(|s| s.count(quoted))? {
            return Ok((Some(n), true));
        }
    }
    Ok((Some(estimate.max(0.0).round() as i64), false))
}

/// SQL for a relation's estimated rows and data size; a partitioned table's are its leaf
/// partitions' (its own are empty).
const ESTIMATE: &str = "CASE WHEN c.relkind = 'p' THEN \
       (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::float8 FROM pg_partition_tree(c.oid) t \
        JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf) ELSE c.reltuples::float8 END";
const HEAP: &str = "CASE WHEN c.relkind = 'p' THEN \
       (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)::int8 FROM pg_partition_tree(c.oid) t WHERE t.isleaf) \
       ELSE pg_relation_size(c.oid) END";
const TOTAL: &str = "CASE WHEN c.relkind = 'p' THEN \
       (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::int8 FROM pg_partition_tree(c.oid) t WHERE t.isleaf) \
       ELSE pg_total_relation_size(c.oid) END";

fn tables(gui: &Arc<Gui>, _req: &mut Request<'_>) -> Result<Response, HttpError> {
    let result = (|| -> Result<Vec<Value>, SqlError> {
        let mut s = Session::begin(&gui.pool, gui.mode)?;
        s.set_lock_timeout(1000)?;
        let rows = s.catalog(
            &format!(
                "SELECT n.nspname::text, c.relname::text, c.relkind::text, {ESTIMATE}, \
                        {TOTAL}, {HEAP} \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN {KINDS} AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
                 ORDER BY n.nspname, lower(c.relname::text), c.relname"
            ),
            &[],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let (count, exact) = row_count(&mut s, &quoted, &kind, r.get(5), r.get(3))?;
            out.push(json!({
                "schema": schema, "name": name, "kind": kind_name(&kind),
                "rows": count, "rows_exact": exact, "size_bytes": r.get::<_, i64>(4),
            }));
        }
        s.finish()?;
        Ok(out)
    })();
    match result {
        Ok(tables) => Ok(Response::json(200, &json!({ "tables": tables }))),
        Err(e) => Ok(sql_error_response(&e)),
    }
}

fn table(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let q = req.query()?;
    let get = |k: &str| crate::http::parse::last(&q, k).map(|v| Value::String(v.to_string()));
    let limit =
        bounded(get("limit").as_ref(), &["query", "limit"], DEFAULT_PAGE_LIMIT.min(gui.max_rows), 1, gui.max_rows)?;
    let offset = bounded(get("offset").as_ref(), &["query", "offset"], 0, 0, i64::MAX as usize)?;
    // `order=<column>&dir=asc|desc`: sort the page by one column (default: the primary key).
    let order_by = crate::http::parse::last(&q, "order").map(str::to_string);
    let desc = match crate::http::parse::last(&q, "dir") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(HttpError::validation(&["query", "dir"], "Input should be 'asc' or 'desc'", "enum")),
    };
    let (schema, name) = (req.param("schema").to_string(), req.param("name").to_string());
    let result = (|| -> Result<Option<Vec<u8>>, SqlError> {
        let mut s = Session::begin(&gui.pool, gui.mode)?;
        s.set_lock_timeout(1000)?;
        let found = s.catalog(
            &format!(
                "SELECT c.oid, c.relkind::text, {ESTIMATE}, {HEAP} \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN {KINDS}"
            ),
            &[&schema, &name],
        )?;
        let Some(rel) = found.first() else { return Ok(None) };
        let (oid, kind): (u32, String) = (rel.get(0), rel.get(1));
        let columns = s.catalog(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid), \
                    COALESCE(a.attnum = ANY (SELECT unnest(x.indkey) FROM pg_index x \
                                             WHERE x.indrelid = a.attrelid AND x.indisprimary), false) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )?;
        let indexes = s.catalog(
            "SELECT i.relname::text, pg_get_indexdef(i.oid), x.indisprimary, x.indisunique \
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1 ORDER BY i.relname",
            &[&oid],
        )?;
        let pk = s.catalog(
            "SELECT a.attname::text FROM pg_index x \
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) \
             WHERE x.indrelid = $1 AND x.indisprimary ORDER BY array_position(x.indkey::int2[], a.attnum)",
            &[&oid],
        )?;
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let order = if let Some(col) = &order_by {
            // Only a column of this table, and always quoted.
            if !columns.iter().any(|r| r.get::<_, String>(0) == *col) {
                return Err(SqlError {
                    code: Some("dbgui-order".into()),
                    ..SqlError::new(format!("no column {col:?} to order by"))
                });
            }
            format!(" ORDER BY {} {} NULLS LAST", quote_ident(col), if desc { "DESC" } else { "ASC" })
        } else if pk.is_empty() {
            String::new()
        } else {
            let cols: Vec<String> = pk.iter().map(|r| quote_ident(&r.get::<_, String>(0))).collect();
            format!(" ORDER BY {}", cols.join(", "))
        };
        let page = query::run(&mut s, &format!("SELECT * FROM {quoted}{order} LIMIT {limit} OFFSET {offset}"), limit)?;
        let (count, exact) = row_count(&mut s, &quoted, &kind, rel.get(3), rel.get(2))?;
        s.finish()?;
        let columns: Vec<Value> = columns
            .iter()
            .map(|r| {
                json!({"name": r.get::<_, String>(0), "type": r.get::<_, String>(1), "nullable": r.get::<_, bool>(2),
                       "default": r.get::<_, Option<String>>(3), "primary_key": r.get::<_, bool>(4)})
            })
            .collect();
        let indexes: Vec<Value> = indexes
            .iter()
            .map(|r| {
                json!({"name": r.get::<_, String>(0), "definition": r.get::<_, String>(1),
                       "primary": r.get::<_, bool>(2), "unique": r.get::<_, bool>(3)})
            })
            .collect();
        // The page's rows as a query result, plus the table's own fields; `row_count` is the
        // table's (the page is `rows`).
        let mut v: Value =
            serde_json::from_slice(&page.to_json_bytes(&[])).map_err(|e| SqlError::new(e.to_string()))?;
        let obj = v.as_object_mut().expect("an object");
        obj.insert("result_columns".into(), obj.get("columns").cloned().unwrap_or(Value::Null));
        obj.insert("schema".into(), json!(schema));
        obj.insert("name".into(), json!(name));
        obj.insert("kind".into(), json!(kind_name(&kind)));
        obj.insert("columns".into(), json!(columns));
        obj.insert("indexes".into(), json!(indexes));
        obj.insert("row_count".into(), json!(count));
        obj.insert("row_count_exact".into(), json!(exact));
        obj.insert("limit".into(), json!(limit));
        obj.insert("offset".into(), json!(offset));
        obj.insert("order".into(), json!(order_by));
        obj.insert("dir".into(), json!(if desc { "desc" } else { "asc" }));
        obj.remove("truncated");
        Ok(Some(serde_json::to_vec(&v).map_err(|e| SqlError::new(e.to_string()))?))
    })();
    match result {
        Ok(Some(body)) => Ok(Response::bytes(200, "application/json", body)),
        Ok(None) => Err(HttpError::new(404, "Table not found")),
        Err(e) if e.code.as_deref() == Some("dbgui-order") => {
            Err(HttpError::validation(&["query", "order"], e.message, "value_error"))
        }
        Err(e) => Ok(sql_error_response(&e)),
    }
}

/// The optional `request_id` of a query or export: what `POST /api/cancel` names it by.
fn request_id(body: &Value) -> Result<Option<String>, HttpError> {
    match body.get("request_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(Some(s.clone())),
        Some(_) => Err(HttpError::validation(
            &["body", "request_id"],
            "request_id must be a string of 1 to 64 bytes",
            "value_error",
        )),
    }
}

/// A statement that can be cancelled by its request id while it runs; unregistered when dropped.
struct Running {
    gui: Arc<Gui>,
    id: Option<String>,
}

impl Running {
    fn register(gui: &Arc<Gui>, id: Option<String>, session: &Session) -> Running {
        if let Some(id) = &id {
            super::lock(&gui.running).insert(id.clone(), session.cancel_token());
        }
        Running { gui: gui.clone(), id }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(id) = &self.id {
            super::lock(&self.gui.running).remove(id);
        }
    }
}

/// `POST /api/cancel {"request_id"}`: ask PostgreSQL to cancel that statement (as psql's Ctrl+C
/// does). `{"cancelled": false}` when nothing runs under that id.
fn cancel(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let body = json_body(req)?;
    let id = request_id(&body)?
        .ok_or_else(|| HttpError::validation(&["body", "request_id"], "Field required", "missing"))?;
    // Take the token out of the lock before the network round trip.
    let token = super::lock(&gui.running).get(&id).cloned();
    let cancelled = match token {
        Some(t) => match t.cancel_query(postgres::NoTls) {
            Ok(()) => true,
            Err(e) => {
                crate::warn!("db-gui: cannot cancel a statement: {e}");
                return Err(HttpError::new(503, "Database unavailable").header("retry-after", "5"));
            }
        },
        None => false,
    };
    Ok(Response::json(200, &json!({ "cancelled": cancelled })))
}

fn run_query(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let body = json_body(req)?;
    let sql = sql_field(&body)?;
    let limit = bounded(body.get("limit"), &["body", "limit"], DEFAULT_QUERY_LIMIT.min(gui.max_rows), 1, gui.max_rows)?;
    let id = request_id(&body)?;
    let started = Instant::now();
    let result = (|| {
        let mut s = Session::begin(&gui.pool, gui.mode)?;
        let _running = Running::register(gui, id, &s);
        let r = query::run(&mut s, &sql, limit)?;
        s.finish()?;
        Ok::<_, SqlError>(r)
    })();
    match result {
        Ok(r) => {
            record(gui, &sql, "query", started, Some(r.row_count), None);
            Ok(Response::bytes(
                200,
                "application/json",
                r.to_json_bytes(&[("read_only", json!(!gui.mode.allow_writes)), ("limit", json!(limit))]),
            ))
        }
        Err(e) => {
            record(gui, &sql, "query", started, None, Some(&e.message));
            Ok(sql_error_response(&e))
        }
    }
}

fn export(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let query = req.query()?;
    let format = match crate::http::parse::last(&query, "format") {
        None => return Err(HttpError::validation(&["query", "format"], "Field required", "missing")),
        Some(f) => Format::parse(f)
            .ok_or_else(|| HttpError::validation(&["query", "format"], "Input should be 'csv' or 'json'", "enum"))?,
    };
    let body = json_body(req)?;
    let sql = sql_field(&body)?;
    let id = request_id(&body)?;
    let kind = if format == Format::Csv { "export-csv" } else { "export-json" };
    let started = Instant::now();
    let mut running = None;
    let export = match Session::begin(&gui.pool, gui.mode).and_then(|s| {
        running = Some(Running::register(gui, id, &s));
        Export::start(s, &sql)
    }) {
        Ok(e) => e,
        Err(e) => {
            record(gui, &sql, kind, started, None, Some(&e.message));
            return Ok(sql_error_response(&e));
        }
    };
    let name = body.get("filename").and_then(Value::as_str).map(safe_filename).unwrap_or_default();
    let name = if name.is_empty() { format!("query-{}", compact_now()) } else { name };
    let gui = gui.clone();
    let produce = move |w: &mut dyn std::io::Write| {
        let _running = running;
        let result = export.write_all(format, w);
        match &result {
            Ok(rows) => record(&gui, &sql, kind, started, Some(*rows), None),
            Err(e) => record(&gui, &sql, kind, started, None, Some(&format!("export failed: {e}"))),
        }
        result.map(|_| ())
    };
    Ok(Response::new(200)
        .header("content-type", format.content_type())
        .header("content-disposition", format!("attachment; filename=\"{name}.{}\"", format.extension()))
        .header("x-content-type-options", "nosniff")
        .with_body(Body::Stream(Box::new(produce))))
}

/// A download name from user input: letters, digits, `-`, `_`, `.`, at most 80.
fn safe_filename(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(80)
        .collect::<String>()
        .trim_matches('.')
        .to_string()
}

/// `20240501-123000` in UTC, for download names.
fn compact_now() -> String {
    crate::util::time::rfc3339(std::time::SystemTime::now())
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .take(15)
        .collect::<String>()
        .replace('T', "-")
}

fn saved_list(gui: &Arc<Gui>, _req: &mut Request<'_>) -> Result<Response, HttpError> {
    Ok(Response::json(200, &json!({ "queries": gui.saved.list() })))
}

fn saved_add(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let body = json_body(req)?;
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.trim().chars().count() <= super::store::MAX_NAME_CHARS => {
            s.trim().to_string()
        }
        Some(Value::String(_)) => {
            return Err(HttpError::validation(
                &["body", "name"],
                format!("name must have 1 to {} characters", super::store::MAX_NAME_CHARS),
                "value_error",
            ))
        }
        None | Some(Value::Null) => return Err(HttpError::validation(&["body", "name"], "Field required", "missing")),
        Some(_) => {
            return Err(HttpError::validation(&["body", "name"], "Input should be a valid string", "string_type"))
        }
    };
    let sql = sql_field(&body)?;
    let chart = match body.get("chart") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let ok = matches!(c.get("type").and_then(Value::as_str), Some("bar" | "line" | "pie"))
                && c.get("x").is_some_and(Value::is_string)
                && c.get("y").is_some_and(Value::is_string);
            if !ok {
                return Err(HttpError::validation(
                    &["body", "chart"],
                    "chart must be null or {\"type\": \"bar\"|\"line\"|\"pie\", \"x\": column, \"y\": column}",
                    "value_error",
                ));
            }
            Some(json!({"type": c["type"], "x": c["x"], "y": c["y"]}))
        }
    };
    match gui.saved.add(name, sql, chart) {
        Ok(q) => Ok(Response::json(201, &q)),
        Err(e) if e.starts_with("at most") => Err(HttpError::new(409, e)),
        Err(e) => {
            crate::error!("db-gui: {e}");
            Err(HttpError::new(500, "Cannot save the query (see the db-gui log)"))
        }
    }
}

fn saved_delete(gui: &Arc<Gui>, req: &mut Request<'_>) -> Result<Response, HttpError> {
    let id: u64 = req
        .param("id")
        .parse()
        .map_err(|_| HttpError::validation(&["path", "id"], "Input should be a valid integer", "int_parsing"))?;
    match gui.saved.delete(id) {
        Ok(true) => Ok(Response::json(200, &json!({"status": "deleted", "id": id}))),
        Ok(false) => Err(HttpError::new(404, "Saved query not found")),
        Err(e) => {
            crate::error!("db-gui: {e}");
            Err(HttpError::new(500, "Cannot delete the query (see the db-gui log)"))
        }
    }
}

fn history(gui: &Arc<Gui>, _req: &mut Request<'_>) -> Result<Response, HttpError> {
    Ok(Response::json(200, &json!({ "queries": gui.history.list() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_tame() {
        assert_eq!(safe_filename("../etc/pass wd\"x"), "etcpasswdx");
        assert_eq!(safe_filename("report-2024.v1"), "report-2024.v1");
        assert_eq!(compact_now().len(), 15);
    }
}
