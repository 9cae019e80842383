//! A hypervisor host as the controller sees it: where its VMs' disks
//! live, how its VMs are specified, and who runs them ([`Host`]: a driver
//! in this process, [`crate::LocalHost`], or a `standby agent` reached
//! over `/agent/v1`, [`crate::RemoteHost`]). Callers use [`Agent`] and
//! never ask which.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use standby_hv::qemu::{Accel, DiskFormat, Machine, PortForward, Protocol};
use standby_hv::{DiskSpec, Driver, LibvirtSpec, QemuDriver, QemuSpec, VmSpec, VmStatus};
use standby_store::{Manifest, PointId};
use standby_types::config::{self, Config};
use standby_types::outcome::{DrillProbed, DrillState, DrillStopped};
use standby_types::watch::ProbeCheck;

use crate::error::AgentError;
use crate::local::LocalHost;
use crate::ops::{Host, PointRequest, StoreRef};
use crate::progress::Progress;
use crate::remote::RemoteHost;
use crate::wire::DrillRequest;
use crate::wire::{FencedVm, PointStats};

/// The agent of one hypervisor host.
pub struct Agent {
    pub host: String,
    pub site: String,
    disk_dir: PathBuf,
    workdir: PathBuf,
    netns: Option<String>,
    /// `[hosts.NAME.migration]`.
    migration: Option<config::HostMigration>,
    exec: Box<dyn Host>,
    /// What a remote host last said of its VMs (see [`Agent::recent_status`]).
    seen: crate::seen::Seen,
}

impl Agent {
    /// An in-process host running `driver`.
    pub fn new(host: &str, cfg: &config::Host, data_dir: &Path, driver: Arc<dyn Driver>) -> Agent {
        let exec = LocalHost::new(driver, None, data_dir.join("drills"));
        Agent::with(host, cfg, data_dir, Box::new(exec))
    }

    /// An in-process qemu host (restores install qcow2 disks through the
    /// driver).
    pub fn qemu(host: &str, cfg: &config::Host, data_dir: &Path, driver: Arc<QemuDriver>) -> Agent {
        let exec = LocalHost::new(driver.clone(), Some(driver), data_dir.join("drills"));
        Agent::with(host, cfg, data_dir, Box::new(exec))
    }

    /// An in-process libvirt host: `driver` from
    /// [`standby_hv::libvirt::open_driver`]; disks are made and restored
    /// by a qemu driver on `run` (qemu-img, the VM's disk formats).
    pub fn libvirt(
        host: &str,
        cfg: &config::Host,
        data_dir: &Path,
        driver: Arc<dyn Driver>,
        run: PathBuf,
    ) -> Agent {
        let disks = Arc::new(QemuDriver::new(run));
        let exec = LocalHost::new(driver, Some(disks), data_dir.join("drills"));
        Agent::with(host, cfg, data_dir, Box::new(exec))
    }

    /// A host run by the remote agent `client` calls.
    pub fn remote(host: &str, cfg: &config::Host, data_dir: &Path, client: RemoteHost) -> Agent {
        Agent {
            // The remote agent runs commands in its own namespace, if any.
            netns: None,
            ..Agent::with(host, cfg, data_dir, Box::new(client))
        }
    }

    fn with(host: &str, cfg: &config::Host, data_dir: &Path, exec: Box<dyn Host>) -> Agent {
        Agent {
            host: host.to_string(),
            site: cfg.site.clone(),
            disk_dir: cfg.disk_dir.clone(),
            // A remote agent replaces it with a directory of its own.
            workdir: data_dir.join("hosts").join(host),
            netns: cfg.netns.clone(),
            migration: cfg.migration.clone(),
            exec,
            seen: crate::seen::Seen::default(),
        }
    }

    /// The name of the remote agent running this host, if any.
    pub fn remote_name(&self) -> Option<&str> {
        self.exec.remote_agent()
    }

    pub fn disk_path(&self, vm: &str, disk: &str) -> PathBuf {
        self.disk_dir.join(vm).join(format!("{disk}.img"))
    }

