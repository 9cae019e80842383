//! The dashboard: sites, services, protection, alerts, jobs and charts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use chrono::{DateTime, TimeDelta, Utc};

use crate::auth::Principal;
use crate::portal::model::{self, Chart};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::alerts::{AlertRow, alert_rows};
use super::common::{Ctl, ago, fragment_principal, html, page, render};
use super::drills::{measure_chart, measures};
use super::jobs::{JobRow, job_rows};
use super::vms::{ProtectionSummary, VmRow, protection, vm_rows};

pub(super) struct SiteRow {
    pub(super) name: String,
    pub(super) fenced: bool,
    pub(super) vms: usize,
}

pub(super) struct ServiceRow {
    pub(super) name: String,
    pub(super) vm: String,
    pub(super) site: String,
    pub(super) health_class: &'static str,
    pub(super) health: &'static str,
    pub(super) switched: String,
}

/// At most this many VMs in the dashboard's protection table, the worst
/// first; the summary above it counts them all.
pub(super) const DASHBOARD_VMS: usize = 20;
/// At most this many VMs (the first of the table) in the point-age chart.
pub(super) const CHART_VMS: usize = 6;

#[derive(Template)]
#[template(path = "fragments/dashboard.html")]
pub(super) struct Dashboard {
    pub(super) can_act: bool,
    pub(super) operators: bool,
    pub(super) sites: Vec<SiteRow>,
    pub(super) services: Vec<ServiceRow>,
    pub(super) vms: Vec<VmRow>,
    pub(super) summary: ProtectionSummary,
    pub(super) alerts: Vec<AlertRow>,
    pub(super) jobs: Vec<JobRow>,
    pub(super) age_chart: Chart,
    pub(super) measure_chart: Chart,
    pub(super) width: f64,
    pub(super) height: f64,
}

pub(crate) async fn dashboard(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&dashboard_data(&ctl, p, v.can_act()).await?)?;
    page(
        &v,
        "Dashboard",
        "dashboard",
        "/portal/fragments/dashboard",
        &body,
    )
}

pub(crate) async fn dashboard_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&dashboard_data(&ctl, p, v.can_act()).await?)?))
}

pub(super) async fn dashboard_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    can_act: bool,
) -> Result<Dashboard, PageError> {
    let now = Utc::now();
    let cfg = &ctl.cfg();
    let records = ctl.repo.vms().await?;
    let sites = ctl
        .repo
        .sites()
        .await?
        .into_iter()
        .map(|s| SiteRow {
            fenced: ctl.fence_of(&s.name).is_some(),
            vms: records.iter().filter(|r| r.active_site == s.name).count(),
            name: s.name,
        })
        .collect();
    let views = ctl.frontdoor.views(cfg)?;
    // Only results about a service or its VM count for its health.
    let probes = ctl.watch.probe_states_where(|r| {
        views
            .iter()
            .any(|v| r.labels.get("service") == Some(&v.name) || r.labels.get("vm") == Some(&v.vm))
    });
    let mut services = Vec::new();
    for view in views {
        if !p.sees(cfg.tenant_of_service(&view.name)) {
            continue;
        }
        let h = model::service_health(&probes, &view.name, &view.vm, &view.active_site);
        services.push(ServiceRow {
            health_class: h.class(),
            health: h.label(),
            switched: view.switched_at.map(|t| ago(t, now)).unwrap_or_default(),
            name: view.name,
            vm: view.vm,
            site: view.active_site,
        });
    }
    let (rated, summary) = protection(ctl, p, &records, now).await?;
    let newest: HashMap<String, DateTime<Utc>> = rated
        .iter()
        .filter_map(|r| r.newest.map(|t| (r.record.name.clone(), t)))
        .collect();
    let vms = vm_rows(ctl, rated.iter().take(DASHBOARD_VMS), now).await;
    // Point age over the last day (at least the last minute) of the
    // first CHART_VMS VMs of the table.
    let charted: Vec<String> = vms.iter().take(CHART_VMS).map(|v| v.name.clone()).collect();
    let mut times: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    for (vm, t) in ctl
        .repo
        .point_times(&charted, now - TimeDelta::days(1))
        .await?
    {
        times.entry(vm).or_default().push(t);
    }
    // A VM with no point in the window carries its newest one in.
    for vm in &charted {
        if let Some(t) = newest.get(vm) {
            let ts = times.entry(vm.clone()).or_default();
            if !ts.contains(t) {
                ts.push(*t);
            }
        }
    }
    let oldest = times.values().flatten().min().copied().unwrap_or(now);
    let from = oldest
        .max(now - TimeDelta::days(1))
        .min(now - TimeDelta::minutes(1));
    let age_series: Vec<model::Series> = charted
        .iter()
        .map(|vm| {
            let t = times.get(vm).cloned().unwrap_or_default();
            (vm.clone(), model::age_series(&t, from, now))
        })
        .collect();
    let age_chart = model::chart(&age_series, from, now, "seconds", false);
    let measures = measures(ctl, p, 50).await?;
    let measure_chart = measure_chart(&measures, now);
    let alerts = alert_rows(ctl, p, true, 20).await?;
    let jobs = job_rows(ctl, p, 10).await?;
    Ok(Dashboard {
        can_act,
        operators: p.tenant.is_none(),
        sites,
        services,
        vms,
        summary,
        alerts,
        jobs,
        age_chart,
        measure_chart,
        width: model::WIDTH,
        height: model::HEIGHT,
    })
}
