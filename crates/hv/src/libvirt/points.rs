//! Recovery points of libvirt domains: checkpoints and push-mode backups.
//!
//! The `virt` 0.5 safe API lacks the checkpoint and backup calls, so
//! they go through `virsh` (same libvirt, same URI); fsfreeze goes
//! through the safe `qemu_agent_command`, the wait for the backup job
//! through `job_stats`.
//!
//! - Running domain, all disks qcow2: each point creates a checkpoint
//!   `standby.<nanos>` together with its backup (`virsh backup-begin
//!   BACKUP CHECKPOINT --reuse-external`: one instant for both). The
//!   backup copies, copy-before-write, into scratch files in
//!   `<state dir>/<vm>.point/` that the driver creates itself (so
//!   libvirt gives them no backing file): a sparse raw file per disk for
//!   a full read; for an incremental point (`<incremental>` = the
//!   checkpoint of the base point) a qcow2 file that receives only the
//!   clusters the checkpoint's bitmap marks. Its allocation (`qemu-img
//!   map`, data and zero clusters) is [`SnapshotDisk::dirty`]; it is
//!   converted to a sparse raw file for the reader, which reads only the
//!   dirty chunks.
//! - `<state dir>/<vm>.checkpoint` holds `<point id> <checkpoint>` of
//!   the last committed point. Committed: the new checkpoint is recorded
//!   and older `standby.*` checkpoints deleted; abandoned: the new
//!   checkpoint is deleted. libvirt keeps every checkpoint's bitmap
//!   recording, so the base checkpoint still covers the abandoned
//!   point's writes.
//! - Incremental only when the chunk size divides the bitmaps'
//!   granularity ([`GRANULARITY`], libvirt's default for 64 KiB
//!   clusters): a dirty chunk must be copied whole.
//! - Full read, said on the consistency note, when: no base; a raw disk
//!   (checkpoints need qcow2); no checkpoint recorded for the base, or it
//!   is gone; a larger chunk size.
//! - Domain not running: its disk files (qcow2 converted to raw), a full
//!   read labelled "cold".
//!
//! [`SnapshotDisk::dirty`]: crate::SnapshotDisk::dirty

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use super::driver::{Ctx, Failed, LibvirtDriver};
use super::xml::{self, BackupTarget};
use super::{GRANULARITY, Pending};
use crate::qemu::DiskFormat;
use crate::{HvError, SnapshotDisk, SnapshotSource, VmSpec};

/// Prefix of the checkpoints standby makes.
pub const CHECKPOINT_PREFIX: &str = "standby.";
/// Longest wait for the guest agent's fsfreeze (the qemu driver's).
const FREEZE_TIMEOUT: Duration = crate::qemu::FREEZE_TIMEOUT;
/// Longest wait for a backup job.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// One disk of a live point.
struct LiveDisk {
    name: String,
    dev: String,
    source: PathBuf,
    format: String,
    size: u64,
}

impl LibvirtDriver {
    pub(super) fn scratch_dir(&self, vm: &str) -> PathBuf {
        self.state_dir.join(format!("{vm}.point"))
    }

    fn checkpoint_file(&self, vm: &str) -> PathBuf {
        self.state_dir.join(format!("{vm}.checkpoint"))
    }

