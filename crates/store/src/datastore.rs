//! The datastore handle: opening, the catalog, reading points and chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::auth::StoreAuth;
use crate::backend::{Backend, LocalBackend};
use crate::blob::{self, BlobError, BlobKind};
use crate::catalog::{Catalog, Location};
use crate::chunk::ChunkId;
use crate::crypto::Crypto;
use crate::keys::{self, KdfParams, KeySource};
use crate::layout::{
    FORMAT_1, MARKER_FILE, Marker, already_exists, create_dirs, create_layout, create_layout_on,
    read_marker,
};
use crate::manifest::{DiskEntry, Manifest, PointId};
use crate::pack::{self, PackId, PackIndex};
use crate::{StoreError, index, lock};

/// Tunables of a datastore handle.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Target pack size, 16–64 MiB.
    pub pack_size: usize,
    /// zstd level for new blobs.
    pub zstd_level: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pack_size: pack::DEFAULT_PACK_SIZE,
            zstd_level: blob::DEFAULT_LEVEL,
        }
    }
}

fn check_options(options: &StoreOptions) -> Result<(), StoreError> {
    if !(pack::MIN_PACK_SIZE..=pack::MAX_PACK_SIZE).contains(&options.pack_size) {
        return Err(StoreError::InvalidPackSize(options.pack_size));
    }
    Ok(())
}

/// Ranges of one pack handed to the backend at once.
const FETCH_GROUP: usize = 64;

/// Counts of what a datastore holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoreStats {
    pub points: usize,
    pub packs: usize,
    pub chunks: u64,
    /// Sum of the sizes of pack, pack index and manifest files.
    pub bytes_on_disk: u64,
}

/// What a sync of one point did (same scheme or re-encoded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SyncStats {
    pub chunks_copied: u64,
    /// Stored bytes copied.
    pub bytes_copied: u64,
    /// Chunks the destination already had.
    pub chunks_skipped: u64,
    /// Chunks of this copy read back from the destination and checked
    /// against their ids once written.
    #[serde(default)]
    pub chunks_verified: u64,
    /// The destination already had the point; nothing was done.
    pub already_present: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub root: PathBuf,
    pub backend: Arc<dyn Backend>,
    pub catalog: Catalog,
    pub options: StoreOptions,
    /// The master keys of an encrypted datastore.
    pub crypto: Option<Crypto>,
    /// The store key of an unencrypted one (format 2).
    pub auth: Option<StoreAuth>,
}

/// A content-addressed store of recovery points. Cheap to clone; clones
/// share the chunk catalog.
#[derive(Debug, Clone)]
pub struct Datastore {
    pub(crate) inner: Arc<Inner>,
}

impl Datastore {
    /// Open the datastore at `root`, creating it when `root` is missing or
    /// an empty directory.
    pub fn open_or_create(root: &Path) -> Result<Datastore, StoreError> {
        Self::open_or_create_with(root, StoreOptions::default())
    }

    pub fn open_or_create_with(
        root: &Path,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        if !root.join(MARKER_FILE).exists() {
            let marker = plain_marker(&LocalBackend::new(root))?;
            create_layout(root, &marker, |_| Ok(()))?;
        }
        Self::open_with(root, options)
    }

    /// Open an existing datastore.
    pub fn open(root: &Path) -> Result<Datastore, StoreError> {
        Self::open_with(root, StoreOptions::default())
    }

    pub fn open_with(root: &Path, options: StoreOptions) -> Result<Datastore, StoreError> {
        Self::open_keyed(root, options, None)
    }

    /// Open an existing datastore at `root`, with its key when it is
    /// encrypted.
    pub(crate) fn open_keyed(
        root: &Path,
        options: StoreOptions,
        key: Option<&KeySource>,
    ) -> Result<Datastore, StoreError> {
        check_options(&options)?;
        let backend = LocalBackend::new(root);
        // Read the marker before creating anything in a stranger's directory.
        read_marker(&backend)?;
        create_dirs(root)?;
        Self::open_on_keyed(Arc::new(backend), options, key)
    }

