//! Prometheus Alertmanager's webhook payload, version 4, as Alertmanager
//! posts it to a `webhook_configs` receiver (`POST /api/v1/alertmanager`).
//! Fields standby does not use are still typed, so the OpenAPI document
//! describes the whole payload; fields Alertmanager may add later are
//! ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::watch::Labels;

/// The only payload version standby reads.
pub const WEBHOOK_VERSION: &str = "4";

/// Firing or resolved: of a notification (the group) and of each alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One notification: a group of alerts that share `groupLabels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// `"4"`.
    pub version: String,
    /// Identifies the group the alerts belong to (for deduplication).
    #[serde(default)]
    pub group_key: String,
    /// Alerts left out because the receiver's `max_alerts` was reached.
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `resolved` only when every alert of the group is.
    pub status: AlertStatus,
    /// The Alertmanager receiver that sent this.
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: Labels,
    #[serde(default)]
    pub common_labels: Labels,
    #[serde(default)]
    pub common_annotations: Labels,
    /// The Alertmanager's own URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    pub status: AlertStatus,
    /// Identify the alert; `alertname` among them.
    pub labels: Labels,
    /// `summary` and `description` by convention.
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// `0001-01-01T00:00:00Z` while the alert fires.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Where the alert came from (the Prometheus expression's URL).
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's identity of the alert (a hash of its labels).
    #[serde(default)]
    pub fingerprint: String,
}

/// What the controller made of a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookReceipt {
    /// Events recorded: one per alert.
    pub events: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification as Alertmanager 0.25 sends it.
    const SAMPLE: &str = r#"{
      "receiver": "standby", "status": "firing",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "StandbyUp", "instance": "127.0.0.1:7780", "job": "standby", "severity": "critical"},
        "annotations": {"summary": "standby is up"},
        "startsAt": "2026-12-05T08:00:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up", "fingerprint": "c0ffee"
      }],
      "groupLabels": {"alertname": "StandbyUp"},
      "commonLabels": {"alertname": "StandbyUp"}, "commonAnnotations": {},
      "externalURL": "http://127.0.0.1:9093", "version": "4",
      "groupKey": "{}:{alertname=\"StandbyUp\"}", "truncatedAlerts": 0
    }"#;

    #[test]
    fn alertmanagers_payload_reads_and_writes_back_the_same() {
        let w: Webhook = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(w.version, WEBHOOK_VERSION);
        assert_eq!(w.status, AlertStatus::Firing);
        assert_eq!(w.external_url, "http://127.0.0.1:9093");
        let a = &w.alerts[0];
        assert_eq!(a.labels["alertname"], "StandbyUp");
        assert_eq!(a.fingerprint, "c0ffee");
        assert_eq!(a.generator_url, "http://127.0.0.1:9090/graph?g0.expr=up");
        assert_eq!(a.ends_at.unwrap().timestamp(), -62135596800);
        let back: Webhook = serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(back, w);
    }
}
