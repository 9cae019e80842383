//! Behaviour tests of the whole datastore.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use crate::*;

const CS: u32 = 64 << 10;

/// An image mixing zero, compressible and random 64 KiB regions
/// (40 % / 35 % / 25 %), with a partial last chunk when `size` asks.
fn make_image(path: &Path, size: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; CS as usize];
    let mut off = 0u64;
    let mut n = 0u64;
    while off < size {
        let len = (size - off).min(u64::from(CS)) as usize;
        match n % 20 {
            0..8 => buf.fill(0),
            8..15 => {
                let line = format!("chunk {n} seed {seed} of a compressible standby test image\n");
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            }
            _ => rng.fill_bytes(&mut buf),
        }
        f.write_all(&buf[..len]).unwrap();
        off += len as u64;
        n += 1;
    }
}

fn meta(vm: &str) -> PointMeta {
    PointMeta {
        vm: vm.into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::json!({"cpus": 2}),
        labels: BTreeMap::from([("tier".into(), "gold".into())]),
    }
}

fn opts() -> DiskWriteOptions {
    DiskWriteOptions::default()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    ds: Datastore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let ds = Datastore::open_or_create(&root).unwrap();
    Fixture {
        _dir: dir,
        root,
        work,
        ds,
    }
}

/// One point of `vm` with one disk `data` made from `image`.
fn backup(
    ds: &Datastore,
    vm: &str,
    image: &Path,
    o: DiskWriteOptions,
) -> (Manifest, DiskWriteStats) {
    let mut w = ds.begin_point(meta(vm)).unwrap();
    let stats = w.write_disk("data", image, o, &()).unwrap();
    (w.commit().unwrap(), stats)
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "sizes differ");
    assert!(x == y, "contents differ");
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn flip(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, offset).unwrap();
}

/// The first non-zero data chunk of a point's disk and its location.
fn some_chunk(ds: &Datastore, m: &Manifest) -> (ChunkId, catalog::Location) {
    let ids = ds.read_disk_index(&m.disks[0]).unwrap();
    let id = *ids.iter().find(|i| !i.is_zero()).unwrap();
    (id, ds.catalog().get(&id).unwrap())
}

fn pack_file(root: &Path, pack: &PackId) -> PathBuf {
    root.join(pack.pack_path())
}

#[test]
fn open_requires_a_datastore() {
    let dir = tempfile::tempdir().unwrap();
    let e = Datastore::open(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    assert!(matches!(e, StoreError::NotADatastore { .. }));
    fs::write(dir.path().join("other"), b"x").unwrap();
    assert!(
        Datastore::open_or_create(dir.path()).is_err(),
        "never takes over a used directory"
    );
    let root = dir.path().join("new");
    let ds = Datastore::open_or_create(&root).unwrap();
    assert_eq!(ds.root(), root);
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("standby-store.json")).unwrap()).unwrap();
    assert_eq!(marker["format"], 1);
    assert_eq!(marker["kind"], "standby-datastore");
    Datastore::open(&root).unwrap();
    Datastore::open_or_create(&root).unwrap();
}

