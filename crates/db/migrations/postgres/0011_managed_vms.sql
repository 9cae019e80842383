-- standby control-plane state, schema version 11: VMs made through the
-- API, the CLI or the portal (`standby vm create --template`).
--
-- standby.toml stays the source of the VMs it declares; these are the
-- others, each kept as its specification (the `[vms.NAME]` table's
-- fields, as JSON), the template it was made from, and who made it when.
CREATE TABLE managed_vms (
    name       TEXT COLLATE "C" PRIMARY KEY,
    spec       TEXT COLLATE "C" NOT NULL,
    template   TEXT COLLATE "C" NOT NULL,
    tenant     TEXT COLLATE "C",
    created_by TEXT COLLATE "C" NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL
);
