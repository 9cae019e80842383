//! What the engine's operations return: typed results, serialised the same
//! way in API answers, job results and runbook step outputs. A runbook
//! action's output is one of these (`standby_runbook::catalog`), so the
//! catalog's outputs are generated from the same types the code returns.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A VM's state after `vm.start`, `vm.shutdown` or `vm.stop`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct VmChanged {
    /// The VM.
    pub vm: String,
    /// Its state afterwards.
    pub state: String,
}

/// What `vm.restart` did.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VmRestarted {
    pub vm: String,
    pub host: String,
    pub site: String,
    /// It runs where it ran and answers its check.
    pub healed: bool,
    /// Its host answered (false: a host that may still run it, left to
    /// fencing: never restored elsewhere from here).
    pub host_answers: bool,
    /// Restarts tried.
    pub attempts: u32,
    /// From the step's start to the check passing (or giving up).
    pub seconds: f64,
    /// What passed (`service NAME`, `probe NAME`, `running`).
    pub checked: Option<String>,
    /// Each failed attempt, and why.
    pub failures: Vec<String>,
    /// Why nothing was done, when nothing was: the VM moved since, or its
    /// site is fenced, down or cut off (for fencing and `failover-site`).
    #[serde(default)]
    pub left_alone: Option<String>,
    /// When it ended, in seconds since the epoch.
    pub at_epoch: f64,
}

/// What `vm.migrate` did: the VM moved live, from host to host.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VmMigrated {
    pub vm: String,
    /// Where it ran.
    pub from_host: String,
    pub from_site: String,
    /// Where it runs now.
    pub host: String,
    pub site: String,
    /// From the step's start to the VM running at `host`.
    pub seconds: f64,
    /// Bytes the disk copy processed, and the time until the disks were
    /// in sync.
    pub disk_bytes: u64,
    pub disk_sync_seconds: f64,
    /// Bytes of memory and device state sent.
    pub state_bytes: u64,
    /// How long the VM was paused, as the hypervisor measured it (none
    /// when it does not say).
    pub downtime_ms: Option<f64>,
    /// The source copy is stopped (false: it is paused, never resumed, and
    /// `note` says what failed).
    pub source_stopped: bool,
    #[serde(default)]
    pub note: Option<String>,
}

/// The VMs (and their front-door services) `vm.list` selected.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct VmsListed {
    /// One per VM.
    pub vms: Vec<ListedVm>,
    /// Front-door services of those VMs.
    pub services: Vec<ListedService>,
    /// The recovery plans those VMs are in.
    #[serde(default)]
    pub plans: Vec<ListedPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListedVm {
    pub name: String,
    /// Where it is active.
    pub site: String,
    pub host: String,
    pub home_site: String,
    /// Where a failover of the site it runs at sends it now: the first of
    /// its DR sites that is not where it runs, not fenced and not down,
    /// else home if home is fit again; none: nowhere.
    pub dr_site: Option<String>,
    /// Its DR sites as configured, in order of preference.
    #[serde(default)]
    pub dr_sites: Vec<String>,
    pub groups: Vec<String>,
    /// Its state at its host, `unknown` when the host does not answer.
    pub state: String,
    /// The configured probe about it (label `vm`), if any.
    pub probe: Option<String>,
    /// Its recovery plan and tier (1-based), if it is in one.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub tier: Option<u32>,
    /// Higher comes back first within its tier.
    #[serde(default)]
    pub priority: i32,
    /// What it waits for before it starts: the tier before it in its plan
    /// (none: nothing, it starts as soon as it is restored).
    #[serde(default)]
    pub after: Option<TierWait>,
}

/// What a VM of a recovery plan waits for before it starts: the VMs of
/// the tier before its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierWait {
    pub plan: String,
    /// Its own tier, 1-based.
    pub tier: u32,
    /// The VMs of the tier before.
    pub vms: Vec<String>,
    /// None: until each answers its check where it runs (its front-door
    /// service, else its own probe, else running); else this long after
    /// they all run.
    #[serde(default)]
    pub delay_seconds: Option<f64>,
    /// How long to wait at most.
    pub timeout_seconds: f64,
}

