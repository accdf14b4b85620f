//! Running SQL for the database GUI, and turning PostgreSQL's values into JSON.
//!
//! Every statement runs in its own transaction ([`Session`]): `BEGIN READ ONLY` (or `READ WRITE`
//! with `--allow-writes`), `SET LOCAL statement_timeout`, UTC and ISO dates, hex `bytea`. The
//! session rolls back when dropped (read-only mode always rolls back; write mode commits only on
//! success), so a failed statement never leaves a transaction open on a pooled connection, and
//! whatever a statement `SET`s in read-only mode is undone.
//!
//! A statement is first prepared (one statement only; syntax and name errors come back here
//! with their position) to learn its columns and their types. A statement that returns rows
//! runs through a cursor (`DECLARE ... NO SCROLL CURSOR`, then `FETCH` in batches), so a result
//! is read a batch at a time, never whole: a query stops at its row cap or its byte cap, and an
//! export streams. Batches are bounded by bytes as well as rows ([`Batches`]): the first `FETCH`
//! asks for one row, later ones for about [`BATCH_BYTES`] of rows as big as the biggest so far.
//! Statements a cursor cannot hold (`SHOW`, `EXPLAIN`, `INSERT ... RETURNING`) run directly and
//! their (small) results are read whole. `COPY` is refused ([`COPY_REFUSED`]).
//!
//! Values arrive in PostgreSQL's text format (what `psql` prints) and become JSON by column
//! type: numbers, booleans, `json`, arrays (nested), timestamps as RFC 3339 in UTC, everything
//! else a string (`bytea` as `\x` hex, `uuid`, `interval`, enums...).
//!
//! Must never: build SQL from user input other than the statement the user wrote (identifiers
//! the GUI itself puts in SQL go through `quote_ident`), log a statement's text at `info`, keep
//! a transaction open after an error, or `FETCH` a number of rows not chosen by [`Batches`]
//! (memory would grow with row size).

use std::time::{Duration, Instant};

use postgres::types::{Kind, Type};
use postgres::SimpleQueryMessage;
use r2d2_postgres::PostgresConnectionManager;

/// The GUI's connection pool.
pub type Pool = r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>;
type Pooled = r2d2::PooledConnection<PostgresConnectionManager<postgres::NoTls>>;

/// How statements run.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub allow_writes: bool,
    pub timeout: Duration,
}

/// Most rows one `FETCH` asks for (see [`Batches`]).
pub const MAX_BATCH: usize = 1000;
/// Bytes of rows one `FETCH` aims at (see [`Batches`]).
pub const BATCH_BYTES: usize = 4 << 20;
/// Most bytes of JSON a query result carries; past it the result is cut (`truncated`).
pub const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;
/// Tables up to this size (heap bytes) get an exact `count(*)`; bigger ones an estimate.
pub const EXACT_COUNT_MAX_BYTES: i64 = 16 * 1024 * 1024;

const CURSOR: &str = "dbgui_cursor";

/// An error to show the user: PostgreSQL's own message, and where in the statement it points.
#[derive(Debug, Clone)]
pub struct SqlError {
    /// PostgreSQL's message (`syntax error at or near "selec"`), or ours.
    pub message: String,
    /// SQLSTATE.
    pub code: Option<String>,
    /// 1-based character position in the statement the user wrote.
    pub position: Option<u32>,
    pub hint: Option<String>,
    /// PostgreSQL's DETAIL line.
    pub pg_detail: Option<String>,
    /// The database cannot be reached (503), as opposed to a statement that failed (400).
    pub unavailable: bool,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> SqlError {
        SqlError {
            message: message.into(),
            code: None,
            position: None,
            hint: None,
            pg_detail: None,
            unavailable: false,
        }
    }

    /// From the driver's error. `offset`: characters the GUI put before the user's statement in
    /// the text PostgreSQL saw (positions are shifted back by it).
    fn from_pg(e: postgres::Error, offset: u32) -> SqlError {
        if let Some(db) = e.as_db_error() {
            let position = match db.position() {
                Some(postgres::error::ErrorPosition::Original(p)) => p.checked_sub(offset).filter(|p| *p > 0),
                _ => None,
            };
            return SqlError {
                message: db.message().to_string(),
                code: Some(db.code().code().to_string()),
                position,
                hint: db.hint().map(str::to_string),
                pg_detail: db.detail().map(str::to_string),
                unavailable: false,
            };
        }
        let err = crate::db::DbError::from(e);
        if err.is_unavailable() {
            return SqlError { unavailable: true, ..SqlError::new("Database unavailable") };
        }
        SqlError::new(err.to_string())
    }

