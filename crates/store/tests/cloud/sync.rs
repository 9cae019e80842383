//! Sync between a local store and an object store, interrupted and
//! resumed.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use standby_store::backend::{Backend, ObjectMeta};
use standby_store::{CountingProgress, Datastore, ObjectBackend, ObjectStats, PackId, StoreError};

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

/// A local store holding one point of a 64 MiB mostly random image
/// (several 16 MiB packs).
struct Source {
    dir: tempfile::TempDir,
    ds: Datastore,
    image: std::path::PathBuf,
    point: standby_store::Manifest,
}

fn source(seed: u64) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 64 << 20, seed, 0.9);
    let ds = Datastore::open_or_create_with(&dir.path().join("local"), small_packs()).unwrap();
    let point = backup(&ds, "vm1", &image);
    Source {
        dir,
        ds,
        image,
        point,
    }
}

fn restore_same(ds: &Datastore, src: &Source, name: &str) {
    let out = src.dir.path().join(name);
    ds.restore_disk(&src.point.id, "data", &out, &()).unwrap();
    assert_same(&src.image, &out);
}

fn both_ways(kind: Kind) {
    let server = Server::start(kind);
    let src = source(11);
    let (cloud, backend) = open(&config(&server, "dr"));
    let progress = CountingProgress::default();
    let stats = src.ds.sync_point(&src.point.id, &cloud, &progress).unwrap();
    assert!(stats.chunks_copied > 500, "{stats:?}");
    assert_eq!(
        progress.done.load(Ordering::Relaxed),
        progress.total.load(Ordering::Relaxed)
    );
    assert_eq!(progress.total.load(Ordering::Relaxed), 64 << 20);
    let up = backend.stats();
    assert!(up.bytes_up >= stats.bytes_copied, "{up:?} {stats:?}");
    // Packs are whole objects: a handful of puts, not one per chunk.
    assert!(up.requests < 60, "{up:?}");
    assert!(cloud.verify(&()).unwrap().ok());
    restore_same(&cloud, &src, "from-cloud.img");

    // Again: nothing to do.
    assert!(
        src.ds
            .sync_point(&src.point.id, &cloud, &())
            .unwrap()
            .already_present
    );

    // Cloud to a fresh local store, reading ranged batches.
    let before = backend.stats();
    let local2 = Datastore::open_or_create(&src.dir.path().join("local2")).unwrap();
    let back = cloud.sync_point(&src.point.id, &local2, &()).unwrap();
    assert_eq!(back.chunks_copied, stats.chunks_copied);
    let down = backend.stats();
    assert!(
        down.requests - before.requests < back.chunks_copied / 8,
        "{down:?} for {} chunks",
        back.chunks_copied
    );
    restore_same(&local2, &src, "from-local2.img");
}

#[test]
fn azure_sync_both_ways() {
    both_ways(Kind::Azurite);
}

#[test]
fn s3_sync_both_ways() {
    both_ways(Kind::Moto);
}

/// Fails every put of a pack after the first `packs` ones, like a process
/// killed mid-sync: what was uploaded stays.
#[derive(Debug)]
struct DiesAfter {
    inner: Arc<ObjectBackend>,
    packs: AtomicI64,
}

impl Backend for DiesAfter {
    fn location(&self) -> &Path {
        self.inner.location()
    }
    fn put(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        if path.ends_with(".pack") && self.packs.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(StoreError::Locked(self.location().into(), "test: killed"));
        }
        self.inner.put(path, data)
    }
    fn put_new(&self, path: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put_new(path, data)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(path, offset, len)
    }
    fn get_ranges(&self, path: &str, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.get_ranges(path, ranges)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.inner.delete(path)
    }
    fn exists(&self, path: &str) -> Result<bool, StoreError> {
        self.inner.exists(path)
    }
    fn lease_duration(&self) -> Duration {
        self.inner.lease_duration()
    }
    fn store_key_file(&self) -> Option<std::path::PathBuf> {
        self.inner.store_key_file()
    }
    fn object_stats(&self) -> Option<ObjectStats> {
        Some(self.inner.stats())
    }
}

/// Packs with an index in the store, and the bytes of pack and index.
fn finished_packs(b: &dyn Backend) -> (HashSet<PackId>, u64) {
    let list = b.list("packs").unwrap();
    let indexed: HashSet<PackId> = list
        .iter()
        .filter_map(|o| match PackId::from_path(&o.path) {
            Some((id, "idx")) => Some(id),
            _ => None,
        })
        .collect();
    let bytes = list
        .iter()
        .filter(|o| PackId::from_path(&o.path).is_some_and(|(id, _)| indexed.contains(&id)))
        .map(|o| o.size)
        .sum();
    (indexed, bytes)
}

