//! Cross-reference checks of the sites, hosts, VMs, groups, datastores and
//! services tables.

use super::root::Config;
use super::services::Protocol;
use super::sites::{DriverKind, Host};
use super::vms::{DiskFormat, Vm, expand_site_vars};

impl Config {
    /// Cross-reference checks. Returns the field path and message of the
    /// first problem.
    pub(super) fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if self
            .controller
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err((
                p(&["controller", "listen"]),
                format!(
                    "'{}' is not an address like 127.0.0.1:7780",
                    self.controller.listen
                ),
            ));
        }
        if self.controller.tls_cert.is_some() != self.controller.tls_key.is_some() {
            return Err((
                p(&["controller", "tls_cert"]),
                "tls_cert and tls_key go together".into(),
            ));
        }
        if let Some(m) = &self.controller.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                p(&["controller", "metrics_listen"]),
                format!("'{m}' is not an address like 127.0.0.1:9780"),
            ));
        }
        if let Some(url) = &self.controller.database
            && !super::controller::is_postgres_url(url)
        {
            return Err((
                p(&["controller", "database"]),
                format!(
                    "'{}' is not a postgres:// or postgresql:// URL (leave database out for \
                     the SQLite file in data_dir)",
                    super::redact::url_redacted(url)
                ),
            ));
        }
        if let Some(url) = &self.controller.url
            && reqwest_like_url(url).is_none()
        {
            return Err((
                p(&["controller", "url"]),
                format!("'{url}' is not a URL like https://ctl1.example.net:7780"),
            ));
        }
        for (kind, names) in [
            ("sites", self.sites.keys().collect::<Vec<_>>()),
            ("hosts", self.hosts.keys().collect()),
            ("datastores", self.datastores.keys().collect()),
            ("vms", self.vms.keys().collect()),
            ("groups", self.groups.keys().collect()),
            ("services", self.services.keys().collect()),
            ("plans", self.plans.keys().collect()),
            ("tenants", self.tenants.keys().collect()),
        ] {
            if let Some(bad) = names.into_iter().find(|n| !name_ok(n)) {
                return Err((
                    p(&[kind, bad]),
                    format!("name '{bad}' may only hold letters, digits, '-' and '_'"),
                ));
            }
        }
        let owners = self
            .vms
            .iter()
            .map(|(n, v)| ("vms", n, &v.tenant))
            .chain(self.groups.iter().map(|(n, g)| ("groups", n, &g.tenant)))
            .chain(
                self.services
                    .iter()
                    .map(|(n, s)| ("services", n, &s.tenant)),
            );
        for (kind, name, tenant) in owners {
            if let Some(t) = tenant
                && !self.tenants.contains_key(t)
            {
                return Err((
                    p(&[kind, name, "tenant"]),
                    format!("unknown tenant '{t}' (add a [tenants.{t}] table)"),
                ));
            }
        }
        for (name, site) in &self.sites {
            if let Some(bad) = site.vars.keys().find(|k| {
                k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }) {
                return Err((
                    p(&["sites", name, "vars", bad]),
                    format!("variable name '{bad}' may only hold a-z, 0-9 and '_'"),
                ));
            }
            if let Some(tz) = &site.timezone {
                super::bandwidth::parse_timezone(tz)
                    .map_err(|e| (p(&["sites", name, "timezone"]), e))?;
            }
            for (i, w) in site.bandwidth.iter().enumerate() {
                w.check().map_err(|(field, e)| {
                    (p(&["sites", name, "bandwidth", &i.to_string(), field]), e)
                })?;
            }
        }
        for (name, h) in &self.hosts {
            if !self.sites.contains_key(&h.site) {
                return Err((
                    p(&["hosts", name, "site"]),
                    format!("unknown site '{}'", h.site),
                ));
            }
            if h.power_fence
                .first()
                .is_some_and(|prog| prog.trim().is_empty())
            {
                return Err((
                    p(&["hosts", name, "power_fence"]),
                    "the first item is the program to run (e.g. [\"ipmitool\", \"-H\", \"bmc1\", \"chassis\", \"power\", \"off\"])".into(),
                ));
            }
            if h.driver != DriverKind::Process && h.netns.is_some() {
                return Err((
                    p(&["hosts", name, "netns"]),
                    format!(
                        "a {} host's VMs reach the network through their hypervisor; 'netns' applies to process hosts only",
                        h.driver
                    ),
                ));
            }
            if let Some(m) = &h.migration {
                if m.address.trim().is_empty() {
                    return Err((
                        p(&["hosts", name, "migration", "address"]),
                        "an IP address of the host that the other hosts reach (site variables expand, e.g. \"{site.addr}\")".into(),
                    ));
                }
                let [first, last] = m.ports;
                if first == 0 || last < first.saturating_add(1) {
                    return Err((
                        p(&["hosts", name, "migration", "ports"]),
                        format!(
                            "[{first}, {last}]: the first and last port of a range of at least two ports (a migration listens on two)"
                        ),
                    ));
                }
                if h.driver == DriverKind::Process {
                    return Err((
                        p(&["hosts", name, "migration"]),
                        "process VMs do not live-migrate: 'migration' applies to qemu and libvirt hosts".into(),
                    ));
                }
            }
            if h.driver != DriverKind::Libvirt && h.libvirt_uri.is_some() {
                return Err((
                    p(&["hosts", name, "libvirt_uri"]),
                    "'libvirt_uri' applies to hosts with driver = \"libvirt\" only".into(),
                ));
            }
            if let Some(ns) = &h.netns
                && (ns.is_empty()
                    || ns.len() > 64
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err((
                    p(&["hosts", name, "netns"]),
                    format!(
                        "'{ns}' is not a network namespace name (letters, digits, '-', '_', '.')"
                    ),
                ));
            }
        }
        for (name, d) in &self.datastores {
            if !self.sites.contains_key(&d.site) {
                return Err((
                    p(&["datastores", name, "site"]),
                    format!("unknown site '{}'", d.site),
                ));
            }
            if let Err((field, msg)) = d.check() {
                return Err((p(&["datastores", name, field]), msg));
            }
            if let Some(a) = &d.agent {
                let refuse = |msg: String| Err((p(&["datastores", name, "agent"]), msg));
                match self.agents.get(a) {
                    None => return refuse(format!("unknown agent '{a}'")),
                    Some(agent) if agent.url.is_none() => {
                        return refuse(format!(
                            "agent '{a}' has no url: a datastore's agent must be a host agent the controller calls"
                        ));
                    }
                    Some(agent) if agent.site != d.site => {
                        return refuse(format!(
                            "agent '{a}' is at site '{}', not at the datastore's site '{}'",
                            agent.site, d.site
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        for (name, vm) in &self.vms {
            let Some(host) = self.hosts.get(&vm.host) else {
                return Err((
                    p(&["vms", name, "host"]),
                    format!("unknown host '{}'", vm.host),
                ));
            };
            let field = if vm.dr_sites.is_empty() {
                "dr_site"
            } else {
                "dr_sites"
            };
            if let Some(dr) = &vm.dr_site
                && !vm.dr_sites.is_empty()
                && vm.dr_sites.first() != Some(dr)
            {
                return Err((
                    p(&["vms", name, "dr_site"]),
                    format!(
                        "dr_site '{dr}' is not the first of dr_sites: give one of them (dr_site is a shorthand for dr_sites = [\"{dr}\"])"
                    ),
                ));
            }
            let mut dr_seen = std::collections::BTreeSet::new();
            for dr in vm.dr_sites() {
                if !self.sites.contains_key(dr) {
                    return Err((p(&["vms", name, field]), format!("unknown site '{dr}'")));
                }
                if dr == host.site {
                    return Err((
                        p(&["vms", name, field]),
                        format!("the DR site '{dr}' is the VM's own site"),
                    ));
                }
                if !dr_seen.insert(dr) {
                    return Err((
                        p(&["vms", name, field]),
                        format!("site '{dr}' is named twice"),
                    ));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, d) in vm.disks.iter().enumerate() {
                let idx = i.to_string();
                if !name_ok(&d.name) || !seen.insert(&d.name) {
                    return Err((
                        p(&["vms", name, "disks", &idx, "name"]),
                        format!("disk name '{}' is invalid or repeated", d.name),
                    ));
                }
                if d.size.0 == 0 {
                    return Err((
                        p(&["vms", name, "disks", &idx, "size"]),
                        "a disk needs a size above zero".into(),
                    ));
                }
                if d.format == DiskFormat::Qcow2 && vm.qemu.is_none() && !vm.adopted() {
                    return Err((
                        p(&["vms", name, "disks", &idx, "format"]),
                        "qcow2 disks need a qemu VM (a [vms.NAME.qemu] table on a qemu or libvirt host) or an adopted libvirt domain"
                            .into(),
                    ));
                }
            }
            self.validate_vm_driver(name, vm, host)?;
        }
        for (name, g) in &self.groups {
            for (i, m) in g.members.iter().enumerate() {
                if !self.vms.contains_key(m) {
                    return Err((
                        p(&["groups", name, "members", &i.to_string()]),
                        format!("unknown vm '{m}'"),
                    ));
                }
            }
            if g.datastores.is_empty() {
                return Err((
                    p(&["groups", name, "datastores"]),
                    "a group needs at least one datastore".into(),
                ));
            }
            for (i, d) in g.datastores.iter().enumerate() {
                if !self.datastores.contains_key(d) {
                    return Err((
                        p(&["groups", name, "datastores", &i.to_string()]),
                        format!("unknown datastore '{d}'"),
                    ));
                }
            }
            // Retention prunes a VM's points per datastore: two groups
            // with different policies must not share one for the same VM.
            for (other_name, other) in self.groups.range::<String, _>((
                std::ops::Bound::Excluded(name.clone()),
                std::ops::Bound::Unbounded,
            )) {
                let vm = g.members.iter().find(|m| other.members.contains(m));
                let ds = g.datastores.iter().find(|d| other.datastores.contains(d));
                if let (Some(vm), Some(ds)) = (vm, ds) {
                    return Err((
                        p(&["groups", other_name, "members"]),
                        format!(
                            "vm '{vm}' is also in group '{name}' and both groups write to datastore '{ds}'; their retention would prune each other's points"
                        ),
                    ));
                }
            }
            let cs = g.chunk_size.0;
            if !cs.is_power_of_two() || !(64 << 10..=4 << 20).contains(&cs) {
                return Err((
                    p(&["groups", name, "chunk_size"]),
                    format!(
                        "chunk size {} must be a power of two from 64KiB to 4MiB",
                        g.chunk_size
                    ),
                ));
            }
        }
        // The quorum first: whether an agent may have a url without a
        // host depends on it.
        if let Some(ha) = &self.ha {
            ha.validate(&self.agents)?;
        }
        self.validate_watch()?;
        self.validate_plans()?;
        self.validate_nfv()?;
        self.validate_services()
    }

    /// A VM's kind matches its hosts': a `[vms.NAME.qemu]` table exactly
    /// when its home host (and the first host of its DR site) runs qemu.
    fn validate_vm_driver(
        &self,
        name: &str,
        vm: &Vm,
        host: &Host,
    ) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut hosts = vec![(vm.host.as_str(), host)];
        for dr in vm.dr_sites() {
            if let Some(h) = self.first_host_of_site(dr) {
                hosts.push((h, &self.hosts[h]));
            }
        }
        for (hname, h) in hosts {
            match (h.driver, &vm.qemu) {
                (DriverKind::Process, Some(_)) => {
                    return Err((
                        p(&["vms", name, "qemu"]),
                        format!(
                            "host '{hname}' uses the process driver; a qemu VM needs hosts with driver = \"qemu\""
                        ),
                    ));
                }
                (DriverKind::Qemu, None) => {
                    return Err((
                        p(&["vms", name]),
                        format!(
                            "host '{hname}' uses the qemu driver: the VM needs a [vms.{name}.qemu] table"
                        ),
                    ));
                }
                (DriverKind::Libvirt, None) if !vm.adopted() => {
                    return Err((
                        p(&["vms", name]),
                        format!(
                            "host '{hname}' uses the libvirt driver: the VM needs a [vms.{name}.qemu] table (standby defines the domain) or [vms.{name}.libvirt] adopt = true (an existing domain, see `standby vm import`)"
                        ),
                    ));
                }
                (DriverKind::Process | DriverKind::Qemu, _) if vm.libvirt.is_some() => {
                    return Err((
                        p(&["vms", name, "libvirt"]),
                        format!(
                            "host '{hname}' uses the {} driver; [vms.{name}.libvirt] needs hosts with driver = \"libvirt\"",
                            h.driver
                        ),
                    ));
                }
                (DriverKind::Libvirt, Some(q)) if !q.forwards.is_empty() => {
                    return Err((
                        p(&["vms", name, "qemu", "forwards"]),
                        format!(
                            "host '{hname}' uses the libvirt driver, which has no port forwards yet"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let Some(q) = &vm.qemu else {
            if vm.adopted() {
                return Ok(());
            }
            if vm.command.trim().is_empty() {
                return Err((
                    p(&["vms", name, "command"]),
                    "a process VM needs a command".into(),
                ));
            }
            return Ok(());
        };
        if q.memory_mib < 16 {
            return Err((
                p(&["vms", name, "qemu", "memory_mib"]),
                format!(
                    "{} MiB is too little memory for a VM (16 at least)",
                    q.memory_mib
                ),
            ));
        }
        if q.cpus == 0 || q.cpus > 64 {
            return Err((
                p(&["vms", name, "qemu", "cpus"]),
                format!("{} CPUs: use 1 to 64", q.cpus),
            ));
        }
        for (i, d) in vm.disks.iter().enumerate() {
            // The disk names QEMU's block nodes.
            if !d.name.starts_with(|c: char| c.is_ascii_alphabetic()) || d.name.len() > 26 {
                return Err((
                    p(&["vms", name, "disks", &i.to_string(), "name"]),
                    format!(
                        "disk '{}' of a qemu VM must start with a letter and hold at most 26 characters",
                        d.name
                    ),
                ));
            }
        }
        if q.initrd.is_some() && q.kernel.is_none() {
            return Err((
                p(&["vms", name, "qemu", "initrd"]),
                "an initrd needs a kernel".into(),
            ));
        }
        if q.kernel.is_none() && vm.disks.is_empty() {
            return Err((
                p(&["vms", name, "qemu", "kernel"]),
                "a VM without a kernel boots from its first disk, and it has none".into(),
            ));
        }
        // Every site the VM may run at must give each forward an address.
        let mut sites = vec![host.site.as_str()];
        sites.extend(vm.dr_sites());
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in q.forwards.iter().enumerate() {
            let at = p(&["vms", name, "qemu", "forwards", &i.to_string(), "host_addr"]);
            if f.host_port == 0 || f.guest_port == 0 {
                return Err((
                    p(&["vms", name, "qemu", "forwards", &i.to_string()]),
                    "forwarded ports must be above zero".into(),
                ));
            }
            for site in &sites {
                let vars = self.sites.get(*site).map(|s| &s.vars);
                let addr = expand_site_vars(&f.host_addr, vars);
                if let Some(var) = addr.split("{site.").nth(1) {
                    let var = var.split('}').next().unwrap_or_default();
                    return Err((
                        at,
                        format!("site '{site}' has no variable '{var}' (sites.{site}.vars)"),
                    ));
                }
                if addr.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err((
                        at,
                        format!("'{addr}' (at site '{site}') is not an IPv4 address"),
                    ));
                }
                if !seen.insert((*site, f.protocol, addr.clone(), f.host_port)) {
                    return Err((
                        p(&["vms", name, "qemu", "forwards", &i.to_string()]),
                        format!("{addr}:{} is forwarded twice", f.host_port),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn validate_plans(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Each VM in one tier of one plan.
        let mut placed: std::collections::BTreeMap<String, (String, usize)> =
            std::collections::BTreeMap::new();
        for (name, plan) in &self.plans {
            if plan.tiers.is_empty() {
                return Err((
                    p(&["plans", name, "tiers"]),
                    "a plan needs at least one tier".into(),
                ));
            }
            for (i, t) in plan.tiers.iter().enumerate() {
                let at = |f: &str, j: usize| {
                    p(&["plans", name, "tiers", &i.to_string(), f, &j.to_string()])
                };
                for (j, vm) in t.vms.iter().enumerate() {
                    if !self.vms.contains_key(vm) {
                        return Err((at("vms", j), format!("unknown vm '{vm}'")));
                    }
                }
                for (j, g) in t.groups.iter().enumerate() {
                    if !self.groups.contains_key(g) {
                        return Err((at("groups", j), format!("unknown group '{g}'")));
                    }
                }
                if t.vms.is_empty() && t.groups.is_empty() {
                    return Err((
                        p(&["plans", name, "tiers", &i.to_string()]),
                        "a tier needs vms or groups".into(),
                    ));
                }
            }
            for (i, vms) in plan.tier_vms(&self.groups).into_iter().enumerate() {
                for vm in vms {
                    if let Some((other, tier)) = placed.get(&vm) {
                        return Err((
                            p(&["plans", name, "tiers", &i.to_string()]),
                            format!(
                                "vm '{vm}' is already in tier {} of plan '{other}': a VM comes back in one place of one plan",
                                tier + 1
                            ),
                        ));
                    }
                    placed.insert(vm, (name.clone(), i));
                }
            }
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let api: Option<std::net::SocketAddr> = self.controller.listen.parse().ok();
        if let Some(dns) = &self.dns {
            dns.check()
                .map_err(|(field, msg)| (p(&["dns", field]), msg))?;
        }
        let mut dns_names = std::collections::BTreeMap::new();
        for (name, s) in &self.services {
            let Some(dns_name) = &s.dns_name else {
                continue;
            };
            let at = p(&["services", name, "dns_name"]);
            let Some(dns) = &self.dns else {
                return Err((
                    at,
                    "a dns_name needs a [dns] table (the server, zone and key that update it)"
                        .into(),
                ));
            };
            let fqdn = dns.fqdn(dns_name).map_err(|e| (at.clone(), e))?;
            if let Some(other) = dns_names.insert(fqdn.clone(), name) {
                return Err((at, format!("service '{other}' already has the name {fqdn}")));
            }
        }
        for (name, s) in &self.services {
            let Some(home) = self.home_site(&s.vm) else {
                return Err((
                    p(&["services", name, "vm"]),
                    format!("unknown vm '{}'", s.vm),
                ));
            };
            if let Err((mut field, msg)) = s.check() {
                let mut path = p(&["services", name]);
                path.append(&mut field);
                return Err((path, msg));
            }
            for site in s.backends.keys() {
                if !self.sites.contains_key(site) {
                    return Err((
                        p(&["services", name, "backends", site]),
                        format!("unknown site '{site}'"),
                    ));
                }
            }
            if !s.backends.contains_key(home) {
                return Err((
                    p(&["services", name, "backends"]),
                    format!(
                        "no backend at site '{home}', the home site of vm '{}'",
                        s.vm
                    ),
                ));
            }
            let listen = s.listen_addr();
            if s.protocols.contains(&Protocol::Tcp) && listen.is_some() && listen == api {
                return Err((
                    p(&["services", name, "listen"]),
                    format!(
                        "{} is the controller's API address (controller.listen)",
                        s.listen
                    ),
                ));
            }
            // Two services on one address and transport: the second bind
            // would fail at start.
            for (other_name, other) in self.services.range::<String, _>(..name.clone()) {
                let shared = s.protocols.iter().find(|p| other.protocols.contains(p));
                if let Some(proto) = shared
                    && listen.is_some()
                    && other.listen_addr() == listen
                    && listen.is_some_and(|a| a.port() != 0)
                {
                    return Err((
                        p(&["services", name, "listen"]),
                        format!(
                            "service '{other_name}' already listens on {proto} {}",
                            s.listen
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `http(s)://HOST[:PORT][/]`: the host part of a controller's URL.
fn reqwest_like_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let host = rest.trim_end_matches('/');
    (!host.is_empty() && !host.contains(['/', ' ', '?', '#'])).then_some(host)
}
