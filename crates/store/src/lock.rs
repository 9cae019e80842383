//! Locking between point writers and garbage collection.
//!
//! Every point writer, sync, restore and verify holds the store shared for
//! its life; gc holds it exclusive and fails at once when it cannot.
//!
//! - On a local directory ([`Backend::lock_dir`]) the lock is an advisory
//!   file lock (flock) on `locks/gc.lock`.
//! - On an object store, where there are no locks, it is a set of lease
//!   objects, each a small JSON `{"holder","kind","expires"}` (expiry in
//!   Unix milliseconds) renewed by its holder every third of its lifetime:
//!   a shared holder puts `locks/shared/<random>.lease`, gc creates
//!   `locks/gc.lease` with a create-only put (first writer wins). gc is
//!   refused while a fresh shared lease exists; a shared holder waits while
//!   a fresh gc lease exists, and checks again after putting its own lease,
//!   so of two racing parties at least one sees the other. Expired leases
//!   (the holder died) are ignored and deleted.
//!
//! Before its first delete (and again after the last), gc writes a new
//! random `locks/gc.epoch`; a process whose in-memory catalog was built
//! under another epoch reloads it before writing, so it never reuses a chunk
//! gc deleted.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::backend::Backend;

pub const LOCK_FILE: &str = "locks/gc.lock";
pub const EPOCH_FILE: &str = "locks/gc.epoch";
pub const GC_LEASE: &str = "locks/gc.lease";
pub const SHARED_LEASES: &str = "locks/shared";

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    File(#[allow(dead_code)] File),
    Lease(Lease),
}

impl StoreLock {
    /// An error if the lease was lost (it expired while its renewals
    /// failed, and someone removed it): what the holder did since may not
    /// be protected from gc.
    pub fn check(&self) -> Result<(), StoreError> {
        match &self.held {
            Held::File(_) => Ok(()),
            Held::Lease(lease) if lease.shared.lost.load(Ordering::Relaxed) => {
                Err(StoreError::Locked(
                    lease.backend.location().to_path_buf(),
                    "gc: our lease expired",
                ))
            }
            Held::Lease(_) => Ok(()),
        }
    }

    /// For a point writer about to commit: the lease is still ours, and
    /// is renewed now, so a gc checking before its next delete sees it.
    pub fn reassert(&self) -> Result<(), StoreError> {
        self.check()?;
        match &self.held {
            Held::File(_) => Ok(()),
            Held::Lease(lease) => lease.renew(),
        }
    }

    /// For gc, before each delete: its lease is still its own and fresh,
    /// and no writer holds the store (one may have started if the lease
    /// lapsed while gc stalled). An error stops gc before the delete.
    pub fn check_exclusive(&self) -> Result<(), StoreError> {
        let Held::Lease(lease) = &self.held else {
            return Ok(());
        };
        let location = lease.backend.location().to_path_buf();
        match read_lease(lease.backend.as_ref(), &lease.path)? {
            Some(r) if r.holder == lease.holder && r.fresh() => {}
            _ => {
                lease.shared.lost.store(true, Ordering::Relaxed);
                return Err(StoreError::Locked(
                    location,
                    "gc: its lease lapsed or was taken; it stopped before deleting",
                ));
            }
        }
        for o in lease.backend.list(SHARED_LEASES)? {
            if read_lease(lease.backend.as_ref(), &o.path)?.is_some_and(|l| l.fresh()) {
                return Err(StoreError::Locked(
                    location,
                    "running point writers or syncs (they started while gc's lease lapsed); gc stopped before deleting",
                ));
            }
        }
        Ok(())
    }
}

fn open(root: &Path) -> Result<File, StoreError> {
    let path = root.join(LOCK_FILE);
    // `locks/` is made with the store and at every open: missing, the
    // store vanished (an unmounted disk), and nothing is made in its place.
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        return Err(StoreError::io(
            "lock",
            root,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing: the datastore vanished (an unmounted disk?)",
                    dir.display()
                ),
            ),
        ));
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))
}

/// Shared lock for a writer; waits while gc runs.
pub fn shared(backend: &Arc<dyn Backend>) -> Result<StoreLock, StoreError> {
    if let Some(root) = backend.lock_dir() {
        let file = open(root)?;
        fs4::fs_std::FileExt::lock_shared(&file)
            .map_err(|e| StoreError::io("lock", root.join(LOCK_FILE), e))?;
        return Ok(StoreLock {
            held: Held::File(file),
        });
    }
    let mut waited = false;
    loop {
        if let Some(gc) = read_lease(backend.as_ref(), GC_LEASE)? {
            if gc.fresh() {
                if !waited {
                    tracing::info!(store = %backend.location().display(), "waiting for gc to finish");
                    waited = true;
                }
                std::thread::sleep(poll_interval(backend.as_ref()));
                continue;
            }
            tracing::warn!(holder = %gc.holder, "expired gc lease removed");
            backend.delete(GC_LEASE)?;
        }
        let path = format!("{SHARED_LEASES}/{:032x}.lease", rand::random::<u128>());
        let lease = Lease::take(backend.clone(), path, "shared", false)?;
        match read_lease(backend.as_ref(), GC_LEASE)? {
            // gc started meanwhile and may not have seen us: let it run.
            Some(gc) if gc.fresh() => drop(lease),
            _ => {
                return Ok(StoreLock {
                    held: Held::Lease(lease),
                });
            }
        }
    }
}

