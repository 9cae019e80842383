//! Prune and gc: policies, sweeping and repacking, locks and grace,
//! handles that go stale when gc runs elsewhere.

use super::*;

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
fn a_damaged_manifest_costs_only_its_own_point_in_a_scan() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 33);
    let ids: Vec<PointId> = (0..3)
        .map(|_| backup(&f.ds, "a", &image, opts()).0.id)
        .collect();
    fs::write(f.root.join(ids[1].manifest_path()), b"{broken").unwrap();
    let (points, bad) = f.ds.scan_points().unwrap();
    let found: Vec<PointId> = points.into_iter().map(|m| m.id).collect();
    assert_eq!(found, vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].to_string().contains(&ids[1].manifest_path()),
        "{}",
        bad[0]
    );
    // No manifest reads at all: the store's error, not an empty store.
    for id in &ids {
        fs::write(f.root.join(id.manifest_path()), b"{broken").unwrap();
    }
    assert!(f.ds.scan_points().is_err());
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
