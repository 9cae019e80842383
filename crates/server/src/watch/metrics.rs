//! Prometheus metrics (OpenMetrics text), built from current state at each
//! scrape: probe results, alerts by state, incidents, point age per VM,
//! agent heartbeats, the notification outbox.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::Utc;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use standby_types::watch::{AlertState, IncidentState};

use crate::controller::Controller;
use crate::error::ServerError;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn fam() -> Family<Labels, FGauge> {
    Family::default()
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn render(ctl: &Arc<Controller>) -> Result<String, ServerError> {
    let mut reg = Registry::default();
    let w = &ctl.watch;

    let up = fam();
    let latency = fam();
    for r in w.probe_states() {
        let mut labels = l(&[
            ("probe", &r.probe),
            ("vantage", &r.vantage),
            ("kind", r.labels.get("kind").map_or("", String::as_str)),
        ]);
        for k in ["site", "vm", "host", "scope"] {
            if let Some(v) = r.labels.get(k) {
                labels.push((k.to_string(), v.clone()));
            }
        }
        up.get_or_create(&labels).set(if r.ok { 1.0 } else { 0.0 });
        latency
            .get_or_create(&labels)
            .set(r.latency_ms as f64 / 1000.0);
    }
    reg.register(
        "standby_probe_up",
        "Whether the probe's latest run succeeded",
        up,
    );
    reg.register(
        "standby_probe_latency_seconds",
        "Duration of the probe's latest run",
        latency,
    );

    let alerts = fam();
    let active = w.active_alerts();
    for state in [AlertState::Firing, AlertState::Acknowledged] {
        let n = active.iter().filter(|a| a.state == state).count();
        alerts
            .get_or_create(&l(&[("state", state.as_str())]))
            .set(n as f64);
    }
    let muted = active
        .iter()
        .filter(|a| a.inhibited_by.is_some() || a.silenced_by.is_some())
        .count();
    alerts
        .get_or_create(&l(&[("state", "muted")]))
        .set(muted as f64);
    reg.register("standby_alerts", "Active alerts by state", alerts);
    let resolved: Counter = Counter::default();
    resolved.inc_by(w.resolved_total.load(std::sync::atomic::Ordering::Relaxed));
    reg.register(
        "standby_alerts_resolved",
        "Alerts resolved since the controller started",
        resolved,
    );

    let incidents = fam();
    let open = w
        .repo
        .incidents(&[IncidentState::New, IncidentState::Active], 10_000)
        .await?;
    for state in [IncidentState::New, IncidentState::Active] {
        let n = open.iter().filter(|i| i.state == state).count();
        incidents
            .get_or_create(&l(&[("state", state.as_str())]))
            .set(n as f64);
    }
    reg.register("standby_incidents", "Open incidents by state", incidents);

    let age = fam();
    let target = fam();
    let points = ctl.repo.points(None).await?;
    let now = Utc::now();
    for (gname, g) in &ctl.cfg.groups {
        if let Some(t) = g.rpo_target {
            target
                .get_or_create(&l(&[("group", gname)]))
                .set(t.as_secs_f64());
        }
        for vm in &g.members {
            if let Some(newest) = points.iter().filter(|p| &p.vm == vm).map(|p| p.time).max() {
                age.get_or_create(&l(&[("group", gname), ("vm", vm)]))
                    .set((now - newest).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
    reg.register(
        "standby_point_age_seconds",
        "Age of the newest recovery point per VM",
        age,
    );
    reg.register(
        "standby_rpo_target_seconds",
        "RPO target of each protection group",
        target,
    );

    let hb = fam();
    for (name, seen) in w.agents_seen() {
        hb.get_or_create(&l(&[("agent", &name), ("site", &seen.site)]))
            .set((now - seen.last_seen).num_milliseconds() as f64 / 1000.0);
    }
    reg.register(
        "standby_agent_heartbeat_age_seconds",
        "Time since each agent's last heartbeat",
        hb,
    );

    crate::frontdoor::register_metrics(&mut reg, &ctl.frontdoor);

    let mut out = String::new();
    encode(&mut out, &reg)
        .map_err(|e| ServerError::Internal(format!("unable to encode metrics: {e}")))?;
    Ok(out)
}
