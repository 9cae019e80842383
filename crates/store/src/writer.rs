//! Writing a recovery point.
//!
//! A disk is read in large sequential blocks by a reader thread; each block
//! is cut into chunks which are, in one parallel pass, zero-checked, hashed
//! and, when the store lacks them, compressed; the new blobs are then
//! appended, in disk order, to packs that a background thread writes (with
//! direct I/O where the filesystem has it). `commit` waits until every pack
//! and pack index is durable, then writes the manifest.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use chrono::{DateTime, SubsecRound, Utc};
use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::index::{self, IDS_PER_INDEX_CHUNK};
use crate::limits::{
    DEFAULT_CHUNK_SIZE, MAX_DISK_CHUNKS, MAX_DISK_SIZE, MAX_DISKS, valid_chunk_size,
};
use crate::lock::StoreLock;
use crate::manifest::{DiskEntry, Manifest, PointId, PointMeta, valid_disk_name};
use crate::pack::PackId;
use crate::packer::Packer;
use crate::progress::Progress;

/// Bytes read from the source per block.
const READ_BLOCK: usize = 16 << 20;

/// How to write one disk.
#[derive(Debug, Clone)]
pub struct DiskWriteOptions {
    /// A power of two from 64 KiB to 4 MiB.
    pub chunk_size: u32,
    /// A previous point of the same vm; its index of this disk is the
    /// starting point.
    pub base: Option<PointId>,
    /// With `base`: only chunks overlapping these byte ranges are read,
    /// the others keep the base's ids.
    pub dirty: Option<Vec<Range<u64>>>,
}

impl Default for DiskWriteOptions {
    fn default() -> Self {
        DiskWriteOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            base: None,
            dirty: None,
        }
    }
}

/// What writing a disk did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskWriteStats {
    pub size: u64,
    pub bytes_read: u64,
    pub chunks: u64,
    /// Data chunks added to the store.
    pub chunks_new: u64,
    pub chunks_zero: u64,
    /// Non-zero chunks the store already had (or the base provided).
    pub chunks_reused: u64,
    /// Index chunks added to the store.
    pub index_chunks_new: u64,
    /// Stored (compressed) bytes added to packs, blob headers included.
    pub bytes_new_stored: u64,
}

/// A point being written. Dropping it without [`PointWriter::commit`]
/// aborts: no manifest appears, written packs are garbage for gc.
pub struct PointWriter {
    store: Datastore,
    id: PointId,
    meta: PointMeta,
    disks: Vec<DiskEntry>,
    packer: Packer,
    _lock: StoreLock,
    /// The gc epoch the catalog was loaded under when the point began.
    epoch: String,
    /// Packs holding chunks the point reuses (and its new ones).
    named_packs: HashSet<PackId>,
}

impl std::fmt::Debug for PointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointWriter").field("id", &self.id).finish()
    }
}

/// One block read from the source: first chunk number and its bytes.
struct Block {
    first: u64,
    data: Vec<u8>,
}

impl Datastore {
    /// Start a new point; it becomes visible at [`PointWriter::commit`].
    pub fn begin_point(&self, meta: PointMeta) -> Result<PointWriter, StoreError> {
        PointWriter::begin(self.clone(), meta)
    }
}

impl PointWriter {
    pub(crate) fn begin(store: Datastore, meta: PointMeta) -> Result<PointWriter, StoreError> {
        let lock = store.lock_shared()?;
        store.refresh_after_gc()?;
        let epoch = store.catalog().epoch();
        let id = next_id(&store, &meta.vm)?;
        Ok(PointWriter {
            epoch,
            named_packs: HashSet::new(),
            packer: Packer::new(store.clone()),
            store,
            id,
            meta,
            disks: Vec::new(),
            _lock: lock,
        })
    }

    /// Add or replace a label of the point (before commit).
    pub fn set_label(&mut self, key: &str, value: &str) {
        self.meta.labels.insert(key.to_string(), value.to_string());
    }

    /// Set how consistent the point is (known once the VM was frozen).
    pub fn set_consistency(&mut self, consistency: crate::manifest::Consistency) {
        self.meta.consistency = consistency;
    }

