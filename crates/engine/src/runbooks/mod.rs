//! The durable runbook engine.
//!
//! # Flow
//! A trigger ([`triggers`]: an alert settling, a schedule, the API, a
//! webhook) calls [`start`]: parameters are resolved, the lock key and
//! incident rendered, and the job, its run row (with the runbook text as
//! it is now) and its lock are created in one transaction. The job then
//! runs its steps in order ([`execute`]).
//!
//! # Durability
//! Each step execution (a step, or one item of a `for_each` step) is a
//! row. It is written `running` with its rendered input **before** the
//! action runs and `succeeded` with its output **after**. At controller
//! start every unfinished runbook job is resumed ([`resume_all`]) from its
//! snapshot: succeeded rows are skipped (their outputs go back into the
//! template context), running ones run again. So actions check the world
//! first (see [`actions`]); each gets an idempotency key `JOB:STEP:ITEM`
//! and what it recorded while running (`recorded`).
//!
//! # Test hook
//! In a build with the `crash-hook` feature (tests only, see
//! [`crate::crash`]), `STANDBY_CRASH_AT=RUNBOOK:STEP:before|after` aborts
//! the controller right after the step is persisted running (`before`),
//! or right after its action returned but before its success is
//! persisted (`after`).
//!
//! # Layout
//! - `catalog.rs`: [`Runbooks`], the loaded runbooks (built-in and
//!   configured files) that the controller holds, the engine's repository
//!   and the steps' crash points. A leaf: it does not know the controller, so the
//!   controller imports nothing that imports it back.
//! - `mod.rs`: starting, executing and resuming jobs.
//! - [`actions`]: the actions' implementations (`actions/`, one file per
//!   concern); [`triggers`]: alerts, schedules and webhooks that start jobs.

pub mod actions;
pub(crate) mod catalog;
pub mod triggers;

pub use catalog::{Loaded, Runbooks};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use standby_db::{NewRun, RunRecord, RunStart, StepRecord, StepState};
use standby_runbook::{OnFailure, Runbook, Step, template};
use standby_types::model::JobStatus;
use standby_types::watch::{Event, Severity};

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};

/// What a trigger asks for.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub params: Map<String, Value>,
    /// `kind` plus the trigger's data; `at` and `at_epoch` are added.
    pub trigger: Value,
}

