-- standby control-plane state, schema version 9: protection groups made
-- through the API and the portal (self-service).
--
-- standby.toml stays the source of the groups it declares; these are the
-- others, each kept as its specification (the TOML table's fields, as
-- JSON), with who changed it last and when.
CREATE TABLE managed_groups (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    tenant     TEXT,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