    /// The driver's view of a configured VM placed on this host.
    pub fn spec(&self, cfg: &Config, name: &str) -> Result<VmSpec, AgentError> {
        let vm = cfg
            .vms
            .get(name)
            .ok_or_else(|| AgentError::not_found("vm", name))?;
        let disks: Vec<DiskSpec> = vm
            .disks
            .iter()
            .map(|d| DiskSpec {
                name: d.name.clone(),
                path: self.disk_path(name, &d.name),
                size: d.size.0,
            })
            .collect();
        let site_vars = cfg.sites.get(&self.site).map(|s| &s.vars);
        let expand = |arg: &str| {
            let mut s = arg.replace("{vm}", name).replace("{site}", &self.site);
            for d in &disks {
                s = s.replace(&format!("{{disk.{}}}", d.name), &d.path.to_string_lossy());
            }
            config::expand_site_vars(&s, site_vars)
        };
        // The VM's kind must be the host's (in-process or at its agent).
        let kind = self.exec.driver_kind();
        let vm_kind = if vm.libvirt.is_some() {
            "libvirt"
        } else if vm.qemu.is_some() {
            "qemu"
        } else {
            "process"
        };
        // A VM with a qemu machine also runs on a libvirt host (standby
        // defines its domain).
        if vm_kind != kind && !(kind == "libvirt" && vm_kind == "qemu") {
            return Err(AgentError::Conflict(format!(
                "vm {name} is a {vm_kind} VM and host {} runs {kind} VMs",
                self.host
            )));
        }
        let libvirt = (kind == "libvirt").then(|| LibvirtSpec {
            adopt: vm.adopted(),
        });
        let qemu = match &vm.qemu {
            Some(q) => Some(self.qemu_spec(name, vm, q, &expand)?),
            None => None,
        };
        // A bare command name is looked up where the VM runs: here for an
        // in-process host, by the remote agent for its own.
        let command = self.exec.resolve_command(vm.program());
        let args: Vec<String> = vm.args.iter().map(|a| expand(a)).collect();
        // `ip netns exec` enters the namespace and execs the command, so
        // the pid the driver tracks (and signals) is the VM's own.
        let (command, args) = match &self.netns {
            Some(ns) => (
                PathBuf::from("ip"),
                ["netns", "exec", ns.as_str()]
                    .into_iter()
                    .map(String::from)
                    .chain(std::iter::once(command.to_string_lossy().into_owned()))
                    .chain(args)
                    .collect(),
            ),
            None => (command, args),
        };
        Ok(VmSpec {
            name: name.to_string(),
            command,
            args,
            env: vm.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect(),
            disks,
            workdir: self.workdir.clone(),
            qemu,
            libvirt,
        })
    }

    /// The [`QemuSpec`] of a configured qemu VM running here: `append`
    /// and forward addresses expanded like `args`.
    fn qemu_spec(
        &self,
        name: &str,
        vm: &config::Vm,
        q: &config::QemuVm,
        expand: &dyn Fn(&str) -> String,
    ) -> Result<QemuSpec, AgentError> {
        let forwards = q
            .forwards
            .iter()
            .map(|f| {
                let addr = expand(&f.host_addr);
                let host_addr = addr.parse().map_err(|_| {
                    AgentError::Conflict(format!(
                        "forward {}:{} of vm {name} at site {}: '{addr}' is not an IPv4 address (is the site variable set?)",
                        f.host_addr, f.host_port, self.site
                    ))
                })?;
                Ok(PortForward {
                    protocol: match f.protocol {
                        config::ForwardProtocol::Tcp => Protocol::Tcp,
                        config::ForwardProtocol::Udp => Protocol::Udp,
                    },
                    host_addr,
                    host_port: f.host_port,
                    guest_port: f.guest_port,
                })
            })
            .collect::<Result<Vec<_>, AgentError>>()?;
        Ok(QemuSpec {
            memory_mib: q.memory_mib,
            cpus: q.cpus,
            machine: match q.machine {
                config::QemuMachine::Q35 => Machine::Q35,
                config::QemuMachine::Pc => Machine::Pc,
            },
            accel: match q.accel {
                config::QemuAccel::Auto => Accel::Auto,
                config::QemuAccel::Kvm => Accel::Kvm,
                config::QemuAccel::Tcg => Accel::Tcg,
            },
            kernel: q.kernel.clone(),
            initrd: q.initrd.clone(),
            append: q.append.as_deref().map(expand),
            disk_formats: vm
                .disks
                .iter()
                .map(|d| {
                    let f = match d.format {
                        config::DiskFormat::Raw => DiskFormat::Raw,
                        config::DiskFormat::Qcow2 => DiskFormat::Qcow2,
                    };
                    (d.name.clone(), f)
                })
                .collect(),
            forwards,
            guest_agent: q.guest_agent,
        })
    }

    pub async fn provision_disks(&self, spec: &VmSpec) -> Result<(), AgentError> {
        self.exec.provision_disks(spec).await
    }

    pub async fn missing_disks(&self, spec: &VmSpec) -> Result<Vec<DiskSpec>, AgentError> {
        self.exec.missing_disks(spec).await
    }

