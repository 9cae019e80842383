//! Page and fragment handlers: each gathers what one page shows from the
//! controller, narrowed to the viewer, and renders its template.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use standby_db::AlertQuery;
use standby_types::model::{Job, JobStatus, VmRecord};
use standby_types::watch::{Alert, AlertState, IncidentState};

use super::model::{self, Chart, Measure};
use super::{PageError, PageResult, Viewer, principal};
use crate::auth::Principal;
use crate::error::ServerError;
use standby_engine::Controller;

type Ctl = State<Arc<Controller>>;

fn render(t: &impl Template) -> Result<String, PageError> {
    t.render()
        .map_err(|e| PageError::Server(ServerError::Internal(format!("portal template: {e}"))))
}

fn html(body: String) -> Response {
    Html(body).into_response()
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    model::short_duration((now - t).num_milliseconds() as f64 / 1000.0)
}

// ---------------------------------------------------------------- layout

#[derive(Template)]
#[template(path = "layout.html")]
struct Layout<'a> {
    title: &'a str,
    nav: &'a str,
    user: &'a str,
    role: &'a str,
    tenant: &'a str,
    csrf: &'a str,
    fragment: &'a str,
    body: &'a str,
}

/// A whole page: the layout around the fragment `body`, which the page's
/// script re-fetches from `fragment`.
fn page(v: &Viewer, title: &str, nav: &str, fragment: &str, body: &str) -> PageResult {
    let p = principal(v)?;
    let tenant = p.tenant.clone().unwrap_or_default();
    Ok(html(render(&Layout {
        title,
        nav,
        user: &p.name,
        role: p.role.as_str(),
        tenant: &tenant,
        csrf: &v.csrf,
        fragment,
        body,
    })?))
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

pub(super) fn error_page(status: StatusCode, message: &str) -> String {
    ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error"),
        message,
    }
    .render()
    .unwrap_or_else(|_| message.to_string())
}

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "login.html")]
struct Login<'a> {
    next: &'a str,
    error: bool,
}

#[derive(Deserialize)]
pub(super) struct LoginParams {
    next: Option<String>,
    error: Option<String>,
}

pub(super) async fn login(Query(q): Query<LoginParams>) -> PageResult {
    // Only a local path is a place to come back to (no open redirect).
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    Ok(html(render(&Login {
        next: &next,
        error: q.error.is_some(),
    })?))
}

// ------------------------------------------------------------- dashboard

struct SiteRow {
    name: String,
    fenced: bool,
    vms: usize,
}

struct ServiceRow {
    name: String,
    vm: String,
    site: String,
    health_class: &'static str,
    health: &'static str,
    switched: String,
}

/// At most this many VMs in the dashboard's protection table, the worst
/// first; the summary above it counts them all.
const DASHBOARD_VMS: usize = 20;
/// At most this many VMs (the first of the table) in the point-age chart.
const CHART_VMS: usize = 6;

/// How many of the visible VMs meet their RPO target.
#[derive(Default)]
struct ProtectionSummary {
    total: usize,
    met: usize,
    missed: usize,
    no_point: usize,
    no_target: usize,
}

struct VmRow {
    name: String,
    site: String,
    state: String,
    newest: String,
    age: String,
    target: String,
    rpo_class: &'static str,
    rpo: &'static str,
}

struct AlertRow {
    id: i64,
    name: String,
    severity: String,
    state: String,
    labels: Vec<String>,
    summary: String,
    since: String,
    ago: String,
    /// JSON of the silence request muting alerts like this one.
    silence: String,
    ack: String,
}

struct JobRow {
    id: i64,
    kind: String,
    target: String,
    status: String,
    class: &'static str,
    progress: String,
    message: String,
    created: String,
    ago: String,
}

#[derive(Template)]
#[template(path = "fragments/dashboard.html")]
struct Dashboard {
    can_act: bool,
    operators: bool,
    sites: Vec<SiteRow>,
    services: Vec<ServiceRow>,
    vms: Vec<VmRow>,
    summary: ProtectionSummary,
    alerts: Vec<AlertRow>,
    jobs: Vec<JobRow>,
    age_chart: Chart,
    measure_chart: Chart,
    width: f64,
    height: f64,
}