#[test]
fn write_and_restore_round_trip_sparse() {
    let f = fixture();
    let image = f.work.join("disk.img");
    let size = 8 * 1024 * 1024 + 12345;
    make_image(&image, size, 1);
    let progress = CountingProgress::default();
    let mut w = f.ds.begin_point(meta("pbx1")).unwrap();
    let id = w.id().clone();
    assert!(id.to_string().starts_with("pbx1@"));
    let stats = w.write_disk("data", &image, opts(), &progress).unwrap();
    let m = w.commit().unwrap();
    assert_eq!(stats.size, size);
    assert_eq!(stats.bytes_read, size);
    assert_eq!(stats.chunks, size.div_ceil(u64::from(CS)));
    assert_eq!(
        stats.chunks,
        stats.chunks_new + stats.chunks_zero + stats.chunks_reused
    );
    assert!(stats.chunks_zero >= stats.chunks * 35 / 100, "{stats:?}");
    assert!(
        stats.bytes_new_stored < size * 45 / 100,
        "compressed: {stats:?}"
    );
    assert_eq!(
        progress.done.load(std::sync::atomic::Ordering::Relaxed),
        size
    );
    assert_eq!(m.id, id);
    assert_eq!(m.disks[0].size, size);
    assert_eq!(f.ds.load_manifest(&id).unwrap(), m);
    assert!(f.ds.has_point(&id).unwrap());
    assert_eq!(f.ds.latest_point("pbx1").unwrap().unwrap().id, id);
    assert!(f.ds.latest_point("other").unwrap().is_none());

    let dest = f.work.join("restored.img");
    let r = f.ds.restore_disk(&id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
    assert_eq!(r.size, size);
    assert_eq!(r.zero_chunks, stats.chunks_zero);
    assert_eq!(r.bytes_written + r.zero_chunks * u64::from(CS), size);
    // Zero chunks are holes.
    let allocated = fs::metadata(&dest).unwrap().blocks() * 512;
    assert!(
        allocated < size * 70 / 100,
        "allocated {allocated} of {size}"
    );
    assert!(!f.work.join("restored.img.partial").exists());

    let e = f.ds.restore_disk(&id, "nope", &dest, &()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let s = f.ds.stats().unwrap();
    assert_eq!(s.points, 1);
    assert!(s.packs >= 1 && s.chunks > 0 && s.bytes_on_disk > stats.bytes_new_stored);
}

#[test]
fn empty_and_tiny_disks() {
    let f = fixture();
    let empty = f.work.join("empty.img");
    fs::write(&empty, b"").unwrap();
    let tiny = f.work.join("tiny.img");
    fs::write(&tiny, b"hello").unwrap();
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    w.write_disk("empty", &empty, opts(), &()).unwrap();
    w.write_disk("tiny", &tiny, opts(), &()).unwrap();
    let e = w.write_disk("tiny", &tiny, opts(), &()).unwrap_err();
    assert!(matches!(e, StoreError::DuplicateDisk { .. }));
    assert!(matches!(
        w.write_disk("../x", &tiny, opts(), &()),
        Err(StoreError::InvalidDiskName(_))
    ));
    let m = w.commit().unwrap();
    for (disk, src) in [("empty", &empty), ("tiny", &tiny)] {
        let dest = f.work.join(format!("{disk}.out"));
        f.ds.restore_disk(&m.id, disk, &dest, &()).unwrap();
        assert_same(src, &dest);
    }
}

#[test]
fn invalid_chunk_size_and_names() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 1);
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    for cs in [0, 4096, 96 << 10, 8 << 20] {
        let o = DiskWriteOptions {
            chunk_size: cs,
            ..opts()
        };
        assert!(
            matches!(w.write_disk("d", &image, o, &()), Err(StoreError::InvalidChunkSize(x)) if x == cs)
        );
    }
    let o = DiskWriteOptions {
        chunk_size: 1 << 20,
        ..opts()
    };
    w.write_disk("d", &image, o, &()).unwrap();
    let m = w.commit().unwrap();
    assert_eq!(m.disks[0].chunk_size, 1 << 20);
    assert!(matches!(
        f.ds.begin_point(meta("bad vm")),
        Err(StoreError::InvalidVmName(_))
    ));
}

#[test]
fn second_point_of_unchanged_disk_adds_nothing() {
    let f = fixture();
    let image = f.work.join("disk.img");
    // More than one index chunk (2048 ids) so index reuse is visible.
    make_image(&image, 300 << 20, 2);
    let (_, first) = backup(&f.ds, "vm", &image, opts());
    assert!(first.index_chunks_new >= 2);
    let before = f.ds.stats().unwrap();
    let (second_m, second) = backup(&f.ds, "vm", &image, opts());
    assert_eq!(second.chunks_new, 0);
    assert_eq!(second.index_chunks_new, 0);
    assert_eq!(second.bytes_new_stored, 0);
    assert_eq!(second.chunks_reused + second.chunks_zero, second.chunks);
    let after = f.ds.stats().unwrap();
    assert_eq!(after.packs, before.packs);
    assert_eq!(after.chunks, before.chunks);

    // Change one chunk: one new data chunk, one new index chunk.
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    file.write_all_at(b"changed", 200 << 20).unwrap();
    let (third_m, third) = backup(&f.ds, "vm", &image, opts());
    assert_eq!(third.chunks_new, 1);
    assert_eq!(third.index_chunks_new, 1);
    let dest = f.work.join("out.img");
    f.ds.restore_disk(&third_m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
    assert!(third_m.id > second_m.id);
}

#[test]
fn dirty_ranges_read_only_overlapping_chunks() {
    let f = fixture();
    let image = f.work.join("disk.img");
    let size = (16 << 20) + 1000;
    make_image(&image, size, 3);
    let (base, _) = backup(&f.ds, "vm", &image, opts());
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    // Inside chunk 3, straddling chunks 10/11, and the partial last chunk.
    file.write_all_at(&[7u8; 100], 3 * 65536 + 5).unwrap();
    file.write_all_at(&[9u8; 100], 11 * 65536 - 50).unwrap();
    file.write_all_at(&[1u8; 10], size - 10).unwrap();
    let dirty = vec![
        3 * 65536 + 5..3 * 65536 + 105,
        11 * 65536 - 50..11 * 65536 + 50,
        size - 10..size,
    ];
    let o = DiskWriteOptions {
        base: Some(base.id.clone()),
        dirty: Some(dirty),
        ..opts()
    };
    let (m, stats) = backup(&f.ds, "vm", &image, o);
    let last = size % 65536;
    assert_eq!(stats.bytes_read, 3 * 65536 + last, "{stats:?}");
    assert!(stats.chunks_new <= 4);
    assert_eq!(m.disks[0].base.as_ref(), Some(&base.id));
    let dest = f.work.join("out.img");
    f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);

    // A base of another vm is refused.
    let o = DiskWriteOptions {
        base: Some(base.id.clone()),
        dirty: Some(vec![]),
        ..opts()
    };
    let mut w = f.ds.begin_point(meta("other")).unwrap();
    assert!(matches!(
        w.write_disk("data", &image, o, &()),
        Err(StoreError::InvalidBase { .. })
    ));
}

