//! `incident.open`, `incident.note`, `incident.resolve` and `notify`.

use chrono::Utc;
use standby_runbook::catalog::{IncidentNote, IncidentOpen, IncidentResolve, Notify};
use standby_types::outcome::{IncidentOpened, IncidentTouched, Queued};
use standby_types::watch::{IncidentState, Severity};

use super::Perform;
use super::context::ActionCtx;
use crate::error::EngineError;

impl Perform for IncidentOpen {
    async fn perform(self, ctx: &ActionCtx) -> Result<IncidentOpened, EngineError> {
        let severity = match self.severity {
            Some(s) => s
                .as_str()
                .parse::<Severity>()
                .map_err(EngineError::BadRequest)?,
            None => Severity::Error,
        };
        let key = self
            .dedup
            .map(String::from)
            .unwrap_or_else(|| format!("runbook:{}", ctx.job));
        let mut labels: standby_types::watch::Labels =
            [("runbook".to_string(), ctx.runbook.clone())].into();
        for (k, v) in self.labels {
            let Some(v) = v.map(String::from) else {
                continue;
            };
            if !v.is_empty() && k != "runbook" {
                labels.insert(k, v);
            }
        }
        let i = crate::watch::open_incident(
            &ctx.ctl,
            crate::watch::IncidentOpen {
                title: Some(self.title.into()),
                severity: Some(severity),
                description: self.description.map(String::from),
                key: Some(key),
                labels,
                author: Some(ctx.author()),
                ..Default::default()
            },
        )
        .await?;
        Ok(IncidentOpened {
            incident: i.id,
            title: i.title,
        })
    }
}

impl Perform for IncidentNote {
    async fn perform(self, ctx: &ActionCtx) -> Result<IncidentTouched, EngineError> {
        let id = ctx.incident_or_job(self.incident)?;
        let text = String::from(self.text);
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
        Ok(IncidentTouched {
            incident: id,
            state: None,
        })
    }
}

impl Perform for IncidentResolve {
    async fn perform(self, ctx: &ActionCtx) -> Result<IncidentTouched, EngineError> {
        let id = ctx.incident_or_job(self.incident)?;
        let i = ctx.ctl.watch.repo().incident(id).await?;
        if matches!(i.state, IncidentState::Resolved | IncidentState::Closed) {
            return Ok(IncidentTouched {
                incident: id,
                state: Some(i.state.as_str().to_string()),
            });
        }
        let i = crate::watch::update_incident(
            &ctx.ctl,
            id,
            crate::watch::IncidentUpdate {
                state: Some(IncidentState::Resolved),
                note: self.note.map(String::from),
                author: Some(ctx.author()),
                ..Default::default()
            },
        )
        .await?;
        Ok(IncidentTouched {
            incident: id,
            state: Some(i.state.as_str().to_string()),
        })
    }
}

impl Perform for Notify {
    async fn perform(self, ctx: &ActionCtx) -> Result<Queued, EngineError> {
        if let Some(done) = ctx.recorded::<Queued>() {
            return Ok(done);
        }
        let ctl = &ctx.ctl;
        let receivers: Vec<String> = match self.receiver.map(String::from) {
            Some(r) if ctl.cfg().receivers.contains_key(&r) => vec![r],
            Some(r) => return Err(EngineError::not_found("receiver", r)),
            None => ctl.cfg().receivers.keys().cloned().collect(),
        };
        let incident = match ctx.incident {
            Some(id) => ctl.watch.repo().incident(id).await.ok(),
            None => None,
        };
        let n = standby_types::watch::Notification {
            delivery: 0,
            status: "runbook".into(),
            group_labels: [
                ("runbook".to_string(), ctx.runbook.clone()),
                ("subject".to_string(), self.subject.into()),
                ("text".to_string(), self.text.into()),
            ]
            .into(),
            alerts: Vec::new(),
            incident,
        };
        let payload = serde_json::to_value(&n)
            .map_err(|e| EngineError::Internal(format!("unable to encode the message: {e}")))?;
        let mut deliveries = Vec::new();
        for r in &receivers {
            let d = ctl
                .watch
                .repo()
                .insert_delivery(r, "runbook", &[], &payload, Utc::now())
                .await?;
            deliveries.push(d.id);
        }
        let out = Queued { deliveries };
        ctx.record(&out).await?;
        Ok(out)
    }
}
