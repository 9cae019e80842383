//! Authentication of an unencrypted datastore: the store key.
//!
//! Whoever can write to a datastore's bucket or directory must not be
//! able to plant a point that a failover would boot, or an index that
//! makes writers skip chunks. An encrypted datastore has that from its
//! master keys (sealed manifests, MAC'd pack indexes; `crypto.rs`). An
//! unencrypted one (format 2) has a **store key**: 32 random bytes kept
//! in a key file outside the store (the format of [`crate::generate_key_file`]),
//! on the host that opens it — by default `<root>.store-key` beside a
//! local store, `store_key_file` for an object store
//! ([`crate::backend::Backend::store_key_file`]). From it, with BLAKE3
//! `derive_key`:
//!
//! - the **manifest key** keys BLAKE3 over `"standby manifest mac v1\0"
//!   | object path | "\0" | canonical JSON of the manifest`, stored as
//!   the manifest's `"mac"` field (so a manifest moved to another
//!   point's path fails too);
//! - the **index key** keys the trailer of pack index files, as the MAC
//!   key does in an encrypted store.
//!
//! Disk index chunks and data chunks need no MAC of their own: they are
//! named by their BLAKE3 hash from an authenticated manifest, and every
//! read re-hashes them. The marker's `auth_check` (16 bytes of BLAKE3
//! keyed with the store key over a constant) tells a wrong key file at
//! open, and reveals nothing of the key.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::StoreError;
use crate::seal::KEY_LEN;

const MANIFEST_CONTEXT: &str = "standby 2026-12-06 store key to manifest MAC key";
const INDEX_CONTEXT: &str = "standby 2026-12-06 store key to pack index MAC key";
const CHECK_CONTEXT: &[u8] = b"standby datastore store key check v1";
const MANIFEST_MAC_PREFIX: &[u8] = b"standby manifest mac v1\0";

/// The keys derived from a store key.
pub(crate) struct StoreAuth {
    manifest: Zeroizing<[u8; KEY_LEN]>,
    index: Zeroizing<[u8; KEY_LEN]>,
    check: String,
}

impl fmt::Debug for StoreAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreAuth(<redacted>)")
    }
}

impl StoreAuth {
    pub(crate) fn from_key(key: &[u8; KEY_LEN]) -> StoreAuth {
        StoreAuth {
            manifest: Zeroizing::new(blake3::derive_key(MANIFEST_CONTEXT, key)),
            index: Zeroizing::new(blake3::derive_key(INDEX_CONTEXT, key)),
            check: hex::encode(&blake3::keyed_hash(key, CHECK_CONTEXT).as_bytes()[..16]),
        }
    }

    /// The store key in the key file at `path`.
    pub(crate) fn read(path: &Path) -> Result<StoreAuth, StoreError> {
        Ok(StoreAuth::from_key(&*crate::keys::read_key_file(path)?))
    }

    /// The store key at `path`, made (mode 0600) when there is none yet:
    /// at the creation or upgrade of a store only.
    pub(crate) fn read_or_create(path: &Path) -> Result<StoreAuth, StoreError> {
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::io("create the directory of store key", dir, e))?;
            }
            match crate::keys::generate_key_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "store key file created: keep a copy away from the datastore")
                }
                // Made by a concurrent creator: read theirs.
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        StoreAuth::read(path)
    }

    /// The marker's one-way check of the key.
    pub(crate) fn check(&self) -> &str {
        &self.check
    }

    /// The MAC key of pack index trailers.
    pub(crate) fn index_key(&self) -> &[u8; KEY_LEN] {
        &self.index
    }

    /// MAC of the manifest whose canonical JSON is `canonical`, at `path`.
    pub(crate) fn manifest_mac(&self, path: &str, canonical: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.manifest);
        h.update(MANIFEST_MAC_PREFIX);
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(canonical);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_purpose_and_debug_hides_them() {
        let a = StoreAuth::from_key(&[7; KEY_LEN]);
        let b = StoreAuth::from_key(&[8; KEY_LEN]);
        assert_ne!(*a.index, *a.manifest);
        assert_ne!(a.check(), b.check());
        assert_ne!(a.manifest_mac("p", b"x"), a.manifest_mac("q", b"x"));
        assert_ne!(a.manifest_mac("p", b"x"), b.manifest_mac("p", b"x"));
        assert!(!format!("{a:?}").contains(&hex::encode(*a.index)));
    }
}
