//! Garbage collection: mark from live manifests and templates, sweep or
//! repack packs.
//!
//! gc takes `locks/gc.lock` exclusive, so no point is being written; it
//! marks every index chunk and data chunk referenced by a manifest or a
//! template (`template.rs`), then
//! for every pack older than the grace period: deletes it when it holds no
//! live chunk (index file first, so a crash leaves an unindexed pack, never
//! an index naming a missing pack), or, when its garbage fraction exceeds
//! the threshold, copies its live blobs into new packs, makes those durable
//! and only then deletes the old pack. Packs younger than the grace period
//! are never touched. Any unreadable manifest or index chunk stops gc
//! before it deletes anything: it cannot know what that point needs. A
//! pack without an index is garbage only when every live chunk is listed
//! by some sound index; otherwise it may hold exactly the missing ones.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::StoreError;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::lock;
use crate::pack::{self, PackId};
use crate::packer::Packer;
use crate::progress::Progress;

#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Packs younger than this are left alone.
    pub grace: Duration,
    /// Repack a pack when more than this fraction of its bytes is garbage.
    pub repack_threshold: f64,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            repack_threshold: 0.5,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GcReport {
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    /// Packs holding garbage that were left alone for being too young.
    pub packs_skipped_grace: usize,
    /// Chunks live points reference that no sound pack index lists.
    pub live_chunks_unlocated: u64,
    /// Packs without an index kept because live chunks are unlocated:
    /// their blobs may be exactly those chunks.
    pub packs_kept_unindexed: usize,
}

struct PackInfo {
    pack_size: u64,
    idx_size: u64,
    modified: SystemTime,
}

impl Datastore {
    pub fn gc(&self, opts: GcOptions, progress: &dyn Progress) -> Result<GcReport, StoreError> {
        let lock = self.lock_exclusive()?;
        self.rescan(true)?;
        let mut report = GcReport::default();

        // Mark.
        let mut live: HashSet<ChunkId> = HashSet::new();
        // Templates are roots like points: their chunks stay after the
        // point they were made from is pruned.
        let templates = self.list_templates()?.into_iter().map(|t| t.point);
        for m in self.list_points()?.into_iter().chain(templates) {
            for disk in &m.disks {
                live.extend(disk.index.iter().filter(|id| !id.is_zero()));
                let ids = self
                    .read_disk_index(disk)
                    .map_err(|e| StoreError::ReadPoint {
                        point: m.id.to_string(),
                        disk: disk.name.clone(),
                        source: Box::new(e),
                    })?;
                live.extend(ids.into_iter().filter(|id| !id.is_zero()));
            }
        }

        // What is on disk.
        let now = SystemTime::now();
        let mut packs: HashMap<PackId, PackInfo> = HashMap::new();
        let mut idx_only = Vec::new();
        for o in self.backend().list("packs")? {
            let Some((id, ext)) = pack::PackId::from_path(&o.path) else {
                continue;
            };
            let info = packs.entry(id).or_insert(PackInfo {
                pack_size: 0,
                idx_size: 0,
                modified: o.modified,
            });
            info.modified = info.modified.max(o.modified);
            if ext == "pack" {
                info.pack_size = o.size;
            } else {
                info.idx_size = o.size;
            }
        }
        let damaged = self.catalog().damaged();
        let young =
            |info: &PackInfo| now.duration_since(info.modified).unwrap_or_default() < opts.grace;

        // Each live chunk has one home: the first pack (in id order) that
        // holds it. Other copies are garbage.
        let mut ids: Vec<PackId> = packs.keys().copied().collect();
        ids.sort();
        let mut indexes = HashMap::new();
        let mut homed: HashSet<ChunkId> = HashSet::new();
        for id in &ids {
            let info = &packs[id];
            if info.pack_size == 0 {
                idx_only.push(*id);
                continue;
            }
            if info.idx_size == 0 || damaged.contains_key(id) {
                continue;
            }
            let idx = self
                .decode_index(&self.backend().get(&id.idx_path())?)
                .map_err(|reason| StoreError::Corrupt {
                    object: format!("index file {}", id.idx_path()),
                    root: self.root().to_path_buf(),
                    reason,
                })?;
            indexes.insert(*id, idx);
        }
        // Young packs keep their chunks in place, so they are homes first.
        let (first, second): (Vec<PackId>, Vec<PackId>) = ids
            .iter()
            .filter(|id| indexes.contains_key(id))
            .partition(|id| young(&packs[id]));
        let mut live_in: HashMap<PackId, Vec<pack::IdxEntry>> = HashMap::new();
        for id in first.iter().chain(&second) {
            for e in &indexes[id].entries {
                if live.contains(&e.id) && homed.insert(e.id) {
                    live_in.entry(*id).or_default().push(*e);
                }
            }
        }

        report.live_chunks_unlocated = live.iter().filter(|id| !homed.contains(id)).count() as u64;
        if report.live_chunks_unlocated > 0 {
            tracing::warn!(
                chunks = report.live_chunks_unlocated,
                "live chunks in no sound pack index; packs without an index are kept"
            );
        }

        let mut to_delete: Vec<PackId> = Vec::new();
        let mut to_repack: Vec<PackId> = Vec::new();
        progress.set_total(packs.values().map(|p| p.pack_size).sum());
        for id in &ids {
            let info = &packs[id];
            progress.inc(info.pack_size);
            if info.pack_size == 0 {
                continue;
            }
            let entries = indexes.get(id).map(|i| i.entries.as_slice());
            let live_entries = live_in.get(id).map(Vec::as_slice).unwrap_or_default();
            let live_bytes: u64 = live_entries.iter().map(|e| u64::from(e.len)).sum();
            let garbage_chunks = entries.map_or(0, |e| e.len() - live_entries.len()) as u64;
            if info.idx_size == 0 && report.live_chunks_unlocated > 0 {
                report.packs_kept_unindexed += 1;
                tracing::warn!(pack = %id, "pack without an index kept: live chunks are unlocated");
                continue;
            }
            if info.idx_size > 0 && entries.is_none() {
                // Damaged index: leave it for verify and a human.
                continue;
            }
            if live_entries.is_empty() || garbage_chunks > 0 {
                if young(info) {
                    report.packs_skipped_grace += 1;
                    continue;
                }
            } else {
                continue;
            }
            let garbage_fraction = 1.0 - live_bytes as f64 / info.pack_size.max(1) as f64;
            if live_entries.is_empty() {
                report.packs_deleted += 1;
                report.chunks_removed += garbage_chunks;
                report.bytes_freed += info.pack_size + info.idx_size;
                to_delete.push(*id);
            } else if garbage_fraction > opts.repack_threshold {
                report.packs_repacked += 1;
                report.chunks_removed += garbage_chunks;
                report.bytes_freed += info.pack_size.saturating_sub(live_bytes);
                to_repack.push(*id);
            }
        }
        if !opts.dry_run {
            // Wholly garbage packs and temporary files go first: on a full
            // disk the repack below needs the room they free.
            self.clean_tmp(opts.grace)?;
            self.delete_packs(&to_delete, &lock)?;
            let mut packer = Packer::new(self.clone());
            for id in &to_repack {
                for e in live_in.get(id).map(Vec::as_slice).unwrap_or_default() {
                    let blob =
                        self.backend()
                            .get_range(&id.pack_path(), e.offset, e.len as usize)?;
                    self.decode_blob(&blob, e.kind, &e.id)
                        .map_err(|err| self.corrupt_chunk(&e.id, id, err))?;
                    // The packer skips chunks the catalog knows; this
                    // one must be copied, so it goes in directly.
                    packer.add_copy(e.id, e.kind, &blob)?;
                }
            }
            packer.finish()?;
            // The repacked packs once their live chunks are durable elsewhere.
            self.delete_packs(&to_repack, &lock)?;
            for id in idx_only {
                if !young(&packs[&id]) {
                    tracing::warn!(pack = %id, "index of a missing pack kept for verify");
                }
            }
            to_delete.extend(to_repack);
            if !to_delete.is_empty() {
                // And again after: a lock-free reader may have reloaded
                // between the first bump and the deletes.
                self.bump_gc_epoch()?;
            }
            self.rescan(true)?;
        }
        Ok(report)
    }

