//! One VM: its points, jobs and state.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use chrono::Utc;

use crate::auth::Principal;
use crate::portal::model::{self};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::common::{Ctl, ago, fragment_principal, html, page, render, when};
use super::jobs::{JobRow, job_rows};
use super::vms::vm_state;

pub(super) struct PointRow {
    pub(super) id: String,
    pub(super) time: String,
    pub(super) age: String,
    pub(super) consistency: String,
    pub(super) size: String,
    pub(super) copies: String,
}

#[derive(Template)]
#[template(path = "fragments/vm.html")]
pub(super) struct VmPage {
    pub(super) can_act: bool,
    pub(super) operators: bool,
    pub(super) name: String,
    pub(super) state: String,
    pub(super) home: String,
    pub(super) dr_site: String,
    pub(super) active_site: String,
    pub(super) active_host: String,
    pub(super) groups: Vec<String>,
    pub(super) rpo_class: &'static str,
    pub(super) rpo: &'static str,
    pub(super) target: String,
    pub(super) age: String,
    /// Sites a planned move can go to.
    pub(super) move_sites: Vec<String>,
    pub(super) points: Vec<PointRow>,
    pub(super) jobs: Vec<JobRow>,
}

pub(super) fn bytes(n: u64) -> String {
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

pub(super) async fn vm_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
    name: &str,
) -> Result<VmPage, PageError> {
    let cfg = &ctl.cfg();
    let r = ctl.repo.vm(name).await?;
    p.check(cfg.tenant_of_vm(name), "vm", name)?;
    let now = Utc::now();
    let mut points = ctl.repo.points(Some(name)).await?;
    points.sort_by_key(|pt| std::cmp::Reverse(pt.time));
    let damaged = ctl.repo.damaged_copies().await?;
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
                // A copy a verify found damaged is marked.
                copies: pt
                    .copies
                    .iter()
                    .map(|c| {
                        match damaged
                            .iter()
                            .any(|d| d.point == pt.id && d.datastore == *c)
                        {
                            true => format!("{c} (DAMAGED)"),
                            false => c.clone(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                id: pt.id,
            })
            .collect(),
        jobs,
        name: name.to_string(),
    })
}

pub(crate) async fn vm(State(ctl): Ctl, v: Viewer, Path(name): Path<String>) -> PageResult {
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

pub(crate) async fn vm_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Path(name): Path<String>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&vm_data(&ctl, &v, p, &name).await?)?))
}
