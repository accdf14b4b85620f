//! The GUI's own state: saved queries (kept in `DATA_DIR/db-gui-saved.json`, rewritten whole
//! and atomically on each change: a temporary file, `fsync`, `rename`, `fsync` of the folder)
//! and the history of recent queries (in memory, newest first, at most `DB_GUI_HISTORY`).
//!
//! Locks: `Saved::inner` and `History::inner` are plain `Mutex`es, never held together. The
//! saved-queries lock is held across its file write (a few KiB, on a change a person clicked),
//! so two saves cannot write the file out of order; no socket or database I/O happens under it.
//!
//! Must never: leave a half-written file in place of the saved queries, or grow without bound
//! (at most [`MAX_SAVED`] saved queries; history is capped).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Most saved queries.
pub const MAX_SAVED: usize = 1000;
/// Longest saved-query name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The file, under `DATA_DIR`.
pub const SAVED_FILE: &str = "db-gui-saved.json";

/// A saved query, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedQuery {
    pub id: u64,
    pub name: String,
    pub sql: String,
    /// `null` or `{"type": "bar"|"line"|"pie", "x": column, "y": column}`.
    pub chart: Option<serde_json::Value>,
    pub created_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedFile {
    next_id: u64,
    queries: Vec<SavedQuery>,
}

/// The saved queries and their file.
pub struct Saved {
    path: PathBuf,
    inner: Mutex<SavedFile>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Saved {
    /// Load `dir/db-gui-saved.json` (none yet: empty). A file that cannot be read or parsed is
    /// an error: refusing to start beats overwriting someone's saved queries.
    pub fn open(dir: &Path) -> Result<Saved, String> {
        let path = dir.join(SAVED_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<SavedFile>(&bytes)
                .map_err(|e| format!("{} is not a saved-queries file ({e}); move it away", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedFile { next_id: 1, queries: Vec::new() },
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Saved { path, inner: Mutex::new(file) })
    }

    pub fn list(&self) -> Vec<SavedQuery> {
        lock(&self.inner).queries.clone()
    }

    /// Add one; `Err` when the list is full or the file cannot be written (nothing changes then).
    pub fn add(&self, name: String, sql: String, chart: Option<serde_json::Value>) -> Result<SavedQuery, String> {
        let mut inner = lock(&self.inner);
        if inner.queries.len() >= MAX_SAVED {
            return Err(format!("at most {MAX_SAVED} saved queries; delete some first"));
        }
        let id = inner.next_id.max(1);
        let q =
            SavedQuery { id, name, sql, chart, created_at: crate::util::time::rfc3339(std::time::SystemTime::now()) };
        inner.next_id = id + 1;
        inner.queries.push(q.clone());
        if let Err(e) = self.write(&inner) {
            inner.queries.pop();
            inner.next_id = id;
            return Err(e);
        }
        Ok(q)
    }

    /// Delete one: `Ok(false)` when there is no such id.
    pub fn delete(&self, id: u64) -> Result<bool, String> {
        let mut inner = lock(&self.inner);
        let Some(at) = inner.queries.iter().position(|q| q.id == id) else {
            return Ok(false);
        };
        let removed = inner.queries.remove(at);
        if let Err(e) = self.write(&inner) {
            inner.queries.insert(at, removed);
            return Err(e);
        }
        Ok(true)
    }

    fn write(&self, file: &SavedFile) -> Result<(), String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".{SAVED_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })
    }
}

/// One history entry.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub sql: String,
    pub at: String,
    pub elapsed_ms: f64,
    pub row_count: Option<u64>,
    pub error: Option<String>,
    /// `query`, `export-csv` or `export-json`.
    pub kind: &'static str,
}

/// Recent queries, newest first.
pub struct History {
    cap: usize,
    inner: Mutex<VecDeque<HistoryEntry>>,
}

impl History {
    pub fn new(cap: usize) -> History {
        History { cap, inner: Mutex::new(VecDeque::new()) }
    }

    pub fn push(&self, e: HistoryEntry) {
        if self.cap == 0 {
            return;
        }
        let mut q = lock(&self.inner);
        q.push_front(e);
        q.truncate(self.cap);
    }

    pub fn list(&self) -> Vec<HistoryEntry> {
        lock(&self.inner).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_queries_survive_a_reopen_and_ids_are_not_reused() {
        let dir = std::env::temp_dir().join(format!("dbgui-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Saved::open(&dir).unwrap();
        let a = s.add("a".into(), "select 1".into(), None).unwrap();
        let b =
            s.add("b".into(), "select 2".into(), Some(serde_json::json!({"type": "bar", "x": "a", "y": "b"}))).unwrap();
        assert!(s.delete(b.id).unwrap());
        assert!(!s.delete(b.id).unwrap());
        let s = Saved::open(&dir).unwrap();
        assert_eq!(s.list(), vec![a.clone()]);
        let c = s.add("c".into(), "select 3".into(), None).unwrap();
        assert!(c.id > b.id);
        assert!(!dir.join(format!(".{SAVED_FILE}.tmp")).exists());
        std::fs::write(dir.join(SAVED_FILE), b"not json").unwrap();
        assert!(Saved::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn history_is_newest_first_and_capped() {
        let h = History::new(2);
        for i in 0..3 {
            h.push(HistoryEntry {
                sql: format!("select {i}"),
                at: String::new(),
                elapsed_ms: 0.0,
                row_count: Some(1),
                error: None,
                kind: "query",
            });
        }
        let l = h.list();
        assert_eq!(l.iter().map(|e| e.sql.as_str()).collect::<Vec<_>>(), ["select 2", "select 1"]);
    }
}
