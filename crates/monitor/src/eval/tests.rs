use std::path::Path;

use chrono::TimeZone;

use super::*;

fn t(secs: f64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0).unwrap() + TimeDelta::milliseconds((secs * 1000.0) as i64)
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
fn one_live_vantage_point_that_reaches_the_site_vetoes_site_down_and_a_silent_one_does_not() {
    let mut ev = Evaluator::new(RuleSet::builtin());
    // Two of three vantage points cannot reach site a; the witness can.
    for s in 0..10 {
        let at = t(s as f64);
        ev.observe(&site_probe("controller", at, false));
        ev.observe(&site_probe("agent:b", at, false));
        ev.observe(&site_probe("agent:witness", at, true));
        assert!(ev.evaluate(at).is_empty(), "vetoed at {s}s");
    }
    // The witness goes silent (its heartbeats stop): its last result goes
    // stale and it is no longer live, so the two that remain are all the
    // live vantage points, and they agree.
    for s in 10..25 {
        let at = t(s as f64);
        ev.observe(&site_probe("controller", at, false));
        ev.observe(&site_probe("agent:b", at, false));
        let fired = ev.evaluate(at);
        if s < 20 {
            assert!(fired.is_empty(), "the witness is still live at {s}s");
        } else if !fired.is_empty() {
            assert_eq!(
                kinds(&fired),
                [(TransitionKind::Firing, "site-down".into())]
            );
            assert_eq!(fired[0].active_since, t(20.0));
            return;
        }
    }
    panic!("site-down did not fire once the witness went silent");
}

#[test]
fn without_veto_agreeing_vantage_points_outvote_one_that_reaches_the_target() {
    let src = "rules:\n  - name: down\n    condition:\n      probe: { scope: site }\n      min_vantage_points: 2\n      group_by: [site]\n    for: 0s\n    severity: critical\n";
    let mut ev = Evaluator::new(rules(src));
    ev.observe(&site_probe("controller", t(0.0), false));
    ev.observe(&site_probe("agent:b", t(0.0), false));
    ev.observe(&site_probe("agent:witness", t(0.0), true));
    assert_eq!(
        kinds(&ev.evaluate(t(0.0))),
        [(TransitionKind::Firing, "down".into())]
    );
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

#[test]
fn only_alerts_an_inhibit_rule_targets_may_be_muted() {
    let ev = Evaluator::new(RuleSet::builtin());
    let site_down = labels(&[("alertname", "site-down"), ("scope", "site"), ("site", "a")]);
    let vm_down = labels(&[("alertname", "vnf-down"), ("scope", "vm"), ("site", "a")]);
    assert!(!ev.may_be_inhibited(&site_down));
    assert!(ev.may_be_inhibited(&vm_down));
}