#[test]
fn aborted_point_leaves_nothing_visible() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 4);
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    let id = w.id().clone();
    w.write_disk("data", &image, opts(), &()).unwrap();
    drop(w);
    assert!(!f.ds.has_point(&id).unwrap());
    assert!(f.ds.list_points().unwrap().is_empty());
    // What a killed process leaves: a temporary file and an unindexed pack.
    fs::write(f.root.join("tmp/manifests_vm_x.json.1234.tmp"), b"{").unwrap();
    let orphan = PackId::random();
    fs::create_dir_all(f.root.join(orphan.pack_path()).parent().unwrap()).unwrap();
    fs::write(f.root.join(orphan.pack_path()), b"SBPK\x01\0\0\0partial").unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    assert!(ds.list_points().unwrap().is_empty());
    let (m, _) = backup(&ds, "vm", &image, opts());
    assert_eq!(ds.list_points().unwrap().len(), 1);
    assert!(ds.verify(&()).unwrap().ok());
    let dest = f.work.join("out.img");
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
    // gc removes the leftovers once past grace.
    let report = ds
        .gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert!(report.packs_deleted >= 1, "{report:?}");
    assert!(!f.root.join(orphan.pack_path()).exists());
    assert_eq!(fs::read_dir(f.root.join("tmp")).unwrap().count(), 0);
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn concurrent_writers_do_not_interfere() {
    let f = fixture();
    let images: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = f.work.join(format!("d{i}.img"));
            // Seeds 0 and 1 are shared by two writers each: same chunks.
            make_image(&p, 6 << 20, i % 2);
            p
        })
        .collect();
    let other = Datastore::open(&f.root).unwrap(); // like another process
    let points: Vec<Manifest> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let ds = if i % 2 == 0 {
                    f.ds.clone()
                } else {
                    other.clone()
                };
                s.spawn(move || backup(&ds, &format!("vm{i}"), img, opts()).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ds = Datastore::open(&f.root).unwrap();
    assert_eq!(ds.list_points().unwrap().len(), 4);
    assert!(ds.verify(&()).unwrap().ok());
    for (m, img) in points.iter().zip(&images) {
        let dest = f.work.join("out.img");
        other.restore_disk(&m.id, "data", &dest, &()).unwrap();
        assert_same(img, &dest);
    }
}

#[test]
fn verify_finds_and_names_every_kind_of_damage() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 5);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let image2 = f.work.join("disk2.img");
    make_image(&image2, 4 << 20, 6);
    let (m2, _) = backup(&f.ds, "other", &image2, opts());
    let report = f.ds.verify(&()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.points_checked, 2);
    assert!(report.chunks_checked > 0 && report.bytes_checked > 0);

    let names = |r: &VerifyReport| r.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let only_point = |r: &VerifyReport, id: &PointId| {
        assert!(!r.ok());
        assert!(
            r.problems
                .iter()
                .any(|p| p.point.as_ref() == Some(id) && p.disk.as_deref() == Some("data")),
            "{:?}",
            names(r)
        );
        assert!(
            r.problems.iter().all(|p| p.point.as_ref() != Some(&m2.id)),
            "{:?}",
            names(r)
        );
    };

    // A data chunk.
    let (id, loc) = some_chunk(&f.ds, &m);
    let pack = pack_file(&f.root, &loc.pack);
    flip(&pack, loc.offset + loc.len as u64 - 1);
    let r = f.ds.verify(&()).unwrap();
    only_point(&r, &m.id);
    let text = names(&r).join("\n");
    assert!(
        text.contains(&format!(
            "point {}: disk data: chunk {id} in pack {}: checksum mismatch",
            m.id, loc.pack
        )),
        "{text}"
    );
    flip(&pack, loc.offset + loc.len as u64 - 1);
    assert!(f.ds.verify(&()).unwrap().ok());

    // An index chunk.
    let index_id = m.disks[0].index[0];
    let iloc = f.ds.catalog().get(&index_id).unwrap();
    let ipack = pack_file(&f.root, &iloc.pack);
    flip(&ipack, iloc.offset + 30);
    let r = f.ds.verify(&()).unwrap();
    only_point(&r, &m.id);
    assert!(
        names(&r)
            .join("\n")
            .contains(&format!("index chunk {index_id}"))
    );
    flip(&ipack, iloc.offset + 30);

    // A pack header.
    flip(&pack, 1);
    let r = f.ds.verify(&()).unwrap();
    only_point(&r, &m.id);
    assert!(
        names(&r).join("\n").contains("bad pack header magic"),
        "{:?}",
        names(&r)
    );
    flip(&pack, 1);

    // A pack index file.
    let idx = f.root.join(loc.pack.idx_path());
    flip(&idx, 40);
    let r = f.ds.verify(&()).unwrap();
    only_point(&r, &m.id);
    assert!(
        names(&r)
            .iter()
            .any(|p| p.contains(".idx") && p.contains("checksum mismatch")),
        "{:?}",
        names(&r)
    );
    flip(&idx, 40);

    // A manifest.
    let manifest = f.root.join(m.id.manifest_path());
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"site1\"", "\"site2\"");
    fs::write(&manifest, text).unwrap();
    let r = f.ds.verify(&()).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", names(&r));
    assert_eq!(r.problems[0].point.as_ref(), Some(&m.id));
    assert!(
        r.problems[0].to_string().contains("manifest")
            && r.problems[0].message.contains("checksum")
    );
    let e = f.ds.list_points().unwrap_err();
    assert!(e.to_string().contains(&m.id.manifest_path()), "{e}");
    assert!(f.ds.load_manifest(&m.id).is_err());
}