    pub async fn status(&self, vm: &str) -> Result<VmStatus, AgentError> {
        let asked = self.seen.asking();
        let st = self.exec.status(vm).await?;
        self.seen.record(asked, [(vm, &st)]);
        Ok(st)
    }

    /// `vm`'s status for a view that may be up to `max_age` old: what a
    /// remote host said that recently (its VM-state probe asks every
    /// second), else asked now. An in-process host is always asked. Never
    /// for a decision: see [`crate::seen`].
    pub async fn recent_status(&self, vm: &str, max_age: Duration) -> Result<VmStatus, AgentError> {
        if self.remote_name().is_some()
            && let Some(st) = self.seen.recent(vm, max_age)
        {
            return Ok(st);
        }
        if self.remote_name().is_some()
            && let Some((ago, why)) = self.seen.recently_unreachable(max_age)
        {
            return Err(AgentError::Unreachable {
                host: self.host.clone(),
                reason: format!("{why} ({:.1}s ago)", ago.as_secs_f64()),
            });
        }
        tracing::debug!(host = %self.host, vm, "no recent answer of the host: asking it");
        self.status(vm).await
    }

    /// The status of each of `vms` on this host (one call to a remote
    /// agent); a VM whose status cannot be told is left out.
    pub async fn statuses(&self, vms: &[String]) -> Result<Vec<(String, VmStatus)>, AgentError> {
        let asked = self.seen.asking();
        let out = match self.exec.statuses(vms).await {
            Ok(out) => out,
            Err(e) => {
                if let AgentError::Unreachable { reason, .. } = &e {
                    self.seen.unreachable(reason.clone());
                }
                return Err(e);
            }
        };
        self.seen
            .record(asked, out.iter().map(|(vm, st)| (vm.as_str(), st)));
        Ok(out)
    }

    /// Which of `vms` run on this host (one call to a remote agent).
    pub async fn running(&self, vms: &[String]) -> Result<Vec<String>, AgentError> {
        self.exec.running(vms).await
    }

    pub async fn start(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        self.seen.changing();
        let out = self.exec.start(spec).await;
        self.seen.changing();
        out
    }

    /// Graceful stop: ask, wait up to `timeout`, then force.
    pub async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, AgentError> {
        self.seen.changing();
        let out = self.exec.shutdown(vm, timeout).await;
        self.seen.changing();
        out
    }

    /// Forced stop.
    pub async fn stop(&self, vm: &str) -> Result<VmStatus, AgentError> {
        self.seen.changing();
        let out = self.exec.stop(vm).await;
        self.seen.changing();
        out
    }

