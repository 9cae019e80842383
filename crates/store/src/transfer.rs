//! Copying a point to a datastore that is not open here: another site's
//! store, reached through the agent that serves it.
//!
//! The sending half, [`Datastore::send_point`], asks a [`PointReceiver`]
//! which chunks the destination lacks, sends those as stored in
//! [`Batch`]es of about a pack each, and hands over the manifest last.
//! The receiving half is [`Datastore::receive_begin`],
//! [`Datastore::receive_missing`], [`Datastore::receive_batch`] and
//! [`Datastore::receive_manifest`], which an agent serves over HTTP.
//!
//! - Every received blob is checked against its id (its CRC, its seal in
//!   an encrypted store, the hash of its plaintext) before it is stored:
//!   a damaged or forged batch is refused whole.
//! - A batch becomes one pack at the destination, durable and indexed
//!   before its answer, so a copy cut in the middle resumes at the batch
//!   it was in: the finished ones are no longer missing.
//! - The manifest is published only when every chunk it names is present,
//!   so a point never appears half copied.
//! - Blobs travel as stored, so both stores must share the scheme (both
//!   plain, or encrypted with the same master keys); otherwise the copy is
//!   refused with the reason (a store of another scheme is re-encoded by
//!   a sync where both are open, `reencode.rs`).

use std::collections::HashSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::{Datastore, SyncStats};
use crate::manifest::{Manifest, PointId};
use crate::packer::Packer;
use crate::progress::Progress;

/// Chunk ids asked about per [`PointReceiver::missing`] call.
const ASK_BATCH: usize = 2048;
/// Stored bytes per [`Batch`]: about one pack at the destination.
pub const BATCH_BYTES: usize = 16 << 20;
/// The largest encoded batch a receiver takes (a batch closes at
/// [`BATCH_BYTES`] plus one blob of at most a 4 MiB chunk and its header).
pub const MAX_BATCH_BYTES: usize = BATCH_BYTES + (8 << 20);

/// What the destination says when a copy begins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Begin {
    /// The destination holds the point already.
    pub present: bool,
    /// Its scheme: `None` when unencrypted, else its key check.
    pub scheme: Option<String>,
}

/// The destination of [`Datastore::send_point`].
pub trait PointReceiver: Sync {
    /// Whether the destination has the point, and its scheme.
    fn begin(&self, point: &PointId) -> Result<Begin, StoreError>;
    /// For each id, whether the destination lacks it.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError>;
    /// Hand over a batch (it may still be on its way when this returns).
    fn send(&self, batch: Batch) -> Result<(), StoreError>;
    /// Wait for every batch, then publish the manifest; true when the
    /// destination got the point meanwhile from someone else.
    fn finish(&self, point: &PointId, manifest: &Manifest) -> Result<bool, StoreError>;
}

/// Blobs as stored, each with its id and kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub blobs: Vec<(ChunkId, BlobKind, Vec<u8>)>,
}

impl Batch {
    /// Stored bytes in the batch.
    pub fn bytes(&self) -> usize {
        self.blobs.iter().map(|(_, _, b)| b.len()).sum()
    }

    /// The wire form: per blob its kind (1 byte), id (32 bytes), length
    /// (4 bytes, little endian) and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes() + self.blobs.len() * 37);
        for (id, kind, blob) in &self.blobs {
            out.push(*kind as u8);
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
            out.extend_from_slice(blob);
        }
        out
    }

    /// Parse the wire form; anything malformed or over
    /// [`MAX_BATCH_BYTES`] is an error saying where.
    pub fn decode(bytes: &[u8]) -> Result<Batch, String> {
        if bytes.len() > MAX_BATCH_BYTES {
            return Err(format!(
                "batch of {} bytes is over the limit of {MAX_BATCH_BYTES}",
                bytes.len()
            ));
        }
        let mut blobs = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let head = bytes
                .get(at..at + 37)
                .ok_or_else(|| format!("blob header cut off at byte {at}"))?;
            let kind = BlobKind::from_u8(head[0])
                .ok_or_else(|| format!("unknown blob kind {} at byte {at}", head[0]))?;
            let id = ChunkId(head[1..33].try_into().unwrap_or([0; 32]));
            let len = u32::from_le_bytes(head[33..37].try_into().unwrap_or([0; 4])) as usize;
            let blob = bytes
                .get(at + 37..at + 37 + len)
                .ok_or_else(|| format!("blob {id} cut off at byte {at}"))?;
            blobs.push((id, kind, blob.to_vec()));
            at += 37 + len;
        }
        Ok(Batch { blobs })
    }
}

