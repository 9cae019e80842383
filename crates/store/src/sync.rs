//! Copying a point to another datastore.
//!
//! Only chunks the destination lacks are copied, as stored (no
//! recompression), into new packs there; each is checked against its id on
//! the way. Source chunks are fetched in ranged batches per pack (one
//! request for neighbours on an object store). The manifest goes last, once
//! every pack is durable. An interrupted sync resumes where it stopped: the
//! packs it finished are indexed in the destination, so their chunks are
//! skipped, and only the pack being written is done again.
//!
//! Between stores of different encryption schemes, blobs cannot be copied
//! as stored: `reencode.rs` does that sync (it shares [`SyncStats`] and
//! the publishing of the manifest, both in `datastore.rs`).

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::{Datastore, SyncStats};
use crate::manifest::{Manifest, PointId};
use crate::pack::PackIndex;
use crate::packer::Packer;
use crate::progress::Progress;
use rayon::prelude::*;

impl Datastore {
    pub fn sync_point(
        &self,
        id: &PointId,
        dst: &Datastore,
        progress: &dyn Progress,
    ) -> Result<SyncStats, StoreError> {
        if !self.same_scheme(dst) {
            return self.sync_reencode(id, dst, progress);
        }
        let mut stats = SyncStats::default();
        // Both stores are held like writers: gc on either waits.
        let _src_lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let manifest = self.load_manifest(id)?;
        let dst_lock = dst.lock_shared()?;
        dst.refresh_after_gc()?;
        if dst.has_point(id)? {
            stats.already_present = true;
            return Ok(stats);
        }
        dst.rescan(false)?;
        // What the copy finds present in the destination must stay there.
        let epoch = dst.catalog().epoch();
        let total: u64 = manifest.disks.iter().map(|d| d.size).sum();
        progress.set_total(total);
        let mut packer = Packer::new(dst.clone());
        self.walk_stored(&manifest, SYNC_BATCH, progress, |ids, kind| {
            copy_batch(self, &mut packer, ids, kind, &mut stats)
        })?;
        let written = packer.finish()?;
        stats.chunks_verified = dst.check_written(&written)?;
        dst.check_not_robbed(&dst_lock, &epoch, id)?;
        stats.already_present = dst.publish_manifest(id, &manifest)?;
        tracing::info!(point = %id, dst = %dst.root().display(), ?stats, "point synced");
        Ok(stats)
    }
}

/// Chunks read from the source per batch.
pub(crate) const SYNC_BATCH: usize = 256;

impl Datastore {
    /// Read back the packs a copy just wrote here and check each blob
    /// against its id (the new chunks of a copy, verified after it and
    /// not only at the next scheduled verify). A blob that reads back
    /// damaged makes its chunk suspect, so the next copy stores it again,
    /// and fails the copy naming it: no manifest is published over it.
    /// Returns the chunks checked. On a local datastore the read may be
    /// served by the page cache; on an object store it is a GET.
    pub(crate) fn check_written(&self, written: &[PackIndex]) -> Result<u64, StoreError> {
        let mut checked = 0;
        for idx in written {
            let bytes = self.backend().get(&idx.pack.pack_path())?;
            // Tests: the read-back finds the first blob damaged.
            #[cfg(test)]
            let bytes = match (
                crate::gc::fail::check("damage written"),
                idx.entries.first(),
            ) {
                (Err(_), Some(e)) => {
                    let mut b = bytes;
                    b[e.offset as usize + e.len as usize / 2] ^= 0x40;
                    b
                }
                _ => bytes,
            };
            let bad: Vec<ChunkId> = idx
                .entries
                .par_iter()
                .filter(|e| {
                    let range = e.offset as usize..e.offset as usize + e.len as usize;
                    bytes
                        .get(range)
                        .is_none_or(|b| self.decode_blob(b, e.kind, &e.id).is_err())
                })
                .map(|e| e.id)
                .collect();
            checked += idx.entries.len() as u64;
            if let Some(id) = bad.first() {
                self.catalog().mark_suspect(&bad);
                return Err(self.corrupt_chunk(
                    id,
                    &idx.pack,
                    format!("{} chunk(s) of this copy read back damaged", bad.len()),
                ));
            }
        }
        Ok(checked)
    }
}

impl Datastore {
    /// Hand every stored chunk of `manifest` to `f`, disk by disk: first
    /// a disk's index chunks, then its data chunks `batch` at a time (zero
    /// chunks left out), the progress moving by the disk bytes each batch
    /// covers. An error names the point and disk.
    pub(crate) fn walk_stored(
        &self,
        manifest: &Manifest,
        batch: usize,
        progress: &dyn Progress,
        mut f: impl FnMut(&[ChunkId], BlobKind) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for disk in &manifest.disks {
            let wrap = |e: StoreError| StoreError::ReadPoint {
                point: manifest.id.to_string(),
                disk: disk.name.clone(),
                source: Box::new(e),
            };
            let index_ids: Vec<ChunkId> = disk
                .index
                .iter()
                .filter(|i| !i.is_zero())
                .copied()
                .collect();
            f(&index_ids, BlobKind::Index).map_err(wrap)?;
            let ids = self.read_disk_index(disk).map_err(wrap)?;
            for (b, group) in ids.chunks(batch).enumerate() {
                let wanted: Vec<ChunkId> = group.iter().filter(|c| !c.is_zero()).copied().collect();
                f(&wanted, BlobKind::Data).map_err(wrap)?;
                let first = (b * batch) as u64;
                let bytes: u64 = (0..group.len() as u64)
                    .map(|k| disk.chunk_len(first + k) as u64)
                    .sum();
                progress.inc(bytes);
            }
        }
        Ok(())
    }
}

/// Copy the chunks of `ids` the destination lacks, as stored: fetched from
/// the source in ranged batches per pack, each checked against its id (its
/// seal opened and keyed hash checked in an encrypted store; source and
/// destination share the scheme here, so the stored bytes stay valid).
pub(crate) fn copy_batch(
    src: &Datastore,
    packer: &mut Packer,
    ids: &[ChunkId],
    kind: BlobKind,
    stats: &mut SyncStats,
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut wanted = Vec::new();
    for id in ids {
        if packer.has(id) || !seen.insert(*id) {
            stats.chunks_skipped += 1;
        } else {
            wanted.push(*id);
        }
    }
    let blobs = src.read_stored_many(&wanted)?;
    wanted
        .par_iter()
        .zip(&blobs)
        .try_for_each(|(id, (raw, loc))| {
            src.decode_blob(raw, kind, id)
                .map(|_| ())
                .map_err(|e| src.corrupt_chunk(id, &loc.pack, e))
        })?;
    for (id, (raw, _)) in wanted.iter().zip(blobs) {
        packer.add(*id, kind, &raw)?;
        stats.chunks_copied += 1;
        stats.bytes_copied += raw.len() as u64;
    }
    Ok(())
}
