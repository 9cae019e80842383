-- Runbook jobs (schema version 4). A runbook job is a row in `jobs`
-- (kind 'runbook', target = runbook name) plus one `runbook_runs` row with
-- what it needs to resume after a controller restart, one
-- `runbook_steps` row per step execution, and at most one lock.

-- `source` is the runbook text as it was when the job started: a resumed
-- job runs that, not a file edited since.
CREATE TABLE runbook_runs (
    job      INTEGER PRIMARY KEY NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    runbook  TEXT NOT NULL,
    file     TEXT NOT NULL,
    source   TEXT NOT NULL,
    params   TEXT NOT NULL,
    trigger  TEXT NOT NULL,
    lock_key TEXT,
    incident BIGINT
);

-- item -1 is the step itself (a for_each step's aggregate); items of a
-- for_each step are 0, 1, ... state: queued | running | succeeded |
-- failed | skipped.
CREATE TABLE runbook_steps (
    job         INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        TEXT NOT NULL,
    item        INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    input       TEXT NOT NULL,
    output      TEXT NOT NULL,
    error       TEXT,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (job, step, item)
);

-- One running job per rendered lock key; kept across a restart for a
-- resumed job, deleted when the job ends.
CREATE TABLE runbook_locks (
    lock_key    TEXT PRIMARY KEY NOT NULL,
    job         INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    acquired_at TEXT NOT NULL
);
