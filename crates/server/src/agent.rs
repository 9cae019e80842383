//! The agent of one hypervisor host, as the controller sees it.
//!
//! A host's agent is either in-process ([`Exec::Local`], the embedded
//! default: a driver in this process) or a remote `standby agent`
//! ([`Exec::Remote`], a host with an `[agents.NAME]` entry holding `host`
//! and `url`) reached over JSON/HTTP under `/agent/v1` (see
//! [`crate::remote_agent`]). Both offer the same operations; the VM spec is
//! always computed here, from the configuration.
//!
//! The data path (disk ↔ datastore) goes through the agent, never through
//! the API: a remote agent opens the datastore itself from the
//! configuration it is sent. [`take_point`] and [`restore_point`] are the
//! one implementation both sides run.
//!
//! A remote agent that cannot be reached is [`ServerError::Unreachable`]
//! within the connect timeout (1 s); each operation has a timeout sized to
//! its work, and TCP keepalive notices a link that dies mid-operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use standby_hv::qemu::{Accel, DiskFormat, Machine, PortForward, Protocol};
use standby_hv::{DiskSpec, Driver, QemuDriver, QemuSpec, VmSpec, VmStatus};
use standby_store::{
    Consistency, Datastore, DiskWriteOptions, DiskWriteStats, Manifest, PointId, PointMeta,
};
use standby_types::api::ApiError;
use standby_types::config::{self, Config, DatastoreConfig};

use crate::error::ServerError;
use crate::jobs::JobProgress;

/// Connecting to a remote agent: a live agent on a working link answers
/// far sooner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Status and forced stops: quick operations (a forced stop waits up to
/// 10 s for the kernel to reap the process).
const QUICK: Duration = Duration::from_secs(15);
/// Starting a VM (its disks are checked, its process spawned).
const START: Duration = Duration::from_secs(60);
/// Points and restores move whole disks.
const DATA: Duration = Duration::from_secs(4 * 3600);

pub struct Agent {
    pub host: String,
    pub site: String,
    disk_dir: PathBuf,
    workdir: PathBuf,
    netns: Option<String>,
    pub exec: Exec,
    /// The same driver as `exec` on a qemu host: restores install qcow2
    /// disks through it.
    qemu: Option<Arc<QemuDriver>>,
}

/// Who runs the host's VMs.
pub enum Exec {
    /// A driver in this process.
    Local(Arc<dyn Driver>),
    /// A `standby agent` reached over HTTP.
    Remote(RemoteHost),
}

/// What a point of one VM cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PointStats {
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    pub size: u64,
}

impl PointStats {
    fn add(&mut self, s: &DiskWriteStats) {
        self.bytes_read += s.bytes_read;
        self.bytes_new += s.bytes_new_stored;
        self.chunks += s.chunks;
        self.chunks_new += s.chunks_new;
        self.size += s.size;
    }
}

/// A datastore as a point or restore needs it: opened here for a local
/// host, named and described for a remote one (which opens it itself).
pub struct StoreRef<'a> {
    pub name: &'a str,
    pub config: &'a DatastoreConfig,
    pub store: Datastore,
}

impl Agent {
    pub fn new(host: &str, cfg: &config::Host, data_dir: &Path, driver: Arc<dyn Driver>) -> Agent {
        Agent {
            host: host.to_string(),
            site: cfg.site.clone(),
            disk_dir: cfg.disk_dir.clone(),
            workdir: data_dir.join("hosts").join(host),
            netns: cfg.netns.clone(),
            exec: Exec::Local(driver),
            qemu: None,
        }
    }

    /// An in-process qemu host.
    pub fn qemu(host: &str, cfg: &config::Host, data_dir: &Path, driver: Arc<QemuDriver>) -> Agent {
        let mut agent = Agent::new(host, cfg, data_dir, driver.clone());
        agent.qemu = Some(driver);
        agent
    }