pub(super) async fn dashboard(State(ctl): Ctl, v: Viewer) -> PageResult {
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

pub(super) async fn dashboard_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&dashboard_data(&ctl, p, v.can_act()).await?)?))
}

/// A fragment's principal: a fragment is fetched by script, so an expired
/// session answers 401 (the script then goes to the login form).
fn fragment_principal(v: &Viewer) -> Result<&Principal, PageError> {
    v.principal.as_ref().ok_or_else(|| {
        PageError::Server(ServerError::Unauthorized("authentication required".into()))
    })
}

async fn dashboard_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    can_act: bool,
) -> Result<Dashboard, PageError> {
    let now = Utc::now();
    let cfg = &ctl.cfg;
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

/// A visible VM rated against its RPO target.
struct Rated<'a> {
    record: &'a VmRecord,
    newest: Option<DateTime<Utc>>,
    target: Option<Duration>,
    status: model::RpoStatus,
}

/// The VMs `p` sees, the worst first (missed, then never protected, then
/// the rest; older points first), and their counts. The newest point of
/// each is an index seek.
async fn protection<'a>(
    ctl: &Arc<Controller>,
    p: &Principal,
    records: &'a [VmRecord],
    now: DateTime<Utc>,
) -> Result<(Vec<Rated<'a>>, ProtectionSummary), PageError> {
    let cfg = &ctl.cfg;
    let visible: Vec<&VmRecord> = records
        .iter()
        .filter(|r| p.sees(cfg.tenant_of_vm(&r.name)))
        .collect();
    let names: Vec<String> = visible.iter().map(|r| r.name.clone()).collect();
    let newest: HashMap<String, DateTime<Utc>> = ctl
        .repo
        .newest_point_times(&names)
        .await?
        .into_iter()
        .collect();
    let targets = model::rpo_targets(cfg);
    let mut rated: Vec<Rated> = visible
        .into_iter()
        .map(|record| {
            let newest = newest.get(&record.name).copied();
            let target = targets.get(record.name.as_str()).copied();
            Rated {
                record,
                newest,
                target,
                status: model::rpo_status(newest, target, now),
            }
        })
        .collect();
    let mut summary = ProtectionSummary {
        total: rated.len(),
        ..ProtectionSummary::default()
    };
    for r in &rated {
        match r.status {
            model::RpoStatus::Met => summary.met += 1,
            model::RpoStatus::Missed => summary.missed += 1,
            model::RpoStatus::NoPoint => summary.no_point += 1,
            model::RpoStatus::NoTarget => summary.no_target += 1,
        }
    }
    rated.sort_by_key(|r| {
        let rank = match r.status {
            model::RpoStatus::Missed => 0,
            model::RpoStatus::NoPoint => 1,
            model::RpoStatus::Met => 2,
            model::RpoStatus::NoTarget => 3,
        };
        (rank, r.newest, r.record.name.clone())
    });
    Ok((rated, summary))
}

/// Table rows of rated VMs, with each one's state from its agent.
async fn vm_rows<'a>(
    ctl: &Arc<Controller>,
    rated: impl Iterator<Item = &'a Rated<'a>>,
    now: DateTime<Utc>,
) -> Vec<VmRow> {
    let mut out = Vec::new();
    for r in rated {
        out.push(VmRow {
            state: vm_state(ctl, r.record).await,
            name: r.record.name.clone(),
            site: r.record.active_site.clone(),
            newest: r.newest.map(when).unwrap_or_default(),
            age: r.newest.map(|t| ago(t, now)).unwrap_or_else(|| "–".into()),
            target: r
                .target
                .map(|t| model::short_duration(t.as_secs_f64()))
                .unwrap_or_else(|| "–".into()),
            rpo_class: r.status.class(),
            rpo: r.status.label(),
        });
    }
    out
}

/// VMs per page of the VMs page.
const VMS_PAGE: usize = 100;

#[derive(Deserialize)]
pub(super) struct VmsParams {
    /// 1-based.
    page: Option<usize>,
    /// `missed`, `unprotected` (no point) or `ok`: only those.
    status: Option<String>,
}

#[derive(Template)]
#[template(path = "fragments/vms.html")]
struct VmsPage {
    vms: Vec<VmRow>,
    summary: ProtectionSummary,
    status: String,
    page: usize,
    pages: usize,
    matches: usize,
}

