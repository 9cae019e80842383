//! Restore a point at a site: pick the nearest intact copy, refuse while
//! the VM may be running elsewhere, write its disks, move its placement and
//! start it.

use std::sync::Arc;
use std::time::Instant;

use standby_store::PointId;
use standby_types::api::RestoreRequest;
use standby_types::outcome::Restored;

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};
use crate::jobs::JobProgress;
use standby_agent::StoreRef;

/// Checks that can fail before a job is created, so the caller gets a
/// clear error at once.
pub async fn check(ctl: &Controller, req: &RestoreRequest) -> Result<(), EngineError> {
    let point = ctl.repo.point(&req.point).await?;
    if !ctl.cfg().sites.contains_key(&req.site) {
        return Err(EngineError::not_found("site", &req.site));
    }
    if !ctl.cfg().vms.contains_key(&point.vm) {
        return Err(EngineError::not_found("vm", &point.vm));
    }
    let host = target_host(ctl, req)?;
    refuse_if_running(ctl, req, &point.vm, &host).await
}

/// Never two active copies: the VM must not run where it is active now,
/// nor at its home, unless that site is fenced; a VM is not started at a
/// fenced site (see [`crate::vms::ensure_single_copy`]).
async fn refuse_if_running(
    ctl: &Controller,
    req: &RestoreRequest,
    vm: &str,
    host: &str,
) -> Result<(), EngineError> {
    if req.start {
        crate::vms::refuse_fenced(ctl, &req.site).await?;
    }
    let current = ctl.repo.vm(vm).await?;
    crate::vms::ensure_single_copy(ctl, &current, host, true).await
}

fn target_host(ctl: &Controller, req: &RestoreRequest) -> Result<String, EngineError> {
    match &req.host {
        Some(h) => {
            let live = ctl.cfg();
            let host = live
                .hosts
                .get(h)
                .ok_or_else(|| EngineError::not_found("host", h))?;
            if host.site != req.site {
                return Err(EngineError::BadRequest(format!(
                    "host {h} is at site {}, not {}",
                    host.site, req.site
                )));
            }
            Ok(h.clone())
        }
        None => ctl
            .cfg()
            .first_host_of_site(&req.site)
            .map(str::to_string)
            .ok_or_else(|| EngineError::BadRequest(format!("site {} has no host", req.site))),
    }
}