#[test]
fn restore_of_corrupt_chunk_fails_cleanly() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 7);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let (id, loc) = some_chunk(&f.ds, &m);
    flip(&pack_file(&f.root, &loc.pack), loc.offset + 25);
    let dest = f.work.join("out.img");
    let e = f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.contains(&id.to_string()) && msg.contains(m.id.as_str()) && msg.contains("'data'"),
        "{msg}"
    );
    assert!(!dest.exists());
    assert!(!f.work.join("out.img.partial").exists());
}

#[test]
fn truncated_missing_and_bad_magic_packs_are_errors() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 8);
    let (m, _) = backup(&f.ds, "vm", &image, opts());
    let (_, loc) = some_chunk(&f.ds, &m);
    let pack = pack_file(&f.root, &loc.pack);
    let original = fs::read(&pack).unwrap();
    let dest = f.work.join("out.img");

    // Bad blob header magic.
    flip(&pack, loc.offset);
    let e = f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap_err();
    assert!(chain(&e).contains("bad blob header magic"), "{}", chain(&e));
    fs::write(&pack, &original).unwrap();

    // Truncated pack.
    fs::write(&pack, &original[..original.len() / 2]).unwrap();
    let e = f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap_err();
    assert!(chain(&e).contains(&loc.pack.to_string()), "{}", chain(&e));
    let r = f.ds.verify(&()).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.message.contains("past the end")),
        "{:?}",
        r.problems
    );

    // Missing pack.
    fs::remove_file(&pack).unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    let e = ds.restore_disk(&m.id, "data", &dest, &()).unwrap_err();
    assert!(chain(&e).contains(&loc.pack.to_string()), "{}", chain(&e));
    let r = ds.verify(&()).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.message == "missing" && p.point.as_ref() == Some(&m.id)),
        "{:?}",
        r.problems
    );
    assert!(!dest.exists());
}

#[test]
fn prune_keeps_per_policy_and_deletes_manifests_only() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 9);
    let ids: Vec<PointId> = (0..4)
        .map(|_| backup(&f.ds, "a", &image, opts()).0.id)
        .collect();
    let (b, _) = backup(&f.ds, "b", &image, opts());
    let policy = standby_types::Retention {
        keep_last: 2,
        ..Default::default()
    };
    let dry = f.ds.prune(&policy, Some("a"), true).unwrap();
    assert_eq!(dry.removed, vec![ids[1].clone(), ids[0].clone()]);
    assert_eq!(f.ds.list_points().unwrap().len(), 5);
    let stats = f.ds.stats().unwrap();
    let r = f.ds.prune(&policy, Some("a"), false).unwrap();
    assert_eq!(r.kept, vec![ids[3].clone(), ids[2].clone()]);
    let left: Vec<PointId> =
        f.ds.list_points()
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
    assert_eq!(left, vec![ids[2].clone(), ids[3].clone(), b.id.clone()]);
    assert_eq!(f.ds.stats().unwrap().packs, stats.packs);
    let all =
        f.ds.prune(&standby_types::Retention::default(), None, false)
            .unwrap();
    assert_eq!((all.kept.len(), all.removed.len()), (3, 0));
}

#[test]
fn a_damaged_manifest_blocks_neither_prune_nor_latest_point() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 32);
    let ids: Vec<PointId> = (0..3)
        .map(|_| backup(&f.ds, "a", &image, opts()).0.id)
        .collect();
    let (b, _) = backup(&f.ds, "b", &image, opts());
    let (b2, _) = backup(&f.ds, "b", &image, opts());
    // The newest point of a and the oldest of b are damaged.
    fs::write(f.root.join(ids[2].manifest_path()), b"{broken").unwrap();
    fs::write(f.root.join(b.id.manifest_path()), b"{broken").unwrap();
    assert_eq!(f.ds.latest_point("a").unwrap().unwrap().id, ids[1]);
    assert_eq!(f.ds.newest_point_id("a").unwrap().unwrap(), ids[2]);
    assert_eq!(f.ds.latest_point("b").unwrap().unwrap().id, b2.id);
    let policy = standby_types::Retention {
        keep_last: 1,
        ..Default::default()
    };
    let r = f.ds.prune(&policy, None, false).unwrap();
    assert_eq!(r.kept, vec![ids[2].clone(), b2.id.clone()]);
    assert_eq!(
        r.removed,
        vec![ids[1].clone(), ids[0].clone(), b.id.clone()]
    );
    assert!(!f.ds.has_point(&b.id).unwrap());
    // Only the damaged newest left: no readable point, no error.
    assert!(f.ds.latest_point("a").unwrap().is_none());
}