    fn read_only(mut self) -> SqlError {
        // 25006 read_only_sql_transaction: say why, and how to lift it.
        if self.code.as_deref() == Some("25006") {
            self.message = format!(
                "the database GUI is read-only: {} (start `adcluster db-gui --allow-writes` to change data)",
                self.message
            );
        }
        self
    }

    /// The JSON body of the error response.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "detail": self.message,
            "code": self.code,
            "position": self.position,
            "hint": self.hint,
            "pg_detail": self.pg_detail,
        })
    }
}

impl From<r2d2::Error> for SqlError {
    fn from(_: r2d2::Error) -> SqlError {
        SqlError { unavailable: true, ..SqlError::new("Database unavailable") }
    }
}

/// One pooled connection inside one GUI transaction. Dropping it rolls back.
pub struct Session {
    conn: Pooled,
    mode: Mode,
    open: bool,
}

impl Session {
    /// Check a connection out and start the transaction.
    pub fn begin(pool: &Pool, mode: Mode) -> Result<Session, SqlError> {
        let mut conn = pool.get()?;
        let access = if mode.allow_writes { "READ WRITE" } else { "READ ONLY" };
        let ms = mode.timeout.as_millis().max(1);
        conn.batch_execute(&format!(
            "BEGIN {access}; SET LOCAL statement_timeout = {ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {idle}; \
             SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL IntervalStyle = 'postgres'; \
             SET LOCAL bytea_output = 'hex'; SET LOCAL extra_float_digits = 1",
            idle = ms.max(60_000) * 2
        ))
        .map_err(|e| SqlError::from_pg(e, 0))?;
        Ok(Session { conn, mode, open: true })
    }

    /// What cancels the statement running on this session's connection.
    pub fn cancel_token(&self) -> postgres::CancelToken {
        self.conn.cancel_token()
    }

    /// End the transaction: commit in write mode, roll back otherwise.
    pub fn finish(mut self) -> Result<(), SqlError> {
        self.open = false;
        let end = if self.mode.allow_writes { "COMMIT" } else { "ROLLBACK" };
        self.conn.batch_execute(end).map_err(|e| SqlError::from_pg(e, 0))
    }

    fn err(&self, e: postgres::Error, offset: u32) -> SqlError {
        SqlError::from_pg(e, offset).read_only()
    }

