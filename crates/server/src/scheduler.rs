//! The protection scheduler: runs each group when its persisted `next_run`
//! is due, so a controller restart keeps the schedule (a run missed while
//! the controller was down happens once at start, not once per miss).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::controller::Controller;
use crate::error::ServerError;
use crate::jobs::spawn_job;
use crate::protect;

struct GroupRun(Arc<Controller>, String);

impl Drop for GroupRun {
    fn drop(&mut self) {
        self.0.end_group(&self.1);
    }
}

/// Start a protection run of `group` as a job, unless one is running.
pub async fn start_group_run(ctl: &Arc<Controller>, group: &str) -> Result<i64, ServerError> {
    if !ctl.cfg.groups.contains_key(group) {
        return Err(ServerError::not_found("group", group));
    }
    if !ctl.try_begin_group(group) {
        return Err(ServerError::Conflict(format!(
            "group {group} is already being protected"
        )));
    }
    let g = group.to_string();
    let res = spawn_job(ctl, "protect", group, move |ctl, progress| async move {
        // Ends the group's run however the work ends, panics included.
        let _running = GroupRun(ctl.clone(), g.clone());
        let at = Utc::now();
        let out = protect::run_group(ctl.clone(), g.clone(), progress).await;
        let status = if out.is_ok() { "succeeded" } else { "failed" };
        if let Err(e) = ctl.repo.record_group_run(&g, at, status).await {
            tracing::warn!(group = %g, "unable to record run: {e}");
        }
        out
    })
    .await;
    if res.is_err() {
        ctl.end_group(group);
    }
    res
}

pub async fn run(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = tick_once(&ctl).await {
            tracing::warn!("scheduler: {e}");
        }
    }
}

async fn tick_once(ctl: &Arc<Controller>) -> Result<(), ServerError> {
    let now = Utc::now();
    for rec in ctl.repo.groups().await? {
        let Some(g) = ctl.cfg.groups.get(&rec.name) else {
            continue;
        };
        match rec.next_run {
            None => {
                let next = g.schedule.next_after(now);
                ctl.repo.set_group_schedule(&rec.name, next).await?;
            }
            Some(due) if due <= now => {
                let next = g.schedule.next_after(now);
                ctl.repo.set_group_schedule(&rec.name, next).await?;
                match start_group_run(ctl, &rec.name).await {
                    Ok(job) => {
                        tracing::info!(group = %rec.name, job, "scheduled protection started")
                    }
                    Err(ServerError::Conflict(m)) => {
                        tracing::info!(group = %rec.name, "skipped: {m}")
                    }
                    Err(e) => tracing::warn!(group = %rec.name, "unable to start protection: {e}"),
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}
