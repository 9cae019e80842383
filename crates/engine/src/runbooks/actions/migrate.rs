//! `vm.migrate`: a running VM moved live to a host at another site (the
//! driver's migration halves, each run by its own host's agent).
//!
//! The order keeps one copy serving at every instant: the target waits
//! paused for the VM's state; the source copies disks and memory while it
//! runs, then pauses for good (the copy complete); only then is the target
//! resumed, the placement recorded, and the source stopped. A failure
//! before the switchover removes the target's half and leaves the source
//! running. Each phase is recorded with the step, so a re-run (a retry, or
//! a job resumed after a controller crash) settles the move first: a
//! target that runs means the move happened (the source is stopped); any
//! other target is removed and a paused source resumed; a host that cannot
//! say leaves everything as it is and the step fails, saying so.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use standby_agent::{Agent, AgentError};
use standby_hv::{MigrationOptions, MigrationReport, VmSpec, VmState};
use standby_runbook::catalog::VmMigrate;
use standby_types::error_chain;
use standby_types::model::VmRecord;
use standby_types::outcome::VmMigrated;

use super::Perform;
use super::context::ActionCtx;
use crate::controller::Controller;
use crate::error::EngineError;

/// Prepares tried with other ports when the ones picked are taken.
const PREPARE_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// The target waits for the VM.
    Prepared,
    /// The copy completed: the source is paused, whole.
    Copied,
    /// The target runs and the placement says so.
    Switched,
}

/// What the step records as it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    from_host: String,
    from_site: String,
    host: String,
    site: String,
    phase: Phase,
    #[serde(default)]
    report: Option<MigrationReport>,
}

/// "live migration not possible: …": the move did not start, and the VM
/// is as it was.
fn not_possible(vm: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::Conflict(format!("live migration of vm {vm} not possible: {why}"))
}

impl Perform for VmMigrate {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmMigrated, EngineError> {
        let started = Instant::now();
        let ctl = &ctx.ctl;
        let vm = self.vm.as_str().to_string();
        let _guard = ctl.lock_vm(&vm).await;
        let rec = ctl.repo.vm(&vm).await?;
        if let Some(r) = ctx.recorded::<Recorded>()
            && let Some(done) = settle(ctl, &rec, &r, started).await?
        {
            return Ok(done);
        }
        let rec = ctl.repo.vm(&vm).await?;
        let site = self.site.as_str().to_string();
        let cfg = ctl.cfg();
        if !cfg.sites.contains_key(&site) {
            return Err(EngineError::not_found("site", &site));
        }
        if rec.active_site == site {
            return Err(not_possible(
                &vm,
                format!("it runs at site {site} already (host {})", rec.active_host),
            ));
        }
        let host = match self.host.as_ref().map(|h| h.as_str().to_string()) {
            Some(h) => {
                if cfg.site_of_host(&h) != Some(site.as_str()) {
                    return Err(EngineError::BadRequest(format!(
                        "host {h} is not a host of site {site}"
                    )));
                }
                h
            }
            None => cfg
                .first_host_of_site(&site)
                .ok_or_else(|| not_possible(&vm, format!("site {site} has no host")))?
                .to_string(),
        };
        crate::vms::refuse_fenced(ctl, &site).await?;
        let from = ctl.agent(&rec.active_host)?;
        let to = ctl.agent(&host)?;
        if from.driver_kind() != to.driver_kind() {
            return Err(not_possible(
                &vm,
                format!(
                    "host {} runs {} VMs and host {host} {} VMs: a live move needs the same hypervisor at both ends",
                    rec.active_host,
                    from.driver_kind(),
                    to.driver_kind()
                ),
            ));
        }
        let st = from.status(&vm).await?;
        if st.state != VmState::Running {
            return Err(not_possible(
                &vm,
                format!(
                    "it is {} at {}: only a running VM moves live",
                    st.state, rec.active_host
                ),
            ));
        }
        // No copy anywhere else, the target included.
        crate::vms::ensure_single_copy(ctl, &rec, &rec.active_host, false).await?;
        let src = from.spec(&cfg, &vm)?;
        let dst = to.spec(&cfg, &vm)?;
        let defaults = MigrationOptions::default();
        let options = MigrationOptions {
            downtime_limit: self.downtime_limit.map_or(defaults.downtime_limit, |s| s.0),
            timeout: self.timeout.map_or(defaults.timeout, |s| s.0),
            max_bandwidth: None,
        };
        let mut r = Recorded {
            from_host: rec.active_host.clone(),
            from_site: rec.active_site.clone(),
            host: host.clone(),
            site: site.clone(),
            phase: Phase::Prepared,
            report: None,
        };
        // Recorded before the target exists: a crash from here on finds it.
        ctx.record(&r).await?;
        let target = prepare(to, &cfg, &dst).await.map_err(|e| match e {
            EngineError::Agent(e) => not_possible(
                &vm,
                format!("host {host} cannot take it: {}", error_chain(&e)),
            ),
            e => e,
        })?;
        tracing::info!(vm = %vm, from = %rec.active_host, to = %host, ?target, "live migration: target ready");
        let report = match from.migrate_out(&src, &target, options).await {
            Ok(report) => Some(report),
            // A driver that switches over inside its copy (libvirt's
            // migration) may have moved the VM all the same: the target
            // says.
            Err(e)
                if to
                    .status(&vm)
                    .await
                    .is_ok_and(|st| st.state == VmState::Running) =>
            {
                tracing::warn!(vm = %vm, "the copy reported a failure ({}), yet the vm runs at {host}: moved", error_chain(&e));
                None
            }
            Err(e) => {
                let undone = abort_target(to, &dst).await;
                return Err(EngineError::Conflict(format!(
                    "live migration of vm {vm} from {} to {host} failed before the switchover: {}; \
                     the vm runs on at {}, untouched{undone}",
                    rec.active_host,
                    error_chain(&e),
                    rec.active_host
                )));
            }
        };
        r.phase = Phase::Copied;
        r.report = report;
        ctx.record(&r).await?;
        crate::crash::at(|| "migrate:copied".into());
        switch_over(ctl, from, to, &src, &dst, &r, started).await
    }
}