    /// Parameterised catalogue queries (the table browser).
    pub fn catalog(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, SqlError> {
        self.conn.query(sql, params).map_err(|e| SqlError::from_pg(e, 0))
    }

    /// Run `f` inside a savepoint; on failure roll back to it and return `None` (the
    /// transaction stays usable).
    pub fn try_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Session) -> Result<T, SqlError>,
    ) -> Result<Option<T>, SqlError> {
        self.conn.batch_execute("SAVEPOINT dbgui_try").map_err(|e| SqlError::from_pg(e, 0))?;
        match f(self) {
            Ok(v) => {
                self.conn.batch_execute("RELEASE SAVEPOINT dbgui_try").map_err(|e| SqlError::from_pg(e, 0))?;
                Ok(Some(v))
            }
            Err(_) => {
                self.conn.batch_execute("ROLLBACK TO SAVEPOINT dbgui_try").map_err(|e| SqlError::from_pg(e, 0))?;
                Ok(None)
            }
        }
    }

    /// `count(*)` of a relation whose name is already quoted.
    pub fn count(&mut self, quoted: &str) -> Result<i64, SqlError> {
        let row =
            self.conn.query_one(&format!("SELECT count(*) FROM {quoted}"), &[]).map_err(|e| SqlError::from_pg(e, 0))?;
        Ok(row.get(0))
    }

    pub fn set_lock_timeout(&mut self, ms: u64) -> Result<(), SqlError> {
        self.conn.batch_execute(&format!("SET LOCAL lock_timeout = {ms}")).map_err(|e| SqlError::from_pg(e, 0))
    }

    /// Prepare `sql` and start reading it: the columns, and a [`Cursor`] over its rows. A
    /// statement without result columns is executed here (its row count is in the result).
    pub fn start(&mut self, sql: &str) -> Result<Started, SqlError> {
        let stmt = self.conn.prepare(sql).map_err(|e| self.err(e, 0))?;
        // Parsed, so one statement: its first word is its kind.
        if first_keyword(sql).eq_ignore_ascii_case("copy") {
            return Err(SqlError::new(COPY_REFUSED));
        }
        let columns: Vec<Column> = stmt.columns().iter().map(|c| Column::new(c.name(), c.type_())).collect();
        drop(stmt);
        if columns.is_empty() {
            let msgs = self.conn.simple_query(sql).map_err(|e| self.err(e, 0))?;
            let affected = msgs
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .last()
                .unwrap_or(0);
            return Ok(Started::Done { affected });
        }
        // A cursor where PostgreSQL allows one; else the statement runs whole.
        let prefix = format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR\n");
        let declared = self
            .try_savepoint(|s| s.conn.batch_execute(&format!("{prefix}{sql}")).map_err(|e| SqlError::from_pg(e, 0)))?;
        if declared.is_some() {
            return Ok(Started::Rows { columns, cursor: Cursor::Declared });
        }
        let msgs = self.conn.simple_query(sql).map_err(|e| self.err(e, 0))?;
        let rows = msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect::<Vec<TextRow>>();
        Ok(Started::Rows { columns, cursor: Cursor::Buffered(rows.into_iter()) })
    }

    /// The next at most `n` rows of the cursor; empty at the end.
    pub fn fetch(&mut self, cursor: &mut Cursor, n: usize) -> Result<Vec<TextRow>, SqlError> {
        match cursor {
            Cursor::Buffered(rows) => Ok(rows.by_ref().take(n).collect()),
            Cursor::Declared => {
                let msgs =
                    self.conn.simple_query(&format!("FETCH FORWARD {n} FROM {CURSOR}")).map_err(|e| self.err(e, 0))?;
                Ok(msgs
                    .into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.open {
            // A broken connection fails here too; r2d2 then sees it closed and discards it.
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

/// Why `COPY` is not run: `TO STDOUT` and `FROM STDIN` need a protocol this page does not
/// speak, and `TO`/`FROM` a file or a program act on the database server's machine, outside what
/// `READ ONLY` guards (PostgreSQL runs `COPY ... TO '/path'` in a read-only transaction).
pub const COPY_REFUSED: &str = "COPY is not run by the database GUI: use the export (CSV or JSON) \
     for a query's rows, or psql's \\copy for files";

/// The first word of a statement, after white space and comments (`--` to the end of the line,
/// `/* */`, which nest in PostgreSQL); empty when there is none.
pub fn first_keyword(sql: &str) -> &str {
    let b = sql.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n + 1);
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            break;
        }
    }
    let end = b[i..].iter().position(|c| !c.is_ascii_alphanumeric() && *c != b'_').map_or(b.len(), |n| i + n);
    &sql[i..end]
}

/// A row in text format: `None` is SQL NULL.
pub type TextRow = Vec<Option<String>>;

/// Where the rows of a started statement come from.
pub enum Cursor {
    /// `FETCH` from the declared cursor.
    Declared,
    /// The statement ran whole (a cursor cannot hold it).
    Buffered(std::vec::IntoIter<TextRow>),
}

/// A started statement.
pub enum Started {
    Rows { columns: Vec<Column>, cursor: Cursor },
    Done { affected: u64 },
}

/// A result column: its name, its type's name, and how its values become JSON.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub conv: Conv,
}

impl Column {
    pub fn new(name: &str, ty: &Type) -> Column {
        Column { name: name.to_string(), type_name: ty.name().to_string(), conv: Conv::of(ty) }
    }

    /// Whether the page may treat the column as numeric (chart values).
    pub fn numeric(&self) -> bool {
        matches!(self.conv, Conv::Number)
    }
}

/// How a text value becomes JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Conv {
    Bool,
    Number,
    Json,
    Timestamptz,
    Timestamp,
    Text,
    /// An array: how its elements become JSON, and the delimiter between them in its text form.
    Array(Box<Conv>, char),
}

