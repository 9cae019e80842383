//! Repairing damaged chunks from an intact copy in another datastore.
//!
//! The chunks of the points asked about (their index and data chunks)
//! are read and checked. Each pack holding one that fails is written
//! again: its intact blobs as they are, each damaged one from the other
//! datastore (read there and checked against its id, then encoded for
//! this one: the same chunk id), into new packs made durable before the
//! old pack is deleted. A chunk missing from every pack is added the same
//! way. Held like gc (exclusive), so no point is written or read meanwhile.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::manifest::PointId;
use crate::pack::PackId;
use crate::packer::Packer;
use crate::progress::Progress;

/// Chunks checked per batch.
const BATCH: usize = 1024;

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Chunks of the points asked about that were checked.
    pub chunks_checked: u64,
    /// Damaged or missing chunks written again from the other copy.
    pub chunks_repaired: u64,
    /// Packs written again (their intact blobs kept).
    pub packs_rewritten: usize,
    /// Points whose copy here is whole now.
    pub repaired: Vec<String>,
    /// Points still damaged here, and why.
    pub unrepaired: BTreeMap<String, String>,
}

impl Datastore {
    /// Check the chunks of `points` here and repair the damaged ones from
    /// `source` (see the module).
    pub fn repair_from(
        &self,
        source: &Datastore,
        points: &[PointId],
        progress: &dyn Progress,
    ) -> Result<RepairReport, StoreError> {
        let _lock = self.lock_exclusive()?;
        self.rescan(true)?;
        let mut report = RepairReport::default();
        // The chunks each point needs; a damaged index chunk's data
        // chunks are listed from the source's copy of the point.
        let mut wanted: HashMap<ChunkId, (BlobKind, Vec<usize>)> = HashMap::new();
        let mut owners: Vec<String> = Vec::new();
        for p in points {
            let owner = owners.len();
            owners.push(p.to_string());
            let m = match self.load_manifest(p) {
                Ok(m) => m,
                Err(e) => {
                    report
                        .unrepaired
                        .insert(p.to_string(), format!("its manifest here: {e}"));
                    continue;
                }
            };
            for disk in &m.disks {
                for id in disk.index.iter().filter(|id| !id.is_zero()) {
                    wanted
                        .entry(*id)
                        .or_insert((BlobKind::Index, Vec::new()))
                        .1
                        .push(owner);
                }
                let ids = self.read_disk_index(disk).or_else(|_| {
                    source
                        .load_manifest(p)
                        .and_then(|sm| {
                            sm.disk(&disk.name)
                                .cloned()
                                .ok_or_else(|| StoreError::DiskNotFound {
                                    point: p.to_string(),
                                    disk: disk.name.clone(),
                                })
                        })
                        .and_then(|d| source.read_disk_index(&d))
                });
                match ids {
                    Ok(ids) => {
                        for id in ids.into_iter().filter(|id| !id.is_zero()) {
                            wanted
                                .entry(id)
                                .or_insert((BlobKind::Data, Vec::new()))
                                .1
                                .push(owner);
                        }
                    }
                    Err(e) => {
                        report.unrepaired.insert(
                            p.to_string(),
                            format!(
                                "disk {}: its chunk list, here and at the source: {e}",
                                disk.name
                            ),
                        );
                    }
                }
            }
        }
        // Check them; note the packs holding a damaged one, and the
        // chunks no pack holds.
        progress.set_total(wanted.len() as u64);
        let ids: Vec<ChunkId> = wanted.keys().copied().collect();
        let mut bad_packs: BTreeMap<PackId, Vec<ChunkId>> = BTreeMap::new();
        let mut missing: Vec<ChunkId> = Vec::new();
        for batch in ids.chunks(BATCH) {
            let (here, gone): (Vec<ChunkId>, Vec<ChunkId>) =
                batch.iter().partition(|id| self.catalog().contains(id));
            missing.extend(gone);
            let blobs = self.read_stored_many(&here)?;
            for (id, (blob, loc)) in here.iter().zip(&blobs) {
                if self.decode_blob(blob, wanted[id].0, id).is_err() {
                    bad_packs.entry(loc.pack).or_default().push(*id);
                }
            }
            report.chunks_checked += batch.len() as u64;
            progress.inc(batch.len() as u64);
        }
        if bad_packs.is_empty() && missing.is_empty() {
            report.repaired = owners
                .into_iter()
                .filter(|p| !report.unrepaired.contains_key(p))
                .collect();
            return Ok(report);
        }
        // From the source, checked there, encoded here.
        let fetch = |id: &ChunkId, kind: BlobKind| -> Result<Vec<u8>, String> {
            let plain = source
                .read_chunk(id, kind)
                .map_err(|e| format!("chunk {id} at the source: {e}"))?;
            Ok(self.encode_blob(kind, id, &plain))
        };
        let mut failed: HashMap<usize, String> = HashMap::new();
        let mut rewritten: Vec<PackId> = Vec::new();
        for pack in bad_packs.keys() {
            let idx = self
                .decode_index(&self.backend().get(&pack.idx_path())?)
                .map_err(|reason| StoreError::Corrupt {
                    object: format!("index file {}", pack.idx_path()),
                    root: self.root().to_path_buf(),
                    reason,
                })?;
            // Every blob again: intact ones as they are, damaged ones from
            // the source; one the source cannot give stays as it was (no
            // worse), and the points needing it stay damaged.
            let mut packer = Packer::new(self.clone());
            let mut fixed = 0;
            for e in &idx.entries {
                let blob = self
                    .backend()
                    .get_range(&pack.pack_path(), e.offset, e.len as usize)?;
                let blob = match self.decode_blob(&blob, e.kind, &e.id) {
                    Ok(_) => blob,
                    Err(_) => match fetch(&e.id, e.kind) {
                        Ok(b) => {
                            fixed += 1;
                            b
                        }
                        Err(why) => {
                            for o in wanted
                                .get(&e.id)
                                .map(|w| w.1.as_slice())
                                .unwrap_or_default()
                            {
                                failed.insert(*o, why.clone());
                            }
                            blob
                        }
                    },
                };
                packer.add_copy(e.id, e.kind, &blob)?;
            }
            if fixed > 0 {
                packer.finish()?;
                report.chunks_repaired += fixed;
                rewritten.push(*pack);
            } else {
                // Nothing the source could give: the pack stays.
                drop(packer);
                for id in &bad_packs[pack] {
                    for o in &wanted[id].1 {
                        failed
                            .entry(*o)
                            .or_insert_with(|| format!("chunk {id}: no intact copy at the source"));
                    }
                }
            }
        }
        if !missing.is_empty() {
            let mut packer = Packer::new(self.clone());
            for id in &missing {
                let kind = wanted[id].0;
                match fetch(id, kind) {
                    Ok(b) => {
                        packer.add_copy(*id, kind, &b)?;
                        report.chunks_repaired += 1;
                    }
                    Err(why) => {
                        for o in &wanted[id].1 {
                            failed.insert(*o, why.clone());
                        }
                    }
                }
            }
            packer.finish()?;
        }
        if !rewritten.is_empty() {
            // As gc does: a new epoch before and after the deletes, so no
            // other handle trusts a location that is gone.
            self.bump_gc_epoch()?;
            for pack in &rewritten {
                self.backend().delete(&pack.idx_path())?;
                self.backend().delete(&pack.pack_path())?;
                tracing::info!(%pack, "pack rewritten with its damaged chunks repaired");
            }
            self.bump_gc_epoch()?;
        }
        self.rescan(true)?;
        report.packs_rewritten = rewritten.len();
        for (o, why) in failed {
            report.unrepaired.entry(owners[o].clone()).or_insert(why);
        }
        report.repaired = owners
            .into_iter()
            .filter(|p| !report.unrepaired.contains_key(p))
            .collect();
        Ok(report)
    }
}
