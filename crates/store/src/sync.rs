//! Copying a point to another datastore.
//!
//! Only chunks the destination lacks are copied, as stored (no
//! recompression), into new packs there; each is checked against its id on
//! the way. The manifest goes last, once every pack is durable.

use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::lock;
use crate::manifest::PointId;
use crate::packer::Packer;
use crate::progress::Progress;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    pub chunks_copied: u64,
    /// Stored bytes copied.
    pub bytes_copied: u64,
    /// Chunks the destination already had.
    pub chunks_skipped: u64,
    /// The destination already had the point; nothing was done.
    pub already_present: bool,
}

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
        let total: u64 = manifest.disks.iter().map(|d| d.size).sum();
        progress.set_total(total);
        let mut packer = Packer::new(dst.clone());
        for disk in &manifest.disks {
            let wrap = |e: StoreError| StoreError::ReadPoint {
                point: id.to_string(),
                disk: disk.name.clone(),
                source: Box::new(e),
            };
            for index_id in disk.index.iter().filter(|i| !i.is_zero()) {
                copy(self, &mut packer, index_id, BlobKind::Index, &mut stats).map_err(wrap)?;
            }
            let ids = self.read_disk_index(disk).map_err(wrap)?;
            for (i, chunk) in ids.iter().enumerate() {
                if !chunk.is_zero() {
                    copy(self, &mut packer, chunk, BlobKind::Data, &mut stats).map_err(wrap)?;
                }
                progress.inc(disk.chunk_len(i as u64) as u64);
            }
        }
        packer.finish()?;
        match dst
            .backend()
            .put_new(&id.manifest_path(), &dst.encode_manifest(&manifest)?)
        {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                stats.already_present = true;
            }
            other => other?,
        }
        tracing::info!(point = %id, dst = %dst.root().display(), ?stats, "point synced");
        Ok(stats)
    }
}

fn copy(
    src: &Datastore,
    packer: &mut Packer,
    id: &ChunkId,
    kind: BlobKind,
    stats: &mut SyncStats,
) -> Result<(), StoreError> {
    if packer.has(id) {
        stats.chunks_skipped += 1;
        return Ok(());
    }
    let (raw, loc) = src.read_stored(id)?;
    src.decode_blob(&raw, kind, id)
        .map_err(|e| src.corrupt_chunk(id, &loc.pack, e))?;
    packer.add(*id, kind, &raw)?;
    stats.chunks_copied += 1;
    stats.bytes_copied += raw.len() as u64;
    Ok(())
}
