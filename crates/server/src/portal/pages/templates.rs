//! Templates (a VM's point kept under a name in the datastores) and the
//! form that makes a VM from one at a host of any site.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use standby_engine::Controller;
use standby_engine::groups::Asker;

use crate::auth::Principal;
use crate::portal::{PageError, PageResult, Viewer, principal};

use super::common::{Ctl, fragment_principal, html, page, render, when};

pub(super) struct TemplateRow {
    pub(super) name: String,
    pub(super) source: String,
    pub(super) disks: String,
    pub(super) machine: String,
    pub(super) datastores: String,
    pub(super) created: String,
}

#[derive(Template)]
#[template(path = "fragments/templates.html")]
pub(super) struct TemplatesPage {
    pub(super) can_act: bool,
    pub(super) rows: Vec<TemplateRow>,
    /// Hosts to deploy at, as `host (site)`.
    pub(super) hosts: Vec<(String, String)>,
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n => format!("{} MiB", n >> 20),
    }
}

async fn templates_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
) -> Result<TemplatesPage, PageError> {
    let who = Asker {
        name: &p.name,
        tenant: p.tenant.as_deref(),
    };
    let rows = standby_engine::templates::list(ctl, &who)
        .await
        .into_iter()
        .map(|t| TemplateRow {
            disks: t
                .disks
                .iter()
                .map(|d| format!("{} {} {}", d.name, size(d.size), d.format))
                .collect::<Vec<_>>()
                .join(", "),
            machine: match (t.memory_mib, t.cpus) {
                (Some(m), Some(c)) => format!("{m} MiB, {c} cpu"),
                _ => "process".into(),
            },
            datastores: t.datastores.join(", "),
            created: when(t.created),
            source: t.source,
            name: t.name,
        })
        .collect();
    let cfg = ctl.cfg();
    let hosts = cfg
        .hosts
        .iter()
        .map(|(n, h)| (n.clone(), h.site.clone()))
        .collect();
    Ok(TemplatesPage {
        can_act: v.can_act(),
        rows,
        hosts,
    })
}

pub(crate) async fn templates(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&templates_data(&ctl, &v, p).await?)?;
    page(
        &v,
        "Templates",
        "templates",
        "/portal/fragments/templates",
        &body,
    )
}

pub(crate) async fn templates_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&templates_data(&ctl, &v, p).await?)?))
}
