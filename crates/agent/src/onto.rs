//! What a host knows of a VM's disks, and restores that write onto them.
//!
//! `<disk dir of the VM>/.standby-disks.json` records the point the VM's
//! disks hold exactly (with each disk's size and modification time then:
//! a disk touched since is unknown again, and starting the VM forgets the
//! record), and whether a restore is between two states:
//! - `restoring`: a restore writes in place; the disks are a mix until it
//!   completes, and the VM does not start from them;
//! - `applying`: a warm replica's switch to the next point, staged in one
//!   journal per disk and committed; replayed before anything else, so a
//!   replica is at the old point or the new one, never between.
//!
//! A restore onto the disks ([`Onto::Delta`], [`Onto::Replica`]) writes
//! only the chunks that differ: from the two points' ids when the record
//! says which point they hold, else by reading them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use standby_hv::VmSpec;
use standby_store::{Datastore, OntoBase, PointId};

use crate::error::AgentError;
use crate::progress::Progress;
use crate::wire::{Onto, RestoreDone};

/// The record of a VM's disks at this host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskState {
    /// The point the disks hold exactly.
    #[serde(default)]
    pub point: Option<String>,
    /// Each disk's size and modification time (ns) when recorded.
    #[serde(default)]
    pub disks: BTreeMap<String, (u64, i128)>,
    /// A restore in place of this point is under way (or died).
    #[serde(default)]
    pub restoring: Option<String>,
    /// Committed journals switching the disks to this point.
    #[serde(default)]
    pub applying: Option<String>,
}

fn dir_of(spec: &VmSpec) -> Option<&Path> {
    spec.disks.first().and_then(|d| d.path.parent())
}

fn state_path(spec: &VmSpec) -> Option<PathBuf> {
    dir_of(spec).map(|d| d.join(".standby-disks.json"))
}

fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// The record, if any (an unreadable one counts as none: the disks are
/// read).
pub fn read_state(spec: &VmSpec) -> DiskState {
    state_path(spec)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Write the record whole (a temporary file renamed over it, synced).
fn write_state(spec: &VmSpec, st: &DiskState) -> Result<(), AgentError> {
    let Some(path) = state_path(spec) else {
        return Ok(());
    };
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(st)
        .map_err(|e| AgentError::Internal(format!("disk record: {e}")))?;
    let what = format!("unable to write {}", path.display());
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all())
        .map_err(AgentError::io(what))
}

fn stamp(path: &Path) -> Option<(u64, i128)> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.len(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

/// The record of disks that hold `point` exactly, as they are now.
fn holding(spec: &VmSpec, point: &str) -> DiskState {
    DiskState {
        point: Some(point.to_string()),
        disks: spec
            .disks
            .iter()
            .filter_map(|d| Some((d.name.clone(), stamp(&d.path)?)))
            .collect(),
        restoring: None,
        applying: None,
    }
}

/// Record that the VM's disks hold `point` (after a restore).
pub fn record_point(spec: &VmSpec, point: &PointId) -> Result<(), AgentError> {
    write_state(spec, &holding(spec, point.as_str()))
}

/// Before the VM starts: refuse disks between two states, and forget
/// which point they hold (the VM writes to them).
pub fn before_start(spec: &VmSpec) -> Result<(), AgentError> {
    let st = read_state(spec);
    if let Some(p) = st.restoring.as_ref().or(st.applying.as_ref()) {
        return Err(AgentError::Conflict(format!(
            "the disks of vm {} are half-restored (point {p} was being written onto them): restore a point again before starting it",
            spec.name
        )));
    }
    if let Some(path) = state_path(spec) {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AgentError::io(format!(
                    "unable to delete {}",
                    path.display()
                ))(e));
            }
        }
    }
    Ok(())
}

/// Finish a committed replica switch (replay its journals), so the
/// disks are at its point; an uncommitted one's journals are dropped.
fn settle(spec: &VmSpec) -> Result<DiskState, AgentError> {
    let st = read_state(spec);
    match &st.applying {
        Some(p) => {
            for d in &spec.disks {
                let j = journal_path(&d.path);
                if j.exists() {
                    standby_store::replay_journal(&j, &d.path)?;
                }
            }
            tracing::info!(vm = %spec.name, point = %p, "finished a replica switch an earlier run committed");
            let done = holding(spec, p);
            write_state(spec, &done)?;
            drop_journals(spec);
            Ok(done)
        }
        None => {
            drop_journals(spec);
            Ok(st)
        }
    }
}

/// Delete the VM's disks here, their journals and the record: a stale
/// copy (the VM runs elsewhere, with newer data) about to be replaced
/// whole, e.g. by a live migration onto this host. Returns the disks
/// deleted.
pub fn discard(spec: &VmSpec) -> Result<Vec<String>, AgentError> {
    let mut gone = Vec::new();
    for d in &spec.disks {
        match std::fs::remove_file(&d.path) {
            Ok(()) => gone.push(d.name.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AgentError::io(format!(
                    "unable to delete the stale disk {}",
                    d.path.display()
                ))(e));
            }
        }
    }
    drop_journals(spec);
    if let Some(path) = state_path(spec) {
        let _ = std::fs::remove_file(path);
    }
    Ok(gone)
}

