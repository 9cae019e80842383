//! `point.create`, `point.latest` and `point.restore`.

use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use standby_hv::VmState;
use standby_runbook::catalog::{PointCreate, PointLatest, PointRestore};
use standby_runbook::scalar::Text;
use standby_types::api::RestoreRequest;
use standby_types::outcome::{PointFound, PointRestored, PointTaken, PointsCreated};

use super::Perform;
use super::context::ActionCtx;
use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::JobProgress;

impl Perform for PointCreate {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointsCreated, EngineError> {
        point_create(self, ctx).await
    }
}

async fn point_create(input: PointCreate, ctx: &ActionCtx) -> Result<PointsCreated, EngineError> {
    if let Some(done) = ctx.recorded::<PointsCreated>() {
        return Ok(done);
    }
    let ctl = &ctx.ctl;
    let (group, members) = match (input.group.map(String::from), input.vm.map(String::from)) {
        (Some(g), None) => {
            let grp = ctl
                .cfg
                .groups
                .get(&g)
                .ok_or_else(|| EngineError::not_found("group", &g))?;
            (g, grp.members.clone())
        }
        (None, Some(vm)) => {
            let g = ctl
                .cfg
                .groups_of(&vm)
                .first()
                .map(|g| g.to_string())
                .ok_or_else(|| {
                    EngineError::BadRequest(format!("vm {vm} is in no protection group"))
                })?;
            (g, vec![vm])
        }
        _ => {
            return Err(EngineError::BadRequest(
                "give exactly one of 'group' and 'vm'".into(),
            ));
        }
    };
    let progress = JobProgress::live(ctl, ctx.job);
    let mut points = Vec::new();
    for vm in &members {
        // A point of this VM taken since the step started is this step's
        // (the controller stopped before recording it).
        let taken = ctl
            .repo
            .points(Some(vm))
            .await?
            .into_iter()
            .rev()
            .find(|p| p.time >= ctx.started_at);
        if let Some(p) = taken {
            tracing::info!(vm, point = %p.id, "point.create: point already taken by this step");
            points.push(PointTaken {
                vm: vm.clone(),
                datastore: p.copies.first().cloned().unwrap_or_default(),
                point: p.id,
                seconds: 0.0,
                size: p.size,
                bytes_read: p.bytes_read,
                bytes_new: p.bytes_new,
                chunks: 0,
                chunks_new: 0,
                synced: Vec::new(),
                pruned: 0,
                reused: true,
            });
            continue;
        }
        points.push(crate::protect::protect_vm(ctl, &group, vm, progress.clone()).await?);
    }
    let out = PointsCreated { group, points };
    ctx.record(&out).await?;
    Ok(out)
}

impl Perform for PointLatest {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointFound, EngineError> {
        point_latest(
            &ctx.ctl,
            self.vm.as_str(),
            self.site.as_ref().map(Text::as_str),
        )
        .await
    }
}

/// The newest point of `vm` with a readable manifest, in datastores at
/// `site` (all when None).
pub async fn point_latest(
    ctl: &Arc<Controller>,
    vm: &str,
    site: Option<&str>,
) -> Result<PointFound, EngineError> {
    let (m, ds) = crate::restore::newest_readable(ctl, vm, site).await?;
    let age = (Utc::now() - m.time).num_milliseconds() as f64 / 1000.0;
    Ok(PointFound {
        point: m.id.to_string(),
        time: m.time,
        age_seconds: age,
        datastore: ds,
    })
}

/// What `point.restore` records while it runs: the point it restores, then
/// its result.
#[derive(Debug, Serialize, Deserialize)]
struct RestoreRecord {
    point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<PointRestored>,
}

impl Perform for PointRestore {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointRestored, EngineError> {
        point_restore(self, ctx).await
    }
}

async fn point_restore(input: PointRestore, ctx: &ActionCtx) -> Result<PointRestored, EngineError> {
    let ctl = &ctx.ctl;
    let vm = String::from(input.vm);
    let site = String::from(input.site);
    let start = input.start.is_some_and(|s| s.0);
    let recorded = ctx.recorded::<RestoreRecord>();
    // Recorded result: the restore finished before a crash.
    if let Some(RestoreRecord {
        result: Some(done), ..
    }) = recorded
    {
        return Ok(done);
    }
    // Recorded intent: which point; if the VM is already active at the
    // site (and running, when asked to start), the restore was done.
    if let Some(RestoreRecord { point, .. }) = &recorded {
        let point = point.as_str();
        let rec = ctl.repo.vm(&vm).await?;
        let running = matches!(
            ctl.agent(&rec.active_host)?.status(&vm).await?.state,
            VmState::Running
        );
        if rec.active_site == site && (running || !start) {
            let p = ctl.repo.point(point).await?;
            tracing::info!(
                vm,
                point,
                "point.restore: already restored and started by this step"
            );
            return Ok(PointRestored {
                vm,
                point: point.to_string(),
                site,
                host: rec.active_host,
                datastore: None,
                seconds: (Utc::now() - ctx.started_at).num_milliseconds() as f64 / 1000.0,
                bytes: None,
                started: None,
                data_age_seconds: (ctx.started_at - p.time).num_milliseconds() as f64 / 1000.0,
                point_time_epoch: crate::runbooks::epoch(p.time),
                at_epoch: crate::runbooks::epoch(Utc::now()),
                resumed: true,
            });
        }
    }
    let point = match input.point {
        Some(p) => p.into(),
        None => point_latest(ctl, &vm, None).await?.point,
    };
    let p = ctl.repo.point(&point).await?;
    if p.vm != vm {
        return Err(EngineError::BadRequest(format!(
            "point {point} is of vm {}, not {vm}",
            p.vm
        )));
    }
    ctx.record(RestoreRecord {
        point: point.clone(),
        result: None,
    })
    .await?;
    let req = RestoreRequest {
        point: point.clone(),
        site: site.clone(),
        host: None,
        from: None,
        start,
    };
    crate::restore::check(ctl, &req).await?;
    let progress = Arc::new(JobProgress::default());
    let r = crate::restore::run(ctl.clone(), req, progress).await?;
    let now = Utc::now();
    let out = PointRestored {
        vm,
        point: point.clone(),
        site,
        host: r.host,
        datastore: Some(r.datastore),
        seconds: r.seconds,
        bytes: Some(r.bytes),
        started: Some(r.started),
        data_age_seconds: (now - p.time).num_milliseconds() as f64 / 1000.0,
        point_time_epoch: crate::runbooks::epoch(p.time),
        at_epoch: crate::runbooks::epoch(now),
        resumed: false,
    };
    ctx.record(RestoreRecord {
        point,
        result: Some(out.clone()),
    })
    .await?;
    Ok(out)
}
