//! Syncing a point between datastores of different schemes.
//!
//! A stored blob is only valid in a datastore with the same encryption
//! and id key as the one that wrote it. When they differ (an unencrypted
//! site store and an encrypted cloud store, or two stores with different
//! keys) sync re-encodes: each chunk's plaintext is read from the source
//! through the point's index (fetched per source pack in ranged batches,
//! as a same-scheme sync does) and checked against its source id, its id
//! is computed in the target's scheme, and it is compressed, sealed and
//! added to a target pack unless the target has it already, so a second
//! point only uploads what changed. Either store may be on an object
//! store; both are locked like writers (leases there). The disk indexes are rebuilt with the
//! target's ids, and the manifest, re-sealed for the target, goes last,
//! once every pack is durable.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::{Datastore, SyncStats};
use crate::index;
use crate::manifest::{DiskEntry, PointId};
use crate::packer::Packer;
use crate::progress::Progress;

/// Chunks read, re-hashed and re-encoded in parallel at a time.
const BATCH: usize = 256;

/// A chunk read from the source: its source and target ids and, when the
/// target lacks it, its blob for the target.
type Reencoded = (ChunkId, ChunkId, Option<Vec<u8>>);

impl Datastore {
    /// Copy point `id` into `dst`, whose scheme differs from this one's.
    pub(crate) fn sync_reencode(
        &self,
        id: &PointId,
        dst: &Datastore,
        progress: &dyn Progress,
    ) -> Result<SyncStats, StoreError> {
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
        progress.set_total(manifest.disks.iter().map(|d| d.size).sum());
        let mut packer = Packer::new(dst.clone());
        // Source id -> target id, for chunks met before in this sync.
        let mut seen: HashMap<ChunkId, ChunkId> = HashMap::new();
        let mut disks = Vec::with_capacity(manifest.disks.len());
        for disk in &manifest.disks {
            let wrap = |e: StoreError| StoreError::ReadPoint {
                point: id.to_string(),
                disk: disk.name.clone(),
                source: Box::new(e),
            };
            let src_ids = self.read_disk_index(disk).map_err(wrap)?;
            let mut ids = vec![ChunkId::ZERO; src_ids.len()];
            let (mut new_chunks, mut new_bytes) = (0u64, 0u64);
            for (b, group) in src_ids.chunks(BATCH).enumerate() {
                // Chunks not met before in this sync, read together.
                let mut wanted = Vec::new();
                let mut wanted_set = HashSet::new();
                for src_id in group {
                    if !src_id.is_zero() && !seen.contains_key(src_id) && wanted_set.insert(*src_id)
                    {
                        wanted.push(*src_id);
                    }
                }
                let stored = self.read_stored_many(&wanted).map_err(wrap)?;
                let packer_ref = &packer;
                let done: Vec<Result<Reencoded, StoreError>> = wanted
                    .par_iter()
                    .zip(&stored)
                    .map(|(src_id, (raw, loc))| {
                        let plain = self
                            .decode_blob(raw, BlobKind::Data, src_id)
                            .map_err(|e| self.corrupt_chunk(src_id, &loc.pack, e))?;
                        let dst_id = dst.chunk_id(&plain);
                        let blob = (!dst_id.is_zero() && !packer_ref.has(&dst_id))
                            .then(|| dst.encode_blob(BlobKind::Data, &dst_id, &plain));
                        Ok((*src_id, dst_id, blob))
                    })
                    .collect();
                let mut copied = 0u64;
                for result in done {
                    let (src_id, dst_id, blob) = result.map_err(wrap)?;
                    seen.insert(src_id, dst_id);
                    if let Some(blob) = blob
                        && packer.add(dst_id, BlobKind::Data, &blob)?
                    {
                        copied += 1;
                        stats.chunks_copied += 1;
                        stats.bytes_copied += blob.len() as u64;
                        new_chunks += 1;
                        new_bytes += blob.len() as u64;
                    }
                }
                let mut present = 0u64;
                for (k, src_id) in group.iter().enumerate() {
                    let i = b * BATCH + k;
                    if !src_id.is_zero() {
                        ids[i] = seen[src_id];
                        present += 1;
                    }
                    progress.inc(disk.chunk_len(i as u64) as u64);
                }
                // Met before, already in the target, or twice in the batch.
                stats.chunks_skipped += present - copied;
            }
            let per = disk.ids_per_index_chunk as usize;
            let mut index_ids = Vec::with_capacity(disk.index.len());
            for ic in index::split_with(&ids, per, |p| dst.index_chunk_id(p)) {
                if let Some(payload) = ic.payload.filter(|_| !packer.has(&ic.id)) {
                    let blob = dst.encode_blob(BlobKind::Index, &ic.id, &payload);
                    if packer.add(ic.id, BlobKind::Index, &blob)? {
                        stats.chunks_copied += 1;
                        stats.bytes_copied += blob.len() as u64;
                        new_bytes += blob.len() as u64;
                    }
                }
                index_ids.push(ic.id);
            }
            disks.push(DiskEntry {
                index: index_ids,
                new_chunks,
                new_bytes,
                ..disk.clone()
            });
        }
        let written = packer.finish()?;
        stats.chunks_verified = dst.check_written(&written)?;
        // A lease lost to gc may have let it delete what the point uses.
        dst.check_not_robbed(&dst_lock, &epoch, id)?;
        let reencoded = manifest.with_disks(disks);
        stats.already_present = dst.publish_manifest(id, &reencoded)?;
        tracing::info!(point = %id, dst = %dst.root().display(), ?stats, "point synced, re-encoded");
        Ok(stats)
    }
}
