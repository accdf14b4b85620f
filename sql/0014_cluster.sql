-- 0014_cluster: presence of several instances on one database (CLUSTER=postgres).
-- Applied once, inside a transaction, by src/db/migrate.rs (no BEGIN/COMMIT here).
-- Never edit this file once released: add a new numbered file instead.
-- Numbered after its issue (14) so that it does not collide with files added meanwhile.

-- One row per running instance; its listening connection refreshes last_seen every
-- CLUSTER_PRESENCE_TIMEOUT_SECS / 5. A row older than 3/5 of the timeout is reaped, with the
-- instance's clients, by whichever instance notices first.
CREATE TABLE ws_instances (
    instance_id text        PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- The WebSocket clients each instance holds: what a starting (or reconnecting) instance reads
-- to learn the others' clients and groups. Keyed by instance too: while two instances race for
-- one id, both rows exist until the loser's is removed.
CREATE TABLE ws_clients (
    instance_id  text        NOT NULL,
    client_id    text        NOT NULL,
    serial       bigint      NOT NULL,
    group_name   text        NULL,
    connected_at timestamptz NOT NULL,
    PRIMARY KEY (instance_id, client_id)
);

-- Notifications larger than NOTIFY's 8000-byte limit: the notification carries the row id.
-- Rows read by their one recipient are deleted by it; the others are swept after a minute.
CREATE TABLE ws_cluster_payloads (
    id         bigserial   PRIMARY KEY,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ws_cluster_payloads_created_at_idx ON ws_cluster_payloads (created_at);
