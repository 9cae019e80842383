//! What starts runbooks besides the runbook API: alerts that settle, cron
//! schedules, per-group protection schedules (the persisted `next_run` of
//! each group stays the source of truth), a group's protection requested
//! through the API (`POST /api/v1/groups/NAME/run`: the same `protect`
//! runbook under the same lock as its schedule) and signed webhooks.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use standby_db::NewRun;
use standby_types::watch::Alert;

use super::{StartRequest, epoch, start};
use crate::controller::Controller;
use crate::error::EngineError;

/// Start the runbooks of every alert the watch hands over as settled, in
/// order, until the controller stops.
pub async fn run_alert_triggers(
    ctl: Arc<Controller>,
    mut settled: tokio::sync::mpsc::UnboundedReceiver<Alert>,
) {
    loop {
        let alert = tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            a = settled.recv() => match a {
                Some(a) => a,
                None => return,
            },
        };
        on_alert(&ctl, &alert).await;
    }
}

/// An alert settled (not muted, incident opened if its rule has one):
/// start every runbook whose alert trigger matches it.
pub async fn on_alert(ctl: &Arc<Controller>, alert: &Alert) {
    let alertname = alert
        .labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| alert.rule.clone());
    let matching: Vec<String> = ctl
        .runbooks
        .all()
        .filter(|l| {
            l.runbook.trigger.alert.as_ref().is_some_and(|t| {
                t.alertname
                    .as_ref()
                    .is_none_or(|n| *n == alertname || *n == alert.rule)
                    && t.labels.iter().all(|(k, v)| alert.labels.get(k) == Some(v))
            })
        })
        .map(|l| l.runbook.name.clone())
        .collect();
    for name in matching {
        let trigger = json!({
            "kind": "alert",
            "at": alert.fired_at,
            "at_epoch": epoch(alert.fired_at),
            "alert": {
                "id": alert.id,
                "rule": alert.rule,
                "alertname": alertname,
                "severity": alert.severity,
                "labels": alert.labels,
                "annotations": alert.annotations,
                "active_since": alert.active_since,
                "active_since_epoch": epoch(alert.active_since),
                "fired_at": alert.fired_at,
                "fired_at_epoch": epoch(alert.fired_at),
                "incident": alert.incident,
            },
        });
        let req = StartRequest {
            params: Map::new(),
            trigger,
        };
        match start(ctl, &name, req).await {
            Ok(job) => {
                tracing::info!(alert = alert.id, runbook = %name, job, "alert started a runbook")
            }
            Err(EngineError::Conflict(m)) => tracing::info!(alert = alert.id, "{m}"),
            Err(e) => {
                tracing::error!(alert = alert.id, runbook = %name, "unable to start runbook: {e}")
            }
        }
    }
}

/// Ticks every 500 ms: cron runbooks and per-group schedules.
pub async fn run_schedules(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = cron_tick(&ctl).await {
            tracing::warn!("runbook schedules: {e}");
        }
        if let Err(e) = groups_tick(&ctl).await {
            tracing::warn!("group schedules: {e}");
        }
    }
}

async fn cron_tick(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    let now = Utc::now();
    let crons: Vec<(String, String)> = ctl
        .runbooks
        .all()
        .filter_map(|l| {
            let c = l.runbook.trigger.schedule.as_ref()?.cron.clone()?;
            Some((l.runbook.name.clone(), c))
        })
        .collect();
    for (name, cron) in crons {
        let Ok(sched) = cron.parse::<standby_types::config::Schedule>() else {
            continue;
        };
        let due = {
            let mut next = ctl
                .runbooks
                .cron_next
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match next.get(&name).copied() {
                None => {
                    if let Some(n) = sched.next_after(now) {
                        next.insert(name.clone(), n);
                    }
                    false
                }
                Some(at) if at <= now => {
                    match sched.next_after(now) {
                        Some(n) => next.insert(name.clone(), n),
                        None => next.remove(&name),
                    };
                    true
                }
                Some(_) => false,
            }
        };
        if due {
            let req = StartRequest {
                params: Map::new(),
                trigger: json!({ "kind": "schedule", "cron": cron }),
            };
            match start(ctl, &name, req).await {
                Ok(job) => tracing::info!(runbook = %name, job, "scheduled runbook started"),
                Err(e) => tracing::info!(runbook = %name, "scheduled runbook not started: {e}"),
            }
        }
    }
    Ok(())
}

