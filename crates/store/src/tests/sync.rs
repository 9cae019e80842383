//! Sync between datastores.

use super::*;

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

/// The new chunks of a copy are read back and checked once written: one
/// that reads back damaged fails the copy, naming it, with no manifest
/// published; the next copy stores it again, and the point restores.
#[test]
fn a_copy_that_reads_back_damaged_fails_and_the_next_one_stores_it_again() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 51);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();
    crate::gc::fail::set("damage written");
    let e = f.ds.sync_point(&m.id, &dst, &()).unwrap_err();
    assert!(chain(&e).contains("read back damaged"), "{}", chain(&e));
    assert!(!dst.has_point(&m.id).unwrap());
    let s = f.ds.sync_point(&m.id, &dst, &()).unwrap();
    assert!(
        s.chunks_verified > 0 && s.chunks_verified == s.chunks_copied,
        "{s:?}"
    );
    let out = f.work.join("out.img");
    dst.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
}
