//! Incidents: opened from templates by rules or by hand (and by runbooks),
//! deduplicated by key while open, with a timeline of alerts, notes, state
//! changes and runbook steps. New → Active → Resolved → Closed.

use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use standby_types::watch::{
    Alert, AlertState, Event, Incident, IncidentDetail, IncidentState, Labels, Severity,
    TimelineEntry,
};

use crate::controller::Controller;
use crate::error::EngineError;

/// Open an incident by hand or from a runbook: either from a template
/// (rendered with `labels`) or with an explicit title.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentOpen {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// An open incident with the same key is returned instead of a new one.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
}

/// Change an incident: a note, a new state, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentUpdate {
    #[serde(default)]
    pub state: Option<IncidentState>,
    #[serde(default)]
    pub note: Option<String>,
    /// Timeline kind of the note: `note` (default) or `step` (runbooks).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub author: Option<String>,
}

fn incident_event(kind: &str, i: &Incident, message: String) -> Event {
    let mut labels = i.labels.clone();
    labels.insert("incident".into(), i.id.to_string());
    Event {
        id: 0,
        at: Utc::now(),
        source: format!("incident:{}", i.id),
        kind: kind.into(),
        severity: i.severity,
        labels,
        vantage: standby_types::watch::CONTROLLER_VANTAGE.into(),
        message,
    }
}

pub async fn timeline(
    ctl: &Arc<Controller>,
    incident: i64,
    kind: &str,
    author: &str,
    text: &str,
    alert: Option<i64>,
) -> Result<(), EngineError> {
    ctl.watch
        .repo
        .add_timeline(&TimelineEntry {
            id: 0,
            incident,
            at: Utc::now(),
            kind: kind.into(),
            author: author.into(),
            text: text.into(),
            alert,
        })
        .await?;
    Ok(())
}

/// The deduplication key of an incident of `tenant`: `tenant/NAME:KEY`
/// for a tenant's, the key itself for the operators'.
pub(crate) fn scoped_key(tenant: Option<&str>, key: String) -> String {
    match tenant {
        Some(t) => format!("tenant/{t}:{key}"),
        None => key,
    }
}

pub async fn open(ctl: &Arc<Controller>, req: IncidentOpen) -> Result<Incident, EngineError> {
    let author = req.author.clone().unwrap_or_else(|| "api".into());
    let (title, description, severity, group, key) = match &req.template {
        Some(t) => {
            let r = ctl
                .watch
                .evaluator
                .lock()
                .expect("evaluator lock")
                .render_incident(t, &req.labels, &Labels::new())
                .ok_or_else(|| EngineError::not_found("incident template", t.clone()))?;
            (
                req.title.clone().unwrap_or(r.title),
                req.description.clone().unwrap_or(r.description),
                req.severity.unwrap_or(r.severity),
                req.group.clone().unwrap_or(r.group),
                req.key.clone().or(Some(r.key)),
            )
        }
        None => (
            req.title
                .clone()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    EngineError::BadRequest("an incident needs a title or a template".into())
                })?,
            req.description.clone().unwrap_or_default(),
            req.severity.unwrap_or(Severity::Error),
            req.group.clone().unwrap_or_default(),
            req.key.clone(),
        ),
    };
    // Keys are per tenant: a tenant's incident is never found by another
    // tenant's (or the operators') key, nor theirs by its.
    let key = key.map(|k| scoped_key(ctl.cfg().tenant_of_labels(&req.labels), k));
    if let Some(k) = &key
        && let Some(existing) = ctl.watch.repo.open_incident_by_key(k).await?
    {
        return Ok(existing);
    }
    let mut i = Incident {
        id: 0,
        title,
        severity,
        description,
        group,
        state: IncidentState::New,
        template: req.template.clone(),
        key,
        labels: req.labels.clone(),
        opened_at: Utc::now(),
        resolved_at: None,
        closed_at: None,
    };
    i.id = ctl.watch.repo.insert_incident(&i).await?;
    timeline(
        ctl,
        i.id,
        "opened",
        &author,
        &format!("opened: {}", i.title),
        None,
    )
    .await?;
    tracing::warn!(incident = i.id, title = %i.title, "incident opened");
    ctl.watch.emit(incident_event(
        "incident.opened",
        &i,
        format!("incident {} opened: {}", i.id, i.title),
    ));
    Ok(i)
}

/// The incident of a firing alert: the open one with the template's key,
/// or a new one. The alert goes on its timeline.
pub(super) async fn open_for_alert(
    ctl: &Arc<Controller>,
    alert: &Alert,
    template: &str,
) -> Result<i64, EngineError> {
    let i = open(
        ctl,
        IncidentOpen {
            template: Some(template.to_string()),
            labels: alert.labels.clone(),
            author: Some(format!("rule:{}", alert.rule)),
            ..Default::default()
        },
    )
    .await?;
    let summary = alert
        .annotations
        .get("summary")
        .cloned()
        .unwrap_or_else(|| alert.rule.clone());
    timeline(
        ctl,
        i.id,
        "alert",
        &format!("rule:{}", alert.rule),
        &format!("alert {} firing: {summary}", alert.id),
        Some(alert.id),
    )
    .await?;
    Ok(i.id)
}