/// What one received batch added.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Received {
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks the destination had already (another copy got there first).
    pub skipped: u64,
    /// Chunks read back once written and checked against their ids.
    #[serde(default)]
    pub verified: u64,
}

impl Datastore {
    /// This store's scheme as a receiver reports it.
    pub fn scheme(&self) -> Option<String> {
        self.crypto().map(|c| c.key_check())
    }

    /// Copy point `id` to the destination behind `to`: only the chunks it
    /// lacks, as stored; the manifest last.
    pub fn send_point(
        &self,
        id: &PointId,
        to: &dyn PointReceiver,
        progress: &dyn Progress,
    ) -> Result<SyncStats, StoreError> {
        let mut stats = SyncStats::default();
        let _lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        let manifest = self.load_manifest(id)?;
        let begin = to.begin(id)?;
        if begin.present {
            stats.already_present = true;
            return Ok(stats);
        }
        if begin.scheme != self.scheme() {
            return Err(StoreError::Config {
                location: self.root().display().to_string(),
                reason: format!(
                    "point {id} cannot be copied as stored: this datastore is {} and the destination is {}; copy it where both stores are open, which re-encodes it",
                    describe(&self.scheme()),
                    describe(&begin.scheme)
                ),
            });
        }
        let total: u64 = manifest.disks.iter().map(|d| d.size).sum();
        progress.set_total(total);
        let mut out = Outgoing {
            src: self,
            to,
            sent: HashSet::new(),
            batch: Batch::default(),
            batched: 0,
        };
        self.walk_stored(&manifest, ASK_BATCH, progress, |ids, kind| {
            out.offer(ids, kind, &mut stats)
        })?;
        out.flush()?;
        stats.already_present = to.finish(id, &manifest)?;
        tracing::info!(point = %id, src = %self.root().display(), ?stats, "point sent");
        Ok(stats)
    }

    /// Begin receiving `point`: pick up packs other writers added, and
    /// say whether the point is here and this store's scheme.
    pub fn receive_begin(&self, point: &PointId) -> Result<Begin, StoreError> {
        self.refresh_after_gc()?;
        self.rescan(false)?;
        Ok(Begin {
            present: self.has_point(point)?,
            scheme: self.scheme(),
        })
    }

    /// For each id, whether this store lacks it.
    pub fn receive_missing(&self, ids: &[ChunkId]) -> Vec<bool> {
        ids.iter().map(|id| !self.catalog().contains(id)).collect()
    }

    /// Check every blob of `batch` against its id and store the ones this
    /// store lacks as one pack, durable and indexed on return.
    pub fn receive_batch(&self, batch: &Batch) -> Result<Received, StoreError> {
        let _lock = self.lock_shared()?;
        batch.blobs.par_iter().try_for_each(|(id, kind, blob)| {
            self.decode_blob(blob, *kind, id)
                .map(|_| ())
                .map_err(|e| StoreError::Corrupt {
                    object: format!("received chunk {id}"),
                    root: self.root().to_path_buf(),
                    reason: e.to_string(),
                })
        })?;
        let mut got = Received::default();
        let mut packer = Packer::new(self.clone());
        for (id, kind, blob) in &batch.blobs {
            if packer.has(id) {
                got.skipped += 1;
                continue;
            }
            packer.add(*id, *kind, blob)?;
            got.chunks += 1;
            got.bytes += blob.len() as u64;
        }
        let written = packer.finish()?;
        got.verified = self.check_written(&written)?;
        Ok(got)
    }