/// A recovery plan of the VMs listed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListedPlan {
    pub name: String,
    pub rto_target_seconds: Option<f64>,
    /// The VMs of each tier, in order.
    pub tiers: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ListedService {
    pub service: String,
    pub vm: String,
    pub site: String,
    pub home_site: String,
    pub dr_site: Option<String>,
    /// Its probe kind (`tcp`, `http`, `sip`...), if any.
    pub probe: Option<String>,
}

/// A copy of a new point in another datastore of its group.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PointSynced {
    pub datastore: String,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    /// The agent that made the copy (none: the controller).
    #[serde(default)]
    pub by_agent: Option<String>,
    /// Bytes an agent put on the wire to another agent (batches, resends
    /// included).
    #[serde(default)]
    pub bytes_sent: u64,
    /// Batches sent again after a cut on the way.
    #[serde(default)]
    pub resent: u64,
    /// How long the copy took (bandwidth windows of the source's site
    /// included).
    #[serde(default)]
    pub seconds: f64,
    /// Points whose damaged copy in this datastore the copy repaired
    /// (their damaged chunks re-sent from the source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
}

/// A point of one VM: taken, copied to the group's other datastores and
/// pruned by retention.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PointTaken {
    pub vm: String,
    /// The point id.
    pub point: String,
    /// Where it was written.
    pub datastore: String,
    /// Time to take it.
    pub seconds: f64,
    /// Disk bytes it covers.
    pub size: u64,
    pub bytes_read: u64,
    /// Bytes no earlier point had.
    pub bytes_new: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    /// Its copies in the group's other datastores.
    pub synced: Vec<PointSynced>,
    /// Old points retention removed.
    pub pruned: usize,
    /// True: the step found this point taken by an earlier run of itself
    /// (the controller stopped before recording it); the figures are the
    /// catalog's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reused: bool,
    /// How the disks were read, as the driver says (the point's
    /// `snapshot` label: consistency, how long the guest was frozen, live
    /// or paused, full or incremental read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The warm replica brought to this point (groups with `replica =
    /// "warm"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaApplied>,
}

/// A warm replica brought to a new point at the VM's DR host.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ReplicaApplied {
    pub site: String,
    pub host: String,
    /// The copy it read.
    pub datastore: String,
    /// `delta from point P (journaled)` when it held the point before;
    /// `delta (disks read)` or `full` when it had to be rebuilt.
    pub mode: String,
    /// Bytes written to the replica.
    pub written: u64,
    /// Bytes of the replica read to compare.
    pub read: u64,
    pub seconds: f64,
}

/// A protection run of a group (a job): a point of every member.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct GroupProtected {
    pub group: String,
    /// One per member.
    pub vms: Vec<PointTaken>,
}

/// The points `point.create` took: of every member of a group, or of one
/// VM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointsCreated {
    pub group: String,
    /// One per VM.
    pub points: Vec<PointTaken>,
}

/// The newest point of a VM with a readable manifest.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointFound {
    /// The point id.
    pub point: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Its age now.
    pub age_seconds: f64,
    /// A datastore holding it.
    pub datastore: String,
}

/// A restore of a point at a site.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Restored {
    pub point: String,
    pub vm: String,
    pub site: String,
    pub host: String,
    /// The copy it was read from.
    pub datastore: String,
    /// Bytes written.
    pub bytes: u64,
    /// Time to write the disks.
    pub restore_seconds: f64,
    /// Time in all, the start included.
    pub seconds: f64,
    /// Whether the VM was started.
    pub started: bool,
    /// Copies skipped, and why (missing the point, corrupt).
    pub skipped: Vec<String>,
    /// Bytes actually written to the disks: with a delta restore, only
    /// the chunks that differed.
    #[serde(default)]
    pub written: u64,
    /// Bytes of the disks already at the host read to compare them.
    #[serde(default)]
    pub read: u64,
    /// `full`, `delta from point P` (the disks held P: not read), `delta
    /// (disks read)`.
    #[serde(default)]
    pub mode: String,
}

