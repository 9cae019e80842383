//! Protection groups, and the self-service form that makes and changes
//! the ones kept in the database (the file's are shown, not edited).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;
use standby_engine::Controller;

use crate::auth::Principal;
use crate::portal::{PageError, PageResult, Viewer, principal};

use super::common::{Ctl, fragment_principal, html, page, render, when};

pub(super) struct GroupRow {
    pub(super) name: String,
    pub(super) members: String,
    pub(super) schedule: String,
    pub(super) datastores: String,
    pub(super) rpo: String,
    pub(super) keep_last: String,
    pub(super) tenant: String,
    pub(super) managed: bool,
    pub(super) last: String,
}

/// A box to tick in the form.
pub(super) struct Choice {
    pub(super) name: String,
    pub(super) checked: bool,
}

#[derive(Template)]
#[template(path = "fragments/groups.html")]
pub(super) struct GroupsPage {
    pub(super) can_act: bool,
    pub(super) rows: Vec<GroupRow>,
    /// Editing this group made through the API (else a new one).
    pub(super) editing: Option<String>,
    pub(super) vms: Vec<Choice>,
    pub(super) stores: Vec<Choice>,
    pub(super) schedule: String,
    pub(super) rpo_target: String,
    pub(super) keep_last: String,
}

#[derive(Deserialize, Default)]
pub(crate) struct GroupsQuery {
    /// A group made through the API to change in the form.
    edit: Option<String>,
}

async fn groups_data(
    ctl: &Arc<Controller>,
    v: &Viewer,
    p: &Principal,
    edit: Option<&str>,
) -> Result<GroupsPage, PageError> {
    let cfg = ctl.cfg();
    let records = ctl.repo.groups().await?;
    let mut rows = Vec::new();
    for r in records {
        let Some(g) = cfg.groups.get(&r.name) else {
            continue;
        };
        if !p.sees(g.tenant.as_deref()) {
            continue;
        }
        rows.push(GroupRow {
            members: r.members.join(", "),
            schedule: r.schedule.clone(),
            datastores: r.datastores.join(", "),
            rpo: g
                .rpo_target
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_else(|| "–".into()),
            keep_last: match g.retention.keep_last {
                0 => "–".into(),
                n => n.to_string(),
            },
            tenant: g.tenant.clone().unwrap_or_default(),
            managed: g.managed,
            last: match (&r.last_run, &r.last_status) {
                (Some(t), Some(s)) => format!("{s} at {}", when(*t)),
                _ => "–".into(),
            },
            name: r.name,
        });
    }
    let editing = edit
        .and_then(|n| cfg.groups.get(n).map(|g| (n, g)))
        .filter(|(_, g)| g.managed && p.sees(g.tenant.as_deref()));
    let chosen = |name: &str, of: fn(&standby_types::config::Group) -> &Vec<String>| {
        editing.is_some_and(|(_, g)| of(g).iter().any(|x| x == name))
    };
    let vms = cfg
        .vms
        .iter()
        .filter(|(_, vm)| p.sees(vm.tenant.as_deref()))
        .map(|(n, _)| Choice {
            checked: chosen(n, |g| &g.members),
            name: n.clone(),
        })
        .collect();
    let stores = cfg
        .datastores
        .keys()
        .map(|n| Choice {
            checked: chosen(n, |g| &g.datastores),
            name: n.clone(),
        })
        .collect();
    Ok(GroupsPage {
        can_act: v.can_act(),
        rows,
        schedule: editing
            .map(|(_, g)| g.schedule.to_string())
            .unwrap_or_else(|| "every 15m".into()),
        rpo_target: editing
            .and_then(|(_, g)| g.rpo_target)
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default(),
        keep_last: editing
            .map(|(_, g)| g.retention.keep_last)
            .filter(|n| *n > 0)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        editing: editing.map(|(n, _)| n.to_string()),
        vms,
        stores,
    })
}

pub(crate) async fn groups(State(ctl): Ctl, v: Viewer, Query(q): Query<GroupsQuery>) -> PageResult {
    let p = principal(&v)?;
    let body = render(&groups_data(&ctl, &v, p, q.edit.as_deref()).await?)?;
    let fragment = match &q.edit {
        Some(e) => format!("/portal/fragments/groups?edit={}", urlencoding(e)),
        None => "/portal/fragments/groups".into(),
    };
    page(&v, "Protection groups", "groups", &fragment, &body)
}

pub(crate) async fn groups_fragment(
    State(ctl): Ctl,
    v: Viewer,
    Query(q): Query<GroupsQuery>,
) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(
        &groups_data(&ctl, &v, p, q.edit.as_deref()).await?,
    )?))
}

/// A group name in a query string (names are a-z, 0-9, '-', '_'; any
/// other byte is escaped).
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
