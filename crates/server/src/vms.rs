//! VM lifecycle as the API and runbooks use it: start, graceful shutdown
//! and forced stop at the VM's active host, each under the VM's lock
//! (except the forced stop), and the VM's view for clients.

use std::time::Duration;

use standby_hv::VmStatus;
use standby_types::api::VmView;

use crate::controller::Controller;
use crate::error::ServerError;

/// The VM's record, live state, groups and newest point.
pub async fn view(ctl: &Controller, name: &str) -> Result<VmView, ServerError> {
    let record = ctl.repo.vm(name).await?;
    let (state, pid, since, exit) = match ctl.agent(&record.active_host)?.status(name).await {
        Ok(st) => (st.state.to_string(), st.pid, st.since, st.exit),
        Err(e) => ("unknown".to_string(), None, None, Some(e.to_string())),
    };
    let last_point = ctl.repo.points(Some(name)).await?.pop();
    Ok(VmView {
        groups: ctl
            .cfg
            .groups_of(name)
            .into_iter()
            .map(String::from)
            .collect(),
        record,
        state,
        pid,
        since,
        exit,
        last_point,
    })
}

/// Start the VM at its active host. Idempotent: a running VM stays as it
/// is. Its first start at home creates blank disks; anywhere else a
/// missing disk is an error (a VM with points never boots blank).
pub async fn start(ctl: &Controller, name: &str) -> Result<VmStatus, ServerError> {
    let _guard = ctl.lock_vm(name).await;
    let rec = ctl.repo.vm(name).await?;
    if ctl.is_fenced(&rec.active_site).await? {
        return Err(ServerError::Conflict(format!(
            "site {} is fenced: no vm starts there until it is unfenced",
            rec.active_site
        )));
    }
    let agent = ctl.agent(&rec.active_host)?;
    let spec = agent.spec(&ctl.cfg, name)?;
    let never_protected = ctl.repo.points(Some(name)).await?.is_empty();
    if rec.active_site == rec.home_site && never_protected {
        agent.provision_disks(&spec)?;
    } else if let Some(d) = spec.disks.iter().find(|d| !d.path.exists()) {
        return Err(ServerError::Conflict(format!(
            "disk '{}' of vm {name} is missing at {} ({}); restore a point there first",
            d.name,
            rec.active_host,
            d.path.display()
        )));
    }
    Ok(agent.driver.start(&spec).await?)
}

/// Graceful shutdown at the active host; `timeout` defaults to the VM's
/// configured `shutdown_timeout`.
pub async fn shutdown(
    ctl: &Controller,
    name: &str,
    timeout: Option<Duration>,
) -> Result<VmStatus, ServerError> {
    let _guard = ctl.lock_vm(name).await;
    let rec = ctl.repo.vm(name).await?;
    let timeout = timeout
        .or_else(|| ctl.cfg.vms.get(name).map(|v| v.shutdown_timeout))
        .ok_or_else(|| ServerError::not_found("vm", name))?;
    Ok(ctl
        .agent(&rec.active_host)?
        .driver
        .shutdown(name, timeout)
        .await?)
}

/// Forced stop at the active host. No VM lock: a forced stop must work
/// even while a point is read (the driver kills a frozen VM without
/// letting it run first).
pub async fn stop(ctl: &Controller, name: &str) -> Result<VmStatus, ServerError> {
    let rec = ctl.repo.vm(name).await?;
    Ok(ctl.agent(&rec.active_host)?.driver.stop(name).await?)
}
