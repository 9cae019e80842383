//! VM lifecycle as the API and runbooks use it: start, graceful shutdown
//! and forced stop at the VM's active host, each under the VM's lock
//! (except the forced stop), and the VM's view for clients.
//!
//! Never two copies ([`ensure_single_copy`]): a VM starts (or is restored)
//! at one host only when every other place it may run, its active and its
//! home host, is known not to run it: that host's agent answers that the VM
//! is stopped, or the host's site is fenced (its agents stop everything and
//! start nothing) and the fence is confirmed (`Controller::await_fenced`:
//! the agent's answer, an operator, or self-fencing under `[ha]`). An
//! agent that cannot be reached at a site that is not fenced means "may be
//! running": refused, naming the site to fence.

use std::time::Duration;

use standby_hv::VmStatus;
use standby_types::api::VmView;
use standby_types::model::{PointRecord, VmRecord};

use crate::controller::Controller;
use crate::error::EngineError;

/// The VM's record, live state, groups and newest point.
pub async fn view(ctl: &Controller, name: &str) -> Result<VmView, EngineError> {
    let record = ctl.repo.vm(name).await?;
    let last_point = ctl.repo.latest_point(name).await?;
    view_of(ctl, record, last_point).await
}

/// The views of these VMs, in their order: their newest points come from
/// one query.
pub async fn views(ctl: &Controller, records: Vec<VmRecord>) -> Result<Vec<VmView>, EngineError> {
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let mut latest: std::collections::HashMap<String, PointRecord> = ctl
        .repo
        .latest_points(&names)
        .await?
        .into_iter()
        .map(|p| (p.vm.clone(), p))
        .collect();
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let last_point = latest.remove(&record.name);
        out.push(view_of(ctl, record, last_point).await?);
    }
    Ok(out)
}

/// How old a remote host's answer a VM's view may show: the VM-state
/// probe asks every host each second (a round of a hundred hosts takes
/// longer on a busy controller), so a view seldom asks an agent. A
/// command on the VM forgets the answer: the view after it asks.
pub const VIEW_STATE_AGE: std::time::Duration = std::time::Duration::from_secs(3);