/// What `point.restore` did, with what a report of the failover needs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PointRestored {
    pub vm: String,
    pub point: String,
    pub site: String,
    pub host: String,
    /// The copy it was read from (unknown on a resumed step).
    pub datastore: Option<String>,
    /// Time taken.
    pub seconds: f64,
    /// Bytes written (unknown on a resumed step).
    pub bytes: Option<u64>,
    /// Whether the VM was started (unknown on a resumed step).
    pub started: Option<bool>,
    /// Age of the point's data when the VM came back.
    pub data_age_seconds: f64,
    /// When the point was taken, in seconds since the epoch.
    pub point_time_epoch: f64,
    /// When the restore ended, in seconds since the epoch.
    pub at_epoch: f64,
    /// True: an earlier run of the step had done the restore.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resumed: bool,
    /// Newer points that could not be restored from any reachable copy
    /// and were skipped for this older one (`fallback: older`), newest
    /// first.
    #[serde(default)]
    pub skipped: Vec<PointSkipped>,
    /// How the disks were written (see [`Restored::mode`]) and the bytes
    /// written (unknown on a resumed step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
    /// Its recovery plan tier, if it waited for one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// Time spent restored but waiting for the tier before it.
    #[serde(default)]
    pub waited_seconds: f64,
    /// What it waited for, and how each showed it was up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waited_for: Vec<String>,
}

/// A point a restore or a drill went past because no copy it could reach
/// restored it. Shown as `POINT (DATASTORE: reason; ...)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PointSkipped {
    pub point: String,
    /// When the point was taken.
    pub time: DateTime<Utc>,
    /// Each copy tried, and why it failed (`DATASTORE: reason`).
    pub reasons: Vec<String>,
}

impl std::fmt::Display for PointSkipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.point, self.reasons.join("; "))
    }
}

/// A site's fence, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Fence {
    pub site: String,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// What fencing did at one host.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct HostFenced {
    pub host: String,
    /// The remote agent serving it (none: in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `done`, or `pending: ...` when its agent did not answer.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How it is known that the host runs nothing (its agent stopped
    /// every VM, or the operator confirmed it); none: not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<String>,
}

/// What fencing did to one VM.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct VmFenced {
    pub vm: String,
    pub host: String,
    /// `stopped`, `already stopped`, `pending` (its agent is unreachable
    /// and stops it when it reconnects) or `failed: ...`.
    pub result: String,
}

/// A fenced site.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SiteFenced {
    pub site: String,
    /// Always true.
    pub fenced: bool,
    pub since: DateTime<Utc>,
    pub reason: String,
    /// Some VM's stop waits for its agent to reconnect.
    pub pending: bool,
    pub hosts: Vec<HostFenced>,
    pub vms: Vec<VmFenced>,
}

/// What lifting a fence told one remote agent.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AgentUnfenced {
    pub agent: String,
    /// `unfenced`, or when it learns (its next heartbeat).
    pub result: String,
}

/// A site whose fence is lifted.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SiteUnfenced {
    pub site: String,
    /// Always false.
    pub fenced: bool,
    /// Whether a fence was lifted (false: it was not fenced).
    pub was_fenced: bool,
    /// The fence lifted.
    pub lifted: Option<Fence>,
    pub agents: Vec<AgentUnfenced>,
}

/// A probe that passed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProbePassed {
    /// The configured probe (none for an ad-hoc check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// Time until it passed.
    pub seconds: f64,
    /// Latency of the passing check.
    pub latency_ms: u64,
    /// When it passed.
    pub at: DateTime<Utc>,
    /// The same, in seconds since the epoch.
    pub at_epoch: f64,
}

