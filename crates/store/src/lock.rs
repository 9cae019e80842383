//! Locking between point writers and garbage collection.
//!
//! `locks/gc.lock` is an advisory file lock (flock): every point writer,
//! sync, restore and verify holds it shared for its life, gc holds it exclusive. Before its
//! first delete (and again after the last), gc writes a new random
//! `locks/gc.epoch`; a process whose in-memory
//! catalog was built under another epoch reloads it before writing, so it
//! never reuses a chunk gc deleted.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::StoreError;

pub const LOCK_FILE: &str = "locks/gc.lock";
pub const EPOCH_FILE: &str = "locks/gc.epoch";

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn open(root: &Path) -> Result<File, StoreError> {
    let path = root.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))
}

/// Shared lock for a writer; waits while gc runs.
pub fn shared(root: &Path) -> Result<StoreLock, StoreError> {
    let file = open(root)?;
    fs4::fs_std::FileExt::lock_shared(&file)
        .map_err(|e| StoreError::io("lock", root.join(LOCK_FILE), e))?;
    Ok(StoreLock { _file: file })
}

/// Exclusive lock for gc; fails at once when writers hold the store.
pub fn exclusive(root: &Path) -> Result<StoreLock, StoreError> {
    let file = open(root)?;
    let locked = fs4::fs_std::FileExt::try_lock_exclusive(&file)
        .map_err(|e| StoreError::io("lock", root.join(LOCK_FILE), e))?;
    if !locked {
        return Err(StoreError::Locked(
            root.to_path_buf(),
            "running point writers or syncs",
        ));
    }
    Ok(StoreLock { _file: file })
}