    /// Give the point the current time (and the id that goes with it).
    /// A caller that opens the writer before freezing the VM (so the
    /// freeze never waits for the store's lock) restamps once frozen, so
    /// the point's time is the freeze instant: everything the VM had
    /// acknowledged before that time is in the point. Only before the
    /// first disk is written.
    pub fn restamp(&mut self) -> Result<(), StoreError> {
        if !self.disks.is_empty() {
            return Err(StoreError::PointStarted(self.id.to_string()));
        }
        self.id = next_id(&self.store, &self.meta.vm)?;
        Ok(())
    }

    /// Give the point the time `at` (truncated to the millisecond, so
    /// never later than `at`), or just after the VM's newest point if
    /// that one is not older. For a caller that knows the instant its
    /// data is from better than "now".
    pub fn restamp_at(&mut self, at: DateTime<Utc>) -> Result<(), StoreError> {
        if !self.disks.is_empty() {
            return Err(StoreError::PointStarted(self.id.to_string()));
        }
        self.id = id_at(&self.store, &self.meta.vm, at)?;
        Ok(())
    }

    pub fn id(&self) -> &PointId {
        &self.id
    }

    /// Read the disk image or block device at `source` into the point.
    pub fn write_disk(
        &mut self,
        name: &str,
        source: &Path,
        opts: DiskWriteOptions,
        progress: &dyn Progress,
    ) -> Result<DiskWriteStats, StoreError> {
        if !valid_disk_name(name) {
            return Err(StoreError::InvalidDiskName(name.to_string()));
        }
        if self.disks.iter().any(|d| d.name == name) {
            return Err(StoreError::DuplicateDisk {
                point: self.id.to_string(),
                disk: name.to_string(),
            });
        }
        if !valid_chunk_size(opts.chunk_size) {
            return Err(StoreError::InvalidChunkSize(opts.chunk_size));
        }
        let cs = u64::from(opts.chunk_size);
        let mut file = File::open(source).map_err(|e| StoreError::io("open disk", source, e))?;
        // Block devices report length 0 in metadata; seeking works for both.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| StoreError::io("seek disk", source, e))?;
        let n = size.div_ceil(cs);
        // Never write a point that readers refuse (see `limits.rs`).
        if size > MAX_DISK_SIZE || n > MAX_DISK_CHUNKS {
            return Err(StoreError::DiskTooLarge {
                disk: name.to_string(),
                size,
                chunks: n,
                limit: "64 TiB and 2^26 chunks: use larger chunks",
            });
        }
        if self.disks.len() >= MAX_DISKS {
            return Err(StoreError::DiskTooLarge {
                disk: name.to_string(),
                size,
                chunks: n,
                limit: "256 disks per point",
            });
        }

        let mut ids = vec![ChunkId::ZERO; n as usize];
        let mut read = vec![true; n as usize];
        let mut from_base = 0u64;
        let base_ids = match &opts.base {
            Some(base) => self.base_ids(base, name, opts.chunk_size, size)?,
            None => None,
        };
        if let (Some(base_ids), Some(dirty)) = (base_ids, &opts.dirty) {
            if let Some(r) = dirty.iter().find(|r| r.start > r.end) {
                return Err(StoreError::InvalidDirtyRange {
                    disk: name.to_string(),
                    start: r.start,
                    end: r.end,
                });
            }
            for (i, base_id) in base_ids.into_iter().enumerate() {
                let start = i as u64 * cs;
                let range = start..start + cs;
                if !dirty
                    .iter()
                    .any(|d| d.start < range.end && range.start < d.end)
                {
                    ids[i] = base_id;
                    read[i] = false;
                    from_base += 1;
                }
            }
        }

        let to_read: u64 = (0..n)
            .filter(|&i| read[i as usize])
            .map(|i| (size - i * cs).min(cs))
            .sum();
        progress.set_total(to_read);
        let mut stats = DiskWriteStats {
            size,
            chunks: n,
            ..DiskWriteStats::default()
        };
        for id in ids
            .iter()
            .zip(&read)
            .filter(|(_, r)| !**r)
            .map(|(id, _)| id)
        {
            if id.is_zero() {
                stats.chunks_zero += 1;
            } else {
                stats.chunks_reused += 1;
            }
        }
        debug_assert_eq!(stats.chunks_zero + stats.chunks_reused, from_base);

        // Runs of chunks to read, cut into blocks of at most READ_BLOCK.
        let per_block = (READ_BLOCK as u64 / cs).max(1);
        let mut blocks: Vec<Range<u64>> = Vec::new();
        let mut i = 0;
        while i < n {
            if !read[i as usize] {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && read[i as usize] && i - start < per_block {
                i += 1;
            }
            blocks.push(start..i);
        }

        let (tx, rx) = sync_channel::<Result<Block, StoreError>>(2);
        let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(4);
        let reader_path = source.to_path_buf();
        std::thread::scope(|scope| -> Result<(), StoreError> {
            scope.spawn(move || read_blocks(file, &reader_path, size, cs, blocks, tx, recycle_rx));
            for block in rx {
                let block = block?;
                self.process_block(&block, cs, &mut ids, &mut stats)?;
                stats.bytes_read += block.data.len() as u64;
                progress.inc(block.data.len() as u64);
                let _ = recycle_tx.try_send(block.data);
            }
            Ok(())
        })?;

        let mut new_bytes_index = 0;
        let mut index_ids = Vec::new();
        let store = &self.store;
        for ic in index::split_with(&ids, IDS_PER_INDEX_CHUNK, |p| store.index_chunk_id(p)) {
            if let Some(payload) = ic.payload.filter(|_| !self.packer.has(&ic.id)) {
                let blob = store.encode_blob(BlobKind::Index, &ic.id, &payload);
                if self.packer.add(ic.id, BlobKind::Index, &blob)? {
                    stats.index_chunks_new += 1;
                    new_bytes_index += blob.len() as u64;
                }
            }
            index_ids.push(ic.id);
        }
        // The packs this point relies on without storing the chunk itself
        // (deduplicated against a sound index), checked again at commit.
        // A chunk known only from a doubtful index is damage verify
        // reports, not gc's doing.
        let catalog = store.catalog();
        for id in ids.iter().chain(&index_ids).filter(|id| !id.is_zero()) {
            if self.packer.added(id) {
                continue;
            }
            if let Some(loc) = catalog.get_sound(id) {
                self.named_packs.insert(loc.pack);
            }
        }
        let new_data_bytes = stats.bytes_new_stored;
        stats.bytes_new_stored += new_bytes_index;
        tracing::debug!(point = %self.id, disk = name, ?stats, "disk written");
        self.disks.push(DiskEntry {
            name: name.to_string(),
            size,
            chunk_size: opts.chunk_size,
            ids_per_index_chunk: IDS_PER_INDEX_CHUNK as u32,
            index: index_ids,
            chunks: n,
            zero_chunks: stats.chunks_zero,
            new_chunks: stats.chunks_new,
            new_bytes: new_data_bytes + new_bytes_index,
            base: opts.base.clone(),
        });
        Ok(stats)
    }

    /// The chunk ids of disk `name` in `base`, if it can serve as a base
    /// for a disk of `size` bytes cut in `chunk_size` chunks. Ids of chunks
    /// whose length differs in the new disk (a partial last chunk, a
    /// grown or shrunk disk) are left out.
    fn base_ids(
        &self,
        base: &PointId,
        name: &str,
        chunk_size: u32,
        size: u64,
    ) -> Result<Option<Vec<ChunkId>>, StoreError> {
        if base.vm() != self.meta.vm {
            return Err(StoreError::InvalidBase {
                point: self.id.to_string(),
                base: base.to_string(),
                reason: format!("it belongs to vm '{}'", base.vm()),
            });
        }
        let manifest = self.store.load_manifest(base)?;
        let Some(disk) = manifest.disk(name) else {
            tracing::info!(%base, disk = name, "base has no such disk, reading it all");
            return Ok(None);
        };
        if disk.chunk_size != chunk_size {
            tracing::info!(%base, disk = name, "base chunk size differs, reading it all");
            return Ok(None);
        }
        let mut ids = self
            .store
            .read_disk_index(disk)
            .map_err(|e| StoreError::ReadPoint {
                point: base.to_string(),
                disk: name.to_string(),
                source: Box::new(e),
            })?;
        let cs = u64::from(chunk_size);
        let full_chunks = (size.min(disk.size) / cs) as usize;
        ids.truncate(full_chunks);
        Ok(Some(ids))
    }

    fn process_block(
        &mut self,
        block: &Block,
        cs: u64,
        ids: &mut [ChunkId],
        stats: &mut DiskWriteStats,
    ) -> Result<(), StoreError> {
        // One parallel pass: zero check, hash, and for a chunk the store
        // lacks, encoding. Then, in disk order, the blobs go to the packer,
        // which drops a chunk met earlier in this block.
        let packer = &self.packer;
        let store = &self.store;
        let done: Vec<(ChunkId, Option<Vec<u8>>)> = block
            .data
            .par_chunks(cs as usize)
            .map(|chunk| {
                let id = store.chunk_id(chunk);
                let blob = (!id.is_zero() && !packer.has(&id))
                    .then(|| store.encode_blob(BlobKind::Data, &id, chunk));
                (id, blob)
            })
            .collect();
        for (k, (id, blob)) in done.into_iter().enumerate() {
            ids[block.first as usize + k] = id;
            if id.is_zero() {
                stats.chunks_zero += 1;
                continue;
            }
            match blob {
                Some(blob) if self.packer.add(id, BlobKind::Data, &blob)? => {
                    stats.chunks_new += 1;
                    stats.bytes_new_stored += blob.len() as u64;
                }
                _ => stats.chunks_reused += 1,
            }
        }
        Ok(())
    }

    /// Make the point durable and visible: packs and indexes first, the
    /// manifest last.
    pub fn commit(self) -> Result<Manifest, StoreError> {
        let PointWriter {
            store,
            id,
            meta,
            disks,
            packer,
            _lock,
            epoch,
            named_packs,
        } = self;
        packer.finish()?;
        // A lease lost to gc may have let it delete what the point uses:
        // gc deleted nothing since the point began, and (in case a pack
        // went without a new epoch) every pack named is there.
        store.check_not_robbed(&_lock, &epoch, &id)?;
        let robbed = |reason: String| {
            // So the point written again does not lean on the same packs.
            if let Err(e) = store.rescan(true) {
                tracing::warn!(error = %e, "catalog reload failed");
            }
            StoreError::PointRobbed {
                point: id.to_string(),
                root: store.root().to_path_buf(),
                reason,
            }
        };
        let present: HashSet<PackId> = store
            .backend()
            .list("packs")?
            .iter()
            .filter_map(|o| match PackId::from_path(&o.path) {
                Some((p, "pack")) => Some(p),
                _ => None,
            })
            .collect();
        if let Some(gone) = named_packs.iter().find(|p| !present.contains(p)) {
            return Err(robbed(format!("pack {gone} that it uses is gone")));
        }
        let manifest = Manifest::new(id.clone(), meta, id.time(), disks);
        let bytes = store.encode_manifest(&manifest)?;
        match store.backend().put_new(&id.manifest_path(), &bytes) {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(StoreError::PointExists(
                    id.to_string(),
                    store.root().to_path_buf(),
                ))
            }
            other => other,
        }?;
        tracing::info!(point = %id, disks = manifest.disks.len(), "point committed");
        Ok(manifest)
    }
}

