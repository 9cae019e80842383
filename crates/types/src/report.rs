//! The monthly DR report of a tenant (or of everything, for operators):
//! `GET /api/v1/reports/monthly[.csv]` and the portal's `/reports` show
//! the same [`MonthlyReport`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One month of disaster recovery: RPO compliance per VM, the drills of
/// those VMs with their measured RTO, and the incidents, with totals.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MonthlyReport {
    /// `YYYY-MM`.
    pub month: String,
    /// The tenant reported on; none: every VM (the operators' report).
    pub tenant: Option<String>,
    /// The month's first instant (UTC).
    pub from: DateTime<Utc>,
    /// The end of what was measured: the next month's first instant, or
    /// the time of the report while the month runs.
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub totals: ReportTotals,
    /// By VM name.
    pub vms: Vec<VmCompliance>,
    /// Oldest first.
    pub drills: Vec<ReportDrill>,
    /// Oldest first.
    pub incidents: Vec<ReportIncident>,
    /// Set when the report read its cap of jobs or incidents before
    /// reaching the month's start: older drills or incidents of the month
    /// may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// A VM's RPO over the month.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmCompliance {
    pub vm: String,
    /// Its protection groups.
    pub groups: Vec<String>,
    /// The tightest `rpo_target` of its groups, if any has one.
    pub rpo_target_seconds: Option<f64>,
    /// Share of the measured time (from the month's start or the VM's
    /// first point, whichever is later, to the month's end or now) during
    /// which its newest point was at most `rpo_target_seconds` old, in
    /// percent. None: no target, or nothing measured (no point yet).
    pub compliance_percent: Option<f64>,
    /// Seconds measured (the denominator of `compliance_percent`).
    pub measured_seconds: f64,
    /// Seconds during which the newest point was older than the target.
    pub missed_seconds: f64,
    /// The oldest the newest point got during the measured time.
    pub worst_age_seconds: Option<f64>,
    /// Points taken in the month (still in the catalog).
    pub points: u64,
    /// The newest point at the end of what was measured.
    pub last_point: Option<DateTime<Utc>>,
}

/// A drill run in the month, narrowed to the VMs reported on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportDrill {
    /// The drill's runbook job.
    pub job: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The site drilled, or the VM for a drill of one VM.
    pub scope: String,
    /// `passed`, `failed` or `running`.
    pub result: String,
    /// The slowest measured RTO among the VMs reported on (none: no copy
    /// answered, or no report).
    pub rto_seconds: Option<f64>,
    pub vms: Vec<ReportDrillVm>,
    /// Recovery plans drilled: their measured RTO against their target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<ReportPlanRto>,
}

/// One VM of a drill.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportDrillVm {
    pub vm: String,
    /// Where its copy was booted.
    pub site: String,
    /// From the drill's start to its copy answering (none: it never did).
    pub rto_seconds: Option<f64>,
    /// Age of the point it was restored from.
    pub data_age_seconds: f64,
}

/// A recovery plan in a drill: from the first restore to the last VM of
/// its last tier answering.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportPlanRto {
    pub plan: String,
    /// None: a VM of the plan never answered.
    pub rto_seconds: Option<f64>,
    /// The plan's `rto_target`.
    pub rto_target_seconds: Option<f64>,
    /// Whether the measured RTO is within the target (none without one).
    pub met: Option<bool>,
}

/// An incident open at some time in the month.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportIncident {
    pub id: i64,
    pub title: String,
    pub severity: String,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// From opened to resolved (none while open).
    pub duration_seconds: Option<f64>,
}

/// The month in figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportTotals {
    pub vms: u64,
    /// VMs with an RPO target.
    pub vms_with_target: u64,
    /// VMs within their target the whole measured time.
    pub vms_always_within: u64,
    /// The VMs' compliance weighted by their measured time, in percent
    /// (none: nothing measured).
    pub compliance_percent: Option<f64>,
    pub points: u64,
    pub drills: u64,
    pub drills_passed: u64,
    pub drills_failed: u64,
    /// The slowest measured RTO of the month's drills.
    pub worst_rto_seconds: Option<f64>,
    pub incidents: u64,
    /// Incidents still open at the report's time.
    pub incidents_open: u64,
    /// Sum of the resolved incidents' durations.
    pub incident_seconds: f64,
}