impl Conv {
    pub fn of(ty: &Type) -> Conv {
        match *ty {
            Type::BOOL => Conv::Bool,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID | Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
                Conv::Number
            }
            Type::JSON | Type::JSONB => Conv::Json,
            Type::TIMESTAMPTZ => Conv::Timestamptz,
            Type::TIMESTAMP => Conv::Timestamp,
            _ => match ty.kind() {
                Kind::Array(elem) => Conv::Array(Box::new(Conv::of(elem)), array_delimiter(elem)),
                Kind::Domain(base) => Conv::of(base),
                _ => Conv::Text,
            },
        }
    }
}

/// What separates the elements of an array of `elem` in PostgreSQL's text form: the element
/// type's `typdelim`, which is `;` for `box` (its values hold commas) and `,` for every other
/// built-in type; a domain has its base type's. (A user-defined base type with its own
/// `DELIMITER` is not known here: its arrays are read with `,`.)
pub fn array_delimiter(elem: &Type) -> char {
    match elem.kind() {
        Kind::Domain(base) => array_delimiter(base),
        _ if *elem == Type::BOX => ';',
        _ => ',',
    }
}

/// Append the JSON for one value.
pub fn write_json_value(conv: &Conv, value: Option<&str>, out: &mut Vec<u8>) {
    let Some(v) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    match conv {
        Conv::Bool => out.extend_from_slice(if v == "t" { b"true" } else { b"false" }),
        Conv::Number if is_json_number(v) => out.extend_from_slice(v.as_bytes()),
        Conv::Json => out.extend_from_slice(v.as_bytes()),
        Conv::Timestamptz => write_json_str(&rfc3339(v, true).unwrap_or_else(|| v.to_string()), out),
        Conv::Timestamp => write_json_str(&rfc3339(v, false).unwrap_or_else(|| v.to_string()), out),
        Conv::Array(elem, delim) => match parse_array(v, *delim) {
            Some(a) => write_array(elem, &a, out),
            None => write_json_str(v, out),
        },
        // Text, and numbers JSON cannot hold (NaN, Infinity).
        _ => write_json_str(v, out),
    }
}

