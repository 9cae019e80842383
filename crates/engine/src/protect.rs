//! Protection of a VM: a point written to its group's datastore at the
//! VM's site, synced to the group's other datastores, then pruned by the
//! group's retention. A run of a group is a job of the `protect` runbook
//! (`point.create` of every member), on the group's schedule or on request
//! (`runbooks::triggers::protect_group`), one at a time under the group's
//! lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use standby_types::model::PointRecord;
use standby_types::outcome::{PointSynced, PointTaken, ReplicaApplied};

use crate::controller::{Controller, point_record};
use crate::error::{EngineError, error_chain};
use crate::jobs::JobProgress;
use standby_agent::StoreRef;

/// Take a point of `vm` for `group`, sync and prune it; what it cost.
/// `request` (a step's idempotency key) is written into the point's
/// labels, so the step that asked for it finds it again after a crash
/// (see [`requested_point`]) by what it is, not by its clock.
pub async fn protect_vm(
    ctl: &Arc<Controller>,
    group: &str,
    vm: &str,
    request: Option<&str>,
    progress: Arc<JobProgress>,
) -> Result<PointTaken, EngineError> {
    let g = &ctl.cfg().groups[group];
    // The VM lock covers reading the VM; copies and pruning run after it
    // is released, so a failover restore never waits behind an upload.
    let guard = ctl.lock_vm(vm).await;
    let rec = ctl.repo.vm(vm).await?;
    let agent = ctl.agent(&rec.active_host)?;
    let spec = agent.spec(&ctl.cfg(), vm)?;
    // Write where the VM runs (a store its host reaches); copy elsewhere
    // afterwards.
    let reachable: Vec<&String> = g
        .datastores
        .iter()
        .filter(|d| ctl.host_reaches(&rec.active_host, d))
        .collect();
    let source = reachable
        .iter()
        .find(|d| ctl.cfg().datastores[d.as_str()].site == rec.active_site)
        .or(reachable.first())
        .map(|d| d.to_string())
        .ok_or_else(|| {
            EngineError::Conflict(format!(
                "host {} of vm {vm} reaches none of group {group}'s datastores ({}): each is served by another site's agent",
                rec.active_host,
                g.datastores.join(", ")
            ))
        })?;
    let source_handle = ctl.store_handle(&source)?;
    let target = StoreRef {
        name: &source,
        config: &ctl.cfg().datastores[&source],
        store: source_handle.here().cloned(),
    };
    let started = Instant::now();
    let mut labels = BTreeMap::from([("group".to_string(), group.to_string())]);
    if let Some(r) = request {
        labels.insert(REQUEST_LABEL.to_string(), r.to_string());
    }
    let vm_config = serde_json::to_value(&ctl.cfg().vms[vm]).unwrap_or_default();
    let (manifest, stats) = agent
        .take_point(
            &spec,
            &target,
            g.chunk_size.0 as u32,
            labels,
            vm_config,
            progress.clone(),
        )
        .await?;
    let point_secs = started.elapsed().as_secs_f64();
    let id = manifest.id.to_string();
    ctl.repo
        .insert_point(&PointRecord {
            bytes_read: stats.bytes_read,
            bytes_new: stats.bytes_new,
            ..point_record(&manifest, &source)
        })
        .await?;
    drop(guard);
    tracing::info!(vm, point = %id, datastore = %source, bytes_read = stats.bytes_read, bytes_new = stats.bytes_new, "point taken");
    crate::crash::at(|| "protect:after-point".into());

    let AfterPoint {
        synced,
        replica,
        pruned,
        errors: sync_errors,
    } = copy_and_prune(ctl, group, vm, &manifest.id, &source, &[], progress).await;
    if !sync_errors.is_empty() {
        return Err(EngineError::Internal(format!(
            "point {id} taken in {source}, but: {}",
            sync_errors.join("; ")
        )));
    }
    Ok(PointTaken {
        vm: vm.to_string(),
        point: id,
        datastore: source,
        seconds: point_secs,
        size: stats.size,
        bytes_read: stats.bytes_read,
        bytes_new: stats.bytes_new,
        chunks: stats.chunks,
        chunks_new: stats.chunks_new,
        synced,
        pruned,
        reused: false,
        replica,
        snapshot: manifest.labels.get("snapshot").cloned(),
    })
}

/// What [`copy_and_prune`] did.
pub struct AfterPoint {
    pub synced: Vec<PointSynced>,
    pub replica: Option<ReplicaApplied>,
    /// Points retention removed.
    pub pruned: usize,
    /// What failed, one message each.
    pub errors: Vec<String>,
}

