//! Protection runs of a group on demand (`POST /api/v1/groups/NAME/run`).
//! The schedule is the built-in `protect` runbook's trigger
//! (`schedule: {groups: true}`, see `runbooks::triggers`): each group's
//! persisted `next_run` stays the source of truth, so a restart keeps it
//! (a run missed while the controller was down happens once at start).

use std::sync::Arc;

use chrono::Utc;

use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::spawn_job;
use crate::protect;

struct GroupRun(Arc<Controller>, String);

impl Drop for GroupRun {
    fn drop(&mut self) {
        self.0.end_group(&self.1);
    }
}

/// Start a protection run of `group` as a job, unless one is running.
pub async fn start_group_run(ctl: &Arc<Controller>, group: &str) -> Result<i64, EngineError> {
    if !ctl.cfg.groups.contains_key(group) {
        return Err(EngineError::not_found("group", group));
    }
    if !ctl.try_begin_group(group) {
        return Err(EngineError::Conflict(format!(
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
