//! `point.create`, `point.latest` and `point.restore`.

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use standby_hv::VmState;
use standby_types::api::RestoreRequest;

use super::context::ActionCtx;
use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::JobProgress;

pub(super) async fn point_create(ctx: &ActionCtx) -> Result<Value, EngineError> {
    if !ctx.recorded.is_null() {
        return Ok(ctx.recorded.clone());
    }
    let ctl = &ctx.ctl;
    let (group, members) = match (ctx.opt_str("group")?, ctx.opt_str("vm")?) {
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
            points.push(
                json!({ "vm": vm, "point": p.id, "datastore": p.copies.first(), "reused": true }),
            );
            continue;
        }
        points.push(crate::protect::protect_vm(ctl, &group, vm, progress.clone()).await?);
    }
    let out = json!({ "group": group, "points": points });
    ctx.record(out.clone()).await?;
    Ok(out)
}

/// The newest point of `vm` with a readable manifest, in datastores at
/// `site` (all when None).
pub async fn point_latest(
    ctl: &Arc<Controller>,
    vm: &str,
    site: Option<&str>,
) -> Result<Value, EngineError> {
    let (m, ds) = crate::restore::newest_readable(ctl, vm, site).await?;
    let age = (Utc::now() - m.time).num_milliseconds() as f64 / 1000.0;
    Ok(json!({
        "point": m.id.to_string(),
        "time": m.time,
        "age_seconds": age,
        "datastore": ds,
    }))
}

pub(super) async fn point_restore(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let vm = ctx.str("vm")?;
    let site = ctx.str("site")?;
    let start = ctx.opt_bool("start")?.unwrap_or(false);
    // Recorded result: the restore finished before a crash.
    if ctx.recorded["result"].is_object() {
        return Ok(ctx.recorded["result"].clone());
    }
    // Recorded intent: which point; if the VM is already active at the
    // site (and running, when asked to start), the restore was done.
    if let Some(point) = ctx.recorded["point"].as_str() {
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
            return Ok(json!({
                "vm": vm,
                "point": point,
                "site": site,
                "host": rec.active_host,
                "seconds": (Utc::now() - ctx.started_at).num_milliseconds() as f64 / 1000.0,
                "bytes": Value::Null,
                "data_age_seconds": (ctx.started_at - p.time).num_milliseconds() as f64 / 1000.0,
                "point_time_epoch": crate::runbooks::epoch(p.time),
                "at_epoch": crate::runbooks::epoch(Utc::now()),
                "resumed": true,
            }));
        }
    }
    let point = match ctx.opt_str("point")? {
        Some(p) => p,
        None => point_latest(ctl, &vm, None).await?["point"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let p = ctl.repo.point(&point).await?;
    if p.vm != vm {
        return Err(EngineError::BadRequest(format!(
            "point {point} is of vm {}, not {vm}",
            p.vm
        )));
    }
    ctx.record(json!({ "point": point })).await?;
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
    let out = json!({
        "vm": vm,
        "point": point,
        "site": site,
        "host": r["host"],
        "datastore": r["datastore"],
        "seconds": r["seconds"],
        "bytes": r["bytes"],
        "started": r["started"],
        "data_age_seconds": (now - p.time).num_milliseconds() as f64 / 1000.0,
        "point_time_epoch": crate::runbooks::epoch(p.time),
        "at_epoch": crate::runbooks::epoch(now),
    });
    ctx.record(json!({ "point": point, "result": out })).await?;
    Ok(out)
}
