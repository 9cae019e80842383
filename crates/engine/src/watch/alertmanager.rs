//! Alerts from Prometheus's Alertmanager as standby events: each alert of a
//! webhook notification (version 4) becomes one event, which rules with an
//! event condition turn into standby alerts like any other event (and
//! those start runbooks by their alert trigger).
//!
//! An event: kind `alertmanager.firing` or `alertmanager.resolved`, source
//! `alertmanager`, the alert's labels plus `status` and `fingerprint`,
//! severity from the `severity` label when it is one of standby's
//! (`warning` otherwise; `info` when resolved), the `summary` (else
//! `description`) annotation as its message. Its time is when it arrived:
//! Alertmanager repeats a firing alert every `repeat_interval`, and an
//! event condition counts arrivals within its window.

use chrono::{DateTime, Utc};
use standby_types::alertmanager::{AlertStatus, WEBHOOK_VERSION, Webhook, WebhookAlert};
use standby_types::watch::{CONTROLLER_VANTAGE, Event, Severity};

use crate::controller::Controller;
use crate::error::EngineError;

/// The events' source.
pub const SOURCE: &str = "alertmanager";

/// The events of a notification, one per alert, at `at`.
pub fn events(hook: &Webhook, at: DateTime<Utc>) -> Result<Vec<Event>, EngineError> {
    if hook.version != WEBHOOK_VERSION {
        return Err(EngineError::BadRequest(format!(
            "unsupported Alertmanager webhook version '{}' (standby reads version {WEBHOOK_VERSION})",
            hook.version
        )));
    }
    Ok(hook.alerts.iter().map(|a| event(a, at)).collect())
}

fn event(a: &WebhookAlert, at: DateTime<Utc>) -> Event {
    let mut labels = a.labels.clone();
    labels.insert("status".into(), a.status.as_str().into());
    if !a.fingerprint.is_empty() {
        labels.insert("fingerprint".into(), a.fingerprint.clone());
    }
    let severity = match a.status {
        AlertStatus::Resolved => Severity::Info,
        AlertStatus::Firing => a
            .labels
            .get("severity")
            .and_then(|s| s.parse().ok())
            .unwrap_or(Severity::Warning),
    };
    let name = a.labels.get("alertname").map_or("alert", String::as_str);
    let message = match a
        .annotations
        .get("summary")
        .or_else(|| a.annotations.get("description"))
    {
        Some(text) => format!("{name} {}: {text}", a.status.as_str()),
        None => format!("{name} {}", a.status.as_str()),
    };
    Event {
        id: 0,
        at,
        source: SOURCE.into(),
        kind: format!("alertmanager.{}", a.status.as_str()),
        severity,
        labels,
        vantage: CONTROLLER_VANTAGE.into(),
        message,
    }
}

/// Record a notification's events; how many.
pub fn receive(ctl: &Controller, hook: &Webhook) -> Result<usize, EngineError> {
    let events = events(hook, Utc::now())?;
    let n = events.len();
    for e in events {
        ctl.watch.emit(e);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(version: &str, alerts: serde_json::Value) -> Webhook {
        serde_json::from_value(serde_json::json!({
            "version": version, "status": "firing", "receiver": "standby",
            "alerts": alerts,
        }))
        .unwrap()
    }

    #[test]
    fn each_alert_is_an_event_with_its_labels_severity_and_summary() {
        let h = hook(
            "4",
            serde_json::json!([
                {"status": "firing", "fingerprint": "f1",
                 "labels": {"alertname": "SiteDown", "site": "site1", "severity": "critical"},
                 "annotations": {"summary": "site1 is gone", "description": "long"}},
                {"status": "firing",
                 "labels": {"alertname": "Odd", "severity": "page"},
                 "annotations": {"description": "only a description"}},
                {"status": "resolved", "labels": {"alertname": "Old", "severity": "critical"}}
            ]),
        );
        let at = Utc::now();
        let ev = events(&h, at).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].kind, "alertmanager.firing");
        assert_eq!(ev[0].source, "alertmanager");
        assert_eq!(ev[0].at, at);
        assert_eq!(ev[0].severity, Severity::Critical);
        assert_eq!(ev[0].labels["site"], "site1");
        assert_eq!(ev[0].labels["alertname"], "SiteDown");
        assert_eq!(ev[0].labels["status"], "firing");
        assert_eq!(ev[0].labels["fingerprint"], "f1");
        assert_eq!(ev[0].message, "SiteDown firing: site1 is gone");
        // A severity standby does not know is a warning; no fingerprint,
        // no label.
        assert_eq!(ev[1].severity, Severity::Warning);
        assert_eq!(ev[1].labels["severity"], "page");
        assert!(!ev[1].labels.contains_key("fingerprint"));
        assert_eq!(ev[1].message, "Odd firing: only a description");
        assert_eq!(ev[2].kind, "alertmanager.resolved");
        assert_eq!(ev[2].severity, Severity::Info);
        assert_eq!(ev[2].message, "Old resolved");
    }

    /// A rule with an event condition raises a standby alert from a
    /// received notification at the next tick, with the labels it groups
    /// by.
    #[tokio::test]
    async fn a_rule_with_an_event_condition_fires_on_a_received_alert() {
        let dir = tempfile::tempdir().unwrap();
        let rules = r#"
rules:
  - name: prom-site-down
    condition:
      event: { kind: alertmanager.firing, alertname: SiteDown }
      within: 10m
      group_by: [site]
    severity: critical
"#;
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let text = r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "data"
builtin_rules = false
rules = ["rules.yaml"]
[sites.site1]
[hosts.h1]
site = "site1"
driver = "process"
disk_dir = "disks"
"#;
        std::fs::write(dir.path().join("standby.toml"), text).unwrap();
        let cfg = standby_types::config::Config::load(&dir.path().join("standby.toml")).unwrap();
        let ctl = Controller::open(cfg).await.unwrap();
        let other = hook(
            "4",
            serde_json::json!([{"status": "firing", "labels": {"alertname": "Other", "site": "site2"}}]),
        );
        assert_eq!(receive(&ctl, &other).unwrap(), 1);
        super::super::alerts::tick(&ctl).await.unwrap();
        assert!(ctl.watch.active_alerts().is_empty());
        let down = hook(
            "4",
            serde_json::json!([{"status": "firing", "labels": {"alertname": "SiteDown", "site": "site1"}}]),
        );
        receive(&ctl, &down).unwrap();
        super::super::alerts::tick(&ctl).await.unwrap();
        let active = ctl.watch.active_alerts();
        assert_eq!(active.len(), 1, "{active:?}");
        assert_eq!(active[0].rule, "prom-site-down");
        assert_eq!(active[0].labels["site"], "site1");
        ctl.shutdown().await;
    }

    #[test]
    fn another_version_is_refused() {
        let e = events(&hook("3", serde_json::json!([])), Utc::now()).unwrap_err();
        assert!(matches!(e, EngineError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("version '3'"), "{e}");
    }
}
