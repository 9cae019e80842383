//! Where the bytes live.
//!
//! All file I/O of the datastore goes through [`Backend`]: whole-object
//! writes that are atomic and durable, ranged reads, listing and delete.
//! That is the seam an object-store backend (Azure Blob, S3 through the
//! `object_store` crate) plugs into; [`LocalBackend`] is the filesystem one.
//! Paths are relative, '/'-separated object names such as
//! `packs/ab/ab12....pack`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::StoreError;

/// Requests made and bytes moved by a backend (an object store counts them),
/// for the figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObjectStats {
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One object found by [`Backend::list`].
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub path: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Storage operations the datastore needs, nothing more.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the store lives, for messages.
    fn location(&self) -> &Path;
    /// Write a whole object atomically and durably, replacing any old one.
    fn put(&self, path: &str, data: &[u8]) -> Result<(), StoreError>;
    /// Like [`Backend::put`] but fails with [`io::ErrorKind::AlreadyExists`]
    /// when the object exists.
    fn put_new(&self, path: &str, data: &[u8]) -> Result<(), StoreError>;
    fn get(&self, path: &str) -> Result<Vec<u8>, StoreError>;
    /// Read `len` bytes at `offset`; a short object is an error.
    fn get_range(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;
    /// Several ranges of one object, in order; an object store fetches
    /// neighbouring ranges in one request and the others in parallel.
    fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, StoreError> {
        ranges
            .iter()
            .map(|r| self.get_range(path, r.start, (r.end - r.start) as usize))
            .collect()
    }
    /// Every object under `prefix` (recursive); a missing prefix is empty.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Delete an object; deleting a missing object is not an error.
    fn delete(&self, path: &str) -> Result<(), StoreError>;
    fn exists(&self, path: &str) -> Result<bool, StoreError>;
    /// A local directory where advisory file locks work (see `lock`);
    /// `None` for object stores, which are locked with lease objects.
    fn lock_dir(&self) -> Option<&Path> {
        None
    }
    /// How long a lease object lives unless renewed.
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(60)
    }
    /// Requests and bytes moved, for backends that count them.
    fn object_stats(&self) -> Option<ObjectStats> {
        None
    }
    /// Where the store key of an unencrypted datastore here is kept (see
    /// `auth.rs`): outside the store, on the host that opens it. `None`
    /// when nobody said (an object store without `store_key_file`).
    fn store_key_file(&self) -> Option<PathBuf> {
        None
    }
}

/// Files in a directory on a local filesystem.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// The store key file; by default `<root>.store-key` beside the store.
    key_file: Option<PathBuf>,
    /// Open read handles, so ranged reads do not reopen a pack per chunk.
    handles: Mutex<HashMap<String, Arc<File>>>,
}

const MAX_HANDLES: usize = 256;

