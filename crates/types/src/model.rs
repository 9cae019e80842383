//! Records of the control plane: what the database stores and the API
//! returns. The CLI prints these; the server fills them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteRecord {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRecord {
    pub name: String,
    pub site: String,
    pub driver: String,
}

/// A VM's inventory entry and where it currently lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRecord {
    pub name: String,
    /// The site the configuration places the VM at.
    pub home_site: String,
    pub home_host: String,
    pub dr_site: Option<String>,
    /// Where the VM is active now (differs from home after a restore
    /// elsewhere).
    pub active_site: String,
    pub active_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskRecord {
    pub vm: String,
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupRecord {
    pub name: String,
    pub schedule: String,
    pub members: Vec<String>,
    pub datastores: Vec<String>,
    /// Persisted so a controller restart keeps the schedule.
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<DateTime<Utc>>,
    pub last_status: Option<String>,
    /// Made through the API or the portal (kept in the database), not
    /// declared in the configuration file.
    #[serde(default)]
    pub managed: bool,
}

/// A recovery point known to the controller. The manifest in the datastore
/// is the truth; this is the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PointRecord {
    /// `<vm>@<UTC time>`, the same id as in the datastore.
    pub id: String,
    pub vm: String,
    pub group: Option<String>,
    /// Site the VM ran at when the point was taken.
    pub site: String,
    pub time: DateTime<Utc>,
    /// `crash` or `application`.
    pub consistency: String,
    /// Sum of the disk sizes.
    pub size: u64,
    /// Bytes read from the disks for this point.
    pub bytes_read: u64,
    /// Bytes this point added to its first datastore (after compression).
    pub bytes_new: u64,
    /// Datastores holding a complete copy, in the order they got it.
    pub copies: Vec<String>,
    /// Copies a verify found damaged (the API fills this in; the catalog's
    /// point rows do not carry it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedCopy>,
}

/// A copy of a point a verify of its datastore found damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DamagedCopy {
    pub point: String,
    pub datastore: String,
    /// When a verify first found it.
    pub since: DateTime<Utc>,
    /// What is damaged (the chunk, index or manifest, and how).
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            _ => return Err(format!("unknown job status '{s}'")),
        })
    }
}

/// Long work (a protection run, a restore, a sync, verify, gc) is a job
/// whose progress the CLI polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    /// `protect`, `restore`, `sync`, `verify`, `prune`, `gc`.
    pub kind: String,
    /// What it works on: a group, a point, a datastore.
    pub target: String,
    pub status: JobStatus,
    /// Bytes (or units) done and expected; total 0 = unknown yet.
    pub progress_done: u64,
    pub progress_total: u64,
    /// Current stage in words, e.g. "pbx1: reading disk data".
    pub message: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Kind-specific outcome (stats, reports).
    pub result: serde_json::Value,
}
