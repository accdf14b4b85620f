//! Queries on `uploads`, the records of uploaded files. Every query is parameterised and is one of
//! the statements prepared once per pooled connection (`stmt.rs`).
//! Must never: delete a record without the caller having checked who may (the API does).

use std::time::SystemTime;

use postgres::{GenericClient, Row, Statement};
use serde_json::{json, Value};

use super::stmt::{self, Prepared, Stmt};
use super::DbError;

/// The categories of the contract: the folders of `UPLOAD_DIR` a stored file may be in.
pub const CATEGORIES: [&str; 3] = ["images", "documents", "files"];

/// Whether a name may be a stored file name: one path component, no `..`, not hidden, at most
/// 300 bytes.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 300
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && !name.starts_with('.')
}

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

/// The columns of [`FileRecord::from_row`], in its order.
macro_rules! cols {
    () => {
        "filename, original_filename, category, size, content_type, sha256, uploader_id, uploaded_at"
    };
}

// The statements of this file, prepared once per pooled connection (`stmt.rs` lists them).
/// An uploader that no longer exists (a record replayed from the spool long after) is stored as
/// `NULL`, as `ON DELETE SET NULL` would have made it.
pub(super) const INSERT: &str = concat!(
    "INSERT INTO uploads (",
    cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, (SELECT id FROM users WHERE id = $7), $8) ON CONFLICT (filename) DO NOTHING"
);
/// NULL parameters match everything: one statement for the four cases.
pub(super) const LIST: &str = concat!(
    "SELECT ",
    cols!(),
    " FROM uploads WHERE ($1::text IS NULL OR category = $1) \
     AND ($2::int8 IS NULL OR uploader_id = $2) ORDER BY uploaded_at DESC, id DESC"
);
pub(super) const BY_FILENAME: &str = concat!("SELECT ", cols!(), " FROM uploads WHERE filename = $1");
pub(super) const DELETE: &str = "DELETE FROM uploads WHERE filename = $1";

/// Insert records in one transaction (all or nothing). A record whose `filename` already exists
/// is left as it is (`ON CONFLICT DO NOTHING`), so replaying the same record twice is harmless.
pub fn insert_all(c: &mut impl Prepared, records: &[FileRecord]) -> Result<(), DbError> {
    stmt::run(c, Stmt::FileInsert, |client, st| {
        let mut tx = client.transaction()?;
        insert_each(&mut tx, st, records)?;
        tx.commit()
    })
}

/// The inserts of [`insert_all`] inside the caller's transaction.
pub fn insert_all_in(tx: &mut postgres::Transaction<'_>, records: &[FileRecord]) -> Result<(), DbError> {
    let (tx, st) = tx.prepared(Stmt::FileInsert)?;
    Ok(insert_each(tx, &st, records)?)
}

fn insert_each(c: &mut impl GenericClient, st: &Statement, records: &[FileRecord]) -> Result<(), postgres::Error> {
    for r in records {
        c.execute(
            st,
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
pub fn list(c: &mut impl Prepared, category: Option<&str>, uploader: Option<i64>) -> Result<Vec<FileRecord>, DbError> {
    Ok(stmt::query(c, Stmt::FilesList, &[&category, &uploader])?.iter().map(FileRecord::from_row).collect())
}

pub fn by_filename(c: &mut impl Prepared, filename: &str) -> Result<Option<FileRecord>, DbError> {
    Ok(stmt::query(c, Stmt::FileByName, &[&filename])?.first().map(FileRecord::from_row))
}

/// Delete a record; true when one was deleted.
pub fn delete(c: &mut impl Prepared, filename: &str) -> Result<bool, DbError> {
    Ok(stmt::execute(c, Stmt::FileDelete, &[&filename])? > 0)
}