    /// Open an existing, unencrypted local datastore whose store key is
    /// kept in `store_key_file` (`None`: beside it, `<root>.store-key`).
    pub fn open_local(
        root: &Path,
        store_key_file: Option<PathBuf>,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        check_options(&options)?;
        let backend = LocalBackend::new(root).with_store_key_file(store_key_file);
        read_marker(&backend)?;
        create_dirs(root)?;
        Self::open_on_keyed(Arc::new(backend), options, None)
    }

    /// Open an existing, unencrypted datastore on any backend (an object
    /// store).
    pub fn open_on(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        Self::open_on_keyed(backend, options, None)
    }

    /// Open an existing, encrypted datastore on any backend with `key`.
    pub fn open_on_with_key(
        backend: Arc<dyn Backend>,
        key: &KeySource,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        Self::open_on_keyed(backend, options, Some(key))
    }

    /// Open an existing datastore on `backend`, with its key when it is
    /// encrypted: the key objects are read through the same backend.
    pub(crate) fn open_on_keyed(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
        key: Option<&KeySource>,
    ) -> Result<Datastore, StoreError> {
        check_options(&options)?;
        let marker = read_marker(backend.as_ref())?;
        let crypto = keys::unlock_marker(backend.as_ref(), &marker, key)?;
        let auth = match &crypto {
            // Sealed manifests, MAC'd indexes: authenticated in any format.
            Some(_) => None,
            None if marker.format() == FORMAT_1 => {
                return Err(StoreError::NotUpgraded {
                    location: backend.location().to_path_buf(),
                });
            }
            None => Some(open_auth(backend.as_ref(), &marker)?),
        };
        Self::assemble(backend, options, crypto, auth)
    }

    /// A handle on the store behind `backend` with these keys, its
    /// catalog loaded.
    pub(crate) fn assemble(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
        crypto: Option<Crypto>,
        auth: Option<StoreAuth>,
    ) -> Result<Datastore, StoreError> {
        let ds = Datastore {
            inner: Arc::new(Inner {
                root: backend.location().to_path_buf(),
                backend,
                catalog: Catalog::default(),
                options,
                crypto,
                auth,
            }),
        };
        ds.rescan(true)?;
        Ok(ds)
    }

    /// Create a datastore on an empty location of any backend; fails with
    /// `AlreadyExists` when one is there already, and with
    /// [`StoreError::NotADatastore`] when the location holds other objects.
    pub fn create_on(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        check_options(&options)?;
        if backend.exists(MARKER_FILE)? {
            return Err(already_exists(backend.as_ref()));
        }
        let marker = plain_marker(backend.as_ref())?;
        if !create_layout_on(backend.as_ref(), &marker, |_| Ok(()))? {
            return Err(already_exists(backend.as_ref()));
        }
        Self::open_on(backend, options)
    }