    /// Delete `packs` (each index first), a new epoch written before the
    /// first delete: should gc die midway, every other handle still
    /// reloads its catalog before writing, so none trusts a chunk that is
    /// gone. gc holds the lock exclusive, so no writer sees the gap.
    fn delete_packs(&self, packs: &[PackId], lock: &lock::StoreLock) -> Result<(), StoreError> {
        if !packs.is_empty() {
            self.bump_gc_epoch()?;
        }
        for id in packs {
            #[cfg(test)]
            fail::before_delete();
            // On an object store the lease may have lapsed while gc
            // worked (a stall, an unreachable store): then a writer may
            // be using this very pack. Checked before each delete.
            lock.check_exclusive()?;
            #[cfg(test)]
            fail::check("gc delete")?;
            self.backend().delete(&id.idx_path())?;
            self.backend().delete(&id.pack_path())?;
            tracing::info!(pack = %id, "pack removed");
        }
        Ok(())
    }

    /// Write a new random `locks/gc.epoch`.
    pub(crate) fn bump_gc_epoch(&self) -> Result<(), StoreError> {
        let epoch = format!("{:032x}", rand::random::<u128>());
        self.backend().put(lock::EPOCH_FILE, epoch.as_bytes())
    }

    /// Remove temporary files left by killed writers.
    fn clean_tmp(&self, grace: Duration) -> Result<(), StoreError> {
        let now = SystemTime::now();
        for o in self.backend().list("tmp")? {
            if now.duration_since(o.modified).unwrap_or_default() >= grace {
                self.backend().delete(&o.path)?;
            }
        }
        Ok(())
    }
}

/// Test-only failure injection: `fail::set("gc delete")` makes the next
/// such check on this thread fail, as if the process died there.
#[cfg(test)]
pub(crate) mod fail {
    use std::cell::RefCell;

    use crate::StoreError;

    thread_local! {
        static POINT: RefCell<Option<&'static str>> = const { RefCell::new(None) };
        static BEFORE_DELETE: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
    }

    /// Run `f` (once) when gc on this thread is about to delete its first
    /// pack: what others do meanwhile.
    pub fn set_before_delete(f: impl FnMut() + 'static) {
        BEFORE_DELETE.with(|b| *b.borrow_mut() = Some(Box::new(f)));
    }

    pub fn before_delete() {
        if let Some(mut f) = BEFORE_DELETE.with(|b| b.borrow_mut().take()) {
            f();
        }
    }

    pub fn set(point: &'static str) {
        POINT.with(|p| *p.borrow_mut() = Some(point));
    }

    pub fn check(point: &'static str) -> Result<(), StoreError> {
        let hit = POINT.with(|p| {
            let mut p = p.borrow_mut();
            if *p == Some(point) {
                *p = None;
                true
            } else {
                false
            }
        });
        if hit {
            return Err(StoreError::io(
                "inject failure at",
                point,
                std::io::Error::other("injected failure"),
            ));
        }
        Ok(())
    }
}
