//! Protection groups made through the API and the portal (self-service).
//! Each is kept in the database ([`standby_db::GroupRepo`]) as its
//! `[groups.NAME]` fields and joins the file's groups at start and at
//! every reload; `standby.toml` stays the source of the groups it
//! declares (the API refuses to change those). A change is applied as a
//! reload applies one: the inventory written, the configuration in force
//! replaced, a `group.*` event recorded.

use std::sync::Arc;

use chrono::Utc;
use standby_db::ManagedGroup;
use standby_types::config::{Config, Group};
use standby_types::watch::{Event, Labels, Severity};

use crate::controller::Controller;
use crate::error::EngineError;

/// Who asks, for the record and the tenant check.
pub struct Asker<'a> {
    pub name: &'a str,
    /// A tenant's user: the group is the tenant's and every member must be.
    pub tenant: Option<&'a str>,
}

/// Create (`create`) or replace the group `name` made through the API.
pub async fn put(
    ctl: &Arc<Controller>,
    name: &str,
    mut group: Group,
    who: &Asker<'_>,
    create: bool,
) -> Result<(), EngineError> {
    check_name(name)?;
    let _one = ctl.reloading.lock().await;
    let cfg = ctl.cfg();
    match cfg.groups.get(name) {
        // Another's group is not there for a tenant's user.
        Some(g) if who.tenant.is_some() && g.tenant.as_deref() != who.tenant => {
            return Err(if create {
                EngineError::Conflict(format!("group {name} exists already"))
            } else {
                EngineError::not_found("group", name)
            });
        }
        Some(g) if !g.managed => {
            return Err(EngineError::Conflict(format!(
                "group {name} is declared in the configuration file: change it there"
            )));
        }
        Some(_) if create => {
            return Err(EngineError::Conflict(format!(
                "group {name} exists already"
            )));
        }
        None if !create => return Err(EngineError::not_found("group", name)),
        _ => {}
    }
    if let Some(t) = who.tenant {
        // A tenant's group is the tenant's, of the tenant's VMs only.
        group.tenant = Some(t.to_string());
        if let Some(vm) = group
            .members
            .iter()
            .find(|v| cfg.tenant_of_vm(v) != Some(t))
        {
            return Err(EngineError::not_found("vm", vm.clone()));
        }
    }
    let spec = serde_json::to_string(&group)
        .map_err(|e| EngineError::Internal(format!("group {name} as JSON: {e}")))?;
    let mut new = (*cfg).clone();
    group.managed = true;
    new.groups.insert(name.to_string(), group.clone());
    new.check_whole().map_err(EngineError::BadRequest)?;
    ctl.repo
        .put_managed_group(&ManagedGroup {
            name: name.to_string(),
            spec,
            tenant: group.tenant.clone(),
            updated_by: who.name.to_string(),
            updated_at: Utc::now(),
        })
        .await?;
    let kind = if create { "created" } else { "changed" };
    apply(ctl, new, (name, group.tenant), kind, who.name).await
}

/// Delete the group `name` made through the API (its points stay, pruned
/// by nobody until another group takes its VMs).
pub async fn delete(ctl: &Arc<Controller>, name: &str, who: &Asker<'_>) -> Result<(), EngineError> {
    let _one = ctl.reloading.lock().await;
    let cfg = ctl.cfg();
    let tenant = match cfg.groups.get(name) {
        Some(g) if who.tenant.is_some() && g.tenant.as_deref() != who.tenant => {
            return Err(EngineError::not_found("group", name));
        }
        Some(g) if !g.managed => {
            return Err(EngineError::Conflict(format!(
                "group {name} is declared in the configuration file: remove it there"
            )));
        }
        Some(g) if who.tenant.is_none() || g.tenant.as_deref() == who.tenant => g.tenant.clone(),
        // One kept but left out (it no longer fits): an operator may
        // still delete it.
        None if who.tenant.is_none() && ctl.repo.delete_managed_group(name).await? => {
            return Ok(());
        }
        _ => return Err(EngineError::not_found("group", name)),
    };
    let mut new = (*cfg).clone();
    new.groups.remove(name);
    new.check_whole().map_err(EngineError::BadRequest)?;
    ctl.repo.delete_managed_group(name).await?;
    apply(ctl, new, (name, tenant), "deleted", who.name).await
}

async fn apply(
    ctl: &Arc<Controller>,
    new: Config,
    (name, tenant): (&str, Option<String>),
    kind: &str,
    by: &str,
) -> Result<(), EngineError> {
    if ctl.leader.deposed() {
        return Err(EngineError::Conflict(
            "this controller no longer leads: ask the leader".into(),
        ));
    }
    ctl.repo.apply_config(&new).await?;
    ctl.live_config().set(Arc::new(new));
    let mut labels = Labels::new();
    labels.insert("group".into(), name.to_string());
    if let Some(t) = tenant {
        labels.insert("tenant".into(), t);
    }
    ctl.watch.emit(Event {
        id: 0,
        at: Utc::now(),
        source: "api".into(),
        kind: format!("group.{kind}"),
        severity: Severity::Info,
        labels,
        vantage: "controller".into(),
        message: format!("group {name} {kind} by {by}"),
    });
    tracing::info!(group = name, by, "group {kind} through the API");
    Ok(())
}

fn check_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadRequest(format!(
            "group name {name:?}: 1 to 64 of a-z, 0-9, '-' and '_'"
        )))
    }
}