/// A linked alert resolved; when none is left firing, so is the incident.
pub(super) async fn alert_resolved(
    ctl: &Arc<Controller>,
    id: i64,
    alert: &Alert,
) -> Result<(), EngineError> {
    timeline(
        ctl,
        id,
        "alert",
        &format!("rule:{}", alert.rule),
        &format!("alert {} resolved", alert.id),
        Some(alert.id),
    )
    .await?;
    let open_alerts = ctl
        .watch
        .repo
        .incident_alerts(id)
        .await?
        .into_iter()
        .filter(|a| a.state != AlertState::Resolved)
        .count();
    let i = ctl.watch.repo.incident(id).await?;
    if open_alerts == 0 && matches!(i.state, IncidentState::New | IncidentState::Active) {
        set_state(
            ctl,
            i,
            IncidentState::Resolved,
            "standby",
            Some("all alerts resolved"),
        )
        .await?;
    }
    Ok(())
}

/// New → Active when someone (or a runbook) works on it.
pub(super) async fn activate(
    ctl: &Arc<Controller>,
    id: i64,
    author: &str,
    why: &str,
) -> Result<(), EngineError> {
    let i = ctl.watch.repo.incident(id).await?;
    timeline(ctl, id, "note", author, why, None).await?;
    if i.state == IncidentState::New {
        set_state(ctl, i, IncidentState::Active, author, None).await?;
    }
    Ok(())
}

async fn set_state(
    ctl: &Arc<Controller>,
    mut i: Incident,
    state: IncidentState,
    author: &str,
    why: Option<&str>,
) -> Result<Incident, EngineError> {
    if i.state == state {
        return Ok(i);
    }
    let allowed = matches!(
        (i.state, state),
        (IncidentState::New, _)
            | (
                IncidentState::Active,
                IncidentState::Resolved | IncidentState::Closed
            )
            | (
                IncidentState::Resolved,
                IncidentState::Closed | IncidentState::Active
            )
    );
    if !allowed {
        return Err(EngineError::Conflict(format!(
            "incident {} is {} and cannot become {}",
            i.id,
            i.state.as_str(),
            state.as_str()
        )));
    }
    let now = Utc::now();
    let from = i.state;
    i.state = state;
    match state {
        IncidentState::Resolved => i.resolved_at = Some(now),
        IncidentState::Closed => {
            i.closed_at = Some(now);
            i.resolved_at.get_or_insert(now);
        }
        IncidentState::Active => i.resolved_at = None,
        IncidentState::New => {}
    }
    ctl.watch.repo.update_incident(&i).await?;
    let text = match why {
        Some(w) => format!("{} → {}: {w}", from.as_str(), state.as_str()),
        None => format!("{} → {}", from.as_str(), state.as_str()),
    };
    timeline(ctl, i.id, "state", author, &text, None).await?;
    ctl.watch.emit(incident_event(
        &format!("incident.{}", state.as_str()),
        &i,
        format!("incident {} {text}", i.id),
    ));
    Ok(i)
}

/// Add a note and/or change the state (the API and runbooks use this).
pub async fn update(
    ctl: &Arc<Controller>,
    id: i64,
    req: IncidentUpdate,
) -> Result<Incident, EngineError> {
    let author = req.author.clone().unwrap_or_else(|| "api".into());
    let mut i = ctl.watch.repo.incident(id).await?;
    if let Some(note) = req.note.as_deref().filter(|n| !n.trim().is_empty()) {
        let kind = req.kind.as_deref().unwrap_or("note");
        if !matches!(kind, "note" | "step") {
            return Err(EngineError::BadRequest(format!(
                "timeline kind '{kind}' is not 'note' or 'step'"
            )));
        }
        timeline(ctl, id, kind, &author, note, None).await?;
        if i.state == IncidentState::New && req.state.is_none() {
            i = set_state(ctl, i, IncidentState::Active, &author, None).await?;
        }
    }
    if let Some(sev) = req.severity
        && sev != i.severity
    {
        let old = i.severity;
        i.severity = sev;
        ctl.watch.repo.update_incident(&i).await?;
        timeline(
            ctl,
            id,
            "state",
            &author,
            &format!("severity {old} → {sev}"),
            None,
        )
        .await?;
    }
    if let Some(state) = req.state {
        i = set_state(ctl, i, state, &author, req.note.as_deref()).await?;
    }
    Ok(i)
}

pub async fn detail(ctl: &Arc<Controller>, id: i64) -> Result<IncidentDetail, EngineError> {
    let repo = &ctl.watch.repo;
    Ok(IncidentDetail {
        incident: repo.incident(id).await?,
        alerts: repo.incident_alerts(id).await?,
        timeline: repo.timeline(id).await?,
    })
}
