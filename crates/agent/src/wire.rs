//! The wire format of `/agent/v1` and of heartbeats, shared by both
//! sides: the controller's client ([`crate::RemoteHost`]) and the agent
//! daemon ([`crate::daemon`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_hv::VmSpec;
use standby_store::{DiskWriteStats, Manifest};
use standby_types::config::DatastoreConfig;
use standby_types::watch::{ProbeCheck, ProbeSpec};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PointStats {
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    pub size: u64,
}

impl PointStats {
    pub(crate) fn add(&mut self, s: &DiskWriteStats) {
        self.bytes_read += s.bytes_read;
        self.bytes_new += s.bytes_new_stored;
        self.chunks += s.chunks;
        self.chunks_new += s.chunks_new;
        self.size += s.size;
    }
}

/// `status`, `stop`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmCall {
    pub vm: String,
}

/// `statuses`: the VMs asked about.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmsCall {
    pub vms: Vec<String>,
}

/// The answer of `statuses`: each VM asked about, in the order asked.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmStatuses {
    pub statuses: Vec<Listed>,
}

/// One VM and its status.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listed {
    pub vm: String,
    pub status: standby_hv::VmStatus,
}

/// At most this many VMs in one `statuses` call.
pub const MAX_STATUSES: usize = 10_000;

/// `start`, `provision`, `missing-disks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpecCall {
    pub spec: VmSpec,
}

/// `migrate/prepare`: the destination half of a live migration listens
/// on `listen` for `spec`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MigratePrepareCall {
    pub spec: VmSpec,
    pub listen: standby_hv::MigrationListen,
}

/// `migrate/out`: the source half copies `spec`'s VM to `target`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MigrateOutCall {
    pub spec: VmSpec,
    pub target: standby_hv::MigrationTarget,
    pub options: standby_hv::MigrationOptions,
}

/// `migrate/confirm`: the source settles after the destination resumed
/// (`moved`) or was aborted.
#[derive(Debug, Serialize, Deserialize)]
pub struct MigrateConfirmCall {
    pub spec: VmSpec,
    pub moved: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShutdownCall {
    pub vm: String,
    pub timeout_ms: u64,
}

/// `point`: everything the agent needs to open the datastore and write.
#[derive(Debug, Serialize, Deserialize)]
pub struct PointCall {
    pub spec: VmSpec,
    pub site: String,
    pub datastore: String,
    pub config: DatastoreConfig,
    pub chunk_size: u32,
    pub labels: BTreeMap<String, String>,
    pub vm_config: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PointDone {
    pub manifest: Manifest,
    pub stats: PointStats,
}

/// `restore`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreCall {
    pub spec: VmSpec,
    pub datastore: String,
    pub config: DatastoreConfig,
    pub point: String,
    /// How to treat the VM's disks already at the host.
    #[serde(default)]
    pub onto: Onto,
}

/// `/agent/v1/restore-template`: write a template's disks for a new VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreTemplateCall {
    pub spec: VmSpec,
    pub datastore: String,
    pub config: DatastoreConfig,
    pub template: String,
}

/// How a restore treats the VM's disks already at the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Onto {
    /// Restored beside them and renamed over them once complete: they
    /// may be the VM's live data, kept whole if the restore fails.
    #[default]
    Fresh,
    /// Written over in place, only the chunks that differ: they are not
    /// live (an old copy, an earlier restore, a replica).
    Delta,
    /// A warm replica's next point: as `Delta`, through journals, so the
    /// disks hold the old point or the new one, never a mix.
    Replica,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreDone {
    /// Bytes of the disks restored.
    pub bytes: u64,
    /// Bytes written to the disks (all of them for a fresh restore).
    #[serde(default)]
    pub written: u64,
    /// Bytes of the existing disks read to compare them.
    #[serde(default)]
    pub read: u64,
    /// `full`, `delta from point P`, `delta (disks read)`; empty from an
    /// agent that predates delta restores.
    #[serde(default)]
    pub mode: String,
}

/// `fence`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FenceCall {
    pub reason: String,
}

/// What the host needs to start a drill's copy. `spec` is the VM as it
/// would run at this host (the controller's spec; a remote agent checks
/// it against its policy first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRequest {
    pub id: String,
    pub vm: String,
    pub site: String,
    pub point: String,
    pub point_time: DateTime<Utc>,
    pub datastore: String,
    pub spec: VmSpec,
}

/// `drill/start`: the drill and the datastore's settings (the agent opens
/// it itself).
#[derive(Debug, Serialize, Deserialize)]
pub struct DrillStartCall {
    pub drill: DrillRequest,
    pub config: DatastoreConfig,
}

/// `drill/probe`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DrillProbeCall {
    pub id: String,
    pub check: ProbeCheck,
    pub timeout_ms: u64,
}

/// `drill/stop`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DrillCall {
    pub id: String,
}

/// What fencing did to one VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FencedVm {
    pub vm: String,
    /// `stopped`, `already stopped` or `failed: ...`.
    pub result: String,
}

/// What an agent sends with each heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Heartbeat {
    #[serde(default)]
    pub version: String,
    /// The controller's session and the agent's counter (none on the
    /// first heartbeat: the answer tells them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// A host agent whose fence flag is set and that runs no VM any more:
    /// the controller's confirmation that the fence holds.
    #[serde(default)]
    pub fenced: bool,
    /// The agent's fence flag is set (it may still be stopping VMs): a
    /// controller that does not know the fence (a lost database) adopts
    /// it instead of lifting it.
    #[serde(default)]
    pub flagged: bool,
    /// The highest leader epoch the agent has seen (0: none), so a
    /// controller with a fresh database raises its own above it.
    #[serde(default)]
    pub epoch: u64,
}

/// The controller's answer: the probes the agent runs, how often to
/// report, and whether the agent's site is fenced (then the agent stops
/// all its VMs and refuses to start any until an answer says otherwise).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub probes: Vec<ProbeSpec>,
    /// Milliseconds.
    #[serde(with = "humantime_serde_ms")]
    #[schema(value_type = u64)]
    pub heartbeat: Duration,
    #[serde(default)]
    pub fenced: bool,
    /// The answering controller's leader epoch: a host agent acts on
    /// `fenced` only when it is not older than the highest it has seen.
    #[serde(default)]
    pub epoch: u64,
    /// Set when the heartbeat named no session or a stale one: it was not
    /// counted, and the agent sends the next one with this at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub session: Option<crate::fresh::Session>,
}

mod humantime_serde_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
