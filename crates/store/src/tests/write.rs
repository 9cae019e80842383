//! Writing points: round trips, sizes, names, dedup, aborted and
//! concurrent writers.

use super::*;

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
    assert_eq!(marker["format"], 2);
    assert_eq!(marker["auth"], "blake3-keyed");
    assert_eq!(marker["kind"], "standby-datastore");
    Datastore::open(&root).unwrap();
    Datastore::open_or_create(&root).unwrap();
}

/// A datastore a newer standby made (a newer format in its marker) is
/// refused with both formats named, and left as it is.
#[test]
fn open_refuses_a_newer_format() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    Datastore::open_or_create(&root).unwrap();
    let path = root.join("standby-store.json");
    let mut marker: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    marker["format"] = 3.into();
    let text = serde_json::to_vec(&marker).unwrap();
    fs::write(&path, &text).unwrap();
    for e in [
        Datastore::open(&root).unwrap_err(),
        Datastore::open_or_create(&root).unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                StoreError::UnsupportedFormat {
                    format: 3,
                    supported: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "unsupported datastore format 3 at {}: this standby reads format 2, a newer standby wrote it",
                root.display()
            )
        );
    }
    assert_eq!(fs::read(&path).unwrap(), text);
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