/// What follows a point of `vm` in `source`: its copies to the group's
/// other datastores (those in `present` hold it already), the warm
/// replica, retention in every datastore of the group. A protection run
/// resumed after a crash that finds its point already taken runs this
/// too, so the point still reaches every datastore.
pub async fn copy_and_prune(
    ctl: &Arc<Controller>,
    group: &str,
    vm: &str,
    point: &standby_store::PointId,
    source: &str,
    present: &[String],
    progress: Arc<JobProgress>,
) -> AfterPoint {
    let g = &ctl.cfg().groups[group];
    let id = point.to_string();
    let source_handle = match ctl.store_handle(source) {
        Ok(h) => h,
        Err(e) => {
            return AfterPoint {
                synced: Vec::new(),
                replica: None,
                pruned: 0,
                errors: vec![error_chain(&e)],
            };
        }
    };
    let mut synced = Vec::new();
    let mut sync_errors = Vec::new();
    for target in g
        .datastores
        .iter()
        .filter(|d| *d != source && !present.contains(d))
    {
        progress.stage(format!("{vm}: syncing {id} to {target}"), 0);
        let copy_started = Instant::now();
        let res = async {
            let dst = ctl.store_handle(target)?;
            let done = standby_agent::copy_point(
                &source_handle,
                &dst,
                point,
                ctl.cfg().bandwidth_of(&source_handle.config().site),
                progress.clone(),
            )
            .await?;
            ctl.repo.add_point_copy(&id, target).await?;
            // Made by the source's agent, else by the destination's.
            let by = source_handle.agent().or(dst.agent()).map(str::to_string);
            Ok::<_, EngineError>((done, by))
        }
        .await;
        match res {
            Ok((done, by_agent)) => {
                // The copy's source is intact where the target is damaged:
                // the damaged chunks are re-sent.
                let repaired = match crate::integrity::repair_after_copy(ctl, source, target).await
                {
                    Ok(r) => r.map(|r| r.repaired).unwrap_or_default(),
                    Err(e) => {
                        sync_errors.push(format!("repair of {target}: {}", error_chain(&e)));
                        Vec::new()
                    }
                };
                synced.push(PointSynced {
                    datastore: target.clone(),
                    chunks_copied: done.stats.chunks_copied,
                    bytes_copied: done.stats.bytes_copied,
                    by_agent,
                    bytes_sent: done.sent.wire_bytes,
                    resent: done.sent.resent,
                    seconds: copy_started.elapsed().as_secs_f64(),
                    repaired,
                })
            }
            Err(e) => sync_errors.push(format!("sync to {target}: {}", error_chain(&e))),
        }
    }

    crate::crash::at(|| "protect:after-copy".into());
    // The warm replica, from a copy its host reads (the one just made at
    // its site, usually).
    let copies: Vec<String> = std::iter::once(source.to_string())
        .chain(synced.iter().map(|s| s.datastore.clone()))
        .collect();
    let replica = match crate::replica::apply(ctl, group, vm, &id, &copies, progress.clone()).await
    {
        Ok(r) => r,
        Err(e) => {
            sync_errors.push(format!("warm replica: {}", error_chain(&e)));
            None
        }
    };

    let mut pruned = 0;
    if !g.retention.keeps_all() {
        for ds in &g.datastores {
            match prune_vm(ctl, ds, vm, g.retention, false).await {
                Ok(report) => pruned += report.removed.len(),
                Err(e) => sync_errors.push(format!("prune {ds}: {}", error_chain(&e))),
            }
        }
    }
    AfterPoint {
        synced,
        replica,
        pruned,
        errors: sync_errors,
    }
}

/// The label of a point that names the request (a runbook step's
/// idempotency key) that took it.
pub const REQUEST_LABEL: &str = "request";

/// The point of `vm` that request `request` took, if it is the newest one
/// in one of `group`'s datastores (where a step that crashed after taking
/// it left it). Never a point by its time: an agent's clock may be ahead.
pub async fn requested_point(
    ctl: &Controller,
    group: &str,
    vm: &str,
    request: &str,
) -> Result<Option<PointRecord>, EngineError> {
    for ds in &ctl.cfg().groups[group].datastores {
        let Ok(handle) = ctl.store_handle(ds) else {
            continue;
        };
        let newest = match handle.latest_point(vm).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(datastore = %ds, vm, "looking for the point of request {request}: {}", error_chain(&e));
                continue;
            }
        };
        if let Some(m) =
            newest.filter(|m| m.labels.get(REQUEST_LABEL).map(String::as_str) == Some(request))
        {
            return match ctl.repo.point(&m.id.to_string()).await {
                Ok(p) => Ok(Some(p)),
                // Taken, then the controller stopped before recording it.
                Err(standby_db::DbError::NotFound { .. }) => {
                    let rec = point_record(&m, ds);
                    ctl.repo.insert_point(&rec).await?;
                    Ok(Some(rec))
                }
                Err(e) => Err(e.into()),
            };
        }
    }
    Ok(None)
}

/// Apply `policy` to `vm`'s points in datastore `ds` and drop the removed
/// copies from the catalog (a point the catalog never knew is fine).
pub async fn prune_vm(
    ctl: &Controller,
    ds: &str,
    vm: &str,
    policy: standby_types::Retention,
    dry_run: bool,
) -> Result<standby_store::PruneReport, EngineError> {
    let report = ctl.store_handle(ds)?.prune(vm, policy, dry_run).await?;
    if !dry_run {
        for removed in &report.removed {
            match ctl.repo.remove_point_copy(&removed.to_string(), ds).await {
                Ok(()) | Err(standby_db::DbError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(report)
}
