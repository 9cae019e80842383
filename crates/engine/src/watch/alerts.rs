//! From rule transitions to alert rows, and what happens to an alert after
//! it fires: settling (inhibition, silences, incident, notification),
//! acknowledgement, resolution.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_monitor::{Transition, TransitionKind};
use standby_types::watch::{Alert, AlertState, Event, Labels, Silence};

use super::state::Track;
use crate::controller::Controller;
use crate::error::EngineError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AckRequest {
    /// Who acknowledges.
    #[serde(default)]
    pub by: Option<String>,
}

/// How long a fired alert that another alert could mute waits before it
/// is acted on: long enough for a site-down alert to arrive and mute the
/// VM alerts under it, and for a route's group to fill. An alert no
/// inhibit rule targets does not wait.
fn settle_delay(ctl: &Controller) -> chrono::Duration {
    let longest = ctl
        .cfg()
        .routes
        .iter()
        .map(|r| r.group_wait)
        .max()
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(2));
    chrono::Duration::from_std(longest).unwrap_or(chrono::Duration::seconds(2))
}

fn silenced_by(silences: &[Silence], labels: &Labels, now: DateTime<Utc>) -> Option<i64> {
    silences
        .iter()
        .filter(|s| s.starts_at <= now && now < s.ends_at)
        .find(|s| s.matchers.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .map(|s| s.id)
}

pub(super) async fn tick(ctl: &Arc<Controller>) -> Result<(), EngineError> {
    let now = Utc::now();
    // What inhibits each new alert, asked once for all of them (a site
    // of thousands of VMs down fires thousands at once).
    let transitions: Vec<(Transition, Option<String>, bool)> = {
        let mut ev = ctl.watch.evaluator.lock().expect("evaluator lock");
        let transitions = ev.evaluate(now);
        let inhibitions = ev.inhibitions();
        transitions
            .into_iter()
            .map(|t| match t.kind {
                TransitionKind::Firing => {
                    let muted = inhibitions.by(&t.labels);
                    let may = ev.may_be_inhibited(&t.labels);
                    (t, muted, may)
                }
                TransitionKind::Resolved => (t, None, false),
            })
            .collect()
    };
    for (t, inhibited_by, may_be_inhibited) in transitions {
        match t.kind {
            TransitionKind::Firing => fire(ctl, t, inhibited_by, may_be_inhibited, now).await?,
            TransitionKind::Resolved => resolve(ctl, t).await?,
        }
    }
    refresh_mutes(ctl, now).await?;
    settle_due(ctl, now).await
}

fn event(kind: &str, a: &Alert, message: String) -> Event {
    Event {
        id: 0,
        at: Utc::now(),
        source: format!("alert:{}", a.rule),
        kind: kind.into(),
        severity: a.severity,
        labels: a.labels.clone(),
        vantage: standby_types::watch::CONTROLLER_VANTAGE.into(),
        message,
    }
}

fn describe(a: &Alert) -> String {
    let labels: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{} {}", a.rule, labels.join(" "))
}

/// A new alert, `inhibited_by` that firing alert (or none), which some
/// inhibit rule could mute (`may_be_inhibited`) or none could.
async fn fire(
    ctl: &Arc<Controller>,
    t: Transition,
    inhibited_by: Option<String>,
    may_be_inhibited: bool,
    now: DateTime<Utc>,
) -> Result<(), EngineError> {
    let w = &ctl.watch;
    if w.active
        .lock()
        .expect("active lock")
        .contains_key(&t.fingerprint)
    {
        return Ok(());
    }
    let silenced = silenced_by(&w.silences.lock().expect("silences lock"), &t.labels, now);
    let mut alert = Alert {
        id: 0,
        fingerprint: t.fingerprint.clone(),
        rule: t.rule.clone(),
        severity: t.severity,
        state: AlertState::Firing,
        labels: t.labels.clone(),
        annotations: t.annotations.clone(),
        active_since: t.active_since,
        fired_at: t.at,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        inhibited_by,
        silenced_by: silenced,
        incident: None,
    };
    alert.id = w.repo.insert_alert(&alert).await?;
    let detect = (t.at - t.active_since).num_milliseconds() as f64 / 1000.0;
    tracing::warn!(alert = alert.id, rule = %alert.rule, labels = ?alert.labels, "alert firing");
    w.emit(event(
        "alert.firing",
        &alert,
        format!("{} firing (condition held {detect:.1}s)", describe(&alert)),
    ));
    w.track.lock().expect("track lock").insert(
        t.fingerprint.clone(),
        Track {
            // An alert no other alert can mute (site-down) is acted on at
            // once: waiting would only add to the RTO.
            settle_at: Some(if may_be_inhibited {
                now + settle_delay(ctl)
            } else {
                now
            }),
            incident_template: t.incident.clone(),
            notified: false,
        },
    );
    w.active
        .lock()
        .expect("active lock")
        .insert(t.fingerprint, alert);
    Ok(())
}

async fn resolve(ctl: &Arc<Controller>, t: Transition) -> Result<(), EngineError> {
    let w = &ctl.watch;
    let Some(mut alert) = w.active.lock().expect("active lock").remove(&t.fingerprint) else {
        return Ok(());
    };
    let track = w.track.lock().expect("track lock").remove(&t.fingerprint);
    alert.state = AlertState::Resolved;
    alert.resolved_at = Some(t.at);
    w.repo.update_alert(&alert).await?;
    w.resolved_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(alert = alert.id, rule = %alert.rule, "alert resolved");
    w.emit(event(
        "alert.resolved",
        &alert,
        format!("{} resolved", describe(&alert)),
    ));
    let notified = track.is_some_and(|t| t.notified)
        && alert.inhibited_by.is_none()
        && alert.silenced_by.is_none();
    if notified {
        super::notifier::queue(ctl, "resolved", vec![alert.clone()]).await?;
    }
    if let Some(id) = alert.incident {
        super::incidents::alert_resolved(ctl, id, &alert).await?;
    }
    Ok(())
}

/// Keep `inhibited_by` and `silenced_by` of active alerts current, so the
/// API shows why an alert is quiet.
async fn refresh_mutes(ctl: &Arc<Controller>, now: DateTime<Utc>) -> Result<(), EngineError> {
    let w = &ctl.watch;
    w.silences
        .lock()
        .expect("silences lock")
        .retain(|s| s.ends_at > now);
    let changed: Vec<Alert> = {
        let ev = w.evaluator.lock().expect("evaluator lock");
        let inhibitions = ev.inhibitions();
        let silences = w.silences.lock().expect("silences lock");
        let mut active = w.active.lock().expect("active lock");
        active
            .values_mut()
            .filter_map(|a| {
                let inh = inhibitions.by(&a.labels);
                let sil = silenced_by(&silences, &a.labels, now);
                if inh != a.inhibited_by || sil != a.silenced_by {
                    a.inhibited_by = inh;
                    a.silenced_by = sil;
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect()
    };
    for a in changed {
        w.repo.update_alert(&a).await?;
    }
    Ok(())
}

async fn settle_due(ctl: &Arc<Controller>, now: DateTime<Utc>) -> Result<(), EngineError> {
    let w = &ctl.watch;
    let mut due: Vec<(String, Option<String>)> = {
        let mut track = w.track.lock().expect("track lock");
        track
            .iter_mut()
            .filter(|(_, t)| t.settle_at.is_some_and(|at| at <= now))
            .map(|(fp, t)| {
                t.settle_at = None;
                (fp.clone(), t.incident_template.clone())
            })
            .collect()
    };
    // Alerts that mute others first, so their incident exists when the
    // muted ones settle in the same tick.
    {
        let active = w.active.lock().expect("active lock");
        due.sort_by_key(|(fp, _)| active.get(fp).is_some_and(|a| a.inhibited_by.is_some()));
    }
    let mut to_notify = Vec::new();
    for (fp, template) in due {
        let Some(mut alert) = w.active.lock().expect("active lock").get(&fp).cloned() else {
            continue;
        };
        if let Some(by) = alert.inhibited_by.clone() {
            // The muting alert may not have opened its incident yet: wait
            // for it, so the muted alert lands on that incident's timeline.
            let source_due = w
                .track
                .lock()
                .expect("track lock")
                .get(&by)
                .and_then(|t| t.settle_at);
            if let Some(at) = source_due {
                if let Some(t) = w.track.lock().expect("track lock").get_mut(&fp) {
                    t.settle_at = Some(at + chrono::Duration::milliseconds(250));
                }
                continue;
            }
            muted(ctl, &alert, &by).await?;
            continue;
        }
        if let Some(s) = alert.silenced_by {
            w.emit(event(
                "alert.silenced",
                &alert,
                format!("{} silenced by silence {s}", describe(&alert)),
            ));
            continue;
        }
        if let Some(template) = template {
            let id = super::incidents::open_for_alert(ctl, &alert, &template).await?;
            alert.incident = Some(id);
            w.repo.update_alert(&alert).await?;
            if let Some(a) = w.active.lock().expect("active lock").get_mut(&fp) {
                a.incident = Some(id);
            }
        }
        if let Some(t) = w.track.lock().expect("track lock").get_mut(&fp) {
            t.notified = true;
        }
        w.settled(alert.clone());
        to_notify.push(alert);
    }
    if !to_notify.is_empty() {
        super::notifier::queue(ctl, "firing", to_notify).await?;
    }
    Ok(())
}

/// An alert muted by another: no incident or message of its own, but a
/// line on the timeline of the muting alert's incident.
async fn muted(ctl: &Arc<Controller>, alert: &Alert, by: &str) -> Result<(), EngineError> {
    let w = &ctl.watch;
    let source = w.active.lock().expect("active lock").get(by).cloned();
    let what = source
        .as_ref()
        .map(describe)
        .unwrap_or_else(|| by.to_string());
    w.emit(event(
        "alert.inhibited",
        alert,
        format!("{} muted by {what}", describe(alert)),
    ));
    if let Some(incident) = source.and_then(|s| s.incident) {
        super::incidents::timeline(
            ctl,
            incident,
            "alert",
            "standby",
            &format!("{} (muted by this incident's alert)", describe(alert)),
            Some(alert.id),
        )
        .await?;
    }
    Ok(())
}

/// Acknowledge an active alert: someone is on it. It still resolves by
/// itself when its condition clears.
pub async fn acknowledge(ctl: &Arc<Controller>, id: i64, by: &str) -> Result<Alert, EngineError> {
    let w = &ctl.watch;
    let found = w
        .active
        .lock()
        .expect("active lock")
        .values()
        .find(|a| a.id == id)
        .cloned();
    let Some(mut alert) = found else {
        let a = w.repo.alert(id).await?;
        return Err(EngineError::Conflict(format!(
            "alert {id} is {} and cannot be acknowledged",
            a.state.as_str()
        )));
    };
    if alert.state == AlertState::Acknowledged {
        return Ok(alert);
    }
    alert.state = AlertState::Acknowledged;
    alert.acknowledged_at = Some(Utc::now());
    alert.acknowledged_by = Some(by.to_string());
    w.repo.update_alert(&alert).await?;
    if let Some(a) = w
        .active
        .lock()
        .expect("active lock")
        .get_mut(&alert.fingerprint)
    {
        *a = alert.clone();
    }
    w.emit(event(
        "alert.acknowledged",
        &alert,
        format!("{} acknowledged by {by}", describe(&alert)),
    ));
    if let Some(incident) = alert.incident {
        super::incidents::activate(
            ctl,
            incident,
            by,
            &format!("alert {} acknowledged", describe(&alert)),
        )
        .await?;
    }
    Ok(alert)
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SilenceRequest {
    /// Labels an alert must carry to be muted (at least one).
    pub matchers: BTreeMap<String, String>,
    /// How long, e.g. `2h`.
    pub duration: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: Option<String>,
}

pub async fn add_silence(
    ctl: &Arc<Controller>,
    req: SilenceRequest,
) -> Result<Silence, EngineError> {
    if req.matchers.is_empty() {
        return Err(EngineError::BadRequest(
            "a silence needs at least one matcher; it would mute everything".into(),
        ));
    }
    let d = humantime::parse_duration(&req.duration)
        .map_err(|e| EngineError::BadRequest(format!("bad duration '{}': {e}", req.duration)))?;
    let now = Utc::now();
    let mut s = Silence {
        id: 0,
        matchers: req.matchers,
        comment: req.comment,
        created_by: req.created_by.unwrap_or_else(|| "api".into()),
        starts_at: now,
        ends_at: now
            + chrono::Duration::from_std(d)
                .map_err(|_| EngineError::BadRequest("duration too long".into()))?,
    };
    s.id = ctl.watch.repo.insert_silence(&s).await?;
    ctl.watch
        .silences
        .lock()
        .expect("silences lock")
        .push(s.clone());
    refresh_mutes(ctl, now).await?;
    Ok(s)
}

pub async fn expire_silence(ctl: &Arc<Controller>, id: i64) -> Result<(), EngineError> {
    let now = Utc::now();
    ctl.watch.repo.expire_silence(id, now).await?;
    ctl.watch
        .silences
        .lock()
        .expect("silences lock")
        .retain(|s| s.id != id);
    refresh_mutes(ctl, now).await
}