async fn vms_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    q: &VmsParams,
) -> Result<VmsPage, PageError> {
    let now = Utc::now();
    let records = ctl.repo.vms().await?;
    let (rated, summary) = protection(ctl, p, &records, now).await?;
    let status = q.status.clone().unwrap_or_default();
    let keep = |r: &Rated| match status.as_str() {
        "missed" => r.status == model::RpoStatus::Missed,
        "unprotected" => r.status == model::RpoStatus::NoPoint,
        "ok" => r.status == model::RpoStatus::Met,
        _ => true,
    };
    if !matches!(status.as_str(), "" | "missed" | "unprotected" | "ok") {
        return Err(PageError::Server(ServerError::BadRequest(format!(
            "status '{status}' is not one of missed, unprotected, ok"
        ))));
    }
    let matching: Vec<&Rated> = rated.iter().filter(|r| keep(r)).collect();
    let pages = matching.len().div_ceil(VMS_PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let vms = vm_rows(
        ctl,
        matching
            .iter()
            .copied()
            .skip((page - 1) * VMS_PAGE)
            .take(VMS_PAGE),
        now,
    )
    .await;
    Ok(VmsPage {
        vms,
        summary,
        status,
        page,
        pages,
        matches: matching.len(),
    })
}

pub(super) async fn vms(State(ctl): Ctl, v: Viewer, Query(q): Query<VmsParams>) -> PageResult {
    let p = principal(&v)?;
    let data = vms_data(&ctl, p, &q).await?;
    let fragment = format!(
        "/portal/fragments/vms?page={}&status={}",
        data.page, data.status
    );
    page(&v, "VMs", "vms", &fragment, &render(&data)?)
}

pub(super) async fn vms_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Query(q): Query<VmsParams>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&vms_data(&ctl, p, &q).await?)?))
}

/// The VM's state from the agent of its active host, `unknown` if it
/// does not answer soon.
async fn vm_state(ctl: &Arc<Controller>, r: &VmRecord) -> String {
    let Ok(agent) = ctl.agent(&r.active_host) else {
        return "unknown".into();
    };
    match tokio::time::timeout(Duration::from_secs(2), agent.status(&r.name)).await {
        Ok(Ok(st)) => st.state.to_string(),
        _ => "unknown".into(),
    }
}

fn measure_chart(m: &[Measure], now: DateTime<Utc>) -> Chart {
    let from = m
        .iter()
        .map(|m| m.at)
        .min()
        .unwrap_or(now)
        .min(now - TimeDelta::hours(1));
    let pick = |f: fn(&Measure) -> Option<f64>, kind: &str| -> Vec<(DateTime<Utc>, f64)> {
        let mut s: Vec<_> = m
            .iter()
            .filter(|x| x.kind == kind)
            .filter_map(|x| f(x).map(|v| (x.at, v)))
            .collect();
        s.sort_by_key(|(t, _)| *t);
        s
    };
    model::chart(
        &[
            ("drill RTO".into(), pick(|x| x.rto, "drill")),
            ("drill data age".into(), pick(|x| x.rpo, "drill")),
            ("failover RTO".into(), pick(|x| x.rto, "failover")),
            ("failover data loss".into(), pick(|x| x.rpo, "failover")),
        ],
        from,
        now,
        "seconds",
        true,
    )
}

