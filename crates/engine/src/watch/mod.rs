//! The watch side of the controller: probes, events, rule evaluation,
//! alerts, incidents and notifications.
//!
//! # Flow
//! probe results (controller probes, generated heartbeat/VM/point-age
//! probes, results posted by remote agents) → [`Watch::record`] → an event
//! each, and the rule [`Evaluator`] → every tick, transitions → alert rows
//! → after a settle delay (the longest route `group_wait`, at least 2 s):
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

mod agents;
mod alerts;
mod incidents;
mod notifier;
mod probes;
mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use standby_db::WatchRepo;
use standby_monitor::Evaluator;
use standby_types::watch::{Alert, Event, ProbeResult, Severity};
use tokio::sync::broadcast;

pub use agents::{
    AgentSeen, Heartbeat, HeartbeatReply, heartbeat as agent_heartbeat, results as agent_results,
};
pub use alerts::{AckRequest, SilenceRequest, acknowledge, add_silence, expire_silence};
pub use incidents::{
    IncidentOpen, IncidentUpdate, detail as incident_detail, open as open_incident,
    update as update_incident,
};
pub use rules::{RulesStatus, reload as reload_rules};

use crate::controller::Controller;
use crate::error::EngineError;

/// How often rules are evaluated.
const TICK: Duration = Duration::from_millis(250);
/// How often pending events are written.
const FLUSH: Duration = Duration::from_millis(250);

/// In-memory watch state, shared by the tasks and the API.
pub struct Watch {
    repo: Arc<dyn WatchRepo>,
    evaluator: Mutex<Evaluator>,
    rules: Mutex<RulesStatus>,
    /// Latest result per (probe, vantage).
    latest: Mutex<BTreeMap<(String, String), ProbeResult>>,
    pending_events: Mutex<Vec<Event>>,
    events_tx: broadcast::Sender<Event>,
    /// Alerts not resolved, by fingerprint.
    active: Mutex<HashMap<String, Alert>>,
    /// Per active alert: when it settles, its incident template, whether
    /// it was notified.
    track: Mutex<HashMap<String, alerts::Track>>,
    /// Silences not yet expired.
    silences: Mutex<Vec<standby_types::watch::Silence>>,
    agents: Mutex<BTreeMap<String, AgentSeen>>,
    started: DateTime<Utc>,
    resolved_total: std::sync::atomic::AtomicU64,
    /// Wakes the notifier when a delivery is queued.
    notify_wake: tokio::sync::Notify,
}

impl Watch {
    /// Load rules and the alerts still active from the database.
    pub async fn open(
        cfg: &standby_types::config::Config,
        repo: Arc<dyn WatchRepo>,
    ) -> Result<Watch, EngineError> {
        let (ruleset, status) = rules::load(cfg)?;
        let mut evaluator = Evaluator::new(ruleset);
        let active = alerts::load_active(&*repo).await?;
        let restore: Vec<_> = active
            .values()
            .map(|a| (a.rule.clone(), a.labels.clone(), a.active_since, a.fired_at))
            .collect();
        evaluator.restore_firing(&restore);
        let (events_tx, _) = broadcast::channel(4096);
        let track = active
            .keys()
            .map(|fp| (fp.clone(), alerts::Track::restored()))
            .collect();
        let silences = repo.silences(Some(Utc::now())).await?;
        Ok(Watch {
            repo,
            evaluator: Mutex::new(evaluator),
            rules: Mutex::new(status),
            latest: Mutex::default(),
            pending_events: Mutex::default(),
            events_tx,
            active: Mutex::new(active),
            track: Mutex::new(track),
            silences: Mutex::new(silences),
            agents: Mutex::default(),
            started: Utc::now(),
            resolved_total: Default::default(),
            notify_wake: tokio::sync::Notify::new(),
        })
    }

    pub fn repo(&self) -> &Arc<dyn WatchRepo> {
        &self.repo
    }

