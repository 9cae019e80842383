-- standby control-plane state, schema version 9: damaged copies.
--
-- A copy of a point that a verify of its datastore found damaged (a
-- corrupt or missing chunk, index or manifest it needs), and why. A full
-- verify of the datastore makes its rows exactly what it found; a sample
-- only adds. A copy that goes (pruned, gone) takes its row with it.
CREATE TABLE damaged_copies (
    point_id  TEXT COLLATE "C" NOT NULL,
    datastore TEXT COLLATE "C" NOT NULL,
    since     TEXT COLLATE "C" NOT NULL,
    reason    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (point_id, datastore)
);

-- The last scheduled verify of each datastore: when, which slice of how
-- many, and how many problems it found.
CREATE TABLE verify_runs (
    datastore TEXT COLLATE "C" PRIMARY KEY,
    at        TEXT COLLATE "C" NOT NULL,
    slice     INTEGER NOT NULL,
    slices    INTEGER NOT NULL,
    problems  INTEGER NOT NULL
);
