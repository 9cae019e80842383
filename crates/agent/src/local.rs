//! A host in this process: a driver here, and the one implementation of
//! the data path ([`take_point`], [`restore_point`]) that the agent
//! daemon runs too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use standby_hv::qemu::DiskFormat;
use standby_hv::{DiskSpec, Driver, QemuDriver, VmSpec, VmStatus};
use standby_store::{Consistency, Datastore, DiskWriteOptions, Manifest, PointId, PointMeta};

use crate::error::AgentError;
use crate::ops::{Host, PointRequest, StoreRef};
use crate::progress::Progress;
use crate::wire::{FencedVm, PointStats};

/// A driver in this process.
pub struct LocalHost {
    driver: Arc<dyn Driver>,
    /// The same driver on a qemu host: restores install qcow2 disks
    /// through it, and new disks are created in their format.
    qemu: Option<Arc<QemuDriver>>,
}

impl LocalHost {
    pub fn new(driver: Arc<dyn Driver>, qemu: Option<Arc<QemuDriver>>) -> LocalHost {
        LocalHost { driver, qemu }
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
        Ok(self.driver.start(spec).await?)
    }

    async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, AgentError> {
        Ok(self.driver.shutdown(vm, timeout).await?)
    }

    async fn stop(&self, vm: &str) -> Result<VmStatus, AgentError> {
        Ok(self.driver.stop(vm).await?)
    }

    async fn provision_disks(&self, spec: &VmSpec) -> Result<(), AgentError> {
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
        Ok(missing_disks(spec))
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
        progress: Arc<dyn Progress>,
    ) -> Result<u64, AgentError> {
        restore_point(spec, store.opened()?, point, progress, self.qemu.as_deref()).await
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

/// Write every disk of `point` to the VM's disk paths in `spec`: all disks
/// or none. With a qemu driver, a qcow2 disk is restored to a raw file
/// and converted by [`QemuDriver::install_restored_disk`].
pub async fn restore_point(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    progress: Arc<dyn Progress>,
    qemu: Option<&QemuDriver>,
) -> Result<u64, AgentError> {
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
        return Err(AgentError::Conflict(format!(
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
                std::fs::create_dir_all(parent).map_err(AgentError::io(format!(
                    "unable to create {}",
                    parent.display()
                )))?;
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
            Ok::<u64, AgentError>(s.size)
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
        std::fs::rename(staged(path), path).map_err(AgentError::io(format!(
            "unable to move the restored disk into place at {}",
            path.display()
        )))?;
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
