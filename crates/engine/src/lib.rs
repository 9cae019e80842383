//! standby's engine: the orchestration behind the API, with no HTTP in it.
//!
//! # Layout
//! - [`controller`]: the shared state ([`Controller`]): configuration,
//!   database, the agent of every host (`standby_agent`), the front door
//!   (`standby_frontdoor`), fenced sites, open datastores and the locks
//!   that keep one operation per VM at a time.
//! - [`vms`]: start, shutdown and stop at the host where a VM is active,
//!   never at a second place while it may run at the first.
//! - [`protect`], [`restore`]: the two data-moving operations; [`drill`]:
//!   a point restored into an isolated network, probed and torn down;
//!   [`integrity`]: what verifies find (damaged copies in the catalog) and
//!   the verify schedule.
//!   [`replica`]: warm replicas, each new point applied to a standing copy
//!   of the disks at the DR host.
//! - [`fence`]: durable site fences and their enforcement by the hosts.
//! - [`jobs`]: background work with persisted progress.
//! - [`reload`]: a changed configuration applied without a restart;
//!   [`groups`]: protection groups made through the API (self-service).
//! - [`watch`]: probes, events, rules, alerts, incidents, notifications.
//! - [`runbooks`]: the durable runbook executor, its actions and triggers.
//! - [`nfv`]: ETSI NFV: heals of VNF instances (jobs of the `heal-vnf`
//!   runbook) and VNF managers' alarms as events.
//! - [`error`]: [`EngineError`], which the HTTP edge maps to API errors.
//! - [`crash`]: the crash-injection hook of tests (`STANDBY_CRASH_AT`),
//!   compiled in only with the `crash-hook` feature.
//!
//! [`start`] sets the background work going: the front door's
//! forwarders, the watch loops, the runbook schedules and the runbook jobs
//! a stopped controller left running.
//!
//! # Invariants
//! - One operation per VM at a time (a point never overlaps a restore).
//! - A VM is never started at a second place while it may run at the first:
//!   start and restore refuse unless every other host it may run at answers
//!   that it is stopped or sits at a fenced site ([`vms`], [`fence`]).
//! - The datastores are the truth about points; the database is a catalog
//!   rebuilt from them at start ([`Controller::open`] rescans).

pub mod controller;
pub mod crash;
pub mod drill;
pub mod error;
pub mod fence;
pub mod groups;
pub mod integrity;
pub mod jobs;
pub mod leader;
pub mod nfv;
mod proofs;
pub mod protect;
pub mod reload;
pub mod replica;
pub mod restore;
pub mod runbooks;
pub mod templates;
pub mod vms;
pub mod watch;

use std::sync::Arc;

pub use controller::Controller;
pub use error::EngineError;

/// What a controller would load besides the configuration itself, checked
/// without starting anything: the rule files (with the built-in rules)
/// and the runbook files it names.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub rules: usize,
    pub runbooks: usize,
    /// One message per problem, naming its file.
    pub problems: Vec<String>,
}

pub fn check(cfg: &standby_types::config::Config) -> Checked {
    let mut out = Checked::default();
    match watch::state::read(cfg) {
        Ok(set) => out.rules = set.names().len(),
        Err(e) => out.problems.push(e),
    }
    let (runbooks, errors) = runbooks::catalog::check_files(cfg);
    out.runbooks = runbooks;
    out.problems.extend(errors);
    out
}

/// Start the engine's background work on an open controller: the front
/// door forwards, the watch evaluates, scheduled runbooks run, and runbook
/// jobs cut off by the last stop resume. Stops with [`Controller::shutdown`].
pub async fn start(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    ctl.frontdoor
        .start(&ctl.cfg(), &ctl.tasks, &ctl.cancel)
        .await?;
    // Alerts reach the runbooks through a channel: the watch never
    // calls into them.
    if let Some(settled) = ctl.watch.take_settled() {
        ctl.tasks
            .spawn(runbooks::triggers::run_alert_triggers(ctl.clone(), settled));
    }
    watch::spawn(ctl);
    // Verify slices of each datastore's chunks on its schedule.
    ctl.tasks.spawn(integrity::run_schedule(ctl.clone()));
    // Where VMs run, from the hosts themselves: in the background, so the
    // controller can act at once (a start asks the hosts anyway).
    ctl.tasks.spawn(vms::reconcile_placements(ctl.clone()));
    // Each VM's newest point (every VM view shows it) and its number of
    // points (a VM's list of points counts them) are read from the
    // catalog once (a million points take a few hundred milliseconds):
    // now, rather than by the first requests after a takeover.
    {
        let repo = ctl.repo.clone();
        ctl.tasks.spawn(async move {
            if let Err(e) = repo.latest_points(&[]).await {
                tracing::debug!("newest points not read ahead: {e}");
            }
            if let Err(e) = repo.point_summary().await {
                tracing::debug!("point counts not read ahead: {e}");
            }
        });
    }
    ctl.tasks
        .spawn(runbooks::triggers::run_schedules(ctl.clone()));
    runbooks::resume_all(ctl).await?;
    Ok(())
}
