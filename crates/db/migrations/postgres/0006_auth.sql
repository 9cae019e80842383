-- standby control-plane state, schema version 6: authentication.
--
-- Secrets are never stored: a user's password as its Argon2id PHC string,
-- an API token and a portal session as the hex SHA-256 of their 256-bit
-- random secret (a lookup by hash, so the secret itself never reaches the
-- database). Roles are 'viewer', 'operator' or 'admin'; tenant NULL is the
-- operators' side. Times are RFC 3339 UTC text.
CREATE TABLE users (
    name          TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT COLLATE "C" NOT NULL,
    role          TEXT COLLATE "C" NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant        TEXT COLLATE "C",
    created       TEXT COLLATE "C" NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    secret_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    name        TEXT COLLATE "C" NOT NULL,
    role        TEXT COLLATE "C" NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant      TEXT COLLATE "C",
    created     TEXT COLLATE "C" NOT NULL,
    -- NULL: never expires.
    expires     TEXT COLLATE "C",
    revoked     TEXT COLLATE "C",
    last_used   TEXT COLLATE "C"
);

-- A portal login. Removing the user ends its sessions.
CREATE TABLE sessions (
    id_hash   TEXT COLLATE "C" PRIMARY KEY,
    user_name TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf      TEXT COLLATE "C" NOT NULL,
    created   TEXT COLLATE "C" NOT NULL,
    expires   TEXT COLLATE "C" NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires);
