-- standby control-plane state, schema version 1.
--
-- Portable SQL only (runs on SQLite; the PostgreSQL schema will mirror it):
-- text names as keys, timestamps as RFC 3339 UTC text with nine fractional
-- digits (so text order is time order), sizes and counters as BIGINT,
-- list order kept in an explicit `position` column.

CREATE TABLE sites (
    name        TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL
);

CREATE TABLE hosts (
    name   TEXT PRIMARY KEY NOT NULL,
    site   TEXT NOT NULL REFERENCES sites (name),
    driver TEXT NOT NULL
);

-- active_site/active_host are runtime state (where the VM runs now); they
-- have no foreign key so a placement survives until the controller moves it.
CREATE TABLE vms (
    name        TEXT PRIMARY KEY NOT NULL,
    home_site   TEXT NOT NULL REFERENCES sites (name),
    home_host   TEXT NOT NULL REFERENCES hosts (name),
    dr_site     TEXT REFERENCES sites (name),
    active_site TEXT NOT NULL,
    active_host TEXT NOT NULL
);

CREATE TABLE disks (
    vm       TEXT NOT NULL REFERENCES vms (name) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    position INTEGER NOT NULL,
    size     BIGINT NOT NULL,
    PRIMARY KEY (vm, name)
);

CREATE TABLE groups (
    name        TEXT PRIMARY KEY NOT NULL,
    schedule    TEXT NOT NULL,
    next_run    TEXT,
    last_run    TEXT,
    last_status TEXT
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    vm         TEXT NOT NULL REFERENCES vms (name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, position)
);

-- Datastores are configuration only; no table, so no foreign key.
CREATE TABLE group_datastores (
    group_name TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    datastore  TEXT NOT NULL,
    PRIMARY KEY (group_name, position)
);

-- Points outlive their VM and group in the configuration: no foreign keys.
CREATE TABLE points (
    id          TEXT PRIMARY KEY NOT NULL,
    vm          TEXT NOT NULL,
    group_name  TEXT,
    site        TEXT NOT NULL,
    time        TEXT NOT NULL,
    consistency TEXT NOT NULL,
    size        BIGINT NOT NULL,
    bytes_read  BIGINT NOT NULL,
    bytes_new   BIGINT NOT NULL
);

CREATE INDEX points_vm_time ON points (vm, time);
CREATE INDEX points_time ON points (time);

CREATE TABLE point_copies (
    point_id  TEXT NOT NULL REFERENCES points (id) ON DELETE CASCADE,
    datastore TEXT NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (point_id, datastore)
);

-- AUTOINCREMENT: a job id is never reused, even after the newest job is
-- deleted, so a CLI polling an old id can't see someone else's job.
CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL,
    target         TEXT NOT NULL,
    status         TEXT NOT NULL,
    progress_done  BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL DEFAULT 0,
    message        TEXT NOT NULL DEFAULT '',
    error          TEXT,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    result         TEXT NOT NULL DEFAULT 'null'
);

-- Listing is `ORDER BY id DESC` on the primary key; this serves the
-- start-up sweep of unfinished jobs.
CREATE INDEX jobs_status ON jobs (status);