    /// Open the datastore on `backend`, creating it when the location is
    /// empty. Of concurrent creators the first marker written wins.
    pub fn open_or_create_on(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        match Self::create_on(backend.clone(), options) {
            Ok(ds) => Ok(ds),
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::open_on(backend, options)
            }
            Err(e) => Err(e),
        }
    }

    /// Requests and bytes moved so far, when the backend counts them
    /// (object stores).
    pub fn object_stats(&self) -> Option<crate::backend::ObjectStats> {
        self.backend().object_stats()
    }

    /// Hold the store like a point writer does (see [`crate::lock`]).
    pub(crate) fn lock_shared(&self) -> Result<lock::StoreLock, StoreError> {
        lock::shared(&self.inner.backend)
    }

    /// Hold the store like gc does; fails at once when others hold it.
    pub(crate) fn lock_exclusive(&self) -> Result<lock::StoreLock, StoreError> {
        lock::exclusive(&self.inner.backend)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.inner.backend.as_ref()
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub(crate) fn options(&self) -> StoreOptions {
        self.inner.options
    }

    pub(crate) fn gc_epoch(&self) -> Result<String, StoreError> {
        match self.backend().get(lock::EPOCH_FILE) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.is_not_found() => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Reload pack indexes: all of them when `full`, else the new ones.
    pub(crate) fn rescan(&self, full: bool) -> Result<(), StoreError> {
        let epoch = self.gc_epoch()?;
        self.catalog()
            .scan(self.backend(), full, epoch, self.index_key())
    }

    /// Reload the catalog if gc ran (in any process) since it was built.
    pub(crate) fn refresh_after_gc(&self) -> Result<(), StoreError> {
        if self.gc_epoch()? != self.catalog().epoch() {
            self.rescan(true)?;
        }
        Ok(())
    }

    /// Where a chunk is, looking for index files written by other
    /// processes when it is not known.
    pub(crate) fn locate(&self, id: &ChunkId) -> Result<Location, StoreError> {
        if let Some(loc) = self.catalog().get(id) {
            return Ok(loc);
        }
        self.rescan(false)?;
        self.catalog()
            .get(id)
            .ok_or_else(|| StoreError::ChunkNotFound {
                chunk: id.to_string(),
                root: self.root().to_path_buf(),
            })
    }

    /// The stored bytes of a blob, unchecked.
    pub(crate) fn read_blob(&self, loc: &Location) -> Result<Vec<u8>, StoreError> {
        self.backend()
            .get_range(&loc.pack.pack_path(), loc.offset, loc.len as usize)
    }

    /// The stored bytes of a chunk's blob, reloading the catalog when its
    /// pack is gone (gc in another process), and where they were read.
    pub(crate) fn read_stored(&self, id: &ChunkId) -> Result<(Vec<u8>, Location), StoreError> {
        let loc = self.locate(id)?;
        match self.read_blob(&loc) {
            Ok(blob) => Ok((blob, loc)),
            Err(e) if e.is_not_found() => {
                self.rescan(true)?;
                let loc = self.locate(id)?;
                Ok((self.read_blob(&loc)?, loc))
            }
            Err(e) => Err(e),
        }
    }

    /// The stored bytes of many blobs and where they were read, in the
    /// order of `ids`: the ranges of one pack go to the backend together
    /// (an object store coalesces neighbours into one request), several
    /// packs (and groups of one pack) in parallel.
    pub(crate) fn read_stored_many(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<(Vec<u8>, Location)>, StoreError> {
        use rayon::prelude::*;
        let locs: Vec<Location> = ids
            .iter()
            .map(|id| self.locate(id))
            .collect::<Result<_, _>>()?;
        let mut by_pack: std::collections::HashMap<PackId, Vec<usize>> = Default::default();
        for (i, loc) in locs.iter().enumerate() {
            by_pack.entry(loc.pack).or_default().push(i);
        }
        let mut groups: Vec<(PackId, Vec<usize>)> = Vec::new();
        for (pack, mut members) in by_pack {
            members.sort_by_key(|&i| locs[i].offset);
            for g in members.chunks(FETCH_GROUP) {
                groups.push((pack, g.to_vec()));
            }
        }
        let fetched: Vec<Vec<(usize, Vec<u8>, Location)>> = groups
            .par_iter()
            .map(|(pack, members)| {
                let ranges: Vec<std::ops::Range<u64>> = members
                    .iter()
                    .map(|&i| locs[i].offset..locs[i].offset + u64::from(locs[i].len))
                    .collect();
                match self.backend().get_ranges(&pack.pack_path(), &ranges) {
                    Ok(blobs) => Ok(members
                        .iter()
                        .zip(blobs)
                        .map(|(&i, b)| (i, b, locs[i]))
                        .collect()),
                    // Moved by gc in another process: look again.
                    Err(e) if e.is_not_found() => members
                        .iter()
                        .map(|&i| self.read_stored(&ids[i]).map(|(b, loc)| (i, b, loc)))
                        .collect(),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<_, _>>()?;
        let mut out: Vec<Option<(Vec<u8>, Location)>> = vec![None; ids.len()];
        for (i, blob, loc) in fetched.into_iter().flatten() {
            out[i] = Some((blob, loc));
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The plaintext of a chunk, checked against its id.
    pub(crate) fn read_chunk(&self, id: &ChunkId, kind: BlobKind) -> Result<Vec<u8>, StoreError> {
        let (blob, loc) = self.read_stored(id)?;
        self.decode_blob(&blob, kind, id)
            .map_err(|e| self.corrupt_chunk(id, &loc.pack, e))
    }

    pub(crate) fn corrupt_chunk(
        &self,
        id: &ChunkId,
        pack: &PackId,
        e: impl ToString,
    ) -> StoreError {
        StoreError::Corrupt {
            object: format!("chunk {id} in pack {pack}"),
            root: self.root().to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// All chunk ids of a disk, in order.
    pub(crate) fn read_disk_index(&self, disk: &DiskEntry) -> Result<Vec<ChunkId>, StoreError> {
        // `chunks` is bounded by the manifest check (`limits.rs`).
        let mut ids = Vec::with_capacity(disk.chunks.min(crate::limits::MAX_DISK_CHUNKS) as usize);
        for (i, index_id) in disk.index.iter().enumerate() {
            let count = disk.ids_in_index_chunk(i);
            if index_id.is_zero() {
                ids.extend(std::iter::repeat_n(ChunkId::ZERO, count));
                continue;
            }
            let payload = self.read_chunk(index_id, BlobKind::Index)?;
            let part = index::decode(&payload, count).map_err(|reason| StoreError::Corrupt {
                object: format!("index chunk {index_id}"),
                root: self.root().to_path_buf(),
                reason,
            })?;
            ids.extend(part);
        }
        Ok(ids)
    }

    /// Every point, oldest first. An unreadable manifest is an error naming
    /// it; [`Datastore::verify`] reports it instead.
    pub fn list_points(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut points = Vec::new();
        for object in self.backend().list("manifests")? {
            if !object.path.ends_with(".json") {
                continue;
            }
            points.push(self.read_manifest_at(&object.path)?);
        }
        points.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok(points)
    }

    /// Every point whose manifest reads, oldest first, and the error of
    /// each manifest that does not (damaged, planted, cut short): one bad
    /// manifest costs only its own point. When no manifest reads at all
    /// (a wrong key, a store that is not this one), that is the store's
    /// error, not every point's.
    pub fn scan_points(&self) -> Result<(Vec<Manifest>, Vec<StoreError>), StoreError> {
        let mut points = Vec::new();
        let mut bad = Vec::new();
        for object in self.backend().list("manifests")? {
            if !object.path.ends_with(".json") {
                continue;
            }
            match self.read_manifest_at(&object.path) {
                Ok(m) => points.push(m),
                // Pruned since the listing.
                Err(e) if e.is_not_found() => {}
                Err(e @ StoreError::BadManifest { .. }) => bad.push(e),
                Err(e) => return Err(e),
            }
        }
        if points.is_empty() && !bad.is_empty() {
            return Err(bad.swap_remove(0));
        }
        points.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok((points, bad))
    }

    pub(crate) fn read_manifest_at(&self, path: &str) -> Result<Manifest, StoreError> {
        let bytes = self.backend().get(path)?;
        let bad = |reason: String| StoreError::BadManifest {
            path: self.root().join(path),
            reason,
        };
        let m = self.decode_manifest(path, &bytes).map_err(bad)?;
        if m.id.manifest_path() != path {
            return Err(bad(format!("holds point {} at the wrong path", m.id)));
        }
        Ok(m)
    }

    /// Write a copied point's manifest (sync), last and create-only. True
    /// when this datastore got the point meanwhile from someone else.
    /// Before point `point` is published here: the lease is renewed (a
    /// gc about to delete sees it and stops), then gc must have deleted
    /// nothing since `epoch`, the gc epoch the catalog was loaded under
    /// when the work began (gc writes a new epoch before its first
    /// delete). Else the chunks the point shares with packs here may be
    /// gone: the point is not published, and the catalog is reloaded so
    /// the work done again stores them anew.
    pub(crate) fn check_not_robbed(
        &self,
        lock: &lock::StoreLock,
        epoch: &str,
        point: &PointId,
    ) -> Result<(), StoreError> {
        lock.reassert()?;
        if self.gc_epoch()? == epoch {
            return Ok(());
        }
        if let Err(e) = self.rescan(true) {
            tracing::warn!(error = %e, "catalog reload failed");
        }
        Err(StoreError::PointRobbed {
            point: point.to_string(),
            root: self.root().to_path_buf(),
            reason: "gc deleted packs while it was being written (its lease lapsed)".into(),
        })
    }

    pub(crate) fn publish_manifest(
        &self,
        id: &PointId,
        manifest: &Manifest,
    ) -> Result<bool, StoreError> {
        match self
            .backend()
            .put_new(&id.manifest_path(), &self.encode_manifest(manifest)?)
        {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        }
    }

    pub fn load_manifest(&self, id: &PointId) -> Result<Manifest, StoreError> {
        match self.read_manifest_at(&id.manifest_path()) {
            Err(e) if e.is_not_found() => Err(StoreError::PointNotFound(
                id.to_string(),
                self.root().to_path_buf(),
            )),
            other => other,
        }
    }

    pub fn has_point(&self, id: &PointId) -> Result<bool, StoreError> {
        self.backend().exists(&id.manifest_path())
    }

    /// The newest readable point of `vm`. A damaged newest manifest is
    /// logged and skipped, so it does not block further points; compare
    /// with [`Datastore::newest_point_id`] to know whether it was.
    pub fn latest_point(&self, vm: &str) -> Result<Option<Manifest>, StoreError> {
        for path in self.manifest_paths_newest_first(vm)? {
            match self.read_manifest_at(&path) {
                Ok(m) => return Ok(Some(m)),
                // Gone since the listing (pruned): the next one is newest.
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(%path, error = %e, "unreadable manifest skipped"),
            }
        }
        Ok(None)
    }

    /// The id of the newest point of `vm` by manifest name, readable or
    /// not.
    pub fn newest_point_id(&self, vm: &str) -> Result<Option<PointId>, StoreError> {
        Ok(self
            .manifest_paths_newest_first(vm)?
            .first()
            .and_then(|p| PointId::from_manifest_path(p)))
    }

    fn manifest_paths_newest_first(&self, vm: &str) -> Result<Vec<String>, StoreError> {
        if !crate::manifest::valid_vm_name(vm) {
            return Err(StoreError::InvalidVmName(vm.to_string()));
        }
        // Names are fixed-width times, so name order is time order.
        let mut paths: Vec<String> = self
            .backend()
            .list(&format!("manifests/{vm}"))?
            .into_iter()
            .map(|o| o.path)
            .filter(|p| p.ends_with(".json"))
            .collect();
        paths.sort_unstable_by(|a, b| b.cmp(a));
        Ok(paths)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        self.rescan(false)?;
        let mut stats = StoreStats {
            chunks: self.catalog().len() as u64,
            ..StoreStats::default()
        };
        for o in self.backend().list("packs")? {
            match PackId::from_path(&o.path) {
                Some((_, "pack")) => {
                    stats.packs += 1;
                    stats.bytes_on_disk += o.size;
                }
                Some(_) => stats.bytes_on_disk += o.size,
                None => {}
            }
        }
        for o in self.backend().list("manifests")? {
            if o.path.ends_with(".json") {
                stats.points += 1;
                stats.bytes_on_disk += o.size;
            }
        }
        Ok(stats)
    }
}

/// Encrypted datastores: creating them with their first key object,
/// opening them with a key, adding keys (the key objects are `keys.rs`).
impl Datastore {
    /// Create an encrypted datastore at `root` (missing or an empty
    /// directory), its master keys wrapped for `key`. Argon2id costs
    /// [`KdfParams::default`].
    pub fn create_encrypted(
        root: &Path,
        key: &KeySource,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        Self::create_encrypted_with_kdf(root, key, KdfParams::default(), options)
    }

    /// [`Datastore::create_encrypted`] with the given Argon2id cost.
    pub fn create_encrypted_with_kdf(
        root: &Path,
        key: &KeySource,
        kdf: KdfParams,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        let backend = LocalBackend::new(root);
        keys::create_encrypted_layout(&backend, key, kdf, |marker, before| {
            create_layout(root, marker, before)
        })?;
        Self::open_keyed(root, options, Some(key))
    }

    /// Create an encrypted datastore on an empty location of any backend
    /// (an Azure container or S3 bucket prefix), its master keys wrapped
    /// for `key`; the key object lives next to the data. Fails with
    /// `AlreadyExists` when a datastore is there already. Argon2id costs
    /// [`KdfParams::default`].
    pub fn create_encrypted_on(
        backend: Arc<dyn Backend>,
        key: &KeySource,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        Self::create_encrypted_on_with_kdf(backend, key, KdfParams::default(), options)
    }

    /// [`Datastore::create_encrypted_on`] with the given Argon2id cost.
    pub fn create_encrypted_on_with_kdf(
        backend: Arc<dyn Backend>,
        key: &KeySource,
        kdf: KdfParams,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        keys::create_encrypted_layout(backend.as_ref(), key, kdf, |marker, before| {
            create_layout_on(backend.as_ref(), marker, before)
        })?;
        Self::open_on_keyed(backend, options, Some(key))
    }

    /// Open an encrypted datastore with `key`.
    pub fn open_with_key(
        root: &Path,
        key: &KeySource,
        options: StoreOptions,
    ) -> Result<Datastore, StoreError> {
        Self::open_keyed(root, options, Some(key))
    }

    /// Wrap this datastore's master keys for `new` too, after checking
    /// that `existing` opens one of its key objects. Returns the new key
    /// object's path. Argon2id costs [`KdfParams::default`].
    pub fn add_key(&self, existing: &KeySource, new: &KeySource) -> Result<String, StoreError> {
        self.add_key_with_kdf(existing, new, KdfParams::default())
    }

    /// [`Datastore::add_key`] with the given Argon2id cost.
    pub fn add_key_with_kdf(
        &self,
        existing: &KeySource,
        new: &KeySource,
        kdf: KdfParams,
    ) -> Result<String, StoreError> {
        let Some(crypto) = self.crypto() else {
            return Err(StoreError::NotEncrypted {
                location: self.root().to_path_buf(),
            });
        };
        let (master, _) = keys::unlock(self.backend(), existing, Some(&crypto.key_check()))?;
        let (path, bytes) = keys::wrap(&master, new, kdf)?;
        self.backend().put_new(&path, &bytes)?;
        tracing::info!(object = %path, key = %new, "key object added");
        Ok(path)
    }
}

/// What the datastore does differently when it is encrypted: its ids,
/// blobs, pack index trailers and manifests follow its scheme (keyed and
/// sealed with its master keys, or plain).
impl Datastore {
    /// True when the datastore encrypts its chunks and manifests.
    pub fn is_encrypted(&self) -> bool {
        self.inner.crypto.is_some()
    }

    pub(crate) fn crypto(&self) -> Option<&Crypto> {
        self.inner.crypto.as_ref()
    }

    pub(crate) fn auth(&self) -> Option<&StoreAuth> {
        self.inner.auth.as_ref()
    }

    /// The MAC key of pack index trailers: the MAC key of an encrypted
    /// store, the index key of an authenticated plain one; none only
    /// while a format-1 store is being upgraded.
    pub(crate) fn index_key(&self) -> Option<&[u8; 32]> {
        match (self.crypto(), self.auth()) {
            (Some(c), _) => Some(c.index_key()),
            (None, Some(a)) => Some(a.index_key()),
            (None, None) => None,
        }
    }

    /// True when a stored blob of this datastore is valid in `other` as it
    /// is: both unencrypted, or both with the same master keys.
    pub(crate) fn same_scheme(&self, other: &Datastore) -> bool {
        match (self.crypto(), other.crypto()) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_keys(b),
            _ => false,
        }
    }

    /// Id of a data chunk in this datastore's scheme.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match self.crypto() {
            Some(c) => c.chunk_id(data),
            None => ChunkId::of(data),
        }
    }

    /// Hash of an index chunk's payload in this datastore's scheme.
    pub(crate) fn index_chunk_id(&self, payload: &[u8]) -> ChunkId {
        match self.crypto() {
            Some(c) => c.hash(payload),
            None => ChunkId::hash(payload),
        }
    }

    /// Encode chunk `id`'s plaintext as a blob of this datastore.
    pub(crate) fn encode_blob(&self, kind: BlobKind, id: &ChunkId, data: &[u8]) -> Vec<u8> {
        blob::encode_with(kind, data, self.options().zstd_level, id, self.crypto())
    }

    /// Check and decode a stored blob of chunk `id`.
    pub(crate) fn decode_blob(
        &self,
        stored: &[u8],
        kind: BlobKind,
        id: &ChunkId,
    ) -> Result<Vec<u8>, BlobError> {
        blob::decode_with(stored, kind, id, self.crypto())
    }

    pub(crate) fn decode_blob_into(
        &self,
        stored: &[u8],
        kind: BlobKind,
        id: &ChunkId,
        out: &mut [u8],
    ) -> Result<(), BlobError> {
        blob::decode_into_with(stored, kind, id, self.crypto(), out)
    }

    /// Parse a pack index file, its trailer checked in this scheme.
    pub(crate) fn decode_index(&self, bytes: &[u8]) -> Result<PackIndex, String> {
        pack::decode_index_keyed(bytes, self.index_key())
    }

    /// The bytes of `m`'s manifest object: sealed in an encrypted store.
    pub(crate) fn encode_manifest(&self, m: &Manifest) -> Result<Vec<u8>, StoreError> {
        m.to_object(self.crypto(), self.auth())
    }

    /// Parse and check the manifest object at `path`.
    pub(crate) fn decode_manifest(&self, path: &str, bytes: &[u8]) -> Result<Manifest, String> {
        Manifest::from_object(path, bytes, self.crypto(), self.auth())
    }
}

/// The marker of a new unencrypted store on `backend`, its store key
/// read from the backend's key file or made there.
fn plain_marker(backend: &dyn Backend) -> Result<Marker, StoreError> {
    let path = store_key_path(backend)?;
    let auth = StoreAuth::read_or_create(&path)?;
    Ok(Marker::plain(auth.check()))
}

/// Where the backend keeps its store's key; an error when nowhere.
pub(crate) fn store_key_path(backend: &dyn Backend) -> Result<PathBuf, StoreError> {
    backend
        .store_key_file()
        .ok_or_else(|| StoreError::StoreKey {
            location: backend.location().to_path_buf(),
            reason: "no store key file is configured (store_key_file)".into(),
        })
}

/// The store key of the format-2 unencrypted store with `marker`: it
/// must exist (it is never made again at open: a missing key file is
/// restored from its copy) and match the marker's check.
fn open_auth(backend: &dyn Backend, marker: &Marker) -> Result<StoreAuth, StoreError> {
    let location = backend.location().to_path_buf();
    let path = store_key_path(backend)?;
    if marker.auth.as_deref() != Some(crate::layout::AUTH_NAME) || marker.auth_check.is_none() {
        return Err(StoreError::Corrupt {
            object: format!("marker {MARKER_FILE}"),
            root: location,
            reason: "format 2 without authentication".into(),
        });
    }
    if !path.exists() {
        return Err(StoreError::StoreKey {
            location,
            reason: format!(
                "store key file {} is missing: put back its copy (it is never made again for an existing datastore)",
                path.display()
            ),
        });
    }
    let auth = StoreAuth::read(&path)?;
    if marker.auth_check.as_deref() != Some(auth.check()) {
        return Err(StoreError::StoreKey {
            location,
            reason: format!(
                "store key file {} is not this datastore's key",
                path.display()
            ),
        });
    }
    Ok(auth)
}

/// A new unencrypted store as standby 0.1 made and wrote it (format 1:
/// manifests without MACs, plain index trailers), for the upgrade's tests.
#[cfg(test)]
pub(crate) fn create_format_1(root: &Path) -> Datastore {
    create_layout(root, &Marker::format_1(), |_| Ok(())).unwrap();
    Datastore::assemble(
        Arc::new(LocalBackend::new(root)),
        StoreOptions::default(),
        None,
        None,
    )
    .unwrap()
}
