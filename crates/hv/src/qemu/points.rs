//! Live recovery points of a running VM: dirty bitmaps, backup jobs into
//! scratch images, guest-agent fsfreeze. See the parent module's docs for
//! the scheme; this file holds the QMP choreography.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::driver::{PendingDisk, PendingPoint, QemuDriver};
use super::spec::DiskFormat;
use crate::qga::Qga;
use crate::qmp::Qmp;
use crate::{HvError, SnapshotDisk, SnapshotSource, VmSpec};

/// Prefix of the bitmap that records the writes since a committed point:
/// `standby:<point id>`.
pub const BASE_PREFIX: &str = "standby:";
/// Records the writes since the point being taken (until it is committed
/// or abandoned).
pub const PENDING: &str = "standby.pending";
/// Disabled copy of the base bitmap at the chunk size the caller reads in,
/// which drives the backup job.
pub const COPY: &str = "standby.copy";
/// How long the guest agent may take to answer at all (`guest-sync`):
/// a guest without a running agent costs a point no more.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an agent that answered may take to freeze (and, separately,
/// thaw): a freeze flushes the guest's dirty data, which takes seconds
/// on a busy guest or host (Windows' VSS allows 10 s too).
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

struct Bitmap {
    name: String,
    recording: bool,
    inconsistent: bool,
}

struct NodeInfo {
    size: u64,
    bitmaps: Vec<Bitmap>,
}

/// What one disk's point will be.
enum Plan {
    Full { reason: String },
    Incremental { base_bitmap: String },
}

fn action(kind: &str, data: Value) -> Value {
    json!({ "type": kind, "data": data })
}

fn scratch_node(disk: &str) -> String {
    format!("sb-{disk}")
}