/// Reader thread: read `blocks` (chunk ranges) from the source in order.
fn read_blocks(
    file: File,
    path: &PathBuf,
    size: u64,
    cs: u64,
    blocks: Vec<Range<u64>>,
    tx: SyncSender<Result<Block, StoreError>>,
    recycle: Receiver<Vec<u8>>,
) {
    for range in blocks {
        let offset = range.start * cs;
        let end = (range.end * cs).min(size);
        let len = (end - offset) as usize;
        let mut buf = recycle.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        let result = file.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::SourceChanged { path: path.clone() }
            } else {
                StoreError::io("read disk", path, e)
            }
        });
        let stop = result.is_err();
        let msg = result.map(|()| Block {
            first: range.start,
            data: buf,
        });
        if tx.send(msg).is_err() || stop {
            return;
        }
    }
}

/// The id of a new point of `vm`: now, or just after the newest existing
/// point (points of a vm are ordered by time: never go back, never
/// collide). Only the names are read: a damaged manifest must not block
/// new points.
fn next_id(store: &Datastore, vm: &str) -> Result<PointId, StoreError> {
    id_at(store, vm, Utc::now())
}

fn id_at(store: &Datastore, vm: &str, at: DateTime<Utc>) -> Result<PointId, StoreError> {
    let now = at.trunc_subsecs(3);
    let latest = store
        .backend()
        .list(&format!("manifests/{vm}"))?
        .iter()
        .filter_map(|o| PointId::from_manifest_path(&o.path))
        .map(|p| p.time())
        .max();
    match latest.filter(|t| *t >= now) {
        Some(latest) => PointId::new(vm, latest + chrono::Duration::milliseconds(1)),
        None => PointId::new(vm, now),
    }
}
