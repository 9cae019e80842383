//! The agent of one hypervisor host. In the embedded controller each local
//! host's agent runs in-process; the data path (disk → datastore) goes
//! through the agent, never through the API.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use standby_hv::{DiskSpec, Driver, VmSpec, VmStatus};
use standby_store::{
    Consistency, Datastore, DiskWriteOptions, DiskWriteStats, Manifest, PointId, PointMeta,
};
use standby_types::config::{self, Config};

use crate::error::ServerError;
use crate::jobs::JobProgress;

pub struct Agent {
    pub host: String,
    pub site: String,
    disk_dir: PathBuf,
    workdir: PathBuf,
    pub driver: Arc<dyn Driver>,
}

/// What a point of one VM cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
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

impl Agent {
    pub fn new(host: &str, cfg: &config::Host, data_dir: &Path, driver: Arc<dyn Driver>) -> Agent {
        Agent {
            host: host.to_string(),
            site: cfg.site.clone(),
            disk_dir: cfg.disk_dir.clone(),
            workdir: data_dir.join("hosts").join(host),
            driver,
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
        let expand = |arg: &str| {
            let mut s = arg.replace("{vm}", name).replace("{site}", &self.site);
            for d in &disks {
                s = s.replace(&format!("{{disk.{}}}", d.name), &d.path.to_string_lossy());
            }
            s
        };
        Ok(VmSpec {
            name: name.to_string(),
            command: resolve_command(&vm.command),
            args: vm.args.iter().map(|a| expand(a)).collect(),
            env: vm.env.clone(),
            disks,
            workdir: self.workdir.clone(),
            qemu: None,
        })
    }

    /// Create missing disk images as sparse files of their configured size.
    pub fn provision_disks(&self, spec: &VmSpec) -> Result<(), ServerError> {
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

    pub async fn status(&self, vm: &str) -> Result<VmStatus, ServerError> {
        Ok(self.driver.status(vm).await?)
    }

    /// Take a crash-consistent point: the VM is frozen only while its disks
    /// are read into the datastore; packs are sealed and the manifest
    /// written after it runs again.
    pub async fn take_point(
        &self,
        spec: &VmSpec,
        store: &Datastore,
        chunk_size: u32,
        labels: std::collections::BTreeMap<String, String>,
        vm_config: serde_json::Value,
        progress: Arc<JobProgress>,
    ) -> Result<(Manifest, PointStats), ServerError> {
        // Everything that may wait (the store's lock, a catalog reload)
        // happens before the freeze: the VM is paused only while its disks
        // are read.
        let meta = PointMeta {
            vm: spec.name.clone(),
            site: self.site.clone(),
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
        let source = self.driver.snapshot_begin(spec).await?;
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
        let thawed = self.driver.snapshot_end(spec).await;
        let (writer, stats) = written??;
        thawed?;
        progress.set_message(format!("{}: sealing point", spec.name));
        let manifest = tokio::task::spawn_blocking(move || writer.commit()).await??;
        Ok((manifest, stats))
    }

    /// Write every disk of `point` to this host's disk paths for the VM.
    pub async fn restore_point(
        &self,
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
                            ServerError::Internal(format!(
                                "unable to create {}: {e}",
                                parent.display()
                            ))
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
}

/// A bare command name is looked up next to the running binary first (so
/// `standby-vnf` is found beside `standby`), then left to `PATH`.
fn resolve_command(cmd: &str) -> PathBuf {
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
