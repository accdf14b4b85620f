-- 0002_uploads: records of uploaded files.
-- Applied once, inside a transaction, by src/db/migrate.rs (no BEGIN/COMMIT here).
-- Never edit this file once released: add a new numbered file instead.

CREATE TABLE uploads (
    id                bigserial   PRIMARY KEY,
    -- The stored name: random, unique, never derived from the client's path. It is also the
    -- idempotency key when a record is replayed from the spool.
    filename          text        NOT NULL UNIQUE,
    original_filename text        NOT NULL,
    category          text        NOT NULL CHECK (category IN ('images', 'documents', 'files')),
    size              bigint      NOT NULL CHECK (size >= 0),
    content_type      text        NOT NULL,
    sha256            text        NOT NULL,
    uploader_id       bigint      NULL REFERENCES users (id) ON DELETE SET NULL,
    uploaded_at       timestamptz NOT NULL DEFAULT now()
);

-- "Newest first", optionally within one category.
CREATE INDEX uploads_uploaded_at_idx ON uploads (uploaded_at DESC, id DESC);
CREATE INDEX uploads_category_uploaded_at_idx ON uploads (category, uploaded_at DESC, id DESC);