/// Drills and failovers among the newest `limit` jobs, newest first.
async fn measures(
    ctl: &Arc<Controller>,
    p: &Principal,
    limit: usize,
) -> Result<Vec<Measure>, PageError> {
    let cfg = &ctl.cfg;
    let mut out = Vec::new();
    let jobs = ctl.repo.jobs(500).await?;
    for j in jobs
        .iter()
        .filter(|j| j.kind == "runbook" && j.status.is_finished())
    {
        if out.len() >= limit {
            break;
        }
        let kind = match j.target.as_str() {
            "drill" => "drill",
            // Site-wide: the operators' side only.
            "failover-site" if p.tenant.is_none() => "failover",
            _ => continue,
        };
        let run = ctl.runbooks.repo().run(j.id).await?;
        let steps = ctl.runbooks.repo().steps(j.id).await?;
        let mut site = run.run.params["site"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let at = j.finished_at.unwrap_or(j.created_at);
        let m = if kind == "drill" {
            let Some(report) = steps.iter().find(|s| s.step == "report" && s.item == -1) else {
                continue;
            };
            // A drill of one VM: the VM and the site it serves from.
            if let Some(vm) = run.run.params["vm"].as_str() {
                site = match report.input["site"].as_str() {
                    Some(at) if !at.is_empty() => format!("{vm} ({at})"),
                    _ => vm.to_string(),
                };
            }
            let report = if report.output.is_null() {
                &Value::Null
            } else {
                &report.output
            };
            let visible = |vm: &str| p.sees(cfg.tenant_of_vm(vm));
            let (rto, rpo) = model::drill_figures(report, visible);
            if p.tenant.is_some() && rto.is_none() && rpo.is_none() {
                continue;
            }
            Measure {
                job: j.id,
                at,
                kind,
                site,
                rto,
                rpo,
                ok: j.status == JobStatus::Succeeded,
                summary: if p.tenant.is_none() {
                    report["summary"]
                        .as_str()
                        .map(String::from)
                        .or_else(|| j.error.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                },
            }
        } else {
            let note = steps
                .iter()
                .find(|s| s.step == "resolve" && s.item == -1)
                .and_then(|s| s.input["note"].as_str())
                .unwrap_or_default();
            let (rto, rpo) = model::failover_figures(note);
            Measure {
                job: j.id,
                at,
                kind,
                site,
                rto,
                rpo,
                ok: j.status == JobStatus::Succeeded,
                summary: if note.is_empty() {
                    j.error.clone().unwrap_or_default()
                } else {
                    note.to_string()
                },
            }
        };
        out.push(m);
    }
    Ok(out)
}

// ---------------------------------------------------------------- alerts

async fn alert_rows(
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
        .filter(|a| p.sees(model::owner_of_labels(&ctl.cfg, &a.labels).as_deref()))
        .take(limit as usize)
        .map(|a| alert_row(a, p, now))
        .collect())
}

fn alert_row(a: Alert, p: &Principal, now: DateTime<Utc>) -> AlertRow {
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
struct Alerts {
    can_act: bool,
    alerts: Vec<AlertRow>,
    recent: Vec<AlertRow>,
}

async fn alerts_data(
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

pub(super) async fn alerts(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&alerts_data(&ctl, &v, p).await?)?;
    page(&v, "Alerts", "alerts", "/portal/fragments/alerts", &body)
}

pub(super) async fn alerts_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&alerts_data(&ctl, &v, p).await?)?))
}

// ------------------------------------------------------------- incidents

struct IncidentRow {
    id: i64,
    title: String,
    severity: String,
    state: String,
    open: bool,
    opened: String,
    ago: String,
}

#[derive(Template)]
#[template(path = "fragments/incidents.html")]
struct Incidents {
    incidents: Vec<IncidentRow>,
}

async fn incidents_data(ctl: &Arc<Controller>, p: &Principal) -> Result<Incidents, PageError> {
    let now = Utc::now();
    let list = ctl.watch.repo().incidents(&[], 200).await?;
    Ok(Incidents {
        incidents: list
            .into_iter()
            .filter(|i| p.sees(model::owner_of_labels(&ctl.cfg, &i.labels).as_deref()))
            .map(|i| IncidentRow {
                id: i.id,
                open: matches!(i.state, IncidentState::New | IncidentState::Active),
                severity: i.severity.as_str().to_string(),
                state: i.state.as_str().to_string(),
                opened: when(i.opened_at),
                ago: ago(i.opened_at, now),
                title: i.title,
            })
            .collect(),
    })
}

pub(super) async fn incidents(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&incidents_data(&ctl, p).await?)?;
    page(
        &v,
        "Incidents",
        "incidents",
        "/portal/fragments/incidents",
        &body,
    )
}

pub(super) async fn incidents_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&incidents_data(&ctl, p).await?)?))
}

struct TimelineRow {
    at: String,
    kind: String,
    author: String,
    text: String,
}

#[derive(Template)]
#[template(path = "fragments/incident.html")]
struct IncidentPage {
    title: String,
    severity: String,
    state: String,
    description: String,
    opened: String,
    resolved: String,
    timeline: Vec<TimelineRow>,
    alerts: Vec<AlertRow>,
    jobs: Vec<JobRow>,
}

