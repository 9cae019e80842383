//! The VMs page, and the protection rating of VMs the dashboard shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use standby_types::model::VmRecord;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::portal::model::{self};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::common::{Ctl, ago, fragment_principal, html, page, render, when};

/// How many of the visible VMs meet their RPO target.
#[derive(Default)]
pub(super) struct ProtectionSummary {
    pub(super) total: usize,
    pub(super) met: usize,
    pub(super) missed: usize,
    pub(super) no_point: usize,
    pub(super) no_target: usize,
}

pub(super) struct VmRow {
    pub(super) name: String,
    pub(super) site: String,
    pub(super) state: String,
    pub(super) newest: String,
    pub(super) age: String,
    pub(super) target: String,
    pub(super) rpo_class: &'static str,
    pub(super) rpo: &'static str,
}

/// A visible VM rated against its RPO target.
pub(super) struct Rated<'a> {
    pub(super) record: &'a VmRecord,
    pub(super) newest: Option<DateTime<Utc>>,
    pub(super) target: Option<Duration>,
    pub(super) status: model::RpoStatus,
}

/// The VMs `p` sees, the worst first (missed, then never protected, then
/// the rest; older points first), and their counts. The newest point of
/// each is an index seek.
pub(super) async fn protection<'a>(
    ctl: &Arc<Controller>,
    p: &Principal,
    records: &'a [VmRecord],
    now: DateTime<Utc>,
) -> Result<(Vec<Rated<'a>>, ProtectionSummary), PageError> {
    let cfg = &ctl.cfg();
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
pub(super) async fn vm_rows<'a>(
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
pub(super) const VMS_PAGE: usize = 100;

#[derive(Deserialize)]
pub(crate) struct VmsParams {
    /// 1-based.
    pub(super) page: Option<usize>,
    /// `missed`, `unprotected` (no point) or `ok`: only those.
    pub(super) status: Option<String>,
}

#[derive(Template)]
#[template(path = "fragments/vms.html")]
pub(super) struct VmsPage {
    pub(super) vms: Vec<VmRow>,
    pub(super) summary: ProtectionSummary,
    pub(super) status: String,
    pub(super) page: usize,
    pub(super) pages: usize,
    pub(super) matches: usize,
}

pub(super) async fn vms_data(
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

pub(crate) async fn vms(State(ctl): Ctl, v: Viewer, Query(q): Query<VmsParams>) -> PageResult {
    let p = principal(&v)?;
    let data = vms_data(&ctl, p, &q).await?;
    let fragment = format!(
        "/portal/fragments/vms?page={}&status={}",
        data.page, data.status
    );
    page(&v, "VMs", "vms", &fragment, &render(&data)?)
}

pub(crate) async fn vms_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Query(q): Query<VmsParams>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&vms_data(&ctl, p, &q).await?)?))
}

/// The VM's state from the agent of its active host, `unknown` if it
/// does not answer soon.
pub(super) async fn vm_state(ctl: &Arc<Controller>, r: &VmRecord) -> String {
    let Ok(agent) = ctl.agent(&r.active_host) else {
        return "unknown".into();
    };
    match tokio::time::timeout(Duration::from_secs(2), agent.status(&r.name)).await {
        Ok(Ok(st)) => st.state.to_string(),
        _ => "unknown".into(),
    }
}
