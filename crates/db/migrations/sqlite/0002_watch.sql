-- standby control-plane state, schema version 2: the watch side (events,
-- alerts, silences, incidents and their timelines, the notification outbox).
--
-- Same conventions as version 1: portable SQL, timestamps as RFC 3339 UTC
-- text with nine fractional digits. Label maps and id lists are JSON text
-- (no JSON operators, so the PostgreSQL schema can mirror this one); the
-- repository filters on labels after reading.
--
-- AUTOINCREMENT everywhere: ids are never reused, so a client tailing
-- events by id or holding an alert id never sees another row under it.

-- severity_rank (info 0, warning 1, error 2, critical 3) lets a query ask
-- for a minimum severity without knowing the names. Pruned by age only.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    source        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,
    labels        TEXT NOT NULL DEFAULT '{}',
    vantage       TEXT NOT NULL,
    message       TEXT NOT NULL
);

CREATE INDEX events_at ON events (at);
CREATE INDEX events_kind ON events (kind, id);

CREATE TABLE silences (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    matchers   TEXT NOT NULL DEFAULT '{}',
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    starts_at  TEXT NOT NULL,
    ends_at    TEXT NOT NULL
);

CREATE INDEX silences_ends_at ON silences (ends_at);

-- `group` is a keyword: the column is grp. key deduplicates incidents
-- while they are open (state new or active).
CREATE TABLE incidents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    title       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    description TEXT NOT NULL,
    grp         TEXT NOT NULL,
    state       TEXT NOT NULL,
    template    TEXT,
    key         TEXT,
    labels      TEXT NOT NULL DEFAULT '{}',
    opened_at   TEXT NOT NULL,
    resolved_at TEXT,
    closed_at   TEXT
);

CREATE INDEX incidents_key_state ON incidents (key, state);
CREATE INDEX incidents_state ON incidents (state);

-- One row per firing: a fingerprint that fires again after resolving gets
-- a new row, so fingerprint is not unique. inhibited_by is the fingerprint
-- of the muting alert; silenced_by a silence id, kept without a foreign key
-- so the record stays as it was decided.
CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint     TEXT NOT NULL,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    state           TEXT NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}',
    annotations     TEXT NOT NULL DEFAULT '{}',
    active_since    TEXT NOT NULL,
    fired_at        TEXT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT,
    resolved_at     TEXT,
    inhibited_by    TEXT,
    silenced_by     BIGINT,
    incident        INTEGER REFERENCES incidents (id) ON DELETE SET NULL
);

CREATE INDEX alerts_state ON alerts (state);
CREATE INDEX alerts_fingerprint ON alerts (fingerprint);
CREATE INDEX alerts_incident ON alerts (incident);

-- kind: opened, alert, note, state, step, notification.
CREATE TABLE incident_timeline (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    incident INTEGER NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    author   TEXT NOT NULL,
    text     TEXT NOT NULL,
    alert    INTEGER REFERENCES alerts (id) ON DELETE SET NULL
);

CREATE INDEX incident_timeline_incident ON incident_timeline (incident, at);

-- The outbox: state pending until delivered or failed (gave up). The
-- payload is stored with the delivery so a restarted controller resumes
-- its retries. alerts is a JSON array of alert ids.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver        TEXT NOT NULL,
    status          TEXT NOT NULL,
    alerts          TEXT NOT NULL DEFAULT '[]',
    payload         TEXT NOT NULL DEFAULT 'null',
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT,
    delivered_at    TEXT
);

CREATE INDEX deliveries_state_next ON deliveries (state, next_attempt_at);
