//! Verification: re-read and re-hash everything live points and
//! templates reference.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use rayon::prelude::*;
use serde::Serialize;

use crate::StoreError;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::datastore::Datastore;
use crate::index;
use crate::manifest::{Manifest, PointId};
use crate::pack::{self, PackId};
use crate::progress::Progress;

/// One thing wrong in a datastore, and whose data it affects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Problem {
    pub point: Option<PointId>,
    pub disk: Option<String>,
    /// The pack, index or manifest file, or the chunk, that is damaged.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(point) = &self.point {
            write!(f, "point {point}: ")?;
        }
        if let Some(disk) = &self.disk {
            write!(f, "disk {disk}: ")?;
        }
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// What verify checked and found.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub points_checked: usize,
    /// Templates whose chunks were checked (`template.rs`).
    #[serde(default)]
    pub templates_checked: usize,
    pub chunks_checked: u64,
    /// Plaintext bytes of the chunks checked.
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
    /// Referenced chunks (data and index) found in pack indexes.
    pub chunks_referenced: u64,
    /// Set when only a sample of the chunks was re-read: the fraction
    /// asked for (`chunks_checked` says how many that was).
    pub sample_fraction: Option<f64>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The fixed split of chunks into slices ([`Datastore::verify_slice`]).
const SLICE_SEED: u64 = 0x5354_4e44_4259_5631;

/// A (point, disk) that references chunks.
type Owner = (PointId, String);

