//! The watch side of the controller: probes, events, rule evaluation,
//! alerts, incidents and notifications.
//!
//! # Flow
//! probe results (controller probes, generated heartbeat/VM/point-age
//! probes, results posted by remote agents) → [`Watch::record`] → an event
//! each, and the rule [`Evaluator`]; every event ([`Watch::emit`]: those,
//! alert and incident changes, Alertmanager's alerts) → the evaluator's
//! event conditions → every tick, transitions → alert rows
//! → after a settle delay (the longest route `group_wait`, at least 2 s;
//! none for an alert no inhibit rule targets, such as site-down, so its
//! runbook starts in the tick it fires):
//! inhibition and silences are checked again, incidents opened from the
//! rule's template, deliveries queued in the outbox → the notifier sends
//! them with retries.
//!
//! # Invariants
//! - An alert muted by inhibition or a silence at its settle time sends no
//!   notification and opens no incident; its row says what muted it.
//! - Alerts firing when the controller stopped continue after a restart
//!   (restored into the evaluator), they do not fire twice.
//! - A broken rule file never replaces working rules: the error is kept
//!   and shown, the previous rules stay in force.
//! - Deliveries are durable: a pending one is retried after a restart.
//!
//! # Layout
//! - `state.rs`: [`Watch`], the in-memory state the controller holds, and
//!   what opening it needs ([`RulesStatus`] and the rule files' loading,
//!   the active alerts and their tracking, [`AgentSeen`]). A leaf: it does
//!   not know the controller, so the controller imports nothing that
//!   imports it back.
//! - `probes.rs`: controller and generated probes; `agents.rs`: remote
//!   agents' heartbeats and results; `alertmanager.rs`: Alertmanager's
//!   alerts as events; `rules.rs`: rule reloading;
//!   `alerts.rs`: transitions to alerts, settling, acknowledgements and
//!   silences; `incidents.rs`: incidents; `notifier.rs`: the outbox.
//! - `mod.rs`: re-exports and the background loops ([`spawn`]).

mod agents;
pub mod alertmanager;
mod alerts;
mod incidents;
mod notifier;
mod probes;
mod rules;
pub(crate) mod state;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

pub use agents::{
    Heartbeat, HeartbeatReply, heartbeat as agent_heartbeat, results as agent_results,
};
pub use alerts::{AckRequest, SilenceRequest, acknowledge, add_silence, expire_silence};
pub use incidents::{
    IncidentOpen, IncidentUpdate, detail as incident_detail, open as open_incident,
    update as update_incident,
};
pub use rules::reload as reload_rules;
pub use state::{AgentSeen, RulesStatus, Watch};

use crate::controller::Controller;

/// How often rules are evaluated.
const TICK: Duration = Duration::from_millis(250);
/// How often pending events are written.
const FLUSH: Duration = Duration::from_millis(250);

/// Start the watch tasks: controller probes, generated probes, rule
/// evaluation, rule reloading, event flushing and pruning, notifications.
pub fn spawn(ctl: &Arc<Controller>) {
    probes::run_controller_probes(ctl);
    ctl.tasks.spawn(probes::run_generated(ctl.clone()));
    ctl.tasks.spawn(evaluate_loop(ctl.clone()));
    ctl.tasks.spawn(rules::reload_loop(ctl.clone()));
    ctl.tasks.spawn(flush_loop(ctl.clone()));
    ctl.tasks.spawn(notifier::run(ctl.clone()));
}

/// Start the controller's own probes anew, from the configuration in
/// force (after a reload).
pub fn restart_controller_probes(ctl: &Arc<Controller>) {
    probes::run_controller_probes(ctl);
}

async fn evaluate_loop(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = alerts::tick(&ctl).await {
            tracing::warn!("alert evaluation: {e}");
        }
    }
}

/// Apply `[controller]`'s retentions: events, finished jobs (with their
/// runs) and the notification log older than their setting are deleted.
/// Read at each pass, so a reload applies.
pub async fn prune(ctl: &Arc<Controller>) {
    let c = ctl.cfg().controller.clone();
    let before = |d: Duration| {
        Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
    };
    match ctl
        .watch
        .repo
        .prune_events(before(c.events_retention))
        .await
    {
        Ok(n) if n > 0 => tracing::info!("pruned {n} old event(s)"),
        Ok(_) => {}
        Err(e) => tracing::warn!("unable to prune events: {e}"),
    }
    match ctl.repo.prune_jobs(before(c.jobs_retention)).await {
        Ok(n) if n > 0 => tracing::info!("pruned {n} old finished job(s)"),
        Ok(_) => {}
        Err(e) => tracing::warn!("unable to prune jobs: {e}"),
    }
    match ctl
        .watch
        .repo
        .prune_deliveries(before(c.notifications_retention))
        .await
    {
        Ok(n) if n > 0 => tracing::info!("pruned {n} old notification(s)"),
        Ok(_) => {}
        Err(e) => tracing::warn!("unable to prune notifications: {e}"),
    }
}

async fn flush_loop(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let stopping = tokio::select! {
            _ = ctl.cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Err(e) = ctl.watch.flush_events().await {
            tracing::warn!("unable to store events: {e}");
        }
        if stopping {
            return;
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            last_prune = std::time::Instant::now();
            prune(&ctl).await;
        }
    }
}
