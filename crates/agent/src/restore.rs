//! Restoring a point (or a template, for a new VM) onto a host's disks:
//! the one implementation, run by in-process hosts, remote agents and
//! drill copies alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use standby_hv::qemu::DiskFormat;
use standby_hv::{QemuDriver, VmSpec};
use standby_store::{Datastore, PointId};

use crate::error::AgentError;
use crate::progress::Progress;
use crate::wire::{Onto, RestoreDone};

/// Write every disk of `point` to the VM's disk paths in `spec`: all disks
/// or none. With a qemu driver, a qcow2 disk is restored to a raw file
/// and converted by [`QemuDriver::install_restored_disk`]. With
/// [`Onto::Delta`] or [`Onto::Replica`], raw disks that are all there
/// already get only the chunks that differ (see [`crate::onto`]).
pub async fn restore_point(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    onto: Onto,
    progress: Arc<dyn Progress>,
    qemu: Option<&QemuDriver>,
) -> Result<RestoreDone, AgentError> {
    let source = Source::Point(point.clone());
    restore_from(spec, store, &source, onto, progress, qemu).await
}

/// Write every disk of template `name` to the VM's disk paths in `spec`,
/// as [`restore_point`] writes a point's (sparse, all disks or none): a
/// new VM made from the template.
pub async fn restore_template(
    spec: &VmSpec,
    store: &Datastore,
    name: &str,
    progress: Arc<dyn Progress>,
    qemu: Option<&QemuDriver>,
) -> Result<RestoreDone, AgentError> {
    let source = Source::Template(name.to_string());
    restore_from(spec, store, &source, Onto::Fresh, progress, qemu).await
}

/// What a restore writes: a point's disks or a template's.
#[derive(Debug, Clone)]
enum Source {
    Point(PointId),
    Template(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Point(p) => write!(f, "point {p}"),
            Source::Template(t) => write!(f, "template {t}"),
        }
    }
}

async fn restore_from(
    spec: &VmSpec,
    store: &Datastore,
    source: &Source,
    onto: Onto,
    progress: Arc<dyn Progress>,
    qemu: Option<&QemuDriver>,
) -> Result<RestoreDone, AgentError> {
    let manifest = {
        let (store, source) = (store.clone(), source.clone());
        tokio::task::spawn_blocking(move || match source {
            Source::Point(p) => store.load_manifest(&p),
            Source::Template(t) => store.load_template(&t).map(|t| t.point),
        })
        .await??
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
            "{source} has no disk '{}' of vm {vm}",
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
    let any_qcow2 = spec.disks.iter().any(|d| qcow2(&d.name));
    if let Source::Point(point) = source
        && onto != Onto::Fresh
        && !any_qcow2
        && crate::onto::can_write_onto(spec)
    {
        return crate::onto::restore_onto(spec, store, point, onto, progress).await;
    }
    let (mut bytes, mut written) = (0, 0);
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
                let (store, source, name, raw) =
                    (store.clone(), source.clone(), d.name.clone(), raw.clone());
                let progress = progress.clone();
                tokio::task::spawn_blocking(move || match source {
                    Source::Point(p) => store.restore_disk(&p, &name, &raw, progress.as_ref()),
                    Source::Template(t) => {
                        store.restore_template_disk(&t, &name, &raw, progress.as_ref())
                    }
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
            Ok::<(u64, u64), AgentError>((s.size, s.bytes_written))
        };
        match step.await {
            Ok((size, w)) => {
                bytes += size;
                written += w;
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
    // The renames are durable only once their directories are synced: a
    // crash must not bring back the old disk beside a new one.
    sync_parents(&done)?;
    // Which point they hold, for a later restore onto them (a new VM
    // made from a template holds none of its own).
    if let Source::Point(point) = source {
        crate::onto::record_point(spec, point)?;
    }
    Ok(RestoreDone {
        bytes,
        written,
        read: 0,
        mode: "full".into(),
    })
}

/// fsync the directory of each of `paths` once; the directories synced,
/// in order.
fn sync_parents(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AgentError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in paths {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            standby_store::backend::sync_dir(&dir)?;
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod sync_tests {
    use super::*;

    #[test]
    fn hardening_a_multi_disk_restore_syncs_each_directory_of_its_renames() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let done = vec![
            dir.path().join("a.raw"),
            other.join("b.raw"),
            dir.path().join("c.raw"),
        ];
        assert_eq!(
            sync_parents(&done).unwrap(),
            vec![dir.path().to_path_buf(), other.clone()]
        );
        // A directory that cannot be synced is an error, not ignored.
        assert!(sync_parents(&[dir.path().join("gone/d.raw")]).is_err());
    }
}