impl Datastore {
    /// Check every manifest, every pack index, and every blob a point
    /// references (CRC, decompression, hash). Problems are collected, not
    /// returned as errors; an error means verify itself could not run.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport, StoreError> {
        self.verify_inner(None, progress)
    }

    /// Like [`Datastore::verify`], but re-reads only about `fraction` (0–1)
    /// of the referenced chunks, chosen by `seed` (the same seed picks the
    /// same chunks), fetching just their byte ranges: a cheap check of a
    /// cloud store. Manifests and pack indexes are all checked; the report
    /// states the fraction.
    pub fn verify_sample(
        &self,
        fraction: f64,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, StoreError> {
        let f = fraction.clamp(0.0, 1.0);
        self.verify_inner(Some((0.0, f, seed)), progress)
    }

    /// Like [`Datastore::verify_sample`], but re-reads slice `part` of
    /// `parts` (a fixed split of the chunks by their hash): checking slices
    /// 0 to `parts - 1` in turn re-reads every chunk, new ones included,
    /// once. The report's fraction is `1 / parts`.
    pub fn verify_slice(
        &self,
        part: u32,
        parts: u32,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, StoreError> {
        let parts = parts.max(1);
        let part = part.min(parts - 1);
        let (lo, hi) = (part as f64 / parts as f64, (part + 1) as f64 / parts as f64);
        self.verify_inner(Some((lo, hi, SLICE_SEED)), progress)
    }

    fn verify_inner(
        &self,
        sample: Option<(f64, f64, u64)>,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, StoreError> {
        // Held like a writer: a pack gc removes while verify reads would
        // be reported missing.
        let _lock = self.lock_shared()?;
        self.rescan(true)?;
        let mut report = VerifyReport {
            sample_fraction: sample.map(|s| s.1 - s.0),
            ..VerifyReport::default()
        };
        let mut problems = BTreeSet::new();
        let root = self.root().to_path_buf();

        // Manifests.
        let mut manifests: Vec<Manifest> = Vec::new();
        for object in self.backend().list("manifests")? {
            if !object.path.ends_with(".json") {
                continue;
            }
            match self.read_manifest_at(&object.path) {
                Ok(m) => manifests.push(m),
                Err(e) => {
                    let message = match e {
                        StoreError::BadManifest { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    problems.insert(Problem {
                        point: PointId::from_manifest_path(&object.path),
                        disk: None,
                        object: format!("manifest {}", root.join(&object.path).display()),
                        message,
                    });
                }
            }
        }
        report.points_checked = manifests.len();
        // Templates: their chunks are checked like a point's, each disk
        // named with the template.
        let (templates, bad) = self.scan_templates()?;
        for e in bad {
            let (object, message) = match e {
                StoreError::BadTemplate { path, reason } => (path.display().to_string(), reason),
                other => ("template".to_string(), other.to_string()),
            };
            problems.insert(Problem {
                point: None,
                disk: None,
                object: format!("template {object}"),
                message,
            });
        }
        report.templates_checked = templates.len();
        let labelled: Vec<(&Manifest, Option<&str>)> = manifests
            .iter()
            .map(|m| (m, None))
            .chain(templates.iter().map(|t| (&t.point, Some(t.name.as_str()))))
            .collect();

        // Pack indexes that did not read cleanly.
        let damaged = self.catalog().damaged();
        for (pack, reason) in &damaged {
            problems.insert(Problem {
                point: None,
                disk: None,
                object: format!("index file {}", pack.idx_path()),
                message: reason.clone(),
            });
        }

        // Key objects (only their form: opening one needs its key).
        for (object, message) in crate::keys::check_objects(self.backend())? {
            problems.insert(Problem {
                point: None,
                disk: None,
                object,
                message,
            });
        }

        // Which (point, disk) references which chunk.
        let mut owners: Vec<Owner> = Vec::new();
        let mut refs: HashMap<ChunkId, (BlobKind, Vec<u32>)> = HashMap::new();
        for (m, template) in labelled {
            for disk in &m.disks {
                let owner = owners.len() as u32;
                let label = match template {
                    Some(t) => format!("{} (template {t})", disk.name),
                    None => disk.name.clone(),
                };
                owners.push((m.id.clone(), label));
                for (i, index_id) in disk.index.iter().enumerate() {
                    if index_id.is_zero() {
                        continue;
                    }
                    refs.entry(*index_id)
                        .or_insert_with(|| (BlobKind::Index, Vec::new()))
                        .1
                        .push(owner);
                    let ids = self
                        .read_chunk(index_id, BlobKind::Index)
                        .and_then(|payload| {
                            index::decode(&payload, disk.ids_in_index_chunk(i)).map_err(|reason| {
                                StoreError::Corrupt {
                                    object: format!("index chunk {index_id}"),
                                    root: root.clone(),
                                    reason,
                                }
                            })
                        });
                    match ids {
                        Ok(ids) => {
                            for id in ids.into_iter().filter(|id| !id.is_zero()) {
                                let entry = refs
                                    .entry(id)
                                    .or_insert_with(|| (BlobKind::Data, Vec::new()));
                                if entry.1.last() != Some(&owner) {
                                    entry.1.push(owner);
                                }
                            }
                        }
                        Err(e) => {
                            problems.insert(Problem {
                                point: Some(m.id.clone()),
                                disk: Some(owners[owner as usize].1.clone()),
                                object: format!("index chunk {index_id}"),
                                message: format!(
                                    "{}; the data it lists is unchecked",
                                    describe(&e)
                                ),
                            });
                        }
                    }
                }
            }
        }

        // Group referenced chunks by pack (those sampled, when sampling).
        let picked = |id: &ChunkId| match sample {
            None => true,
            Some((lo, hi, seed)) => {
                let mut h = blake3::Hasher::new();
                h.update(&seed.to_le_bytes());
                h.update(&id.0);
                let x =
                    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default());
                let x = x as f64 / u64::MAX as f64;
                lo <= x && (x < hi || (hi >= 1.0 && x <= 1.0))
            }
        };
        let mut by_pack: HashMap<PackId, Vec<(ChunkId, BlobKind, crate::catalog::Location)>> =
            HashMap::new();
        for (id, (kind, who)) in &refs {
            match self.catalog().get(id) {
                Some(loc) => {
                    report.chunks_referenced += 1;
                    if picked(id) {
                        by_pack.entry(loc.pack).or_default().push((*id, *kind, loc));
                    }
                }
                None => {
                    for &o in who {
                        problems.insert(problem(
                            &owners[o as usize],
                            format!("chunk {id}"),
                            "not found in any pack index",
                        ));
                    }
                }
            }
        }
        let total: u64 = by_pack
            .values()
            .flatten()
            .map(|(_, _, loc)| u64::from(loc.len))
            .sum();
        progress.set_total(total);

        let packs: Vec<_> = by_pack.into_iter().collect();
        let results: Vec<(u64, u64, Vec<Problem>)> = packs
            .par_iter()
            .map(|(pack_id, chunks)| {
                let mut found = Vec::new();
                let (mut checked, mut bytes) = (0u64, 0u64);
                let owners_of =
                    |id: &ChunkId| refs.get(id).map(|r| r.1.clone()).unwrap_or_default();
                let all_owners = || {
                    let mut all: Vec<u32> =
                        chunks.iter().flat_map(|(id, _, _)| owners_of(id)).collect();
                    all.sort_unstable();
                    all.dedup();
                    all
                };
                if let Some(reason) = damaged.get(pack_id) {
                    for o in all_owners() {
                        found.push(problem(
                            &owners[o as usize],
                            format!("index file {}", pack_id.idx_path()),
                            reason,
                        ));
                    }
                }
                // The whole pack in one read, or only the sampled ranges.
                let fetched = if sample.is_none() {
                    self.backend().get(&pack_id.pack_path()).map(|data| {
                        if let Err(message) = pack::check_pack_header(&data) {
                            for o in all_owners() {
                                found.push(problem(
                                    &owners[o as usize],
                                    format!("pack {pack_id}"),
                                    &message,
                                ));
                            }
                        }
                        (data, None)
                    })
                } else {
                    let ranges: Vec<std::ops::Range<u64>> = chunks
                        .iter()
                        .map(|(_, _, loc)| loc.offset..loc.offset + u64::from(loc.len))
                        .collect();
                    self.backend()
                        .get_ranges(&pack_id.pack_path(), &ranges)
                        .map(|blobs| (Vec::new(), Some(blobs)))
                };
                let (data, blobs) = match fetched {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        let message = if e.is_not_found() {
                            "missing".to_string()
                        } else {
                            describe(&e)
                        };
                        for o in all_owners() {
                            found.push(problem(
                                &owners[o as usize],
                                format!("pack {pack_id}"),
                                &message,
                            ));
                        }
                        progress.inc(chunks.iter().map(|c| u64::from(c.2.len)).sum());
                        return (0, 0, found);
                    }
                };
                for (n, (id, kind, loc)) in chunks.iter().enumerate() {
                    let start = loc.offset as usize;
                    let stored = match &blobs {
                        Some(blobs) => blobs.get(n).map(Vec::as_slice),
                        None => data.get(start..start.saturating_add(loc.len as usize)),
                    };
                    let result = match stored {
                        Some(bytes) if start >= pack::PACK_HEADER_SIZE => self
                            .decode_blob(bytes, *kind, id)
                            .map(|d| d.len())
                            .map_err(|e| e.to_string()),
                        _ => Err(format!(
                            "blob at {}+{} is past the end of the pack ({} bytes)",
                            loc.offset,
                            loc.len,
                            data.len()
                        )),
                    };
                    progress.inc(u64::from(loc.len));
                    match result {
                        Ok(len) => {
                            checked += 1;
                            bytes += len as u64;
                        }
                        Err(message) => {
                            let what = if *kind == BlobKind::Index {
                                "index chunk"
                            } else {
                                "chunk"
                            };
                            for o in owners_of(id) {
                                found.push(problem(
                                    &owners[o as usize],
                                    format!("{what} {id} in pack {pack_id}"),
                                    &message,
                                ));
                            }
                        }
                    }
                }
                (checked, bytes, found)
            })
            .collect();
        for (checked, bytes, found) in results {
            report.chunks_checked += checked;
            report.bytes_checked += bytes;
            problems.extend(found);
        }
        report.problems = problems.into_iter().collect();
        for p in &report.problems {
            tracing::warn!(problem = %p, "verify");
        }
        Ok(report)
    }
}

fn problem(owner: &Owner, object: String, message: impl ToString) -> Problem {
    Problem {
        point: Some(owner.0.clone()),
        disk: Some(owner.1.clone()),
        object,
        message: message.to_string(),
    }
}

/// The innermost useful message of an error chain.
fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Corrupt { object, reason, .. } => format!("{object}: {reason}"),
        other => standby_types::error_chain(other),
    }
}
