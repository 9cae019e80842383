//! The host side of an agent: its driver (the host's, process or qemu,
//! with its state in `DATA/run`), its policy (from its own configuration
//! file), its fence flag (kept across restarts in `DATA/fence.json`) and
//! its open datastores.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_hv::{Driver, ProcessDriver, QemuDriver, VmSpec, VmStatus};
use standby_store::Datastore;
use standby_types::config::{DatastoreConfig, DriverKind};

use crate::error::AgentError;
use crate::local::LocalHost;
use crate::policy::Policy;
use crate::wire::FencedVm;

/// What every handler of `/agent/v1` gets, and what it answers.
pub(super) type Host = axum::extract::State<Arc<HostAgent>>;
pub(super) type Answer<T> = Result<axum::Json<T>, AgentError>;

/// The fence as the agent keeps it (`DATA/fence.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FenceState {
    pub(super) since: DateTime<Utc>,
    pub(super) reason: String,
}

/// The host side of an agent: its host, its policy, its fence, its open
/// datastores.
pub struct HostAgent {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    /// The host's operations, as in-process (drills in `DATA/drills`).
    pub(super) exec: LocalHost,
    pub(super) policy: Policy,
    /// Held across a start and across fencing, so a start never slips in
    /// between the fence being set and the VMs being stopped.
    pub(super) fence: tokio::sync::Mutex<Option<FenceState>>,
    pub(super) stores: Mutex<HashMap<String, (String, Datastore)>>,
    /// Each caller's counters in this run of the agent (no replay).
    pub(super) fresh: crate::fresh::Freshness,
    /// What peers may copy into, as the controller granted.
    pub(super) grants: super::grants::Grants,
    /// What this agent presents when it copies into another agent.
    pub(super) peer_creds: crate::creds::Creds,
    /// Its API is mutual TLS: every caller's certificate is checked.
    pub(super) mtls: bool,
    /// The highest leader epoch seen: older commands are refused.
    pub(super) epochs: crate::epoch::Epochs,
}

