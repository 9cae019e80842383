//! The monthly DR report page: the report of [`crate::report`] as tables,
//! with month navigation and its CSV tables to download.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use chrono::Utc;

use crate::auth::Principal;
use crate::portal::model::short_duration;
use crate::portal::{PageError, PageResult, Viewer, principal};
use crate::report::csv::Part;
use crate::report::{Month, ReportParams};
use standby_engine::Controller;

use super::common::{Ctl, page, render, when};

pub(super) struct VmLine {
    pub(super) vm: String,
    pub(super) groups: String,
    pub(super) target: String,
    pub(super) compliance: String,
    /// `ok`, `bad` or empty (no target, nothing measured).
    pub(super) class: &'static str,
    pub(super) worst: String,
    pub(super) points: u64,
    pub(super) last: String,
}

pub(super) struct DrillLine {
    pub(super) job: i64,
    pub(super) started: String,
    pub(super) scope: String,
    pub(super) result: String,
    pub(super) rto: String,
    /// Each VM with its RTO, and each plan against its target.
    pub(super) detail: String,
}

pub(super) struct IncidentLine {
    pub(super) id: i64,
    pub(super) title: String,
    pub(super) severity: String,
    pub(super) opened: String,
    pub(super) resolved: String,
    pub(super) duration: String,
}

#[derive(Template)]
#[template(path = "fragments/report.html")]
pub(super) struct ReportView {
    pub(super) month: String,
    pub(super) who: String,
    pub(super) prev: String,
    /// Empty for the current month.
    pub(super) next: String,
    /// Operators: (label, link, current) per tenant and "all".
    pub(super) scopes: Vec<(String, String, bool)>,
    /// (part, link) of each CSV table.
    pub(super) csv: Vec<(&'static str, String)>,
    pub(super) compliance: String,
    pub(super) within: String,
    pub(super) points: u64,
    pub(super) drills: String,
    pub(super) worst_rto: String,
    pub(super) incident_count: String,
    pub(super) truncated: String,
    pub(super) vm_lines: Vec<VmLine>,
    pub(super) drill_lines: Vec<DrillLine>,
    pub(super) incident_lines: Vec<IncidentLine>,
}

fn query(month: &str, tenant: Option<&str>, part: Option<&str>) -> String {
    let mut q = vec![("month", month)];
    if let Some(t) = tenant {
        q.push(("tenant", t));
    }
    if let Some(p) = part {
        q.push(("part", p));
    }
    serde_urlencoded::to_string(q).unwrap_or_default()
}

fn opt_duration(x: Option<f64>) -> String {
    x.map(short_duration).unwrap_or_else(|| "–".into())
}

fn percent(x: Option<f64>) -> String {
    x.map(|p| format!("{p:.2} %")).unwrap_or_else(|| "–".into())
}

pub(super) async fn report_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    q: &ReportParams,
) -> Result<ReportView, PageError> {
    let now = Utc::now();
    let r = crate::report::monthly(ctl, p, q, now).await?;
    let month = Month::parse(&r.month)?;
    let tenant = r.tenant.as_deref();
    let scopes = if p.tenant.is_none() {
        std::iter::once(("all".to_string(), None))
            .chain(
                ctl.cfg()
                    .tenants
                    .keys()
                    .map(|t| (t.clone(), Some(t.clone()))),
            )
            .map(|(label, t)| {
                let current = t.as_deref() == tenant;
                let link = format!("/reports?{}", query(&r.month, t.as_deref(), None));
                (label, link, current)
            })
            .collect()
    } else {
        Vec::new()
    };
    let next = month.next();
    let t = &r.totals;
    Ok(ReportView {
        who: match tenant {
            Some(t) => format!("tenant {t}"),
            None => "every VM".into(),
        },
        prev: format!(
            "/reports?{}",
            query(&month.prev().to_string(), tenant, None)
        ),
        next: if next.start() <= now {
            format!("/reports?{}", query(&next.to_string(), tenant, None))
        } else {
            String::new()
        },
        scopes,
        csv: Part::ALL
            .into_iter()
            .map(|part| {
                (
                    part.as_str(),
                    format!(
                        "/api/v1/reports/monthly.csv?{}",
                        query(&r.month, tenant, Some(part.as_str()))
                    ),
                )
            })
            .collect(),
        compliance: percent(t.compliance_percent),
        within: format!("{} of {}", t.vms_always_within, t.vms_with_target),
        points: t.points,
        drills: format!(
            "{} ({} passed, {} failed)",
            t.drills, t.drills_passed, t.drills_failed
        ),
        worst_rto: opt_duration(t.worst_rto_seconds),
        incident_count: format!(
            "{} ({} open, {} in all)",
            t.incidents,
            t.incidents_open,
            short_duration(t.incident_seconds)
        ),
        truncated: r.truncated.clone().unwrap_or_default(),
        vm_lines: r
            .vms
            .iter()
            .map(|v| VmLine {
                vm: v.vm.clone(),
                groups: v.groups.join(", "),
                target: opt_duration(v.rpo_target_seconds),
                compliance: percent(v.compliance_percent),
                class: match v.compliance_percent {
                    None => "",
                    Some(_) if v.missed_seconds == 0.0 => "ok",
                    Some(_) => "bad",
                },
                worst: opt_duration(v.worst_age_seconds),
                points: v.points,
                last: v.last_point.map(when).unwrap_or_else(|| "–".into()),
            })
            .collect(),
        drill_lines: r
            .drills
            .iter()
            .map(|d| DrillLine {
                job: d.job,
                started: when(d.started_at),
                scope: d.scope.clone(),
                result: d.result.clone(),
                rto: opt_duration(d.rto_seconds),
                detail: d
                    .vms
                    .iter()
                    .map(|v| format!("{} at {}: {}", v.vm, v.site, opt_duration(v.rto_seconds)))
                    .chain(d.plans.iter().map(|p| {
                        format!(
                            "plan {}: {} (target {})",
                            p.plan,
                            opt_duration(p.rto_seconds),
                            opt_duration(p.rto_target_seconds)
                        )
                    }))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
            .collect(),
        incident_lines: r
            .incidents
            .iter()
            .map(|i| IncidentLine {
                id: i.id,
                title: i.title.clone(),
                severity: i.severity.clone(),
                opened: when(i.opened_at),
                resolved: i.resolved_at.map(when).unwrap_or_else(|| "open".into()),
                duration: opt_duration(i.duration_seconds),
            })
            .collect(),
        month: r.month,
    })
}

/// The page. Not live (no fragment): a month's report reads every VM's
/// points of the month, too much to redo on every event; a reload
/// brings the latest figures.
pub(crate) async fn reports(
    State(ctl): Ctl,
    v: Viewer,
    Query(q): Query<ReportParams>,
) -> PageResult {
    let p = principal(&v)?;
    let data = report_data(&ctl, p, &q).await?;
    let title = format!("DR report {}", data.month);
    page(&v, &title, "reports", "", &render(&data)?)
}
