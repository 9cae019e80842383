//! Feeding the evaluator: rules, probe results and events, and the truth
//! of each condition per group at an instant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use standby_types::watch::{Event, ProbeResult};

use crate::rules::{Condition, EventCondition, ProbeCondition, RuleSet};

use super::{
    Evaluator, GroupKey, TransitionKind, Truth, delta, event_labels, group_key, transition_of,
};

impl Evaluator {
    pub fn new(rules: RuleSet) -> Self {
        Evaluator {
            rules,
            env: minijinja::Environment::new(),
            results: BTreeMap::new(),
            events: BTreeMap::new(),
            slots: BTreeMap::new(),
            orphans: Vec::new(),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Swaps rules; the state of rules whose name and condition are
    /// unchanged is kept. Alerts of other rules that were firing resolve
    /// at the next [`evaluate`](Self::evaluate).
    pub fn set_rules(&mut self, rules: RuleSet) {
        let old = std::mem::replace(&mut self.rules, rules);
        let mut slots = std::mem::take(&mut self.slots);
        let mut events = std::mem::take(&mut self.events);
        for rule in &old.rules {
            let kept = self
                .rules
                .rule(&rule.name)
                .is_some_and(|r| r.condition == rule.condition);
            let Some(groups) = slots.remove(&rule.name) else {
                continue;
            };
            if kept {
                self.slots.insert(rule.name.clone(), groups);
                if let Some(ev) = events.remove(&rule.name) {
                    self.events.insert(rule.name.clone(), ev);
                }
            } else {
                for slot in groups.into_values() {
                    // `at` is set when the next evaluate emits it.
                    self.orphans.extend(transition_of(
                        rule,
                        &slot.phase,
                        TransitionKind::Resolved,
                        DateTime::<Utc>::MIN_UTC,
                    ));
                }
            }
        }
    }

    /// The latest result per (probe, vantage) replaces the previous one.
    pub fn observe(&mut self, r: &ProbeResult) {
        self.results
            .insert((r.probe.clone(), r.vantage.clone()), r.clone());
    }

    /// Drops all results of a probe that no longer exists; alerts that
    /// only it kept alive can then resolve.
    pub fn forget_probe(&mut self, probe: &str) {
        self.results.retain(|(p, _), _| p != probe);
        for rule in &self.rules.rules {
            let Condition::Probe(c) = &rule.condition else {
                continue;
            };
            let Some(groups) = self.slots.get_mut(&rule.name) else {
                continue;
            };
            for (key, slot) in groups.iter_mut() {
                let seen = self.results.values().any(|r| {
                    c.matchers.matches(&r.labels) && &group_key(&c.group_by, &r.labels) == key
                });
                if !seen {
                    slot.orphaned = true;
                }
            }
        }
    }

    /// Whether some rule counts events (else [`Evaluator::observe_event`]
    /// does nothing).
    pub fn counts_events(&self) -> bool {
        self.rules
            .rules
            .iter()
            .any(|r| matches!(r.condition, Condition::Event(_)))
    }

    pub fn observe_event(&mut self, e: &Event) {
        let labels = event_labels(e);
        for rule in &self.rules.rules {
            let Condition::Event(c) = &rule.condition else {
                continue;
            };
            if !c.matchers.matches(&labels) {
                continue;
            }
            let window = self
                .events
                .entry(rule.name.clone())
                .or_default()
                .entry(group_key(&c.group_by, &labels))
                .or_default();
            let pos = window.partition_point(|t| *t <= e.at);
            window.insert(pos, e.at);
            // Only the newest `count` can decide whether `count` are recent.
            while window.len() > c.count as usize {
                window.pop_front();
            }
        }
    }

    pub(super) fn probe_truths(
        &self,
        c: &ProbeCondition,
        now: DateTime<Utc>,
    ) -> BTreeMap<GroupKey, Truth> {
        // group key -> vantage -> (fresh matching results, any of them ok)
        let mut seen: BTreeMap<GroupKey, BTreeMap<&str, (usize, bool)>> = BTreeMap::new();
        let mut stale: BTreeMap<GroupKey, ()> = BTreeMap::new();
        for r in self.results.values() {
            if !c.matchers.matches(&r.labels) {
                continue;
            }
            let key = group_key(&c.group_by, &r.labels);
            if now.signed_duration_since(r.at) > delta(r.stale_after) {
                stale.insert(key, ());
                continue;
            }
            let vantage = r
                .labels
                .get("vantage")
                .map(String::as_str)
                .unwrap_or(&r.vantage);
            let e = seen.entry(key).or_default().entry(vantage).or_default();
            e.0 += 1;
            e.1 |= r.ok;
        }
        let mut out: BTreeMap<GroupKey, Truth> =
            stale.into_keys().map(|k| (k, Truth::Unknown)).collect();
        for (key, vantages) in seen {
            let agreeing = vantages.values().filter(|(n, ok)| *n > 0 && !ok).count();
            let vetoed = c.veto && vantages.values().any(|(_, ok)| *ok);
            let t = if agreeing >= c.min_vantage_points as usize && !vetoed {
                Truth::Holds
            } else {
                Truth::False
            };
            out.insert(key, t);
        }
        out
    }

    pub(super) fn event_truths(
        &mut self,
        rule: &str,
        c: &EventCondition,
        now: DateTime<Utc>,
    ) -> BTreeMap<GroupKey, Truth> {
        let mut out = BTreeMap::new();
        let Some(windows) = self.events.get_mut(rule) else {
            return out;
        };
        let horizon = now - delta(c.within);
        windows.retain(|key, times| {
            while times.front().is_some_and(|t| *t < horizon) {
                times.pop_front();
            }
            let t = if times.len() >= c.count as usize {
                Truth::Holds
            } else {
                Truth::False
            };
            out.insert(key.clone(), t);
            !times.is_empty()
        });
        out
    }
}