#[test]
fn gc_sweeps_repacks_and_respects_grace_and_locks() {
    let f = fixture();
    let a = f.work.join("a.img");
    let b = f.work.join("b.img");
    make_image(&a, 1 << 20, 10);
    make_image(&b, 6 << 20, 11);
    let c = f.work.join("c.img");
    make_image(&c, 2 << 20, 12);
    // Point 1: disks a and b in one pack. Point 2: a again (no new data)
    // and c. Point 3: c only.
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    w.write_disk("a", &a, opts(), &()).unwrap();
    w.write_disk("b", &b, opts(), &()).unwrap();
    let p1 = w.commit().unwrap();
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    w.write_disk("a", &a, opts(), &()).unwrap();
    w.write_disk("c", &c, opts(), &()).unwrap();
    let p2 = w.commit().unwrap();
    let (p3, _) = backup(&f.ds, "other", &c, opts());

    // Nothing is garbage yet.
    let r =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert_eq!(r, GcReport::default());

    let policy = standby_types::Retention {
        keep_last: 1,
        ..Default::default()
    };
    f.ds.prune(&policy, Some("vm"), false).unwrap();
    assert!(!f.ds.has_point(&p1.id).unwrap());

    // Young packs are left alone.
    let r = f.ds.gc(GcOptions::default(), &()).unwrap();
    assert_eq!((r.packs_deleted, r.packs_repacked), (0, 0));
    assert_eq!(r.packs_skipped_grace, 1);

    // A writer holds the store: gc refuses.
    let w = f.ds.begin_point(meta("vm")).unwrap();
    let e =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Locked(..)) && e.is_temporary(),
        "{e}"
    );
    drop(w);

    let before = f.ds.stats().unwrap();
    let dry =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                dry_run: true,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert_eq!(dry.packs_repacked, 1);
    assert_eq!(f.ds.stats().unwrap(), before);
    let r =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert!(r.chunks_removed > 0 && r.bytes_freed > 1 << 20, "{r:?}");
    let after = f.ds.stats().unwrap();
    assert!(after.bytes_on_disk < before.bytes_on_disk - (1 << 20));
    assert!(f.ds.verify(&()).unwrap().ok());
    for (id, disk, img) in [(&p2.id, "a", &a), (&p2.id, "c", &c), (&p3.id, "data", &c)] {
        let dest = f.work.join("out.img");
        f.ds.restore_disk(id, disk, &dest, &()).unwrap();
        assert_same(img, &dest);
    }
    // Another handle opened before gc still reads (it reloads on a miss).
    let r =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert_eq!(r, GcReport::default());

    // Dropping every point makes every pack garbage.
    for m in f.ds.list_points().unwrap() {
        fs::remove_file(f.root.join(m.id.manifest_path())).unwrap();
    }
    let r =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert!(r.packs_deleted >= 2, "{r:?}");
    assert_eq!(f.ds.stats().unwrap().packs, 0);
}

#[test]
fn gc_refuses_when_a_manifest_is_unreadable() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 13);
    let (m, _) = backup(&f.ds, "vm", &image, opts());
    fs::write(f.root.join(m.id.manifest_path()), b"{broken").unwrap();
    let e =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap_err();
    assert!(e.to_string().contains(&m.id.manifest_path()), "{e}");
    assert!(f.ds.stats().unwrap().packs >= 1);
    // New points of that vm are still possible.
    let (m2, _) = backup(&f.ds, "vm", &image, opts());
    assert!(m2.id > m.id);
}

#[test]
fn stale_handle_reloads_after_gc_in_another_process() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 14);
    let (m1, _) = backup(&f.ds, "vm", &image, opts());
    let stale = Datastore::open(&f.root).unwrap();
    fs::remove_file(f.root.join(m1.id.manifest_path())).unwrap();
    f.ds.gc(
        GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        &(),
    )
    .unwrap();
    // The stale handle still believes the chunks exist; it must not reuse them.
    let (m2, stats) = backup(&stale, "vm", &image, opts());
    assert!(stats.chunks_new > 0);
    let dest = f.work.join("out.img");
    f.ds.restore_disk(&m2.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn stale_handle_reloads_after_gc_that_died_midway() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 24);
    let (m1, _) = backup(&f.ds, "vm", &image, opts());
    let stale = Datastore::open(&f.root).unwrap();
    fs::remove_file(f.root.join(m1.id.manifest_path())).unwrap();
    // gc dies after choosing what to delete, before deleting anything
    // (a kill after the first delete is the same for the epoch file).
    crate::gc::fail::set("gc delete");
    f.ds.gc(
        GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        &(),
    )
    .unwrap_err();
    // Now delete what that gc meant to: its packs are gone.
    for o in f.ds.backend().list("packs").unwrap() {
        fs::remove_file(f.root.join(&o.path)).unwrap();
    }
    let (m2, stats) = backup(&stale, "vm", &image, opts());
    assert!(stats.chunks_new > 0, "{stats:?}");
    let dest = f.work.join("out.img");
    f.ds.restore_disk(&m2.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
}

