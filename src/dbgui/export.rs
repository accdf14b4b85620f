//! Exports: a whole result as CSV or JSON, written while it is read from a cursor, one batch at
//! a time (`query::Batches`: about 4 MiB of rows, the first batch one row), so an export costs
//! one batch of memory whatever the number or the size of its rows.
//!
//! CSV is RFC 4180, as the contract says, and otherwise what `psql --csv` prints: a header row
//! of column names; fields that hold the separator, a double quote, CR or LF (or are exactly
//! `\.`) are quoted with quotes doubled; NULL is an empty field (so is the empty string, as in
//! `psql`: use JSON when the difference matters); each record ends with CRLF (`psql` ends them
//! with LF: the one difference, a line break inside a quoted field is kept as it is). JSON is an
//! array of objects, one per row, keyed by column name, values as in `query::write_json_value`;
//! keys are unique ([`json_keys`]: a second `id` is `id_2`), as a JSON object's keys must be
//! for every value to survive parsing.
//!
//! Must never: hold a whole result in memory, end a failed export as if it were complete
//! (an error is returned, and the HTTP layer leaves out the final chunk), or give a JSON object
//! the same key twice (a parser would keep only one of the values).

use std::io::{self, Write};

use super::query::{self, Column, Cursor, Session, SqlError, TextRow};

/// The export formats of `POST /api/export?format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// What ends a CSV record (RFC 4180, section 2: "delimited by a line break (CRLF)").
pub const RECORD_END: &[u8] = b"\r\n";

/// Append one CSV field, quoted when `psql --csv` would quote it.
pub fn csv_field(s: &str, out: &mut Vec<u8>) {
    if s.contains([',', '"', '\r', '\n']) || s == "\\." {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// The keys of a JSON export's objects: each column's name, made unique. The first column of a
/// name keeps it; a later one gets `_2`, `_3`... (the first such name that no column has and no
/// earlier key took), so `id, name, id` is `id, name, id_2`, and `id, id, id_2` is
/// `id, id_3, id_2`. Deterministic: the same columns always give the same keys.
pub fn json_keys(columns: &[Column]) -> Vec<String> {
    use std::collections::HashSet;
    let taken: HashSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut made: HashSet<String> = HashSet::new();
    let mut keys = Vec::with_capacity(columns.len());
    for c in columns {
        if seen.insert(c.name.as_str()) {
            keys.push(c.name.clone());
            continue;
        }
        let key = (2u64..)
            .map(|k| format!("{}_{k}", c.name))
            .find(|k| !taken.contains(k.as_str()) && !made.contains(k))
            .expect("a free key");
        made.insert(key.clone());
        keys.push(key);
    }
    keys
}

/// The header of an export.
pub fn header(format: Format, columns: &[Column], out: &mut Vec<u8>) {
    match format {
        Format::Csv => {
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                csv_field(&c.name, out);
            }
            out.extend_from_slice(RECORD_END);
        }
        Format::Json => out.push(b'['),
    }
}

/// One row of an export; `keys` are the JSON keys ([`json_keys`], unused for CSV), `first` is
/// whether it is the first row (JSON separators).
pub fn row(format: Format, columns: &[Column], keys: &[String], row: &TextRow, first: bool, out: &mut Vec<u8>) {
    match format {
        Format::Csv => {
            for (i, v) in row.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Some(v) = v {
                    csv_field(v, out);
                }
            }
            out.extend_from_slice(RECORD_END);
        }
        Format::Json => {
            out.extend_from_slice(if first { b"\n{" } else { b",\n{" });
            for (i, ((c, key), v)) in columns.iter().zip(keys).zip(row).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                query::write_json_str(key, out);
                out.push(b':');
                query::write_json_value(&c.conv, v.as_deref(), out);
            }
            out.push(b'}');
        }
    }
}

/// The end of an export.
pub fn footer(format: Format, any_rows: bool, out: &mut Vec<u8>) {
    if format == Format::Json {
        out.extend_from_slice(if any_rows { b"\n]\n" } else { b"]\n" });
    }
}

/// A started export: the session, its cursor, and the first batch (fetched before the response
/// head is sent, so that an error in the statement is still a `400`).
pub struct Export {
    pub session: Session,
    pub columns: Vec<Column>,
    pub cursor: Cursor,
    pub first: Vec<TextRow>,
    pub batches: query::Batches,
}

