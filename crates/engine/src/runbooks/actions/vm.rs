//! `vm.list`: the VMs (and their front-door services) a runbook acts on.

use standby_runbook::catalog::VmList;
use standby_types::outcome::{ListedService, ListedVm, VmsListed};

use super::Perform;
use super::context::{ActionCtx, probe_of, services_of};
use crate::error::EngineError;

impl Perform for VmList {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmsListed, EngineError> {
        let ctl = &ctx.ctl;
        let only = self.vm.map(String::from);
        if let Some(vm) = &only
            && !ctl.cfg.vms.contains_key(vm)
        {
            return Err(EngineError::not_found("vm", vm));
        }
        let site = self.site.map(String::from);
        let group = self.group.map(String::from);
        let protected = self.protected.is_some_and(|p| p.0);
        let mut vms = Vec::new();
        let mut services = Vec::new();
        for rec in ctl.repo.vms().await?.iter() {
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
                services.push(ListedService {
                    service: s,
                    vm: rec.name.clone(),
                    site: rec.active_site.clone(),
                    home_site: rec.home_site.clone(),
                    dr_site: cfg.dr_site.clone(),
                    probe,
                });
            }
            vms.push(ListedVm {
                probe: probe_of(ctl, &rec.name),
                name: rec.name.clone(),
                site: rec.active_site.clone(),
                host: rec.active_host.clone(),
                home_site: rec.home_site.clone(),
                dr_site: cfg.dr_site.clone(),
                groups,
                state,
            });
        }
        Ok(VmsListed { vms, services })
    }
}
