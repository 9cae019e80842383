//! The on-store layout: where the marker, key objects and the other
//! top-level parts of a datastore live, and how a new one is laid out.
//!
//! ```text
//! standby-store.json      the format marker, written last at creation
//! packs/ manifests/       data (see `pack.rs`, `manifest.rs`)
//! templates/              named points (`template.rs`)
//! tmp/ locks/             local directories (see `lock.rs`)
//! keys/<id>.json          key objects of an encrypted store (`keys.rs`)
//! ```
//!
//! Shared by the datastore (open, create) and the key objects (an
//! encrypted store's key object is written before its marker).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::backend::{Backend, LocalBackend};

pub const MARKER_FILE: &str = "standby-store.json";
/// Format 2: authenticated manifests and pack indexes in every store
/// (`auth.rs`). Format 1 (standby 0.1): the same objects, without MACs
/// in an unencrypted store; read only after `standby store upgrade`
/// (`upgrade.rs`), an encrypted one as it is.
pub const FORMAT: u64 = 2;
pub const FORMAT_1: u64 = 1;
const KIND: &str = "standby-datastore";
/// The marker's `auth` in an authenticated unencrypted store (`auth.rs`).
pub const AUTH_NAME: &str = "blake3-keyed";
/// Where the key objects of an encrypted datastore live.
pub const KEYS_DIR: &str = "keys";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    format: u64,
    kind: String,
    #[serde(default)]
    created: Option<chrono::DateTime<chrono::Utc>>,
    /// "blake3", or "blake3-keyed" in an encrypted datastore.
    #[serde(default)]
    pub(crate) chunk_hash: Option<String>,
    /// "xchacha20poly1305" in an encrypted datastore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encryption: Option<String>,
    /// One-way check of the master keys (see `crypto::Crypto::key_check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_check: Option<String>,
    /// "blake3-keyed" in an unencrypted store of format 2: its manifests
    /// and pack indexes carry MACs under its store key (`auth.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth: Option<String>,
    /// One-way check of the store key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth_check: Option<String>,
}

impl Marker {
    pub(crate) fn new(chunk_hash: &str) -> Marker {
        Marker {
            format: FORMAT,
            kind: KIND.into(),
            created: Some(chrono::Utc::now()),
            chunk_hash: Some(chunk_hash.into()),
            encryption: None,
            key_check: None,
            auth: None,
            auth_check: None,
        }
    }

    /// The marker of a new unencrypted store authenticated with `auth`.
    /// `auth_check`: the store key's one-way check (`auth.rs`).
    pub(crate) fn plain(auth_check: &str) -> Marker {
        let mut m = Marker::new("blake3");
        m.auth = Some(AUTH_NAME.into());
        m.auth_check = Some(auth_check.into());
        m
    }

    /// The marker standby 0.1 wrote for a new unencrypted store.
    #[cfg(test)]
    pub(crate) fn format_1() -> Marker {
        Marker {
            format: FORMAT_1,
            ..Marker::new("blake3")
        }
    }

    pub(crate) fn format(&self) -> u64 {
        self.format
    }

    /// This marker as format 2 (the upgrade's last step).
    pub(crate) fn upgraded(mut self, auth_check: Option<&str>) -> Marker {
        self.format = FORMAT;
        if let Some(check) = auth_check {
            self.auth = Some(AUTH_NAME.into());
            self.auth_check = Some(check.into());
        }
        self
    }

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(self).map_err(|source| StoreError::Json {
            what: "datastore marker".into(),
            source,
        })
    }
}

pub(crate) fn create_dirs(root: &Path) -> Result<(), StoreError> {
    for dir in ["packs", "manifests", "templates", "tmp", "locks"] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| StoreError::io("create directory", &path, e))?;
    }
    Ok(())
}

/// Write `marker`; `AlreadyExists` when there is one.
fn write_marker(backend: &dyn Backend, marker: &Marker) -> Result<(), StoreError> {
    backend.put_new(MARKER_FILE, &marker.to_bytes()?)
}

/// Read and check the format marker.
pub(crate) fn read_marker(backend: &dyn Backend) -> Result<Marker, StoreError> {
    let root = backend.location();
    let not_a_store = || StoreError::NotADatastore {
        path: root.to_path_buf(),
    };
    let bytes = match backend.get(MARKER_FILE) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Err(not_a_store()),
        Err(e) => return Err(e),
    };
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|_| not_a_store())?;
    if marker.kind != KIND {
        return Err(not_a_store());
    }
    if marker.format != FORMAT && marker.format != FORMAT_1 {
        return Err(StoreError::UnsupportedFormat {
            path: root.to_path_buf(),
            format: marker.format,
            supported: FORMAT,
        });
    }
    Ok(marker)
}

/// Make the directories and marker of a new datastore at `root`, which
/// must be missing or empty; `before_marker` writes what must exist
/// before the marker makes the datastore visible (its key object). False
/// when another process created it meanwhile.
pub(crate) fn create_layout(
    root: &Path,
    marker: &Marker,
    before_marker: impl FnOnce(&dyn Backend) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    let empty = match std::fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(StoreError::io("read directory", root, e)),
    };
    if !empty {
        return Err(StoreError::NotADatastore {
            path: root.to_path_buf(),
        });
    }
    std::fs::create_dir_all(root).map_err(|e| StoreError::io("create datastore", root, e))?;
    create_dirs(root)?;
    put_marker(&LocalBackend::new(root), marker, before_marker)
}

/// [`create_layout`] on any backend: the location must hold no objects
/// (or a datastore already, which gives false). Local directories a
/// backend locks in are made too.
pub(crate) fn create_layout_on(
    backend: &dyn Backend,
    marker: &Marker,
    before_marker: impl FnOnce(&dyn Backend) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    if backend.exists(MARKER_FILE)? {
        return Ok(false);
    }
    if !backend.list("")?.is_empty() {
        return Err(StoreError::NotADatastore {
            path: backend.location().to_path_buf(),
        });
    }
    if let Some(root) = backend.lock_dir() {
        create_dirs(root)?;
    }
    put_marker(backend, marker, before_marker)
}

/// Write what must precede the marker, then the marker, create-only: of
/// concurrent creators the first marker written wins (false for the
/// others).
fn put_marker(
    backend: &dyn Backend,
    marker: &Marker,
    before_marker: impl FnOnce(&dyn Backend) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    before_marker(backend)?;
    match write_marker(backend, marker) {
        Ok(()) => Ok(true),
        // Created by someone else meanwhile.
        Err(StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The error of creating a datastore where one exists already.
pub(crate) fn already_exists(backend: &dyn Backend) -> StoreError {
    StoreError::io(
        "create datastore",
        backend.location().join(MARKER_FILE),
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    )
}
