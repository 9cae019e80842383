//! Warm replicas (`replica = "warm"` on a group): the DR host of each
//! member keeps a standing copy of its disks at the newest point. After a
//! point reaches a datastore the DR host reads, only the chunks that
//! changed since the replica's point are written onto it, through
//! journals (the host's [`standby_agent::Onto::Replica`]): a replica is at
//! one point or the next, never between. A failover's restore onto the
//! replica then writes only what the replica lacks, so it no longer grows
//! with the disk's size; a replica that is damaged (between two states,
//! touched) or missing is restored as usual.

use std::sync::Arc;
use std::time::Instant;

use standby_agent::{Onto, StoreRef};
use standby_store::PointId;
use standby_types::config::Replica;
use standby_types::outcome::ReplicaApplied;

use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::JobProgress;

/// The host a failover of `vm` (active at `active`) would restore it at:
/// the first host of its first DR site that is not where it runs and has
/// a host.
fn replica_host(ctl: &Controller, vm: &str, active: &str) -> Option<(String, String)> {
    let live = ctl.cfg();
    let cfg = live.vms.get(vm)?;
    cfg.dr_sites().into_iter().find_map(|s| {
        (s != active)
            .then(|| live.first_host_of_site(s))
            .flatten()
            .map(|h| (s.to_string(), h.to_string()))
    })
}

/// Bring `vm`'s warm replica to point `point`, read from one of `copies`
/// the replica's host reads. None when its group keeps no replica, or
/// the VM has no DR host to keep one at. Never while the VM is active (or
/// running) at that host: its disks there are then the live ones.
pub async fn apply(
    ctl: &Arc<Controller>,
    group: &str,
    vm: &str,
    point: &str,
    copies: &[String],
    progress: Arc<JobProgress>,
) -> Result<Option<ReplicaApplied>, EngineError> {
    if ctl.cfg().groups.get(group).map(|g| g.replica) != Some(Replica::Warm) {
        return Ok(None);
    }
    let started = Instant::now();
    // Under the VM's lock: a failover's restore waits for the replica
    // (and the other way round).
    let _guard = ctl.lock_vm(vm).await;
    let rec = ctl.repo.vm(vm).await?;
    let Some((site, host)) = replica_host(ctl, vm, &rec.active_site) else {
        return Ok(None);
    };
    if rec.active_host == host || ctl.is_fenced(&site).await? {
        return Ok(None);
    }
    let agent = ctl.agent(&host)?;
    if agent.status(vm).await?.is_alive() {
        return Err(EngineError::Conflict(format!(
            "vm {vm} runs at {host}, where its replica would be: replica not updated"
        )));
    }
    // Nearest first: a copy at the replica's site.
    let mut near: Vec<&String> = copies
        .iter()
        .filter(|d| ctl.host_reaches(&host, d))
        .collect();
    near.sort_by_key(|d| {
        ctl.cfg()
            .datastores
            .get(d.as_str())
            .is_none_or(|c| c.site != site)
    });
    let Some(ds) = near.first() else {
        return Err(EngineError::Conflict(format!(
            "host {host} reads none of the copies of point {point} ({}): replica of vm {vm} not updated",
            copies.join(", ")
        )));
    };
    let pid: PointId = point
        .parse()
        .map_err(|e| EngineError::Internal(format!("point id {point}: {e}")))?;
    let handle = ctl.store_handle(ds)?;
    let target = StoreRef {
        name: ds,
        config: &ctl.cfg().datastores[ds.as_str()],
        store: handle.here().cloned(),
    };
    let spec = agent.spec(&ctl.cfg(), vm)?;
    progress.stage(format!("{vm}: warm replica at {host} to {point}"), 0);
    let done = agent
        .restore_point(&spec, &target, &pid, Onto::Replica, progress)
        .await?;
    let out = ReplicaApplied {
        site,
        host,
        datastore: ds.to_string(),
        mode: done.mode,
        written: done.written,
        read: done.read,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(vm, point, host = %out.host, mode = %out.mode, written = out.written, "warm replica updated");
    Ok(Some(out))
}