    /// Publish a copied point's manifest once every chunk it names is
    /// here; true when the point was here already.
    pub fn receive_manifest(
        &self,
        point: &PointId,
        manifest: &Manifest,
    ) -> Result<bool, StoreError> {
        if manifest.id != *point {
            return Err(StoreError::BadManifest {
                path: self.root().join(point.manifest_path()),
                reason: format!("the manifest sent is of point {}", manifest.id),
            });
        }
        let lock = self.lock_shared()?;
        self.refresh_after_gc()?;
        // Every chunk is checked present under this epoch; gc must not
        // delete any of them before the manifest is published.
        let epoch = self.catalog().epoch();
        for disk in &manifest.disks {
            let lacking = |c: &ChunkId| !c.is_zero() && !self.catalog().contains(c);
            let absent = match disk.index.iter().find(|c| lacking(c)) {
                Some(c) => Some(*c),
                None => self.read_disk_index(disk)?.into_iter().find(|c| lacking(c)),
            };
            if let Some(c) = absent {
                return Err(StoreError::ChunkNotFound {
                    chunk: format!(
                        "{c} (of disk '{}' of point {point}, not copied yet)",
                        disk.name
                    ),
                    root: self.root().to_path_buf(),
                });
            }
        }
        self.check_not_robbed(&lock, &epoch, point)?;
        self.publish_manifest(point, manifest)
    }
}

fn describe(scheme: &Option<String>) -> String {
    match scheme {
        None => "unencrypted".into(),
        Some(k) => format!("encrypted (key check {k})"),
    }
}

/// The sender's side of one copy: what it sent, and the batch it fills.
struct Outgoing<'a> {
    src: &'a Datastore,
    to: &'a dyn PointReceiver,
    sent: HashSet<ChunkId>,
    batch: Batch,
    /// Stored bytes in `batch`.
    batched: usize,
}

impl Outgoing<'_> {
    /// Send those of `ids` the destination lacks, read in ranged batches
    /// and their CRCs checked on the way.
    fn offer(
        &mut self,
        ids: &[ChunkId],
        kind: BlobKind,
        stats: &mut SyncStats,
    ) -> Result<(), StoreError> {
        let mut fresh = Vec::new();
        for id in ids {
            if self.sent.insert(*id) {
                fresh.push(*id);
            } else {
                stats.chunks_skipped += 1;
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let missing = self.to.missing(&fresh)?;
        let wanted: Vec<ChunkId> = fresh
            .iter()
            .zip(&missing)
            .filter(|(_, m)| **m)
            .map(|(id, _)| *id)
            .collect();
        stats.chunks_skipped += (fresh.len() - wanted.len()) as u64;
        // Read a pack's worth at a time: memory stays bounded.
        for part in wanted.chunks(256) {
            let blobs = self.src.read_stored_many(part)?;
            // The CRC here names a damaged source pack; the receiver
            // opens and re-hashes every blob before it stores it.
            part.par_iter()
                .zip(&blobs)
                .try_for_each(|(id, (raw, loc))| {
                    crate::blob::check(raw)
                        .map(|_| ())
                        .map_err(|e| self.src.corrupt_chunk(id, &loc.pack, e))
                })?;
            for (id, (raw, _)) in part.iter().zip(blobs) {
                stats.chunks_copied += 1;
                stats.bytes_copied += raw.len() as u64;
                self.batched += raw.len();
                self.batch.blobs.push((*id, kind, raw));
                if self.batched >= BATCH_BYTES {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.blobs.is_empty() {
            return Ok(());
        }
        self.batched = 0;
        self.to.send(std::mem::take(&mut self.batch))
    }
}