/// After an interrupted sync, the next one uploads only what the first
/// did not finish.
fn assert_resumed(
    cloud: &Datastore,
    backend: &ObjectBackend,
    src: &Source,
    done: (HashSet<PackId>, u64),
) {
    assert!(!done.0.is_empty(), "the first sync finished no pack");
    let before = backend.stats();
    let stats = src.ds.sync_point(&src.point.id, cloud, &()).unwrap();
    assert!(stats.chunks_skipped > 0, "{stats:?}");
    let up = backend.stats().bytes_up - before.bytes_up;
    let (all, all_bytes) = finished_packs(backend);
    assert!(done.0.is_subset(&all));
    let new_bytes = all_bytes - done.1;
    // Only the new packs, their indexes, the manifest and leases.
    assert!(
        up <= new_bytes + (256 << 10),
        "uploaded {up} bytes, new packs hold {new_bytes}, finished before {}",
        done.1
    );
    assert!(cloud.verify(&()).unwrap().ok());
    restore_same(cloud, src, "resumed.img");
}

fn interrupted_resumes(kind: Kind) {
    let server = Server::start(kind);
    let src = source(21);
    let cfg = config(&server, "");
    let (_, backend) = open(&cfg);
    let dying = Arc::new(DiesAfter {
        inner: backend.clone(),
        packs: AtomicI64::new(2),
    });
    let cloud = Datastore::open_on(dying, small_packs()).unwrap();
    let e = src.ds.sync_point(&src.point.id, &cloud, &()).unwrap_err();
    assert!(chain(&e).contains("test: killed"), "{e}");
    assert!(!cloud.has_point(&src.point.id).unwrap());
    drop(cloud);
    let done = finished_packs(backend.as_ref());
    let (cloud, backend) = open(&cfg);
    assert!(cloud.list_points().unwrap().is_empty());
    assert_resumed(&cloud, &backend, &src, done);
}

#[test]
fn azure_interrupted_sync_resumes() {
    interrupted_resumes(Kind::Azurite);
}

#[test]
fn s3_interrupted_sync_resumes() {
    interrupted_resumes(Kind::Moto);
}

/// Azurite killed mid-sync: a clear error saying retrying can help; after
/// a restart (its data kept) the sync resumes.
#[test]
fn azure_server_killed_mid_sync_resumes() {
    let mut server = Server::start(Kind::Azurite);
    let src = source(31);
    let cfg = config(&server, "dr");
    let (cloud, backend) = open(&cfg);
    let started = Instant::now();
    let e = std::thread::scope(|s| {
        let sync = s.spawn(|| src.ds.sync_point(&src.point.id, &cloud, &()));
        // Kill once the first pack is in.
        while finished_packs(backend.as_ref()).0.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no pack uploaded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        sync.join().unwrap().unwrap_err()
    });
    assert!(e.is_temporary(), "{}", chain(&e));
    assert!(
        chain(&e).contains("retrying later can help"),
        "{}",
        chain(&e)
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "retries are bounded"
    );
    drop(cloud);
    server.restart();
    let (cloud, backend) = open(&cfg);
    let done = finished_packs(backend.as_ref());
    assert!(cloud.list_points().unwrap().is_empty());
    assert_resumed(&cloud, &backend, &src, done);
}

/// A sync and gc on the same cloud store, at once, many times: every
/// synced point stays whole.
fn gc_during_sync(kind: Kind) {
    let server = Server::start(kind);
    let cfg = config(&server, "");
    let (cloud, _) = open(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let local = Datastore::open_or_create_with(&dir.path().join("l"), small_packs()).unwrap();
    let mut points = Vec::new();
    for seed in 0..3u64 {
        let image = dir.path().join(format!("{seed}.img"));
        make_image(&image, 24 << 20, 100 + seed, 0.6);
        points.push((backup(&local, "vm1", &image), image));
    }
    let gc_opts = standby_store::GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let (runs, refused) = std::thread::scope(|s| {
        let syncer = s.spawn(|| {
            for (m, _) in &points {
                local.sync_point(&m.id, &cloud, &()).unwrap();
            }
        });
        let (mut runs, mut refused) = (0, 0);
        let (gc_cloud, _) = open(&cfg);
        while !syncer.is_finished() {
            match gc_cloud.gc(gc_opts, &()) {
                Ok(_) => runs += 1,
                Err(e @ StoreError::Locked(..)) => {
                    assert!(e.is_temporary());
                    refused += 1;
                }
                Err(e) => panic!("gc: {}", chain(&e)),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        syncer.join().unwrap();
        (runs, refused)
    });
    assert!(
        refused > 0,
        "gc was never refused during sync ({runs} runs)"
    );
    let (fresh, _) = open(&cfg);
    fresh.gc(gc_opts, &()).unwrap();
    assert!(fresh.verify(&()).unwrap().ok());
    for (m, image) in &points {
        let out = dir.path().join("out.img");
        fresh.restore_disk(&m.id, "data", &out, &()).unwrap();
        assert_same(image, &out);
    }
}

#[test]
fn azure_gc_during_sync_is_safe() {
    gc_during_sync(Kind::Azurite);
}

#[test]
fn s3_gc_during_sync_is_safe() {
    gc_during_sync(Kind::Moto);
}