/// `migrate_in_prepare` at `to`, with other ports when those picked are
/// taken.
async fn prepare(
    to: &Agent,
    cfg: &standby_types::config::Config,
    dst: &VmSpec,
) -> Result<standby_hv::MigrationTarget, EngineError> {
    let mut attempt = 0;
    loop {
        let listen = to.migration_listen(cfg, attempt)?;
        match to.migrate_in_prepare(dst, listen).await {
            Ok(t) => return Ok(t),
            Err(e)
                if attempt + 1 < PREPARE_ATTEMPTS
                    && error_chain(&e).contains("Address already in use") =>
            {
                tracing::info!(vm = %dst.name, ?listen, "migration ports taken: trying others");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Remove the target's half after a failed copy; what to add to the
/// message when that failed too.
async fn abort_target(to: &Agent, dst: &VmSpec) -> String {
    match to.migrate_in_abort(dst).await {
        Ok(()) => String::new(),
        Err(e) => {
            tracing::warn!(vm = %dst.name, host = %to.host, "removing the migration target: {}", error_chain(&e));
            format!(
                " (the paused, incomplete target at {} could not be removed: {}; it never runs)",
                to.host,
                error_chain(&e)
            )
        }
    }
}

/// The copy completed (the source paused): resume the target, record the
/// placement, stop the source.
async fn switch_over(
    ctl: &Controller,
    from: &Agent,
    to: &Agent,
    src: &VmSpec,
    dst: &VmSpec,
    r: &Recorded,
    started: Instant,
) -> Result<VmMigrated, EngineError> {
    let vm = src.name.as_str();
    if let Err(e) = to.migrate_in_finish(dst).await {
        // Did it resume all the same (an answer lost on the way)?
        match to.status(vm).await {
            Ok(st) if st.state == VmState::Running => {}
            Ok(_) => {
                let undone = abort_target(to, dst).await;
                let resumed = match from.migrate_out_confirm(src, false).await {
                    Ok(_) => format!("the vm runs on at {}", r.from_host),
                    Err(e2) => format!(
                        "resuming it at {} failed too ({}): start it there",
                        r.from_host,
                        error_chain(&e2)
                    ),
                };
                return Err(EngineError::Conflict(format!(
                    "live migration of vm {vm}: the target {} did not resume ({}); {resumed}{undone}",
                    r.host,
                    error_chain(&e)
                )));
            }
            Err(e2) => {
                return Err(stuck(vm, r, &e, &e2));
            }
        }
    }
    crate::crash::at(|| "migrate:switched".into());
    ctl.repo.set_vm_placement(vm, &r.site, &r.host).await?;
    tracing::info!(vm, from = %r.from_host, to = %r.host, "live migration: switched over");
    let mut r = r.clone();
    r.phase = Phase::Switched;
    let source = stop_source(from, src).await;
    Ok(output(vm, &r, started, source))
}

/// The target cannot say whether it resumed: the source stays paused
/// (resuming it could make two running copies).
fn stuck(vm: &str, r: &Recorded, e: &AgentError, e2: &AgentError) -> EngineError {
    EngineError::Conflict(format!(
        "live migration of vm {vm}: the switchover at {} failed ({}) and its agent cannot say whether the vm \
         runs there ({}); the source at {} stays paused, so that never two copies run: run the step \
         again once {} answers, or fence site {} and restore",
        r.host,
        error_chain(e),
        error_chain(e2),
        r.from_host,
        r.host,
        r.site
    ))
}

/// Stop the paused source after a switchover: `None` when stopped, else
/// what failed.
async fn stop_source(from: &Agent, src: &VmSpec) -> Option<String> {
    match from.migrate_out_confirm(src, true).await {
        Ok(_) => None,
        Err(e) => match from.stop(&src.name).await {
            Ok(st) if !st.is_alive() => None,
            Ok(st) => Some(format!(
                "the source at {} is {} after the move; it stays paused (stop it: standby never resumes it)",
                from.host, st.state
            )),
            Err(e2) => Some(format!(
                "stopping the source at {} failed ({}; {}); it stays paused and is stopped by a fence of its site",
                from.host,
                error_chain(&e),
                error_chain(&e2)
            )),
        },
    }
}

fn output(vm: &str, r: &Recorded, started: Instant, source: Option<String>) -> VmMigrated {
    let report = r.report.as_ref();
    VmMigrated {
        vm: vm.to_string(),
        from_host: r.from_host.clone(),
        from_site: r.from_site.clone(),
        host: r.host.clone(),
        site: r.site.clone(),
        seconds: started.elapsed().as_secs_f64(),
        disk_bytes: report.map_or(0, |p| p.disk_bytes),
        disk_sync_seconds: report.map_or(0.0, |p| p.disk_sync.as_secs_f64()),
        state_bytes: report.map_or(0, |p| p.state_bytes),
        downtime_ms: report
            .and_then(|p| p.downtime)
            .map(|d| d.as_secs_f64() * 1000.0),
        source_stopped: source.is_none(),
        note: source,
    }
}

/// A re-run of a step that recorded `r`: finish the move if the target
/// runs (`Some`), else undo the target's half and resume a paused source
/// (`None`: move again).
async fn settle(
    ctl: &Controller,
    rec: &VmRecord,
    r: &Recorded,
    started: Instant,
) -> Result<Option<VmMigrated>, EngineError> {
    let vm = rec.name.as_str();
    let cfg = ctl.cfg();
    let from = ctl.agent(&r.from_host)?;
    let to = ctl.agent(&r.host)?;
    let src = from.spec(&cfg, vm)?;
    let dst = to.spec(&cfg, vm)?;
    let runs_at_target = if rec.active_host == r.host {
        true
    } else {
        match to.status(vm).await {
            Ok(st) => st.state == VmState::Running,
            Err(e) => {
                return Err(EngineError::Conflict(format!(
                    "vm {vm}: an earlier run of this step was moving it live to {}, whose agent cannot say \
                     whether it runs there now ({}); nothing is touched until it answers (run the step again)",
                    r.host,
                    error_chain(&e)
                )));
            }
        }
    };
    if runs_at_target {
        if rec.active_host != r.host {
            ctl.repo.set_vm_placement(vm, &r.site, &r.host).await?;
        }
        tracing::info!(vm, to = %r.host, "live migration found switched over: stopping the source");
        let source = stop_source(from, &src).await;
        return Ok(Some(output(vm, r, started, source)));
    }
    // Not switched over: the target's half goes, the source resumes.
    let undone = abort_target(to, &dst).await;
    if !undone.is_empty() {
        tracing::info!(vm, "{undone}");
    }
    // A source the copy completed on is paused (its status may still say
    // running): resumed, as the target is gone. A running one is left as
    // it is.
    if from.status(vm).await?.is_alive() {
        from.migrate_out_confirm(&src, false).await?;
    }
    tracing::info!(vm, "an interrupted live migration was undone: moving again");
    Ok(None)
}
