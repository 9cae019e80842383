//! A host in this process: a driver here, and the one implementation of
//! the data path ([`take_point`], [`restore_point`]) that the agent
//! daemon runs too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use standby_hv::{
    DiskSpec, Driver, MigrationListen, MigrationOptions, MigrationReport, MigrationTarget,
    QemuDriver, VmSpec, VmStatus,
};
use standby_store::{Consistency, Datastore, DiskWriteOptions, Manifest, PointId, PointMeta};

use standby_types::outcome::{DrillProbed, DrillState, DrillStopped};
use standby_types::watch::ProbeCheck;

use crate::error::AgentError;
use crate::ops::{Host, PointRequest, StoreRef};
use crate::progress::Progress;
pub use crate::restore::{restore_point, restore_template};
use crate::wire::DrillRequest;
use crate::wire::{FencedVm, PointStats};

fn adopted(spec: &VmSpec) -> bool {
    spec.libvirt.as_ref().is_some_and(|l| l.adopt)
}

/// A driver in this process.
pub struct LocalHost {
    driver: Arc<dyn Driver>,
    /// The same driver on a qemu host (a qemu driver for the disks on a
    /// libvirt host): restores install qcow2 disks through it, and new
    /// disks are created in their format.
    qemu: Option<Arc<QemuDriver>>,
    /// Where drill copies live (`<drills>/<id>/`).
    drills: PathBuf,
}

impl LocalHost {
    /// A host running `driver` (`qemu`: the same driver, on a qemu host),
    /// keeping drill copies under `drills`.
    pub fn new(
        driver: Arc<dyn Driver>,
        qemu: Option<Arc<QemuDriver>>,
        drills: impl Into<PathBuf>,
    ) -> LocalHost {
        LocalHost {
            driver,
            qemu,
            drills: drills.into(),
        }
    }

    /// The driver (the agent daemon lists and fences its VMs).
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }
}

#[async_trait::async_trait]
impl Host for LocalHost {
    fn remote_agent(&self) -> Option<&str> {
        None
    }

