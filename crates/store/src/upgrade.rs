//! Upgrading a datastore of format 1 (standby 0.1) to format 2 in place.
//!
//! An unencrypted format-1 store has no MACs: every manifest and pack
//! index could have been planted by whoever could write to it. The
//! upgrade, holding the store like gc (no writer meanwhile):
//!
//! 1. reads the store key file, or makes it (mode 0600) when missing;
//! 2. checks each manifest (checksum, structure, its path, every disk
//!    index chunk readable and matching its hash) and rewrites it with
//!    its MAC; one that already has a valid MAC (an interrupted upgrade)
//!    is left as it is, one that fails a check is left unsigned and
//!    reported — from then on it is refused like a planted one;
//! 3. rewrites each pack index whose plain checksum holds with the
//!    keyed trailer (indexes already keyed are left; damaged ones are
//!    reported and stay doubtful, as they were);
//! 4. writes the marker of format 2 with the key's check, last.
//!
//! Each step is idempotent, so an upgrade killed anywhere is resumed by
//! running it again. An encrypted format-1 store is authenticated already
//! (sealed manifests, MAC'd indexes): its upgrade is the new marker only.
//! The upgrade trusts what the store holds when it runs: run it right
//! after installing the release, not on a store you have reason to
//! doubt.

use std::sync::Arc;

use serde::Serialize;

use crate::StoreError;
use crate::auth::StoreAuth;
use crate::backend::{Backend, LocalBackend};
use crate::datastore::{Datastore, StoreOptions, store_key_path};
use crate::keys::{self, KeySource};
use crate::layout::{FORMAT, MARKER_FILE, create_dirs, read_marker};
use crate::manifest::{Manifest, PointId};
use crate::pack::{self, PackId};

/// What an upgrade did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UpgradeReport {
    /// The store was of format 2 already: nothing was written.
    pub already_upgraded: bool,
    pub manifests_signed: usize,
    /// Manifests that carried a valid MAC already (a resumed upgrade).
    pub manifests_kept: usize,
    pub indexes_signed: usize,
    pub indexes_kept: usize,
    /// Objects left as they were, and why: refused from now on
    /// (manifests) or doubtful as before (indexes).
    pub skipped: Vec<(String, String)>,
    /// The store key file (unencrypted stores).
    pub store_key_file: Option<String>,
}

impl Datastore {
    /// Upgrade the local datastore at `root` (see the module).
    pub fn upgrade(
        root: &std::path::Path,
        key: Option<&KeySource>,
    ) -> Result<UpgradeReport, StoreError> {
        Self::upgrade_on(Arc::new(LocalBackend::new(root)), key)
    }

    /// Upgrade the datastore behind `backend`, with its key when it is
    /// encrypted.
    pub fn upgrade_on(
        backend: Arc<dyn Backend>,
        key: Option<&KeySource>,
    ) -> Result<UpgradeReport, StoreError> {
        let marker = read_marker(backend.as_ref())?;
        if let Some(root) = backend.lock_dir() {
            create_dirs(root)?;
        }
        let mut report = UpgradeReport::default();
        if marker.format() == FORMAT {
            // Opening checks the key too.
            let key_file = (marker.encryption.is_none())
                .then(|| store_key_path(backend.as_ref()))
                .transpose()?;
            Datastore::open_on_keyed(backend, StoreOptions::default(), key)?;
            report.already_upgraded = true;
            report.store_key_file = key_file.map(|p| p.display().to_string());
            return Ok(report);
        }
        let crypto = keys::unlock_marker(backend.as_ref(), &marker, key)?;
        let auth = match &crypto {
            Some(_) => None,
            None => {
                let path = store_key_path(backend.as_ref())?;
                report.store_key_file = Some(path.display().to_string());
                Some(StoreAuth::read_or_create(&path)?)
            }
        };
        let encrypted = crypto.is_some();
        // The old scheme: plain trailers, manifests without MACs.
        let old = Datastore::assemble(backend.clone(), StoreOptions::default(), crypto, None)?;
        let _lock = old.lock_exclusive()?;
        if let Some(auth) = &auth {
            old.sign_manifests(auth, &mut report)?;
            old.sign_indexes(auth, &mut report)?;
        }
        let upgraded = marker.upgraded(auth.as_ref().map(StoreAuth::check));
        backend.put(MARKER_FILE, &upgraded.to_bytes()?)?;
        tracing::info!(
            location = %backend.location().display(),
            encrypted,
            manifests = report.manifests_signed,
            indexes = report.indexes_signed,
            skipped = report.skipped.len(),
            "datastore upgraded to format 2"
        );
        Ok(report)
    }

    fn sign_manifests(
        &self,
        auth: &StoreAuth,
        report: &mut UpgradeReport,
    ) -> Result<(), StoreError> {
        for object in self.backend().list("manifests")? {
            if !object.path.ends_with(".json") {
                continue;
            }
            let path = object.path;
            let bytes = self.backend().get(&path)?;
            if Manifest::from_object(&path, &bytes, None, Some(auth)).is_ok() {
                report.manifests_kept += 1;
                continue;
            }
            match self.check_for_upgrade(&path, &bytes) {
                Ok(m) => {
                    self.backend().put(&path, &m.to_object(None, Some(auth))?)?;
                    report.manifests_signed += 1;
                }
                Err(reason) => {
                    tracing::warn!(manifest = %path, %reason, "manifest left unsigned");
                    report.skipped.push((format!("manifest {path}"), reason));
                }
            }
        }
        Ok(())
    }

    /// The manifest at `path` if it and the disk indexes it names check.
    fn check_for_upgrade(&self, path: &str, bytes: &[u8]) -> Result<Manifest, String> {
        let m = Manifest::from_bytes(bytes)?;
        if PointId::from_manifest_path(path).as_ref() != Some(&m.id) {
            return Err(format!("holds point {} at the wrong path", m.id));
        }
        for disk in &m.disks {
            self.read_disk_index(disk)
                .map_err(|e| format!("disk '{}': {}", disk.name, standby_types::error_chain(&e)))?;
        }
        Ok(m)
    }

    fn sign_indexes(&self, auth: &StoreAuth, report: &mut UpgradeReport) -> Result<(), StoreError> {
        for object in self.backend().list("packs")? {
            let Some((id, "idx")) = PackId::from_path(&object.path) else {
                continue;
            };
            let bytes = self.backend().get(&object.path)?;
            if pack::decode_index_keyed(&bytes, Some(auth.index_key())).is_ok_and(|i| i.checksum_ok)
            {
                report.indexes_kept += 1;
                continue;
            }
            match pack::decode_index(&bytes) {
                Ok(idx) if idx.checksum_ok && idx.pack == id => {
                    let signed =
                        pack::encode_index_keyed(&id, &idx.entries, Some(auth.index_key()));
                    self.backend().put(&object.path, &signed)?;
                    report.indexes_signed += 1;
                }
                Ok(idx) if idx.pack != id => report.skipped.push((
                    format!("index file {}", object.path),
                    format!("names another pack {}", idx.pack),
                )),
                Ok(_) => report.skipped.push((
                    format!("index file {}", object.path),
                    "checksum mismatch".into(),
                )),
                Err(reason) => report
                    .skipped
                    .push((format!("index file {}", object.path), reason)),
            }
        }
        Ok(())
    }
}
