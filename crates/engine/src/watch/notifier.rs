//! The notification outbox: alerts are grouped by route into deliveries
//! (one per receiver) that are stored before they are sent, then sent with
//! retries and backoff until delivered or `max_attempts` is used up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use standby_types::watch::{Alert, Delivery, Event, Labels, Notification, Severity};

use crate::controller::Controller;
use crate::error::EngineError;

/// Group alerts by route and group labels and queue one delivery per
/// receiver of each group.
pub(super) async fn queue(
    ctl: &Arc<Controller>,
    status: &str,
    alerts: Vec<Alert>,
) -> Result<(), EngineError> {
    let routes = &ctl.cfg().routes;
    // (route index, group labels) → alerts
    let mut groups: BTreeMap<(usize, Labels), Vec<Alert>> = BTreeMap::new();
    for a in alerts {
        for (idx, route) in standby_notify::routes_for(routes, &a.labels, a.severity) {
            groups
                .entry((idx, standby_notify::group_labels(route, &a.labels)))
                .or_default()
                .push(a.clone());
        }
    }
    let now = Utc::now();
    for ((idx, group_labels), alerts) in groups {
        let incident = match alerts.iter().find_map(|a| a.incident) {
            Some(id) => ctl.watch.repo.incident(id).await.ok(),
            None => None,
        };
        let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
        let n = Notification {
            delivery: 0,
            status: status.to_string(),
            group_labels,
            alerts,
            incident,
        };
        let payload = serde_json::to_value(&n)
            .map_err(|e| EngineError::Internal(format!("unable to encode notification: {e}")))?;
        for receiver in &routes[idx].receivers {
            let d = ctl
                .watch
                .repo
                .insert_delivery(receiver, status, &ids, &payload, now)
                .await?;
            tracing::debug!(delivery = d.id, receiver, status, "notification queued");
        }
    }
    ctl.watch.notify_wake.notify_one();
    Ok(())
}

pub(super) async fn run(ctl: Arc<Controller>) {
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = ctl.watch.notify_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let due = match ctl.watch.repo.due_deliveries(Utc::now(), 32).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("unable to read the notification outbox: {e}");
                continue;
            }
        };
        // Receivers are independent: a slow one must not hold the others.
        let mut set = tokio::task::JoinSet::new();
        for (d, payload) in due {
            let ctl = ctl.clone();
            set.spawn(async move { send(&ctl, d, payload).await });
        }
        while let Some(res) = set.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::warn!("unable to record a delivery: {e}");
            }
        }
    }
}

async fn send(
    ctl: &Arc<Controller>,
    mut d: Delivery,
    payload: serde_json::Value,
) -> Result<(), EngineError> {
    let now = Utc::now();
    d.attempts += 1;
    let result = match (
        ctl.cfg().receivers.get(&d.receiver),
        serde_json::from_value::<Notification>(payload),
    ) {
        (None, _) => Err(standby_notify::DeliveryError {
            message: format!("receiver '{}' is no longer configured", d.receiver),
            retryable: false,
        }),
        (_, Err(e)) => Err(standby_notify::DeliveryError {
            message: format!("stored notification is unreadable: {e}"),
            retryable: false,
        }),
        (Some(r), Ok(mut n)) => {
            n.delivery = d.id;
            standby_notify::deliver(&d.receiver, r, &n).await
        }
    };
    let max = ctl
        .cfg()
        .receivers
        .get(&d.receiver)
        .map_or(1, |r| r.max_attempts());
    let (kind, severity, message) = match result {
        Ok(()) => {
            d.state = "delivered".into();
            d.delivered_at = Some(Utc::now());
            d.next_attempt_at = None;
            d.last_error = None;
            (
                "notification.delivered",
                Severity::Info,
                format!(
                    "{} notification {} delivered to {} (attempt {})",
                    d.status, d.id, d.receiver, d.attempts
                ),
            )
        }
        Err(e) if e.retryable && d.attempts < max => {
            let wait = standby_notify::backoff(d.attempts);
            d.next_attempt_at = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
            d.last_error = Some(e.message.clone());
            (
                "notification.retry",
                Severity::Warning,
                format!(
                    "notification {} to {} failed (attempt {}/{max}), retry in {}: {}",
                    d.id,
                    d.receiver,
                    d.attempts,
                    humantime::format_duration(wait),
                    e.message
                ),
            )
        }
        Err(e) => {
            d.state = "failed".into();
            d.next_attempt_at = None;
            d.last_error = Some(e.message.clone());
            (
                "notification.failed",
                Severity::Error,
                format!(
                    "notification {} to {} given up after {} attempt(s): {}",
                    d.id, d.receiver, d.attempts, e.message
                ),
            )
        }
    };
    ctl.watch.repo.update_delivery(&d).await?;
    let mut labels = Labels::new();
    labels.insert("receiver".into(), d.receiver.clone());
    ctl.watch.emit(Event {
        id: 0,
        at: Utc::now(),
        source: format!("receiver:{}", d.receiver),
        kind: kind.into(),
        severity,
        labels,
        vantage: standby_types::watch::CONTROLLER_VANTAGE.into(),
        message,
    });
    Ok(())
}