    fn driver_kind(&self) -> &'static str {
        self.driver.kind()
    }

    fn resolve_command(&self, program: &str) -> PathBuf {
        resolve_command(program)
    }

    async fn status(&self, vm: &str) -> Result<VmStatus, AgentError> {
        Ok(self.driver.status(vm).await?)
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        // Never from half-restored disks; and the VM writes to them, so
        // which point they held is forgotten.
        crate::onto::before_start(spec)?;
        Ok(self.driver.start(spec).await?)
    }

    async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, AgentError> {
        Ok(self.driver.shutdown(vm, timeout).await?)
    }

    async fn stop(&self, vm: &str) -> Result<VmStatus, AgentError> {
        Ok(self.driver.stop(vm).await?)
    }

    async fn provision_disks(&self, spec: &VmSpec) -> Result<(), AgentError> {
        if adopted(spec) {
            // An adopted domain's disks are where libvirt has them.
            return Ok(());
        }
        if let Some(q) = &self.qemu {
            // In the disk's format (an empty qcow2 or a sparse raw file).
            let mut missing = spec.clone();
            missing.disks.retain(|d| !d.path.exists());
            if !missing.disks.is_empty() {
                q.create_from_template(&missing, &[]).await?;
            }
            return Ok(());
        }
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || provision_disks(&spec)).await?
    }

    async fn missing_disks(&self, spec: &VmSpec) -> Result<Vec<DiskSpec>, AgentError> {
        if adopted(spec) {
            return Ok(Vec::new());
        }
        Ok(missing_disks(spec))
    }

    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, AgentError> {
        if adopted(spec) {
            return Err(AgentError::Conflict(format!(
                "vm {} is an adopted libvirt domain: its disks are where libvirt has them, and standby does not move them live",
                spec.name
            )));
        }
        let st = self.driver.status(&spec.name).await?;
        if st.is_alive() {
            return Err(AgentError::Conflict(format!(
                "vm {} is {} here already: no migration onto it",
                spec.name, st.state
            )));
        }
        // Disks left here by an earlier stay are a stale copy: the VM runs
        // at the source with newer data, and the migration copies all of
        // it.
        let gone = crate::onto::discard(spec)?;
        if !gone.is_empty() {
            tracing::warn!(vm = %spec.name, disks = ?gone, "stale disks removed before a live migration onto this host");
        }
        Ok(self.driver.migrate_in_prepare(spec, listen).await?)
    }

    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, AgentError> {
        Ok(self.driver.migrate_out(spec, target, options).await?)
    }

    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        Ok(self.driver.migrate_in_finish(spec).await?)
    }

    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), AgentError> {
        Ok(self.driver.migrate_in_abort(spec).await?)
    }

    async fn migrate_out_confirm(
        &self,
        spec: &VmSpec,
        moved: bool,
    ) -> Result<VmStatus, AgentError> {
        Ok(self.driver.migrate_out_confirm(spec, moved).await?)
    }

    async fn take_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        req: PointRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<(Manifest, PointStats), AgentError> {
        take_point(self.driver.as_ref(), spec, store.opened()?, req, progress).await
    }

    async fn restore_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        point: &PointId,
        onto: crate::wire::Onto,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError> {
        let store = store.opened()?;
        restore_point(spec, store, point, onto, progress, self.qemu.as_deref()).await
    }

    async fn restore_template(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        template: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError> {
        let store = store.opened()?;
        restore_template(spec, store, template, progress, self.qemu.as_deref()).await
    }

    async fn fence(
        &self,
        _reason: &str,
        vms: &[String],
        placed: &[String],
    ) -> Result<Vec<FencedVm>, AgentError> {
        // Every VM asked about: a stale copy of a VM active elsewhere
        // must stop too.
        let mut out = Vec::new();
        for vm in vms {
            let result = match self.driver.status(vm).await {
                Ok(st) if st.is_alive() => match self.driver.stop(vm).await {
                    Ok(_) => "stopped".to_string(),
                    Err(e) => format!("failed: {}", standby_types::error_chain(&e)),
                },
                Ok(_) if placed.contains(vm) => "already stopped".into(),
                Ok(_) => continue,
                Err(e) => format!("failed: {}", standby_types::error_chain(&e)),
            };
            out.push(FencedVm {
                vm: vm.clone(),
                result,
            });
        }
        Ok(out)
    }

    async fn unfence(&self) -> Option<Result<(), AgentError>> {
        None
    }

    async fn drill_start(
        &self,
        req: DrillRequest,
        store: &StoreRef<'_>,
        progress: Arc<dyn Progress>,
    ) -> Result<DrillState, AgentError> {
        crate::drill::start(&self.drills, req, store.opened()?, progress).await
    }

    async fn drill_probe(
        &self,
        id: &str,
        check: ProbeCheck,
        timeout: Duration,
    ) -> Result<DrillProbed, AgentError> {
        crate::drill::probe(&self.drills, id, check, timeout).await
    }

    async fn drill_stop(&self, id: &str) -> Result<DrillStopped, AgentError> {
        crate::drill::stop(&self.drills, id).await
    }
}

/// Create missing disk images as sparse files of their configured size.
pub fn provision_disks(spec: &VmSpec) -> Result<(), AgentError> {
    for d in &spec.disks {
        if d.path.exists() {
            continue;
        }
        let io = |e: std::io::Error| {
            AgentError::io(format!(
                "unable to create disk '{}' at {}",
                d.name,
                d.path.display()
            ))(e)
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
pub async fn take_point(
    driver: &dyn Driver,
    spec: &VmSpec,
    store: &Datastore,
    req: PointRequest,
    progress: Arc<dyn Progress>,
) -> Result<(Manifest, PointStats), AgentError> {
    // Everything that may wait (the store's lock, a catalog reload)
    // happens before the freeze: the VM is paused only while its disks
    // are read.
    let PointRequest {
        site,
        chunk_size,
        labels,
        vm_config,
    } = req;
    let meta = PointMeta {
        vm: spec.name.clone(),
        site,
        consistency: Consistency::Crash,
        config: vm_config,
        labels,
    };
    let (writer, base, newest) = {
        let (store, vm) = (store.clone(), spec.name.clone());
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
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
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
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
    progress: Arc<dyn Progress>,
) -> Result<(Manifest, PointStats), AgentError> {
    let total: u64 = spec.disks.iter().map(|d| d.size).sum();
    progress.stage(format!("{}: reading disks", spec.name), total);
    let written = {
        let progress = progress.clone();
        let note = source.consistency_note.clone();
        let app_consistent = source.app_consistent;
        let taken_after = source.taken_after;
        tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
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
