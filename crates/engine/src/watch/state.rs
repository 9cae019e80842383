//! The watch's in-memory state ([`Watch`]) and what opening it needs: the
//! rule files' loading ([`RulesStatus`]), the alerts still active in the
//! database and what is tracked about each, the agents seen. A leaf: it
//! knows nothing of the controller, which holds a [`Watch`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_db::{AlertQuery, WatchRepo};
use standby_monitor::{Evaluator, RuleSet};
use standby_types::config::Config;
use standby_types::watch::{Alert, AlertState, Event, ProbeResult, Severity};
use tokio::sync::{broadcast, mpsc};

use crate::error::EngineError;

/// In-memory watch state, shared by the tasks and the API.
pub struct Watch {
    pub(super) repo: Arc<dyn WatchRepo>,
    pub(super) evaluator: Mutex<Evaluator>,
    pub(super) rules: Mutex<RulesStatus>,
    /// Latest result per (probe, vantage).
    pub(super) latest: Mutex<BTreeMap<(String, String), ProbeResult>>,
    pub(super) pending_events: Mutex<Vec<Event>>,
    pub(super) events_tx: broadcast::Sender<Event>,
    /// Alerts not resolved, by fingerprint.
    pub(super) active: Mutex<HashMap<String, Alert>>,
    /// Per active alert: when it settles, its incident template, whether
    /// it was notified.
    pub(super) track: Mutex<HashMap<String, Track>>,
    /// Silences not yet expired.
    pub(super) silences: Mutex<Vec<standby_types::watch::Silence>>,
    pub(super) agents: Mutex<BTreeMap<String, AgentSeen>>,
    /// Each agent's counters of heartbeats and results (no replay).
    pub(super) fresh: standby_agent::fresh::Freshness,
    pub(super) started: DateTime<Utc>,
    pub(super) resolved_total: std::sync::atomic::AtomicU64,
    /// Wakes the notifier when a delivery is queued.
    pub(super) notify_wake: tokio::sync::Notify,
    /// Alerts that settled (not muted), for whoever starts runbooks: the
    /// watch does not call into runbooks, it hands alerts over.
    settled_tx: mpsc::UnboundedSender<Alert>,
    settled_rx: Mutex<Option<mpsc::UnboundedReceiver<Alert>>>,
    /// Stops the controller's own probes (a reload starts them anew).
    pub(super) controller_probes: Mutex<Option<tokio_util::sync::CancellationToken>>,
}