pub async fn run(
    ctl: Arc<Controller>,
    req: RestoreRequest,
    progress: Arc<JobProgress>,
) -> Result<Restored, EngineError> {
    let started = Instant::now();
    let point = ctl.repo.point(&req.point).await?;
    let vm = point.vm.clone();
    let host = target_host(&ctl, &req)?;
    let _guard = ctl.lock_vm(&vm).await;

    // Checked again under the VM lock: the state may have changed.
    refuse_if_running(&ctl, &req, &vm, &host).await?;

    let candidates: Vec<String> = match &req.from {
        Some(ds) => vec![ds.clone()],
        None => {
            // Nearest first: copies at the target site, then the rest.
            let (mut near, far): (Vec<_>, Vec<_>) = point.copies.iter().cloned().partition(|d| {
                ctl.cfg()
                    .datastores
                    .get(d)
                    .is_some_and(|c| c.site == req.site)
            });
            near.extend(far);
            // Copies a verify found damaged last: an intact one first.
            let damaged: Vec<String> = ctl
                .repo
                .damaged_copies()
                .await?
                .into_iter()
                .filter(|d| d.point == req.point)
                .map(|d| d.datastore)
                .collect();
            let (mut intact, bad): (Vec<_>, Vec<_>) =
                near.into_iter().partition(|d| !damaged.contains(d));
            intact.extend(bad);
            intact
        }
    };
    let pid: PointId = req
        .point
        .parse()
        .map_err(|e| EngineError::BadRequest(format!("bad point id '{}': {e}", req.point)))?;
    let agent = ctl.agent(&host)?;
    let spec = agent.spec(&ctl.cfg(), &vm)?;
    // The disks at the target are not the VM's live ones unless it is
    // active there: then a failed restore must leave them whole (beside,
    // renamed over); else only what differs is written onto them.
    let onto = match ctl.repo.vm(&vm).await?.active_host == host {
        true => standby_agent::Onto::Fresh,
        false => standby_agent::Onto::Delta,
    };
    // Nearest copy first; a copy that is missing the point or fails to
    // restore (a corrupt chunk) is skipped for the next one.
    let mut tried = Vec::new();
    let mut restored = None;
    for ds in candidates {
        // Only a copy the target host's agent reads itself: its own
        // site's store, an object store, a store the controller shares.
        if !ctl.host_reaches(&host, &ds) {
            tried.push(format!(
                "{ds}: served by agent {}, which host {host} is not run by",
                ctl.cfg()
                    .datastores
                    .get(&ds)
                    .and_then(|d| d.agent.as_deref())
                    .unwrap_or("?")
            ));
            continue;
        }
        let live = ctl.cfg();
        let (handle, config) = match (ctl.store_handle(&ds), live.datastores.get(&ds)) {
            (Ok(h), Some(config)) => (h, config),
            (Err(e), _) => {
                tried.push(format!("{ds}: {}", error_chain(&e)));
                continue;
            }
            (Ok(_), None) => {
                tried.push(format!("{ds}: not configured"));
                continue;
            }
        };
        match handle.has_point(&pid).await {
            Ok(true) => {}
            Ok(false) => {
                tried.push(format!("{ds}: point missing"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{ds}: {}", error_chain(&e)));
                continue;
            }
        }
        let target = StoreRef {
            name: &ds,
            config,
            store: handle.here().cloned(),
        };
        match agent
            .restore_point(&spec, &target, &pid, onto, progress.clone())
            .await
        {
            Ok(done) => {
                restored = Some((ds, done));
                break;
            }
            Err(e) if e.is_datastore() => {
                tracing::warn!(point = %pid, datastore = %ds, "restore from this copy failed: {}", error_chain(&e));
                tried.push(format!("{ds}: {}", error_chain(&e)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some((ds, done)) = restored else {
        return Err(EngineError::PointUnreadable {
            point: req.point,
            tried,
        });
    };
    let restored_secs = started.elapsed().as_secs_f64();
    ctl.repo.set_vm_placement(&vm, &req.site, &host).await?;
    let mut started_vm = false;
    if req.start {
        progress.stage(format!("{vm}: starting at {host}"), 0);
        agent.start(&spec).await?;
        started_vm = true;
    }
    Ok(Restored {
        point: req.point,
        vm,
        site: req.site,
        host,
        datastore: ds,
        bytes: done.bytes,
        restore_seconds: restored_secs,
        seconds: started.elapsed().as_secs_f64(),
        started: started_vm,
        skipped: tried,
        written: done.written,
        read: done.read,
        mode: if done.mode.is_empty() {
            "full".into()
        } else {
            done.mode
        },
    })
}

/// The newest point of `vm` whose manifest can be read, in a datastore at
/// `site` (any site if none), and that datastore. Datastores that cannot
/// be opened or read are skipped (and logged).
pub async fn newest_readable(
    ctl: &Controller,
    vm: &str,
    site: Option<&str>,
) -> Result<(standby_store::Manifest, String), EngineError> {
    let mut best: Option<(standby_store::Manifest, String)> = None;
    for (name, d) in &ctl.cfg().datastores {
        if site.is_some_and(|s| s != d.site) {
            continue;
        }
        let handle = match ctl.store_handle(name) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(datastore = %name, "newest point: skipped: {e}");
                continue;
            }
        };
        match handle.latest_point(vm).await {
            Ok(Some(m)) => {
                if best.as_ref().is_none_or(|(b, _)| m.time > b.time) {
                    best = Some((m, name.clone()));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(datastore = %name, "newest point: skipped: {e}"),
        }
    }
    best.ok_or_else(|| {
        EngineError::Conflict(format!(
            "vm {vm} has no readable point{}",
            site.map(|s| format!(" at site {s}")).unwrap_or_default()
        ))
    })
}