/// Progress that tries a gc (through another handle) the first time it
/// is called, and keeps what gc said.
struct GcDuring {
    other: Datastore,
    result: std::sync::Mutex<Option<Result<GcReport, StoreError>>>,
}

impl Progress for GcDuring {
    fn set_total(&self, _total: u64) {
        let mut result = self.result.lock().unwrap();
        if result.is_none() {
            *result = Some(self.other.gc(
                GcOptions {
                    grace: Duration::ZERO,
                    ..GcOptions::default()
                },
                &(),
            ));
        }
    }
    fn inc(&self, _delta: u64) {}
}

#[test]
fn restore_and_verify_hold_off_gc() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 25);
    let (m, _) = backup(&f.ds, "vm", &image, opts());
    let during = GcDuring {
        other: Datastore::open(&f.root).unwrap(),
        result: Default::default(),
    };
    let dest = f.work.join("out.img");
    f.ds.restore_disk(&m.id, "data", &dest, &during).unwrap();
    assert_same(&image, &dest);
    let gc = during.result.lock().unwrap().take().unwrap();
    assert!(matches!(gc, Err(StoreError::Locked(..))), "{gc:?}");

    assert!(f.ds.verify(&during).unwrap().ok());
    let gc = during.result.lock().unwrap().take().unwrap();
    assert!(matches!(gc, Err(StoreError::Locked(..))), "{gc:?}");
}

#[test]
fn sync_from_a_stale_handle_after_gc_repacked() {
    let f = fixture();
    let a = f.work.join("a.img");
    let b = f.work.join("b.img");
    make_image(&a, 1 << 20, 26);
    make_image(&b, 6 << 20, 27);
    // Point 1: a and b in one pack; point 2: a only, all deduplicated.
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    w.write_disk("a", &a, opts(), &()).unwrap();
    w.write_disk("b", &b, opts(), &()).unwrap();
    let p1 = w.commit().unwrap();
    let mut w = f.ds.begin_point(meta("vm")).unwrap();
    w.write_disk("a", &a, opts(), &()).unwrap();
    let p2 = w.commit().unwrap();
    let stale = Datastore::open(&f.root).unwrap();
    fs::remove_file(f.root.join(p1.id.manifest_path())).unwrap();
    let r =
        f.ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();
    let s = stale.sync_point(&p2.id, &dst, &()).unwrap();
    assert!(s.chunks_copied > 0);
    let dest = f.work.join("out.img");
    dst.restore_disk(&p2.id, "a", &dest, &()).unwrap();
    assert_same(&a, &dest);
}

#[test]
fn an_unreadable_index_file_does_not_close_the_store() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 28);
    let (m1, _) = backup(&f.ds, "vm", &image, opts());
    let (_, loc) = some_chunk(&f.ds, &m1);
    // An index that cannot be read at all (a symlink loop: ELOOP).
    let idx = f.root.join(loc.pack.idx_path());
    fs::remove_file(&idx).unwrap();
    std::os::unix::fs::symlink(&idx, &idx).unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    assert!(ds.catalog().damaged().contains_key(&loc.pack));
    let report = ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&loc.pack.to_string()) && p.message.contains("unreadable")),
        "{:?}",
        report.problems
    );
    // New points are still possible.
    let other = f.work.join("other.img");
    make_image(&other, 1 << 20, 29);
    backup(&ds, "vm2", &other, opts());
}