/// Exclusive lock for gc; fails at once when writers hold the store.
pub fn exclusive(backend: &Arc<dyn Backend>) -> Result<StoreLock, StoreError> {
    let location = backend.location().to_path_buf();
    if let Some(root) = backend.lock_dir() {
        let file = open(root)?;
        let locked = fs4::fs_std::FileExt::try_lock_exclusive(&file)
            .map_err(|e| StoreError::io("lock", root.join(LOCK_FILE), e))?;
        if !locked {
            return Err(StoreError::Locked(
                root.to_path_buf(),
                "running point writers or syncs",
            ));
        }
        return Ok(StoreLock {
            held: Held::File(file),
        });
    }
    let lease = match Lease::take(backend.clone(), GC_LEASE.to_string(), "gc", true) {
        Ok(lease) => lease,
        Err(e) if is_exists(&e) => {
            match read_lease(backend.as_ref(), GC_LEASE)? {
                Some(gc) if gc.fresh() => {
                    return Err(StoreError::Locked(location, "another gc"));
                }
                _ => {
                    tracing::warn!("expired gc lease removed");
                    backend.delete(GC_LEASE)?;
                }
            }
            Lease::take(backend.clone(), GC_LEASE.to_string(), "gc", true).map_err(|e| {
                if is_exists(&e) {
                    StoreError::Locked(location.clone(), "another gc")
                } else {
                    e
                }
            })?
        }
        Err(e) => return Err(e),
    };
    let mut busy = false;
    for o in backend.list(SHARED_LEASES)? {
        match read_lease(backend.as_ref(), &o.path)? {
            Some(l) if l.fresh() => busy = true,
            Some(l) => {
                tracing::warn!(holder = %l.holder, path = %o.path, "expired lease removed");
                backend.delete(&o.path)?;
            }
            None => {}
        }
    }
    if busy {
        drop(lease);
        return Err(StoreError::Locked(
            location,
            "running point writers or syncs",
        ));
    }
    Ok(StoreLock {
        held: Held::Lease(lease),
    })
}

fn is_exists(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
}

fn poll_interval(backend: &dyn Backend) -> Duration {
    (backend.lease_duration() / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub kind: String,
    /// Unix time in milliseconds after which the lease is void.
    pub expires: u64,
}

impl LeaseRecord {
    pub fn fresh(&self) -> bool {
        self.expires > now_ms()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The lease at `path`; none when missing. An unreadable lease counts as
/// expired (someone crashed writing it? puts are atomic, so a stranger's).
fn read_lease(backend: &dyn Backend, path: &str) -> Result<Option<LeaseRecord>, StoreError> {
    match backend.get(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or(
            LeaseRecord {
                holder: "unreadable".into(),
                kind: String::new(),
                expires: 0,
            },
        ))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Default)]
struct LeaseShared {
    stop: Mutex<bool>,
    wake: Condvar,
    lost: AtomicBool,
}

/// A lease object renewed by a thread until dropped, then deleted.
#[derive(Debug)]
struct Lease {
    backend: Arc<dyn Backend>,
    path: String,
    holder: String,
    kind: String,
    ttl: Duration,
    shared: Arc<LeaseShared>,
    renewer: Option<JoinHandle<()>>,
}

impl Lease {
    fn take(
        backend: Arc<dyn Backend>,
        path: String,
        kind: &str,
        create: bool,
    ) -> Result<Lease, StoreError> {
        let ttl = backend.lease_duration();
        let holder = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let kind = kind.to_string();
        let (lease_holder, lease_kind) = (holder.clone(), kind.clone());
        let record = move || LeaseRecord {
            holder: holder.clone(),
            kind: kind.clone(),
            expires: now_ms() + ttl.as_millis() as u64,
        };
        let bytes = |r: LeaseRecord| serde_json::to_vec(&r).unwrap_or_default();
        if create {
            backend.put_new(&path, &bytes(record()))?;
        } else {
            backend.put(&path, &bytes(record()))?;
        }
        let shared = Arc::new(LeaseShared::default());
        let renewer = {
            let (backend, path, shared) = (backend.clone(), path.clone(), shared.clone());
            std::thread::Builder::new()
                .name("standby-lease".into())
                .spawn(move || {
                    let mut stop = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        stop = shared
                            .wake
                            .wait_timeout(stop, ttl / 3)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        if *stop {
                            return;
                        }
                        // Still ours? gc removes a lease that expired.
                        match backend.exists(&path) {
                            Ok(false) => {
                                tracing::error!(%path, "lease lost");
                                shared.lost.store(true, Ordering::Relaxed);
                            }
                            Ok(true) => {}
                            Err(e) => tracing::warn!(%path, error = %e, "lease check failed"),
                        }
                        if let Err(e) = backend.put(&path, &bytes(record())) {
                            tracing::warn!(%path, error = %e, "lease renewal failed");
                        }
                    }
                })
                .ok()
        };
        Ok(Lease {
            backend,
            path,
            holder: lease_holder,
            kind: lease_kind,
            ttl,
            shared,
            renewer,
        })
    }

    /// Write the lease again now, fresh for another lifetime.
    fn renew(&self) -> Result<(), StoreError> {
        let record = LeaseRecord {
            holder: self.holder.clone(),
            kind: self.kind.clone(),
            expires: now_ms() + self.ttl.as_millis() as u64,
        };
        self.backend
            .put(&self.path, &serde_json::to_vec(&record).unwrap_or_default())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if let Err(e) = self.backend.delete(&self.path) {
            tracing::warn!(path = %self.path, error = %e, "lease not removed; it expires");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}
