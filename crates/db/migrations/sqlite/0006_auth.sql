-- standby control-plane state, schema version 6: authentication.
--
-- Secrets are never stored: a user's password as its Argon2id PHC string,
-- an API token and a portal session as the hex SHA-256 of their 256-bit
-- random secret (a lookup by hash, so the secret itself never reaches the
-- database). Roles are 'viewer', 'operator' or 'admin'; tenant NULL is the
-- operators' side. Times are RFC 3339 UTC text.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant        TEXT,
    created       TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant      TEXT,
    created     TEXT NOT NULL,
    -- NULL: never expires.
    expires     TEXT,
    revoked     TEXT,
    last_used   TEXT
);

-- A portal login. Removing the user ends its sessions.
CREATE TABLE sessions (
    id_hash   TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf      TEXT NOT NULL,
    created   TEXT NOT NULL,
    expires   TEXT NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires);
