//! Request and response bodies of the controller's HTTP API (`/api/v1`),
//! shared by the server and the CLI so both sides agree by construction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{PointRecord, VmRecord};

/// Every API error has this JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
#[error("{message}")]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `not_found`, `conflict`.
    pub code: String,
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
}

/// A VM with its live state from the driver of the host it is active on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmView {
    #[serde(flatten)]
    pub record: VmRecord,
    /// `running`, `stopped`, `frozen`, `crashed` or `unknown`.
    pub state: String,
    pub pid: Option<u32>,
    pub since: Option<DateTime<Utc>>,
    pub exit: Option<String>,
    pub groups: Vec<String>,
    pub last_point: Option<PointRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteView {
    pub name: String,
    pub description: String,
    pub hosts: Vec<String>,
    pub datastores: Vec<String>,
    /// VMs active at this site.
    pub vms: Vec<String>,
    /// A fenced site runs no VM (see `standby site fence`).
    #[serde(default)]
    pub fenced: bool,
    #[serde(default)]
    pub fenced_since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub fence_reason: Option<String>,
}

/// `POST /api/v1/sites/{name}/fence`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FenceRequest {
    #[serde(default)]
    pub reason: String,
    /// The operator confirms that the site's hosts run nothing any more
    /// (powered off, or cut off for good): a copy may start elsewhere
    /// without the agents' answer.
    #[serde(default)]
    pub confirmed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatastoreView {
    pub name: String,
    pub site: String,
    pub path: String,
    pub points: usize,
    pub packs: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// Set when the datastore cannot be opened.
    pub error: Option<String>,
}

/// Answer to a request that started a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRef {
    pub job: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreRequest {
    pub point: String,
    /// Site to restore at.
    pub site: String,
    /// Host at that site; the site's first host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Datastore to read from; the nearest one holding the point when
    /// absent (one at the target site first).
    #[serde(default)]
    pub from: Option<String>,
    /// Start the VM once its disks are restored.
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PruneRequest {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GcRequest {
    /// Packs younger than this are never touched (seconds; default 3600).
    #[serde(default)]
    pub grace_secs: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncRequest {
    /// Point to copy; every point of the source when absent.
    #[serde(default)]
    pub point: Option<String>,
    /// Destination datastore.
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShutdownRequest {
    /// Seconds to wait after SIGTERM before SIGKILL; the VM's configured
    /// timeout when absent.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl GroupSpec {
    /// The group a request body makes (`POST`/`PUT /api/v1/groups/{name}`):
    /// read as a specification (unknown fields refused), then as
    /// `[groups.NAME]` reads it, so every field means and is checked the
    /// same. The error says what is wrong, for a 400.
    pub fn group_from_json(body: &[u8]) -> Result<crate::config::Group, String> {
        let spec: GroupSpec =
            serde_json::from_slice(body).map_err(|e| format!("not a group specification: {e}"))?;
        let mut v =
            serde_json::to_value(&spec).map_err(|e| format!("group specification as JSON: {e}"))?;
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null());
        }
        serde_json::from_value(v).map_err(|e| format!("group specification: {e}"))
    }
}

/// A service behind the front door (`GET /api/v1/services`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub vm: String,
    /// The front door's address, as configured.
    pub listen: String,
    /// `udp`, `tcp`.
    pub protocols: Vec<String>,
    /// Where clients are sent now.
    pub active_site: String,
    /// Site → the service's address there.
    pub backends: std::collections::BTreeMap<String, String>,
    /// `sip`, `tcp` or `http`: how runbooks check the service at a site.
    pub probe: Option<String>,
    pub probe_url: Option<String>,
    /// The last switch that changed the site (`None` before the first).
    pub switched_at: Option<DateTime<Utc>>,
    pub counters: ServiceCounters,
}

/// Front-door counters of one service since the controller started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceCounters {
    /// UDP flows (client addresses) being forwarded now.
    pub flows_active: u64,
    /// UDP flows dropped because the flow table was full.
    pub flows_evicted: u64,
    /// UDP flows dropped after `idle_timeout` without a datagram.
    #[serde(default)]
    pub flows_expired: u64,
    /// TCP connections refused because `max_connections` were open.
    #[serde(default)]
    pub connections_refused: u64,
    /// TCP connections closed after `tcp_idle_timeout` without a byte.
    #[serde(default)]
    pub connections_idle_closed: u64,
    /// Per site the traffic went to.
    pub sites: std::collections::BTreeMap<String, SiteCounters>,
}

