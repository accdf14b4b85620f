-- 0003_spool: what degraded mode needs.
-- Applied once, inside a transaction, by src/db/migrate.rs (no BEGIN/COMMIT here).
-- Never edit this file once released: add a new numbered file instead.

-- Ids of spool entries already written (src/db/spool.rs). Replay claims an entry's id in the
-- same transaction as its records, so an entry replayed again after a crash is a no-op. Rows
-- are only needed until the entry is truncated from the journal; replay prunes week-old ones.
CREATE TABLE spool_applied (
    id         text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- `GET /api/files?mine=true`: one uploader's files, newest first. The column itself
-- (`uploader_id`, shown as `uploaded_by`) came with 0002.
CREATE INDEX uploads_uploader_id_uploaded_at_idx ON uploads (uploader_id, uploaded_at DESC, id DESC);
