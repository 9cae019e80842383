//! `incident.open`, `incident.note`, `incident.resolve` and `notify`.

use chrono::Utc;
use serde_json::{Value, json};
use standby_types::watch::{IncidentState, Severity};

use super::context::ActionCtx;
use crate::error::EngineError;

pub(super) async fn incident_open(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let severity = match ctx.opt_str("severity")? {
        Some(s) => s.parse::<Severity>().map_err(EngineError::BadRequest)?,
        None => Severity::Error,
    };
    let key = ctx
        .opt_str("dedup")?
        .unwrap_or_else(|| format!("runbook:{}", ctx.job));
    let mut labels: standby_types::watch::Labels =
        [("runbook".to_string(), ctx.runbook.clone())].into();
    match &ctx.input["labels"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let v = match v {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    other => {
                        return Err(EngineError::BadRequest(format!(
                            "input 'labels.{k}': {other} is not a string"
                        )));
                    }
                };
                if !v.is_empty() && k != "runbook" {
                    labels.insert(k.clone(), v);
                }
            }
        }
        other => {
            return Err(EngineError::BadRequest(format!(
                "input 'labels': {other} is not a map of strings"
            )));
        }
    }
    let i = crate::watch::open_incident(
        &ctx.ctl,
        crate::watch::IncidentOpen {
            title: Some(ctx.str("title")?),
            severity: Some(severity),
            description: ctx.opt_str("description")?,
            key: Some(key),
            labels,
            author: Some(ctx.author()),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({ "incident": i.id, "title": i.title }))
}

pub(super) async fn incident_note(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.incident_or_job()?;
    let text = ctx.str("text")?;
    let author = format!("{}#{}", ctx.author(), ctx.key());
    let already = ctx
        .ctl
        .watch
        .repo()
        .timeline(id)
        .await?
        .iter()
        .any(|e| e.author == author && e.text == text);
    if !already {
        crate::watch::update_incident(
            &ctx.ctl,
            id,
            crate::watch::IncidentUpdate {
                note: Some(text),
                author: Some(author),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(json!({ "incident": id }))
}

pub(super) async fn incident_resolve(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.incident_or_job()?;
    let i = ctx.ctl.watch.repo().incident(id).await?;
    if matches!(i.state, IncidentState::Resolved | IncidentState::Closed) {
        return Ok(json!({ "incident": id, "state": i.state.as_str() }));
    }
    let i = crate::watch::update_incident(
        &ctx.ctl,
        id,
        crate::watch::IncidentUpdate {
            state: Some(IncidentState::Resolved),
            note: ctx.opt_str("note")?,
            author: Some(ctx.author()),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({ "incident": id, "state": i.state.as_str() }))
}

pub(super) async fn notify(ctx: &ActionCtx) -> Result<Value, EngineError> {
    if !ctx.recorded.is_null() {
        return Ok(ctx.recorded.clone());
    }
    let ctl = &ctx.ctl;
    let receivers: Vec<String> = match ctx.opt_str("receiver")? {
        Some(r) if ctl.cfg.receivers.contains_key(&r) => vec![r],
        Some(r) => return Err(EngineError::not_found("receiver", r)),
        None => ctl.cfg.receivers.keys().cloned().collect(),
    };
    let incident = match ctx.incident {
        Some(id) => ctl.watch.repo().incident(id).await.ok(),
        None => None,
    };
    let subject = ctx.str("subject")?;
    let text = ctx.str("text")?;
    let n = standby_types::watch::Notification {
        delivery: 0,
        status: "runbook".into(),
        group_labels: [
            ("runbook".to_string(), ctx.runbook.clone()),
            ("subject".to_string(), subject),
            ("text".to_string(), text),
        ]
        .into(),
        alerts: Vec::new(),
        incident,
    };
    let payload = serde_json::to_value(&n)
        .map_err(|e| EngineError::Internal(format!("unable to encode the message: {e}")))?;
    let mut ids = Vec::new();
    for r in &receivers {
        let d = ctl
            .watch
            .repo()
            .insert_delivery(r, "runbook", &[], &payload, Utc::now())
            .await?;
        ids.push(d.id);
    }
    let out = json!({ "deliveries": ids });
    ctx.record(out.clone()).await?;
    Ok(out)
}
