//! The controller's shared state: configuration, database, the agents of
//! the hosts (in-process, or remote `standby agent`s), fenced sites, open
//! datastores and the locks that keep one operation per VM at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use standby_agent::creds::{Creds, Role};
use standby_db::{AuthRepo, FenceRecord, Repo, SqlRepo};
use standby_hv::{ProcessDriver, QemuDriver};
use standby_store::Datastore;
use standby_types::config::{Config, Database, DriverKind};
use standby_types::model::{PointRecord, VmRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::EngineError;
use standby_agent::Agent;

/// The configuration in force, replaced whole by a reload
/// ([`crate::reload`]): a reader takes the current version and keeps it
/// for what it is doing.
pub struct LiveConfig(std::sync::RwLock<Arc<Config>>);

impl LiveConfig {
    pub fn new(cfg: Config) -> LiveConfig {
        LiveConfig(std::sync::RwLock::new(Arc::new(cfg)))
    }

    /// The configuration in force now.
    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, cfg: Arc<Config>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}

pub struct Controller {
    /// See [`Controller::cfg`].
    live: Arc<LiveConfig>,
    pub repo: Arc<dyn Repo>,
    /// Users, tokens and sessions, for the HTTP layer's authentication.
    pub auth_repo: Arc<dyn AuthRepo>,
    pub agents: BTreeMap<String, Agent>,
    /// The agents that serve datastores, by agent name.
    servers: BTreeMap<String, standby_agent::access::Server>,
    stores: Mutex<HashMap<String, Datastore>>,
    vm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The VMs active at each site, derived from the shared VM list it
    /// names (see [`Controller::vms_by_site`]).
    #[allow(clippy::type_complexity)]
    site_vms: Mutex<Option<(Arc<Vec<VmRecord>>, Arc<BTreeMap<String, Vec<String>>>)>>,
    /// The hosts that have said which VMs they run since this controller
    /// started (see [`crate::vms::ensure_single_copy`]).
    pub(crate) answered: Mutex<std::collections::HashSet<String>>,
    /// The fenced sites, as in the database (which is written first).
    pub(crate) fences: Mutex<BTreeMap<String, FenceRecord>>,
    /// What is known of fenced hosts and the agents' heartbeats (see
    /// [`crate::fence`]).
    pub(crate) proofs: crate::proofs::Proofs,
    /// The leader lease and its epoch (see [`crate::leader`]).
    pub leader: Arc<crate::leader::Leadership>,
    /// Probes, rules, alerts, incidents and notifications.
    pub watch: crate::watch::state::Watch,
    /// The front door: where each service's clients are sent.
    pub frontdoor: standby_frontdoor::FrontDoor,
    /// Loaded runbooks and the durable engine's state.
    pub runbooks: crate::runbooks::catalog::Runbooks,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    /// One configuration reload at a time ([`crate::reload`]).
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// The file the configuration was read from (none: built in code,
    /// as by `standby demo`); a reload reads it again.
    config_file: Mutex<Option<std::path::PathBuf>>,
    /// Held for the controller's life (see [`Controller::open`]).
    _data_lock: std::fs::File,
}

impl Controller {
    /// The configuration in force now (a reload replaces it; take it
    /// once for a consistent view).
    pub fn cfg(&self) -> Arc<Config> {
        self.live.get()
    }

    /// Note the file the configuration was read from.
    pub fn set_config_file(&self, path: &std::path::Path) {
        *self.config_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.to_path_buf());
    }

    /// The file the configuration was read from, if any.
    pub fn config_file(&self) -> Option<std::path::PathBuf> {
        self.config_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration's holder, shared with the API's reads.
    pub fn live_config(&self) -> &Arc<LiveConfig> {
        &self.live
    }

    /// The names of the VMs active at each site, by site. Derived once
    /// from each version of the VM list (a list of every site's VMs is
    /// asked often and costs a pass over every VM).
    pub async fn vms_by_site(&self) -> Result<Arc<BTreeMap<String, Vec<String>>>, EngineError> {
        let vms = self.repo.vms().await?;
        let mut cached = self.site_vms.lock().expect("site vms lock");
        if let Some((of, by_site)) = cached.as_ref()
            && Arc::ptr_eq(of, &vms)
        {
            return Ok(by_site.clone());
        }
        let mut by_site: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in vms.iter() {
            by_site
                .entry(v.active_site.clone())
                .or_default()
                .push(v.name.clone());
        }
        let by_site = Arc::new(by_site);
        *cached = Some((vms, by_site.clone()));
        Ok(by_site)
    }

    /// Open the database, apply the configuration to it and set up the
    /// agents of every configured host (all local in the embedded mode).
    pub async fn open(cfg: Config) -> Result<Arc<Controller>, EngineError> {
        let url = cfg.controller.url();
        Controller::open_replica(cfg, &url, watch::channel(None).0).await
    }

    /// [`Controller::open`] for a replica serving at `url` that may have to
    /// wait for the leader's lease: meanwhile `seen` tells what it reads
    /// of the lease (its API forwards to the leader).
    pub async fn open_replica(
        cfg: Config,
        url: &str,
        seen: crate::leader::LeaderSeen,
    ) -> Result<Arc<Controller>, EngineError> {
        std::fs::create_dir_all(&cfg.controller.data_dir).map_err(|e| {
            EngineError::Internal(format!(
                "unable to create data directory {}: {e}",
                cfg.controller.data_dir.display()
            ))
        })?;
        // One controller per data directory: two would freeze and thaw the
        // same VMs under each other.
        let lock_path = cfg.controller.data_dir.join("controller.lock");
        let data_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                EngineError::Internal(format!("unable to open {}: {e}", lock_path.display()))
            })?;
        // A controller that just stopped may hold it a moment longer (its
        // last tasks ending; a child process between fork and exec keeps
        // the lock's file open): wait up to 3 s before calling it another.
        let mut waited = 0;
        while data_lock.try_lock().is_err() {
            if waited >= 30 {
                return Err(EngineError::Conflict(format!(
                    "another standby controller is using {}",
                    cfg.controller.data_dir.display()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        let (repo, single) = match cfg.controller.database() {
            Database::Sqlite(path) => (SqlRepo::open(&path).await?, true),
            Database::Postgres(url) => (SqlRepo::connect(&url).await?, false),
        };
        let repo = Arc::new(repo);
        // Nothing is written before this controller leads: a replica
        // waits here while another holds the lease.
        let leader = Arc::new(crate::leader::Leadership::new(
            &cfg.controller.name,
            url,
            single,
            seen,
        ));
        let lease_deadline = crate::leader::take(&*repo, &leader).await?;
        // Renew from now on: opening a large inventory takes longer than
        // the lease. Should the opening fail, the renewal stops with it.
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let renewing = cancel.clone().drop_guard();
        tasks.spawn(crate::leader::renew(
            repo.clone(),
            leader.clone(),
            lease_deadline,
            cancel.clone(),
        ));
        // A VM active on a host the configuration dropped would lose its
        // agent (and its pid files): refuse rather than move it home and
        // risk a second copy.
        for vm in repo.vms().await?.iter() {
            if cfg.vms.contains_key(&vm.name) && !cfg.hosts.contains_key(&vm.active_host) {
                return Err(EngineError::Conflict(format!(
                    "vm {} is active on host {}, which the configuration no longer has; keep the host until the vm is moved",
                    vm.name, vm.active_host
                )));
            }
        }
        // The VMs made from templates and the groups made through the
        // API join the file's (VMs first: a group may name one).
        let (cfg, vms_left_out) = standby_db::join_managed_vms(cfg, &*repo).await?;
        let (cfg, left_out) = standby_db::join_managed_groups(cfg, &*repo).await?;
        for p in vms_left_out.iter().chain(&left_out) {
            tracing::error!("{p}");
        }
        repo.apply_config(&cfg).await?;
        let interrupted = repo.fail_interrupted_jobs().await?;
        if interrupted > 0 {
            tracing::warn!("{interrupted} job(s) were cut off by the last controller stop");
        }
        // How this controller reaches agents: its certificate, or each
        // agent's token in a lab without [pki].
        let tls = match &cfg.pki {
            Some(p) => {
                let me = standby_agent::creds::identity(Role::Controller, &cfg.controller.name)?;
                Some(standby_agent::creds::material(p, &me)?)
            }
            None => None,
        };
        // One client per remote agent, shared by its host and the
        // datastores it serves (one session and counter there).
        let mut clients: BTreeMap<String, standby_agent::RemoteHost> = BTreeMap::new();
        let mut client_of = |agent: &str| -> Result<standby_agent::RemoteHost, EngineError> {
            if let Some(c) = clients.get(agent) {
                return Ok(c.clone());
            }
            let a = &cfg.agents[agent];
            let creds = match &tls {
                Some(m) => Creds::Tls(m.clone()),
                None => Creds::Token(a.secret().map_err(|e| {
                    EngineError::BadRequest(format!(
                        "unable to read the token of agent {agent}: {e}"
                    ))
                })?),
            };
            let host = a.host.clone().unwrap_or_default();
            let kind = match cfg.hosts.get(&host).map(|h| h.driver) {
                Some(DriverKind::Qemu) => "qemu",
                Some(DriverKind::Libvirt) => "libvirt",
                _ => "process",
            };
            let url = a.url.clone().unwrap_or_default();
            let c = standby_agent::RemoteHost::new(&host, agent, &url, &creds, kind)?
                .with_epoch(leader.epoch.clone());
            clients.insert(agent.to_string(), c.clone());
            Ok(c)
        };
        let mut agents = BTreeMap::new();
        for (name, host) in &cfg.hosts {
            let agent = match cfg.remote_agent_of(name) {
                Some((agent, _)) => {
                    Agent::remote(name, host, &cfg.controller.data_dir, client_of(agent)?)
                }
                None => {
                    let run = cfg.controller.data_dir.join("hosts").join(name).join("run");
                    match host.driver {
                        DriverKind::Process => Agent::new(
                            name,
                            host,
                            &cfg.controller.data_dir,
                            Arc::new(ProcessDriver::with_state_dir(run)),
                        ),
                        DriverKind::Qemu => Agent::qemu(
                            name,
                            host,
                            &cfg.controller.data_dir,
                            Arc::new(QemuDriver::new(run)),
                        ),
                        DriverKind::Libvirt => {
                            let uri = host
                                .libvirt_uri
                                .as_deref()
                                .unwrap_or(standby_hv::libvirt::DEFAULT_URI);
                            let driver = standby_hv::libvirt::open_driver(uri, run.clone())
                                .map_err(|e| {
                                    EngineError::BadRequest(format!("host {name}: {e}"))
                                })?;
                            Agent::libvirt(name, host, &cfg.controller.data_dir, driver, run)
                        }
                    }
                }
            };
            agents.insert(name.clone(), agent);
        }
        let mut servers = BTreeMap::new();
        for d in cfg.datastores.values() {
            let Some(name) = &d.agent else { continue };
            if servers.contains_key(name) {
                continue;
            }
            let a = &cfg.agents[name];
            if tls.is_none() && matches!(a.secret(), Ok(None)) {
                return Err(EngineError::BadRequest(format!(
                    "agent {name} serves a datastore but has no token or token_file (or use [pki])"
                )));
            }
            let peer_url = a
                .peer_url
                .clone()
                .or_else(|| a.url.clone())
                .unwrap_or_default();
            servers.insert(
                name.clone(),
                standby_agent::access::Server {
                    client: Arc::new(client_of(name)?),
                    url: peer_url,
                },
            );
        }
        let fences = repo
            .fences()
            .await?
            .into_iter()
            .map(|f| (f.site.clone(), f))
            .collect();
        let watch = crate::watch::state::Watch::open(&cfg, repo.clone()).await?;
        let frontdoor = standby_frontdoor::FrontDoor::open(&cfg, repo.clone()).await?;
        // Runbook jobs are not failed above: they resume once the
        // controller runs (`crate::runbooks::resume_all`).
        let runbooks = crate::runbooks::catalog::Runbooks::open(&cfg, repo.clone());
        let ctl = Arc::new(Controller {
            live: Arc::new(LiveConfig::new(cfg)),
            auth_repo: repo.clone(),
            repo,
            watch,
            frontdoor,
            runbooks,
            agents,
            servers,
            stores: Mutex::default(),
            vm_locks: Mutex::default(),
            site_vms: Mutex::default(),
            answered: Mutex::default(),
            fences: Mutex::new(fences),
            proofs: crate::proofs::Proofs::default(),
            leader,
            tasks,
            cancel,
            reloading: tokio::sync::Mutex::new(()),
            config_file: Mutex::default(),
            _data_lock: data_lock,
        });
        // Datastores that do not exist yet are created now; later a missing
        // or empty one is an error (an unmounted mount point must not be
        // mistaken for a new, empty store). A store an agent serves is
        // created by that agent, under the same rule.
        for (name, d) in &ctl.cfg().datastores {
            if d.agent.is_some() {
                continue;
            }
            let (n, d2) = (name.clone(), d.clone());
            let created = tokio::task::spawn_blocking(move || {
                standby_agent::stores::create_if_absent(&n, &d2)
            })
            .await
            .map_err(|e| EngineError::Internal(format!("datastore creation panicked: {e}")))??;
            if created {
                tracing::info!(datastore = %name, location = %d.location(), "created datastore");
            }
        }
        ctl.adopt_vms().await;
        ctl.rescan().await?;
        renewing.disarm();
        Ok(ctl)
    }

    /// Ask every in-process agent about every VM, so VMs left running by
    /// an earlier controller are adopted (and thawed if a cut-off point
    /// left them frozen) at once, not when someone first asks. Remote
    /// agents adopt their own VMs when they start.
    async fn adopt_vms(&self) {
        for agent in self.agents.values() {
            if agent.remote_name().is_some() {
                continue;
            }
            for vm in self.cfg().vms.keys() {
                if let Ok(st) = agent.status(vm).await
                    && st.is_alive()
                {
                    tracing::info!(vm, host = %agent.host, pid = ?st.pid, "vm running since before this controller started");
                }
            }
        }
    }

    pub fn agent(&self, host: &str) -> Result<&Agent, EngineError> {
        self.agents
            .get(host)
            .ok_or_else(|| EngineError::not_found("host", host))
    }

    /// The datastore by name, opened once. A datastore an agent serves is
    /// never opened here (see [`Controller::store_handle`]).
    pub fn store(&self, name: &str) -> Result<Datastore, EngineError> {
        let live = self.cfg();
        let cfg = live
            .datastores
            .get(name)
            .ok_or_else(|| EngineError::not_found("datastore", name))?;
        if let Some(agent) = &cfg.agent {
            return Err(EngineError::Conflict(format!(
                "datastore {name} is served by agent {agent}: the controller does not open it"
            )));
        }
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(name) {
            return Ok(s.clone());
        }
        let s = standby_agent::stores::open(name, cfg)?;
        stores.insert(name.to_string(), s.clone());
        Ok(s)
    }

    /// The datastore by name as the controller reaches it: open here, or
    /// through the agent that serves it.
    pub fn store_handle(&self, name: &str) -> Result<standby_agent::StoreHandle, EngineError> {
        let config = self
            .cfg()
            .datastores
            .get(name)
            .ok_or_else(|| EngineError::not_found("datastore", name))?
            .clone();
        Ok(match &config.agent {
            Some(agent) => standby_agent::StoreHandle::Agent {
                name: name.to_string(),
                server: self.servers[agent].clone(),
                config,
            },
            None => standby_agent::StoreHandle::Here {
                name: name.to_string(),
                store: self.store(name)?,
                config,
            },
        })
    }

    /// Whether `host`'s agent reads and writes datastore `ds` itself: a
    /// store an agent serves only that agent's host does; any other
    /// store the controller's hosts and remote agents open themselves.
    pub fn host_reaches(&self, host: &str, ds: &str) -> bool {
        let live = self.cfg();
        let Some(d) = live.datastores.get(ds) else {
            return false;
        };
        match &d.agent {
            None => true,
            Some(a) => self
                .agents
                .get(host)
                .and_then(|h| h.remote_name())
                .is_some_and(|r| r == a),
        }
    }

    /// Serialises operations on one VM (a point and a restore never overlap).
    pub async fn lock_vm(&self, vm: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .vm_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vm.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// Stop background work; running jobs get up to 30 s to finish (a
    /// point in progress thaws its VM). VMs keep running: a controller
    /// restart (an upgrade, say) must not take the workloads down, and the
    /// next controller adopts them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.tasks.wait()).await;
    }
}

impl Controller {
    /// Send `service`'s traffic to `site` from now on. Idempotent.
    pub async fn switch_traffic(
        &self,
        service: &str,
        site: &str,
    ) -> Result<standby_types::api::SwitchResult, EngineError> {
        Ok(self.frontdoor.switch(&self.cfg(), service, site).await?)
    }

    /// Make the point catalog match what the datastores hold: points found
    /// in a store are recorded, copies that vanished are dropped. Stores
    /// that cannot be opened are left as they are (and reported).
    ///
    /// Stores an agent serves are not read: their catalog is what their
    /// agents reported (points taken, copies made), kept in the database,
    /// so a controller start does not read every manifest of every site.
    pub async fn rescan(&self) -> Result<(), EngineError> {
        for (name, d) in &self.cfg().datastores {
            if d.agent.is_some() {
                continue;
            }
            let store = match self.store(name) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(datastore = %name, "rescan skipped: {e}");
                    continue;
                }
            };
            let (manifests, bad) =
                match tokio::task::spawn_blocking(move || store.scan_points()).await? {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(datastore = %name, "rescan skipped: {e}");
                        continue;
                    }
                };
            // One unreadable manifest costs only its own point.
            for e in &bad {
                tracing::error!(datastore = %name, "rescan: point left out: {e}");
                self.watch.emit(standby_types::watch::Event {
                    id: 0,
                    at: chrono::Utc::now(),
                    source: "controller".into(),
                    kind: "point.unreadable".into(),
                    severity: standby_types::watch::Severity::Error,
                    labels: [("datastore".to_string(), name.clone())]
                        .into_iter()
                        .collect(),
                    vantage: "controller".into(),
                    message: format!("datastore {name}: {e}"),
                });
            }
            let found: Vec<PointRecord> = manifests.iter().map(|m| point_record(m, name)).collect();
            let changed = self.repo.sync_catalog(name, &found).await?;
            if changed != standby_db::CatalogSync::default() {
                tracing::info!(
                    datastore = %name,
                    points = found.len(),
                    added = changed.points_added,
                    copies_added = changed.copies_added,
                    copies_removed = changed.copies_removed,
                    "catalog updated from the datastore"
                );
            }
        }
        Ok(())
    }
}

/// The catalog entry of a point found in `datastore`. What it cost to
/// take (bytes read, bytes new) is only known to the run that took it.
pub fn point_record(m: &standby_store::Manifest, datastore: &str) -> PointRecord {
    PointRecord {
        id: m.id.to_string(),
        vm: m.vm.clone(),
        group: m.labels.get("group").cloned(),
        site: m.site.clone(),
        time: m.time,
        consistency: match m.consistency {
            standby_store::Consistency::Crash => "crash",
            standby_store::Consistency::Application => "application",
        }
        .to_string(),
        size: m.disks.iter().map(|d| d.size).sum(),
        bytes_read: 0,
        bytes_new: 0,
        copies: vec![datastore.to_string()],
        damaged: Vec::new(),
    }
}
