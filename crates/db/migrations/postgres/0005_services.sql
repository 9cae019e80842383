-- standby control-plane state, schema version 5: the front door.
--
-- One row per service: the site its clients are sent to. Written when the
-- controller first sees the service (the site where its VM is active) and
-- by every switch, so a restarted controller keeps forwarding to the same
-- site. No foreign key to sites: a site dropped from the configuration
-- must not block re-applying it; the controller re-checks the site against
-- the service's backends at start.
CREATE TABLE services (
    name        TEXT COLLATE "C" PRIMARY KEY,
    active_site TEXT COLLATE "C" NOT NULL,
    -- RFC 3339 UTC; NULL until the first switch.
    switched_at TEXT COLLATE "C"
);