impl HostAgent {
    /// Open the data dir: adopt the VMs still running from an earlier run
    /// and take up a fence left in force (stopping what runs).
    pub async fn open(
        name: &str,
        dir: &Path,
        policy: Policy,
        peer_creds: crate::creds::Creds,
        mtls: bool,
    ) -> Result<Arc<HostAgent>, AgentError> {
        std::fs::create_dir_all(&policy.disk_dir).map_err(|e| {
            AgentError::Internal(format!(
                "unable to create the disk directory {} of host {}: {e}",
                policy.disk_dir.display(),
                policy.host
            ))
        })?;
        for sub in ["run", "vms", "drills"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                AgentError::Internal(format!(
                    "unable to create the agent data directory {}: {e}",
                    dir.join(sub).display()
                ))
            })?;
        }
        let fence = match std::fs::read(dir.join("fence.json")) {
            Ok(b) => Some(serde_json::from_slice::<FenceState>(&b).map_err(|e| {
                AgentError::Internal(format!(
                    "unreadable fence flag {}: {e}; remove it only if the site is not fenced",
                    dir.join("fence.json").display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(AgentError::Internal(format!(
                    "unable to read {}: {e}",
                    dir.join("fence.json").display()
                )));
            }
        };
        let run = dir.join("run");
        let exec = match policy.driver {
            DriverKind::Process => LocalHost::new(
                Arc::new(ProcessDriver::with_state_dir(run)),
                None,
                dir.join("drills"),
            ),
            DriverKind::Qemu => {
                let mut q = QemuDriver::new(run);
                // With [pki], live migrations go over TLS with this
                // agent's peer certificate (both ends verify each other).
                if let crate::creds::Creds::Tls(m) = &peer_creds {
                    let (ca, cert, key) = m.paths();
                    q = q.with_migration_tls(standby_hv::MigrationTls {
                        ca: ca.to_path_buf(),
                        cert: cert.to_path_buf(),
                        key: key.to_path_buf(),
                        name: standby_tls::Identity::peer(name)
                            .map_err(|e| AgentError::Internal(format!("agent {name}: {e}")))?
                            .dns_name(),
                    });
                }
                let q = Arc::new(q);
                LocalHost::new(q.clone(), Some(q), dir.join("drills"))
            }
            DriverKind::Libvirt => {
                let uri = policy
                    .libvirt_uri
                    .as_deref()
                    .unwrap_or(standby_hv::libvirt::DEFAULT_URI);
                let driver = standby_hv::libvirt::open_driver(uri, run.clone())
                    .map_err(|e| AgentError::Internal(format!("host {}: {e}", policy.host)))?;
                LocalHost::new(
                    driver,
                    Some(Arc::new(QemuDriver::new(run))),
                    dir.join("drills"),
                )
            }
        };
        let host = Arc::new(HostAgent {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            exec,
            policy,
            fence: tokio::sync::Mutex::new(fence),
            stores: Mutex::default(),
            fresh: crate::fresh::Freshness::new(),
            grants: super::grants::Grants::default(),
            peer_creds,
            mtls,
            epochs: crate::epoch::Epochs::open(dir)?,
        });
        let names = host.adopt_all().await;
        tracing::info!(vms = ?names, dir = %dir.display(), host = %host.policy.host, driver = host.policy.driver_kind(), "host agent ready");
        {
            let fence = host.fence.lock().await;
            if let Some(f) = &*fence {
                tracing::warn!(since = %f.since, reason = %f.reason, "site fenced: stopping every vm");
                host.stop_everything().await;
            }
        }
        Ok(host)
    }

    /// Adopt every VM with a pid file (a restart of the agent); their
    /// names.
    pub(super) async fn adopt_all(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("run")) {
            for e in rd.flatten() {
                let p = e.path();
                // `<vm>.pid` (QEMU's own `<vm>.qemu.pid` is not a VM).
                if p.extension().is_some_and(|x| x == "pid")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                    && !stem.ends_with(".qemu")
                {
                    let _ = self.driver().status(stem).await;
                    names.push(stem.to_string());
                }
            }
        }
        names
    }

    /// Force-stop every VM; what happened to each. Caller holds the fence
    /// lock.
    pub(super) async fn stop_everything(&self) -> Vec<FencedVm> {
        let mut out = Vec::new();
        for (vm, st) in self.vms().await {
            let result = if st.is_alive() {
                match self.driver().stop(&vm).await {
                    Ok(_) => "stopped".to_string(),
                    Err(e) => format!("failed: {}", standby_types::error_chain(&e)),
                }
            } else {
                "already stopped".to_string()
            };
            if result != "already stopped" {
                tracing::warn!(vm, "fenced: {result}");
            }
            out.push(FencedVm { vm, result });
        }
        out
    }

    /// The driver of the host.
    pub(super) fn driver(&self) -> &dyn Driver {
        self.exec.driver().as_ref()
    }

    /// Every VM this agent knows (adopted from its pid files) and its
    /// state.
    pub(super) async fn vms(&self) -> Vec<(String, VmStatus)> {
        let mut out = Vec::new();
        for vm in self.adopt_all().await {
            let st = match self.driver().status(&vm).await {
                Ok(st) => st,
                Err(e) => {
                    tracing::warn!(vm, "status: {e}");
                    continue;
                }
            };
            out.push((vm, st));
        }
        out
    }

    pub(super) fn persist(&self, fence: &Option<FenceState>) -> Result<(), AgentError> {
        let path = self.dir.join("fence.json");
        let io = |e: std::io::Error| {
            AgentError::Internal(format!(
                "unable to record the fence in {}: {e}",
                path.display()
            ))
        };
        match fence {
            Some(f) => {
                let tmp = self.dir.join("fence.json.tmp");
                let mut file = std::fs::File::create(&tmp).map_err(io)?;
                std::io::Write::write_all(&mut file, &serde_json::to_vec(f).unwrap_or_default())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            },
        }
        Ok(())
    }

    /// Whether the fence flag is set.
    pub(crate) async fn is_fenced(&self) -> bool {
        self.fence.lock().await.is_some()
    }

    /// What heartbeats report: fenced, and no VM alive here any more.
    pub(super) async fn fenced_and_quiet(&self) -> bool {
        let fence = self.fence.lock().await;
        fence.is_some() && self.vms().await.iter().all(|(_, st)| !st.is_alive())
    }

    /// Fence this host: recorded first, then every VM stopped. Idempotent.
    pub(crate) async fn fence(&self, reason: &str) -> Result<Vec<FencedVm>, AgentError> {
        let mut fence = self.fence.lock().await;
        if fence.is_none() {
            let f = Some(FenceState {
                since: Utc::now(),
                reason: reason.to_string(),
            });
            self.persist(&f)?;
            *fence = f;
            tracing::warn!(reason, "site fenced: stopping every vm, refusing starts");
        }
        Ok(self.stop_everything().await)
    }

    pub(super) async fn unfence(&self) -> Result<bool, AgentError> {
        let mut fence = self.fence.lock().await;
        if fence.is_none() {
            return Ok(false);
        }
        self.persist(&None)?;
        *fence = None;
        tracing::warn!("site unfenced: starts allowed again");
        Ok(true)
    }

    /// What a heartbeat answer of leader `epoch` says about the fence:
    /// ignored when a newer leader has spoken since.
    pub(super) async fn heartbeat_answer(&self, epoch: u64, fenced: bool) {
        match self.epochs.admit(epoch) {
            Ok(()) => self.heartbeat_fenced(fenced).await,
            Err(e) => tracing::warn!("heartbeat answer ignored: {e}"),
        }
    }

    /// What a heartbeat answer says about the fence.
    pub(super) async fn heartbeat_fenced(&self, fenced: bool) {
        let result = if fenced {
            self.fence("fenced by the controller").await.map(|_| ())
        } else {
            self.unfence().await.map(|_| ())
        };
        if let Err(e) = result {
            tracing::error!("{e}");
        }
    }

    /// The spec as this agent runs it: checked against its policy (its
    /// own command or QEMU, disks under its disk directory), with its own
    /// work directory.
    pub(super) fn local(&self, spec: VmSpec) -> Result<VmSpec, AgentError> {
        let mut spec = self.policy.check(spec)?;
        spec.workdir = self.dir.join("vms");
        Ok(spec)
    }

    pub(super) fn store(&self, name: &str, cfg: &DatastoreConfig) -> Result<Datastore, AgentError> {
        let key = serde_json::to_string(cfg).unwrap_or_default();
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, s)) = stores.get(name)
            && *k == key
        {
            return Ok(s.clone());
        }
        // A store this agent serves is created here on first use, under
        // the controller's rule: only where nothing is yet (an unmounted
        // mount point is an error, not a new store).
        if cfg.agent.as_deref() == Some(self.name.as_str())
            && crate::stores::create_if_absent(name, cfg)?
        {
            tracing::info!(datastore = %name, location = %cfg.location(), "created datastore");
        }
        let s = crate::stores::open(name, cfg)?;
        stores.insert(name.to_string(), (key, s.clone()));
        Ok(s)
    }

    /// A datastore opened earlier by a controller call (a copy's
    /// receiving side names it only).
    pub(super) fn opened(&self, name: &str) -> Result<Datastore, AgentError> {
        let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.get(name).map(|(_, s)| s.clone()).ok_or_else(|| {
            AgentError::Conflict(format!(
                "datastore {name} is not open at agent {}: the controller prepares it before a copy (run the copy again)",
                self.name
            ))
        })
    }
}
