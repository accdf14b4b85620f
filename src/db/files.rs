//! Queries on `uploads`, the records of uploaded files. Every query is parameterised.
//! Must never: delete a record without the caller having checked who may (the API does).

use std::time::SystemTime;

use postgres::types::Type;
use postgres::Row;
use serde_json::{json, Value};

use super::DbError;

/// An upload record.
#[derive(Debug, Clone)]
pub struct FileRecord {
    pub filename: String,
    pub original_filename: String,
    pub category: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
    pub uploader_id: Option<i64>,
    pub uploaded_at: SystemTime,
}

impl FileRecord {
    /// The contract's file record.
    pub fn to_json(&self) -> Value {
        json!({
            "filename": self.filename,
            "original_filename": self.original_filename,
            "category": self.category,
            "size": self.size,
            "content_type": self.content_type,
            "url": format!("/uploads/{}/{}", self.category, self.filename),
            "uploaded_at": crate::util::time::rfc3339(self.uploaded_at),
            "uploaded_by": self.uploader_id,
        })
    }

    fn from_row(r: &Row) -> FileRecord {
        FileRecord {
            filename: r.get(0),
            original_filename: r.get(1),
            category: r.get(2),
            size: r.get(3),
            content_type: r.get(4),
            sha256: r.get(5),
            uploader_id: r.get(6),
            uploaded_at: r.get(7),
        }
    }
}

const COLS: &str = "filename, original_filename, category, size, content_type, sha256, uploader_id, uploaded_at";

/// Insert records in one transaction (all or nothing). A record whose `filename` already exists
/// is left as it is (`ON CONFLICT DO NOTHING`), so replaying the same record twice is harmless.
pub fn insert_all(c: &mut postgres::Client, records: &[FileRecord]) -> Result<(), DbError> {
    let mut tx = c.transaction()?;
    insert_all_in(&mut tx, records)?;
    tx.commit()?;
    Ok(())
}

/// The inserts of [`insert_all`] inside the caller's transaction. An uploader that no longer
/// exists (a record replayed from the spool long after) is stored as `NULL`, as
/// `ON DELETE SET NULL` would have made it.
pub fn insert_all_in(tx: &mut postgres::Transaction<'_>, records: &[FileRecord]) -> Result<(), DbError> {
    for r in records {
        tx.execute(
            "INSERT INTO uploads (filename, original_filename, category, size, content_type, sha256, uploader_id, uploaded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT id FROM users WHERE id = $7), $8) ON CONFLICT (filename) DO NOTHING",
            &[
                &r.filename,
                &r.original_filename,
                &r.category,
                &r.size,
                &r.content_type,
                &r.sha256,
                &r.uploader_id,
                &r.uploaded_at,
            ],
        )?;
    }
    Ok(())
}

/// Records, newest first, optionally of one category and of one uploader.
pub fn list(
    c: &mut postgres::Client,
    category: Option<&str>,
    uploader: Option<i64>,
) -> Result<Vec<FileRecord>, DbError> {
    // NULL parameters match everything: one statement for the four cases.
    let rows = c.query_typed(
        &format!(
            "SELECT {COLS} FROM uploads WHERE ($1::text IS NULL OR category = $1) \
             AND ($2::int8 IS NULL OR uploader_id = $2) ORDER BY uploaded_at DESC, id DESC"
        ),
        &[(&category, Type::TEXT), (&uploader, Type::INT8)],
    )?;
    Ok(rows.iter().map(FileRecord::from_row).collect())
}

pub fn by_filename(c: &mut postgres::Client, filename: &str) -> Result<Option<FileRecord>, DbError> {
    let rows = c.query_typed(&format!("SELECT {COLS} FROM uploads WHERE filename = $1"), &[(&filename, Type::TEXT)])?;
    Ok(rows.first().map(FileRecord::from_row))
}

/// Delete a record; true when one was deleted.
pub fn delete(c: &mut postgres::Client, filename: &str) -> Result<bool, DbError> {
    Ok(c.execute("DELETE FROM uploads WHERE filename = $1", &[&filename])? > 0)
}