/// Traffic of one service to one site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteCounters {
    /// UDP datagrams client → site and site → client.
    pub packets_to_site: u64,
    pub packets_to_clients: u64,
    /// Payload bytes, UDP and TCP.
    pub bytes_to_site: u64,
    pub bytes_to_clients: u64,
    /// UDP flows opened to the site.
    pub flows: u64,
    /// TCP connections opened to the site, in total and open now.
    pub connections: u64,
    pub connections_active: u64,
    /// Failed connects, sends and receives.
    pub errors: u64,
}

/// `POST /api/v1/services/{name}/switch`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwitchRequest {
    pub site: String,
}

/// The answer of a switch: where the service's clients go now and where
/// they went before (the same site when the switch changed nothing).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SwitchResult {
    pub service: String,
    pub site: String,
    pub previous: String,
    pub switched_at: Option<DateTime<Utc>>,
}

/// What a configuration reload applied (`POST /api/v1/config/reload`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigReloaded {
    /// One line per change (`vm pbx2: added`, `group gold: changed
    /// (schedule)`); empty when the file says what runs already.
    pub changes: Vec<String>,
    /// How long applying took, in milliseconds.
    pub took_ms: u64,
}

/// A protection group as the API makes it (`POST`/`PUT
/// /api/v1/groups/{name}`): the fields of `[groups.NAME]` in
/// `standby.toml`, with the same meaning and checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// VM names.
    pub members: Vec<String>,
    /// `every 30s` or a cron expression with 5 or 6 fields.
    pub schedule: String,
    /// Datastores that receive every point.
    pub datastores: Vec<String>,
    /// `keep_last`, `keep_hourly`, `keep_daily`, `keep_weekly`,
    /// `keep_monthly` (absent or all zero: keep everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub retention: Option<serde_json::Value>,
    /// e.g. `15m`: the newest point older than this is out of target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_target: Option<String>,
    /// `none` (default) or `warm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// A power of two, 64KiB to 4MiB (default 64KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub chunk_size: Option<serde_json::Value>,
    /// The owning tenant (a tenant's user: always theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// In answers: true when made through the API, false when the
    /// configuration file declares it. Ignored in requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// `POST /api/v1/templates`: make template `name` from a VM's point.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateRequest {
    pub name: String,
    /// `VM` (its newest point) or `VM@POINT-TIME` (a point id).
    pub from: String,
}

/// A disk of a template: what a VM made from it gets.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateDisk {
    pub name: String,
    pub size: u64,
    /// `raw` or `qcow2`, as the source VM had it.
    pub format: String,
}

/// A template as the datastores hold it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateInfo {
    pub name: String,
    /// The point it was made from.
    pub source: String,
    /// The VM that point is of.
    pub vm: String,
    pub created: chrono::DateTime<chrono::Utc>,
    /// The source VM's tenant (its users may deploy it).
    pub tenant: Option<String>,
    /// Sum of the disks' sizes.
    pub size: u64,
    pub disks: Vec<TemplateDisk>,
    /// The machine (qemu VMs): memory and processors.
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    /// Datastores holding it, and their sites.
    pub datastores: Vec<String>,
    pub sites: Vec<String>,
}

/// How a template reached one datastore.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateCopy {
    pub datastore: String,
    /// Chunks and stored bytes copied (none when the point was there).
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    pub chunks_skipped: u64,
    /// Why it did not reach this datastore.
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /api/v1/templates` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateCreated {
    pub template: TemplateInfo,
    /// Where it was made, then each copy.
    pub copies: Vec<TemplateCopy>,
    pub seconds: f64,
}

/// A port forward of a VM made from a template: the fields of
/// `[vms.NAME.qemu] forwards` entries.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// `udp` or `tcp`.
    pub protocol: String,
    /// An IPv4 address or `{site.VAR}`; default 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr: Option<String>,
    pub host_port: u16,
    pub guest_port: u16,
}

/// `POST /api/v1/vms`: a new VM from a template.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmCreateRequest {
    pub name: String,
    pub template: String,
    pub host: String,
    /// Its port forwards (the template's are not taken: they would
    /// clash with the source VM's).
    #[serde(default)]
    pub forwards: Vec<ForwardSpec>,
    /// Start it once its disks are written.
    #[serde(default = "yes")]
    pub start: bool,
}

/// What `DELETE /api/v1/vms/{name}` did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmDeleted {
    pub vm: String,
    /// The host it was at.
    pub host: String,
    /// Its disk files, left where they are.
    pub disks_left: Vec<String>,
}

/// `POST /api/v1/vms` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmCreated {
    pub vm: String,
    pub template: String,
    pub host: String,
    pub site: String,
    /// The datastore its disks were written from.
    pub datastore: String,
    /// Bytes of its disks, and bytes written (zero chunks stay holes).
    pub bytes: u64,
    pub written: u64,
    pub started: bool,
    pub seconds: f64,
}