/// Append `s` as a JSON string.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Is `s` a number exactly as JSON spells one? (PostgreSQL's `1.50`, `-3`, `1e+20` are; `NaN`,
/// `Infinity`, `.5` are not.)
pub fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let f = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == f {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let e = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

/// PostgreSQL's ISO timestamp text (`2024-05-01 12:30:00.5+00`, the session being in UTC) as
/// RFC 3339 (`2024-05-01T12:30:00.5Z`). `None` for what RFC 3339 cannot say (BC years, years
/// past 9999, `infinity`): those stay as PostgreSQL prints them.
pub fn rfc3339(v: &str, with_zone: bool) -> Option<String> {
    let b = v.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[10] != b' ' || v.ends_with(" BC") {
        return None;
    }
    let body = if with_zone { v.strip_suffix("+00")? } else { v };
    Some(format!("{}T{}{}", &body[..10], &body[11..], if with_zone { "Z" } else { "" }))
}

/// A parsed array literal: nested lists of elements (`None` is NULL).
#[derive(Debug, PartialEq)]
pub enum ArrayItem {
    Value(Option<String>),
    List(Vec<ArrayItem>),
}

/// Parse PostgreSQL's array text (`{1,2,NULL}`, `{{a,b},{c,d}}`, `{"x y","q\"d"}`,
/// `[0:1]={1,2}`) whose elements (and sub-arrays) are separated by `delim` (see
/// [`array_delimiter`]: `{(1,1),(0,0);(3,3),(2,2)}` is two boxes). `None` when it is not one.
pub fn parse_array(v: &str, delim: char) -> Option<Vec<ArrayItem>> {
    let v = match v.find("={") {
        Some(i) if v.starts_with('[') => &v[i + 1..],
        _ => v,
    };
    let chars: Vec<char> = v.chars().collect();
    let mut pos = 0;
    let items = parse_list(&chars, &mut pos, delim)?;
    (pos == chars.len()).then_some(items)
}

fn parse_list(c: &[char], pos: &mut usize, delim: char) -> Option<Vec<ArrayItem>> {
    if c.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if c.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        while c.get(*pos).is_some_and(|ch| ch.is_whitespace()) {
            *pos += 1;
        }
        match c.get(*pos)? {
            '{' => items.push(ArrayItem::List(parse_list(c, pos, delim)?)),
            '"' => {
                *pos += 1;
                let mut s = String::new();
                loop {
                    match c.get(*pos)? {
                        '\\' => {
                            s.push(*c.get(*pos + 1)?);
                            *pos += 2;
                        }
                        '"' => {
                            *pos += 1;
                            break;
                        }
                        ch => {
                            s.push(*ch);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayItem::Value(Some(s)));
            }
            _ => {
                let mut s = String::new();
                while let Some(&ch) = c.get(*pos) {
                    if ch == delim || ch == '}' {
                        break;
                    }
                    if ch == '\\' {
                        s.push(*c.get(*pos + 1)?);
                        *pos += 2;
                        continue;
                    }
                    s.push(ch);
                    *pos += 1;
                }
                let s = s.trim_end().to_string();
                items.push(ArrayItem::Value(if s.eq_ignore_ascii_case("NULL") { None } else { Some(s) }));
            }
        }
        while c.get(*pos).is_some_and(|ch| ch.is_whitespace()) {
            *pos += 1;
        }
        match c.get(*pos)? {
            &ch if ch == delim => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

fn write_array(elem: &Conv, items: &[ArrayItem], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item {
            ArrayItem::Value(v) => write_json_value(elem, v.as_deref(), out),
            ArrayItem::List(l) => write_array(elem, l, out),
        }
    }
    out.push(b']');
}

/// Append one row as a JSON array.
pub fn write_row_array(columns: &[Column], row: &TextRow, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, (col, v)) in columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_value(&col.conv, v.as_deref(), out);
    }
    out.push(b']');
}

/// The result of `POST /api/query` (or a table page), already as JSON pieces.
pub struct QueryResult {
    pub columns: Vec<Column>,
    /// Each row as a JSON array.
    pub rows: Vec<Vec<u8>>,
    /// Rows returned, or for a statement without result columns the rows it affected.
    pub row_count: u64,
    pub truncated: bool,
    pub elapsed: Duration,
}

impl QueryResult {
    /// The response body: `{"columns", "column_types", "numeric", "rows", "row_count", "truncated", "elapsed_ms"}`.
    pub fn to_json_bytes(&self, extra: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows.iter().map(Vec::len).sum::<usize>() + 256);
        out.extend_from_slice(b"{\"columns\":");
        let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let types: Vec<&str> = self.columns.iter().map(|c| c.type_name.as_str()).collect();
        let numeric: Vec<bool> = self.columns.iter().map(Column::numeric).collect();
        let _ = serde_json::to_writer(&mut out, &names);
        out.extend_from_slice(b",\"column_types\":");
        let _ = serde_json::to_writer(&mut out, &types);
        out.extend_from_slice(b",\"numeric\":");
        let _ = serde_json::to_writer(&mut out, &numeric);
        out.extend_from_slice(b",\"rows\":[");
        for (i, r) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r);
        }
        out.extend_from_slice(
            format!("],\"row_count\":{},\"truncated\":{}", self.row_count, self.truncated).as_bytes(),
        );
        // Microsecond precision, written the shortest way (`2.5`, not `2.500`).
        let ms = (self.elapsed.as_secs_f64() * 1e6).round() / 1e3;
        out.extend_from_slice(b",\"elapsed_ms\":");
        let _ = serde_json::to_writer(&mut out, &ms);
        for (k, v) in extra {
            out.push(b',');
            write_json_str(k, &mut out);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, v);
        }
        out.push(b'}');
        out
    }
}