    /// A host run by the remote agent `agent` listening at `url`.
    pub fn remote(
        host: &str,
        cfg: &config::Host,
        data_dir: &Path,
        agent: &str,
        url: &str,
        token: Option<String>,
    ) -> Agent {
        Agent {
            host: host.to_string(),
            site: cfg.site.clone(),
            disk_dir: cfg.disk_dir.clone(),
            // The agent replaces it with a directory of its own.
            workdir: data_dir.join("hosts").join(host),
            netns: None,
            exec: Exec::Remote(RemoteHost::new(host, agent, url, token)),
            qemu: None,
        }
    }

    /// The name of the remote agent running this host, if any.
    pub fn remote_name(&self) -> Option<&str> {
        match &self.exec {
            Exec::Local(_) => None,
            Exec::Remote(r) => Some(&r.agent),
        }
    }

    pub fn disk_path(&self, vm: &str, disk: &str) -> PathBuf {
        self.disk_dir.join(vm).join(format!("{disk}.img"))
    }

    /// The driver's view of a configured VM placed on this host.
    pub fn spec(&self, cfg: &Config, name: &str) -> Result<VmSpec, ServerError> {
        let vm = cfg
            .vms
            .get(name)
            .ok_or_else(|| ServerError::not_found("vm", name))?;
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
        // The VM's kind must be the host's: a qemu VM needs an
        // in-process qemu host (remote agents run process hosts only).
        let kind = match &self.exec {
            Exec::Local(d) => d.kind(),
            Exec::Remote(_) => "process",
        };
        if vm.qemu.is_some() != (kind == "qemu") {
            return Err(ServerError::Conflict(format!(
                "vm {name} is a {} VM and host {} runs {kind} VMs",
                if vm.qemu.is_some() { "qemu" } else { "process" },
                self.host
            )));
        }
        let qemu = match &vm.qemu {
            Some(q) => Some(self.qemu_spec(name, vm, q, &expand)?),
            None => None,
        };
        // A bare command name is looked up where the VM runs: here for an
        // in-process host, by the remote agent for its own.
        let command = match &self.exec {
            Exec::Local(_) => resolve_command(vm.program()),
            Exec::Remote(_) => PathBuf::from(vm.program()),
        };
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
    ) -> Result<QemuSpec, ServerError> {
        let forwards = q
            .forwards
            .iter()
            .map(|f| {
                let addr = expand(&f.host_addr);
                let host_addr = addr.parse().map_err(|_| {
                    ServerError::Conflict(format!(
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
            .collect::<Result<Vec<_>, ServerError>>()?;
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

    /// Create missing disk images as sparse files of their configured size.
    pub async fn provision_disks(&self, spec: &VmSpec) -> Result<(), ServerError> {
        if let Some(q) = &self.qemu {
            // In the disk's format (an empty qcow2 or a sparse raw file).
            let mut missing = spec.clone();
            missing.disks.retain(|d| !d.path.exists());
            if !missing.disks.is_empty() {
                q.create_from_template(&missing, &[]).await?;
            }
            return Ok(());
        }
        match &self.exec {
            Exec::Local(_) => {
                let spec = spec.clone();
                tokio::task::spawn_blocking(move || provision_disks(&spec)).await?
            }
            Exec::Remote(r) => {
                r.call::<_, serde_json::Value>(
                    "provision",
                    &SpecCall { spec: spec.clone() },
                    START,
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Which disks of `spec` are missing on this host.
    pub async fn missing_disks(&self, spec: &VmSpec) -> Result<Vec<DiskSpec>, ServerError> {
        match &self.exec {
            Exec::Local(_) => Ok(missing_disks(spec)),
            Exec::Remote(r) => {
                r.call("missing-disks", &SpecCall { spec: spec.clone() }, QUICK)
                    .await
            }
        }
    }

    pub async fn status(&self, vm: &str) -> Result<VmStatus, ServerError> {
        match &self.exec {
            Exec::Local(d) => Ok(d.status(vm).await?),
            Exec::Remote(r) => r.call("status", &VmCall { vm: vm.into() }, QUICK).await,
        }
    }

    pub async fn start(&self, spec: &VmSpec) -> Result<VmStatus, ServerError> {
        match &self.exec {
            Exec::Local(d) => Ok(d.start(spec).await?),
            Exec::Remote(r) => {
                r.call("start", &SpecCall { spec: spec.clone() }, START)
                    .await
            }
        }
    }

    /// Graceful stop: ask, wait up to `timeout`, then force.
    pub async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, ServerError> {
        match &self.exec {
            Exec::Local(d) => Ok(d.shutdown(vm, timeout).await?),
            Exec::Remote(r) => {
                let call = ShutdownCall {
                    vm: vm.into(),
                    timeout_ms: timeout.as_millis() as u64,
                };
                r.call("shutdown", &call, timeout + QUICK).await
            }
        }
    }

    /// Forced stop.
    pub async fn stop(&self, vm: &str) -> Result<VmStatus, ServerError> {
        match &self.exec {
            Exec::Local(d) => Ok(d.stop(vm).await?),
            Exec::Remote(r) => r.call("stop", &VmCall { vm: vm.into() }, QUICK).await,
        }
    }

    /// Take a crash-consistent point of the VM into `store` (see
    /// [`take_point`]). A remote agent writes the datastore directly;
    /// its progress shows as one stage.
    #[allow(clippy::too_many_arguments)]
    pub async fn take_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        chunk_size: u32,
        labels: BTreeMap<String, String>,
        vm_config: serde_json::Value,
        progress: Arc<JobProgress>,
    ) -> Result<(Manifest, PointStats), ServerError> {
        match &self.exec {
            Exec::Local(d) => {
                take_point(
                    d.as_ref(),
                    &self.site,
                    spec,
                    &store.store,
                    chunk_size,
                    labels,
                    vm_config,
                    progress,
                )
                .await
            }
            Exec::Remote(r) => {
                let total = spec.disks.iter().map(|d| d.size).sum();
                progress.stage(
                    format!("{}: point taken by agent {}", spec.name, r.agent),
                    total,
                );
                let call = PointCall {
                    spec: spec.clone(),
                    site: self.site.clone(),
                    datastore: store.name.to_string(),
                    config: store.config.clone(),
                    chunk_size,
                    labels,
                    vm_config,
                };
                let done: PointDone = r.call("point", &call, DATA).await?;
                Ok((done.manifest, done.stats))
            }
        }
    }

    /// Write every disk of `point` to this host's disk paths for the VM
    /// (see [`restore_point`]).
    pub async fn restore_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        point: &PointId,
        progress: Arc<JobProgress>,
    ) -> Result<u64, ServerError> {
        match &self.exec {
            Exec::Local(_) => {
                restore_point(spec, &store.store, point, progress, self.qemu.as_deref()).await
            }
            Exec::Remote(r) => {
                progress.stage(format!("{}: restore by agent {}", spec.name, r.agent), 0);
                let call = RestoreCall {
                    spec: spec.clone(),
                    datastore: store.name.to_string(),
                    config: store.config.clone(),
                    point: point.to_string(),
                };
                let done: RestoreDone = r.call("restore", &call, DATA).await?;
                Ok(done.bytes)
            }
        }
    }
}

// ---- the wire format of `/agent/v1` (shared by both sides) ----

/// `status`, `stop`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmCall {
    pub vm: String,
}

/// `start`, `provision`, `missing-disks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpecCall {
    pub spec: VmSpec,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShutdownCall {
    pub vm: String,
    pub timeout_ms: u64,
}

/// `point`: everything the agent needs to open the datastore and write.
#[derive(Debug, Serialize, Deserialize)]
pub struct PointCall {
    pub spec: VmSpec,
    pub site: String,
    pub datastore: String,
    pub config: DatastoreConfig,
    pub chunk_size: u32,
    pub labels: BTreeMap<String, String>,
    pub vm_config: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PointDone {
    pub manifest: Manifest,
    pub stats: PointStats,
}

/// `restore`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreCall {
    pub spec: VmSpec,
    pub datastore: String,
    pub config: DatastoreConfig,
    pub point: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RestoreDone {
    pub bytes: u64,
}

/// `fence`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FenceCall {
    pub reason: String,
}

/// What fencing did to one VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FencedVm {
    pub vm: String,
    /// `stopped`, `already stopped` or `failed: ...`.
    pub result: String,
}

/// The HTTP client of one remote agent.
pub struct RemoteHost {
    pub host: String,
    pub agent: String,
    base: String,
    http: reqwest::Client,
    /// The agent's secret, sent on every call.
    token: Option<String>,
}

impl RemoteHost {
    pub fn new(host: &str, agent: &str, url: &str, token: Option<String>) -> RemoteHost {
        // reqwest has no TLS provider of its own (see the workspace
        // Cargo.toml): ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            // A fresh connection per call: a pooled one on a link that
            // died would only fail at the call's timeout, while a new one
            // fails within the connect timeout.
            .pool_max_idle_per_host(0)
            // A link that dies during a long point is noticed in seconds.
            .tcp_keepalive(Duration::from_secs(5))
            .tcp_keepalive_interval(Duration::from_secs(2))
            .tcp_keepalive_retries(3u32)
            .build()
            .unwrap_or_default();
        RemoteHost {
            host: host.to_string(),
            agent: agent.to_string(),
            base: format!("{}/agent/v1", url.trim_end_matches('/')),
            http,
            token,
        }
    }

    fn unreachable(&self, reason: String) -> ServerError {
        ServerError::Unreachable {
            host: self.host.clone(),
            reason: format!("agent {}: {reason}", self.agent),
        }
    }

    /// POST `body` to `/agent/v1/<op>` with the agent's token and read the
    /// answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        op: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ServerError> {
        let url = format!("{}/{op}", self.base);
        let mut req = self.http.post(&url).timeout(timeout).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            self.unreachable(if e.is_timeout() {
                format!("no answer to {op} within {timeout:?}")
            } else {
                crate::error::error_chain(&e)
            })
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            self.unreachable(format!(
                "answer to {op} cut off: {}",
                crate::error::error_chain(&e)
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ServerError::Agent {
                host: self.host.clone(),
                code: "agent".into(),
                message: format!("unreadable answer of agent {} to {op}: {e}", self.agent),
                retryable: false,
            });
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(api) => Err(ServerError::Agent {
                host: self.host.clone(),
                code: api.code,
                message: api.message,
                retryable: api.retryable,
            }),
            Err(_) => Err(ServerError::Agent {
                host: self.host.clone(),
                code: "agent".into(),
                message: format!(
                    "agent {} answered {op} with {status}: {}",
                    self.agent,
                    String::from_utf8_lossy(&bytes)
                ),
                retryable: status.is_server_error(),
            }),
        }
    }
}

/// Create missing disk images as sparse files of their configured size.
pub fn provision_disks(spec: &VmSpec) -> Result<(), ServerError> {
    for d in &spec.disks {
        if d.path.exists() {
            continue;
        }
        let io = |e: std::io::Error| {
            ServerError::Internal(format!(
                "unable to create disk '{}' at {}: {e}",
                d.name,
                d.path.display()
            ))
        };
        if let Some(parent) = d.path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let f = std::fs::File::create(&d.path).map_err(io)?;
        f.set_len(d.size).map_err(io)?;
    }
    Ok(())
}

pub fn missing_disks(spec: &VmSpec) -> Vec<DiskSpec> {
    spec.disks
        .iter()
        .filter(|d| !d.path.exists())
        .cloned()
        .collect()
}

/// Take a crash-consistent point: the VM is frozen only while its disks
/// are read into the datastore; packs are sealed and the manifest
/// written after it runs again.
#[allow(clippy::too_many_arguments)]
pub async fn take_point(
    driver: &dyn Driver,
    site: &str,
    spec: &VmSpec,
    store: &Datastore,
    chunk_size: u32,
    labels: BTreeMap<String, String>,
    vm_config: serde_json::Value,
    progress: Arc<JobProgress>,
) -> Result<(Manifest, PointStats), ServerError> {
    // Everything that may wait (the store's lock, a catalog reload)
    // happens before the freeze: the VM is paused only while its disks
    // are read.
    let meta = PointMeta {
        vm: spec.name.clone(),
        site: site.to_string(),
        consistency: Consistency::Crash,
        config: vm_config,
        labels,
    };
    let (writer, base, newest) = {
        let (store, vm) = (store.clone(), spec.name.clone());
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            let writer = store.begin_point(meta)?;
            let base = store.latest_point(&vm)?.map(|m| m.id);
            let newest = store.newest_point_id(&vm)?;
            Ok((writer, base, newest))
        })
        .await??
    };
    // Dirty ranges count from the newest point; if that one cannot
    // serve as the base (damaged), they do not apply to the base used.
    let dirty_applies = base.is_some() && base == newest;
    let tracked_from = base
        .as_ref()
        .filter(|_| dirty_applies)
        .map(|b| b.to_string());
    // The point's time must not be later than the instant its data is
    // from, or a write acknowledged in between would be claimed and be
    // missing. A paused VM's instant is the pause (stamped while paused,
    // in `read_point`); a live snapshot's is somewhere inside
    // `snapshot_begin_from`, so it is stamped just before, and again
    // with the later floor the driver reports (`taken_after`: after the
    // guest froze, before the transaction), which keeps the window of
    // writes acknowledged after the point's time yet in it small.
    let live = driver.vm_capabilities(spec).live_snapshot;
    let writer = if live {
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            let mut writer = writer;
            writer.restamp()?;
            Ok(writer)
        })
        .await??
    } else {
        writer
    };
    let source = driver
        .snapshot_begin_from(spec, tracked_from.as_deref(), u64::from(chunk_size))
        .await?;
    let result = read_point(
        driver,
        spec,
        source,
        writer,
        base,
        dirty_applies,
        chunk_size,
        !live,
        progress,
    )
    .await;
    // The driver's dirty tracking moves on only for a committed point.
    let settled = driver
        .snapshot_committed(spec, result.as_ref().ok().map(|(m, _)| m.id.as_str()))
        .await;
    let (manifest, stats) = result?;
    if let Err(e) = settled {
        // The point is safe; the next one reads more than it needs to.
        tracing::warn!(vm = %spec.name, "dirty tracking not advanced: {e}");
    }
    Ok((manifest, stats))
}

/// The read of [`take_point`] between `snapshot_begin` and the commit.
#[allow(clippy::too_many_arguments)]
async fn read_point(
    driver: &dyn Driver,
    spec: &VmSpec,
    source: standby_hv::SnapshotSource,
    mut writer: standby_store::PointWriter,
    base: Option<PointId>,
    dirty_applies: bool,
    chunk_size: u32,
    stamp: bool,
    progress: Arc<JobProgress>,
) -> Result<(Manifest, PointStats), ServerError> {
    let total: u64 = spec.disks.iter().map(|d| d.size).sum();
    progress.stage(format!("{}: reading disks", spec.name), total);
    let written = {
        let progress = progress.clone();
        let note = source.consistency_note.clone();
        let app_consistent = source.app_consistent;
        let taken_after = source.taken_after;
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            // A paused VM's point is from the pause: stamped now. A live
            // one from the floor its driver took before the snapshot.
            if stamp {
                writer.restamp()?;
            } else if let Some(at) = taken_after {
                writer.restamp_at(at)?;
            }
            writer.set_label("snapshot", &note);
            if app_consistent {
                writer.set_consistency(Consistency::Application);
            }
            let mut stats = PointStats::default();
            for disk in &source.disks {
                let opts = DiskWriteOptions {
                    chunk_size,
                    base: base.clone(),
                    dirty: disk.dirty.clone().filter(|_| dirty_applies),
                };
                let s = writer.write_disk(&disk.name, &disk.path, opts, progress.as_ref())?;
                stats.add(&s);
            }
            Ok((writer, stats))
        })
        .await
    };
    // Thaw whatever happened while reading.
    let thawed = driver.snapshot_end(spec).await;
    let (writer, stats) = written??;
    thawed?;
    progress.set_message(format!("{}: sealing point", spec.name));
    let manifest = tokio::task::spawn_blocking(move || writer.commit()).await??;
    Ok((manifest, stats))
}

