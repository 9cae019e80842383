-- The leader lease of controller replicas (see standby_db::LeaseRepo):
-- one row; expires_ms is on the database's clock.
CREATE TABLE leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    url        TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