async fn incident_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    id: i64,
) -> Result<IncidentPage, PageError> {
    let repo = ctl.watch.repo();
    let i = repo.incident(id).await?;
    p.check(
        model::owner_of_labels(&ctl.cfg, &i.labels).as_deref(),
        "incident",
        &id.to_string(),
    )?;
    let now = Utc::now();
    let timeline = repo
        .timeline(id)
        .await?
        .into_iter()
        .map(|e| TimelineRow {
            at: when(e.at),
            kind: e.kind,
            author: e.author,
            text: e.text,
        })
        .collect();
    let alerts = repo
        .incident_alerts(id)
        .await?
        .into_iter()
        .map(|a| alert_row(a, p, now))
        .collect();
    // Runbook jobs working on this incident.
    let mut jobs = Vec::new();
    for j in ctl.repo.jobs(200).await? {
        if j.kind == "runbook"
            && let Ok(run) = ctl.runbooks.repo().run(j.id).await
            && run.run.incident == Some(id)
        {
            jobs.push(job_row(j, now));
        }
    }
    Ok(IncidentPage {
        severity: i.severity.as_str().to_string(),
        state: i.state.as_str().to_string(),
        description: i.description,
        opened: when(i.opened_at),
        resolved: i.resolved_at.map(when).unwrap_or_default(),
        title: i.title,
        timeline,
        alerts,
        jobs,
    })
}

pub(super) async fn incident(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = principal(&v)?;
    let d = incident_data(&ctl, p, id).await?;
    let title = format!("Incident {id}");
    let body = render(&d)?;
    page(
        &v,
        &title,
        "incidents",
        &format!("/portal/fragments/incidents/{id}"),
        &body,
    )
}

pub(super) async fn incident_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Path(id): Path<i64>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&incident_data(&ctl, p, id).await?)?))
}

// ------------------------------------------------------------------ jobs

fn status_class(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Succeeded => "ok",
        JobStatus::Failed => "bad",
        JobStatus::Running | JobStatus::Queued => "busy",
        #[allow(unreachable_patterns)]
        _ => "neutral",
    }
}

fn job_row(j: Job, now: DateTime<Utc>) -> JobRow {
    JobRow {
        id: j.id,
        class: status_class(j.status),
        status: j.status.as_str().to_string(),
        progress: (j.progress_done * 100)
            .checked_div(j.progress_total)
            .map(|p| format!("{}%", p.min(100)))
            .unwrap_or_default(),
        message: j.error.clone().unwrap_or_else(|| j.message.clone()),
        created: when(j.created_at),
        ago: ago(j.created_at, now),
        kind: j.kind,
        target: j.target,
    }
}

/// The newest jobs the principal sees.
async fn job_rows(
    ctl: &Arc<Controller>,
    p: &Principal,
    limit: usize,
) -> Result<Vec<JobRow>, PageError> {
    let now = Utc::now();
    let jobs = ctl
        .repo
        .jobs(if p.tenant.is_some() {
            500
        } else {
            limit as u32
        })
        .await?;
    let mut out = Vec::new();
    let mut point_vms: Option<HashMap<String, String>> = None;
    for j in jobs {
        if out.len() >= limit {
            break;
        }
        if !job_visible(ctl, p, &j, &mut point_vms).await? {
            continue;
        }
        out.push(job_row(j, now));
    }
    Ok(out)
}

async fn job_visible(
    ctl: &Arc<Controller>,
    p: &Principal,
    j: &Job,
    point_vms: &mut Option<HashMap<String, String>>,
) -> Result<bool, PageError> {
    if p.tenant.is_none() {
        return Ok(true);
    }
    let params = if j.kind == "runbook" {
        ctl.runbooks
            .repo()
            .run(j.id)
            .await
            .map(|r| r.run.params)
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if j.kind == "restore" {
        let known = point_vms.get_or_insert_default();
        if !known.contains_key(&j.target) {
            known.extend(ctl.repo.point_vms(std::slice::from_ref(&j.target)).await?);
        }
    }
    let map = point_vms.as_ref();
    let owner = model::owner_of_job(&ctl.cfg, &j.kind, &j.target, &params, |id| {
        map.and_then(|m| m.get(id).cloned())
    });
    Ok(p.sees(owner.as_deref()))
}

#[derive(Template)]
#[template(path = "fragments/jobs.html")]
struct Jobs {
    jobs: Vec<JobRow>,
}

pub(super) async fn jobs(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&Jobs {
        jobs: job_rows(&ctl, p, 100).await?,
    })?;
    page(&v, "Jobs", "jobs", "/portal/fragments/jobs", &body)
}

