//! Repairing damaged chunks from another datastore's intact copy.

use super::*;

/// A point in the fixture's store, synced to a second one.
fn two_copies(f: &Fixture, seed: u64) -> (Manifest, Datastore, PathBuf) {
    let image = f.work.join(format!("disk-{seed}.img"));
    make_image(&image, 4 << 20, seed);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let other = Datastore::open_or_create(&f.work.join("other")).unwrap();
    f.ds.sync_point(&m.id, &other, &()).unwrap();
    (m, other, image)
}

#[test]
fn a_damaged_chunk_is_repaired_from_the_other_copy() {
    let f = fixture();
    let (m, other, image) = two_copies(&f, 41);
    let (id, loc) = some_chunk(&other, &m);
    flip(
        &pack_file(&f.work.join("other"), &loc.pack),
        loc.offset + 25,
    );
    assert!(!other.verify(&()).unwrap().ok());
    let r = other
        .repair_from(&f.ds, std::slice::from_ref(&m.id), &())
        .unwrap();
    assert_eq!(r.chunks_repaired, 1, "{r:?}");
    assert_eq!(r.packs_rewritten, 1, "{r:?}");
    assert_eq!(r.repaired, vec![m.id.to_string()], "{r:?}");
    assert!(r.unrepaired.is_empty(), "{r:?}");
    // The same chunk id, intact now: a full verify and a restore agree.
    assert!(other.catalog().contains(&id));
    let v = other.verify(&()).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    let out = f.work.join("out.img");
    other.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
    // Nothing left to repair.
    let again = other
        .repair_from(&f.ds, std::slice::from_ref(&m.id), &())
        .unwrap();
    assert_eq!((again.chunks_repaired, again.packs_rewritten), (0, 0));
}

#[test]
fn a_chunk_damaged_in_both_copies_is_named_and_left_as_it_was() {
    let f = fixture();
    let (m, other, _) = two_copies(&f, 42);
    let (_, loc) = some_chunk(&other, &m);
    flip(
        &pack_file(&f.work.join("other"), &loc.pack),
        loc.offset + 25,
    );
    let (_, src) = some_chunk(&f.ds, &m);
    flip(&pack_file(&f.root, &src.pack), src.offset + 25);
    let r = other
        .repair_from(&f.ds, std::slice::from_ref(&m.id), &())
        .unwrap();
    assert_eq!(r.chunks_repaired, 0, "{r:?}");
    assert!(r.repaired.is_empty(), "{r:?}");
    let why = &r.unrepaired[m.id.as_str()];
    assert!(why.contains("at the source"), "{why}");
    assert!(!other.verify(&()).unwrap().ok());
}
