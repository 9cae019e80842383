-- The leader lease of controller replicas (see standby_db::LeaseRepo):
-- one row; expires_ms is on the database's clock.
CREATE TABLE leader (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT COLLATE "C" NOT NULL,
    url        TEXT COLLATE "C" NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
