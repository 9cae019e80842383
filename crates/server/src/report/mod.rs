//! The monthly DR report: per tenant (or everything, for operators), one
//! month's RPO compliance per VM, the drills of those VMs with their
//! measured RTO, and the incidents ([`MonthlyReport`]). Served as JSON
//! (`GET /api/v1/reports/monthly`), as CSV ([`csv`],
//! `GET /api/v1/reports/monthly.csv`) and by the portal's `/reports`.
//!
//! # Where the figures come from
//! - RPO compliance ([`measure`]): each VM's point times in the month and
//!   the point in force when it began ([`standby_db::Repo::point_times_in`],
//!   two index seeks a VM), against the tightest `rpo_target` of its
//!   groups. Measured from the month's start (or the VM's first point,
//!   whichever is later) to the month's end (or now).
//! - Drills: `drill` runbook jobs started in the month, their `report`
//!   step (the same figures as the drills page), among the newest
//!   [`JOB_SCAN`] jobs.
//! - Incidents: those open at some time in the month that the tenant
//!   sees ([`crate::tenancy::labels`]), among the newest [`INCIDENT_SCAN`].

pub mod csv;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use standby_types::api::ApiError;
use standby_types::model::{Job, JobStatus};
use standby_types::outcome::DrillReport;
use standby_types::report::{
    MonthlyReport, ReportDrill, ReportDrillVm, ReportIncident, ReportPlanRto, ReportTotals,
    VmCompliance,
};
use standby_types::watch::IncidentState;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::common::{ApiQuery, Ctl};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;
use standby_engine::Controller;

/// How many of the newest jobs a report looks through for the month's
/// drills.
pub const JOB_SCAN: u32 = 10_000;
/// How many of the newest incidents a report looks through.
pub const INCIDENT_SCAN: u32 = 10_000;

/// The routes of the report, each documented.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(monthly_json))
        .routes(routes!(monthly_csv))
}

/// Which report.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// `YYYY-MM` (default: the current month, UTC).
    pub month: Option<String>,
    /// Only this tenant's VMs, drills and incidents. A tenant's user gets
    /// their own tenant whatever this says (another one is not found);
    /// an operator gets every VM without it.
    pub tenant: Option<String>,
}

/// Which table of the report a CSV holds.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CsvParams {
    /// `YYYY-MM` (default: the current month, UTC).
    pub month: Option<String>,
    /// As for the JSON report.
    pub tenant: Option<String>,
    /// `vms` (default: RPO compliance, a row per VM), `drills` (a row per
    /// VM of each drill) or `incidents` (a row per incident).
    pub part: Option<String>,
}

/// The month's report as JSON.
#[utoipa::path(get, path = "/api/v1/reports/monthly", tag = "reports", params(ReportParams),
    responses((status = 200, body = MonthlyReport),
        (status = 400, description = "A bad or future month", body = ApiError),
        (status = 404, description = "An unknown tenant, or another tenant's", body = ApiError)))]
async fn monthly_json(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ReportParams>,
) -> Result<Json<MonthlyReport>, ServerError> {
    Ok(Json(monthly(&ctl, &who, &q, Utc::now()).await?))
}

/// One table of the month's report as CSV (RFC 4180, a header row, CRLF
/// line ends): see docs/api.md for the columns.
#[utoipa::path(get, path = "/api/v1/reports/monthly.csv", tag = "reports", params(CsvParams),
    responses((status = 200, description = "The table as CSV", content_type = "text/csv", body = String),
        (status = 400, description = "A bad or future month, or an unknown part", body = ApiError),
        (status = 404, description = "An unknown tenant, or another tenant's", body = ApiError)))]