pub(super) async fn jobs_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&Jobs {
        jobs: job_rows(&ctl, p, 100).await?,
    })?))
}

struct StepRow {
    name: String,
    state: String,
    class: &'static str,
    attempt: u32,
    took: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "fragments/job.html")]
struct JobPage {
    job: JobRow,
    running: bool,
    runbook: String,
    params: String,
    incident: Option<i64>,
    percent: u64,
    steps: Vec<StepRow>,
    result: String,
    finished: String,
}

fn short_json(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if s.chars().count() > max {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    } else {
        s
    }
}

async fn job_data(ctl: &Arc<Controller>, p: &Principal, id: i64) -> Result<JobPage, PageError> {
    let j = ctl.repo.job(id).await?;
    if !job_visible(ctl, p, &j, &mut None).await? {
        return Err(ServerError::not_found("job", id.to_string()).into());
    }
    let now = Utc::now();
    let running = !j.status.is_finished();
    let finished = j.finished_at.map(when).unwrap_or_default();
    let result = short_json(&j.result, 2000);
    let (mut runbook, mut params, mut incident, mut steps) =
        (String::new(), String::new(), None, Vec::new());
    let mut percent = (j.progress_done * 100)
        .checked_div(j.progress_total)
        .unwrap_or(0)
        .min(100);
    if j.kind == "runbook"
        && let Ok(run) = ctl.runbooks.repo().run(id).await
    {
        runbook = run.run.runbook.clone();
        params = short_json(&run.run.params, 500);
        incident = run.run.incident;
        let rows = ctl.runbooks.repo().steps(id).await?;
        let declared = ctl
            .runbooks
            .get(&run.run.runbook)
            .map(|l| l.runbook.steps.len())
            .unwrap_or(0);
        let done = rows
            .iter()
            .filter(|s| s.item == -1 && s.state.is_final())
            .count();
        if let Some(p) = (done * 100).checked_div(declared) {
            percent = p.min(100) as u64;
        }
        steps = rows
            .into_iter()
            .map(|s| {
                let state = s.state.as_str().to_string();
                StepRow {
                    name: if s.item >= 0 {
                        format!("{} [{}]", s.step, s.item)
                    } else {
                        s.step
                    },
                    class: match state.as_str() {
                        "succeeded" => "ok",
                        "failed" => "bad",
                        "running" | "pending" => "busy",
                        _ => "neutral",
                    },
                    state,
                    attempt: s.attempt,
                    took: match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => {
                            model::short_duration((b - a).num_milliseconds() as f64 / 1000.0)
                        }
                        (Some(a), None) => format!("{}…", ago(a, now)),
                        _ => String::new(),
                    },
                    detail: s
                        .error
                        .clone()
                        .unwrap_or_else(|| short_json(&s.output, 300)),
                }
            })
            .collect();
    }
    if !running {
        percent = 100;
    }
    Ok(JobPage {
        job: job_row(j, now),
        running,
        runbook,
        params,
        incident,
        percent,
        steps,
        result,
        finished,
    })
}

pub(super) async fn job(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = principal(&v)?;
    let body = render(&job_data(&ctl, p, id).await?)?;
    page(
        &v,
        &format!("Job {id}"),
        "jobs",
        &format!("/portal/fragments/jobs/{id}"),
        &body,
    )
}

pub(super) async fn job_fragment(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&job_data(&ctl, p, id).await?)?))
}

// ---------------------------------------------------------------- drills

struct MeasureRow {
    job: i64,
    at: String,
    kind: &'static str,
    site: String,
    rto: String,
    rpo: String,
    ok: bool,
    summary: String,
}

#[derive(Template)]
#[template(path = "fragments/drills.html")]
struct Drills {
    can_act: bool,
    operators: bool,
    sites: Vec<String>,
    rows: Vec<MeasureRow>,
    chart: Chart,
    width: f64,
    height: f64,
}

