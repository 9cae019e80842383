//! What a verify finds stays known: the copies of points it found damaged
//! are recorded in the catalog (`points list` and the portal show them,
//! restores try them last), and the `damage` probe of each datastore
//! (`watch::probes`) fails while it holds any, which the built-in
//! `point-damaged` rule turns into an alert. A full verify that finds a copy intact again (repaired)
//! clears it.

use std::sync::Arc;

use chrono::Utc;
use standby_store::VerifyReport;
use standby_types::watch::{Event, Labels, Severity};

use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::JobProgress;

/// Verify datastore `name` (all of it, or a `sample` fraction chosen by
/// `seed`) and record what it found.
pub async fn verify(
    ctl: &Arc<Controller>,
    name: &str,
    sample: Option<f64>,
    seed: u64,
    progress: Arc<JobProgress>,
) -> Result<VerifyReport, EngineError> {
    let report = ctl
        .store_handle(name)?
        .verify(sample, seed, progress)
        .await?;
    record(ctl, name, &report).await?;
    Ok(report)
}

/// Record a verify's findings in datastore `name`: each problem of a point
/// marks that point's copy there damaged; a full verify clears the copies
/// it found intact. New damage is an event.
pub async fn record(
    ctl: &Controller,
    name: &str,
    report: &VerifyReport,
) -> Result<(), EngineError> {
    let mut found: Vec<(String, String)> = Vec::new();
    for p in &report.problems {
        let Some(point) = &p.point else { continue };
        let point = point.to_string();
        match found.iter_mut().find(|(id, _)| *id == point) {
            Some((_, reason)) => {
                if reason.len() < 2000 {
                    reason.push_str("; ");
                    reason.push_str(&p.to_string());
                }
            }
            None => found.push((point, p.to_string())),
        }
    }
    let before: Vec<String> = ctl
        .repo
        .damaged_copies()
        .await?
        .into_iter()
        .filter(|d| d.datastore == name)
        .map(|d| d.point)
        .collect();
    ctl.repo
        .set_damaged(name, &found, report.sample_fraction.is_none())
        .await?;
    for (point, reason) in found.iter().filter(|(p, _)| !before.contains(p)) {
        tracing::error!(datastore = name, point, "verify: damaged copy: {reason}");
        let mut labels = Labels::new();
        labels.insert("datastore".into(), name.to_string());
        labels.insert("point".into(), point.clone());
        if let Some(vm) = point.split_once('@').map(|(vm, _)| vm) {
            labels.insert("vm".into(), vm.to_string());
        }
        ctl.watch.emit(Event {
            id: 0,
            at: Utc::now(),
            source: "controller".into(),
            kind: "point.damaged".into(),
            severity: Severity::Error,
            labels,
            vantage: "controller".into(),
            message: format!("point {point}: its copy in datastore {name} is damaged: {reason}"),
        });
    }
    Ok(())
}

/// How often the schedule looks for a datastore whose verify is due, at
/// most (a shorter `verify_every` looks as often as that).
const SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_secs(30);

