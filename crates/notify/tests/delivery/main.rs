//! Delivery against real receivers on 127.0.0.1: an HTTP server (axum)
//! for webhooks and an `aiosmtpd` child process for mail. One test binary,
//! so the suite links once.

mod smtp;
mod webhook;

use chrono::{TimeZone, Utc};
use standby_types::watch::{
    Alert, AlertState, Incident, IncidentState, Labels, Notification, Severity,
};

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A firing `site-down` notification for site1 with one alert and its incident.
pub fn notification(delivery: i64) -> Notification {
    let at = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
    Notification {
        delivery,
        status: "firing".into(),
        group_labels: labels(&[("site", "site1")]),
        alerts: vec![Alert {
            id: 11,
            fingerprint: "3f2a".into(),
            rule: "site-down".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            labels: labels(&[("site", "site1"), ("probe", "sip-front"), ("kind", "sip")]),
            annotations: labels(&[("summary", "site1 does not answer SIP")]),
            active_since: at,
            fired_at: at,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            inhibited_by: None,
            silenced_by: None,
            incident: Some(3),
        }],
        incident: Some(Incident {
            id: 3,
            title: "site1 down".into(),
            severity: Severity::Critical,
            description: "SIP front door of site1 unreachable".into(),
            group: "noc".into(),
            state: IncidentState::New,
            template: None,
            key: Some("site-down/site1".into()),
            labels: labels(&[("site", "site1")]),
            opened_at: at,
            resolved_at: None,
            closed_at: None,
        }),
    }
}

/// A port on 127.0.0.1 that nothing listens on.
pub use standby_testkit::free_port;