async fn node_info(qmp: &Qmp, node: &str) -> Result<NodeInfo, HvError> {
    let nodes = qmp
        .execute_raw("query-named-block-nodes", json!({ "flat": true }))
        .await?;
    let n = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node-name"] == node))
        .ok_or_else(|| HvError::QmpProtocol {
            socket: qmp.socket().to_owned(),
            detail: format!("no block node '{node}'"),
        })?;
    let bitmaps = n["dirty-bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| Bitmap {
                    name: b["name"].as_str().unwrap_or_default().to_owned(),
                    recording: b["recording"].as_bool().unwrap_or(false),
                    inconsistent: b["inconsistent"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(NodeInfo {
        size: n["image"]["virtual-size"].as_u64().unwrap_or(0),
        bitmaps,
    })
}

async fn remove_bitmap(qmp: &Qmp, node: &str, name: &str) -> Result<(), HvError> {
    qmp.execute_raw(
        "block-dirty-bitmap-remove",
        json!({ "node": node, "name": name }),
    )
    .await
    .map(|_| ())
}

impl QemuDriver {
    fn scratch_dir(&self, vm: &str) -> PathBuf {
        self.state_dir.join(format!("{vm}.point"))
    }

    fn pending_points(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingPoint>> {
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A point of a running VM: see the module docs of `qemu`.
    pub(super) async fn live_point(
        &self,
        spec: &VmSpec,
        qmp: &Qmp,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        let vm = spec.name.as_str();
        if !align.is_power_of_two() || !(512..=1 << 31).contains(&align) {
            return Err(HvError::InvalidSpec {
                vm: vm.to_owned(),
                detail: format!("point alignment {align} is not a power of two in 512..2^31"),
            });
        }
        let q = spec.qemu.clone().unwrap_or_default();
        // A point nobody committed or abandoned (its controller died):
        // abandon it, so its changes stay in the base bitmap.
        if self.pending_points().contains_key(vm) {
            self.finish_point(spec, None).await?;
        }
        let dir = self.scratch_dir(vm);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(Self::io_err(vm, "create the scratch dir", &dir))?;

        let mut plans = Vec::new();
        for disk in &spec.disks {
            let node = disk.name.as_str();
            let format = q.disk_format(node);
            let mut info = node_info(qmp, node).await?;
            // Leftovers of a point whose controller died: its pending
            // writes go back into the base bitmap (a superset is safe).
            if info.bitmaps.iter().any(|b| b.name == PENDING) {
                let bases: Vec<&Bitmap> = info
                    .bitmaps
                    .iter()
                    .filter(|b| b.name.starts_with(BASE_PREFIX) && !b.inconsistent)
                    .collect();
                if let [b] = bases.as_slice() {
                    let actions = vec![
                        action(
                            "block-dirty-bitmap-enable",
                            json!({"node": node, "name": b.name}),
                        ),
                        action(
                            "block-dirty-bitmap-merge",
                            json!({"node": node, "target": b.name, "bitmaps": [PENDING]}),
                        ),
                        action(
                            "block-dirty-bitmap-remove",
                            json!({"node": node, "name": PENDING}),
                        ),
                    ];
                    qmp.execute_raw("transaction", json!({ "actions": actions }))
                        .await?;
                } else {
                    remove_bitmap(qmp, node, PENDING).await?;
                }
            }
            if info.bitmaps.iter().any(|b| b.name == COPY) {
                remove_bitmap(qmp, node, COPY).await?;
            }
            let _ = qmp
                .execute_raw("blockdev-del", json!({ "node-name": scratch_node(node) }))
                .await;
            info = node_info(qmp, node).await?;
            let bases: Vec<&Bitmap> = info
                .bitmaps
                .iter()
                .filter(|b| b.name.starts_with(BASE_PREFIX))
                .collect();
            let plan = match (base, bases.as_slice()) {
                (_, bs) if bs.iter().any(|b| b.inconsistent) => Plan::Full {
                    reason: "dirty bitmap inconsistent (QEMU stopped without saving it)".into(),
                },
                (None, _) => Plan::Full {
                    reason: "no base point".into(),
                },
                (Some(_), []) => Plan::Full {
                    reason: match format {
                        DiskFormat::Raw => "dirty bitmap lost after QEMU restart (raw disk: the bitmap lives only in QEMU)".into(),
                        DiskFormat::Qcow2 => "dirty bitmap lost (QEMU stopped without saving it)".into(),
                    },
                },
                (Some(base), [b]) if b.name[BASE_PREFIX.len()..] == *base && b.recording => {
                    Plan::Incremental {
                        base_bitmap: b.name.clone(),
                    }
                }
                (Some(base), [b]) => Plan::Full {
                    reason: format!(
                        "dirty bitmap counts from point {}, not from the base {base}",
                        &b.name[BASE_PREFIX.len()..]
                    ),
                },
                (Some(_), _) => Plan::Full {
                    reason: "several dirty bitmaps, none trusted".into(),
                },
            };
            // A full read keeps a sound bitmap (removed at commit), so a
            // point that fails does not lose what it tracked.
            let keep = match bases.as_slice() {
                [b] if !b.inconsistent && b.recording => Some(b.name.clone()),
                _ => None,
            };
            if let Plan::Full { .. } = plan {
                for b in bases.iter().filter(|b| Some(&b.name) != keep.as_ref()) {
                    remove_bitmap(qmp, node, &b.name).await?;
                }
            }
            // The scratch target: a sparse raw file for a full read; a
            // qcow2 for an incremental one, whose allocation map tells
            // which clusters the job copied (zeroes included).
            let target = match plan {
                Plan::Full { .. } => {
                    let path = dir.join(format!("{node}.raw"));
                    File::create(&path)
                        .and_then(|f| f.set_len(info.size))
                        .map_err(Self::io_err(vm, "create the scratch image", &path))?;
                    json!({"driver": "raw", "node-name": scratch_node(node),
                           "file": {"driver": "file", "filename": path}})
                }
                Plan::Incremental { .. } => {
                    let path = dir.join(format!("{node}.qcow2"));
                    self.qemu_img(
                        vm,
                        &[
                            "create".into(),
                            "-q".into(),
                            "-f".into(),
                            "qcow2".into(),
                            path.clone().into_os_string(),
                            info.size.to_string().into(),
                        ],
                    )
                    .await?;
                    json!({"driver": "qcow2", "node-name": scratch_node(node),
                           "file": {"driver": "file", "filename": path}})
                }
            };
            qmp.execute_raw("blockdev-add", target).await?;
            plans.push((node.to_owned(), format, info.size, plan, keep));
        }

        // The point's instant: everything below up to the transaction.
        let freezing = Instant::now();
        let (mut consistency, app_consistent, agent) = self.guest_freeze(spec).await;
        // The data is from an instant inside the transaction below; a
        // write the guest finished before now is in it (a frozen guest
        // finishes none until the thaw).
        let taken_after = chrono::Utc::now();
        let mut actions = Vec::new();
        for (node, format, _, plan, _) in &plans {
            actions.push(action(
                "block-dirty-bitmap-add",
                json!({"node": node, "name": PENDING,
                       "persistent": *format == DiskFormat::Qcow2}),
            ));
            let job = json!({"job-id": scratch_node(node), "device": node,
                             "target": scratch_node(node)});
            match plan {
                Plan::Full { .. } => {
                    let mut job = job;
                    job["sync"] = "full".into();
                    actions.push(action("blockdev-backup", job));
                }
                Plan::Incremental { base_bitmap } => {
                    actions.push(action(
                        "block-dirty-bitmap-disable",
                        json!({"node": node, "name": base_bitmap}),
                    ));
                    actions.push(action(
                        "block-dirty-bitmap-add",
                        json!({"node": node, "name": COPY, "granularity": align,
                               "disabled": true, "persistent": false}),
                    ));
                    actions.push(action(
                        "block-dirty-bitmap-merge",
                        json!({"node": node, "target": COPY, "bitmaps": [base_bitmap]}),
                    ));
                    let mut job = job;
                    job["sync"] = "bitmap".into();
                    job["bitmap"] = COPY.into();
                    job["bitmap-mode"] = "never".into();
                    actions.push(action("blockdev-backup", job));
                }
            }
        }
        let mut events = qmp.events();
        let started = qmp
            .execute_raw("transaction", json!({ "actions": actions }))
            .await;
        if let Some(agent) = agent {
            guest_thaw(agent).await;
            if app_consistent {
                // From asking the guest to freeze to its thaw answered:
                // how long the guest's writes waited for the point.
                consistency.push_str(&format!(", frozen {} ms", freezing.elapsed().as_millis()));
            }
        }
        if let Err(e) = started {
            for (node, ..) in &plans {
                let _ = qmp
                    .execute_raw("blockdev-del", json!({"node-name": scratch_node(node)}))
                    .await;
            }
            return Err(e);
        }
        self.pending_points().insert(
            vm.to_owned(),
            PendingPoint {
                disks: plans
                    .iter()
                    .map(|(node, format, _, plan, keep)| PendingDisk {
                        node: node.clone(),
                        base_bitmap: match plan {
                            Plan::Incremental { base_bitmap } => Some(base_bitmap.clone()),
                            Plan::Full { .. } => keep.clone(),
                        },
                        persistent: *format == DiskFormat::Qcow2,
                    })
                    .collect(),
            },
        );

        // Wait for every job: generous, bounded by the data to copy.
        let total: u64 = plans.iter().map(|p| p.2).sum();
        let limit = Duration::from_secs(120 + total / (2 << 20));
        let deadline = Instant::now() + limit;
        let mut waiting: Vec<String> = plans.iter().map(|p| scratch_node(&p.0)).collect();
        let mut failure = None;
        while !waiting.is_empty() {
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, events.recv()) => r,
                () = qmp.closed() => {
                    failure = Some("qemu exited during the backup".to_owned());
                    break;
                }
            };
            let ev = match received {
                Ok(Ok(ev)) => ev,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    // A lost BLOCK_JOB_COMPLETED cannot be told from a
                    // slow job; fail rather than guess its outcome.
                    failure = Some(format!("missed {n} qmp events during the backup"));
                    break;
                }
                Ok(Err(_)) => {
                    failure = Some("qemu closed the qmp connection".to_owned());
                    break;
                }
                Err(_) => {
                    failure = Some(format!("backup jobs not done within {limit:?}"));
                    break;
                }
            };
            let id = ev.data["device"].as_str().unwrap_or_default();
            if !waiting.iter().any(|w| w == id) {
                continue;
            }
            match ev.event.as_str() {
                "BLOCK_JOB_COMPLETED" => {
                    if let Some(err) = ev.data["error"].as_str() {
                        failure.get_or_insert(format!("backup job {id} failed: {err}"));
                    }
                    waiting.retain(|w| w != id);
                }
                "BLOCK_JOB_CANCELLED" => {
                    failure.get_or_insert(format!("backup job {id} was cancelled"));
                    waiting.retain(|w| w != id);
                }
                _ => {}
            }
        }
        for id in &waiting {
            let _ = qmp
                .execute_raw("block-job-cancel", json!({"device": id, "force": true}))
                .await;
        }
        for (node, ..) in &plans {
            let _ = qmp
                .execute_raw("blockdev-del", json!({"node-name": scratch_node(node)}))
                .await;
        }
        if let Some(detail) = failure {
            return Err(HvError::Tool {
                vm: vm.to_owned(),
                program: "blockdev-backup",
                detail,
            });
        }

        let mut disks = Vec::new();
        let mut notes = Vec::new();
        for (node, _, _, plan, _) in &plans {
            match plan {
                Plan::Full { reason } => {
                    disks.push(SnapshotDisk {
                        name: node.clone(),
                        path: dir.join(format!("{node}.raw")),
                        dirty: None,
                    });
                    notes.push(format!("{node}: full read: {reason}"));
                }
                Plan::Incremental { base_bitmap } => {
                    let qcow = dir.join(format!("{node}.qcow2"));
                    let raw = dir.join(format!("{node}.raw"));
                    let dirty = self.copied_ranges(vm, &qcow).await?;
                    self.qemu_img(
                        vm,
                        &[
                            "convert".into(),
                            "-q".into(),
                            "-f".into(),
                            "qcow2".into(),
                            "-O".into(),
                            "raw".into(),
                            qcow.clone().into_os_string(),
                            raw.clone().into_os_string(),
                        ],
                    )
                    .await?;
                    let _ = std::fs::remove_file(&qcow);
                    let bytes: u64 = dirty.iter().map(|r| r.end - r.start).sum();
                    notes.push(format!(
                        "{node}: incremental from {} ({bytes} bytes changed)",
                        &base_bitmap[BASE_PREFIX.len()..]
                    ));
                    disks.push(SnapshotDisk {
                        name: node.clone(),
                        path: raw,
                        dirty: Some(dirty),
                    });
                }
            }
        }
        Ok(SnapshotSource {
            disks,
            consistency_note: format!(
                "{consistency}, live (blockdev-backup); {}",
                notes.join("; ")
            ),
            app_consistent,
            taken_after: Some(taken_after),
        })
    }

    /// Byte ranges the backup job wrote into the qcow2 scratch image:
    /// every cluster it allocated, data or zeroes.
    async fn copied_ranges(&self, vm: &str, qcow: &Path) -> Result<Vec<Range<u64>>, HvError> {
        let out = self
            .qemu_img(
                vm,
                &[
                    "map".into(),
                    "--output=json".into(),
                    "-f".into(),
                    "qcow2".into(),
                    qcow.as_os_str().to_owned(),
                ],
            )
            .await?;
        parse_map(&out).map_err(|detail| HvError::Tool {
            vm: vm.to_owned(),
            program: "qemu-img map",
            detail,
        })
    }

    /// Freeze the guest's filesystems through its agent, if it has one.
    /// Returns the consistency words for the label, whether it is
    /// application-consistent, and the session to thaw with.
    async fn guest_freeze(&self, spec: &VmSpec) -> (String, bool, Option<Qga>) {
        let wants = spec.qemu.as_ref().is_some_and(|q| q.guest_agent);
        if !wants {
            return (
                "crash-consistent (no guest agent configured)".into(),
                false,
                None,
            );
        }
        let socket = self.qga_socket(&spec.name);
        let mut qga = match Qga::connect(&socket, Instant::now() + AGENT_TIMEOUT).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(vm = %spec.name, error = %e, "guest agent unavailable, point is crash-consistent");
                return (format!("crash-consistent ({e})"), false, None);
            }
        };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        match qga
            .execute("guest-fsfreeze-freeze", Value::Null, deadline)
            .await
        {
            // Nothing frozen (a guest whose data is on raw block devices)
            // is no better than a crash.
            Ok(n) if n.as_u64() == Some(0) => (
                "crash-consistent (guest agent froze no filesystems)".into(),
                false,
                Some(qga),
            ),
            Ok(n) => (
                format!("application-consistent (guest agent froze {n} filesystems)"),
                true,
                Some(qga),
            ),
            Err(e) => {
                tracing::warn!(vm = %spec.name, error = %e, "guest fsfreeze failed, point is crash-consistent");
                // A late freeze must not outlive us: the agent handles
                // commands in order, so a thaw sent now follows it. Sent
                // in the background: the point does not wait for it.
                tokio::spawn(guest_thaw(qga));
                (format!("crash-consistent ({e})"), false, None)
            }
        }
    }

    /// Rotate or restore the bitmaps of the point begun on `spec`'s VM.
    pub(super) async fn finish_point(
        &self,
        spec: &VmSpec,
        committed: Option<&str>,
    ) -> Result<(), HvError> {
        let Some(pending) = self.pending_points().remove(&spec.name) else {
            return Ok(());
        };
        let Ok((qmp, _)) = self.live_qmp(&spec.name) else {
            // QEMU is gone: raw disks lost their bitmaps, qcow2 ones kept
            // PENDING, which the next point folds back in.
            return Ok(());
        };
        for d in &pending.disks {
            let node = d.node.as_str();
            let bitmaps = node_info(&qmp, node).await?.bitmaps;
            let has = |n: &str| bitmaps.iter().any(|b| b.name == n);
            if !has(PENDING) {
                continue;
            }
            let mut actions = Vec::new();
            match committed {
                Some(point) => {
                    let name = format!("{BASE_PREFIX}{point}");
                    actions.push(action(
                        "block-dirty-bitmap-add",
                        json!({"node": node, "name": name, "persistent": d.persistent}),
                    ));
                    actions.push(action(
                        "block-dirty-bitmap-merge",
                        json!({"node": node, "target": name, "bitmaps": [PENDING]}),
                    ));
                    if let Some(old) = d.base_bitmap.as_deref().filter(|b| has(b)) {
                        actions.push(action(
                            "block-dirty-bitmap-remove",
                            json!({"node": node, "name": old}),
                        ));
                    }
                }
                None => {
                    if let Some(old) = d.base_bitmap.as_deref().filter(|b| has(b)) {
                        actions.push(action(
                            "block-dirty-bitmap-enable",
                            json!({"node": node, "name": old}),
                        ));
                        actions.push(action(
                            "block-dirty-bitmap-merge",
                            json!({"node": node, "target": old, "bitmaps": [PENDING]}),
                        ));
                    }
                }
            }
            actions.push(action(
                "block-dirty-bitmap-remove",
                json!({"node": node, "name": PENDING}),
            ));
            if has(COPY) {
                actions.push(action(
                    "block-dirty-bitmap-remove",
                    json!({"node": node, "name": COPY}),
                ));
            }
            qmp.execute_raw("transaction", json!({ "actions": actions }))
                .await?;
        }
        tracing::debug!(vm = %spec.name, ?committed, "point bitmaps settled");
        Ok(())
    }

    /// A point of a VM that is not running: its image files as they are
    /// (qcow2 converted to a raw scratch copy, since readers want raw).
    pub(super) async fn cold_point(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError> {
        let vm = spec.name.as_str();
        let q = spec.qemu.clone().unwrap_or_default();
        let dir = self.scratch_dir(vm);
        let _ = std::fs::remove_dir_all(&dir);
        let mut disks = Vec::new();
        for disk in &spec.disks {
            let path = match q.disk_format(&disk.name) {
                DiskFormat::Raw => disk.path.clone(),
                DiskFormat::Qcow2 => {
                    std::fs::create_dir_all(&dir).map_err(Self::io_err(
                        vm,
                        "create the scratch dir",
                        &dir,
                    ))?;
                    let raw = dir.join(format!("{}.raw", disk.name));
                    self.qemu_img(
                        vm,
                        &[
                            "convert".into(),
                            "-q".into(),
                            "-f".into(),
                            "qcow2".into(),
                            "-O".into(),
                            "raw".into(),
                            disk.path.clone().into_os_string(),
                            raw.clone().into_os_string(),
                        ],
                    )
                    .await?;
                    raw
                }
            };
            disks.push(SnapshotDisk {
                name: disk.name.clone(),
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

    /// Drop the scratch images of the last point.
    pub(super) fn drop_scratch(&self, vm: &str) {
        let _ = std::fs::remove_dir_all(self.scratch_dir(vm));
    }
}

/// Thaw after a freeze attempt (bounded; failures only logged: the agent
/// thaws by itself after its own timeout).
async fn guest_thaw(mut qga: Qga) {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    if let Err(e) = qga
        .execute("guest-fsfreeze-thaw", Value::Null, deadline)
        .await
    {
        tracing::warn!(error = %e, "guest fsfreeze-thaw failed");
    }
}

/// The `present` extents of `qemu-img map --output=json`, merged.
pub fn parse_map(out: &[u8]) -> Result<Vec<Range<u64>>, String> {
    let v: Value = serde_json::from_slice(out).map_err(|e| e.to_string())?;
    let extents = v.as_array().ok_or("not a JSON array")?;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for e in extents {
        let (Some(start), Some(len)) = (e["start"].as_u64(), e["length"].as_u64()) else {
            return Err(format!("extent without start/length: {e}"));
        };
        // `present` (QEMU ≥ 6.0): this image, not the void, holds the range.
        let present = match e.get("present") {
            Some(p) => p.as_bool().unwrap_or(false),
            None => return Err("qemu-img map lacks 'present' (QEMU < 6.0)".into()),
        };
        if !present || len == 0 {
            continue;
        }
        // qemu-img reads the image's own metadata: an extent past 2^64
        // is damage, not a range to add up.
        let end = start
            .checked_add(len)
            .ok_or_else(|| format!("extent at {start} of {len} bytes ends beyond 2^64"))?;
        match ranges.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => ranges.push(start..end),
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A fake guest agent on the VM's agent socket: answers `guest-sync`,
    /// answers `guest-fsfreeze-freeze` with `frozen` (or never, when
    /// `None`), and reports every command it received.
    fn fake_agent(
        path: &Path,
        frozen: Option<u64>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                let answer = match (cmd.as_str(), frozen) {
                    ("guest-sync", _) => {
                        Some(format!("{{\"return\": {}}}\n", v["arguments"]["id"]))
                    }
                    ("guest-fsfreeze-freeze", Some(n)) => Some(format!("{{\"return\": {n}}}\n")),
                    ("guest-fsfreeze-thaw", _) => Some("{\"return\": 0}\n".into()),
                    _ => None,
                };
                let _ = tx.send(cmd);
                if let Some(a) = answer {
                    w.write_all(a.as_bytes()).await.unwrap();
                }
            }
        });
        rx
    }

    fn agent_spec() -> VmSpec {
        VmSpec {
            name: "ga".into(),
            command: PathBuf::new(),
            args: vec![],
            env: Default::default(),
            disks: vec![],
            workdir: PathBuf::new(),
            qemu: Some(super::super::QemuSpec {
                guest_agent: true,
                ..Default::default()
            }),
            libvirt: None,
        }
    }

    #[tokio::test]
    async fn agent_freeze_labels_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(dir.path());
        let spec = agent_spec();
        let mut seen = fake_agent(&d.qga_socket("ga"), Some(2));
        let (note, app, session) = d.guest_freeze(&spec).await;
        assert_eq!(
            note,
            "application-consistent (guest agent froze 2 filesystems)"
        );
        assert!(app);
        guest_thaw(session.unwrap()).await;
        for want in ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"] {
            assert_eq!(seen.recv().await.unwrap(), want);
        }
    }

    /// An agent that syncs but never answers the freeze: crash-consistent
    /// within the bound, and a thaw still reaches it (a late freeze must
    /// not outlive the point).
    #[tokio::test]
    async fn agent_freeze_timeout_is_bounded_and_thawed() {
        let dir = tempfile::tempdir().unwrap();
        let d = QemuDriver::new(dir.path());
        let spec = agent_spec();
        let mut seen = fake_agent(&d.qga_socket("ga"), None);
        let t = Instant::now();
        let (note, app, session) = d.guest_freeze(&spec).await;
        assert!(t.elapsed() < AGENT_TIMEOUT + FREEZE_TIMEOUT + Duration::from_millis(500));
        assert!(!app && session.is_none());
        assert!(
            note.starts_with(
                "crash-consistent (guest agent did not answer 'guest-fsfreeze-freeze'"
            ),
            "{note}"
        );
        for want in ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"] {
            let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
            assert_eq!(got.unwrap().unwrap(), want);
        }
        // No agent socket at all: crash-consistent at once.
        let mut other = spec.clone();
        other.name = "none".into();
        let (note, app, _) = d.guest_freeze(&other).await;
        assert!(
            !app && note.starts_with("crash-consistent (guest agent socket"),
            "{note}"
        );
    }

    #[test]
    fn map_keeps_present_extents_zeroes_included() {
        let out = br#"[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 2359296},
{ "start": 2097152, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 2162688, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 3145728, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680}]"#;
        assert_eq!(
            parse_map(out).unwrap(),
            vec![1048576..2162688, 3145728..3211264]
        );
        assert!(parse_map(br#"[{"start": 0, "length": 5, "zero": true}]"#).is_err());
        assert!(parse_map(b"nope").is_err());
    }

    /// Found with the `qmp` fuzz target's `qemu-img map` path: an extent
    /// whose end passes 2^64 overflowed (a panic in debug builds, a
    /// wrapped, reversed range in release); now it is an error.
    #[test]
    fn hardening_qemu_img_map_extent_past_2_64_is_an_error() {
        let out = br#"[{"start": 18446744073709551615, "length": 1, "present": true}]"#;
        let err = parse_map(out).unwrap_err();
        assert!(err.contains("beyond 2^64"), "{err}");
        let out = br#"[{"start": 0, "length": 65536, "present": true},
{"start": 65536, "length": 18446744073709551615, "present": true}]"#;
        assert!(parse_map(out).is_err());
    }
}
