//! Disk images: creating them from a template, installing restored ones,
//! and the `qemu-img` calls behind both.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::driver::QemuDriver;
use super::spec::DiskFormat;
use crate::{HvError, VmSpec};

impl QemuDriver {
    /// Create one disk image at a temporary name, then link it into place,
    /// which fails instead of overwriting.
    pub(super) async fn create_disk(
        &self,
        vm: &str,
        disk: &crate::DiskSpec,
        format: DiskFormat,
        template: Option<&Path>,
    ) -> Result<(), HvError> {
        if let Some(parent) = disk.path.parent() {
            std::fs::create_dir_all(parent).map_err(Self::io_err(
                vm,
                "create the disk directory",
                parent,
            ))?;
        }
        let mut tmp = disk.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut args: Vec<OsString> = Vec::new();
        match template {
            Some(t) => {
                let t =
                    std::path::absolute(t).map_err(Self::io_err(vm, "resolve the template", t))?;
                let (tfmt, tsize) = self.image_info(vm, &t).await?;
                if disk.size > 0 && tsize > disk.size {
                    return Err(HvError::TemplateTooLarge {
                        vm: vm.to_owned(),
                        disk: disk.name.clone(),
                        template: t,
                        size: disk.size,
                    });
                }
                let size = disk.size.max(tsize);
                match format {
                    DiskFormat::Qcow2 => {
                        args.extend(["create", "-q", "-f", "qcow2", "-b"].map(OsString::from));
                        args.push(t.into_os_string());
                        args.extend(["-F".into(), tfmt.into(), tmp.clone().into_os_string()]);
                        args.push(size.to_string().into());
                    }
                    DiskFormat::Raw => {
                        args.extend(["convert", "-q", "-f"].map(OsString::from));
                        args.extend([tfmt.into(), "-O".into(), "raw".into()]);
                        args.extend([t.into_os_string(), tmp.clone().into_os_string()]);
                    }
                }
                self.qemu_img(vm, &args).await?;
                if format == DiskFormat::Raw {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&tmp)
                        .map_err(Self::io_err(vm, "resize the disk", &tmp))?;
                    if f.metadata().map(|m| m.len()).unwrap_or(0) < size {
                        f.set_len(size)
                            .map_err(Self::io_err(vm, "resize the disk", &tmp))?;
                    }
                }
            }
            None => {
                args.extend(["create", "-q", "-f", format.as_str()].map(OsString::from));
                args.push(tmp.clone().into_os_string());
                args.push(disk.size.to_string().into());
                self.qemu_img(vm, &args).await?;
            }
        }
        let linked = std::fs::hard_link(&tmp, &disk.path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                HvError::DiskExists {
                    vm: vm.to_owned(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                }
            } else {
                HvError::Io {
                    vm: vm.to_owned(),
                    action: "link the new disk",
                    path: disk.path.clone(),
                    source,
                }
            }
        })?;
        tracing::info!(vm, disk = %disk.name, path = %disk.path.display(), "disk created");
        Ok(())
    }

    /// Put a raw image restored from the datastore in place as `disk` of
    /// `spec`, in the disk's format: a raw disk is the file itself
    /// (renamed), a qcow2 disk is converted (`qemu-img convert -O qcow2`,
    /// zeroes left unallocated) and the raw file removed. Never overwrites
    /// an existing disk (`DiskExists`); nothing half-written is left at
    /// the disk's path.
    pub async fn install_restored_disk(
        &self,
        spec: &VmSpec,
        disk: &str,
        raw: &Path,
    ) -> Result<(), HvError> {
        let vm = spec.name.as_str();
        let d = spec
            .disks
            .iter()
            .find(|d| d.name == disk)
            .ok_or_else(|| HvError::UnknownDisk {
                vm: vm.to_owned(),
                disk: disk.to_owned(),
            })?;
        let exists = || HvError::DiskExists {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            path: d.path.clone(),
        };
        if d.path.exists() {
            return Err(exists());
        }
        let format = spec.qemu.clone().unwrap_or_default().disk_format(disk);
        let mut tmp = d.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let source = match format {
            DiskFormat::Raw => raw.to_owned(),
            DiskFormat::Qcow2 => {
                let _ = std::fs::remove_file(&tmp);
                let args: Vec<OsString> = vec![
                    "convert".into(),
                    "-q".into(),
                    "-f".into(),
                    "raw".into(),
                    "-O".into(),
                    "qcow2".into(),
                    raw.as_os_str().to_owned(),
                    tmp.clone().into_os_string(),
                ];
                if let Err(e) = self.qemu_img(vm, &args).await {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                tmp.clone()
            }
        };
        let linked = std::fs::hard_link(&source, &d.path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                exists()
            } else {
                HvError::Io {
                    vm: vm.to_owned(),
                    action: "link the restored disk",
                    path: d.path.clone(),
                    source,
                }
            }
        })?;
        let _ = std::fs::remove_file(raw);
        tracing::info!(vm, disk, format = format.as_str(), path = %d.path.display(), "restored disk installed");
        Ok(())
    }

    /// Format and virtual size of an image.
    async fn image_info(&self, vm: &str, path: &Path) -> Result<(String, u64), HvError> {
        let out = self
            .qemu_img(
                vm,
                &[
                    "info".into(),
                    "--output=json".into(),
                    "-U".into(),
                    path.as_os_str().to_owned(),
                ],
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| HvError::Tool {
            vm: vm.to_owned(),
            program: "qemu-img info",
            detail: e.to_string(),
        })?;
        Ok((
            v["format"].as_str().unwrap_or("raw").to_owned(),
            v["virtual-size"].as_u64().unwrap_or(0),
        ))
    }

    pub(super) async fn qemu_img(&self, vm: &str, args: &[OsString]) -> Result<Vec<u8>, HvError> {
        let out = tokio::process::Command::new(&self.qemu_img)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| HvError::Spawn {
                vm: vm.to_owned(),
                command: self.qemu_img.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(HvError::Tool {
                vm: vm.to_owned(),
                program: "qemu-img",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }
}