/// How a drill's copy runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CopyKind {
    /// A process (the process driver).
    #[default]
    Process,
    /// A QEMU VM (the qemu driver).
    Qemu,
}

/// A running drill, as recorded in its directory (the output of
/// `drill.start`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct DrillState {
    pub id: String,
    pub vm: String,
    pub site: String,
    /// The point booted.
    pub point: String,
    pub point_time: DateTime<Utc>,
    pub datastore: String,
    /// The copy's network namespace.
    pub netns: String,
    #[schema(value_type = String)]
    pub dir: std::path::PathBuf,
    /// The copy's name under the drill's process driver.
    pub copy: String,
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
    /// Age of the point's data when the drill started.
    pub data_age_seconds: f64,
    /// Time to restore its disks.
    pub restore_seconds: f64,
    pub bytes: u64,
    /// How the copy runs (records without it are process copies).
    #[serde(default)]
    pub kind: CopyKind,
    /// The least time its probe waits for a first answer: the copy's boot.
    #[serde(default)]
    pub boot_allowance_seconds: f64,
    /// Newer points skipped because no reachable copy restored them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<PointSkipped>,
    /// Its recovery plan tier, if it waited for the copies of the tier
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// Time spent waiting for them before its restore began.
    #[serde(default)]
    pub waited_seconds: f64,
    /// When its copy first answered a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<DateTime<Utc>>,
}

/// A drill's copy answered its probe.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DrillProbed {
    pub drill: String,
    /// From the drill's start to the first passing probe.
    pub rto_seconds: f64,
    /// Latency of the passing probe.
    pub latency_seconds: f64,
    pub detail: String,
    /// The VM (set by `drill.probe`).
    #[serde(default)]
    pub vm: String,
}

/// A drill torn down and verified gone.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DrillStopped {
    pub drill: String,
    /// The VM (none when the drill never started).
    pub vm: Option<String>,
    /// True: copy stopped, namespace and files gone.
    pub verified: bool,
    /// What was verified.
    pub checks: Vec<String>,
}

/// One VM of a drill report.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DrilledVm {
    pub vm: String,
    pub site: String,
    pub point: String,
    pub point_time: Option<DateTime<Utc>>,
    pub data_age_seconds: f64,
    pub restore_seconds: f64,
    /// From the drill's start to the first passing probe (none: the copy
    /// never answered).
    pub rto_seconds: Option<f64>,
    /// Teardown verified.
    pub verified: bool,
    /// Newer points skipped because no reachable copy restored them (a
    /// finding of the drill: those points would not have restored in a
    /// failover either).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<PointSkipped>,
    /// When its copy first answered, in seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_epoch: Option<f64>,
}

/// A tier of a recovery plan in a drill: its VMs, and the time from the
/// drill's first restore to the last of them answering.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TierTime {
    pub plan: String,
    pub tier: u32,
    pub vms: Vec<String>,
    /// None: one of them never answered.
    pub seconds: Option<f64>,
}

/// A drill's report.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DrillReport {
    pub site: String,
    pub vms: Vec<DrilledVm>,
    /// Every copy answered and was torn down.
    pub ok: bool,
    pub failures: Vec<String>,
    /// One line for people.
    pub summary: String,
    /// Each tier of the recovery plans drilled, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierTime>,
}

/// An incident a runbook opened (or found open with the same dedup key).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct IncidentOpened {
    /// The incident id.
    pub incident: i64,
    pub title: String,
}

/// An incident a runbook noted or resolved.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct IncidentTouched {
    /// The incident id.
    pub incident: i64,
    /// Its state afterwards (`incident.resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Messages queued in the notification outbox.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Queued {
    /// Delivery ids queued.
    pub deliveries: Vec<i64>,
}

/// An HTTP answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HttpAnswered {
    pub status: u16,
    /// The body, parsed when JSON.
    pub body: Value,
}

/// A command that ran and succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommandRan {
    /// Exit code.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A wait.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Slept {
    pub seconds: f64,
}
