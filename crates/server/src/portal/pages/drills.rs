//! The drills page: measured RTO and RPO, and the measure chart the dashboard shares.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use standby_types::model::JobStatus;

use crate::auth::Principal;
use crate::portal::model::{self, Chart, Measure};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::common::{Ctl, fragment_principal, html, page, render, when};

pub(super) fn measure_chart(m: &[Measure], now: DateTime<Utc>) -> Chart {
    let from = m
        .iter()
        .map(|m| m.at)
        .min()
        .unwrap_or(now)
        .min(now - TimeDelta::hours(1));
    let pick = |f: fn(&Measure) -> Option<f64>, kind: &str| -> Vec<(DateTime<Utc>, f64)> {
        let mut s: Vec<_> = m
            .iter()
            .filter(|x| x.kind == kind)
            .filter_map(|x| f(x).map(|v| (x.at, v)))
            .collect();
        s.sort_by_key(|(t, _)| *t);
        s
    };
    model::chart(
        &[
            ("drill RTO".into(), pick(|x| x.rto, "drill")),
            ("drill data age".into(), pick(|x| x.rpo, "drill")),
            ("failover RTO".into(), pick(|x| x.rto, "failover")),
            ("failover data loss".into(), pick(|x| x.rpo, "failover")),
        ],
        from,
        now,
        "seconds",
        true,
    )
}

/// Drills and failovers among the newest `limit` jobs, newest first.
pub(super) async fn measures(
    ctl: &Arc<Controller>,
    p: &Principal,
    limit: usize,
) -> Result<Vec<Measure>, PageError> {
    let cfg = &ctl.cfg();
    let mut out = Vec::new();
    let jobs = ctl.repo.jobs(500).await?;
    for j in jobs
        .iter()
        .filter(|j| j.kind == "runbook" && j.status.is_finished())
    {
        if out.len() >= limit {
            break;
        }
        let kind = match j.target.as_str() {
            "drill" => "drill",
            // Site-wide: the operators' side only.
            "failover-site" if p.tenant.is_none() => "failover",
            _ => continue,
        };
        let run = ctl.runbooks.repo().run(j.id).await?;
        let steps = ctl.runbooks.repo().steps(j.id).await?;
        let mut site = run.run.params["site"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let at = j.finished_at.unwrap_or(j.created_at);
        let m = if kind == "drill" {
            let Some(report) = steps.iter().find(|s| s.step == "report" && s.item == -1) else {
                continue;
            };
            // A drill of one VM: the VM and the site it serves from.
            if let Some(vm) = run.run.params["vm"].as_str() {
                site = match report.input["site"].as_str() {
                    Some(at) if !at.is_empty() => format!("{vm} ({at})"),
                    _ => vm.to_string(),
                };
            }
            let report = if report.output.is_null() {
                &Value::Null
            } else {
                &report.output
            };
            let visible = |vm: &str| p.sees(cfg.tenant_of_vm(vm));
            let (rto, rpo) = model::drill_figures(report, visible);
            if p.tenant.is_some() && rto.is_none() && rpo.is_none() {
                continue;
            }
            Measure {
                job: j.id,
                at,
                kind,
                site,
                rto,
                rpo,
                ok: j.status == JobStatus::Succeeded,
                summary: if p.tenant.is_none() {
                    report["summary"]
                        .as_str()
                        .map(String::from)
                        .or_else(|| j.error.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
            }
        } else {
            let note = steps
                .iter()
                .find(|s| s.step == "resolve" && s.item == -1)
                .and_then(|s| s.input["note"].as_str())
                .unwrap_or_default();
            let (rto, rpo) = model::failover_figures(note);
            Measure {
                job: j.id,
                at,
                kind,
                site,
                rto,
                rpo,
                ok: j.status == JobStatus::Succeeded,
                summary: if note.is_empty() {
                    j.error.clone().unwrap_or_default()
                } else {
                    note.to_string()
                },
            }
        };
        out.push(m);
    }
    Ok(out)
}

pub(super) struct MeasureRow {
    pub(super) job: i64,
    pub(super) at: String,
    pub(super) kind: &'static str,
    pub(super) site: String,
    pub(super) rto: String,
    pub(super) rpo: String,
    pub(super) ok: bool,
    pub(super) summary: String,
}

#[derive(Template)]
#[template(path = "fragments/drills.html")]
pub(super) struct Drills {
    pub(super) can_act: bool,
    pub(super) operators: bool,
    pub(super) sites: Vec<String>,
    pub(super) rows: Vec<MeasureRow>,
    pub(super) chart: Chart,
    pub(super) width: f64,
    pub(super) height: f64,
}

pub(super) async fn drills_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
) -> Result<Drills, PageError> {
    let now = Utc::now();
    let m = measures(ctl, p, 200).await?;
    let fmt = |x: Option<f64>| x.map(model::short_duration).unwrap_or_else(|| "–".into());
    Ok(Drills {
        can_act: v.can_act(),
        operators: p.tenant.is_none(),
        sites: ctl.cfg().sites.keys().cloned().collect(),
        chart: measure_chart(&m, now),
        rows: m
            .into_iter()
            .map(|m| MeasureRow {
                job: m.job,
                at: when(m.at),
                kind: m.kind,
                site: m.site,
                rto: fmt(m.rto),
                rpo: fmt(m.rpo),
                ok: m.ok,
                summary: m.summary,
            })
            .collect(),
        width: model::WIDTH,
        height: model::HEIGHT,
    })
}

pub(crate) async fn drills(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&drills_data(&ctl, &v, p).await?)?;
    page(
        &v,
        "Drills and failovers",
        "drills",
        "/portal/fragments/drills",
        &body,
    )
}

pub(crate) async fn drills_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&drills_data(&ctl, &v, p).await?)?))
}
