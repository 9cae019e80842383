use std::collections::BTreeSet;

use crate::harness::STANDBY;

/// The README's main command, the automatic path: the disaster raises the
/// site-down alert and the failover runbook brings the VNF back at site 2
/// behind the front door. Of what site 1 acknowledged, the survivors are
/// exactly the registrations before the point used (plus at most the one
/// in flight when the VNF was frozen); everything site 2 acknowledged is
/// there; the incident's timeline shows the runbook's steps.
#[test]
fn demo_survivors_are_exactly_the_registrations_before_the_point() {
    let out = std::process::Command::new(STANDBY)
        .args(["demo", "--json", "--seconds", "5", "--interval", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |k: &str| -> Vec<String> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let acked = list("acknowledged");
    // REGISTERs that timed out promised nothing; set them aside.
    let unacked_survivors: BTreeSet<String> =
        list("unacknowledged_survivors").into_iter().collect();
    let after: BTreeSet<String> = list("acknowledged_after").into_iter().collect();
    assert!(!after.is_empty(), "site 2 acknowledged nothing: {r:#}");
    assert!(list("missing_after_failover").is_empty(), "{r:#}");
    let survived: BTreeSet<String> = list("survived")
        .into_iter()
        .filter(|s| !unacked_survivors.contains(s) && !after.contains(s))
        .collect();
    let in_flight = list("in_flight");
    assert!(acked.len() >= 10, "too few registrations: {}", acked.len());
    assert!(list("missing_before_point").is_empty(), "{r:#}");
    assert!(in_flight.len() <= 1, "{r:#}");
    // Survivors are a prefix of the acknowledged sequence.
    let k = survived.len();
    assert!(k > 0 && k <= acked.len(), "{r:#}");
    let prefix: BTreeSet<String> = acked[..k].iter().cloned().collect();
    assert_eq!(
        survived, prefix,
        "survivors are not the first {k} acknowledged"
    );
    let lost = list("lost_after_point");
    assert_eq!(lost, acked[k..].to_vec());
    assert_eq!(r["ok"], true);
    // Points every second: the newest one that reached site 2 is recent.
    let window = r["data_loss_window_ms"].as_i64().unwrap();
    assert!(window < 5000, "the point used is {window} ms old: {r:#}");
    assert!(r["rto_ms"].as_i64().unwrap() < 30_000, "{r:#}");
    // No human in the loop: the runbook fenced, restored and switched, and
    // its steps are on the incident's timeline.
    // Before the disaster, a drill proved the point restores and answers
    // (the suite runs as root, so the drill's namespace can be made).
    assert_eq!(r["drill"]["ok"], true, "{r:#}");
    assert!(r["drill"]["rto_seconds"].as_f64().is_some(), "{r:#}");
    let timeline = r["timeline"].to_string();
    for step in ["fence", "restore", "traffic"] {
        assert!(
            timeline.contains(step),
            "no {step} step on the timeline: {r:#}"
        );
    }
}