impl Export {
    /// Start exporting `sql`: prepare, open the cursor, fetch the first batch.
    pub fn start(mut session: Session, sql: &str) -> Result<Export, SqlError> {
        match session.start(sql)? {
            query::Started::Done { .. } => {
                Err(SqlError::new("the statement returns no rows, so there is nothing to export (export a SELECT)"))
            }
            query::Started::Rows { columns, mut cursor } => {
                let mut batches = query::Batches::new();
                let first = session.fetch(&mut cursor, batches.size())?;
                batches.fetched(&first);
                Ok(Export { session, columns, cursor, first, batches })
            }
        }
    }

    /// Write the whole result to `w`; returns the number of rows. Ends the transaction.
    pub fn write_all(self, format: Format, w: &mut dyn Write) -> io::Result<u64> {
        let Export { mut session, columns, mut cursor, first, mut batches } = self;
        let mut buf = Vec::with_capacity(64 * 1024);
        header(format, &columns, &mut buf);
        let keys = json_keys(&columns);
        let mut batch = first;
        let mut rows = 0u64;
        while !batch.is_empty() {
            // Each row is dropped once written.
            for r in batch {
                row(format, &columns, &keys, &r, rows == 0, &mut buf);
                rows += 1;
                if buf.len() >= 64 * 1024 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
            batch = session.fetch(&mut cursor, batches.size()).map_err(|e| io::Error::other(e.message))?;
            batches.fetched(&batch);
        }
        footer(format, rows > 0, &mut buf);
        w.write_all(&buf)?;
        session.finish().map_err(|e| io::Error::other(e.message))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(s: &str) -> String {
        let mut out = Vec::new();
        csv_field(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_like_psql() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv("cr\r"), "\"cr\r\"");
        assert_eq!(csv("\\."), "\"\\.\"");
        assert_eq!(csv("한글 ünïcode"), "한글 ünïcode");
        assert_eq!(csv(""), "");
    }

    #[test]
    fn csv_records_end_with_crlf_and_a_field_keeps_its_own_line_break() {
        let ty = postgres::types::Type::TEXT;
        let cols = vec![Column::new("a", &ty), Column::new("b", &ty)];
        let mut out = Vec::new();
        header(Format::Csv, &cols, &mut out);
        row(Format::Csv, &cols, &[], &vec![Some("two\nlines".into()), None], true, &mut out);
        row(Format::Csv, &cols, &[], &vec![Some("x".into()), Some("".into())], false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "a,b\r\n\"two\nlines\",\r\nx,\r\n");
    }

    #[test]
    fn json_rows_are_objects() {
        let ty = postgres::types::Type::INT4;
        let cols = vec![Column::new("n", &ty), Column::new("t", &postgres::types::Type::TEXT)];
        let mut out = Vec::new();
        let keys = json_keys(&cols);
        header(Format::Json, &cols, &mut out);
        row(Format::Json, &cols, &keys, &vec![Some("1".into()), None], true, &mut out);
        row(Format::Json, &cols, &keys, &vec![Some("2".into()), Some("x".into())], false, &mut out);
        footer(Format::Json, true, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!([{"n": 1, "t": null}, {"n": 2, "t": "x"}]));
        let mut empty = Vec::new();
        header(Format::Json, &cols, &mut empty);
        footer(Format::Json, false, &mut empty);
        assert_eq!(empty, b"[]\n");
    }

    #[test]
    fn json_keys_are_unique_and_first_names_are_kept() {
        let ty = postgres::types::Type::INT4;
        let keys = |names: &[&str]| json_keys(&names.iter().map(|n| Column::new(n, &ty)).collect::<Vec<_>>());
        assert_eq!(keys(&["id", "name", "id", "name"]), ["id", "name", "id_2", "name_2"]);
        assert_eq!(keys(&["id", "id", "id"]), ["id", "id_2", "id_3"]);
        // A name some column already has is skipped, wherever that column is.
        assert_eq!(keys(&["id", "id", "id_2"]), ["id", "id_3", "id_2"]);
        assert_eq!(keys(&["id_2", "id", "id"]), ["id_2", "id", "id_3"]);
        assert_eq!(keys(&["a", "b"]), ["a", "b"]);
        assert!(keys(&[]).is_empty());

        // Every value survives a parser that keeps one value per key.
        let cols = vec![Column::new("id", &ty), Column::new("id", &ty)];
        let mut out = Vec::new();
        header(Format::Json, &cols, &mut out);
        row(Format::Json, &cols, &json_keys(&cols), &vec![Some("1".into()), Some("2".into())], true, &mut out);
        footer(Format::Json, true, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!([{"id": 1, "id_2": 2}]));
    }
}
