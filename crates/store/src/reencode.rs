//! Syncing a point between datastores of different schemes.
//!
//! A stored blob is only valid in a datastore with the same encryption
//! and id key as the one that wrote it. When they differ (an unencrypted
//! site store and an encrypted cloud store, or two stores with different
//! keys) sync re-encodes: each chunk's plaintext is read from the source
//! through the point's index and checked against its source id, its id is
//! computed in the target's scheme, and it is compressed, sealed and
//! added to a target pack unless the target has it already, so a second
//! point only uploads what changed. The disk indexes are rebuilt with the
//! target's ids, and the manifest, re-sealed for the target, goes last,
//! once every pack is durable.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::index;
use crate::lock;
use crate::manifest::{DiskEntry, PointId};
use crate::packer::Packer;
use crate::progress::Progress;
use crate::sync::SyncStats;

/// Chunks read, re-hashed and re-encoded in parallel at a time.
const BATCH: usize = 256;

/// A chunk read from the source: its target id and, when the target lacks
/// it, its blob for the target.
type Reencoded = Option<(ChunkId, ChunkId, Option<Vec<u8>>)>;

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
        let _src_lock = lock::shared(self.root())?;
        self.refresh_after_gc()?;
        let manifest = self.load_manifest(id)?;
        let _lock = lock::shared(dst.root())?;
        dst.refresh_after_gc()?;
        if dst.has_point(id)? {
            stats.already_present = true;
            return Ok(stats);
        }
        dst.rescan(false)?;
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
                let (packer_ref, seen_ref) = (&packer, &seen);
                let done: Vec<Result<Reencoded, StoreError>> = group
                    .par_iter()
                    .map(|src_id| {
                        if src_id.is_zero() {
                            return Ok(None);
                        }
                        if let Some(dst_id) = seen_ref.get(src_id) {
                            return Ok(Some((*src_id, *dst_id, None)));
                        }
                        let plain = self.read_chunk(src_id, BlobKind::Data)?;
                        let dst_id = dst.chunk_id(&plain);
                        let blob = (!dst_id.is_zero() && !packer_ref.has(&dst_id))
                            .then(|| dst.encode_blob(BlobKind::Data, &dst_id, &plain));
                        Ok(Some((*src_id, dst_id, blob)))
                    })
                    .collect();
                for (k, result) in done.into_iter().enumerate() {
                    let i = b * BATCH + k;
                    if let Some((src_id, dst_id, blob)) = result.map_err(wrap)? {
                        ids[i] = dst_id;
                        seen.insert(src_id, dst_id);
                        match blob {
                            Some(blob) if packer.add(dst_id, BlobKind::Data, &blob)? => {
                                stats.chunks_copied += 1;
                                stats.bytes_copied += blob.len() as u64;
                                new_chunks += 1;
                                new_bytes += blob.len() as u64;
                            }
                            _ => stats.chunks_skipped += 1,
                        }
                    }
                    progress.inc(disk.chunk_len(i as u64) as u64);
                }
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
        packer.finish()?;
        let reencoded = manifest.with_disks(disks);
        match dst
            .backend()
            .put_new(&id.manifest_path(), &dst.encode_manifest(&reencoded)?)
        {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                stats.already_present = true;
            }
            other => other?,
        }
        tracing::info!(point = %id, dst = %dst.root().display(), ?stats, "point synced, re-encoded");
        Ok(stats)
    }
}
