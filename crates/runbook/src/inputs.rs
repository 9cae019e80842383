//! The typed input of every action, with its name, summary, idempotency
//! and output type ([`Action`]). A field's doc comment is its description
//! in the catalog and in the published schema.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use standby_types::outcome::{
    CommandRan, DrillProbed, DrillReport, DrillState, DrillStopped, HttpAnswered, IncidentOpened,
    IncidentTouched, PointFound, PointRestored, PointsCreated, ProbePassed, Queued, SiteFenced,
    SiteUnfenced, Slept, VmChanged, VmMigrated, VmRestarted, VmsListed,
};

use crate::scalar::{Flag, Int, Items, Span, Text};

/// An action a runbook step may name: its input is `Self`.
pub trait Action: DeserializeOwned + JsonSchema {
    const NAME: &'static str;
    const SUMMARY: &'static str;
    /// Why running it twice (a retry, or a resumed job) does no harm.
    const IDEMPOTENCY: &'static str;
    type Output: serde::Serialize + DeserializeOwned + JsonSchema;
}

macro_rules! action {
    ($ty:ident, $name:literal, $out:ty, $summary:literal, $idem:literal) => {
        impl Action for $ty {
            const NAME: &'static str = $name;
            const SUMMARY: &'static str = $summary;
            const IDEMPOTENCY: &'static str = $idem;
            type Output = $out;
        }
    };
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmList {
    /// Only this VM (an error if no such VM is configured).
    #[serde(default)]
    pub vm: Option<Text>,
    /// Only VMs active at this site.
    #[serde(default)]
    pub site: Option<Text>,
    /// Only members of this group.
    #[serde(default)]
    pub group: Option<Text>,
    /// Only VMs in at least one protection group.
    #[serde(default)]
    pub protected: Option<Flag>,
}
action!(
    VmList,
    "vm.list",
    VmsListed,
    "List VMs, optionally one VM, at one site, in one group, or only protected ones",
    "reads only"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStart {
    /// The VM.
    pub vm: Text,
}
action!(
    VmStart,
    "vm.start",
    VmChanged,
    "Start a VM at its active host",
    "a running VM is left as it is"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmShutdown {
    /// The VM.
    pub vm: Text,
    /// Forced stop after this (default: the VM's shutdown_timeout).
    #[serde(default)]
    pub timeout: Option<Span>,
}
action!(
    VmShutdown,
    "vm.shutdown",
    VmChanged,
    "Shut a VM down gracefully (forced after the timeout)",
    "a stopped VM stays stopped"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStop {
    /// The VM.
    pub vm: Text,
}
action!(
    VmStop,
    "vm.stop",
    VmChanged,
    "Stop a VM at once",
    "a stopped VM stays stopped"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRestart {
    /// The VM.
    pub vm: Text,
    /// Restarts tried at most (default 3).
    #[serde(default)]
    pub attempts: Option<Int>,
    /// Wait before the second attempt, doubled before each next one
    /// (default 2s).
    #[serde(default)]
    pub backoff: Option<Span>,
    /// How long each attempt may take to answer its check (default 30s).
    #[serde(default)]
    pub timeout: Option<Span>,
    /// The site the trouble was seen at (an alert's `site` label): a VM
    /// that runs elsewhere now is left alone.
    #[serde(default)]
    pub site: Option<Text>,
}
action!(
    VmRestart,
    "vm.restart",
    VmRestarted,
    "Restart a VM where it runs (stopped first if hung) until it runs and answers its check (its front-door service there, else its probe), with bounded attempts and backoff; says whether it healed and whether its host answered",
    "a VM that runs and answers is restarted again only if it fails its check"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmMigrate {
    /// The VM: it must be running.
    pub vm: Text,
    /// The site to move it to.
    pub site: Text,
    /// The host there (default: the site's first host).
    #[serde(default)]
    pub host: Option<Text>,
    /// Longest pause of the VM the state copy aims for (default 300ms).
    #[serde(default)]
    pub downtime_limit: Option<Span>,
    /// Give up (the VM runs on at its source) after this (default 10m).
    #[serde(default)]
    pub timeout: Option<Span>,
}
action!(
    VmMigrate,
    "vm.migrate",
    VmMigrated,
    "Move a running VM live to a host at another site: its disks and memory are copied while it runs, it pauses for the last of them and resumes at the target; the source copy is stopped. Fails, saying why, where a live move is not possible (different drivers, no migration address, a stopped VM), and on any failure before the switchover the VM runs on at its source, untouched",
    "the step records each phase: a re-run finishes a move that switched over, or removes the target's half and resumes the source (never both running), then moves again"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointCreate {
    /// The group: every member (give one of group and vm).
    #[serde(default)]
    pub group: Option<Text>,
    /// The VM, in its first group.
    #[serde(default)]
    pub vm: Option<Text>,
}
action!(
    PointCreate,
    "point.create",
    PointsCreated,
    "Take a recovery point of a group (every member) or of one VM",
    "the points taken are recorded with the step; a re-run step whose points exist returns them"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointLatest {
    /// The VM.
    pub vm: Text,
    /// Only copies in datastores at this site.
    #[serde(default)]
    pub site: Option<Text>,
}
action!(
    PointLatest,
    "point.latest",
    PointFound,
    "The newest point of a VM with a readable manifest",
    "reads only"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointRestore {
    /// The VM.
    pub vm: Text,
    /// Where to restore.
    pub site: Text,
    /// Point id (default: the newest readable).
    #[serde(default)]
    pub point: Option<Text>,
    /// Start the VM afterwards (default false).
    #[serde(default)]
    pub start: Option<Flag>,
    /// When no copy the target can reach restores the point (missing,
    /// unreachable, damaged): `older` goes back to the next older point
    /// of the VM, and on, until one restores; `none` (the default) fails.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// With `fallback: older`: never restore a point older than this; the
    /// step fails and says which points it skipped.
    #[serde(default)]
    pub max_data_age: Option<Span>,
    /// With `start`: restore at once, but start only once the tier before
    /// the VM's in its recovery plan is up (`vm.list` gives each VM's
    /// `after`); none: start as soon as restored.
    #[serde(default)]
    pub after: Option<standby_types::outcome::TierWait>,
}

/// What a restore does when its point cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Go back to the next older point until one restores.
    Older,
    /// Fail.
    #[default]
    None,
}
action!(
    PointRestore,
    "point.restore",
    PointRestored,
    "Restore a point of a VM at a site, and start it",
    "a VM already active at the site with that point restored (and running when start) returns the recorded result"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteFence {
    /// The site.
    pub site: Text,
    /// Why, recorded with the fence.
    pub reason: Text,
}
action!(
    SiteFence,
    "site.fence",
    SiteFenced,
    "Fence a site: its VMs stop and none starts there",
    "a fenced site stays fenced"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteUnfence {
    /// The site.
    pub site: Text,
}
action!(
    SiteUnfence,
    "site.unfence",
    SiteUnfenced,
    "Lift the fence of a site",
    "an unfenced site stays unfenced"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficSwitch {
    /// The front-door service.
    pub service: Text,
    /// The site its clients go to from now on.
    pub site: Text,
}
action!(
    TrafficSwitch,
    "traffic.switch",
    standby_types::api::SwitchResult,
    "Send a service's traffic to a site through the front door",
    "switching to the current site changes nothing"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeWait {
    /// A configured probe: a fresh passing result.
    #[serde(default)]
    pub probe: Option<Text>,
    /// A front-door service: its probe against its backend at `site`.
    #[serde(default)]
    pub service: Option<Text>,
    /// With `service`: the site to check it at.
    #[serde(default)]
    pub site: Option<Text>,
    /// An ad-hoc check: tcp, http, udp or sip.
    #[serde(default)]
    pub kind: Option<Text>,
    /// host:port (tcp, udp, sip).
    #[serde(default)]
    pub target: Option<Text>,
    /// URL (http).
    #[serde(default)]
    pub url: Option<Text>,
    /// Give up after (default 60s).
    #[serde(default)]
    pub timeout: Option<Span>,
    /// Between attempts (default 500ms).
    #[serde(default)]
    pub interval: Option<Span>,
}
action!(
    ProbeWait,
    "probe.wait",
    ProbePassed,
    "Wait until a probe passes: a configured probe (a fresh passing result) or an ad-hoc check",
    "reads only"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillStart {
    /// Drill id: 1-40 letters, digits, '-', '_'.
    pub id: Text,
    /// The VM.
    pub vm: Text,
    /// Where to boot the copy (the VM's DR site).
    pub site: Text,
    /// Point id (default: newest intact at the site).
    #[serde(default)]
    pub point: Option<Text>,
    /// Boot only once the copies of the tier before the VM's in its
    /// recovery plan answer (`vm.list` gives each VM's `after`); their
    /// drill ids are this id with the VM's name replaced by theirs.
    #[serde(default)]
    pub after: Option<standby_types::outcome::TierWait>,
}
action!(
    DrillStart,
    "drill.start",
    DrillState,
    "Boot a copy of a VM from its newest intact point at a site (or 'point') in a network namespace of its own, loopback only; production is untouched",
    "a drill id already running returns its recorded state"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillProbe {
    /// Drill id.
    pub id: Text,
    /// sip, tcp or http (with `port`; default: the VM's front-door
    /// service check).
    #[serde(default)]
    pub kind: Option<Text>,
    /// Port on the copy's loopback.
    #[serde(default)]
    pub port: Option<Int>,
    /// Give up after (default 60s).
    #[serde(default)]
    pub timeout: Option<Span>,
}
action!(
    DrillProbe,
    "drill.probe",
    DrillProbed,
    "Wait until a drill's copy answers inside its namespace: 'kind' and 'port', or the VM's front-door service check",
    "reads only"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillStop {
    /// Drill id.
    pub id: Text,
}
action!(
    DrillStop,
    "drill.stop",
    DrillStopped,
    "Stop a drill's copy, delete its namespace and files, and verify each is gone",
    "a drill already gone is verified again and succeeds"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillReportOf {
    /// The drilled site.
    #[serde(default)]
    pub site: Option<Text>,
    /// Outputs of drill.start (null for an item skipped).
    #[serde(default)]
    pub boot: Items<Option<Booted>>,
    /// Outputs of drill.probe.
    #[serde(default)]
    pub probe: Items<Option<Probed>>,
    /// Outputs of drill.stop.
    #[serde(default)]
    pub teardown: Items<Option<TornDown>>,
}

/// What `drill.report` reads of a `drill.start` output ([`DrillState`]).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Booted {
    pub vm: String,
    #[serde(default)]
    pub site: String,
    pub point: String,
    #[serde(default)]
    pub point_time: Option<chrono::DateTime<chrono::Utc>>,
    pub data_age_seconds: f64,
    pub restore_seconds: f64,
    /// Newer points skipped because no reachable copy restored them.
    #[serde(default)]
    pub skipped: Vec<standby_types::outcome::PointSkipped>,
    /// When its restore began.
    #[serde(default)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What `drill.report` reads of a `drill.probe` output ([`DrillProbed`]).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct Probed {
    pub vm: String,
    pub rto_seconds: f64,
}

/// What `drill.report` reads of a `drill.stop` output ([`DrillStopped`]).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TornDown {
    #[serde(default)]
    pub vm: Option<String>,
    pub verified: bool,
}
action!(
    DrillReportOf,
    "drill.report",
    DrillReport,
    "Compose a drill's report from its boot, probe and teardown outputs; records it as a drill.report event; fails when a copy did not answer or teardown was not verified",
    "reads its inputs; the event may be recorded twice on a resume"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentOpen {
    /// Title.
    pub title: Text,
    /// info, warning, error (default) or critical.
    #[serde(default)]
    pub severity: Option<Text>,
    /// Description.
    #[serde(default)]
    pub description: Option<Text>,
    /// Dedup key (default: runbook:JOB).
    #[serde(default)]
    pub dedup: Option<Text>,
    /// Labels of the incident besides `runbook` (empty ones are left
    /// out); a `vm` label makes it the VM's tenant's too.
    #[serde(default)]
    pub labels: BTreeMap<String, Option<Text>>,
}
action!(
    IncidentOpen,
    "incident.open",
    IncidentOpened,
    "Open an incident (or find the open one with the same dedup key); it becomes the job's incident",
    "the dedup key (default per job) returns the same open incident"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentNote {
    /// The note.
    pub text: Text,
    /// Default: the job's incident.
    #[serde(default)]
    pub incident: Option<Int>,
}
action!(
    IncidentNote,
    "incident.note",
    IncidentTouched,
    "Add a note to an incident's timeline",
    "a note with the same text by the same step is not added twice"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentResolve {
    /// Default: the job's incident.
    #[serde(default)]
    pub incident: Option<Int>,
    /// Closing note.
    #[serde(default)]
    pub note: Option<Text>,
}
action!(
    IncidentResolve,
    "incident.resolve",
    IncidentTouched,
    "Resolve an incident, with a note",
    "a resolved incident stays resolved"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Receiver name (default: every receiver).
    #[serde(default)]
    pub receiver: Option<Text>,
    /// Subject.
    pub subject: Text,
    /// Text.
    pub text: Text,
}
action!(
    Notify,
    "notify",
    Queued,
    "Send a message through the notification outbox",
    "deliveries queued by the step are recorded; a re-run does not queue again"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Default GET.
    #[serde(default)]
    pub method: Option<Text>,
    /// URL.
    pub url: Text,
    /// JSON body (a string is sent as text).
    #[serde(default)]
    pub body: Option<Value>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
    /// Fail unless this status (default: any 2xx).
    #[serde(default)]
    pub expect_status: Option<Int>,
}
action!(
    Http,
    "http",
    HttpAnswered,
    "Make an HTTP request",
    "the request carries an Idempotency-Key header (job:step:item)"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    /// Argv, e.g. [sh, -c, 'echo hi'].
    pub command: Vec<Text>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, Text>,
    /// Default 60s.
    #[serde(default)]
    pub timeout: Option<Span>,
}
action!(
    Shell,
    "shell",
    CommandRan,
    "Run a command (an argv list, no shell interpolation)",
    "not by itself: STANDBY_IDEMPOTENCY_KEY (job:step:item) is in its environment"
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long, e.g. 5s.
    pub duration: Span,
}
action!(Sleep, "sleep", Slept, "Wait", "harmless");