async fn monthly_csv(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<CsvParams>,
) -> Result<Response, ServerError> {
    let part: csv::Part = q.part.as_deref().unwrap_or("vms").parse()?;
    let params = ReportParams {
        month: q.month,
        tenant: q.tenant,
    };
    let r = monthly(&ctl, &who, &params, Utc::now()).await?;
    let name = format!(
        "standby-report-{}-{}-{}.csv",
        r.month,
        r.tenant.as_deref().unwrap_or("all"),
        part.as_str()
    );
    let body = csv::render(&r, part);
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|e| ServerError::Internal(format!("report file name {name}: {e}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// A month: `YYYY-MM` exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// The month `t` falls in (UTC).
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    /// `YYYY-MM`, else 400 saying what is expected.
    pub fn parse(s: &str) -> Result<Month, ServerError> {
        let bad =
            || ServerError::BadRequest(format!("bad month '{s}': expected YYYY-MM, e.g. 2026-12"));
        let b = s.as_bytes();
        if b.len() != 7
            || b[4] != b'-'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 4 || c.is_ascii_digit())
        {
            return Err(bad());
        }
        let year: i32 = s[..4].parse().map_err(|_| bad())?;
        let month: u32 = s[5..].parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn start(self) -> DateTime<Utc> {
        let d = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default();
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A VM's RPO over a period ([`measure`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    /// Seconds measured: from the period's start (or the first point, when
    /// none came before the period) to its end.
    pub measured: f64,
    /// Seconds of those during which the newest point was older than the
    /// target.
    pub missed: f64,
    /// The oldest the newest point got (none: nothing measured).
    pub worst_age: Option<f64>,
    /// The newest point at the period's end.
    pub last_point: Option<DateTime<Utc>>,
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// The age of a VM's newest point over `[from, to)`, given the point in
/// force at `from` (`before`) and the point times inside, oldest first:
/// how long it was measured, how long of that the age was above `target`
/// seconds (at most the target is within), the worst age. Without a point
/// at or before some instant there is no age to measure, so the period
/// starts at the first point when none came before it.
pub fn measure(
    before: Option<DateTime<Utc>>,
    times: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    target: Option<f64>,
) -> Measured {
    let points: Vec<DateTime<Utc>> = before.into_iter().chain(times.iter().copied()).collect();
    let Some(first) = points.first() else {
        return Measured::default();
    };
    let start = (*first).max(from);
    let mut out = Measured::default();
    if to <= start {
        return out;
    }
    out.measured = secs(to - start);
    for (i, p) in points.iter().enumerate() {
        let next = points.get(i + 1).copied().unwrap_or(to).min(to);
        let seg_start = (*p).max(start);
        if next < seg_start || *p >= to {
            continue;
        }
        // The age rises from `seg_start - p` to `next - p` over the segment.
        let age = secs(next - *p);
        out.worst_age = Some(out.worst_age.map_or(age, |w: f64| w.max(age)));
        out.last_point = Some(*p);
        if let Some(t) = target {
            let over_from = secs(seg_start - *p).max(t);
            out.missed += (age - over_from).max(0.0);
        }
    }
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Whose report: the tenant asked for, narrowed to the caller's own (a
/// tenant's user asking for another tenant, or an operator for an unknown
/// one: not found).
fn scope(
    cfg: &standby_types::config::Config,
    who: &Principal,
    asked: Option<&str>,
) -> Result<Option<String>, ServerError> {
    let not_found = |t: &str| ServerError::NotFound {
        kind: "tenant",
        name: t.to_string(),
    };
    match (&who.tenant, asked.filter(|t| !t.is_empty())) {
        (Some(own), None) => Ok(Some(own.clone())),
        (Some(own), Some(t)) if t == own => Ok(Some(own.clone())),
        (None, Some(t)) if cfg.tenants.contains_key(t) => Ok(Some(t.to_string())),
        (_, Some(t)) => Err(not_found(t)),
        (None, None) => Ok(None),
    }
}

/// The report of `q` as `who` sees it, at `now`.
pub async fn monthly(
    ctl: &Arc<Controller>,
    who: &Principal,
    q: &ReportParams,
    now: DateTime<Utc>,
) -> Result<MonthlyReport, ServerError> {
    let month = match q.month.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => Month::parse(m)?,
        None => Month::of(now),
    };
    let from = month.start();
    if from > now {
        return Err(ServerError::BadRequest(format!(
            "month {month} has not begun (it is {} now)",
            Month::of(now)
        )));
    }
    let to = month.next().start().min(now);
    let cfg = ctl.cfg();
    let tenant = scope(&cfg, who, q.tenant.as_deref())?;
    let mine = |owner: Option<&str>| tenant.as_deref().is_none_or(|t| owner == Some(t));

    let mut totals = ReportTotals::default();
    let (mut within, mut measured) = (0.0, 0.0);
    let mut vms = Vec::new();
    for name in cfg.vms.keys().filter(|v| mine(cfg.tenant_of_vm(v))) {
        let groups: Vec<String> = cfg.groups_of(name).into_iter().map(String::from).collect();
        let target = groups
            .iter()
            .filter_map(|g| cfg.groups.get(g)?.rpo_target)
            .min()
            .map(|d| d.as_secs_f64());
        let (before, times) = ctl.repo.point_times_in(name, from, to).await?;
        let m = measure(before, &times, from, to, target);
        let compliance = (target.is_some() && m.measured > 0.0)
            .then(|| round3(100.0 * (m.measured - m.missed) / m.measured));
        totals.vms += 1;
        totals.points += times.len() as u64;
        if target.is_some() {
            totals.vms_with_target += 1;
            if m.measured > 0.0 {
                within += m.measured - m.missed;
                measured += m.measured;
                if m.missed == 0.0 {
                    totals.vms_always_within += 1;
                }
            }
        }
        vms.push(VmCompliance {
            vm: name.clone(),
            groups,
            rpo_target_seconds: target,
            compliance_percent: compliance,
            measured_seconds: round3(m.measured),
            missed_seconds: round3(m.missed),
            worst_age_seconds: m.worst_age.map(round3),
            points: times.len() as u64,
            last_point: m.last_point,
        });
    }
    totals.compliance_percent = (measured > 0.0).then(|| round3(100.0 * within / measured));

    let mut truncated = Vec::new();
    let (drills, cut) = drills(ctl, &cfg, tenant.as_deref(), from, to).await?;
    if cut {
        truncated.push(format!(
            "only the newest {JOB_SCAN} jobs were read for drills"
        ));
    }
    for d in &drills {
        totals.drills += 1;
        match d.result.as_str() {
            "passed" => totals.drills_passed += 1,
            "failed" => totals.drills_failed += 1,
            _ => {}
        }
        if let Some(r) = d.rto_seconds {
            totals.worst_rto_seconds = Some(totals.worst_rto_seconds.map_or(r, |w: f64| w.max(r)));
        }
    }

    let list = ctl.watch.repo().incidents(&[], INCIDENT_SCAN).await?;
    if list.len() as u32 >= INCIDENT_SCAN && list.last().is_some_and(|i| i.opened_at >= from) {
        truncated.push(format!(
            "only the newest {INCIDENT_SCAN} incidents were read"
        ));
    }
    let mut incidents: Vec<ReportIncident> = list
        .into_iter()
        .filter(|i| i.opened_at < to && i.resolved_at.is_none_or(|r| r >= from))
        .filter(|i| mine(crate::tenancy::labels(&cfg, &i.labels)))
        .map(|i| ReportIncident {
            id: i.id,
            title: i.title,
            severity: i.severity.as_str().to_string(),
            state: i.state.as_str().to_string(),
            opened_at: i.opened_at,
            resolved_at: i.resolved_at,
            duration_seconds: i.resolved_at.map(|r| round3(secs(r - i.opened_at))),
        })
        .collect();
    incidents.sort_by_key(|i| (i.opened_at, i.id));
    for i in &incidents {
        totals.incidents += 1;
        if [IncidentState::New, IncidentState::Active]
            .iter()
            .any(|s| s.as_str() == i.state)
        {
            totals.incidents_open += 1;
        }
        totals.incident_seconds += i.duration_seconds.unwrap_or(0.0);
    }
    totals.incident_seconds = round3(totals.incident_seconds);

    Ok(MonthlyReport {
        month: month.to_string(),
        tenant,
        from,
        to,
        generated_at: now,
        totals,
        vms,
        drills,
        incidents,
        truncated: (!truncated.is_empty()).then(|| truncated.join("; ")),
    })
}

/// The drills started in `[from, to)` that concern the tenant's VMs (all
/// of them without a tenant), oldest first; and whether the job scan was
/// cut short of the month's start.
async fn drills(
    ctl: &Controller,
    cfg: &standby_types::config::Config,
    tenant: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<ReportDrill>, bool), ServerError> {
    let jobs = ctl.repo.jobs(JOB_SCAN).await?;
    let cut = jobs.len() as u32 >= JOB_SCAN && jobs.last().is_some_and(|j| j.created_at >= from);
    let mine = |vm: &str| tenant.is_none_or(|t| cfg.tenant_of_vm(vm) == Some(t));
    let mut out = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| j.kind == "runbook" && j.target == "drill")
    {
        let started = started(j);
        if started < from || started >= to {
            continue;
        }
        let run = ctl.runbooks.repo().run(j.id).await?;
        let one_vm = run.run.params["vm"].as_str().map(String::from);
        if one_vm.as_deref().is_some_and(|v| !mine(v)) {
            continue;
        }
        let report: Option<DrillReport> = ctl
            .runbooks
            .repo()
            .steps(j.id)
            .await?
            .into_iter()
            .find(|s| s.step == "report" && s.item == -1)
            .and_then(|s| serde_json::from_value(s.output).ok());
        let vms: Vec<ReportDrillVm> = report
            .iter()
            .flat_map(|r| &r.vms)
            .filter(|v| mine(&v.vm))
            .map(|v| ReportDrillVm {
                vm: v.vm.clone(),
                site: v.site.clone(),
                rto_seconds: v.rto_seconds.map(round3),
                data_age_seconds: round3(v.data_age_seconds),
            })
            .collect();
        // A site's drill concerns a tenant when it drilled a VM of theirs.
        if tenant.is_some() && one_vm.is_none() && vms.is_empty() {
            continue;
        }
        let result = if !j.status.is_finished() {
            "running"
        } else if tenant.is_some() && one_vm.is_none() {
            // A site's drill, judged on the tenant's VMs alone: each
            // copy answered and was torn down.
            let ok = report
                .iter()
                .flat_map(|r| &r.vms)
                .filter(|v| mine(&v.vm))
                .all(|v| v.rto_seconds.is_some() && v.verified);
            if ok { "passed" } else { "failed" }
        } else if j.status == JobStatus::Succeeded && report.as_ref().is_none_or(|r| r.ok) {
            "passed"
        } else {
            "failed"
        };
        let rto = vms
            .iter()
            .filter_map(|v| v.rto_seconds)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        let plans = plan_rtos(cfg, report.as_ref(), &mine);
        let scope = one_vm.unwrap_or_else(|| {
            report
                .as_ref()
                .map(|r| r.site.clone())
                .filter(|s| !s.is_empty())
                .or_else(|| run.run.params["site"].as_str().map(String::from))
                .unwrap_or_default()
        });
        out.push(ReportDrill {
            job: j.id,
            started_at: started,
            finished_at: j.finished_at,
            scope,
            result: result.to_string(),
            rto_seconds: rto,
            vms,
            plans,
        });
    }
    out.sort_by_key(|d| (d.started_at, d.job));
    Ok((out, cut))
}

fn started(j: &Job) -> DateTime<Utc> {
    j.started_at.unwrap_or(j.created_at)
}

/// The recovery plans a drill brought back (those with a VM the report
/// is about): the time of their last tier against their target.
fn plan_rtos(
    cfg: &standby_types::config::Config,
    report: Option<&DrillReport>,
    mine: &dyn Fn(&str) -> bool,
) -> Vec<ReportPlanRto> {
    // Per plan: whether it has a VM of the report's, and its time (none
    // when a tier never answered).
    let mut plans: BTreeMap<&str, (bool, Option<f64>)> = BTreeMap::new();
    for t in report.iter().flat_map(|r| &r.tiers) {
        let e = plans.entry(t.plan.as_str()).or_insert((false, Some(0.0)));
        e.0 |= t.vms.iter().any(|v| mine(v));
        e.1 = match (e.1, t.seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    plans
        .into_iter()
        .filter(|(_, (visible, _))| *visible)
        .map(|(plan, (_, secs))| {
            let target = cfg
                .plans
                .get(plan)
                .and_then(|p| p.rto_target)
                .map(|d| d.as_secs_f64());
            ReportPlanRto {
                plan: plan.to_string(),
                rto_seconds: secs.map(round3),
                rto_target_seconds: target,
                met: target.map(|t| secs.is_some_and(|s| s <= t)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
