-- The epoch is a key of the lease row: a fenced write holds the row
-- FOR KEY SHARE until it commits, which a renewal (same epoch, an UPDATE
-- that takes FOR NO KEY UPDATE) does not wait for, and a takeover (a new
-- epoch, a key change that takes FOR UPDATE) does.
CREATE UNIQUE INDEX leader_epoch ON leader (epoch);