async fn drills_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
) -> Result<Drills, PageError> {
    let now = Utc::now();
    let m = measures(ctl, p, 200).await?;
    let fmt = |x: Option<f64>| x.map(model::short_duration).unwrap_or_else(|| "–".into());
    Ok(Drills {
        can_act: v.can_act(),
        operators: p.tenant.is_none(),
        sites: ctl.cfg.sites.keys().cloned().collect(),
        chart: measure_chart(&m, now),
        rows: m
            .into_iter()
            .map(|m| MeasureRow {
                job: m.job,
                at: when(m.at),
                kind: m.kind,
                site: m.site,
                rto: fmt(m.rto),
                rpo: fmt(m.rpo),
                ok: m.ok,
                summary: m.summary,
            })
            .collect(),
        width: model::WIDTH,
        height: model::HEIGHT,
    })
}

pub(super) async fn drills(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&drills_data(&ctl, &v, p).await?)?;
    page(
        &v,
        "Drills and failovers",
        "drills",
        "/portal/fragments/drills",
        &body,
    )
}

pub(super) async fn drills_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&drills_data(&ctl, &v, p).await?)?))
}

// -------------------------------------------------------------------- vm

struct PointRow {
    id: String,
    time: String,
    age: String,
    consistency: String,
    size: String,
    copies: String,
}

#[derive(Template)]
#[template(path = "fragments/vm.html")]
struct VmPage {
    can_act: bool,
    operators: bool,
    name: String,
    state: String,
    home: String,
    dr_site: String,
    active_site: String,
    active_host: String,
    groups: Vec<String>,
    rpo_class: &'static str,
    rpo: &'static str,
    target: String,
    age: String,
    /// Sites a planned move can go to.
    move_sites: Vec<String>,
    points: Vec<PointRow>,
    jobs: Vec<JobRow>,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn vm_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
    name: &str,
) -> Result<VmPage, PageError> {
    let cfg = &ctl.cfg;
    let r = ctl.repo.vm(name).await?;
    p.check(cfg.tenant_of_vm(name), "vm", name)?;
    let now = Utc::now();
    let mut points = ctl.repo.points(Some(name)).await?;
    points.sort_by_key(|pt| std::cmp::Reverse(pt.time));
    let newest = points.first().map(|pt| pt.time);
    let target = model::rpo_target_of(cfg, name);
    let status = model::rpo_status(newest, target, now);
    let groups: Vec<String> = cfg.groups_of(name).into_iter().map(String::from).collect();
    let jobs = job_rows(ctl, p, 200)
        .await?
        .into_iter()
        .filter(|j| j.target == name || groups.contains(&j.target))
        .take(10)
        .collect();
    Ok(VmPage {
        can_act: v.can_act(),
        operators: p.tenant.is_none(),
        state: vm_state(ctl, &r).await,
        home: r.home_site.clone(),
        dr_site: r.dr_site.clone().unwrap_or_else(|| "–".into()),
        move_sites: cfg
            .sites
            .keys()
            .filter(|s| **s != r.active_site)
            .cloned()
            .collect(),
        active_site: r.active_site,
        active_host: r.active_host,
        rpo_class: status.class(),
        rpo: status.label(),
        target: target
            .map(|t| model::short_duration(t.as_secs_f64()))
            .unwrap_or_else(|| "–".into()),
        age: newest.map(|t| ago(t, now)).unwrap_or_else(|| "–".into()),
        groups,
        points: points
            .into_iter()
            .take(100)
            .map(|pt| PointRow {
                age: ago(pt.time, now),
                time: when(pt.time),
                consistency: pt.consistency,
                size: bytes(pt.size),
                copies: pt.copies.join(", "),
                id: pt.id,
            })
            .collect(),
        jobs,
        name: name.to_string(),
    })
}

pub(super) async fn vm(State(ctl): Ctl, v: Viewer, Path(name): Path<String>) -> PageResult {
    let p = principal(&v)?;
    let body = render(&vm_data(&ctl, &v, p, &name).await?)?;
    page(
        &v,
        &format!("VM {name}"),
        "dashboard",
        &format!("/portal/fragments/vms/{name}"),
        &body,
    )
}

pub(super) async fn vm_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Path(name): Path<String>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&vm_data(&ctl, &v, p, &name).await?)?))
}