impl Watch {
    /// Load rules and the alerts still active from the database.
    pub async fn open(
        cfg: &standby_types::config::Config,
        repo: Arc<dyn WatchRepo>,
    ) -> Result<Watch, EngineError> {
        let (ruleset, status) = load_rules(cfg)?;
        let mut evaluator = Evaluator::new(ruleset);
        let active = load_active(&*repo).await?;
        let restore: Vec<_> = active
            .values()
            .map(|a| (a.rule.clone(), a.labels.clone(), a.active_since, a.fired_at))
            .collect();
        evaluator.restore_firing(&restore);
        let (events_tx, _) = broadcast::channel(4096);
        let track = active
            .keys()
            .map(|fp| (fp.clone(), Track::restored()))
            .collect();
        let silences = repo.silences(Some(Utc::now())).await?;
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
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
            fresh: standby_agent::fresh::Freshness::new(),
            started: Utc::now(),
            resolved_total: Default::default(),
            notify_wake: tokio::sync::Notify::new(),
            settled_tx,
            settled_rx: Mutex::new(Some(settled_rx)),
            controller_probes: Mutex::default(),
        })
    }

    /// Hand over an alert that settled (its incident opened, if any).
    pub(super) fn settled(&self, alert: Alert) {
        // The receiver lives as long as the controller's tasks run; after
        // a stop nobody starts runbooks any more.
        let _ = self.settled_tx.send(alert);
    }

    /// The settled alerts, in order; taken once, by whoever starts the
    /// runbooks they trigger.
    pub fn take_settled(&self) -> Option<mpsc::UnboundedReceiver<Alert>> {
        self.settled_rx.lock().expect("settled lock").take()
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
    /// Rules with an event condition count it now, so the next tick sees
    /// it (not when it is stored).
    pub fn emit(&self, e: Event) {
        self.evaluator
            .lock()
            .expect("evaluator lock")
            .observe_event(&e);
        self.pending_events.lock().expect("events lock").push(e);
    }

    /// Take in one probe result: evaluator state, latest table, an event.
    pub fn record(&self, r: ProbeResult) {
        self.take_in(r, true);
    }

    /// Like [`Watch::record`] for the probes made from the inventory
    /// (heartbeats, VM states, point ages), one per agent or VM every
    /// second: the event goes to the log only when the outcome changed
    /// (or is the probe's first), so the log does not grow with the
    /// inventory; rules still see every result.
    pub fn record_changes(&self, r: ProbeResult) {
        let changed = self
            .latest
            .lock()
            .expect("latest lock")
            .get(&(r.probe.clone(), r.vantage.clone()))
            .is_none_or(|prev| prev.ok != r.ok);
        self.take_in(r, changed);
    }

    fn take_in(&self, r: ProbeResult, logged: bool) {
        let counted = {
            let mut ev = self.evaluator.lock().expect("evaluator lock");
            ev.observe(&r);
            ev.counts_events()
        };
        // Not logged and no rule counting events: no event to make.
        if logged || counted {
            let severity = if r.ok {
                Severity::Info
            } else {
                Severity::Warning
            };
            let event = Event {
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
            };
            if logged {
                self.emit(event);
            } else {
                self.evaluator
                    .lock()
                    .expect("evaluator lock")
                    .observe_event(&event);
            }
        }
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

    pub(super) async fn flush_events(&self) -> Result<(), EngineError> {
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

/// What the controller remembers about an active alert besides its row.
#[derive(Debug, Clone)]
pub struct Track {
    /// When inhibition and silences are checked and the alert acted on;
    /// None once done.
    pub(super) settle_at: Option<DateTime<Utc>>,
    pub(super) incident_template: Option<String>,
    /// A firing notification went out, so a resolved one follows.
    pub(super) notified: bool,
}

impl Track {
    /// An alert that was active before a restart: already settled; it was
    /// notified unless it was muted (checked when it resolves).
    pub fn restored() -> Self {
        Track {
            settle_at: None,
            incident_template: None,
            notified: true,
        }
    }
}

pub(super) async fn load_active(
    repo: &dyn WatchRepo,
) -> Result<HashMap<String, Alert>, EngineError> {
    let list = repo
        .alerts(&AlertQuery {
            states: vec![AlertState::Firing, AlertState::Acknowledged],
            rule: None,
            limit: 100_000,
        })
        .await?;
    let mut out: HashMap<String, Alert> = HashMap::new();
    // Newest first: the first row of a fingerprint is the live one.
    for a in list {
        out.entry(a.fingerprint.clone()).or_insert(a);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RulesStatus {
    #[schema(value_type = Vec<String>)]
    pub files: Vec<PathBuf>,
    /// Names of the rules in force.
    pub rules: Vec<String>,
    pub loaded_at: DateTime<Utc>,
    /// The last reload's error; the previous rules stayed in force.
    pub error: Option<String>,
    pub error_at: Option<DateTime<Utc>>,
}

pub(crate) fn read(cfg: &Config) -> Result<RuleSet, String> {
    let mut set = if cfg.controller.builtin_rules {
        RuleSet::builtin()
    } else {
        RuleSet::default()
    };
    for path in &cfg.controller.rules {
        let src = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: unable to read rule file: {e}", path.display()))?;
        let more = RuleSet::parse(&src, path).map_err(|e| e.to_string())?;
        set = RuleSet::merge(set, more).map_err(|e| e.to_string())?;
    }
    Ok(set)
}

pub(super) fn load_rules(cfg: &Config) -> Result<(RuleSet, RulesStatus), EngineError> {
    let set = read(cfg).map_err(EngineError::BadRequest)?;
    let status = RulesStatus {
        files: cfg.controller.rules.clone(),
        rules: set.names(),
        loaded_at: Utc::now(),
        error: None,
        error_at: None,
    };
    Ok((set, status))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSeen {
    pub site: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub version: String,
}
