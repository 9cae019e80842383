-- standby control-plane state, schema version 10: protection groups made
-- through the API and the portal (self-service).
--
-- standby.toml stays the source of the groups it declares; these are the
-- others, each kept as its specification (the TOML table's fields, as
-- JSON), with who changed it last and when.
CREATE TABLE managed_groups (
    name       TEXT COLLATE "C" PRIMARY KEY,
    spec       TEXT COLLATE "C" NOT NULL,
    tenant     TEXT COLLATE "C",
    updated_by TEXT COLLATE "C" NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
