//! `vm.list`: the VMs (and their front-door services) a runbook acts on.

use serde_json::{Value, json};

use super::context::{ActionCtx, probe_of, services_of};
use crate::error::EngineError;

pub(super) async fn vm_list(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let only = ctx.opt_str("vm")?;
    if let Some(vm) = &only
        && !ctl.cfg.vms.contains_key(vm)
    {
        return Err(EngineError::not_found("vm", vm));
    }
    let site = ctx.opt_str("site")?;
    let group = ctx.opt_str("group")?;
    let protected = ctx.opt_bool("protected")?.unwrap_or(false);
    let mut vms = Vec::new();
    let mut services = Vec::new();
    for rec in ctl.repo.vms().await? {
        let Some(cfg) = ctl.cfg.vms.get(&rec.name) else {
            continue;
        };
        let groups: Vec<String> = ctl
            .cfg
            .groups_of(&rec.name)
            .into_iter()
            .map(String::from)
            .collect();
        if only.as_ref().is_some_and(|v| *v != rec.name)
            || site.as_ref().is_some_and(|s| *s != rec.active_site)
            || group.as_ref().is_some_and(|g| !groups.contains(g))
            || (protected && groups.is_empty())
        {
            continue;
        }
        let state = match ctl.agent(&rec.active_host) {
            Ok(a) => match a.status(&rec.name).await {
                Ok(st) => st.state.to_string(),
                Err(_) => "unknown".to_string(),
            },
            Err(_) => "unknown".to_string(),
        };
        for s in services_of(ctl, &rec.name) {
            let probe = ctl.cfg.services[&s].probe.as_ref().map(|p| p.to_string());
            services.push(json!({
                "service": s,
                "vm": rec.name,
                "site": rec.active_site,
                "home_site": rec.home_site,
                "dr_site": cfg.dr_site,
                "probe": probe,
            }));
        }
        vms.push(json!({
            "name": rec.name,
            "site": rec.active_site,
            "host": rec.active_host,
            "home_site": rec.home_site,
            "dr_site": cfg.dr_site,
            "groups": groups,
            "state": state,
            "probe": probe_of(ctl, &rec.name),
        }));
    }
    Ok(json!({ "vms": vms, "services": services }))
}