/// The verify schedule (on the leader): each datastore with a
/// `verify_every` gets a verify job of its due slice every `verify_every`
/// (the first one an interval after the schedule first sees it), so every
/// chunk is re-read within `verify_cycle`; what it finds is recorded.
pub async fn run_schedule(ctl: Arc<Controller>) {
    let shortest = ctl
        .cfg()
        .datastores
        .values()
        .map(|d| d.verify_every)
        .filter(|e| !e.is_zero())
        .min()
        .unwrap_or(SCHEDULE_TICK);
    let mut tick =
        tokio::time::interval(shortest.clamp(std::time::Duration::from_secs(1), SCHEDULE_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = schedule_once(&ctl).await {
            tracing::warn!("verify schedule: {e}");
        }
    }
}

async fn schedule_once(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    let now = Utc::now();
    let last: std::collections::HashMap<String, chrono::DateTime<Utc>> =
        ctl.repo.verify_runs().await?.into_iter().collect();
    for (name, d) in &ctl.cfg().datastores {
        let Some((slice, slices)) = d.verify_slice(now.timestamp().max(0) as u64) else {
            continue;
        };
        let every = chrono::Duration::from_std(d.verify_every).unwrap_or(chrono::Duration::MAX);
        match last.get(name) {
            // First seen: the first verify one interval from now.
            None => {
                ctl.repo.verify_ran(name, now, slice, slices, 0).await?;
                continue;
            }
            Some(t) if now - *t < every => continue,
            Some(_) => {}
        }
        // Recorded first: a verify that fails or outlives the controller
        // is not started again at once.
        ctl.repo.verify_ran(name, now, slice, slices, 0).await?;
        let ds = name.clone();
        crate::jobs::spawn_job(ctl, "verify", name, move |ctl, p| async move {
            p.stage(
                format!("scheduled verify of {ds}: slice {} of {slices}", slice + 1),
                0,
            );
            let report = ctl
                .store_handle(&ds)?
                .verify_slice(slice, slices, p)
                .await?;
            record(&ctl, &ds, &report).await?;
            ctl.repo
                .verify_ran(&ds, now, slice, slices, report.problems.len() as u64)
                .await?;
            let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
            if !problems.is_empty() {
                return Err(EngineError::Conflict(format!(
                    "verify of {ds} (slice {} of {slices}) found {} problem(s): {}",
                    slice + 1,
                    problems.len(),
                    problems.join("; ")
                )));
            }
            Ok(serde_json::json!({
                "slice": slice,
                "slices": slices,
                "chunks_checked": report.chunks_checked,
                "bytes_checked": report.bytes_checked,
                "points_checked": report.points_checked,
            }))
        })
        .await?;
    }
    Ok(())
}

/// After a copy from `source` to `target`: the copies in `target` a verify
/// found damaged, whose point `source` holds and is not known damaged
/// there, are repaired from it (their damaged chunks re-sent, the same
/// ids) and marked whole again; what could not be repaired stays marked,
/// with the reason. Only between datastores the controller opens itself:
/// a copy between two agents' stores leaves the damage recorded.
pub async fn repair_after_copy(
    ctl: &Arc<Controller>,
    source: &str,
    target: &str,
) -> Result<Option<standby_store::RepairReport>, EngineError> {
    let damaged = ctl.repo.damaged_copies().await?;
    let bad_at_source: Vec<&str> = damaged
        .iter()
        .filter(|d| d.datastore == source)
        .map(|d| d.point.as_str())
        .collect();
    let mut points = Vec::new();
    for d in damaged.iter().filter(|d| d.datastore == target) {
        if bad_at_source.contains(&d.point.as_str()) {
            continue;
        }
        let Ok(rec) = ctl.repo.point(&d.point).await else {
            continue;
        };
        if rec.copies.iter().any(|c| c == source)
            && let Ok(p) = d.point.parse::<standby_store::PointId>()
        {
            points.push(p);
        }
    }
    if points.is_empty() {
        return Ok(None);
    }
    let (src, dst) = (ctl.store_handle(source)?, ctl.store_handle(target)?);
    let (Some(src), Some(dst)) = (src.here().cloned(), dst.here().cloned()) else {
        tracing::warn!(
            source,
            target,
            "damaged copies in {target} are not repaired from {source}: one of them is served by an agent"
        );
        return Ok(None);
    };
    let report = tokio::task::spawn_blocking(move || dst.repair_from(&src, &points, &()))
        .await
        .map_err(|e| EngineError::Internal(format!("repair: {e}")))??;
    ctl.repo.clear_damaged(target, &report.repaired).await?;
    let still: Vec<(String, String)> = report
        .unrepaired
        .iter()
        .map(|(p, why)| (p.clone(), format!("not repaired from {source}: {why}")))
        .collect();
    ctl.repo.set_damaged(target, &still, false).await?;
    for point in &report.repaired {
        tracing::info!(
            datastore = target,
            point,
            from = source,
            "damaged copy repaired"
        );
        let mut labels = Labels::new();
        labels.insert("datastore".into(), target.to_string());
        labels.insert("point".into(), point.clone());
        ctl.watch.emit(Event {
            id: 0,
            at: Utc::now(),
            source: "controller".into(),
            kind: "point.repaired".into(),
            severity: Severity::Info,
            labels,
            vantage: "controller".into(),
            message: format!(
                "point {point}: its copy in datastore {target} is whole again, repaired from {source} ({} chunks re-sent)",
                report.chunks_repaired
            ),
        });
    }
    Ok(Some(report))
}