impl LocalBackend {
    pub fn new(root: &Path) -> Self {
        LocalBackend {
            root: root.to_path_buf(),
            key_file: None,
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// Keep the store key in `path` instead of beside the store.
    pub fn with_store_key_file(mut self, path: Option<PathBuf>) -> Self {
        self.key_file = path;
        self
    }

    /// The default store key file of a local datastore at `root`:
    /// `<root>.store-key`, beside it (so on the filesystem that holds
    /// the mount point, not on the datastore's own disk).
    pub fn default_store_key_file(root: &Path) -> PathBuf {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "datastore".into());
        root.with_file_name(format!("{name}.store-key"))
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn handle(&self, path: &str) -> Result<Arc<File>, StoreError> {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = handles.get(path) {
            return Ok(file.clone());
        }
        let full = self.full(path);
        let file = Arc::new(File::open(&full).map_err(|e| StoreError::io("open", &full, e))?);
        if handles.len() >= MAX_HANDLES {
            handles.clear();
        }
        handles.insert(path.to_string(), file.clone());
        Ok(file)
    }

    fn forget_handle(&self, path: &str) {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.remove(path);
    }

    /// Check that the datastore is still there before writing into it: its
    /// root with `tmp/`, and the top directory of `path` (`packs`,
    /// `manifests`, ...). A datastore whose disk was unmounted leaves an
    /// empty mount point: writing there would silently start a new,
    /// empty store on the wrong disk. Only `keys/` (written at creation,
    /// before the marker) is made when missing.
    fn check_present(&self, path: &str) -> Result<(), StoreError> {
        let vanished = |dir: &Path| {
            StoreError::io(
                "write into datastore",
                &self.root,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} is missing: the datastore vanished (an unmounted disk?); it is never recreated by a write",
                        dir.display()
                    ),
                ),
            )
        };
        let tmp = self.root.join("tmp");
        if !tmp.is_dir() {
            return Err(vanished(&tmp));
        }
        if let Some((top, _)) = path.split_once('/')
            // The key objects' directory (`layout::KEYS_DIR`).
            && top != "keys"
        {
            let top = self.root.join(top);
            if !top.is_dir() {
                return Err(vanished(&top));
            }
        }
        Ok(())
    }

    /// Make the directories between the top directory and `path`'s
    /// parent, fsyncing each one's parent after creating it, so a new
    /// pack or manifest directory survives a crash with its entry.
    fn make_parents(&self, path: &str) -> Result<(), StoreError> {
        let mut dir = self.root.clone();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            let parent = dir.clone();
            dir.push(part);
            match fs::create_dir(&dir) {
                Ok(()) => sync_dir(&parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("create directory", &dir, e)),
            }
        }
        Ok(())
    }

    /// Write `data` to a fresh temporary file next to nothing visible,
    /// fsync it and return its path.
    fn write_tmp(&self, path: &str, data: &[u8]) -> Result<PathBuf, StoreError> {
        self.check_present(path)?;
        self.make_parents(path)?;
        let tmp_dir = self.root.join("tmp");
        let name = format!(
            "{}.{:016x}.tmp",
            path.replace('/', "_"),
            rand::random::<u64>()
        );
        let tmp = tmp_dir.join(name);
        let result = (|| {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let done = write_direct(&tmp, data)?;
            file.write_all_at(&data[done..], done as u64)?;
            file.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp, e));
        }
        Ok(tmp)
    }
}

/// Objects at least this large are written with direct I/O.
const DIRECT_MIN: usize = 1 << 20;
/// Alignment of buffers, offsets and lengths for direct I/O.
const DIRECT_ALIGN: usize = 4096;

/// Write the leading aligned part of a large `data` to the new file `path`
/// with direct I/O, when `data` is aligned in memory and the filesystem
/// allows it: the bytes go to the disk without being copied into (fresh)
/// page cache, and the fsync that follows has little left to do. Returns
/// how many bytes were written (0 when direct I/O was not used).
fn write_direct(path: &Path, data: &[u8]) -> io::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if data.len() < DIRECT_MIN || data.as_ptr().align_offset(DIRECT_ALIGN) != 0 {
        return Ok(0);
    }
    let Ok(direct) = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
    else {
        return Ok(0);
    };
    match direct.write_all_at(&data[..aligned], 0) {
        Ok(()) => Ok(aligned),
        // Refused after all (alignment the device does not accept): the
        // caller writes it all buffered; nothing partial is a problem, as
        // it writes from offset 0 again.
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(0),
        Err(e) => Err(e),
    }
}

