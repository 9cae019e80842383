-- standby control-plane state, schema version 3: site fences.
--
-- A fenced site runs no VM: its agents stop every VM there and refuse to
-- start any until the fence is lifted. One row per fenced site; lifting
-- the fence deletes the row. No foreign key to `sites`: a fence outlives
-- a configuration that (for now) drops the site, so re-adding it finds
-- it still fenced.
CREATE TABLE fences (
    site   TEXT COLLATE "C" PRIMARY KEY,
    since  TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL
);
