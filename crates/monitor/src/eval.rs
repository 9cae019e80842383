//! The evaluator: a state machine per (rule, group key), fed probe results
//! and events, advanced by [`Evaluator::evaluate`] with the time passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use standby_types::watch::{Event, Labels, ProbeResult, Severity};

use crate::rules::{Condition, EventCondition, ProbeCondition, Rule, RuleSet};

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

    fn probe_truths(&self, c: &ProbeCondition, now: DateTime<Utc>) -> BTreeMap<GroupKey, Truth> {
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
            let t = if agreeing >= c.min_vantage_points as usize {
                Truth::Holds
            } else {
                Truth::False
            };
            out.insert(key, t);
        }
        out
    }

    fn event_truths(
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
            // Groups with evidence and groups with state.
            let mut keys: Vec<GroupKey> = truths.keys().cloned().collect();
            keys.extend(groups.keys().filter(|k| !truths.contains_key(*k)).cloned());
            for key in keys {
                let mut truth = truths.get(&key).copied().unwrap_or(Truth::Unknown);
                let slot = groups.remove(&key);
                if truth == Truth::Unknown && slot.as_ref().is_some_and(|s| s.orphaned) {
                    truth = Truth::False;
                }
                let orphaned =
                    slot.as_ref().is_some_and(|s| s.orphaned) && !truths.contains_key(&key);
                let next = match (slot.map(|s| s.phase), truth) {
                    (None, Truth::Holds) if rule.for_.is_zero() => {
                        Some(self.fire(rule, &key, now, now, &mut out))
                    }
                    (None, Truth::Holds) => Some(Phase::Pending { since: now }),
                    (None, _) => None,
                    (Some(Phase::Pending { since }), Truth::Holds) => {
                        if now.signed_duration_since(since) >= delta(rule.for_) {
                            Some(self.fire(rule, &key, since, now, &mut out))
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
                                    resolve =
                                        now.signed_duration_since(since) >= delta(rule.clear_for);
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
                if let Some(phase) = next {
                    groups.insert(key, AlertSlot { phase, orphaned });
                }
            }
            if !groups.is_empty() {
                self.slots.insert(rule.name.clone(), groups);
            }
        }
        self.rules.rules = rules;
        out
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

    fn render(&self, src: &str, labels: &Labels, annotations: Option<&Labels>) -> String {
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

    /// Fingerprint of a firing alert that inhibits an alert with these
    /// labels (never the alert itself).
    pub fn inhibited_by(&self, labels: &Labels) -> Option<String> {
        for inhibit in &self.rules.inhibit {
            if !inhibit.target.matches(labels) {
                continue;
            }
            for groups in self.slots.values() {
                for slot in groups.values() {
                    let Phase::Firing {
                        labels: source,
                        fingerprint,
                        ..
                    } = &slot.phase
                    else {
                        continue;
                    };
                    if source == labels || !inhibit.source.matches(source) {
                        continue;
                    }
                    if inhibit.equal.iter().all(|l| source.get(l) == labels.get(l)) {
                        return Some(fingerprint.clone());
                    }
                }
            }
        }
        None
    }

    /// Renders an incident template for an alert. The key defaults to the
    /// template name and the alert's group labels, so alerts of the same
    /// group share an incident.
    pub fn render_incident(
        &self,
        template: &str,
        alert_labels: &Labels,
        annotations: &Labels,
    ) -> Option<RenderedIncident> {
        let t = self.rules.incident_templates.get(template)?;
        let r = |src: &str| self.render(src, alert_labels, Some(annotations));
        let key = match &t.key {
            Some(k) => r(k),
            None => {
                let group_by: Vec<String> = alert_labels
                    .get("alertname")
                    .and_then(|a| self.rules.rule(a))
                    .map(|rule| rule.condition.group_by().to_vec())
                    .unwrap_or_else(|| {
                        alert_labels
                            .keys()
                            .filter(|k| *k != "alertname" && *k != "severity")
                            .cloned()
                            .collect()
                    });
                let parts: Vec<String> = group_by
                    .iter()
                    .map(|k| {
                        format!(
                            "{k}={}",
                            alert_labels.get(k).map(String::as_str).unwrap_or("")
                        )
                    })
                    .collect();
                format!("{template}:{}", parts.join(","))
            }
        };
        Some(RenderedIncident {
            title: r(&t.title),
            description: r(&t.description),
            severity: t.severity,
            group: r(&t.group),
            key,
        })
    }
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
mod tests {
    use std::path::Path;

    use chrono::TimeZone;

    use super::*;

    fn t(secs: f64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
            + TimeDelta::milliseconds((secs * 1000.0) as i64)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn result(
        probe: &str,
        vantage: &str,
        at: DateTime<Utc>,
        ok: bool,
        extra: &[(&str, &str)],
    ) -> ProbeResult {
        let mut l = labels(extra);
        l.insert("probe".into(), probe.into());
        l.insert("vantage".into(), vantage.into());
        ProbeResult {
            probe: probe.into(),
            vantage: vantage.into(),
            at,
            ok,
            latency_ms: 1,
            detail: String::new(),
            labels: l,
            stale_after: Duration::from_secs(10),
        }
    }

    fn site_probe(vantage: &str, at: DateTime<Utc>, ok: bool) -> ProbeResult {
        result(
            "site-a-gw",
            vantage,
            at,
            ok,
            &[("scope", "site"), ("site", "a"), ("kind", "tcp")],
        )
    }

    fn rules(src: &str) -> RuleSet {
        RuleSet::parse(src, Path::new("test.yaml")).unwrap()
    }

    fn kinds(ts: &[Transition]) -> Vec<(TransitionKind, String)> {
        ts.iter().map(|t| (t.kind, t.rule.clone())).collect()
    }

    #[test]
    fn site_down_needs_two_vantage_points_and_for() {
        let mut ev = Evaluator::new(RuleSet::builtin());
        ev.observe(&site_probe("controller", t(0.0), false));
        ev.observe(&site_probe("agent:b", t(0.0), true));
        assert!(ev.evaluate(t(0.0)).is_empty());
        assert!(
            ev.evaluate(t(5.0)).is_empty(),
            "one vantage failing is no site-down"
        );

        ev.observe(&site_probe("agent:b", t(6.0), false));
        ev.observe(&site_probe("controller", t(6.0), false));
        assert!(ev.evaluate(t(6.0)).is_empty(), "pending");
        assert!(ev.evaluate(t(7.0)).is_empty(), "still pending");
        let fired = ev.evaluate(t(8.0));
        assert_eq!(
            kinds(&fired),
            [(TransitionKind::Firing, "site-down".to_string())]
        );
        let a = &fired[0];
        assert_eq!(a.active_since, t(6.0));
        assert_eq!(a.at, t(8.0));
        assert_eq!(
            a.labels,
            labels(&[
                ("alertname", "site-down"),
                ("severity", "critical"),
                ("scope", "site"),
                ("site", "a")
            ])
        );
        assert_eq!(a.annotations["summary"], "site a is unreachable");
        assert_eq!(a.incident.as_deref(), Some("site-outage"));
        assert_eq!(a.fingerprint, fingerprint("site-down", &a.labels));
        assert_eq!(ev.firing().len(), 1);
        assert_eq!(ev.firing()[0].at, t(8.0));
        assert!(ev.evaluate(t(9.0)).is_empty(), "fires once");
    }

    #[test]
    fn a_vantage_point_that_still_sees_the_site_prevents_site_down() {
        let mut ev = Evaluator::new(RuleSet::builtin());
        for s in 0..20 {
            let at = t(s as f64);
            // agent:b's link is cut: its probes of site a fail ...
            ev.observe(&site_probe("agent:b", at, false));
            // ... but the controller still reaches site a.
            ev.observe(&site_probe("controller", at, true));
            assert!(ev.evaluate(at).is_empty());
        }
        // Two probes from the same vantage: one ok means it still sees it.
        ev.observe(&result(
            "site-a-web",
            "controller",
            t(20.0),
            false,
            &[("scope", "site"), ("site", "a")],
        ));
        ev.observe(&site_probe("agent:b", t(20.0), false));
        assert!(ev.evaluate(t(20.0)).is_empty());
        assert!(ev.evaluate(t(25.0)).is_empty());
    }

    #[test]
    fn stale_results_are_no_evidence() {
        let mut ev = Evaluator::new(RuleSet::builtin());
        // Old failing results: stale at t=20, so no alert.
        ev.observe(&site_probe("controller", t(0.0), false));
        ev.observe(&site_probe("agent:b", t(0.0), false));
        assert!(ev.evaluate(t(20.0)).is_empty());
        assert!(ev.evaluate(t(30.0)).is_empty());

        // Fresh failures fire; when they go stale the alert keeps firing.
        ev.observe(&site_probe("controller", t(30.0), false));
        ev.observe(&site_probe("agent:b", t(30.0), false));
        ev.evaluate(t(30.0));
        assert_eq!(ev.evaluate(t(32.0)).len(), 1);
        assert!(
            ev.evaluate(t(60.0)).is_empty(),
            "stale evidence does not resolve"
        );
        assert_eq!(ev.firing().len(), 1);

        // A fresh ok result resolves after clear_for (5s).
        ev.observe(&site_probe("controller", t(61.0), true));
        assert!(ev.evaluate(t(61.0)).is_empty());
        assert!(ev.evaluate(t(65.0)).is_empty());
        let r = ev.evaluate(t(66.0));
        assert_eq!(
            kinds(&r),
            [(TransitionKind::Resolved, "site-down".to_string())]
        );
        assert_eq!(r[0].at, t(66.0));
        assert_eq!(r[0].active_since, t(30.0));
        assert!(ev.firing().is_empty());
    }

    const FLAP: &str = "\
rules:
  - name: svc-down
    condition:
      probe: { kind: tcp }
      group_by: [vm]
    for: 2s
    clear_for: 5s
    severity: critical
";

    fn svc(at: DateTime<Utc>, ok: bool) -> ProbeResult {
        result(
            "svc",
            "controller",
            at,
            ok,
            &[("kind", "tcp"), ("vm", "vm1")],
        )
    }

    #[test]
    fn flapping_gives_one_alert() {
        let mut ev = Evaluator::new(rules(FLAP));
        let mut all = Vec::new();
        // Steady failure: fires at t=2.
        for s in 0..4 {
            ev.observe(&svc(t(s as f64), false));
            all.extend(ev.evaluate(t(s as f64)));
            all.extend(ev.evaluate(t(s as f64 + 0.5)));
        }
        // Then fail/ok alternating every 1s for 30s.
        for s in 4..34 {
            ev.observe(&svc(t(s as f64), s % 2 == 1));
            all.extend(ev.evaluate(t(s as f64)));
            all.extend(ev.evaluate(t(s as f64 + 0.5)));
        }
        assert_eq!(
            kinds(&all),
            [(TransitionKind::Firing, "svc-down".to_string())]
        );
        assert_eq!(all[0].at, t(2.0));
        // Then steady ok: resolves once, 5s after the last failure went.
        for s in 34..60 {
            ev.observe(&svc(t(s as f64), true));
            all.extend(ev.evaluate(t(s as f64)));
        }
        assert_eq!(
            kinds(&all),
            [
                (TransitionKind::Firing, "svc-down".to_string()),
                (TransitionKind::Resolved, "svc-down".to_string())
            ]
        );
        // t=33 was ok (odd), the last failure was seen at t=32.5.
        assert_eq!(all[1].at, t(38.0));
    }

    #[test]
    fn flapping_shorter_than_for_never_fires() {
        let mut ev = Evaluator::new(rules(FLAP));
        for s in 0..30 {
            ev.observe(&svc(t(s as f64), s % 2 == 1));
            assert!(ev.evaluate(t(s as f64)).is_empty());
            assert!(ev.evaluate(t(s as f64 + 0.5)).is_empty());
        }
    }

    #[test]
    fn inhibition_by_site_down() {
        let mut ev = Evaluator::new(RuleSet::builtin());
        let vnf = |v: &str, at, ok| {
            result(
                "vm1-sip",
                v,
                at,
                ok,
                &[
                    ("scope", "vm"),
                    ("kind", "sip"),
                    ("site", "a"),
                    ("vm", "vm1"),
                ],
            )
        };
        ev.observe(&vnf("controller", t(0.0), false));
        ev.evaluate(t(0.0));
        let fired = ev.evaluate(t(2.0));
        assert_eq!(
            kinds(&fired),
            [(TransitionKind::Firing, "vnf-down".to_string())]
        );
        let vnf_labels = fired[0].labels.clone();
        assert_eq!(vnf_labels["scope"], "vm");
        assert_eq!(ev.inhibited_by(&vnf_labels), None, "no site-down yet");

        ev.observe(&site_probe("controller", t(3.0), false));
        ev.observe(&site_probe("agent:b", t(3.0), false));
        ev.evaluate(t(3.0));
        let site = ev.evaluate(t(5.0));
        assert_eq!(
            kinds(&site),
            [(TransitionKind::Firing, "site-down".to_string())]
        );
        assert_eq!(
            ev.inhibited_by(&vnf_labels),
            Some(site[0].fingerprint.clone())
        );
        assert_eq!(ev.inhibited_by(&site[0].labels), None, "never itself");
        let mut other_site = vnf_labels.clone();
        other_site.insert("site".into(), "b".into());
        assert_eq!(ev.inhibited_by(&other_site), None, "equal: [site]");
    }

    #[test]
    fn fingerprints_are_stable_under_label_order() {
        let a: Labels = labels(&[("site", "a"), ("vm", "vm1"), ("alertname", "x")]);
        let b: Labels = labels(&[("alertname", "x"), ("vm", "vm1"), ("site", "a")]);
        assert_eq!(fingerprint("x", &a), fingerprint("x", &b));
        assert_eq!(fingerprint("x", &a).len(), 16);
        assert_ne!(fingerprint("x", &a), fingerprint("y", &a));
        let c = labels(&[("site", "a"), ("vm", "vm2"), ("alertname", "x")]);
        assert_ne!(fingerprint("x", &a), fingerprint("x", &c));
    }

    #[test]
    fn set_rules_keeps_state_of_unchanged_rules() {
        let mut ev = Evaluator::new(rules(FLAP));
        ev.observe(&svc(t(0.0), false));
        ev.evaluate(t(0.0));
        // Same condition, other severity: the pending state survives.
        ev.set_rules(rules(
            &FLAP.replace("severity: critical", "severity: error"),
        ));
        let fired = ev.evaluate(t(2.0));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].active_since, t(0.0));
        assert_eq!(fired[0].severity, Severity::Error);

        // A changed condition starts over; its firing alert resolves.
        ev.set_rules(rules(
            &FLAP.replace("group_by: [vm]", "group_by: [vm, site]"),
        ));
        let r = ev.evaluate(t(3.0));
        assert_eq!(
            kinds(&r),
            [(TransitionKind::Resolved, "svc-down".to_string())]
        );
        assert_eq!(r[0].at, t(3.0));
        assert!(ev.evaluate(t(4.0)).is_empty(), "pending again from t=3");
        assert_eq!(ev.evaluate(t(5.0)).len(), 1);
    }

    #[test]
    fn restored_alerts_continue_without_a_second_firing() {
        let mut ev = Evaluator::new(rules(FLAP));
        let l = labels(&[
            ("alertname", "svc-down"),
            ("severity", "critical"),
            ("vm", "vm1"),
        ]);
        ev.restore_firing(&[("svc-down".into(), l.clone(), t(-10.0), t(-8.0))]);
        // No results yet after the restart: stays firing.
        assert!(ev.evaluate(t(0.0)).is_empty());
        assert!(ev.evaluate(t(20.0)).is_empty());
        ev.observe(&svc(t(21.0), false));
        assert!(ev.evaluate(t(21.0)).is_empty(), "no second Firing");
        let f = ev.firing();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].fingerprint, fingerprint("svc-down", &l));
        assert_eq!(f[0].at, t(-8.0));
        ev.observe(&svc(t(22.0), true));
        ev.evaluate(t(22.0));
        let r = ev.evaluate(t(27.0));
        assert_eq!(
            kinds(&r),
            [(TransitionKind::Resolved, "svc-down".to_string())]
        );
        assert_eq!(r[0].active_since, t(-10.0));
    }

    #[test]
    fn forgotten_probe_lets_its_alert_resolve() {
        let mut ev = Evaluator::new(rules(FLAP));
        ev.observe(&svc(t(0.0), false));
        ev.evaluate(t(0.0));
        assert_eq!(ev.evaluate(t(2.0)).len(), 1);
        ev.forget_probe("svc");
        assert!(ev.evaluate(t(3.0)).is_empty());
        assert_eq!(ev.evaluate(t(8.0)).len(), 1);
        assert!(ev.firing().is_empty());
    }

    const EVENTS: &str = "\
rules:
  - name: agent-errors
    condition:
      event: { kind: agent.report, severity: error }
      count: 3
      within: 30s
      group_by: [agent]
    clear_for: 0s
    severity: warning
";

    fn report(at: DateTime<Utc>, agent: &str, severity: Severity) -> Event {
        Event {
            id: 0,
            at,
            source: format!("agent:{agent}"),
            kind: "agent.report".into(),
            severity,
            labels: labels(&[("agent", agent)]),
            vantage: format!("agent:{agent}"),
            message: "disk full".into(),
        }
    }

    #[test]
    fn event_condition_counts_within_a_window() {
        let mut ev = Evaluator::new(rules(EVENTS));
        ev.observe_event(&report(t(0.0), "h1", Severity::Error));
        ev.observe_event(&report(t(10.0), "h1", Severity::Error));
        ev.observe_event(&report(t(11.0), "h1", Severity::Warning)); // no match
        ev.observe_event(&report(t(12.0), "h2", Severity::Error)); // other group
        assert!(ev.evaluate(t(12.0)).is_empty());
        ev.observe_event(&report(t(35.0), "h1", Severity::Error));
        // t=0 is out of the window at 35: only two.
        assert!(ev.evaluate(t(35.0)).is_empty());
        ev.observe_event(&report(t(36.0), "h1", Severity::Error));
        let f = ev.evaluate(t(36.0));
        assert_eq!(
            kinds(&f),
            [(TransitionKind::Firing, "agent-errors".to_string())]
        );
        assert_eq!(f[0].labels["agent"], "h1");
        // The window passes (t=10 drops out at 40.001): resolves.
        let r = ev.evaluate(t(41.0));
        assert_eq!(
            kinds(&r),
            [(TransitionKind::Resolved, "agent-errors".to_string())]
        );
    }

    #[test]
    fn templates_render_and_errors_do_not_panic() {
        let src = "\
rules:
  - name: a
    condition:
      probe: { kind: tcp }
      group_by: [vm]
    severity: warning
    annotations:
      summary: 'vm {{ labels.vm | upper }}'
      broken: '{{ labels.vm + 1 }}'
    incident: t
incident_templates:
  t:
    title: 'VM {{ labels.vm }}: {{ annotations.summary }}'
    severity: error
    group: noc
  k:
    title: x
    severity: info
    group: noc
    key: 'k-{{ labels.vm }}'
";
        let mut ev = Evaluator::new(rules(src));
        ev.observe(&result(
            "p",
            "controller",
            t(0.0),
            false,
            &[("kind", "tcp"), ("vm", "vm1")],
        ));
        let f = ev.evaluate(t(0.0));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].annotations["summary"], "vm VM1");
        assert!(f[0].annotations["broken"].starts_with("{{ labels.vm + 1 }} (template error:"));
        let inc = ev
            .render_incident("t", &f[0].labels, &f[0].annotations)
            .unwrap();
        assert_eq!(inc.title, "VM vm1: vm VM1");
        assert_eq!(inc.severity, Severity::Error);
        assert_eq!(inc.group, "noc");
        assert_eq!(inc.key, "t:vm=vm1");
        assert_eq!(
            ev.render_incident("k", &f[0].labels, &f[0].annotations)
                .unwrap()
                .key,
            "k-vm1"
        );
        assert!(
            ev.render_incident("nope", &f[0].labels, &f[0].annotations)
                .is_none()
        );
    }

    #[test]
    fn missing_group_labels_group_as_empty() {
        let mut ev = Evaluator::new(rules(FLAP));
        ev.observe(&result(
            "p1",
            "controller",
            t(0.0),
            false,
            &[("kind", "tcp")],
        ));
        ev.observe(&result(
            "p2",
            "controller",
            t(0.0),
            false,
            &[("kind", "tcp")],
        ));
        ev.evaluate(t(0.0));
        let f = ev.evaluate(t(2.0));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].labels["vm"], "");
    }
}
