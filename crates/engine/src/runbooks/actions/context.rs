//! What an action knows about the step execution it serves
//! ([`ActionCtx`]: its input, what it recorded, its idempotency key) and
//! lookups in the configuration that several actions share.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use standby_db::{StepRecord, StepState};
use standby_runbook::scalar::Int;
use std::time::Duration;

use standby_types::watch::{ProbeCheck, ProbeSpec};

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
    pub async fn record(&self, v: impl serde::Serialize) -> Result<(), EngineError> {
        let v = serde_json::to_value(v)
            .map_err(|e| EngineError::Internal(format!("unable to record the step: {e}")))?;
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

    /// What an earlier run of this execution recorded, as `T` (None when
    /// nothing was, or something else was).
    pub(super) fn recorded<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        if self.recorded.is_null() {
            return None;
        }
        serde_json::from_value(self.recorded.clone()).ok()
    }

    /// The incident given, else the job's.
    pub(super) fn incident_or_job(&self, given: Option<Int>) -> Result<i64, EngineError> {
        given.map(|i| i.0).or(self.incident).ok_or_else(|| {
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
    ctl.cfg()
        .probes
        .iter()
        .find(|(_, p)| p.labels.get("vm").map(String::as_str) == Some(vm))
        .map(|(n, _)| n.clone())
}

/// Front-door services of a VM, by name.
pub(super) fn services_of(ctl: &Controller, vm: &str) -> Vec<String> {
    ctl.cfg()
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
    let live = ctl.cfg();
    let svc = live
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

/// How the VM shows it works: its first front-door service's check at the
/// site where it runs, else its own probe, else (none) running is enough.
pub(super) fn check_of(ctl: &Controller, vm: &str, site: &str) -> Option<(String, ProbeCheck)> {
    if let Some(s) = services_of(ctl, vm).into_iter().next()
        && let Ok(c) = service_check(ctl, &s, site)
    {
        return Some((format!("service {s}"), c));
    }
    // Its own probe, when that probe is about the site where it runs (a
    // probe of its home address says nothing of it at its DR site).
    let p = probe_of(ctl, vm)?;
    let cfg = &ctl.cfg().probes[&p];
    if cfg.labels.get("site").is_some_and(|s| s != site) {
        return None;
    }
    let c = cfg.check().ok()?;
    Some((format!("probe {p}"), c))
}

/// Whether `check` passes once now (its failure's detail if not).
pub(super) async fn answers(check: &ProbeCheck, name: String) -> Result<(), String> {
    let spec = ProbeSpec {
        name,
        check: check.clone(),
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(500),
        attempts: 1,
        labels: Default::default(),
    };
    let o = standby_monitor::probe::run(&spec).await;
    if o.ok { Ok(()) } else { Err(o.detail) }
}