#[test]
fn chunks_of_doubtful_indexes_are_stored_again() {
    for damage in ["checksum", "missing pack"] {
        let f = fixture();
        let image = f.work.join("disk.img");
        make_image(&image, 2 << 20, 30);
        let (m1, _) = backup(&f.ds, "vm", &image, opts());
        let (id, loc) = some_chunk(&f.ds, &m1);
        if damage == "checksum" {
            let idx = f.root.join(loc.pack.idx_path());
            let len = fs::metadata(&idx).unwrap().len();
            flip(&idx, len - 1);
        } else {
            fs::remove_file(pack_file(&f.root, &loc.pack)).unwrap();
        }
        let ds = Datastore::open(&f.root).unwrap();
        assert!(ds.catalog().is_suspect(&id), "{damage}");
        let (m2, stats) = backup(&ds, "vm", &image, opts());
        assert!(stats.chunks_new > 0, "{damage}: {stats:?}");
        // The fresh copy is the location used from now on.
        let now = ds.catalog().get(&id).unwrap();
        assert_ne!(now.pack, loc.pack, "{damage}");
        assert!(!ds.catalog().is_suspect(&id), "{damage}");
        let dest = f.work.join("out.img");
        ds.restore_disk(&m2.id, "data", &dest, &()).unwrap();
        assert_same(&image, &dest);
        // A fresh handle prefers the sound copy too, whatever the order.
        let again = Datastore::open(&f.root).unwrap();
        assert_ne!(again.catalog().get(&id).unwrap().pack, loc.pack);
        let (_, stats) = backup(&again, "vm", &image, opts());
        assert_eq!(stats.chunks_new, 0, "{damage}: {stats:?}");

        // Sync into a store with the same damage copies the chunks again.
        let dst_root = f.work.join("dst");
        let dst = Datastore::open_or_create(&dst_root).unwrap();
        ds.sync_point(&m1.id, &dst, &()).unwrap();
        let dloc = dst.catalog().get(&id).unwrap();
        if damage == "checksum" {
            let idx = dst_root.join(dloc.pack.idx_path());
            let len = fs::metadata(&idx).unwrap().len();
            flip(&idx, len - 1);
        } else {
            fs::remove_file(pack_file(&dst_root, &dloc.pack)).unwrap();
        }
        let dst = Datastore::open(&dst_root).unwrap();
        let s = ds.sync_point(&m2.id, &dst, &()).unwrap();
        assert!(s.chunks_copied > 0, "{damage}: {s:?}");
        dst.restore_disk(&m2.id, "data", &dest, &()).unwrap();
        assert_same(&image, &dest);
    }
}

#[test]
fn gc_keeps_unindexed_packs_while_live_chunks_are_unlocated() {
    let f = fixture();
    let ds = Datastore::open_with(
        &f.root,
        StoreOptions {
            pack_size: pack::MIN_PACK_SIZE,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Random data over two packs: the data of the first, and the index
    // chunks in the last.
    let image = f.work.join("disk.img");
    let mut data = vec![0u8; 20 << 20];
    rand::rngs::StdRng::seed_from_u64(31).fill_bytes(&mut data);
    fs::write(&image, &data).unwrap();
    let (m, _) = backup(&ds, "vm", &image, opts());
    let (_, loc) = some_chunk(&ds, &m);
    let packs = ds.stats().unwrap().packs;
    assert!(packs >= 2, "{packs}");
    fs::remove_file(f.root.join(loc.pack.idx_path())).unwrap();
    let gc = || {
        ds.gc(
            GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &(),
        )
        .unwrap()
    };
    let r = gc();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert_eq!(r.packs_kept_unindexed, 1, "{r:?}");
    assert!(r.live_chunks_unlocated > 0, "{r:?}");
    assert!(pack_file(&f.root, &loc.pack).exists());
    let report = ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("not found in any pack index")),
        "{:?}",
        report.problems
    );
    // Once nothing live is unlocated, the unindexed pack is garbage.
    fs::remove_file(f.root.join(m.id.manifest_path())).unwrap();
    let r = gc();
    assert_eq!(r.live_chunks_unlocated, 0, "{r:?}");
    assert!(!pack_file(&f.root, &loc.pack).exists(), "{r:?}");
}

#[test]
fn sync_copies_missing_chunks_then_nothing() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 6 << 20, 15);
    let (m1, _) = backup(&f.ds, "vm", &image, opts());
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();
    let s1 = f.ds.sync_point(&m1.id, &dst, &()).unwrap();
    assert!(s1.chunks_copied > 0 && !s1.already_present);
    assert_eq!(dst.load_manifest(&m1.id).unwrap(), m1);
    let again = f.ds.sync_point(&m1.id, &dst, &()).unwrap();
    assert!(again.already_present);
    assert_eq!(again.chunks_copied, 0);

    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    file.write_all_at(b"new data", 1 << 20).unwrap();
    let (m2, _) = backup(&f.ds, "vm", &image, opts());
    let s2 = f.ds.sync_point(&m2.id, &dst, &()).unwrap();
    assert_eq!(
        s2.chunks_copied, 2,
        "one data chunk, one index chunk: {s2:?}"
    );
    assert!(s2.chunks_skipped > 0);
    assert!(dst.verify(&()).unwrap().ok());
    let dest = f.work.join("out.img");
    dst.restore_disk(&m2.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);

    // A corrupt source chunk is not propagated.
    let (m3, _) = backup(&f.ds, "vm2", &f.work.join("disk.img"), opts());
    let (_, loc) = some_chunk(&f.ds, &m3);
    let dst2 = Datastore::open_or_create(&f.work.join("dst2")).unwrap();
    flip(&pack_file(&f.root, &loc.pack), loc.offset + 24);
    let e = f.ds.sync_point(&m3.id, &dst2, &()).unwrap_err();
    assert!(chain(&e).contains("checksum mismatch"), "{}", chain(&e));
    assert!(!dst2.has_point(&m3.id).unwrap());
}