/// Run one statement and read at most `limit` rows of it (and at most [`MAX_RESULT_BYTES`]).
pub fn run(session: &mut Session, sql: &str, limit: usize) -> Result<QueryResult, SqlError> {
    let started = Instant::now();
    match session.start(sql)? {
        Started::Done { affected } => Ok(QueryResult {
            columns: Vec::new(),
            rows: Vec::new(),
            row_count: affected,
            truncated: false,
            elapsed: started.elapsed(),
        }),
        Started::Rows { columns, mut cursor } => {
            // `limit + 1` rows at most (the one past the limit says `truncated`), fetched in
            // byte-bounded batches, and no more once the JSON passes MAX_RESULT_BYTES.
            let mut batches = Batches::new();
            let mut rows = Vec::new();
            let (mut bytes, mut truncated) = (0, false);
            'fetch: loop {
                let want = batches.size().min(limit.saturating_add(1) - rows.len());
                let batch = session.fetch(&mut cursor, want)?;
                batches.fetched(&batch);
                let got = batch.len();
                for r in batch {
                    if rows.len() == limit {
                        truncated = true;
                        break 'fetch;
                    }
                    let mut out = Vec::new();
                    write_row_array(&columns, &r, &mut out);
                    bytes += out.len();
                    if bytes > MAX_RESULT_BYTES {
                        truncated = true;
                        break 'fetch;
                    }
                    rows.push(out);
                }
                if got < want {
                    break;
                }
            }
            Ok(QueryResult { row_count: rows.len() as u64, columns, rows, truncated, elapsed: started.elapsed() })
        }
    }
}

/// How many rows each `FETCH` asks for, so that a batch holds about [`BATCH_BYTES`] whatever the
/// size of the rows: the first asks for one row (nothing is known of them yet); each next one
/// for as many rows as the biggest seen so far fit in `BATCH_BYTES`, at least one, at most twice
/// the last and at most [`MAX_BATCH`]. So rows of 1 MiB come 4 at a time, small rows reach 1000
/// a batch after ten batches, and a batch passes the budget only with rows bigger than any before
/// them (one row is always read whole: PostgreSQL sends rows whole).
#[derive(Debug, Clone)]
pub struct Batches {
    next: usize,
    biggest: usize,
}

impl Default for Batches {
    fn default() -> Batches {
        Batches::new()
    }
}

impl Batches {
    pub fn new() -> Batches {
        Batches { next: 1, biggest: 0 }
    }

    /// Rows to ask for next.
    pub fn size(&self) -> usize {
        self.next
    }

    /// Learn from a batch just fetched.
    pub fn fetched(&mut self, rows: &[TextRow]) {
        self.biggest = rows.iter().map(row_bytes).fold(self.biggest, usize::max);
        let fit = BATCH_BYTES / self.biggest.max(1);
        self.next = fit.clamp(1, self.next.saturating_mul(2).min(MAX_BATCH));
    }
}