/// Write every disk of `point` to the VM's disk paths in `spec`: all disks
/// or none. With a qemu driver, a qcow2 disk is restored to a raw file
/// and converted by [`QemuDriver::install_restored_disk`].
pub async fn restore_point(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    progress: Arc<JobProgress>,
    qemu: Option<&QemuDriver>,
) -> Result<u64, ServerError> {
    let manifest = {
        let (store, point) = (store.clone(), point.clone());
        tokio::task::spawn_blocking(move || store.load_manifest(&point)).await??
    };
    let vm = &spec.name;
    let total = manifest.disks.iter().map(|d| d.size).sum();
    progress.stage(format!("{vm}: restoring disks"), total);
    if let Some(d) = spec
        .disks
        .iter()
        .find(|d| !manifest.disks.iter().any(|m| m.name == d.name))
    {
        return Err(ServerError::Conflict(format!(
            "point {point} has no disk '{}' of vm {vm}",
            d.name
        )));
    }
    // All disks or none: each is restored beside its final name and
    // only renamed into place once every one of them is complete, so a
    // failure never leaves a mix of old and restored disks.
    let with_suffix = |path: &Path, suffix: &str| {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let staged = |path: &Path| with_suffix(path, ".restoring");
    let qcow2 = |disk: &str| {
        qemu.is_some()
            && spec
                .qemu
                .as_ref()
                .is_some_and(|q| q.disk_format(disk) == DiskFormat::Qcow2)
    };
    let mut bytes = 0;
    let mut done: Vec<PathBuf> = Vec::new();
    let mut result = Ok(());
    for d in &spec.disks {
        let target = staged(&d.path);
        let raw = if qcow2(&d.name) {
            with_suffix(&d.path, ".restoring.raw")
        } else {
            target.clone()
        };
        let step = async {
            if let Some(parent) = d.path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    ServerError::Internal(format!("unable to create {}: {e}", parent.display()))
                })?;
            }
            let _ = std::fs::remove_file(&target);
            let s = {
                let (store, point, name, raw) =
                    (store.clone(), point.clone(), d.name.clone(), raw.clone());
                let progress = progress.clone();
                tokio::task::spawn_blocking(move || {
                    store.restore_disk(&point, &name, &raw, progress.as_ref())
                })
                .await??
            };
            if let (true, Some(q)) = (qcow2(&d.name), qemu) {
                // Converted into the staged name, not over the disk.
                let mut at_staged = spec.clone();
                at_staged.disks.retain(|x| x.name == d.name);
                at_staged.disks[0].path = target.clone();
                let installed = q.install_restored_disk(&at_staged, &d.name, &raw).await;
                let _ = std::fs::remove_file(&raw);
                installed?;
            }
            Ok::<u64, ServerError>(s.size)
        };
        match step.await {
            Ok(size) => {
                bytes += size;
                done.push(d.path.clone());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&raw);
                let _ = std::fs::remove_file(&target);
                result = Err(e);
                break;
            }
        }
    }
    if let Err(e) = result {
        for path in &done {
            let _ = std::fs::remove_file(staged(path));
        }
        return Err(e);
    }
    for path in &done {
        std::fs::rename(staged(path), path).map_err(|e| {
            ServerError::Internal(format!(
                "unable to move the restored disk into place at {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(bytes)
}

/// A bare command name is looked up next to the running binary first (so
/// `standby-vnf` is found beside `standby`), then left to `PATH`.
pub fn resolve_command(cmd: &str) -> PathBuf {
    let p = Path::new(cmd);
    if p.components().count() == 1
        && let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let sibling = dir.join(cmd);
        if sibling.is_file() {
            return sibling;
        }
        // Integration tests run from target/<profile>/deps.
        if let Some(up) = dir.parent().map(|d| d.join(cmd)).filter(|p| p.is_file()) {
            return up;
        }
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(netns: Option<&str>) -> config::Host {
        config::Host {
            site: "site2".into(),
            driver: config::DriverKind::Process,
            disk_dir: "/disks".into(),
            netns: netns.map(String::from),
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
        let a = Agent::remote(
            "h",
            &host(None),
            Path::new("/data"),
            "h-agent",
            &format!("http://127.0.0.1:{port}"),
            None,
        );
        let t0 = std::time::Instant::now();
        let e = a.status("v").await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(matches!(e, ServerError::Unreachable { .. }), "{e}");
        assert!(e.to_api().retryable);
        assert!(e.to_string().contains("h-agent"), "{e}");
    }
}