/// Per-group schedules: each group whose persisted `next_run` is due gets
/// its next run computed and one job of every `schedule: {groups: true}`
/// runbook with `params.group` set.
async fn groups_tick(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    let runbooks: Vec<String> = ctl
        .runbooks
        .all()
        .filter(|l| {
            l.runbook
                .trigger
                .schedule
                .as_ref()
                .is_some_and(|s| s.groups)
        })
        .map(|l| l.runbook.name.clone())
        .collect();
    if runbooks.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    for rec in ctl.repo.groups().await? {
        let live = ctl.cfg();
        let Some(g) = live.groups.get(&rec.name) else {
            continue;
        };
        match rec.next_run {
            None => {
                ctl.repo
                    .set_group_schedule(&rec.name, g.schedule.next_after(now))
                    .await?;
            }
            Some(due) if due <= now => {
                ctl.repo
                    .set_group_schedule(&rec.name, g.schedule.next_after(now))
                    .await?;
                for name in &runbooks {
                    let mut params = Map::new();
                    params.insert("group".into(), Value::String(rec.name.clone()));
                    let req = StartRequest {
                        params,
                        trigger: json!({ "kind": "schedule", "group": rec.name, "due": due }),
                    };
                    match start(ctl, name, req).await {
                        Ok(job) => {
                            tracing::info!(group = %rec.name, runbook = %name, job, "scheduled protection started")
                        }
                        Err(EngineError::Conflict(m)) => {
                            tracing::info!(group = %rec.name, "skipped: {m}")
                        }
                        Err(e) => {
                            tracing::warn!(group = %rec.name, runbook = %name, "unable to start: {e}")
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The runbook that protects a group, on its schedule and on request.
pub const PROTECT: &str = "protect";

/// Protect `group` now: a manual job of the `protect` runbook with
/// `params.group`, started like its scheduled jobs, so it takes the same
/// lock (`group:NAME`). A run of the group in progress, scheduled or
/// requested, makes this a conflict; nothing is started then.
pub async fn protect_group(ctl: &Arc<Controller>, group: &str) -> Result<i64, EngineError> {
    if !ctl.cfg().groups.contains_key(group) {
        return Err(EngineError::not_found("group", group));
    }
    let params = Map::from_iter([("group".to_string(), json!(group))]);
    let req = StartRequest {
        params,
        trigger: json!({ "kind": "manual" }),
    };
    start(ctl, PROTECT, req).await.map_err(|e| match e {
        EngineError::Conflict(m) => {
            EngineError::Conflict(format!("group {group} is already being protected ({m})"))
        }
        e => e,
    })
}

/// The group whose run a job of `run` is: its `group` parameter when its
/// runbook runs per group on the groups' schedules (`schedule: {groups:
/// true}`, as `protect` does), however the job was started.
pub(super) fn group_of<'a>(ctl: &Controller, run: &'a NewRun) -> Option<&'a str> {
    let group = run.params["group"].as_str()?;
    let runbook = &ctl.runbooks.get(&run.runbook).ok()?.runbook;
    runbook
        .trigger
        .schedule
        .as_ref()
        .is_some_and(|s| s.groups)
        .then_some(group)
}

/// Nonces of webhook calls accepted in the last five minutes, per
/// runbook (one table per process: the leader serves webhooks).
fn replays() -> &'static standby_notify::ReplayGuard {
    static G: std::sync::OnceLock<standby_notify::ReplayGuard> = std::sync::OnceLock::new();
    G.get_or_init(standby_notify::ReplayGuard::new)
}

/// A webhook call: the body must be signed with the secret in the
/// runbook's `secret_env` (`X-Standby-Timestamp`, `X-Standby-Nonce`,
/// `X-Standby-Signature: sha256=HEX` of HMAC-SHA256 over
/// `"<timestamp>.<nonce>.<body>"`), the timestamp within five minutes of
/// this controller's clock and the nonce not used before: a recorded call
/// cannot be replayed. The JSON body may hold `params`; it is
/// `trigger.body`.
pub async fn on_webhook(
    ctl: &Arc<Controller>,
    name: &str,
    signed: standby_notify::Signed<'_>,
    body: &[u8],
) -> Result<i64, EngineError> {
    let l = ctl.runbooks.get(name)?;
    let Some(hook) = &l.runbook.trigger.webhook else {
        return Err(EngineError::BadRequest(format!(
            "runbook {name} has no webhook trigger"
        )));
    };
    let secret = std::env::var(&hook.secret_env).map_err(|_| {
        EngineError::Internal(format!(
            "the webhook secret of runbook {name} (${}) is not set",
            hook.secret_env
        ))
    })?;
    if let Err(e) = replays().check(
        name,
        secret.as_bytes(),
        signed,
        body,
        Utc::now().timestamp(),
    ) {
        tracing::warn!(runbook = name, error = %e, "webhook call refused");
        return Err(EngineError::BadRequest(format!(
            "webhook of runbook {name} refused: {e}"
        )));
    }
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| EngineError::BadRequest(format!("webhook body is not JSON: {e}")))?
    };
    let params = value["params"].as_object().cloned().unwrap_or_default();
    start(
        ctl,
        name,
        StartRequest {
            params,
            trigger: json!({ "kind": "webhook", "body": value }),
        },
    )
    .await
}
