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
use standby_hv::{DiskSpec, Driver, VmSpec, VmStatus};
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
        }
    }

    /// A host run by the remote agent `agent` listening at `url`.
    pub fn remote(
        host: &str,
        cfg: &config::Host,
        data_dir: &Path,
        agent: &str,
        url: &str,
    ) -> Agent {
        Agent {
            host: host.to_string(),
            site: cfg.site.clone(),
            disk_dir: cfg.disk_dir.clone(),
            // The agent replaces it with a directory of its own.
            workdir: data_dir.join("hosts").join(host),
            netns: None,
            exec: Exec::Remote(RemoteHost::new(host, agent, url)),
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
            for (k, v) in site_vars.into_iter().flatten() {
                s = s.replace(&format!("{{site.{k}}}"), v);
            }
            s
        };
        // A bare command name is looked up where the VM runs: here for an
        // in-process host, by the remote agent for its own.
        let command = match &self.exec {
            Exec::Local(_) => resolve_command(&vm.command),
            Exec::Remote(_) => PathBuf::from(&vm.command),
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
            qemu: None,
        })
    }

    /// Create missing disk images as sparse files of their configured size.
    pub async fn provision_disks(&self, spec: &VmSpec) -> Result<(), ServerError> {
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
            Exec::Local(_) => restore_point(spec, &store.store, point, progress).await,
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
}

impl RemoteHost {
    pub fn new(host: &str, agent: &str, url: &str) -> RemoteHost {
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
        }
    }

    fn unreachable(&self, reason: String) -> ServerError {
        ServerError::Unreachable {
            host: self.host.clone(),
            reason: format!("agent {}: {reason}", self.agent),
        }
    }

    /// POST `body` to `/agent/v1/<op>` and read the answer. Auth seam:
    /// a token header goes here once agents authenticate (a later issue).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        op: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ServerError> {
        let url = format!("{}/{op}", self.base);
        let resp = self
            .http
            .post(&url)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
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
    let (mut writer, base, newest) = {
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
    let source = driver.snapshot_begin(spec).await?;
    let total: u64 = spec.disks.iter().map(|d| d.size).sum();
    progress.stage(format!("{}: reading disks", spec.name), total);
    let written = {
        let progress = progress.clone();
        let note = source.consistency_note.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            // The point's time is the freeze instant.
            writer.restamp()?;
            writer.set_label("snapshot", &note);
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
/// or none.
pub async fn restore_point(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    progress: Arc<JobProgress>,
) -> Result<u64, ServerError> {
    let store = store.clone();
    let point = point.clone();
    let disks: Vec<(String, PathBuf)> = spec
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.path.clone()))
        .collect();
    let vm = spec.name.clone();
    tokio::task::spawn_blocking(move || -> Result<u64, ServerError> {
        let manifest = store.load_manifest(&point)?;
        let total = manifest.disks.iter().map(|d| d.size).sum();
        progress.stage(format!("{vm}: restoring disks"), total);
        if let Some((name, _)) = disks
            .iter()
            .find(|(name, _)| !manifest.disks.iter().any(|d| &d.name == name))
        {
            return Err(ServerError::Conflict(format!(
                "point {point} has no disk '{name}' of vm {vm}"
            )));
        }
        // All disks or none: each is restored beside its final name and
        // only renamed into place once every one of them is complete,
        // so a failure never leaves a mix of old and restored disks.
        let staged = |path: &PathBuf| {
            let mut p = path.clone().into_os_string();
            p.push(".restoring");
            PathBuf::from(p)
        };
        let mut bytes = 0;
        let mut done = Vec::new();
        let result = (|| -> Result<(), ServerError> {
            for (name, path) in &disks {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        ServerError::Internal(format!("unable to create {}: {e}", parent.display()))
                    })?;
                }
                let s = store.restore_disk(&point, name, &staged(path), progress.as_ref())?;
                done.push(path.clone());
                bytes += s.size;
            }
            Ok(())
        })();
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
    })
    .await?
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
        );
        let t0 = std::time::Instant::now();
        let e = a.status("v").await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(matches!(e, ServerError::Unreachable { .. }), "{e}");
        assert!(e.to_api().retryable);
        assert!(e.to_string().contains("h-agent"), "{e}");
    }
}
