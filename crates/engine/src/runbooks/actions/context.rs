//! What an action knows about the step execution it serves
//! ([`ActionCtx`]: its input, what it recorded, its idempotency key) and
//! lookups in the configuration that several actions share.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use standby_db::{StepRecord, StepState};
use standby_types::watch::ProbeCheck;

use crate::controller::Controller;
use crate::error::EngineError;

/// What an action knows about the step execution it serves.
pub struct ActionCtx {
    pub ctl: Arc<Controller>,
    pub job: i64,
    pub runbook: String,
    pub step: String,
    /// -1 for a step without `for_each`.
    pub item: i64,
    pub position: i64,
    /// When this step execution first started (kept across a resume).
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
    /// What an earlier run of this execution recorded (null if none).
    pub recorded: Value,
    pub incident: Option<i64>,
    pub input: Value,
}

impl ActionCtx {
    /// `JOB:STEP:ITEM`, unique per step execution.
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.job, self.step, self.item.max(0))
    }

    /// Persist `v` with the running step, so a re-run finds it in
    /// `recorded`.
    pub async fn record(&self, v: Value) -> Result<(), EngineError> {
        self.ctl
            .runbooks
            .repo()
            .put_step(&StepRecord {
                job: self.job,
                step: self.step.clone(),
                item: self.item,
                position: self.position,
                state: StepState::Running,
                attempt: self.attempt,
                input: self.input.clone(),
                output: v,
                error: None,
                started_at: Some(self.started_at),
                finished_at: None,
            })
            .await?;
        Ok(())
    }

    pub(super) fn str(&self, name: &str) -> Result<String, EngineError> {
        self.opt_str(name)?
            .ok_or_else(|| EngineError::BadRequest(format!("input '{name}' is required")))
    }

    pub(super) fn opt_str(&self, name: &str) -> Result<Option<String>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a string"
            ))),
        }
    }

    pub(super) fn opt_bool(&self, name: &str) -> Result<Option<bool>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) if s == "true" => Ok(Some(true)),
            Value::String(s) if s == "false" => Ok(Some(false)),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a bool"
            ))),
        }
    }

    pub(super) fn opt_i64(&self, name: &str) -> Result<Option<i64>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| {
                EngineError::BadRequest(format!("input '{name}': {n} is not an integer"))
            }),
            Value::String(s) => s.trim().parse().map(Some).map_err(|_| {
                EngineError::BadRequest(format!("input '{name}': '{s}' is not an integer"))
            }),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a number"
            ))),
        }
    }

    pub(super) fn opt_duration(&self, name: &str) -> Result<Option<Duration>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(n.as_f64().map(Duration::from_secs_f64)),
            Value::String(s) => standby_runbook::duration(s)
                .map(Some)
                .map_err(|e| EngineError::BadRequest(format!("input '{name}': {e}"))),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a duration"
            ))),
        }
    }

    pub(super) fn incident_or_job(&self) -> Result<i64, EngineError> {
        self.opt_i64("incident")?.or(self.incident).ok_or_else(|| {
            EngineError::BadRequest(
                "no incident: give 'incident' or open one earlier with incident.open".into(),
            )
        })
    }

    pub(super) fn author(&self) -> String {
        format!("runbook:{}", self.runbook)
    }
}

/// The configured probe about a VM (labels `vm = NAME`), if any.
pub(super) fn probe_of(ctl: &Controller, vm: &str) -> Option<String> {
    ctl.cfg
        .probes
        .iter()
        .find(|(_, p)| p.labels.get("vm").map(String::as_str) == Some(vm))
        .map(|(n, _)| n.clone())
}

/// Front-door services of a VM, by name.
pub(super) fn services_of(ctl: &Controller, vm: &str) -> Vec<String> {
    ctl.cfg
        .services
        .iter()
        .filter(|(_, s)| s.vm == vm)
        .map(|(n, _)| n.clone())
        .collect()
}

/// How to check `service` where it runs at `site`: its probe kind against
/// its backend address there.
pub(super) fn service_check(
    ctl: &Controller,
    service: &str,
    site: &str,
) -> Result<ProbeCheck, EngineError> {
    let svc = ctl
        .cfg
        .services
        .get(service)
        .ok_or_else(|| EngineError::not_found("service", service))?;
    let target = svc.backends.get(site).cloned().ok_or_else(|| {
        EngineError::BadRequest(format!("service {service} has no backend at site {site}"))
    })?;
    let kind = svc
        .probe
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "tcp".into());
    Ok(match kind.as_str() {
        "sip" => ProbeCheck::Sip { target },
        "http" => ProbeCheck::Http {
            url: svc
                .probe_url
                .clone()
                .unwrap_or_else(|| format!("http://{target}/")),
            status: None,
            body_contains: None,
        },
        _ => ProbeCheck::Tcp { target },
    })
}