pub fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// Start a job of runbook `name`. A held lock is a conflict (logged as an
/// event); nothing is created then.
pub async fn start(
    ctl: &Arc<Controller>,
    name: &str,
    req: StartRequest,
) -> Result<i64, EngineError> {
    let l = ctl.runbooks.get(name)?;
    let rb = &l.runbook;
    let mut trigger = match req.trigger {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let now = Utc::now();
    trigger.entry("kind").or_insert_with(|| json!("manual"));
    trigger.entry("at").or_insert_with(|| json!(now));
    trigger
        .entry("at_epoch")
        .or_insert_with(|| json!(epoch(now)));
    let trigger = Value::Object(trigger);
    let job_stub = json!({ "id": null, "runbook": name });
    let params = standby_runbook::resolve_params(rb, &req.params, &trigger, &job_stub)
        .map_err(EngineError::BadRequest)?;
    let ctx = template::context(&standby_runbook::context(
        &params,
        &trigger,
        &job_stub,
        None,
        &Map::new(),
    ));
    let lock_key = match &rb.lock {
        Some(l) => Some(match template::render_str(l, &ctx) {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => {
                return Err(EngineError::BadRequest(format!(
                    "runbook {name}: lock: {e}"
                )));
            }
        }),
        None => None,
    };
    let incident = rb
        .incident
        .as_ref()
        .and_then(|i| template::render_str(i, &ctx).ok())
        .and_then(|v| match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
    let run = NewRun {
        runbook: name.to_string(),
        file: l.file.clone(),
        source: l.source.clone(),
        params: Value::Object(params),
        trigger: trigger.clone(),
        lock_key: lock_key.clone(),
        incident,
    };
    match ctl.runbooks.repo.create_run(&run).await? {
        RunStart::Started(job) => {
            tracing::info!(job, runbook = name, trigger = %trigger["kind"], "runbook job started");
            emit(
                ctl,
                "runbook.started",
                Severity::Info,
                name,
                format!("runbook {name} started as job {job} ({})", trigger["kind"]),
            );
            spawn_execute(ctl, job);
            Ok(job)
        }
        RunStart::Locked(held) => {
            let key = lock_key.unwrap_or_default();
            let msg = format!("runbook {name} skipped: lock '{key}' is held by job {held}");
            tracing::info!("{msg}");
            emit(ctl, "runbook.skipped", Severity::Warning, name, msg.clone());
            Err(EngineError::Conflict(msg))
        }
    }
}

fn emit(ctl: &Controller, kind: &str, severity: Severity, runbook: &str, message: String) {
    ctl.watch.emit(Event {
        id: 0,
        at: Utc::now(),
        source: format!("runbook:{runbook}"),
        kind: kind.into(),
        severity,
        labels: [("runbook".to_string(), runbook.to_string())].into(),
        vantage: standby_types::watch::CONTROLLER_VANTAGE.into(),
        message,
    });
}

/// Resume every unfinished runbook job (at controller start).
pub async fn resume_all(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    for run in ctl.runbooks.repo.unfinished_runs().await? {
        tracing::warn!(job = run.job, runbook = %run.run.runbook, "resuming runbook job after a controller restart");
        emit(
            ctl,
            "runbook.resumed",
            Severity::Warning,
            &run.run.runbook,
            format!(
                "runbook {} job {} resumed after a controller restart",
                run.run.runbook, run.job
            ),
        );
        spawn_execute(ctl, run.job);
    }
    Ok(())
}

fn spawn_execute(ctl: &Arc<Controller>, job: i64) {
    let ctl2 = ctl.clone();
    ctl.tasks.spawn(async move {
        let outcome = match tokio::spawn(execute(ctl2.clone(), job)).await {
            Ok(o) => o,
            Err(e) => Err(EngineError::Internal(format!("the job's task failed: {e}"))),
        };
        // A controller stopping mid-job leaves it running: the next one
        // resumes it.
        if ctl2.cancel.is_cancelled() && outcome.is_err() {
            return;
        }
        if let Err(e) = finish(&ctl2, job, outcome).await {
            tracing::error!(job, "unable to record the end of the runbook job: {e}");
        }
    });
}

async fn finish(
    ctl: &Arc<Controller>,
    job: i64,
    outcome: Result<Value, EngineError>,
) -> Result<(), EngineError> {
    let run = ctl.runbooks.repo.run(job).await?;
    let name = &run.run.runbook;
    match &outcome {
        Ok(v) => {
            tracing::info!(job, runbook = %name, "runbook job succeeded");
            ctl.repo.update_job(job, 0, 0, "done").await?;
            ctl.repo
                .finish_job(job, JobStatus::Succeeded, None, v)
                .await?;
        }
        Err(e) => {
            let msg = error_chain(e);
            tracing::error!(job, runbook = %name, "runbook job failed: {msg}");
            ctl.repo
                .finish_job(job, JobStatus::Failed, Some(&msg), &Value::Null)
                .await?;
        }
    }
    ctl.runbooks.repo.release_lock(job).await?;
    emit(
        ctl,
        if outcome.is_ok() {
            "runbook.succeeded"
        } else {
            "runbook.failed"
        },
        if outcome.is_ok() {
            Severity::Info
        } else {
            Severity::Error
        },
        name,
        format!(
            "runbook {name} job {job} {}",
            if outcome.is_ok() {
                "succeeded"
            } else {
                "failed"
            }
        ),
    );
    // A job of a per-group scheduled runbook is its group's run, however
    // it was started (the schedule, `groups/NAME/run`, by hand).
    if let Some(g) = triggers::group_of(ctl, &run.run) {
        let at = run.run.trigger["at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.to_utc())
            .unwrap_or_else(Utc::now);
        let status = if outcome.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        if let Err(e) = ctl.repo.record_group_run(g, at, status).await {
            tracing::warn!(group = g, "unable to record run: {e}");
        }
    }
    Ok(())
}

/// The state of one job while it runs.
struct JobRun {
    job: i64,
    run: RunRecord,
    runbook: Runbook,
    incident: std::sync::Mutex<Option<i64>>,
    /// Rows already persisted, by (step, item).
    rows: BTreeMap<(String, i64), StepRecord>,
}

impl JobRun {
    fn incident(&self) -> Option<i64> {
        *self.incident.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_value(&self) -> Value {
        json!({ "id": self.job, "runbook": self.run.run.runbook })
    }

    fn context(&self, steps: &Map<String, Value>) -> Value {
        let params = match &self.run.run.params {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        standby_runbook::context(
            &params,
            &self.run.run.trigger,
            &self.job_value(),
            self.incident(),
            steps,
        )
    }
}

/// Run (or resume) job `job` to its end; the result lists the steps.
async fn execute(ctl: Arc<Controller>, job: i64) -> Result<Value, EngineError> {
    let run = ctl.runbooks.repo.run(job).await?;
    let file_name = Path::new(run.run.file.trim_start_matches("builtin:"))
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("runbook.yaml")
        .to_string();
    let runbook = standby_runbook::parse(&file_name, &run.run.source)
        .map_err(|e| EngineError::BadRequest(format!("the job's runbook snapshot: {e}")))?;
    let rows = ctl
        .runbooks
        .repo
        .steps(job)
        .await?
        .into_iter()
        .map(|r| ((r.step.clone(), r.item), r))
        .collect();
    let jr = Arc::new(JobRun {
        job,
        incident: std::sync::Mutex::new(run.run.incident),
        run,
        runbook,
        rows,
    });
    let mut outputs = Map::new();
    let mut summary = Vec::new();
    let mut failure = None;
    for (pos, step) in jr.runbook.steps.iter().enumerate() {
        let done = jr
            .rows
            .get(&(step.id.clone(), -1))
            .filter(|r| r.state.is_final())
            .cloned();
        let rec = match done {
            Some(r) => r,
            None => {
                ctl.repo
                    .update_job(
                        job,
                        pos as u64,
                        jr.runbook.steps.len() as u64,
                        &format!("step {}", step.id),
                    )
                    .await?;
                run_step(&ctl, &jr, pos, step, &outputs).await?
            }
        };
        outputs.insert(
            step.id.clone(),
            json!({ "output": rec.output, "state": rec.state, "error": rec.error }),
        );
        summary.push(json!({ "step": step.id, "state": rec.state, "error": rec.error }));
        if rec.state == StepState::Failed && step.on_failure == OnFailure::Abort {
            failure = Some(format!(
                "step {} failed: {}",
                step.id,
                rec.error.clone().unwrap_or_default()
            ));
            break;
        }
    }
    match failure {
        Some(f) => Err(EngineError::Conflict(f)),
        None => {
            Ok(json!({ "runbook": jr.runbook.name, "incident": jr.incident(), "steps": summary }))
        }
    }
}

/// Run one step (all its items) and persist its aggregate row.
async fn run_step(
    ctl: &Arc<Controller>,
    jr: &Arc<JobRun>,
    pos: usize,
    step: &Step,
    outputs: &Map<String, Value>,
) -> Result<StepRecord, EngineError> {
    let ctx = jr.context(outputs);
    let Some(for_each) = &step.for_each else {
        return run_item(ctl, jr, pos, step, -1, ctx).await;
    };
    let started = Utc::now();
    let mut agg = StepRecord {
        job: jr.job,
        step: step.id.clone(),
        item: -1,
        position: pos as i64,
        state: StepState::Running,
        attempt: 1,
        input: Value::Null,
        output: Value::Null,
        error: None,
        started_at: Some(started),
        finished_at: None,
    };
    let items = match template::render(for_each, &template::context(&ctx), "for_each") {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return fail_row(ctl, jr, agg, format!("for_each: {other} is not a list")).await;
        }
        Err(e) => return fail_row(ctl, jr, agg, format!("{}: {}", e.path, e.message)).await,
    };
    agg.input = json!({ "items": items.len() });
    ctl.runbooks.repo.put_step(&agg).await?;
    let parallel = step.parallel.unwrap_or(1).max(1) as usize;
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut set = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let mut c = ctx.clone();
        c["item"] = item;
        c["index"] = json!(i);
        let (ctl, jr, step) = (ctl.clone(), jr.clone(), step.clone());
        // Items take their slots in list order: an item may wait for one
        // before it (a recovery plan's tiers), never the other way round.
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| EngineError::Internal(format!("for_each slots: {e}")))?;
        set.spawn(async move {
            let _permit = permit;
            (i, run_item(&ctl, &jr, pos, &step, i as i64, c).await)
        });
    }
    let mut results: Vec<Option<StepRecord>> = Vec::new();
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        let (i, rec) = r?;
        if results.len() <= i {
            results.resize(i + 1, None);
        }
        match rec {
            Ok(rec) => results[i] = Some(rec),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let recs: Vec<StepRecord> = results.into_iter().flatten().collect();
    let failed: Vec<String> = recs
        .iter()
        .filter(|r| r.state == StepState::Failed)
        .map(|r| format!("item {}: {}", r.item, r.error.clone().unwrap_or_default()))
        .collect();
    agg.output = Value::Array(
        recs.iter()
            .map(|r| match r.state {
                StepState::Succeeded => r.output.clone(),
                _ => Value::Null,
            })
            .collect(),
    );
    agg.finished_at = Some(Utc::now());
    if failed.is_empty() {
        agg.state = StepState::Succeeded;
    } else {
        agg.state = StepState::Failed;
        agg.error = Some(failed.join("; "));
    }
    ctl.runbooks.repo.put_step(&agg).await?;
    Ok(agg)
}

async fn fail_row(
    ctl: &Arc<Controller>,
    jr: &JobRun,
    mut rec: StepRecord,
    error: String,
) -> Result<StepRecord, EngineError> {
    rec.state = StepState::Failed;
    rec.error = Some(error.clone());
    rec.finished_at = Some(Utc::now());
    ctl.runbooks.repo.put_step(&rec).await?;
    step_timeline(ctl, jr, &rec.step, rec.item, &format!("failed: {error}")).await;
    Ok(rec)
}

/// Put a step's progress on the job's incident timeline (best effort:
/// the job does not fail because a timeline entry could not be written).
async fn step_timeline(ctl: &Arc<Controller>, jr: &JobRun, step: &str, item: i64, what: &str) {
    let Some(incident) = jr.incident() else {
        return;
    };
    let which = if item >= 0 {
        format!("{step}[{item}]")
    } else {
        step.to_string()
    };
    let req = crate::watch::IncidentUpdate {
        note: Some(format!(
            "runbook {} job {}: step {which} {what}",
            jr.runbook.name, jr.job
        )),
        kind: Some("step".into()),
        author: Some(format!("runbook:{}", jr.runbook.name)),
        ..Default::default()
    };
    if let Err(e) = crate::watch::update_incident(ctl, incident, req).await {
        tracing::warn!(
            job = jr.job,
            incident,
            "unable to add a step to the incident timeline: {e}"
        );
    }
}

/// One execution of a step (item -1) or of one item, with `when`,
/// rendering, retries and the timeout; persisted before and after.
async fn run_item(
    ctl: &Arc<Controller>,
    jr: &Arc<JobRun>,
    pos: usize,
    step: &Step,
    item: i64,
    ctx: Value,
) -> Result<StepRecord, EngineError> {
    let key = (step.id.clone(), item);
    let previous = jr.rows.get(&key).cloned();
    if let Some(p) = previous.as_ref().filter(|p| p.state.is_final()) {
        return Ok(p.clone());
    }
    let mctx = template::context(&ctx);
    let mut rec = StepRecord {
        job: jr.job,
        step: step.id.clone(),
        item,
        position: pos as i64,
        state: StepState::Running,
        attempt: 1,
        input: Value::Null,
        output: Value::Null,
        error: None,
        started_at: Some(Utc::now()),
        finished_at: None,
    };
    if let Some(w) = &step.when {
        match template::eval_condition(w, &mctx) {
            Ok(true) => {}
            Ok(false) => {
                rec.state = StepState::Skipped;
                rec.finished_at = rec.started_at;
                ctl.runbooks.repo.put_step(&rec).await?;
                step_timeline(ctl, jr, &step.id, item, "skipped (when is false)").await;
                return Ok(rec);
            }
            Err(e) => return fail_row(ctl, jr, rec, format!("when: {e}")).await,
        }
    }
    let with = Value::Object(step.with.clone().into_iter().collect());
    rec.input = match template::render(&with, &mctx, "with") {
        Ok(v) => v,
        Err(e) => return fail_row(ctl, jr, rec, format!("{}: {}", e.path, e.message)).await,
    };
    // A resumed execution keeps its first start and what it recorded.
    let mut recorded = Value::Null;
    if let Some(p) = &previous {
        rec.started_at = p.started_at.or(rec.started_at);
        rec.attempt = p.attempt.max(1);
        recorded = p.output.clone();
    }
    let attempts = step.retry.as_ref().map_or(1, |r| r.attempts.max(1));
    let backoff = step
        .retry
        .as_ref()
        .and_then(|r| standby_runbook::duration(&r.backoff).ok())
        .unwrap_or(Duration::from_secs(1));
    let timeout = step
        .timeout
        .as_deref()
        .and_then(|t| standby_runbook::duration(t).ok());
    loop {
        rec.state = StepState::Running;
        rec.output = recorded.clone();
        ctl.runbooks.repo.put_step(&rec).await?;
        step_timeline(
            ctl,
            jr,
            &step.id,
            item,
            &format!("started ({}, attempt {})", step.action, rec.attempt),
        )
        .await;
        ctl.runbooks.crash(&jr.runbook.name, &step.id, false);
        let actx = actions::ActionCtx {
            ctl: ctl.clone(),
            job: jr.job,
            runbook: jr.runbook.name.clone(),
            step: step.id.clone(),
            item,
            position: pos as i64,
            started_at: rec.started_at.unwrap_or_else(Utc::now),
            attempt: rec.attempt,
            recorded: recorded.clone(),
            incident: jr.incident(),
            input: rec.input.clone(),
        };
        let fut = actions::run(&actx, &step.action);
        let res = match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::Timeout(format!(
                    "timed out after {}",
                    humantime::format_duration(t)
                ))),
            },
            None => fut.await,
        };
        ctl.runbooks.crash(&jr.runbook.name, &step.id, true);
        match res {
            Ok(out) => {
                if step.action == "incident.open"
                    && let Some(id) = out["incident"].as_i64()
                {
                    *jr.incident.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                    ctl.runbooks.repo.set_run_incident(jr.job, id).await?;
                }
                rec.state = StepState::Succeeded;
                rec.output = out;
                rec.error = None;
                rec.finished_at = Some(Utc::now());
                ctl.runbooks.repo.put_step(&rec).await?;
                step_timeline(ctl, jr, &step.id, item, "succeeded").await;
                return Ok(rec);
            }
            Err(e) => {
                let msg = error_chain(&e);
                if rec.attempt < attempts && !ctl.cancel.is_cancelled() {
                    let wait = retry_wait(backoff, rec.attempt);
                    tracing::warn!(job = jr.job, step = %step.id, item, attempt = rec.attempt, "step failed, retrying in {}: {msg}", humantime::format_duration(wait));
                    step_timeline(
                        ctl,
                        jr,
                        &step.id,
                        item,
                        &format!("attempt {} failed, retrying: {msg}", rec.attempt),
                    )
                    .await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctl.cancel.cancelled() => return Err(EngineError::Internal("controller stopping".into())),
                    }
                    rec.attempt += 1;
                    recorded = Value::Null;
                    continue;
                }
                if ctl.cancel.is_cancelled() {
                    // Left running: the next controller runs it again.
                    return Err(EngineError::Internal("controller stopping".into()));
                }
                tracing::error!(job = jr.job, step = %step.id, item, "step failed: {msg}");
                rec.output = Value::Null;
                return fail_row(ctl, jr, rec, msg).await;
            }
        }
    }
}

/// The longest wait between two attempts of a step.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The wait after attempt `attempt` (1-based) of a step retried with
/// `backoff`: `backoff`, then doubled each attempt, at most a day. Never
/// overflows, whatever a runbook asks for.
fn retry_wait(backoff: Duration, attempt: u32) -> Duration {
    backoff
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_RETRY_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_retry_waits_double_and_never_overflow() {
        let s = Duration::from_secs;
        assert_eq!(retry_wait(s(2), 1), s(2));
        assert_eq!(retry_wait(s(2), 3), s(8));
        // A huge backoff or many attempts: a day at most, no panic.
        assert_eq!(retry_wait(Duration::MAX, 1), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(s(1), 200), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(s(1), 0), s(1));
    }
}