/// About the memory a row in text form takes: its values and a string's overhead per value.
pub fn row_bytes(row: &TextRow) -> usize {
    row.iter().map(|v| 32 + v.as_ref().map_or(0, String::len)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(conv: Conv, v: Option<&str>) -> String {
        let mut out = Vec::new();
        write_json_value(&conv, v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_stay_numbers_unless_json_cannot_say_them() {
        for n in ["0", "-3", "1.50", "12345678901234567890.000001", "1e+20", "-1.5E-7"] {
            assert!(is_json_number(n), "{n}");
            assert_eq!(json(Conv::Number, Some(n)), n);
        }
        for n in ["NaN", "Infinity", "-Infinity", ".5", "01", "1.", "", "-", "1e"] {
            assert!(!is_json_number(n), "{n}");
        }
        assert_eq!(json(Conv::Number, Some("NaN")), "\"NaN\"");
        assert_eq!(json(Conv::Number, None), "null");
    }

    #[test]
    fn the_first_keyword_skips_space_and_comments() {
        assert_eq!(first_keyword("copy t to stdout"), "copy");
        assert_eq!(first_keyword("  \n\tCOPY(select 1) TO '/tmp/x'"), "COPY");
        assert_eq!(first_keyword("-- a note\n/* a /* nested */ one */ Copy t FROM stdin"), "Copy");
        assert_eq!(first_keyword("select 1 -- copy"), "select");
        assert_eq!(first_keyword("/* copy */ select 1"), "select");
        assert_eq!(first_keyword("-- only a comment"), "");
        assert_eq!(first_keyword("/* unterminated"), "");
        assert_eq!(first_keyword(""), "");
    }

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(json(Conv::Timestamptz, Some("2024-05-01 12:30:00.5+00")), "\"2024-05-01T12:30:00.5Z\"");
        assert_eq!(json(Conv::Timestamptz, Some("2024-05-01 12:30:00+00")), "\"2024-05-01T12:30:00Z\"");
        assert_eq!(json(Conv::Timestamp, Some("2024-05-01 12:30:00")), "\"2024-05-01T12:30:00\"");
        assert_eq!(json(Conv::Timestamptz, Some("infinity")), "\"infinity\"");
        assert_eq!(json(Conv::Timestamptz, Some("0044-03-15 00:00:00+00 BC")), "\"0044-03-15 00:00:00+00 BC\"");
    }

    #[test]
    fn arrays_nest_and_keep_their_element_types() {
        let ints = Conv::Array(Box::new(Conv::Number), ',');
        assert_eq!(json(ints.clone(), Some("{1,2,NULL}")), "[1,2,null]");
        assert_eq!(json(ints.clone(), Some("{{1,2},{3,4}}")), "[[1,2],[3,4]]");
        assert_eq!(json(ints, Some("[0:1]={7,8}")), "[7,8]");
        let texts = Conv::Array(Box::new(Conv::Text), ',');
        assert_eq!(json(texts.clone(), Some(r#"{"a b","q\"d","NULL",NULL,x}"#)), r#"["a b","q\"d","NULL",null,"x"]"#);
        assert_eq!(json(texts.clone(), Some("{}")), "[]");
        assert_eq!(json(texts, Some("{unterminated")), "\"{unterminated\"");
        let bools = Conv::Array(Box::new(Conv::Bool), ',');
        assert_eq!(json(bools, Some("{t,f}")), "[true,false]");
    }

    #[test]
    fn arrays_of_box_are_split_at_semicolons() {
        // PostgreSQL prints `array[box '((0,0),(1,1))', box '((2,2),(3,3))']` so: box's
        // `typdelim` is `;`, as its values hold commas.
        let boxes = Conv::of(&Type::BOX_ARRAY);
        assert_eq!(boxes, Conv::Array(Box::new(Conv::Text), ';'));
        assert_eq!(json(boxes.clone(), Some("{(1,1),(0,0);(3,3),(2,2)}")), r#"["(1,1),(0,0)","(3,3),(2,2)"]"#);
        assert_eq!(json(boxes.clone(), Some("{(1,1),(0,0);NULL}")), r#"["(1,1),(0,0)",null]"#);
        assert_eq!(json(boxes, Some("{{(1,1),(0,0)};{(5,5),(1,1)}}")), r#"[["(1,1),(0,0)"],["(5,5),(1,1)"]]"#);
        // Every other built-in type's arrays use commas.
        assert_eq!(Conv::of(&Type::POINT_ARRAY), Conv::Array(Box::new(Conv::Text), ','));
        assert_eq!(Conv::of(&Type::INT4_ARRAY), Conv::Array(Box::new(Conv::Number), ','));
    }

    #[test]
    fn text_is_escaped_and_json_is_raw() {
        assert_eq!(json(Conv::Text, Some("a\"b\nc")), r#""a\"b\nc""#);
        assert_eq!(json(Conv::Json, Some(r#"{"k": [1, 2]}"#)), r#"{"k": [1, 2]}"#);
        assert_eq!(json(Conv::Bool, Some("t")), "true");
    }

    #[test]
    fn batches_are_bounded_by_bytes_from_the_first() {
        let rows = |n: usize, size: usize| -> Vec<TextRow> { vec![vec![Some("x".repeat(size))]; n] };
        let mut b = Batches::new();
        assert_eq!(b.size(), 1, "nothing is known of the first row");
        // Small rows: the batch doubles up to MAX_BATCH.
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let n = b.size();
            sizes.push(n);
            b.fetched(&rows(n, 40));
        }
        assert_eq!(sizes, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
        // A bigger row shrinks the next batch to the budget, and it stays there.
        b.fetched(&rows(1, 1 << 20));
        assert_eq!(b.size(), BATCH_BYTES / ((1 << 20) + 32));
        b.fetched(&rows(3, 100));
        assert_eq!(b.size(), 3, "the biggest row so far rules");
        // Rows bigger than the budget: one at a time.
        let mut b = Batches::new();
        b.fetched(&rows(1, 20 << 20));
        assert_eq!(b.size(), 1);
        // An empty batch (the end) changes nothing that matters.
        let mut b = Batches::new();
        b.fetched(&[]);
        assert_eq!(b.size(), 2);
    }
}
