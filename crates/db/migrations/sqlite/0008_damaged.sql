-- standby control-plane state, schema version 8: damaged copies.
--
-- A copy of a point that a verify of its datastore found damaged (a
-- corrupt or missing chunk, index or manifest it needs), and why. A full
-- verify of the datastore makes its rows exactly what it found; a sample
-- only adds. A copy that goes (pruned, gone) takes its row with it.
CREATE TABLE damaged_copies (
    point_id  TEXT NOT NULL,
    datastore TEXT NOT NULL,
    since     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    PRIMARY KEY (point_id, datastore)
);

-- The last scheduled verify of each datastore: when, which slice of how
-- many, and how many problems it found.
CREATE TABLE verify_runs (
    datastore TEXT PRIMARY KEY,
    at        TEXT NOT NULL,
    slice     INTEGER NOT NULL,
    slices    INTEGER NOT NULL,
    problems  INTEGER NOT NULL
);
