//! Advancing the state machines: pending, firing, resolved; the alerts
//! firing now and those restored after a restart.

use chrono::{DateTime, Utc};
use standby_types::watch::{Labels, Severity};

use crate::rules::{Condition, Rule};

use super::{
    AlertSlot, Evaluator, GroupKey, Phase, Transition, TransitionKind, Truth, delta, fingerprint,
    group_key, transition_of,
};

impl Evaluator {
    /// Advances to `now`: returns the alerts that started firing or
    /// resolved.
    pub fn evaluate(&mut self, now: DateTime<Utc>) -> Vec<Transition> {
        let mut out: Vec<Transition> = std::mem::take(&mut self.orphans)
            .into_iter()
            .map(|mut t| {
                t.at = now;
                t
            })
            .collect();
        // Taken out for the loop (the loop needs `&mut self`), put back after.
        let rules = std::mem::take(&mut self.rules.rules);
        for rule in &rules {
            let truths = match &rule.condition {
                Condition::Probe(c) => self.probe_truths(c, now),
                Condition::Event(c) => self.event_truths(&rule.name, c, now),
            };
            let mut groups = self.slots.remove(&rule.name).unwrap_or_default();
            let mut kept = std::collections::BTreeMap::new();
            // Groups with evidence, then groups with state only.
            for (key, mut truth) in truths {
                let slot = groups.remove(&key);
                if truth == Truth::Unknown && slot.as_ref().is_some_and(|s| s.orphaned) {
                    truth = Truth::False;
                }
                if let Some(s) = self.advance(rule, &key, slot, truth, false, now, &mut out) {
                    kept.insert(key, s);
                }
            }
            for (key, slot) in groups {
                let (truth, orphaned) = if slot.orphaned {
                    (Truth::False, true)
                } else {
                    (Truth::Unknown, false)
                };
                if let Some(s) =
                    self.advance(rule, &key, Some(slot), truth, orphaned, now, &mut out)
                {
                    kept.insert(key, s);
                }
            }
            let groups = kept;
            if !groups.is_empty() {
                self.slots.insert(rule.name.clone(), groups);
            }
        }
        self.rules.rules = rules;
        out
    }

    /// One group's state machine, one step: its slot after `truth`.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &self,
        rule: &Rule,
        key: &GroupKey,
        slot: Option<AlertSlot>,
        truth: Truth,
        orphaned: bool,
        now: DateTime<Utc>,
        out: &mut Vec<Transition>,
    ) -> Option<AlertSlot> {
        let next = match (slot.map(|s| s.phase), truth) {
            (None, Truth::Holds) if rule.for_.is_zero() => {
                Some(self.fire(rule, key, now, now, out))
            }
            (None, Truth::Holds) => Some(Phase::Pending { since: now }),
            (None, _) => None,
            (Some(Phase::Pending { since }), Truth::Holds) => {
                if now.signed_duration_since(since) >= delta(rule.for_) {
                    Some(self.fire(rule, key, since, now, out))
                } else {
                    Some(Phase::Pending { since })
                }
            }
            // Pending that lapses (or loses its evidence) emits nothing.
            (Some(Phase::Pending { .. }), _) => None,
            (Some(mut p @ Phase::Firing { .. }), truth) => {
                let mut resolve = false;
                if let Phase::Firing { clear_since, .. } = &mut p {
                    match truth {
                        Truth::Holds => *clear_since = None,
                        Truth::Unknown => {}
                        Truth::False => {
                            let since = *clear_since.get_or_insert(now);
                            resolve = now.signed_duration_since(since) >= delta(rule.clear_for);
                        }
                    }
                }
                if resolve {
                    out.extend(transition_of(rule, &p, TransitionKind::Resolved, now));
                    tracing::info!(rule = %rule.name, ?key, "alert resolved");
                    None
                } else {
                    Some(p)
                }
            }
        };
        next.map(|phase| AlertSlot { phase, orphaned })
    }

    fn alert_labels(rule: &Rule, key: &GroupKey) -> Labels {
        let mut labels = rule.labels.clone();
        for (k, v) in rule.condition.group_by().iter().zip(key) {
            labels.insert(k.clone(), v.clone());
        }
        labels.insert("alertname".into(), rule.name.clone());
        labels.insert("severity".into(), rule.severity.as_str().into());
        labels
    }

    pub(super) fn render(
        &self,
        src: &str,
        labels: &Labels,
        annotations: Option<&Labels>,
    ) -> String {
        let ctx = minijinja::context! {
            labels => minijinja::Value::from(labels.clone()),
            annotations => minijinja::Value::from(annotations.cloned().unwrap_or_default()),
        };
        match self.env.render_str(src, ctx) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(template = src, error = %e, "alert template failed to render");
                format!("{src} (template error: {e})")
            }
        }
    }

    fn fire(
        &self,
        rule: &Rule,
        key: &GroupKey,
        active_since: DateTime<Utc>,
        now: DateTime<Utc>,
        out: &mut Vec<Transition>,
    ) -> Phase {
        let labels = Self::alert_labels(rule, key);
        let annotations = rule
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), self.render(v, &labels, None)))
            .collect();
        let fingerprint = fingerprint(&rule.name, &labels);
        let phase = Phase::Firing {
            active_since,
            fired_at: now,
            clear_since: None,
            labels,
            annotations,
            fingerprint,
        };
        out.extend(transition_of(rule, &phase, TransitionKind::Firing, now));
        tracing::info!(rule = %rule.name, ?key, "alert firing");
        phase
    }

    /// Alerts firing now (`at` is when they fired).
    pub fn firing(&self) -> Vec<Transition> {
        let mut out = Vec::new();
        for rule in &self.rules.rules {
            for slot in self
                .slots
                .get(&rule.name)
                .into_iter()
                .flat_map(|g| g.values())
            {
                if let Phase::Firing { fired_at, .. } = &slot.phase {
                    out.extend(transition_of(
                        rule,
                        &slot.phase,
                        TransitionKind::Firing,
                        *fired_at,
                    ));
                }
            }
        }
        out
    }

    /// After a restart: alerts that were firing continue without a second
    /// Firing transition. Alerts of rules that no longer exist resolve at
    /// the next [`evaluate`](Self::evaluate).
    pub fn restore_firing(&mut self, alerts: &[(String, Labels, DateTime<Utc>, DateTime<Utc>)]) {
        for (rule_name, labels, active_since, fired_at) in alerts {
            let Some(rule) = self.rules.rule(rule_name).cloned() else {
                self.orphans.push(Transition {
                    kind: TransitionKind::Resolved,
                    fingerprint: fingerprint(rule_name, labels),
                    rule: rule_name.clone(),
                    severity: labels
                        .get("severity")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(Severity::Warning),
                    labels: labels.clone(),
                    annotations: Labels::new(),
                    active_since: *active_since,
                    at: *fired_at,
                    incident: None,
                });
                continue;
            };
            let key = group_key(rule.condition.group_by(), labels);
            let annotations = rule
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), self.render(v, labels, None)))
                .collect();
            let phase = Phase::Firing {
                active_since: *active_since,
                fired_at: *fired_at,
                clear_since: None,
                labels: labels.clone(),
                annotations,
                fingerprint: fingerprint(rule_name, labels),
            };
            self.slots.entry(rule.name.clone()).or_default().insert(
                key,
                AlertSlot {
                    phase,
                    orphaned: false,
                },
            );
        }
    }
}
