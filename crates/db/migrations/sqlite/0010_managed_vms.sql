-- standby control-plane state, schema version 10: VMs made through the
-- API, the CLI or the portal (`standby vm create --template`).
--
-- standby.toml stays the source of the VMs it declares; these are the
-- others, each kept as its specification (the `[vms.NAME]` table's
-- fields, as JSON), the template it was made from, and who made it when.
CREATE TABLE managed_vms (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    template   TEXT NOT NULL,
    tenant     TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
