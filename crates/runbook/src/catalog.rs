//! The action catalog: every action a step may name, with its inputs,
//! outputs and how it stays idempotent. The server implements them
//! (`standby-server`'s `runbooks::actions`); validation and the CLI read
//! this table.

use serde::Serialize;

/// One input or output of an action.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    /// `string`, `bool`, `number`, `duration`, `list`, `map`, `any`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub doc: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ActionSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub inputs: &'static [Field],
    pub outputs: &'static [Field],
    /// Why running it twice (a retry, or a resumed job) does no harm.
    pub idempotency: &'static str,
}

const fn req(name: &'static str, kind: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        required: true,
        kind,
        doc,
    }
}

const fn opt(name: &'static str, kind: &'static str, doc: &'static str) -> Field {
    Field {
        name,
        required: false,
        kind,
        doc,
    }
}

const VM_STATE: &[Field] = &[
    req("vm", "string", "the VM"),
    req("state", "string", "its state afterwards"),
];

pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "vm.list",
        summary: "List VMs, optionally one VM, at one site, in one group, or only protected ones",
        inputs: &[
            opt(
                "vm",
                "string",
                "only this VM (an error if no such VM is configured)",
            ),
            opt("site", "string", "only VMs active at this site"),
            opt("group", "string", "only members of this group"),
            opt(
                "protected",
                "bool",
                "only VMs in at least one protection group",
            ),
        ],
        outputs: &[
            req(
                "vms",
                "list",
                "[{name, site, host, home_site, dr_site, groups, state, probe}]; dr_site and probe may be null",
            ),
            req(
                "services",
                "list",
                "front-door services of those VMs: [{service, vm, site, home_site, dr_site, probe}]",
            ),
        ],
        idempotency: "reads only",
    },
    ActionSpec {
        name: "vm.start",
        summary: "Start a VM at its active host",
        inputs: &[req("vm", "string", "the VM")],
        outputs: VM_STATE,
        idempotency: "a running VM is left as it is",
    },
    ActionSpec {
        name: "vm.shutdown",
        summary: "Shut a VM down gracefully (forced after the timeout)",
        inputs: &[
            req("vm", "string", "the VM"),
            opt("timeout", "duration", "default: the VM's shutdown_timeout"),
        ],
        outputs: VM_STATE,
        idempotency: "a stopped VM stays stopped",
    },
    ActionSpec {
        name: "vm.stop",
        summary: "Stop a VM at once",
        inputs: &[req("vm", "string", "the VM")],
        outputs: VM_STATE,
        idempotency: "a stopped VM stays stopped",
    },
    ActionSpec {
        name: "point.create",
        summary: "Take a recovery point of a group (every member) or of one VM",
        inputs: &[
            opt("group", "string", "the group (one of group or vm)"),
            opt("vm", "string", "the VM, in its first group"),
        ],
        outputs: &[req(
            "points",
            "list",
            "[{vm, point, datastore, seconds, ...}] one per VM",
        )],
        idempotency: "the points taken are recorded with the step; a re-run step whose points exist returns them",
    },
    ActionSpec {
        name: "point.latest",
        summary: "The newest point of a VM with a readable manifest",
        inputs: &[
            req("vm", "string", "the VM"),
            opt("site", "string", "only copies in datastores at this site"),
        ],
        outputs: &[
            req("point", "string", "point id"),
            req("time", "string", "when it was taken (RFC 3339)"),
            req("age_seconds", "number", "its age now"),
            req("datastore", "string", "a datastore holding it"),
        ],
        idempotency: "reads only",
    },
    ActionSpec {
        name: "point.restore",
        summary: "Restore a point of a VM at a site, and start it",
        inputs: &[
            req("vm", "string", "the VM"),
            req("site", "string", "where to restore"),
            opt("point", "string", "point id (default: the newest readable)"),
            opt("start", "bool", "start the VM afterwards (default false)"),
        ],
        outputs: &[
            req("point", "string", "point restored"),
            req("site", "string", "site"),
            req("host", "string", "host"),
            req("seconds", "number", "time taken"),
            req("bytes", "number", "bytes written"),
            req(
                "data_age_seconds",
                "number",
                "age of the point when the VM started",
            ),
        ],
        idempotency: "a VM already active at the site with that point restored (and running when start) returns the recorded result",
    },
    ActionSpec {
        name: "site.fence",
        summary: "Fence a site: its VMs stop and none starts there",
        inputs: &[
            req("site", "string", "the site"),
            req("reason", "string", "why, recorded with the fence"),
        ],
        outputs: &[],
        idempotency: "a fenced site stays fenced",
    },
    ActionSpec {
        name: "site.unfence",
        summary: "Lift the fence of a site",
        inputs: &[req("site", "string", "the site")],
        outputs: &[],
        idempotency: "an unfenced site stays unfenced",
    },
    ActionSpec {
        name: "traffic.switch",
        summary: "Send a service's traffic to a site through the front door",
        inputs: &[
            req("service", "string", "the service"),
            req("site", "string", "the site"),
        ],
        outputs: &[],
        idempotency: "switching to the current site changes nothing",
    },
    ActionSpec {
        name: "probe.wait",
        summary: "Wait until a probe passes: a configured probe (a fresh passing result) or an ad-hoc check",
        inputs: &[
            opt("probe", "string", "configured probe name"),
            opt(
                "service",
                "string",
                "front-door service: its probe against its backend at 'site'",
            ),
            opt("site", "string", "with 'service': the site to check it at"),
            opt("kind", "string", "ad-hoc check: tcp, http, udp or sip"),
            opt("target", "string", "host:port (tcp, udp, sip)"),
            opt("url", "string", "URL (http)"),
            opt("timeout", "duration", "give up after (default 60s)"),
            opt("interval", "duration", "between attempts (default 500ms)"),
        ],
        outputs: &[
            req("seconds", "number", "time until it passed"),
            req("latency_ms", "number", "latency of the passing check"),
            req("at", "string", "when it passed (RFC 3339)"),
        ],
        idempotency: "reads only",
    },
    ActionSpec {
        name: "drill.start",
        summary: "Boot a copy of a VM from its newest intact point at a site (or 'point') in a network namespace of its own, loopback only; production is untouched",
        inputs: &[
            req("id", "string", "drill id: 1-40 letters, digits, '-', '_'"),
            req("vm", "string", "the VM"),
            req(
                "site",
                "string",
                "where to boot the copy (the VM's DR site)",
            ),
            opt(
                "point",
                "string",
                "point id (default: newest intact at the site)",
            ),
        ],
        outputs: &[
            req("id", "string", "the drill id"),
            req("vm", "string", "the VM"),
            req("point", "string", "the point booted"),
            req("point_time", "string", "when it was taken"),
            req(
                "data_age_seconds",
                "number",
                "age of its data when the drill started",
            ),
            req("restore_seconds", "number", "time to restore its disks"),
            req("netns", "string", "the copy's network namespace"),
        ],
        idempotency: "a drill id already running returns its recorded state",
    },
    ActionSpec {
        name: "drill.probe",
        summary: "Wait until a drill's copy answers inside its namespace: 'kind' and 'port', or the VM's front-door service check",
        inputs: &[
            req("id", "string", "drill id"),
            opt("kind", "string", "sip, tcp or http"),
            opt("port", "number", "port on the copy's loopback"),
            opt("timeout", "duration", "give up after (default 60s)"),
        ],
        outputs: &[
            req(
                "rto_seconds",
                "number",
                "from the drill's start to the first passing probe",
            ),
            req("latency_seconds", "number", "latency of the passing probe"),
            req("vm", "string", "the VM"),
        ],
        idempotency: "reads only",
    },
    ActionSpec {
        name: "drill.stop",
        summary: "Stop a drill's copy, delete its namespace and files, and verify each is gone",
        inputs: &[req("id", "string", "drill id")],
        outputs: &[
            req(
                "verified",
                "bool",
                "true: copy stopped, namespace and files gone",
            ),
            req("checks", "list", "what was verified"),
            opt("vm", "string", "the VM (null when the drill never started)"),
        ],
        idempotency: "a drill already gone is verified again and succeeds",
    },
    ActionSpec {
        name: "drill.report",
        summary: "Compose a drill's report from its boot, probe and teardown outputs; records it as a drill.report event; fails when a copy did not answer or teardown was not verified",
        inputs: &[
            opt("site", "string", "the drilled site"),
            opt("boot", "list", "outputs of drill.start"),
            opt("probe", "list", "outputs of drill.probe"),
            opt("teardown", "list", "outputs of drill.stop"),
        ],
        outputs: &[
            req(
                "vms",
                "list",
                "[{vm, point, data_age_seconds, restore_seconds, rto_seconds, verified}]",
            ),
            req("ok", "bool", "every copy answered and was torn down"),
            req("summary", "string", "one line for people"),
        ],
        idempotency: "reads its inputs; the event may be recorded twice on a resume",
    },
    ActionSpec {
        name: "incident.open",
        summary: "Open an incident (or find the open one with the same dedup key); it becomes the job's incident",
        inputs: &[
            req("title", "string", "title"),
            opt(
                "severity",
                "string",
                "info, warning, error (default) or critical",
            ),
            opt("description", "string", "description"),
            opt("dedup", "string", "dedup key (default: runbook:JOB)"),
            opt(
                "labels",
                "map",
                "labels of the incident besides `runbook` (string values; empty ones are left out); a `vm` label makes it the VM's tenant's too",
            ),
        ],
        outputs: &[req("incident", "number", "incident id")],
        idempotency: "the dedup key (default per job) returns the same open incident",
    },
    ActionSpec {
        name: "incident.note",
        summary: "Add a note to an incident's timeline",
        inputs: &[
            req("text", "string", "the note"),
            opt("incident", "number", "default: the job's incident"),
        ],
        outputs: &[req("incident", "number", "incident id")],
        idempotency: "a note with the same text by the same step is not added twice",
    },
    ActionSpec {
        name: "incident.resolve",
        summary: "Resolve an incident, with a note",
        inputs: &[
            opt("incident", "number", "default: the job's incident"),
            opt("note", "string", "closing note"),
        ],
        outputs: &[req("incident", "number", "incident id")],
        idempotency: "a resolved incident stays resolved",
    },
    ActionSpec {
        name: "notify",
        summary: "Send a message through the notification outbox",
        inputs: &[
            opt(
                "receiver",
                "string",
                "receiver name (default: every receiver)",
            ),
            req("subject", "string", "subject"),
            req("text", "string", "text"),
        ],
        outputs: &[req("deliveries", "list", "delivery ids queued")],
        idempotency: "deliveries queued by the step are recorded; a re-run does not queue again",
    },
    ActionSpec {
        name: "http",
        summary: "Make an HTTP request",
        inputs: &[
            opt("method", "string", "default GET"),
            req("url", "string", "URL"),
            opt("body", "any", "JSON body (a string is sent as text)"),
            opt("headers", "map", "extra headers"),
            opt(
                "expect_status",
                "number",
                "fail unless this status (default: any 2xx)",
            ),
        ],
        outputs: &[
            req("status", "number", "HTTP status"),
            req("body", "any", "body, parsed when JSON"),
        ],
        idempotency: "the request carries an Idempotency-Key header (job:step:item)",
    },
    ActionSpec {
        name: "shell",
        summary: "Run a command (an argv list, no shell interpolation)",
        inputs: &[
            req("command", "list", "argv, e.g. [sh, -c, 'echo hi']"),
            opt("env", "map", "extra environment"),
            opt("timeout", "duration", "default 60s"),
        ],
        outputs: &[
            req("code", "number", "exit code"),
            req("stdout", "string", "standard output"),
            req("stderr", "string", "standard error"),
        ],
        idempotency: "not by itself: STANDBY_IDEMPOTENCY_KEY (job:step:item) is in its environment",
    },
    ActionSpec {
        name: "sleep",
        summary: "Wait",
        inputs: &[req("duration", "duration", "how long, e.g. 5s")],
        outputs: &[req("seconds", "number", "seconds slept")],
        idempotency: "harmless",
    },
];

pub fn action(name: &str) -> Option<&'static ActionSpec> {
    ACTIONS.iter().find(|a| a.name == name)
}

/// The catalog as text, as `standby runbook actions` prints it.
pub fn describe() -> String {
    let mut s = String::new();
    for a in ACTIONS {
        s.push_str(&format!("{}\n  {}\n", a.name, a.summary));
        if !a.inputs.is_empty() {
            s.push_str("  inputs:\n");
            for f in a.inputs {
                s.push_str(&format!(
                    "    {}{} ({}): {}\n",
                    f.name,
                    if f.required { "" } else { "?" },
                    f.kind,
                    f.doc
                ));
            }
        }
        if !a.outputs.is_empty() {
            s.push_str("  outputs:\n");
            for f in a.outputs {
                s.push_str(&format!("    {} ({}): {}\n", f.name, f.kind, f.doc));
            }
        }
        s.push_str(&format!("  idempotency: {}\n\n", a.idempotency));
    }
    s
}
