-- 0001_accounts: users and teams.
-- Applied once, inside a transaction, by src/db/migrate.rs (no BEGIN/COMMIT here).
-- Never edit this file once released: add a new numbered file instead.

CREATE TABLE users (
    id              bigserial   PRIMARY KEY,
    email           text        NOT NULL,
    hashed_password text        NOT NULL,
    full_name       text        NULL,
    is_active       boolean     NOT NULL DEFAULT true,
    is_superuser    boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Emails compare case-insensitively: 'A@x.io' and 'a@X.io' are the same account.
-- Look users up with `WHERE lower(email) = lower($1)` so this index is used.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE teams (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    description text        NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id   bigint      NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id   bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);

-- The primary key serves "members of a team"; this serves "teams of a user".
CREATE INDEX team_members_user_id_idx ON team_members (user_id);