/// Throughput on a generated 512 MiB image (40 % zero, 35 % compressible,
/// 25 % random). Run with
/// `cargo test --release -p standby-store -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let f = fixture();
    let image = f.work.join("big.img");
    let size: u64 = std::env::var("STANDBY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    make_image(&image, size, 42);
    let mb = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let t = Instant::now();
    let (m1, s1) = backup(&f.ds, "vm", &image, opts());
    let full = t.elapsed();
    // Change ~1 % of the image.
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    let mut rng = rand::rng();
    for _ in 0..(size >> 16) / 100 {
        let at = rng.random_range(0..size - 100);
        file.write_all_at(&[rng.random::<u8>(); 100], at).unwrap();
    }
    let t = Instant::now();
    let (_m2, s2) = backup(&f.ds, "vm", &image, opts());
    let second = t.elapsed();
    let dest = f.work.join("out.img");
    // Start from a clean page cache writeback state.
    let _ = std::process::Command::new("sync").status();
    let t = Instant::now();
    f.ds.restore_disk(&m1.id, "data", &dest, &()).unwrap();
    let restore = t.elapsed();
    let t = Instant::now();
    let v = f.ds.verify(&()).unwrap();
    let verify = t.elapsed();
    assert!(v.ok());
    println!("image {} MiB", size >> 20);
    println!(
        "full point:   {:>8.0} MB/s ({full:.2?}, stored {} MiB)",
        mb(full),
        s1.bytes_new_stored >> 20
    );
    println!(
        "second point: {:>8.0} MB/s ({second:.2?}, {} new chunks)",
        mb(second),
        s2.chunks_new
    );
    println!("restore:      {:>8.0} MB/s ({restore:.2?})", mb(restore));
    println!("verify:       {verify:.2?} for 2 points");
}

/// Progress that slows a writer down so a test can kill it mid-point.
struct Slow;

impl Progress for Slow {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _delta: u64) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Not a test on its own: the body of a child process started by the
/// multi-process tests below (it does nothing without their environment).
#[test]
#[ignore]
fn child_writer() {
    let (Some(root), Some(vm), Some(image)) = (
        std::env::var_os("STANDBY_CHILD_ROOT"),
        std::env::var("STANDBY_CHILD_VM").ok(),
        std::env::var_os("STANDBY_CHILD_IMAGE"),
    ) else {
        return;
    };
    let ds = Datastore::open(Path::new(&root)).unwrap();
    let mut w = ds.begin_point(meta(&vm)).unwrap();
    let slow = std::env::var_os("STANDBY_CHILD_SLOW").is_some();
    let progress: &dyn Progress = if slow { &Slow } else { &() };
    w.write_disk("data", Path::new(&image), opts(), progress)
        .unwrap();
    w.commit().unwrap();
}

fn spawn_child(root: &Path, vm: &str, image: &Path, slow: bool) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "tests::child_writer",
        "--test-threads",
        "1",
    ])
    .env("STANDBY_CHILD_ROOT", root)
    .env("STANDBY_CHILD_VM", vm)
    .env("STANDBY_CHILD_IMAGE", image)
    .stdout(std::process::Stdio::null());
    if slow {
        cmd.env("STANDBY_CHILD_SLOW", "1");
    }
    cmd.spawn().unwrap()
}

#[test]
fn two_processes_write_concurrently() {
    let f = fixture();
    let a = f.work.join("a.img");
    let b = f.work.join("b.img");
    make_image(&a, 24 << 20, 20);
    make_image(&b, 24 << 20, 20); // same content: both store the same chunks
    let children = [
        spawn_child(&f.root, "vma", &a, false),
        spawn_child(&f.root, "vmb", &b, false),
    ];
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let points = f.ds.list_points().unwrap();
    assert_eq!(points.len(), 2);
    assert!(f.ds.verify(&()).unwrap().ok());
    for m in &points {
        let dest = f.work.join("out.img");
        f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
        assert_same(&a, &dest);
    }
}

#[test]
fn killed_writer_leaves_no_point() {
    let f = fixture();
    let image = f.work.join("big.img");
    // Random data so packs fill and are flushed before the kill.
    let mut data = vec![0u8; 64 << 20];
    rand::rngs::StdRng::seed_from_u64(21).fill_bytes(&mut data);
    fs::write(&image, &data).unwrap();
    let mut child = spawn_child(&f.root, "vm", &image, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let packs = f.ds.backend().list("packs").unwrap();
        if packs.iter().any(|o| o.path.ends_with(".idx")) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "child finished too soon"
        );
        assert!(Instant::now() < deadline, "child wrote no pack");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    assert!(ds.list_points().unwrap().is_empty());
    assert!(ds.stats().unwrap().packs >= 1);
    assert!(ds.verify(&()).unwrap().ok());
    // The next point succeeds and reuses what the killed one made durable.
    let (m, stats) = backup(&ds, "vm", &image, opts());
    assert!(stats.chunks_reused > 0, "{stats:?}");
    let dest = f.work.join("out.img");
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
    // gc (no grace) keeps what the new point uses.
    ds.gc(
        GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        &(),
    )
    .unwrap();
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync::<Datastore>();
    send::<PointWriter>();
}