    /// Alerts resolved since this controller started.
    pub fn resolved_total(&self) -> u64 {
        self.resolved_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new subscriber to the event stream (events after they are stored).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events_tx.subscribe()
    }

    /// Queue an event for storage and streaming.
    pub fn emit(&self, e: Event) {
        self.pending_events.lock().expect("events lock").push(e);
    }

    /// Take in one probe result: evaluator state, latest table, an event.
    pub fn record(&self, r: ProbeResult) {
        self.evaluator.lock().expect("evaluator lock").observe(&r);
        let severity = if r.ok {
            Severity::Info
        } else {
            Severity::Warning
        };
        self.emit(Event {
            id: 0,
            at: r.at,
            source: r.probe.clone(),
            kind: "probe.result".into(),
            severity,
            labels: r.labels.clone(),
            vantage: r.vantage.clone(),
            message: format!(
                "{} {} in {} ms",
                if r.ok { "ok" } else { "failed:" },
                r.detail,
                r.latency_ms
            ),
        });
        self.latest
            .lock()
            .expect("latest lock")
            .insert((r.probe.clone(), r.vantage.clone()), r);
    }

    /// Latest result of every probe at every vantage point.
    pub fn probe_states(&self) -> Vec<ProbeResult> {
        self.latest
            .lock()
            .expect("latest lock")
            .values()
            .cloned()
            .collect()
    }

    /// The latest results that `keep` selects (cloning only those).
    pub fn probe_states_where(&self, keep: impl Fn(&ProbeResult) -> bool) -> Vec<ProbeResult> {
        self.latest
            .lock()
            .expect("latest lock")
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    pub fn rules_status(&self) -> RulesStatus {
        self.rules.lock().expect("rules lock").clone()
    }

    /// Alerts not resolved, newest first.
    pub fn active_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .active
            .lock()
            .expect("active lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.id));
        v
    }

    pub fn agents_seen(&self) -> Vec<(String, AgentSeen)> {
        self.agents
            .lock()
            .expect("agents lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    async fn flush_events(&self) -> Result<(), EngineError> {
        let batch = std::mem::take(&mut *self.pending_events.lock().expect("events lock"));
        if batch.is_empty() {
            return Ok(());
        }
        let ids = match self.repo.insert_events(&batch).await {
            Ok(ids) => ids,
            Err(e) => {
                // Keep them for the next flush rather than lose them, but
                // bounded: a database that stays down must not eat memory.
                let mut pending = self.pending_events.lock().expect("events lock");
                if pending.len() < 100_000 {
                    let mut batch = batch;
                    batch.append(&mut pending);
                    *pending = batch;
                }
                return Err(e.into());
            }
        };
        for (mut e, id) in batch.into_iter().zip(ids) {
            e.id = id;
            let _ = self.events_tx.send(e);
        }
        Ok(())
    }
}

/// Start the watch tasks: controller probes, generated probes, rule
/// evaluation, rule reloading, event flushing and pruning, notifications.
pub fn spawn(ctl: &Arc<Controller>) {
    ctl.tasks.spawn(probes::run_controller_probes(ctl.clone()));
    ctl.tasks.spawn(probes::run_generated(ctl.clone()));
    ctl.tasks.spawn(evaluate_loop(ctl.clone()));
    ctl.tasks.spawn(rules::reload_loop(ctl.clone()));
    ctl.tasks.spawn(flush_loop(ctl.clone()));
    ctl.tasks.spawn(notifier::run(ctl.clone()));
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
            let keep = chrono::Duration::from_std(ctl.cfg.controller.events_retention)
                .unwrap_or(chrono::Duration::days(1));
            match ctl.watch.repo.prune_events(Utc::now() - keep).await {
                Ok(n) if n > 0 => tracing::info!("pruned {n} old event(s)"),
                Ok(_) => {}
                Err(e) => tracing::warn!("unable to prune events: {e}"),
            }
        }
    }
}
