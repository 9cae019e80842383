-- Runbook jobs (schema version 4). A runbook job is a row in `jobs`
-- (kind 'runbook', target = runbook name) plus one `runbook_runs` row with
-- what it needs to resume after a controller restart, one
-- `runbook_steps` row per step execution, and at most one lock.

-- `source` is the runbook text as it was when the job started: a resumed
-- job runs that, not a file edited since.
CREATE TABLE runbook_runs (
    job      BIGINT PRIMARY KEY NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    runbook  TEXT COLLATE "C" NOT NULL,
    file     TEXT COLLATE "C" NOT NULL,
    source   TEXT COLLATE "C" NOT NULL,
    params   TEXT COLLATE "C" NOT NULL,
    trigger  TEXT COLLATE "C" NOT NULL,
    lock_key TEXT COLLATE "C",
    incident BIGINT
);

-- item -1 is the step itself (a for_each step's aggregate); items of a
-- for_each step are 0, 1, ... state: queued | running | succeeded |
-- failed | skipped.
CREATE TABLE runbook_steps (
    job         BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        TEXT COLLATE "C" NOT NULL,
    item        BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    state       TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    input       TEXT COLLATE "C" NOT NULL,
    output      TEXT COLLATE "C" NOT NULL,
    error       TEXT COLLATE "C",
    started_at  TEXT COLLATE "C",
    finished_at TEXT COLLATE "C",
    PRIMARY KEY (job, step, item)
);

-- One running job per rendered lock key; kept across a restart for a
-- resumed job, deleted when the job ends.
CREATE TABLE runbook_locks (
    lock_key    TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    job         BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    acquired_at TEXT COLLATE "C" NOT NULL
);