fn drop_journals(spec: &VmSpec) {
    for d in &spec.disks {
        let _ = std::fs::remove_file(journal_path(&d.path));
    }
}

/// What the record says the disks hold, if it still holds: each disk as
/// recorded and nothing between two states.
fn known_base(spec: &VmSpec, st: &DiskState) -> Option<PointId> {
    if st.restoring.is_some() || st.applying.is_some() {
        return None;
    }
    let point = st.point.as_ref()?;
    let same = spec.disks.iter().all(|d| {
        st.disks
            .get(&d.name)
            .is_some_and(|s| Some(*s) == stamp(&d.path))
    });
    if !same {
        tracing::info!(vm = %spec.name, "the disks changed since they held point {point}: reading them");
        return None;
    }
    point.parse().ok()
}

/// Whether a restore may write onto the disks at their paths: every one
/// is there.
pub fn can_write_onto(spec: &VmSpec) -> bool {
    !spec.disks.is_empty() && spec.disks.iter().all(|d| d.path.is_file())
}

/// Write `point` onto the VM's disks (see the module): in place for
/// [`Onto::Delta`], through journals for [`Onto::Replica`].
pub async fn restore_onto(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    how: Onto,
    progress: Arc<dyn Progress>,
) -> Result<RestoreDone, AgentError> {
    let (spec, store, point) = (spec.clone(), store.clone(), point.clone());
    tokio::task::spawn_blocking(move || restore_onto_blocking(&spec, &store, &point, how, progress))
        .await?
}

