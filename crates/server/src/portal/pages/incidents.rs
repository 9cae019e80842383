//! The incidents page and one incident's timeline.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use chrono::Utc;
use standby_types::watch::IncidentState;

use crate::auth::Principal;
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::alerts::{AlertRow, alert_row};
use super::common::{Ctl, ago, fragment_principal, html, page, render, when};
use super::jobs::{JobRow, job_row};

pub(super) struct IncidentRow {
    pub(super) id: i64,
    pub(super) title: String,
    pub(super) severity: String,
    pub(super) state: String,
    pub(super) open: bool,
    pub(super) opened: String,
    pub(super) ago: String,
}

#[derive(Template)]
#[template(path = "fragments/incidents.html")]
pub(super) struct Incidents {
    pub(super) incidents: Vec<IncidentRow>,
}

pub(super) async fn incidents_data(
    ctl: &Arc<Controller>,
    p: &Principal,
) -> Result<Incidents, PageError> {
    let now = Utc::now();
    let list = ctl.watch.repo().incidents(&[], 200).await?;
    Ok(Incidents {
        incidents: list
            .into_iter()
            .filter(|i| p.sees(crate::tenancy::labels(&ctl.cfg(), &i.labels)))
            .map(|i| IncidentRow {
                id: i.id,
                open: matches!(i.state, IncidentState::New | IncidentState::Active),
                severity: i.severity.as_str().to_string(),
                state: i.state.as_str().to_string(),
                opened: when(i.opened_at),
                ago: ago(i.opened_at, now),
                title: i.title,
            })
            .collect(),
    })
}

pub(crate) async fn incidents(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&incidents_data(&ctl, p).await?)?;
    page(
        &v,
        "Incidents",
        "incidents",
        "/portal/fragments/incidents",
        &body,
    )
}

pub(crate) async fn incidents_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&incidents_data(&ctl, p).await?)?))
}

pub(super) struct TimelineRow {
    pub(super) at: String,
    pub(super) kind: String,
    pub(super) author: String,
    pub(super) text: String,
}

#[derive(Template)]
#[template(path = "fragments/incident.html")]
pub(super) struct IncidentPage {
    pub(super) title: String,
    pub(super) severity: String,
    pub(super) state: String,
    pub(super) description: String,
    pub(super) opened: String,
    pub(super) resolved: String,
    pub(super) timeline: Vec<TimelineRow>,
    pub(super) alerts: Vec<AlertRow>,
    pub(super) jobs: Vec<JobRow>,
}

pub(super) async fn incident_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    id: i64,
) -> Result<IncidentPage, PageError> {
    let repo = ctl.watch.repo();
    let i = repo.incident(id).await?;
    p.check(
        crate::tenancy::labels(&ctl.cfg(), &i.labels),
        "incident",
        &id.to_string(),
    )?;
    let now = Utc::now();
    let timeline = repo
        .timeline(id)
        .await?
        .into_iter()
        .map(|e| TimelineRow {
            at: when(e.at),
            kind: e.kind,
            author: e.author,
            text: e.text,
        })
        .collect();
    let alerts = repo
        .incident_alerts(id)
        .await?
        .into_iter()
        .map(|a| alert_row(a, p, now))
        .collect();
    // Runbook jobs working on this incident.
    let mut jobs = Vec::new();
    for j in ctl.repo.jobs(200).await? {
        if j.kind == "runbook"
            && let Ok(run) = ctl.runbooks.repo().run(j.id).await
            && run.run.incident == Some(id)
        {
            jobs.push(job_row(j, now));
        }
    }
    Ok(IncidentPage {
        severity: i.severity.as_str().to_string(),
        state: i.state.as_str().to_string(),
        description: i.description,
        opened: when(i.opened_at),
        resolved: i.resolved_at.map(when).unwrap_or_default(),
        title: i.title,
        timeline,
        alerts,
        jobs,
    })
}

pub(crate) async fn incident(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = principal(&v)?;
    let d = incident_data(&ctl, p, id).await?;
    let title = format!("Incident {id}");
    let body = render(&d)?;
    page(
        &v,
        &title,
        "incidents",
        &format!("/portal/fragments/incidents/{id}"),
        &body,
    )
}

pub(crate) async fn incident_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&incident_data(&ctl, p, id).await?)?))
}
