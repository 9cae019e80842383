//! `vm.list`: the VMs (and their front-door services) a runbook acts on.

use std::collections::BTreeSet;

use standby_runbook::catalog::VmList;
use standby_types::config::{Config, TierStart};
use standby_types::outcome::{ListedPlan, ListedService, ListedVm, TierWait, VmsListed};
use standby_types::watch::AlertState;

use super::Perform;
use super::context::{ActionCtx, probe_of, services_of};
use crate::error::EngineError;

impl Perform for VmList {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmsListed, EngineError> {
        let ctl = &ctx.ctl;
        let only = self.vm.map(String::from);
        if let Some(vm) = &only
            && !ctl.cfg().vms.contains_key(vm)
        {
            return Err(EngineError::not_found("vm", vm));
        }
        let site = self.site.map(String::from);
        let group = self.group.map(String::from);
        let protected = self.protected.is_some_and(|p| p.0);
        let mut vms = Vec::new();
        let mut services = Vec::new();
        // Sites a VM may not be sent to now: without a host (a cloud
        // store's), fenced, or down.
        let mut unfit: BTreeSet<String> = BTreeSet::new();
        for site in ctl.cfg().sites.keys() {
            if ctl.cfg().first_host_of_site(site).is_none() || ctl.is_fenced(site).await? {
                unfit.insert(site.clone());
            }
        }
        for a in ctl.watch.active_alerts() {
            if a.rule == "site-down"
                && a.state != AlertState::Resolved
                && let Some(site) = a.labels.get("site")
            {
                unfit.insert(site.clone());
            }
        }
        for rec in ctl.repo.vms().await?.iter() {
            let live = ctl.cfg();
            let Some(cfg) = live.vms.get(&rec.name) else {
                continue;
            };
            let groups: Vec<String> = ctl
                .cfg()
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
            let target = failover_target(cfg, &rec.home_site, &rec.active_site, &unfit);
            let dr_sites: Vec<String> = cfg.dr_sites().into_iter().map(String::from).collect();
            for s in services_of(ctl, &rec.name) {
                let probe = ctl.cfg().services[&s].probe.as_ref().map(|p| p.to_string());
                services.push(ListedService {
                    service: s,
                    vm: rec.name.clone(),
                    site: rec.active_site.clone(),
                    home_site: rec.home_site.clone(),
                    dr_site: target.clone(),
                    probe,
                });
            }
            let live = ctl.cfg();
            let place = live.plan_of(&rec.name);
            let after = place
                .as_ref()
                .and_then(|at| tier_wait(&ctl.cfg(), at.plan, at.tier));
            vms.push(ListedVm {
                plan: place.as_ref().map(|at| at.plan.to_string()),
                tier: place.as_ref().map(|at| at.tier as u32),
                priority: cfg.priority,
                after,
                probe: probe_of(ctl, &rec.name),
                name: rec.name.clone(),
                site: rec.active_site.clone(),
                host: rec.active_host.clone(),
                home_site: rec.home_site.clone(),
                dr_site: target,
                dr_sites,
                groups,
                state,
            });
        }
        // Tier by tier (a VM in no plan with the first tiers), the
        // higher priority first: the order restores take their slots in.
        vms.sort_by_key(|v| (v.tier.unwrap_or(1), std::cmp::Reverse(v.priority)));
        let names: BTreeSet<&str> = vms.iter().filter_map(|v| v.plan.as_deref()).collect();
        let plans = names
            .into_iter()
            .map(|name| {
                let plan = &ctl.cfg().plans[name];
                ListedPlan {
                    name: name.to_string(),
                    rto_target_seconds: plan.rto_target.map(|t| t.as_secs_f64()),
                    tiers: plan.tier_vms(&ctl.cfg().groups),
                }
            })
            .collect();
        Ok(VmsListed {
            vms,
            services,
            plans,
        })
    }
}

/// What a VM of tier `tier` (1-based) of plan `plan` waits for: the VMs
/// of the tier before (none for the first tier).
fn tier_wait(cfg: &Config, plan: &str, tier: usize) -> Option<TierWait> {
    let p = cfg.plans.get(plan)?;
    let before = p.tier_vms(&cfg.groups).get(tier.checked_sub(2)?)?.clone();
    let t = &p.tiers[tier - 1];
    Some(TierWait {
        plan: plan.to_string(),
        tier: tier as u32,
        vms: before,
        delay_seconds: match t.after {
            TierStart::Probes => None,
            TierStart::Delay(d) => Some(d.as_secs_f64()),
        },
        timeout_seconds: t.wait.as_secs_f64(),
    })
}

/// Where a failover of the site `active` sends a VM now: the first of its
/// DR sites that is neither where it runs nor unfit (no host, fenced,
/// down), else its home if that is fit again; none when no site is.
pub(crate) fn failover_target(
    vm: &standby_types::config::Vm,
    home: &str,
    active: &str,
    unfit: &BTreeSet<String>,
) -> Option<String> {
    vm.dr_sites()
        .into_iter()
        .chain(std::iter::once(home))
        .find(|s| *s != active && !unfit.contains(*s))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(dr: &[&str]) -> standby_types::config::Vm {
        serde_json::from_value(serde_json::json!({ "host": "h1", "command": "x", "dr_sites": dr }))
            .unwrap()
    }

    #[test]
    fn a_failover_goes_down_the_list_then_home() {
        let v = vm(&["site2", "site3"]);
        let none = BTreeSet::new();
        let fenced = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        // Home lost: the first DR site.
        assert_eq!(
            failover_target(&v, "site1", "site1", &fenced(&["site1"])).as_deref(),
            Some("site2")
        );
        // Then site 2 lost while home stays fenced: the next one.
        assert_eq!(
            failover_target(&v, "site1", "site2", &fenced(&["site1", "site2"])).as_deref(),
            Some("site3")
        );
        // Site 3 lost, site 2 still fenced, home repaired: home.
        assert_eq!(
            failover_target(&v, "site1", "site3", &fenced(&["site2", "site3"])).as_deref(),
            Some("site1")
        );
        // Everything else unfit: nowhere.
        assert_eq!(
            failover_target(&v, "site1", "site3", &fenced(&["site1", "site2"])),
            None
        );
        // Nothing fenced, running at home: the first DR site.
        assert_eq!(
            failover_target(&v, "site1", "site1", &none).as_deref(),
            Some("site2")
        );
    }
}
