//! The evaluator: a state machine per (rule, group key), fed probe results
//! and events, advanced by [`Evaluator::evaluate`] with the time passed in.
//!
//! This file holds the types and the small helpers; the [`Evaluator`]'s
//! methods split by concern: `observe` (rules, probe results, events, the
//! truth of conditions), `evaluate` (the state machines, firing and
//! restored alerts), `incidents` (inhibition, incident templates).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use standby_types::watch::{Event, Labels, ProbeResult, Severity};

use crate::rules::{Rule, RuleSet};

mod evaluate;
mod incidents;
mod observe;

pub use incidents::Inhibitions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    Firing,
    Resolved,
}

/// An alert that started firing or resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub labels: Labels,
    pub annotations: Labels,
    /// When the condition started to hold.
    pub active_since: DateTime<Utc>,
    /// When it fired (Firing) or resolved (Resolved).
    pub at: DateTime<Utc>,
    /// Incident template the rule names.
    pub incident: Option<String>,
}

/// An incident template rendered for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedIncident {
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub group: String,
    pub key: String,
}

/// Fingerprint of an alert: the first 16 hex digits of blake3 over the
/// alert name and the labels in key order.
pub fn fingerprint(alertname: &str, labels: &Labels) -> String {
    let mut h = blake3::Hasher::new();
    h.update(alertname.as_bytes());
    h.update(&[0]);
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex()[..16].to_owned()
}

/// Whether a condition holds for one group at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    Holds,
    False,
    /// Only stale evidence (or none yet): nothing changes.
    Unknown,
}

#[derive(Debug, Clone)]
enum Phase {
    Pending {
        since: DateTime<Utc>,
    },
    Firing {
        active_since: DateTime<Utc>,
        fired_at: DateTime<Utc>,
        /// Since when the condition has been false, while clearing.
        clear_since: Option<DateTime<Utc>>,
        labels: Labels,
        annotations: Labels,
        fingerprint: String,
    },
}

#[derive(Debug, Clone)]
struct AlertSlot {
    phase: Phase,
    /// The probe behind this group was forgotten: absence of results now
    /// counts as false so the alert can resolve.
    orphaned: bool,
}

type GroupKey = Vec<String>;

pub struct Evaluator {
    rules: RuleSet,
    env: minijinja::Environment<'static>,
    /// Latest result per (probe, vantage).
    results: BTreeMap<(String, String), ProbeResult>,
    /// Event times per rule and group key, newest last, at most `count`.
    events: BTreeMap<String, BTreeMap<GroupKey, VecDeque<DateTime<Utc>>>>,
    slots: BTreeMap<String, BTreeMap<GroupKey, AlertSlot>>,
    /// Firing alerts whose rule went away; resolved at the next evaluate.
    orphans: Vec<Transition>,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn event_labels(e: &Event) -> Labels {
    let mut l = e.labels.clone();
    l.insert("kind".into(), e.kind.clone());
    l.insert("source".into(), e.source.clone());
    l.insert("severity".into(), e.severity.as_str().into());
    l.insert("vantage".into(), e.vantage.clone());
    l
}

fn group_key(group_by: &[String], labels: &Labels) -> GroupKey {
    group_by
        .iter()
        .map(|k| labels.get(k).cloned().unwrap_or_default())
        .collect()
}

fn transition_of(
    rule: &Rule,
    phase: &Phase,
    kind: TransitionKind,
    at: DateTime<Utc>,
) -> Option<Transition> {
    let Phase::Firing {
        active_since,
        labels,
        annotations,
        fingerprint,
        ..
    } = phase
    else {
        return None;
    };
    Some(Transition {
        kind,
        fingerprint: fingerprint.clone(),
        rule: rule.name.clone(),
        severity: rule.severity,
        labels: labels.clone(),
        annotations: annotations.clone(),
        active_since: *active_since,
        at,
        incident: rule.incident.clone(),
    })
}

#[cfg(test)]
mod tests;
