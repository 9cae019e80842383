//! The in-memory map chunk id -> where its blob lives, built from the pack
//! index files.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use rayon::prelude::*;

use crate::StoreError;
use crate::backend::Backend;
use crate::blob::BlobKind;
use crate::chunk::ChunkId;
use crate::pack::{self, PackId, PackIndex};

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
    pub kind: BlobKind,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<ChunkId, Location>,
    loaded: HashSet<PackId>,
    /// Packs whose index file is damaged, with what is wrong.
    damaged: HashMap<PackId, String>,
    /// Chunks known only from an index whose checksum failed or whose pack
    /// file is missing: still read (the blob check decides), but never
    /// deduplicated against, so the next writer stores them again.
    suspect: HashSet<ChunkId>,
    /// The gc epoch the map was built under (see [`crate::lock`]).
    epoch: String,
}

#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<State>,
}

impl Catalog {
    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.read().map.get(id).copied()
    }

    /// True when the chunk is known from a sound index of a present pack,
    /// so a new point may reference it without storing it again.
    pub fn contains(&self, id: &ChunkId) -> bool {
        let state = self.read();
        state.map.contains_key(id) && !state.suspect.contains(id)
    }

    /// Where the chunk is, when known from a sound index (what writers
    /// deduplicate against).
    pub fn get_sound(&self, id: &ChunkId) -> Option<Location> {
        let state = self.read();
        if state.suspect.contains(id) {
            return None;
        }
        state.map.get(id).copied()
    }

    /// True when the chunk is known only from a doubtful index.
    #[cfg(test)]
    pub fn is_suspect(&self, id: &ChunkId) -> bool {
        self.read().suspect.contains(id)
    }

    /// Chunks whose stored blob read back damaged: still listed (the
    /// blob check decides on reads), never deduplicated against, so the
    /// next writer stores them again.
    pub fn mark_suspect(&self, ids: &[ChunkId]) {
        self.write().suspect.extend(ids.iter().copied());
    }

    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn damaged(&self) -> HashMap<PackId, String> {
        self.read().damaged.clone()
    }

    pub fn epoch(&self) -> String {
        self.read().epoch.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Add the blobs of a pack just written; a chunk already known keeps
    /// its location unless that location is suspect.
    pub fn insert(&self, idx: &PackIndex) {
        let mut state = self.write();
        insert_into(&mut state, idx, false);
    }

    /// Load the index files not loaded yet (all of them when `full`, after
    /// dropping what is known).
    /// `index_key` is the MAC key of an encrypted datastore's index files.
    pub fn scan(
        &self,
        backend: &dyn Backend,
        full: bool,
        epoch: String,
        index_key: Option<&[u8; 32]>,
    ) -> Result<(), StoreError> {
        let known: HashSet<PackId> = if full {
            HashSet::new()
        } else {
            self.read().loaded.clone()
        };
        let listing = backend.list("packs")?;
        let present: HashSet<PackId> = listing
            .iter()
            .filter_map(|o| match PackId::from_path(&o.path) {
                Some((id, "pack")) => Some(id),
                _ => None,
            })
            .collect();
        let todo: Vec<(PackId, String)> = listing
            .into_iter()
            .filter_map(|o| match PackId::from_path(&o.path) {
                Some((id, "idx")) if !known.contains(&id) => Some((id, o.path)),
                _ => None,
            })
            .collect();
        let loaded: Vec<(PackId, Result<PackIndex, String>)> = todo
            .par_iter()
            .filter_map(|(id, path)| {
                let result = match backend.get(path) {
                    Ok(bytes) => pack::decode_index_keyed(&bytes, index_key),
                    // Deleted by gc since the listing.
                    Err(e) if e.is_not_found() => return None,
                    // One unreadable index must not close the store: it is
                    // damaged like an unparsable one, for verify to report.
                    Err(e) => Err(format!("unreadable: {}", standby_types::error_chain(&e))),
                };
                Some((*id, result))
            })
            .collect();
        let mut state = self.write();
        if full {
            *state = State::default();
        }
        state.epoch = epoch;
        for (id, result) in loaded {
            state.loaded.insert(id);
            match result {
                Ok(idx) if idx.pack != id => {
                    state
                        .damaged
                        .insert(id, format!("index names another pack {}", idx.pack));
                }
                Ok(idx) => {
                    if !idx.checksum_ok {
                        let reason = match index_key {
                            Some(_) => "MAC mismatch: altered, or written with another key",
                            None => "checksum mismatch",
                        };
                        state.damaged.insert(id, reason.into());
                    }
                    let suspect = !idx.checksum_ok || !present.contains(&id);
                    insert_into(&mut state, &idx, suspect);
                }
                Err(reason) => {
                    tracing::warn!(pack = %id, %reason, "unreadable pack index");
                    state.damaged.insert(id, reason);
                }
            }
        }
        Ok(())
    }
}

/// A chunk known from a sound index keeps its location; one known only
/// from a suspect index takes the first sound location found.
fn insert_into(state: &mut State, idx: &PackIndex, suspect: bool) {
    use std::collections::hash_map::Entry;
    state.loaded.insert(idx.pack);
    let State {
        map,
        suspect: doubtful,
        ..
    } = state;
    for e in &idx.entries {
        let loc = Location {
            pack: idx.pack,
            offset: e.offset,
            len: e.len,
            kind: e.kind,
        };
        match map.entry(e.id) {
            Entry::Vacant(v) => {
                v.insert(loc);
                if suspect {
                    doubtful.insert(e.id);
                }
            }
            Entry::Occupied(mut o) => {
                if !suspect && doubtful.remove(&e.id) {
                    o.insert(loc);
                }
            }
        }
    }
}