async fn view_of(
    ctl: &Controller,
    record: VmRecord,
    last_point: Option<PointRecord>,
) -> Result<VmView, EngineError> {
    let name = record.name.as_str();
    let (state, pid, since, exit) = match ctl
        .agent(&record.active_host)?
        .recent_status(name, VIEW_STATE_AGE)
        .await
    {
        Ok(st) => (st.state.to_string(), st.pid, st.since, st.exit),
        Err(e) => ("unknown".to_string(), None, None, Some(e.to_string())),
    };
    Ok(VmView {
        groups: ctl
            .cfg()
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
pub async fn start(ctl: &Controller, name: &str) -> Result<VmStatus, EngineError> {
    let _guard = ctl.lock_vm(name).await;
    let rec = ctl.repo.vm(name).await?;
    refuse_fenced(ctl, &rec.active_site).await?;
    ensure_single_copy(ctl, &rec, &rec.active_host, false).await?;
    let agent = ctl.agent(&rec.active_host)?;
    let spec = agent.spec(&ctl.cfg(), name)?;
    let never_protected = ctl.repo.latest_point(name).await?.is_none();
    if rec.active_site == rec.home_site && never_protected {
        agent.provision_disks(&spec).await?;
    } else if let Some(d) = agent.missing_disks(&spec).await?.first() {
        return Err(EngineError::Conflict(format!(
            "disk '{}' of vm {name} is missing at {} ({}); restore a point there first",
            d.name,
            rec.active_host,
            d.path.display()
        )));
    }
    Ok(agent.start(&spec).await?)
}

/// No VM starts at a fenced site.
pub(crate) async fn refuse_fenced(ctl: &Controller, site: &str) -> Result<(), EngineError> {
    if ctl.is_fenced(site).await? {
        return Err(EngineError::Conflict(format!(
            "site {site} is fenced: no vm starts there until it is unfenced (standby site unfence {site})"
        )));
    }
    Ok(())
}

/// Every host where `rec` may run: its active and home hosts, and every
/// host of its home site and DR site (a restore may have put it on any of
/// them, and a controller whose database was lost knows only its home).
fn may_run_at(ctl: &Controller, rec: &VmRecord) -> Vec<String> {
    let live = ctl.cfg();
    let mut hosts = vec![rec.active_host.as_str()];
    let mut sites: Vec<&str> = vec![rec.home_site.as_str()];
    sites.extend(rec.dr_site.as_deref());
    if let Some(v) = live.vms.get(&rec.name) {
        sites.extend(v.dr_sites());
    }
    for (name, h) in &live.hosts {
        if name == &rec.home_host || sites.contains(&h.site.as_str()) {
            hosts.push(name);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(*h));
    hosts.into_iter().map(str::to_string).collect()
}

/// Learn from the hosts where each VM runs: one found alive at a single
/// host other than its recorded one (the database was lost, or is older
/// than the last failover) gets that placement. In the background at
/// start, each VM under its lock; a VM alive at two hosts is reported,
/// not touched.
pub(crate) async fn reconcile_placements(ctl: std::sync::Arc<Controller>) {
    // What each host runs, asked once per host (an agent lists its VMs in
    // one answer): thousands of VMs at a hundred hosts must not become
    // hundreds of thousands of calls at every start. A host that does not
    // answer counts as running none of them, as before.
    // Each host is asked of the VMs that may run there.
    let Ok(records) = ctl.repo.vms().await else {
        return;
    };
    let mut asked: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for rec in records
        .iter()
        .filter(|r| ctl.cfg().vms.contains_key(&r.name))
    {
        for host in may_run_at(&ctl, rec) {
            asked
                .entry(host.to_string())
                .or_default()
                .push(rec.name.clone());
        }
    }
    let mut runs: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for (host, vms) in asked {
        if ctl.cancel.is_cancelled() {
            return;
        }
        let Ok(agent) = ctl.agent(&host) else {
            continue;
        };
        if let Ok(list) = agent.running(&vms).await {
            ctl.answered
                .lock()
                .expect("answered lock")
                .insert(host.clone());
            runs.insert(host, list.into_iter().collect());
        }
    }
    for name in ctl.cfg().vms.keys() {
        if ctl.cancel.is_cancelled() {
            return;
        }
        let _guard = ctl.lock_vm(name).await;
        let Ok(rec) = ctl.repo.vm(name).await else {
            continue;
        };
        let alive: Vec<String> = may_run_at(&ctl, &rec)
            .into_iter()
            .filter(|host| runs.get(host.as_str()).is_some_and(|r| r.contains(name)))
            .collect();
        match alive.as_slice() {
            [one] if *one != rec.active_host => {
                let live = ctl.cfg();
                let Some(site) = live.site_of_host(one) else {
                    continue;
                };
                tracing::warn!(vm = %name, host = %one, recorded = %rec.active_host, "placement learned from the hosts: the vm runs elsewhere than recorded");
                if let Err(e) = ctl.repo.set_vm_placement(name, site, one).await {
                    tracing::error!(vm = %name, "recording the learned placement: {e}");
                }
            }
            [_, _, ..] => {
                tracing::error!(vm = %name, hosts = ?alive, "the vm runs at more than one host")
            }
            _ => {}
        }
    }
}

/// Never two copies: refuse unless `vm` is known not to run at any host
/// other than `target` where it may run ([`may_run_at`]). With
/// `include_target`, it must not run at `target` either (a restore writes
/// its disks). At its recorded (active and home) hosts, a host at a fenced
/// site counts as not running it once the fence is confirmed, and a host
/// whose agent cannot say refuses the start; any other host refuses it
/// when it answers that the VM runs there, or when it has not said what it
/// runs since this controller started (a new leader, or a fresh database,
/// cannot know the VM is not there) and cannot say now.
pub(crate) async fn ensure_single_copy(
    ctl: &Controller,
    rec: &VmRecord,
    target: &str,
    include_target: bool,
) -> Result<(), EngineError> {
    let vm = &rec.name;
    for host in may_run_at(ctl, rec) {
        let host = host.as_str();
        if host == target && !include_target {
            continue;
        }
        let live = ctl.cfg();
        let Some(site) = live.site_of_host(host) else {
            continue;
        };
        // The recorded hosts must say; any other host of the VM's sites
        // refuses when it answers that the VM runs there, or when it
        // cannot say and has not said what it runs since this controller
        // started (see docs/ha.md).
        let recorded = host == rec.active_host || host == rec.home_host;
        if ctl.is_fenced(site).await? {
            if !recorded {
                continue;
            }
            ctl.await_fenced(site, host).await?;
            continue;
        }
        let agent = ctl.agent(host)?;
        match agent.status(vm).await {
            Ok(st) if st.is_alive() => {
                let what = if host == target {
                    "stop it first".to_string()
                } else {
                    format!("stop it (or fence site {site}) before running it at {target}")
                };
                return Err(EngineError::Conflict(format!(
                    "vm {vm} is {} at {host} (site {site}); {what} (standby never runs two copies)",
                    st.state
                )));
            }
            Ok(_) => {}
            Err(e) if !recorded && ctl.answered.lock().expect("answered lock").contains(host) => {
                tracing::debug!(vm, host, "not asked whether it runs the vm: {e}");
            }
            Err(e) if !recorded => {
                return Err(EngineError::Conflict(format!(
                    "vm {vm} may be running at {host} (site {site}): its agent has not answered since \
                     this controller started, and cannot say now ({}); start the vm once it answers, or, \
                     if site {site} is lost, fence it first: standby site fence {site} --reason TEXT \
                     --confirmed",
                    crate::error::error_chain(&e)
                )));
            }
            Err(e) => {
                return Err(EngineError::Conflict(format!(
                    "vm {vm} may still be running at {host} (site {site}), whose agent cannot say ({}); \
                     if site {site} is lost, fence it first: standby site fence {site} --reason TEXT",
                    crate::error::error_chain(&e)
                )));
            }
        }
    }
    Ok(())
}

/// Graceful shutdown at the active host; `timeout` defaults to the VM's
/// configured `shutdown_timeout`.
pub async fn shutdown(
    ctl: &Controller,
    name: &str,
    timeout: Option<Duration>,
) -> Result<VmStatus, EngineError> {
    let _guard = ctl.lock_vm(name).await;
    let rec = ctl.repo.vm(name).await?;
    let timeout = timeout
        .or_else(|| ctl.cfg().vms.get(name).map(|v| v.shutdown_timeout))
        .ok_or_else(|| EngineError::not_found("vm", name))?;
    Ok(ctl.agent(&rec.active_host)?.shutdown(name, timeout).await?)
}

/// Forced stop at the active host. No VM lock: a forced stop must work
/// even while a point is read (the driver kills a frozen VM without
/// letting it run first).
pub async fn stop(ctl: &Controller, name: &str) -> Result<VmStatus, EngineError> {
    let rec = ctl.repo.vm(name).await?;
    Ok(ctl.agent(&rec.active_host)?.stop(name).await?)
}