/// fsync a directory, so the entries made or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(test)]
    synced::record(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

/// Test-only record of the directories this thread fsynced.
#[cfg(test)]
pub(crate) mod synced {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static DIRS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub fn record(dir: &Path) {
        DIRS.with(|d| d.borrow_mut().push(dir.to_path_buf()));
    }

    /// The directories synced since the last call.
    pub fn take() -> Vec<PathBuf> {
        DIRS.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> &Path {
        &self.root
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.write_tmp(path, data)?;
        let full = self.full(path);
        if let Err(e) = fs::rename(&tmp, &full) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("rename into place", &full, e));
        }
        self.forget_handle(path);
        sync_dir(full.parent().unwrap_or(&self.root))
    }

    fn put_new(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.write_tmp(path, data)?;
        let full = self.full(path);
        // A hard link never replaces an existing file, unlike rename.
        let linked = fs::hard_link(&tmp, &full);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| StoreError::io("create", &full, e))?;
        sync_dir(full.parent().unwrap_or(&self.root))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        let full = self.full(path);
        fs::read(&full).map_err(|e| StoreError::io("read", &full, e))
    }

    fn get_range(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let file = self.handle(path)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| {
            let e = if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at offset {offset} are past the end of the file"),
                )
            } else {
                e
            };
            StoreError::io("read", self.full(path), e)
        })?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![prefix.trim_end_matches('/').to_string()];
        while let Some(rel) = stack.pop() {
            let dir = self.full(&rel);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted while listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("stat", entry.path(), e)),
                };
                if meta.is_dir() {
                    stack.push(child);
                } else {
                    out.push(ObjectMeta {
                        path: child,
                        size: meta.len(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.forget_handle(path);
        let full = self.full(path);
        match fs::remove_file(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("delete", &full, e)),
        }
        sync_dir(full.parent().unwrap_or(&self.root))
    }

    fn exists(&self, path: &str) -> Result<bool, StoreError> {
        let full = self.full(path);
        full.try_exists()
            .map_err(|e| StoreError::io("stat", &full, e))
    }

    fn lock_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn store_key_file(&self) -> Option<PathBuf> {
        Some(
            self.key_file
                .clone()
                .unwrap_or_else(|| LocalBackend::default_store_key_file(&self.root)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a datastore's (what `layout` makes).
    fn store_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        crate::layout::create_dirs(dir.path()).unwrap();
        dir
    }

    #[test]
    fn put_get_range_list_delete() {
        let dir = store_dir();
        let b = LocalBackend::new(dir.path());
        b.put("packs/ab/x.pack", b"hello world").unwrap();
        assert_eq!(b.get("packs/ab/x.pack").unwrap(), b"hello world");
        assert_eq!(b.get_range("packs/ab/x.pack", 6, 5).unwrap(), b"world");
        assert!(b.get_range("packs/ab/x.pack", 6, 50).is_err());
        let list = b.list("packs").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].path, "packs/ab/x.pack");
        assert_eq!(list[0].size, 11);
        let e = b.put_new("packs/ab/x.pack", b"other").unwrap_err();
        assert!(e.to_string().contains("x.pack"), "{e}");
        assert_eq!(b.get("packs/ab/x.pack").unwrap(), b"hello world");
        b.delete("packs/ab/x.pack").unwrap();
        b.delete("packs/ab/x.pack").unwrap();
        assert!(!b.exists("packs/ab/x.pack").unwrap());
        assert!(b.list("nothing").unwrap().is_empty());
        // No temporary files are left behind.
        assert!(b.list("tmp").unwrap().is_empty());
    }

    #[test]
    fn hardening_a_vanished_datastore_is_not_recreated_by_a_write() {
        let dir = store_dir();
        let b = LocalBackend::new(dir.path());
        b.put("packs/ab/x.pack", b"data").unwrap();
        // The disk is unmounted: what remains is an empty mount point.
        for sub in ["packs", "manifests", "templates", "tmp", "locks"] {
            std::fs::remove_dir_all(dir.path().join(sub)).unwrap();
        }
        for path in ["packs/cd/y.pack", "manifests/vm/t.json"] {
            let e = standby_types::error_chain(&b.put(path, b"data").unwrap_err());
            assert!(
                e.contains("vanished") && e.contains("never recreated"),
                "{e}"
            );
            let e = standby_types::error_chain(&b.put_new(path, b"data").unwrap_err());
            assert!(e.contains("vanished"), "{e}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Even with tmp/ present, a missing packs/ is not made either.
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let e = standby_types::error_chain(&b.put("packs/cd/y.pack", b"data").unwrap_err());
        assert!(e.contains("packs") && e.contains("vanished"), "{e}");
        assert!(!dir.path().join("packs").exists());
    }

    #[test]
    fn hardening_new_pack_and_manifest_directories_are_fsynced() {
        let dir = store_dir();
        let b = LocalBackend::new(dir.path());
        synced::take();
        b.put_new("manifests/vm1/t1.json", b"{}").unwrap();
        let synced = synced::take();
        // The new directory's entry in manifests/, then the file's in it.
        assert_eq!(
            synced,
            vec![
                dir.path().join("manifests"),
                dir.path().join("manifests/vm1")
            ]
        );
        b.put("packs/ab/x.pack", b"p").unwrap();
        assert_eq!(
            synced::take(),
            vec![dir.path().join("packs"), dir.path().join("packs/ab")]
        );
        // An existing directory is not synced again, only the new entry.
        b.put("packs/ab/y.pack", b"p").unwrap();
        assert_eq!(synced::take(), vec![dir.path().join("packs/ab")]);
    }
}