    /// The driver this host runs (`process`, `qemu`, `libvirt`).
    pub fn driver_kind(&self) -> &'static str {
        self.exec.driver_kind()
    }

    /// Where a live migration onto this host listens, attempt `attempt`
    /// (0, 1, …: each a different pair of ports of the range): the
    /// `[hosts.NAME.migration]` address, site variables expanded; loopback
    /// for an in-process host without it. A host at a remote agent without
    /// it takes no live migration: the error says what to configure.
    pub fn migration_listen(
        &self,
        cfg: &Config,
        attempt: u32,
    ) -> Result<standby_hv::MigrationListen, AgentError> {
        let (addr, [first, last]) = match &self.migration {
            Some(m) => {
                let vars = cfg.sites.get(&self.site).map(|s| &s.vars);
                let text = config::expand_site_vars(&m.address, vars);
                let addr = text.parse().map_err(|_| {
                    AgentError::Conflict(format!(
                        "hosts.{}.migration.address: '{text}' is not an IP address (is the site variable set?)",
                        self.host
                    ))
                })?;
                (addr, m.ports)
            }
            None if self.remote_name().is_none() => (
                std::net::IpAddr::from([127, 0, 0, 1]),
                config::default_migration_ports(),
            ),
            None => {
                return Err(AgentError::Conflict(format!(
                    "host {} (agent {}) has no [hosts.{}.migration] address: a live migration onto it \
                     needs the address the other hosts reach it at",
                    self.host,
                    self.remote_name().unwrap_or("?"),
                    self.host
                )));
            }
        };
        // Two distinct ports of the range, a different pair each attempt,
        // from a random start (two migrations onto one host seldom pick
        // the same).
        let span = u32::from(last - first) + 1;
        let base = rand::random::<u32>() % span;
        let pick = |k: u32| first + ((base + 2 * attempt + k) % span) as u16;
        Ok(standby_hv::MigrationListen {
            addr,
            state_port: pick(0),
            disk_port: pick(1),
        })
    }

    /// Live migration, destination half 1 (see [`Host::migrate_in_prepare`]).
    pub async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: standby_hv::MigrationListen,
    ) -> Result<standby_hv::MigrationTarget, AgentError> {
        self.seen.changing();
        self.exec.migrate_in_prepare(spec, listen).await
    }

    /// Live migration, source half (see [`Host::migrate_out`]).
    pub async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &standby_hv::MigrationTarget,
        options: standby_hv::MigrationOptions,
    ) -> Result<standby_hv::MigrationReport, AgentError> {
        let out = self.exec.migrate_out(spec, target, options).await;
        self.seen.changing();
        out
    }

    /// Live migration, destination half 2: the switchover.
    pub async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        let out = self.exec.migrate_in_finish(spec).await;
        self.seen.changing();
        out
    }

    /// Live migration given up at the destination.
    pub async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), AgentError> {
        let out = self.exec.migrate_in_abort(spec).await;
        self.seen.changing();
        out
    }

    /// Live migration, source half 2: stop (`moved`) or resume the source.
    pub async fn migrate_out_confirm(
        &self,
        spec: &VmSpec,
        moved: bool,
    ) -> Result<VmStatus, AgentError> {
        let out = self.exec.migrate_out_confirm(spec, moved).await;
        self.seen.changing();
        out
    }

    /// Take a crash-consistent (or, through a guest agent,
    /// application-consistent) point of the VM into `store`. A remote
    /// agent writes the datastore directly; its progress shows as one
    /// stage.
    pub async fn take_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        chunk_size: u32,
        labels: BTreeMap<String, String>,
        vm_config: serde_json::Value,
        progress: Arc<dyn Progress>,
    ) -> Result<(Manifest, PointStats), AgentError> {
        let req = PointRequest {
            site: self.site.clone(),
            chunk_size,
            labels,
            vm_config,
        };
        self.exec.take_point(spec, store, req, progress).await
    }

    /// Write every disk of `point` to this host's disk paths for the VM:
    /// all disks or none.
    pub async fn restore_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        point: &PointId,
        onto: crate::wire::Onto,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError> {
        self.seen.changing();
        let out = self
            .exec
            .restore_point(spec, store, point, onto, progress)
            .await;
        self.seen.changing();
        out
    }

    /// Write template `template`'s disks for the new VM of `spec`.
    pub async fn restore_template(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        template: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError> {
        self.seen.changing();
        let out = self
            .exec
            .restore_template(spec, store, template, progress)
            .await;
        self.seen.changing();
        out
    }

    /// See [`Host::fence`].
    pub async fn fence(
        &self,
        reason: &str,
        vms: &[String],
        placed: &[String],
    ) -> Result<Vec<FencedVm>, AgentError> {
        self.seen.changing();
        let out = self.exec.fence(reason, vms, placed).await;
        self.seen.changing();
        out
    }

    /// See [`Host::unfence`].
    pub async fn unfence(&self) -> Option<Result<(), AgentError>> {
        self.seen.changing();
        let out = self.exec.unfence().await;
        self.seen.changing();
        out
    }

    /// See [`Host::drill_start`].
    pub async fn drill_start(
        &self,
        req: DrillRequest,
        store: &StoreRef<'_>,
        progress: Arc<dyn Progress>,
    ) -> Result<DrillState, AgentError> {
        self.exec.drill_start(req, store, progress).await
    }

    /// See [`Host::drill_probe`].
    pub async fn drill_probe(
        &self,
        id: &str,
        check: ProbeCheck,
        timeout: Duration,
    ) -> Result<DrillProbed, AgentError> {
        self.exec.drill_probe(id, check, timeout).await
    }

    /// See [`Host::drill_stop`].
    pub async fn drill_stop(&self, id: &str) -> Result<DrillStopped, AgentError> {
        self.exec.drill_stop(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(netns: Option<&str>) -> config::Host {
        config::Host {
            site: "site2".into(),
            driver: config::DriverKind::Process,
            libvirt_uri: None,
            disk_dir: "/disks".into(),
            netns: netns.map(String::from),
            power_fence: Vec::new(),
            migration: None,
        }
    }

    fn cfg() -> Config {
        Config::parse(
            r#"
[sites.site2]
vars = { ip = "198.18.0.6" }
[hosts.h]
site = "site2"
driver = "process"
disk_dir = "/disks"
[vms.v]
host = "h"
command = "/bin/vnf"
args = ["--disk", "{disk.data}", "--site", "{site}"]
env = { SIP = "{site.ip}:5060" }
[[vms.v.disks]]
name = "data"
size = "1MiB"
"#,
            Path::new("standby.toml"),
        )
        .unwrap()
    }

    #[test]
    fn a_netns_host_runs_the_same_command_inside_the_namespace() {
        let driver: Arc<dyn Driver> = Arc::new(standby_hv::ProcessDriver::new());
        let plain = Agent::new("h", &host(None), Path::new("/data"), driver.clone());
        let ns = Agent::new("h", &host(Some("lab-s2")), Path::new("/data"), driver);
        let a = plain.spec(&cfg(), "v").unwrap();
        let b = ns.spec(&cfg(), "v").unwrap();
        assert_eq!(a.command, PathBuf::from("/bin/vnf"));
        assert_eq!(a.args, ["--disk", "/disks/v/data.img", "--site", "site2"]);
        // The site's variables: the VM's address where it runs.
        assert_eq!(a.env["SIP"], "198.18.0.6:5060");
        assert_eq!(b.command, PathBuf::from("ip"));
        assert_eq!(
            b.args,
            [
                "netns",
                "exec",
                "lab-s2",
                "/bin/vnf",
                "--disk",
                "/disks/v/data.img",
                "--site",
                "site2"
            ]
        );
        assert_eq!(a.disks, b.disks);
    }

    #[test]
    fn a_qemu_vm_gets_its_machine_with_the_site_addresses() {
        let cfg = Config::parse(
            r#"
[sites.s1]
vars = { sip = "127.0.1.1" }
[sites.s2]
vars = { sip = "127.0.2.1" }
[hosts.q1]
site = "s1"
driver = "qemu"
disk_dir = "/d1"
[hosts.q2]
site = "s2"
driver = "qemu"
disk_dir = "/d2"
[hosts.zp2]
site = "s2"
driver = "process"
disk_dir = "/d3"
[vms.pbx]
host = "q1"
dr_site = "s2"
[vms.pbx.qemu]
kernel = "/g/vmlinuz"
append = "vnf.name={vm} site={site}"
guest_agent = true
forwards = [{ protocol = "udp", host_addr = "{site.sip}", host_port = 5060, guest_port = 5060 }]
[[vms.pbx.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx.disks]]
name = "data"
size = "1MiB"
"#,
            Path::new("standby.toml"),
        )
        .unwrap();
        let qemu = |h: &str| {
            let q = Arc::new(QemuDriver::new("/run/x"));
            Agent::qemu(h, &cfg.hosts[h], Path::new("/data"), q)
        };
        let at1 = qemu("q1").spec(&cfg, "pbx").unwrap();
        let at2 = qemu("q2").spec(&cfg, "pbx").unwrap();
        assert_eq!(
            at1.command.file_name().unwrap().to_str(),
            Some("qemu-system-x86_64")
        );
        let (q1, q2) = (at1.qemu.unwrap(), at2.qemu.unwrap());
        assert_eq!(q1.append.as_deref(), Some("vnf.name=pbx site=s1"));
        assert_eq!(q1.forwards[0].host_addr.to_string(), "127.0.1.1");
        assert_eq!(q2.forwards[0].host_addr.to_string(), "127.0.2.1");
        assert_eq!(q1.disk_format("system"), DiskFormat::Qcow2);
        assert_eq!(q1.disk_format("data"), DiskFormat::Raw);
        assert!(q1.guest_agent);
        assert_eq!(at2.disks[1].path, PathBuf::from("/d2/pbx/data.img"));
        // A process host refuses a qemu VM, naming both.
        let p2 = Agent::new(
            "zp2",
            &cfg.hosts["zp2"],
            Path::new("/data"),
            Arc::new(standby_hv::ProcessDriver::new()),
        );
        let e = p2.spec(&cfg, "pbx").unwrap_err().to_string();
        assert!(
            e.contains("qemu VM") && e.contains("host zp2 runs process VMs"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_a_quick_retryable_error() {
        // A port nothing listens on: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = RemoteHost::new(
            "h",
            "h-agent",
            &format!("http://127.0.0.1:{port}"),
            &crate::creds::Creds::Token(None),
            "process",
        )
        .unwrap();
        let a = Agent::remote("h", &host(None), Path::new("/data"), client);
        let t0 = std::time::Instant::now();
        let e = a.status("v").await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(matches!(e, AgentError::Unreachable { .. }), "{e}");
        assert!(e.to_api().retryable);
        assert!(e.to_string().contains("h-agent"), "{e}");
    }
}
