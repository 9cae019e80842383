//! [`LibvirtDriver`]: connections, domain lookup and definition, and the
//! lifecycle half of the [`Driver`] implementation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use virt::connect::Connect;
use virt::domain::{Domain, DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use super::xml::{self, DomainInfo};
use crate::{
    Capabilities, Driver, HvError, MigrationListen, MigrationOptions, MigrationReport,
    MigrationTarget, QemuDriver, SnapshotSource, VmSpec, VmState, VmStatus,
};

/// How often a shutdown polls the domain.
const POLL: Duration = Duration::from_millis(100);

/// Runs VMs as libvirt domains. See the module docs.
pub struct LibvirtDriver {
    pub(super) uri: String,
    pub(super) state_dir: PathBuf,
    /// Disk images (templates, restored disks) are made by the qemu
    /// driver's qemu-img code: same formats, same rules.
    pub(super) disks: QemuDriver,
    /// The destination libvirtd's URI handed to a migration's source
    /// (`{addr}`: the destination's listen address).
    pub(super) peer_uri: String,
    /// When each VM entered the state last seen.
    seen: Mutex<HashMap<String, (VmState, DateTime<Utc>)>>,
    /// Points begun and not yet settled, per VM.
    pub(super) pending: Mutex<HashMap<String, super::Pending>>,
    pub(super) virsh: PathBuf,
    pub(super) qemu_img: PathBuf,
}

/// A libvirt call's failure.
pub(super) struct Failed {
    pub(super) action: &'static str,
    pub(super) detail: String,
}

pub(super) trait Ctx<T> {
    fn ctx(self, action: &'static str) -> Result<T, Failed>;
}

impl<T> Ctx<T> for Result<T, virt::error::Error> {
    fn ctx(self, action: &'static str) -> Result<T, Failed> {
        self.map_err(|e| Failed {
            action,
            detail: e.message().to_owned(),
        })
    }
}

pub(super) fn is_no_domain(e: &virt::error::Error) -> bool {
    matches!(e.code(), Enum::Known(ErrorNumber::NoDomain))
}

impl LibvirtDriver {
    /// A driver for the libvirtd at `uri` (e.g. `qemu:///system`, or a
    /// private instance's `qemu+unix:///system?socket=PATH`), keeping
    /// its scratch files in `state_dir`.
    pub fn new(uri: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        // libvirt prints every error to stderr unless told; the driver
        // returns them.
        virt::error::clear_error_callback();
        LibvirtDriver {
            uri: uri.into(),
            disks: QemuDriver::new(state_dir.clone()),
            state_dir,
            seen: Mutex::default(),
            pending: Mutex::default(),
            peer_uri: super::DEFAULT_PEER_URI.to_owned(),
            virsh: PathBuf::from("virsh"),
            qemu_img: PathBuf::from("qemu-img"),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI by which a migration's source libvirtd reaches this
    /// (destination) host's libvirtd; `{addr}` stands for the
    /// destination's listen address. Default
    /// [`DEFAULT_PEER_URI`](super::DEFAULT_PEER_URI) (`qemu+tls://{addr}/system`).
    pub fn with_peer_uri(mut self, template: impl Into<String>) -> Self {
        self.peer_uri = template.into();
        self
    }

    /// Run `f` on a fresh connection in a blocking task.
    pub(super) async fn call<T, F>(&self, vm: &str, f: F) -> Result<T, HvError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, Failed> + Send + 'static,
    {
        let uri = self.uri.clone();
        let vm_name = vm.to_owned();
        let joined = tokio::task::spawn_blocking(move || {
            let conn = Connect::open(Some(&uri)).map_err(|e| HvError::Libvirt {
                vm: vm_name.clone(),
                action: "connect",
                uri: uri.clone(),
                detail: e.message().to_owned(),
                temporary: true,
            })?;
            f(&conn).map_err(|Failed { action, detail }| HvError::Libvirt {
                vm: vm_name,
                action,
                uri,
                detail,
                temporary: false,
            })
        })
        .await;
        joined.unwrap_or_else(|e| {
            Err(HvError::StartFailed {
                vm: vm.to_owned(),
                detail: format!("libvirt task failed: {e}"),
            })
        })
    }

    /// The domain named `vm`, if defined.
    pub(super) fn lookup(conn: &Connect, vm: &str) -> Result<Option<Domain>, Failed> {
        match conn.lookup_domain_by_name(vm) {
            Ok(d) => Ok(Some(d)),
            Err(e) if is_no_domain(&e) => Ok(None),
            Err(e) => Err(Failed {
                action: "look up the domain",
                detail: e.message().to_owned(),
            }),
        }
    }

    /// The domain's XML, read.
    pub(super) fn info(dom: &Domain) -> Result<DomainInfo, Failed> {
        let x = dom.xml_desc(0).ctx("read the domain xml")?;
        xml::parse_domain(&x).map_err(|detail| Failed {
            action: "parse the domain xml",
            detail,
        })
    }

    fn status_of(dom: &Domain) -> Result<(VmState, Option<String>), Failed> {
        let (state, reason) = dom.state().ctx("read the domain state")?;
        let reason_text = match reason {
            Enum::Known(r) => r.to_string(),
            Enum::Unknown(n) => format!("reason {n}"),
        };
        let st = match state {
            Enum::Known(DomainState::Running | DomainState::Blocked | DomainState::Shutdown) => {
                (VmState::Running, None)
            }
            Enum::Known(DomainState::Paused | DomainState::PMSuspended) => (VmState::Frozen, None),
            Enum::Known(DomainState::Crashed) => (VmState::Crashed, Some(reason_text)),
            Enum::Known(DomainState::Shutoff) => match reason {
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                    DomainShutoffReason::Crashed | DomainShutoffReason::Failed,
                ))) => (VmState::Crashed, Some(format!("shut off: {reason_text}"))),
                _ => (VmState::Stopped, Some(format!("shut off: {reason_text}"))),
            },
            _ => (VmState::Stopped, None),
        };
        Ok(st)
    }

    /// A status built from what libvirt says, with the time the driver
    /// first saw the state.
    fn stamp(&self, vm: &str, state: VmState, exit: Option<String>, known: bool) -> VmStatus {
        if !known {
            self.seen_lock().remove(vm);
            return VmStatus::stopped();
        }
        let mut seen = self.seen_lock();
        let since = match seen.get(vm) {
            Some((s, t)) if *s == state => *t,
            _ => {
                let now = Utc::now();
                seen.insert(vm.to_owned(), (state, now));
                now
            }
        };
        VmStatus {
            state,
            pid: None,
            since: Some(since),
            exit: if state == VmState::Running || state == VmState::Frozen {
                None
            } else {
                exit
            },
        }
    }

    fn seen_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (VmState, DateTime<Utc>)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `vm`'s status: (state, exit description, defined at all).
    pub(super) async fn observe_pub(&self, vm: &str) -> Result<VmStatus, HvError> {
        self.observe(vm).await
    }

    async fn observe(&self, vm: &str) -> Result<VmStatus, HvError> {
        let name = vm.to_owned();
        let (state, exit, known) = self
            .call(vm, move |c| match Self::lookup(c, &name)? {
                Some(d) => {
                    let (s, e) = Self::status_of(&d)?;
                    Ok((s, e, true))
                }
                None => Ok((VmState::Stopped, None, false)),
            })
            .await?;
        Ok(self.stamp(vm, state, exit, known))
    }

    /// Define (or redefine, keeping the UUID) the domain of a VM standby
    /// defines; refuses a domain of that name it did not define.
    fn define(conn: &Connect, spec: &VmSpec, kvm: bool) -> Result<Result<Domain, HvError>, Failed> {
        let existing = Self::lookup(conn, &spec.name)?;
        let uuid = match &existing {
            Some(d) => {
                let info = Self::info(d)?;
                if info.standby_vm.as_deref() != Some(spec.name.as_str()) {
                    return Ok(Err(HvError::InvalidSpec {
                        vm: spec.name.clone(),
                        detail: format!(
                            "a domain '{}' exists that standby did not define; adopt it (`[vms.{}.libvirt] adopt = true`, see `standby vm import`) or rename one of them",
                            spec.name, spec.name
                        ),
                    }));
                }
                if d.is_active().ctx("read the domain state")? {
                    return Ok(Ok(existing.unwrap_or_else(|| unreachable!())));
                }
                Some(d.uuid_string().ctx("read the domain uuid")?)
            }
            None => None,
        };
        let x = match xml::domain_xml(spec, uuid.as_deref(), kvm) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let d = conn.define_domain_xml(&x).ctx("define the domain")?;
        Ok(Ok(d))
    }

    /// The disks of `spec` as the domain has them: (standby name, target
    /// device, source file, format).
    pub(super) fn domain_disks(
        spec: &VmSpec,
        info: &DomainInfo,
    ) -> Result<Vec<(String, String, PathBuf, String)>, HvError> {
        let adopt = spec.libvirt.as_ref().is_some_and(|l| l.adopt);
        let mut out = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            let dev = if adopt {
                d.name.clone()
            } else {
                xml::target_dev(i)
            };
            let found = info.disks.iter().find(|x| x.target == dev);
            let Some(found) = found else {
                return Err(HvError::UnknownDisk {
                    vm: spec.name.clone(),
                    disk: d.name.clone(),
                });
            };
            let Some(source) = found.source.clone() else {
                return Err(HvError::InvalidSpec {
                    vm: spec.name.clone(),
                    detail: format!("disk {dev} has no local source"),
                });
            };
            out.push((
                d.name.clone(),
                dev,
                source,
                found.format.clone().unwrap_or_else(|| "raw".into()),
            ));
        }
        Ok(out)
    }

    fn check_disks(spec: &VmSpec) -> Result<(), HvError> {
        if spec.libvirt.as_ref().is_some_and(|l| l.adopt) {
            return Ok(());
        }
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Put a raw image restored from the datastore in place as `disk` of
    /// `spec` (see [`QemuDriver::install_restored_disk`]).
    pub async fn install_restored_disk(
        &self,
        spec: &VmSpec,
        disk: &str,
        raw: &Path,
    ) -> Result<(), HvError> {
        self.disks.install_restored_disk(spec, disk, raw).await
    }

    /// Undefine the domain of `vm` if it is shut off (keeps the disks;
    /// its checkpoints' metadata goes too). For tests and drills.
    pub async fn undefine(&self, vm: &str) -> Result<(), HvError> {
        let name = vm.to_owned();
        self.call(vm, move |c| {
            if let Some(d) = Self::lookup(c, &name)?
                && !d.is_active().ctx("read the domain state")?
            {
                // 16: VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                d.undefine_flags(16).ctx("undefine the domain")?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Driver for LibvirtDriver {
    fn kind(&self) -> &'static str {
        "libvirt"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            live_snapshot: true,
            dirty_tracking: true,
            app_consistent: true,
            // libvirt's peer-to-peer migration with storage copy
            // (docs/libvirt.md).
            live_migration: true,
        }
    }

    fn vm_capabilities(&self, spec: &VmSpec) -> Capabilities {
        let adopt = spec.libvirt.as_ref().is_some_and(|l| l.adopt);
        Capabilities {
            // An adopted domain's disks are only known from its XML.
            live_migration: !adopt,
            // An adopted domain's channel is only known from its XML: the
            // point tells.
            app_consistent: adopt || spec.qemu.as_ref().is_some_and(|q| q.guest_agent),
            ..self.capabilities()
        }
    }

    async fn create_from_template(
        &self,
        spec: &VmSpec,
        template_disks: &[(String, PathBuf)],
    ) -> Result<(), HvError> {
        if spec.libvirt.as_ref().is_some_and(|l| l.adopt) {
            return Err(HvError::Unsupported {
                driver: "libvirt",
                operation: "creating the disks of an adopted domain",
            });
        }
        self.disks.create_from_template(spec, template_disks).await
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        Self::check_disks(spec)?;
        let adopt = spec.libvirt.as_ref().is_some_and(|l| l.adopt);
        if !adopt {
            std::fs::create_dir_all(&spec.workdir).map_err(|source| HvError::Io {
                vm: spec.name.clone(),
                action: "create the work dir",
                path: spec.workdir.clone(),
                source,
            })?;
        }
        let s = spec.clone();
        let kvm = crate::qemu::kvm_usable();
        let t = Instant::now();
        let started = self
            .call(&spec.name, move |c| {
                let dom = if adopt {
                    match Self::lookup(c, &s.name)? {
                        Some(d) => d,
                        None => {
                            return Ok(Err(HvError::StartFailed {
                                vm: s.name.clone(),
                                detail: "no domain of that name to adopt".into(),
                            }));
                        }
                    }
                } else {
                    match Self::define(c, &s, kvm)? {
                        Ok(d) => d,
                        Err(e) => return Ok(Err(e)),
                    }
                };
                if !dom.is_active().ctx("read the domain state")? {
                    dom.create().ctx("start the domain")?;
                    return Ok(Ok(true));
                }
                Ok(Ok(false))
            })
            .await??;
        if started {
            tracing::info!(vm = %spec.name, uri = %self.uri, adopt, took = ?t.elapsed(), "domain started");
        }
        self.observe(&spec.name).await
    }

    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, HvError> {
        let vm = name.to_owned();
        let asked = self
            .call(name, move |c| match Self::lookup(c, &vm)? {
                Some(d) if d.is_active().ctx("read the domain state")? => {
                    d.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                        .ctx("press the power button")?;
                    Ok(true)
                }
                _ => Ok(false),
            })
            .await?;
        if asked {
            let deadline = Instant::now() + timeout;
            loop {
                let st = self.observe(name).await?;
                if !st.is_alive() {
                    tracing::info!(vm = name, "domain shut down by its guest");
                    return Ok(st);
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        vm = name,
                        ?timeout,
                        "guest did not shut down: destroying the domain"
                    );
                    return self.stop(name).await;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        self.observe(name).await
    }

    async fn stop(&self, name: &str) -> Result<VmStatus, HvError> {
        let vm = name.to_owned();
        self.call(name, move |c| {
            if let Some(d) = Self::lookup(c, &vm)?
                && d.is_active().ctx("read the domain state")?
            {
                match d.destroy() {
                    Ok(()) => {}
                    // It ended between the two calls.
                    Err(e) if !d.is_active().unwrap_or(true) => drop(e),
                    Err(e) => {
                        return Err(Failed {
                            action: "destroy the domain",
                            detail: e.message().to_owned(),
                        });
                    }
                }
            }
            Ok(())
        })
        .await?;
        self.observe(name).await
    }

    async fn status(&self, name: &str) -> Result<VmStatus, HvError> {
        self.observe(name).await
    }

    async fn freeze(&self, name: &str) -> Result<(), HvError> {
        let st = self.observe(name).await?;
        match st.state {
            VmState::Frozen => return Ok(()),
            VmState::Running => {}
            state => {
                return Err(HvError::NotRunning {
                    vm: name.to_owned(),
                    state,
                });
            }
        }
        let vm = name.to_owned();
        self.call(name, move |c| match Self::lookup(c, &vm)? {
            Some(d) => d.suspend().ctx("suspend the domain"),
            None => Ok(()),
        })
        .await?;
        self.observe(name).await.map(drop)
    }

    async fn thaw(&self, name: &str) -> Result<(), HvError> {
        let vm = name.to_owned();
        self.call(name, move |c| match Self::lookup(c, &vm)? {
            Some(d) => d.resume().ctx("resume the domain"),
            None => Ok(()),
        })
        .await?;
        self.observe(name).await.map(drop)
    }

    async fn snapshot_begin(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError> {
        self.snapshot_begin_from(spec, None, super::GRANULARITY)
            .await
    }

    async fn snapshot_begin_from(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        Self::check_disks(spec)?;
        self.point(spec, base, align).await
    }

    async fn snapshot_end(&self, spec: &VmSpec) -> Result<(), HvError> {
        let _ = std::fs::remove_dir_all(self.scratch_dir(&spec.name));
        Ok(())
    }

    async fn snapshot_committed(&self, spec: &VmSpec, point: Option<&str>) -> Result<(), HvError> {
        self.settle(spec, point).await
    }

    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        self.prepare_incoming(spec, listen).await
    }

    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        self.migrate_out_impl(spec, target, options).await
    }

    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        self.finish_incoming(spec).await
    }

    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), HvError> {
        self.migrate_in_abort_impl(spec).await
    }

    async fn migrate_out_confirm(&self, spec: &VmSpec, moved: bool) -> Result<VmStatus, HvError> {
        self.confirm_out(spec, moved).await
    }
}