    fn pending_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(point, checkpoint)` of the last committed point.
    fn recorded(&self, vm: &str) -> Option<(String, String)> {
        let s = std::fs::read_to_string(self.checkpoint_file(vm)).ok()?;
        let (p, c) = s.trim().split_once(' ')?;
        Some((p.to_owned(), c.to_owned()))
    }

    pub(super) async fn point(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        let vm = spec.name.clone();
        // A point never settled (its caller died): abandoned.
        if self.pending_lock().contains_key(&vm) {
            self.settle(spec, None).await?;
        }
        let s = spec.clone();
        let found = self
            .call(&vm, move |c| {
                let Some(d) = Self::lookup(c, &s.name)? else {
                    return Ok(Ok(None));
                };
                let info = Self::info(&d)?;
                let disks = match Self::domain_disks(&s, &info) {
                    Ok(x) => x,
                    Err(e) => return Ok(Err(e)),
                };
                let mut out = Vec::new();
                for (name, dev, source, format) in disks {
                    let size = d.block_info(&dev, 0).ctx("read a disk's size")?.capacity;
                    out.push(LiveDisk {
                        name,
                        dev,
                        source,
                        format,
                        size,
                    });
                }
                let active = d.is_active().ctx("read the domain state")?;
                Ok(Ok(Some((active, info.guest_agent, out))))
            })
            .await??;
        let dir = self.scratch_dir(&vm);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&vm, "create the scratch dir", &dir))?;
        match found {
            Some((true, agent, disks)) => self.live_point(spec, base, align, agent, disks).await,
            Some((false, _, disks)) => {
                let files = disks
                    .into_iter()
                    .map(|d| (d.name, d.source, d.format))
                    .collect();
                self.cold_point(&vm, files).await
            }
            None if spec.libvirt.as_ref().is_some_and(|l| l.adopt) => Err(HvError::NotRunning {
                vm,
                state: crate::VmState::Stopped,
            }),
            None => {
                let q = spec.qemu.clone().unwrap_or_default();
                let files = spec
                    .disks
                    .iter()
                    .map(|d| {
                        let f = match q.disk_format(&d.name) {
                            DiskFormat::Raw => "raw",
                            DiskFormat::Qcow2 => "qcow2",
                        };
                        (d.name.clone(), d.path.clone(), f.to_owned())
                    })
                    .collect();
                self.cold_point(&vm, files).await
            }
        }
    }

    async fn cold_point(
        &self,
        vm: &str,
        files: Vec<(String, PathBuf, String)>,
    ) -> Result<SnapshotSource, HvError> {
        let dir = self.scratch_dir(vm);
        let mut disks = Vec::new();
        for (name, path, format) in files {
            let path = if format == "raw" {
                path
            } else {
                let raw = dir.join(format!("{name}.raw"));
                self.tool(
                    vm,
                    &self.qemu_img,
                    "qemu-img",
                    &convert_args(&format, &path, &raw),
                )
                .await?;
                raw
            };
            disks.push(SnapshotDisk {
                name,
                path,
                dirty: None,
            });
        }
        Ok(SnapshotSource {
            disks,
            consistency_note: "cold: vm not running, full read".into(),
            app_consistent: false,
            taken_after: None,
        })
    }

    async fn live_point(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
        agent: bool,
        disks: Vec<LiveDisk>,
    ) -> Result<SnapshotSource, HvError> {
        let vm = spec.name.as_str();
        let dir = self.scratch_dir(vm);
        let qcow2 = disks.iter().all(|d| d.format == "qcow2");
        let existing: Vec<String> = if qcow2 {
            self.virsh(vm, &["checkpoint-list", vm, "--name"])
                .await?
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            Vec::new()
        };
        let (from, why_full) = match (base, self.recorded(vm)) {
            (None, _) => (None, "no base point".to_owned()),
            (Some(_), _) if !qcow2 => (None, "a disk is not qcow2".to_owned()),
            (Some(_), _) if align == 0 || !GRANULARITY.is_multiple_of(align) => (
                None,
                format!("chunk size {align} is larger than the bitmaps' {GRANULARITY}"),
            ),
            (Some(b), Some((p, cp))) if p == b && existing.contains(&cp) => {
                (Some(cp), String::new())
            }
            (Some(b), Some((p, cp))) if p == b => {
                (None, format!("checkpoint {cp} of base {b} is gone"))
            }
            (Some(b), _) => (None, format!("no checkpoint counts from base {b}")),
        };
        let new_cp = qcow2.then(|| format!("{CHECKPOINT_PREFIX}{}", Utc::now().timestamp_micros()));
        let mut targets = Vec::new();
        for d in &disks {
            let file = if from.is_some() {
                let f = dir.join(format!("{}.qcow2", d.dev));
                let size = d.size.to_string();
                let args = ["create", "-q", "-f", "qcow2"].map(OsString::from);
                let mut args = args.to_vec();
                args.extend([f.clone().into_os_string(), size.into()]);
                self.tool(vm, &self.qemu_img, "qemu-img", &args).await?;
                f
            } else {
                let f = dir.join(format!("{}.raw", d.dev));
                std::fs::File::create(&f)
                    .and_then(|file| file.set_len(d.size))
                    .map_err(io(vm, "create a scratch image", &f))?;
                f
            };
            targets.push(file);
        }
        let format = if from.is_some() { "qcow2" } else { "raw" };
        let bx = xml::backup_xml(
            from.as_deref(),
            &disks
                .iter()
                .zip(&targets)
                .map(|(d, f)| BackupTarget {
                    dev: &d.dev,
                    file: f,
                    format,
                })
                .collect::<Vec<_>>(),
        );
        let bfile = dir.join("backup.xml");
        std::fs::write(&bfile, bx).map_err(io(vm, "write the backup xml", &bfile))?;
        let mut args: Vec<OsString> = vec!["backup-begin".into(), vm.into(), bfile.into()];
        if let Some(cp) = &new_cp {
            let devs: Vec<String> = disks.iter().map(|d| d.dev.clone()).collect();
            let cfile = dir.join("checkpoint.xml");
            std::fs::write(&cfile, xml::checkpoint_xml(cp, &devs)).map_err(io(
                vm,
                "write the checkpoint xml",
                &cfile,
            ))?;
            args.push(cfile.into());
        }
        args.push("--reuse-external".into());

        let t = Instant::now();
        let (label, app, frozen) = self.guest_freeze(vm, agent).await;
        let taken_after = Utc::now();
        let begun = self.virsh_os(vm, &args).await;
        if frozen {
            self.guest_thaw(vm).await;
        }
        begun?;
        let pause = t.elapsed();
        self.pending_lock().insert(
            vm.to_owned(),
            Pending {
                new_checkpoint: new_cp.clone(),
            },
        );
        self.wait_backup(vm).await?;
        let mut out = Vec::new();
        let mut changed = 0u64;
        for (d, file) in disks.iter().zip(targets) {
            if from.is_some() {
                let map = self
                    .tool(
                        vm,
                        &self.qemu_img,
                        "qemu-img map",
                        &["map", "--output=json", "-f", "qcow2"]
                            .map(OsString::from)
                            .into_iter()
                            .chain([file.clone().into_os_string()])
                            .collect::<Vec<_>>(),
                    )
                    .await?;
                let dirty: Vec<Range<u64>> =
                    crate::qemu::parse_map(&map).map_err(|detail| HvError::Tool {
                        vm: vm.to_owned(),
                        program: "qemu-img map",
                        detail,
                    })?;
                changed += dirty.iter().map(|r| r.end - r.start).sum::<u64>();
                let raw = dir.join(format!("{}.raw", d.dev));
                self.tool(
                    vm,
                    &self.qemu_img,
                    "qemu-img",
                    &convert_args("qcow2", &file, &raw),
                )
                .await?;
                let _ = std::fs::remove_file(&file);
                out.push(SnapshotDisk {
                    name: d.name.clone(),
                    path: raw,
                    dirty: Some(dirty),
                });
            } else {
                out.push(SnapshotDisk {
                    name: d.name.clone(),
                    path: file,
                    dirty: None,
                });
            }
        }
        let how = match &from {
            Some(cp) => format!("incremental from checkpoint {cp}, {changed} bytes changed"),
            None => format!("full read ({why_full})"),
        };
        tracing::info!(vm, %how, app, ?pause, took = ?t.elapsed(), "libvirt backup done");
        Ok(SnapshotSource {
            disks: out,
            consistency_note: format!("{label}; libvirt backup, {how}"),
            app_consistent: app,
            taken_after: Some(taken_after),
        })
    }

    /// Wait for the domain's backup job to end; an error unless it
    /// completed. Polled with `job_info` (`virDomainGetJobInfo`): virt
    /// 0.5's `job_stats` builds a `Vec` from libvirt's NULL parameter
    /// array when no job runs, which aborts the process; the outcome is
    /// read with `virsh domjobinfo --completed` instead.
    async fn wait_backup(&self, vm: &str) -> Result<(), HvError> {
        let deadline = Instant::now() + BACKUP_TIMEOUT;
        loop {
            let name = vm.to_owned();
            let kind = self
                .call(vm, move |c| match Self::lookup(c, &name)? {
                    Some(d) => Ok(d.job_info().ctx("read the backup job")?.r#type),
                    None => Ok(0),
                })
                .await?;
            if kind == virt::sys::VIR_DOMAIN_JOB_NONE as i32 {
                break;
            }
            if Instant::now() > deadline {
                return Err(HvError::Tool {
                    vm: vm.to_owned(),
                    program: "libvirt backup",
                    detail: format!("still running after {BACKUP_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let info = self.virsh(vm, &["domjobinfo", vm, "--completed"]).await?;
        let field = |k: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(k)
                    .map(|v| v.trim_start_matches(':').trim().to_owned())
            })
        };
        match (field("Job type"), field("Operation")) {
            (Some(t), Some(op)) if t == "Completed" && op == "Backup" => Ok(()),
            _ => Err(HvError::Tool {
                vm: vm.to_owned(),
                program: "libvirt backup",
                detail: format!(
                    "did not complete: {}",
                    field("Error message").unwrap_or_else(|| info.trim().replace('\n', "; "))
                ),
            }),
        }
    }

    /// Freeze the guest's filesystems through its agent (bounded):
    /// (consistency label, application-consistent, thaw needed).
    async fn guest_freeze(&self, vm: &str, agent: bool) -> (String, bool, bool) {
        if !agent {
            return (
                "crash-consistent (no guest agent channel)".into(),
                false,
                false,
            );
        }
        match self.agent_command(vm, "guest-fsfreeze-freeze").await {
            Ok(n) if n.as_u64() == Some(0) => (
                "crash-consistent (guest agent froze no filesystems)".into(),
                false,
                true,
            ),
            Ok(n) => (
                format!("application-consistent (guest agent froze {n} filesystems)"),
                true,
                true,
            ),
            Err(e) => {
                tracing::warn!(vm, error = %e, "guest fsfreeze failed, point is crash-consistent");
                // A late freeze must not outlive the point.
                self.guest_thaw(vm).await;
                (format!("crash-consistent ({e})"), false, false)
            }
        }
    }

    async fn guest_thaw(&self, vm: &str) {
        if let Err(e) = self.agent_command(vm, "guest-fsfreeze-thaw").await {
            tracing::warn!(vm, error = %e, "guest fsfreeze-thaw failed");
        }
    }

    /// One guest-agent command through libvirt, its `return` value.
    async fn agent_command(&self, vm: &str, command: &'static str) -> Result<Value, HvError> {
        let name = vm.to_owned();
        let secs = FREEZE_TIMEOUT.as_secs() as i32;
        let reply = self
            .call(vm, move |c| match Self::lookup(c, &name)? {
                Some(d) => d
                    .qemu_agent_command(&format!("{{\"execute\":\"{command}\"}}"), secs, 0)
                    .map_err(|e| Failed {
                        action: "talk to the guest agent",
                        detail: e.message().to_owned(),
                    }),
                None => Ok(String::from("{}")),
            })
            .await?;
        let v: Value = serde_json::from_str(&reply).map_err(|e| HvError::Tool {
            vm: vm.to_owned(),
            program: "guest agent",
            detail: e.to_string(),
        })?;
        Ok(v["return"].clone())
    }

    /// Settle the point begun on `spec`'s VM: committed as `point`, or
    /// abandoned.
    pub(super) async fn settle(&self, spec: &VmSpec, point: Option<&str>) -> Result<(), HvError> {
        let vm = spec.name.as_str();
        let Some(p) = self.pending_lock().remove(vm) else {
            return Ok(());
        };
        let Some(cp) = p.new_checkpoint else {
            return Ok(());
        };
        match point {
            Some(id) => {
                let f = self.checkpoint_file(vm);
                let tmp = f.with_extension("checkpoint.tmp");
                std::fs::write(&tmp, format!("{id} {cp}\n"))
                    .and_then(|()| std::fs::rename(&tmp, &f))
                    .map_err(io(vm, "record the checkpoint", &f))?;
                let list = self.virsh(vm, &["checkpoint-list", vm, "--name"]).await?;
                for old in list.lines().map(str::trim) {
                    if old.starts_with(CHECKPOINT_PREFIX) && old != cp {
                        self.virsh(vm, &["checkpoint-delete", vm, old]).await?;
                    }
                }
                tracing::debug!(vm, point = id, checkpoint = %cp, "checkpoint kept");
            }
            None => {
                self.virsh(vm, &["checkpoint-delete", vm, &cp]).await?;
                tracing::debug!(vm, checkpoint = %cp, "abandoned point's checkpoint deleted");
            }
        }
        Ok(())
    }

    pub(super) async fn virsh(&self, vm: &str, args: &[&str]) -> Result<String, HvError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.virsh_os(vm, &args).await
    }

    async fn virsh_os(&self, vm: &str, args: &[OsString]) -> Result<String, HvError> {
        let mut all: Vec<OsString> = vec!["-q".into(), "-c".into(), self.uri.clone().into()];
        all.extend_from_slice(args);
        let out = self.tool(vm, &self.virsh, "virsh", &all).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    async fn tool(
        &self,
        vm: &str,
        program: &Path,
        name: &'static str,
        args: &[OsString],
    ) -> Result<Vec<u8>, HvError> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| HvError::Spawn {
                vm: vm.to_owned(),
                command: program.to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(HvError::Tool {
                vm: vm.to_owned(),
                program: name,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }
}

fn convert_args(format: &str, from: &Path, to: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["convert", "-q", "-U", "-f", format, "-O", "raw"]
        .map(OsString::from)
        .to_vec();
    a.extend([from.as_os_str().to_owned(), to.as_os_str().to_owned()]);
    a
}

fn io<'a>(
    vm: &'a str,
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> HvError + 'a {
    move |source| HvError::Io {
        vm: vm.to_owned(),
        action,
        path: path.to_owned(),
        source,
    }
}