fn restore_onto_blocking(
    spec: &VmSpec,
    store: &Datastore,
    point: &PointId,
    how: Onto,
    progress: Arc<dyn Progress>,
) -> Result<RestoreDone, AgentError> {
    let st = settle(spec)?;
    let base = match known_base(spec, &st) {
        Some(b) => OntoBase::Point(b),
        None => OntoBase::Unknown,
    };
    let vm = &spec.name;
    progress.stage(
        format!(
            "{vm}: writing point {point} onto its disks ({})",
            match &base {
                OntoBase::Point(b) => format!("they hold point {b}"),
                OntoBase::Unknown => "reading them".into(),
            }
        ),
        0,
    );
    let mut plans = Vec::new();
    for d in &spec.disks {
        plans.push(store.plan_onto(point, &d.name, &d.path, &base, progress.as_ref())?);
    }
    let mut done = RestoreDone {
        bytes: plans.iter().map(|p| p.stats().size).sum(),
        written: plans.iter().map(|p| p.stats().bytes_written).sum(),
        read: plans.iter().map(|p| p.stats().bytes_read).sum(),
        mode: match &base {
            OntoBase::Point(b) => format!("delta from point {b}"),
            OntoBase::Unknown => "delta (disks read)".into(),
        },
    };
    // Journaled only from a known base: from unknown disks there is no
    // state worth keeping whole, so they are written in place, marked.
    if how == Onto::Replica && matches!(base, OntoBase::Point(_)) {
        for (d, plan) in spec.disks.iter().zip(&plans) {
            store.stage_onto(plan, &journal_path(&d.path), progress.as_ref())?;
        }
        // The commit: from here on the switch completes, even after a
        // crash (settle replays it).
        let mut committed = st.clone();
        committed.applying = Some(point.to_string());
        write_state(spec, &committed)?;
        let mut settled = settle(spec)?;
        if settled.point.as_deref() != Some(point.as_str()) {
            settled = holding(spec, point.as_str());
            write_state(spec, &settled)?;
        }
        done.mode = format!("{} (journaled)", done.mode);
        return Ok(done);
    }
    let marked = DiskState {
        restoring: Some(point.to_string()),
        ..DiskState::default()
    };
    write_state(spec, &marked)?;
    for (d, plan) in spec.disks.iter().zip(&plans) {
        store.apply_onto(plan, &d.path, progress.as_ref())?;
    }
    record_point(spec, point)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use standby_hv::DiskSpec;
    use standby_store::{Consistency, DiskWriteOptions, PointMeta};

    use super::*;
    use crate::progress::Quiet;

    const CS: usize = 64 << 10;

    fn image(path: &Path, seed: u8) {
        let mut f = std::fs::File::create(path).unwrap();
        for i in 0..64u32 {
            let b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
            f.write_all(&vec![b; CS]).unwrap();
        }
    }

    fn point(store: &Datastore, image: &Path) -> PointId {
        let mut w = store
            .begin_point(PointMeta {
                vm: "pbx1".into(),
                site: "site1".into(),
                consistency: Consistency::Crash,
                config: serde_json::json!({}),
                labels: Default::default(),
            })
            .unwrap();
        w.write_disk("data", image, DiskWriteOptions::default(), &())
            .unwrap();
        w.commit().unwrap().id
    }

    struct Lab {
        _dir: tempfile::TempDir,
        store: Datastore,
        spec: VmSpec,
        images: [PathBuf; 2],
        points: [PointId; 2],
    }

    /// Two points of a 4 MiB disk, the second with 3 chunks changed; a
    /// replica disk path at the DR host.
    fn lab() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        image(&a, 1);
        std::fs::copy(&a, &b).unwrap();
        {
            let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
            use std::os::unix::fs::FileExt;
            for k in [3u64, 17, 40] {
                f.write_all_at(&vec![0xEE; CS], k * CS as u64).unwrap();
            }
        }
        let points = [point(&store, &a), point(&store, &b)];
        let disks = dir.path().join("dr/pbx1");
        std::fs::create_dir_all(&disks).unwrap();
        let spec = VmSpec {
            name: "pbx1".into(),
            command: "true".into(),
            args: vec![],
            env: Default::default(),
            disks: vec![DiskSpec {
                name: "data".into(),
                path: disks.join("data.img"),
                size: 4 << 20,
            }],
            workdir: dir.path().to_path_buf(),
            qemu: None,
            libvirt: None,
        };
        Lab {
            _dir: dir,
            store,
            spec,
            images: [a, b],
            points,
        }
    }

    fn restore(l: &Lab, p: usize, onto: Onto) -> RestoreDone {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(crate::restore::restore_point(
            &l.spec,
            &l.store,
            &l.points[p],
            onto,
            Arc::new(Quiet),
            None,
        ))
        .unwrap()
    }

    fn disk(l: &Lab) -> Vec<u8> {
        std::fs::read(&l.spec.disks[0].path).unwrap()
    }

    #[test]
    fn a_replica_moves_point_to_point_writing_only_what_changed() {
        let l = lab();
        assert_eq!(restore(&l, 0, Onto::Replica).mode, "full");
        let d = restore(&l, 1, Onto::Replica);
        assert!(
            d.mode.starts_with("delta from point") && d.mode.ends_with("(journaled)"),
            "{d:?}"
        );
        assert_eq!((d.written, d.read), (3 * CS as u64, 0), "{d:?}");
        assert!(disk(&l) == std::fs::read(&l.images[1]).unwrap());
        assert_eq!(
            read_state(&l.spec).point.as_deref(),
            Some(l.points[1].as_str())
        );
        // Touched (the VM ran): read, not trusted.
        before_start(&l.spec).unwrap();
        let d = restore(&l, 0, Onto::Delta);
        assert_eq!(d.mode, "delta (disks read)", "{d:?}");
        assert!(disk(&l) == std::fs::read(&l.images[0]).unwrap());
    }

    #[test]
    fn a_committed_switch_is_finished_and_an_uncommitted_one_dropped() {
        let l = lab();
        restore(&l, 0, Onto::Replica);
        let path = l.spec.disks[0].path.clone();
        let plan = |p: usize| {
            l.store
                .plan_onto(
                    &l.points[p],
                    "data",
                    &path,
                    &OntoBase::Point(l.points[0].clone()),
                    &(),
                )
                .unwrap()
        };
        // Staged but not committed (a crash before the commit): dropped,
        // the replica still at point 0.
        l.store
            .stage_onto(&plan(1), &journal_path(&path), &())
            .unwrap();
        assert_eq!(
            settle(&l.spec).unwrap().point.as_deref(),
            Some(l.points[0].as_str())
        );
        assert!(!journal_path(&path).exists());
        assert!(disk(&l) == std::fs::read(&l.images[0]).unwrap());
        // Committed, then a crash before the replay: the next restore
        // finishes it first, and finds nothing left to write.
        l.store
            .stage_onto(&plan(1), &journal_path(&path), &())
            .unwrap();
        let mut st = read_state(&l.spec);
        st.applying = Some(l.points[1].to_string());
        write_state(&l.spec, &st).unwrap();
        assert!(
            before_start(&l.spec).is_err(),
            "no start between two points"
        );
        let d = restore(&l, 1, Onto::Replica);
        assert_eq!(d.written, 0, "{d:?}");
        assert!(disk(&l) == std::fs::read(&l.images[1]).unwrap());
    }

    #[test]
    fn a_half_restored_disk_never_starts_and_is_read_next_time() {
        let l = lab();
        restore(&l, 0, Onto::Fresh);
        write_state(
            &l.spec,
            &DiskState {
                restoring: Some(l.points[1].to_string()),
                ..DiskState::default()
            },
        )
        .unwrap();
        let e = before_start(&l.spec).unwrap_err();
        assert!(e.to_string().contains("half-restored"), "{e}");
        let d = restore(&l, 1, Onto::Delta);
        assert_eq!(d.mode, "delta (disks read)", "{d:?}");
        assert!(disk(&l) == std::fs::read(&l.images[1]).unwrap());
        before_start(&l.spec).unwrap();
    }
}
