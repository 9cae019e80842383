//! [`Config`]: the whole file, and the lookups across its tables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::controller::{Controller, Pki, TenantConfig};
use super::datastores::DatastoreConfig;
use super::dns::DnsConfig;
use super::plans::{Plan, PlanPlace};
use super::probes::ProbeConfig;
use super::services::ServiceConfig;
use super::sites::{AgentConfig, Host, Site};
use super::vms::{Group, Vm};
use crate::watch::{ReceiverConfig, RouteConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub controller: Controller,
    #[serde(default)]
    pub sites: BTreeMap<String, Site>,
    #[serde(default)]
    pub hosts: BTreeMap<String, Host>,
    #[serde(default)]
    pub datastores: BTreeMap<String, DatastoreConfig>,
    #[serde(default)]
    pub vms: BTreeMap<String, Vm>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Agents that run as their own process (`standby agent`), usually at
    /// another site, as vantage points and heartbeat sources.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Network probes (TCP, HTTP, UDP, SIP) and where they run from.
    #[serde(default)]
    pub probes: BTreeMap<String, ProbeConfig>,
    /// Where notifications go.
    #[serde(default)]
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// Which alerts go to which receivers, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Services behind the front door: one client address that follows
    /// the site where the service is active.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// The DNS traffic target: services with a `dns_name` have it pointed
    /// at their active site by signed dynamic updates.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// Customers sharing the system: a tenant's users see and act on
    /// their own VMs, groups, services, points, alerts and incidents only.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Mutual TLS between the controller and agents, and between agents.
    #[serde(default)]
    pub pki: Option<Pki>,
    /// Recovery plans: the order in which VMs come back.
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    /// Self-fencing of cut-off sites (none: a failover needs a confirmed
    /// fence: the agent's answer, a power fence or an operator).
    #[serde(default)]
    pub ha: Option<super::ha::Ha>,
    /// ETSI NFV: VNF instances and the VMs that are their VNFCs.
    #[serde(default)]
    pub nfv: super::nfv::Nfv,
}

impl Config {
    /// The tenant owning VM `vm` (None: not a tenant's, or no such VM).
    pub fn tenant_of_vm(&self, vm: &str) -> Option<&str> {
        self.vms.get(vm).and_then(|v| v.tenant.as_deref())
    }

    /// The tenant owning service `name`: its own, else its VM's.
    pub fn tenant_of_service(&self, name: &str) -> Option<&str> {
        let s = self.services.get(name)?;
        s.tenant.as_deref().or_else(|| self.tenant_of_vm(&s.vm))
    }

    /// The tenant owning protection group `name`.
    pub fn tenant_of_group(&self, name: &str) -> Option<&str> {
        self.groups.get(name).and_then(|g| g.tenant.as_deref())
    }

    /// The tenant of an alert, incident or event: its `tenant` label, else
    /// the tenant of its `vm`, `service` or `group` label; none of them:
    /// the operators'.
    pub fn tenant_of_labels<'a>(&'a self, labels: &'a crate::watch::Labels) -> Option<&'a str> {
        if let Some(t) = labels.get("tenant") {
            return Some(t);
        }
        labels
            .get("vm")
            .and_then(|v| self.tenant_of_vm(v))
            .or_else(|| {
                labels
                    .get("service")
                    .and_then(|s| self.tenant_of_service(s))
            })
            .or_else(|| labels.get("group").and_then(|g| self.tenant_of_group(g)))
    }
}

impl Config {
    /// The bandwidth schedule of copies leaving `site`; none when the
    /// site has no window or is unknown.
    pub fn bandwidth_of(&self, site: &str) -> Option<super::BandwidthSchedule> {
        self.sites.get(site).and_then(|s| s.bandwidth_schedule())
    }

    /// The site a host belongs to.
    pub fn site_of_host(&self, host: &str) -> Option<&str> {
        self.hosts.get(host).map(|h| h.site.as_str())
    }

    /// The home site of a VM.
    pub fn home_site(&self, vm: &str) -> Option<&str> {
        self.vms.get(vm).and_then(|v| self.site_of_host(&v.host))
    }

    /// The agent that runs `host`'s VMs (an `[agents]` entry with this
    /// host and a `url`), if any: its name and URL.
    pub fn remote_agent_of(&self, host: &str) -> Option<(&str, &str)> {
        self.agents.iter().find_map(|(n, a)| {
            (a.host.as_deref() == Some(host))
                .then_some(())
                .and(a.url.as_deref())
                .map(|u| (n.as_str(), u))
        })
    }

    /// The first host of a site, in name order.
    pub fn first_host_of_site(&self, site: &str) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(_, h)| h.site == site)
            .map(|(n, _)| n.as_str())
    }

    /// Datastores located at a site, in name order.
    pub fn datastores_at(&self, site: &str) -> Vec<&str> {
        self.datastores
            .iter()
            .filter(|(_, d)| d.site == site)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The groups a VM belongs to.
    pub fn groups_of(&self, vm: &str) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|(_, g)| g.members.iter().any(|m| m == vm))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

impl Config {
    /// The plan and tier VM `vm` is in, if any.
    pub fn plan_of(&self, vm: &str) -> Option<PlanPlace<'_>> {
        self.plans.iter().find_map(|(name, p)| {
            p.tier_vms(&self.groups)
                .iter()
                .position(|t| t.iter().any(|v| v == vm))
                .map(|i| PlanPlace {
                    plan: name,
                    tier: i + 1,
                })
        })
    }
}
