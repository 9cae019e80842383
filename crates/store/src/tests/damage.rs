//! Damaged stores: verify names every kind of damage, reads of corrupt
//! chunks and packs fail cleanly, doubtful index files.

use super::*;

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
            .any(|p| p.contains(".idx") && p.contains("MAC mismatch")),
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
            && r.problems[0].message.contains("MAC mismatch"),
        "{:?}",
        names(&r)
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
fn verify_slices_read_every_chunk_once_and_find_damage_in_their_slice() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 4 << 20, 9);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let full = f.ds.verify(&()).unwrap();
    assert!(full.ok());
    let parts = 5;
    let mut checked = 0;
    for part in 0..parts {
        let r = f.ds.verify_slice(part, parts, &()).unwrap();
        assert!(r.ok());
        let f = r.sample_fraction.unwrap();
        assert!((f - 1.0 / parts as f64).abs() < 1e-9, "{f}");
        checked += r.chunks_checked;
    }
    assert_eq!(checked, full.chunks_checked, "the slices split the chunks");
    // A damaged chunk is found by exactly one slice.
    let (_, loc) = some_chunk(&f.ds, &m);
    flip(&pack_file(&f.root, &loc.pack), loc.offset + 25);
    let found: Vec<u32> = (0..parts)
        .filter(|part| !f.ds.verify_slice(*part, parts, &()).unwrap().ok())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
}
