//! The alerts page, and the alert rows the dashboard and incidents share.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde_json::json;
use standby_db::AlertQuery;
use standby_types::watch::{Alert, AlertState};

use crate::auth::Principal;
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::common::{Ctl, ago, fragment_principal, html, page, render, when};

pub(super) struct AlertRow {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) severity: String,
    pub(super) state: String,
    pub(super) labels: Vec<String>,
    pub(super) summary: String,
    pub(super) since: String,
    pub(super) ago: String,
    /// JSON of the silence request muting alerts like this one.
    pub(super) silence: String,
    pub(super) ack: String,
}

pub(super) async fn alert_rows(
    ctl: &Arc<Controller>,
    p: &Principal,
    open_only: bool,
    limit: u32,
) -> Result<Vec<AlertRow>, PageError> {
    let now = Utc::now();
    let states = if open_only {
        vec![AlertState::Firing, AlertState::Acknowledged]
    } else {
        Vec::new()
    };
    let alerts = ctl
        .watch
        .repo()
        .alerts(&AlertQuery {
            states,
            rule: None,
            limit: limit.saturating_mul(4),
        })
        .await?;
    Ok(alerts
        .into_iter()
        .filter(|a| p.sees(crate::tenancy::labels(&ctl.cfg(), &a.labels)))
        .take(limit as usize)
        .map(|a| alert_row(a, p, now))
        .collect())
}

pub(super) fn alert_row(a: Alert, p: &Principal, now: DateTime<Utc>) -> AlertRow {
    let name = a
        .labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| a.rule.clone());
    // A silence for alerts like this one: same rule, same VM / site /
    // service, for an hour.
    let matchers: BTreeMap<&str, &str> = ["alertname", "vm", "site", "service"]
        .iter()
        .filter_map(|k| a.labels.get(*k).map(|v| (*k, v.as_str())))
        .collect();
    AlertRow {
        id: a.id,
        severity: a.severity.as_str().to_string(),
        state: a.state.as_str().to_string(),
        labels: a
            .labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        summary: a
            .annotations
            .get("summary")
            .or_else(|| a.annotations.get("description"))
            .cloned()
            .unwrap_or_default(),
        since: when(a.active_since),
        ago: ago(a.active_since, now),
        silence: json!({
            "matchers": matchers,
            "duration": "1h",
            "comment": format!("silenced from the portal (alert {})", a.id),
            "created_by": p.name,
        })
        .to_string(),
        ack: json!({ "by": p.name }).to_string(),
        name,
    }
}

#[derive(Template)]
#[template(path = "fragments/alerts.html")]
pub(super) struct Alerts {
    pub(super) can_act: bool,
    pub(super) alerts: Vec<AlertRow>,
    pub(super) recent: Vec<AlertRow>,
}

pub(super) async fn alerts_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
) -> Result<Alerts, PageError> {
    let recent = alert_rows(ctl, p, false, 50)
        .await?
        .into_iter()
        .filter(|a| a.state == "resolved")
        .collect();
    Ok(Alerts {
        can_act: v.can_act(),
        alerts: alert_rows(ctl, p, true, 200).await?,
        recent,
    })
}

pub(crate) async fn alerts(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&alerts_data(&ctl, &v, p).await?)?;
    page(&v, "Alerts", "alerts", "/portal/fragments/alerts", &body)
}

pub(crate) async fn alerts_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&alerts_data(&ctl, &v, p).await?)?))
}
