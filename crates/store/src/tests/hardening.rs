//! Hardening: forged and planted objects, bounded allocation, gc racing
//! writers.

use super::*;
use crate::backend::{Backend, LocalBackend};
use crate::pack;

/// Write `m` with other disks as a new point of its vm one second later,
/// checksummed (and authenticated) like a genuine one: only its stated
/// numbers are forged.
fn plant_forged(ds: &Datastore, m: &Manifest, disks: Vec<DiskEntry>) -> PointId {
    let time = m.time + chrono::Duration::seconds(1);
    let id = PointId::new(&m.vm, time).unwrap();
    let forged = Manifest {
        id: id.clone(),
        time,
        ..m.clone()
    }
    .with_disks(disks);
    let bytes = ds.encode_manifest(&forged).unwrap();
    ds.backend().put_new(&id.manifest_path(), &bytes).unwrap();
    id
}

#[test]
fn hardening_a_manifest_claiming_2_40_chunks_is_refused_by_gc_verify_and_restore() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 3 << 20, 1);
    let (m, _) = backup(&f.ds, "vm1", &image, opts());
    let mut disk = m.disks[0].clone();
    // 2^40 chunks described by 257 index entries: 32 TiB of ids to
    // allocate if the numbers were trusted.
    disk.chunk_size = CS;
    disk.chunks = 1 << 40;
    disk.size = (1u64 << 40) * u64::from(CS);
    disk.ids_per_index_chunk = u32::MAX;
    disk.index = vec![ChunkId::ZERO; disk.chunks.div_ceil(u64::from(u32::MAX)) as usize];
    let forged = plant_forged(&f.ds, &m, vec![disk.clone()]);

    let e = chain(&f.ds.gc(GcOptions::default(), &()).unwrap_err());
    assert!(
        e.contains(&forged.manifest_path()) && e.contains("limit"),
        "{e}"
    );
    let report = f.ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&forged.manifest_path()) && p.message.contains("limit")),
        "{:?}",
        report.problems
    );
    let e = chain(
        &f.ds
            .restore_disk(&forged, "data", &f.work.join("out.img"), &())
            .unwrap_err(),
    );
    assert!(e.contains("limit"), "{e}");
    assert!(!f.work.join("out.img").exists());

    // Within the index rule but past the size limits: refused too.
    let mut big = m.disks[0].clone();
    big.chunk_size = 4 << 20;
    big.size = 1 << 50;
    big.chunks = big.size.div_ceil(4 << 20);
    big.index = vec![ChunkId::ZERO; big.chunks.div_ceil(2048) as usize];
    let forged = plant_forged(
        &f.ds,
        &Manifest {
            time: m.time + chrono::Duration::seconds(5),
            ..m.clone()
        },
        vec![big],
    );
    let e = chain(&f.ds.load_manifest(&forged).unwrap_err());
    assert!(e.contains("bytes: more than the limit"), "{e}");
    // The genuine point is untouched and restores.
    f.ds.restore_disk(&m.id, "data", &f.work.join("ok.img"), &())
        .unwrap();
    assert_same(&image, &f.work.join("ok.img"));
}

/// A manifest an attacker with write access plants: a copy of the
/// newest genuine one, one minute later, its checksum recomputed (anyone
/// can), and its MAC, if any, copied along.
fn plant_newer(backend: &dyn Backend, m: &Manifest) -> PointId {
    let time = m.time + chrono::Duration::minutes(1);
    let id = PointId::new(&m.vm, time).unwrap();
    let genuine: serde_json::Value =
        serde_json::from_slice(&backend.get(&m.id.manifest_path()).unwrap()).unwrap();
    let mut planted = Manifest {
        id: id.clone(),
        time,
        labels: BTreeMap::from([("planted".into(), "yes".into())]),
        ..m.clone()
    }
    .with_disks(m.disks.clone());
    planted.site = "attacker".into();
    let planted = planted.with_disks(m.disks.clone());
    let mut value = serde_json::to_value(&planted).unwrap();
    if let Some(mac) = genuine.get("mac") {
        value["mac"] = mac.clone();
    }
    backend
        .put_new(
            &id.manifest_path(),
            &serde_json::to_vec_pretty(&value).unwrap(),
        )
        .unwrap();
    id
}

/// The planted point is refused by name everywhere, and the newest
/// point a failover would boot is still the genuine one.
fn assert_planted_refused(ds: &Datastore, genuine: &Manifest, planted: &PointId) {
    let e = ds.load_manifest(planted).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, StoreError::BadManifest { .. })
            && text.contains(&planted.manifest_path())
            && text.contains("MAC mismatch"),
        "{text}"
    );
    assert_eq!(
        ds.latest_point(&genuine.vm).unwrap().unwrap().id,
        genuine.id
    );
    let (points, bad) = ds.scan_points().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(bad.len(), 1);
    let report = ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&planted.manifest_path()) && p.message.contains("MAC")),
        "{:?}",
        report.problems
    );
}

#[test]
fn hardening_a_planted_manifest_in_a_plain_local_store_is_refused() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 3);
    let (m, _) = backup(&f.ds, "vm1", &image, opts());
    let planted = plant_newer(f.ds.backend(), &m);
    assert_planted_refused(&f.ds, &m, &planted);
    // Moving a genuine manifest to another point's path fails too.
    let moved = PointId::new("vm1", m.time + chrono::Duration::minutes(2)).unwrap();
    let bytes = f.ds.backend().get(&m.id.manifest_path()).unwrap();
    f.ds.backend()
        .put_new(&moved.manifest_path(), &bytes)
        .unwrap();
    assert!(f.ds.load_manifest(&moved).is_err());
    // Reopened (another process), the same.
    let again = Datastore::open(&f.root).unwrap();
    assert_eq!(again.latest_point("vm1").unwrap().unwrap().id, m.id);
}

#[test]
fn hardening_a_planted_manifest_in_a_plain_object_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    fs::create_dir(&bucket).unwrap();
    let mut cfg = ObjectStoreConfig::new(ObjectService::Local { path: bucket });
    cfg.prefix = "site/cloud".into();
    // Without a key file configured, no plain store is made.
    let b = std::sync::Arc::new(ObjectBackend::new(&cfg).unwrap());
    let e = Datastore::open_or_create_on(b, StoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("store_key_file"), "{e}");
    cfg.store_key_file = Some(dir.path().join("cloud.store-key"));
    let b = std::sync::Arc::new(ObjectBackend::new(&cfg).unwrap());
    let ds = Datastore::open_or_create_on(b.clone(), StoreOptions::default()).unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 2 << 20, 4);
    let (m, _) = backup(&ds, "vm1", &image, opts());
    let planted = plant_newer(b.as_ref(), &m);
    assert_planted_refused(&ds, &m, &planted);
    // Another key file is refused at open, naming it.
    let other = dir.path().join("other.store-key");
    generate_key_file(&other).unwrap();
    cfg.store_key_file = Some(other);
    let e = Datastore::open_on(
        std::sync::Arc::new(ObjectBackend::new(&cfg).unwrap()),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not this datastore's key"), "{e}");
}

#[test]
fn hardening_a_planted_pack_index_is_refused_and_never_deduplicated_against() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 5);
    // The attacker knows (or guesses) chunks the next point will hold, and
    // plants an index claiming them, in a pack of garbage, with a checksum
    // trailer anyone can compute: writers that believed it would skip
    // those chunks, and the point would never restore.
    let data = fs::read(&image).unwrap();
    let ids: Vec<ChunkId> = data
        .chunks(CS as usize)
        .map(ChunkId::of)
        .filter(|id| !id.is_zero())
        .collect();
    let pack = PackId::random();
    let entries: Vec<pack::IdxEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| pack::IdxEntry {
            id: *id,
            offset: 8 + i as u64 * 100,
            len: 100,
            kind: blob::BlobKind::Data,
        })
        .collect();
    let mut garbage = b"SBPK\x01\x00\x00\x00".to_vec();
    garbage.resize(8 + ids.len() * 100, 0xee);
    f.ds.backend().put(&pack.pack_path(), &garbage).unwrap();
    f.ds.backend()
        .put(&pack.idx_path(), &pack::encode_index(&pack, &entries))
        .unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    let (m, stats) = backup(&ds, "vm1", &image, opts());
    assert_eq!(stats.chunks_new as usize, {
        let mut u = ids.clone();
        u.sort();
        u.dedup();
        u.len()
    });
    ds.restore_disk(&m.id, "data", &f.work.join("out.img"), &())
        .unwrap();
    assert_same(&image, &f.work.join("out.img"));
    let report = ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&pack.idx_path()) && p.message.contains("MAC mismatch")),
        "{:?}",
        report.problems
    );
}

#[test]
fn hardening_upgrade_makes_a_format_1_store_usable_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let old = crate::datastore::create_format_1(&root);
    let image = dir.path().join("disk.img");
    make_image(&image, 3 << 20, 6);
    let (m1, _) = backup(&old, "vm1", &image, opts());
    let (m2, _) = backup(&old, "vm2", &image, opts());
    let unsigned = fs::read(root.join(m2.id.manifest_path())).unwrap();
    drop(old);
    let key = LocalBackend::default_store_key_file(&root);
    assert!(!key.exists());

    // Refused until upgraded, with the command to run.
    let e = Datastore::open(&root).unwrap_err();
    assert!(matches!(e, StoreError::NotUpgraded { .. }), "{e}");
    assert!(e.to_string().contains("standby store upgrade"), "{e}");

    let r = Datastore::upgrade(&root, None).unwrap();
    assert_eq!((r.manifests_signed, r.indexes_signed), (2, 1), "{r:?}");
    assert!(r.skipped.is_empty() && !r.already_upgraded, "{r:?}");
    assert!(key.exists());
    let ds = Datastore::open(&root).unwrap();
    assert!(ds.verify(&()).unwrap().problems.is_empty());
    ds.restore_disk(&m1.id, "data", &dir.path().join("out.img"), &())
        .unwrap();
    assert_same(&image, &dir.path().join("out.img"));
    // New points go on the old chain.
    let (m3, s3) = backup(&ds, "vm1", &image, opts());
    assert_eq!(s3.chunks_new, 0);
    drop(ds);

    // Again: nothing to do.
    assert!(Datastore::upgrade(&root, None).unwrap().already_upgraded);

    // Killed midway (one manifest still unsigned, marker still format 1):
    // running it again finishes the job.
    let marker = root.join(MARKER_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&marker).unwrap()).unwrap();
    v["format"] = 1.into();
    v.as_object_mut().unwrap().remove("auth");
    v.as_object_mut().unwrap().remove("auth_check");
    fs::write(&marker, serde_json::to_vec(&v).unwrap()).unwrap();
    fs::write(root.join(m2.id.manifest_path()), &unsigned).unwrap();
    let r = Datastore::upgrade(&root, None).unwrap();
    assert_eq!(
        (r.manifests_signed, r.manifests_kept, r.indexes_signed),
        (1, 2, 0),
        "{r:?}"
    );
    let ds = Datastore::open(&root).unwrap();
    assert_eq!(ds.list_points().unwrap().len(), 3);
    ds.restore_disk(&m3.id, "data", &dir.path().join("out3.img"), &())
        .unwrap();
    assert_same(&image, &dir.path().join("out3.img"));

    // A missing key file is never made again for an upgraded store.
    fs::rename(&key, dir.path().join("saved.key")).unwrap();
    let e = Datastore::open(&root).unwrap_err();
    assert!(e.to_string().contains("is missing"), "{e}");
    assert!(!key.exists());
}

/// A plain datastore on `object_store`'s local files (the object-store
/// code path, leases included, without a server).
fn object_store(dir: &Path) -> (Datastore, std::sync::Arc<ObjectBackend>) {
    let bucket = dir.join("bucket");
    fs::create_dir_all(&bucket).unwrap();
    let mut cfg = ObjectStoreConfig::new(ObjectService::Local { path: bucket });
    cfg.store_key_file = Some(dir.join("store.key"));
    // Renewals far apart: a lapse is not noticed by the renewer first.
    cfg.lease_secs = 600;
    let b = std::sync::Arc::new(ObjectBackend::new(&cfg).unwrap());
    let ds = Datastore::open_or_create_on(b.clone(), StoreOptions::default()).unwrap();
    (ds, b)
}

/// Points of `vm` whose manifests are deleted: their packs are garbage.
fn garbage(ds: &Datastore, work: &Path, seed: u64) -> Manifest {
    let image = work.join(format!("garbage-{seed}.img"));
    make_image(&image, 2 << 20, seed);
    let (m, _) = backup(ds, "old", &image, opts());
    ds.backend().delete(&m.id.manifest_path()).unwrap();
    m
}

fn pack_files(b: &dyn Backend) -> Vec<String> {
    b.list("packs")
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect()
}

#[test]
fn hardening_gc_on_an_object_store_checks_its_lease_before_each_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, b) = object_store(dir.path());
    garbage(&ds, dir.path(), 7);
    let before = pack_files(b.as_ref());
    assert!(!before.is_empty());
    // While gc marked, its lease lapsed (a stall): another process found
    // it expired, removed it, and a writer started.
    let b2 = b.clone();
    crate::gc::fail::set_before_delete(move || {
        b2.delete("locks/gc.lease").unwrap();
        let writer = serde_json::json!({
            "holder": "elsewhere:1:1", "kind": "shared",
            "expires": chrono::Utc::now().timestamp_millis() + 600_000,
        });
        b2.put(
            "locks/shared/0123456789abcdef0123456789abcdef.lease",
            writer.to_string().as_bytes(),
        )
        .unwrap();
    });
    let gc = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    let e = ds.gc(gc, &()).unwrap_err();
    assert!(
        matches!(e, StoreError::Locked(..)) && e.to_string().contains("lease"),
        "{e}"
    );
    assert_eq!(
        pack_files(b.as_ref()),
        before,
        "gc deleted after losing its lease"
    );

    // A lease taken by another gc meanwhile stops it just the same.
    b.delete("locks/shared/0123456789abcdef0123456789abcdef.lease")
        .unwrap();
    let b2 = b.clone();
    crate::gc::fail::set_before_delete(move || {
        let other = serde_json::json!({
            "holder": "elsewhere:2:2", "kind": "gc",
            "expires": chrono::Utc::now().timestamp_millis() + 600_000,
        });
        b2.put("locks/gc.lease", other.to_string().as_bytes())
            .unwrap();
    });
    assert!(matches!(ds.gc(gc, &()), Err(StoreError::Locked(..))));
    assert_eq!(pack_files(b.as_ref()), before);
    // With its lease intact, gc deletes.
    b.delete("locks/gc.lease").unwrap();
    assert!(ds.gc(gc, &()).unwrap().packs_deleted > 0);
    assert!(pack_files(b.as_ref()).is_empty());
}

#[test]
fn hardening_a_writer_cannot_commit_a_point_naming_a_pack_gc_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, b) = object_store(dir.path());
    let old = garbage(&ds, dir.path(), 8);
    let image = dir.path().join("garbage-8.img");
    // A writer begins and deduplicates against the garbage pack...
    let mut w = ds.begin_point(meta("vm1")).unwrap();
    let stats = w.write_disk("data", &image, opts(), &()).unwrap();
    assert_eq!(stats.chunks_new, 0, "it reuses the old chunks");
    // ...while its lease lapses: gc finds it expired, removes it, and
    // deletes the pack (no manifest names it).
    for lease in b.list("locks/shared").unwrap() {
        b.delete(&lease.path).unwrap();
    }
    let gc = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    assert!(ds.gc(gc, &()).unwrap().packs_deleted > 0);
    let e = w.commit().unwrap_err();
    assert!(
        matches!(e, StoreError::PointRobbed { .. }) && e.is_temporary(),
        "{e}"
    );
    assert!(e.to_string().contains("write it again"), "{e}");
    assert!(
        ds.list_points().unwrap().is_empty(),
        "no point names the deleted pack"
    );

    // Without a new epoch (a pack removed by hand, or by a gc that
    // died before announcing), the missing pack alone refuses the commit.
    let _ = old;
    let ds = Datastore::open_on(b.clone(), StoreOptions::default()).unwrap();
    let m = garbage(&ds, dir.path(), 9);
    let mut w = ds.begin_point(meta("vm1")).unwrap();
    w.write_disk("data", &dir.path().join("garbage-9.img"), opts(), &())
        .unwrap();
    let first = ds.read_disk_index(&m.disks[0]).unwrap();
    let first = first.iter().find(|id| !id.is_zero()).unwrap();
    let pack = ds.catalog().get(first).unwrap().pack;
    b.delete(&pack.idx_path()).unwrap();
    b.delete(&pack.pack_path()).unwrap();
    let e = w.commit().unwrap_err();
    assert!(e.to_string().contains(&format!("pack {pack}")), "{e}");
    assert!(ds.list_points().unwrap().is_empty());

    // Untouched, the same write commits and restores.
    let mut w = ds.begin_point(meta("vm1")).unwrap();
    w.write_disk("data", &dir.path().join("garbage-9.img"), opts(), &())
        .unwrap();
    let m = w.commit().unwrap();
    ds.restore_disk(&m.id, "data", &dir.path().join("out.img"), &())
        .unwrap();
    assert_same(
        &dir.path().join("garbage-9.img"),
        &dir.path().join("out.img"),
    );
}

/// The cost of authentication on a restore of a 256 MiB disk: the same
/// point restored from an authenticated store and from one as standby
/// 0.1 wrote it (no MACs).
/// `cargo test -p standby-store --lib hardening_figures -- --ignored --nocapture`
#[test]
#[ignore]
fn hardening_figures_mac_cost_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 256 << 20, 12);
    let plain = crate::datastore::create_format_1(&dir.path().join("v1"));
    let authed = Datastore::open_or_create(&dir.path().join("v2")).unwrap();
    for (name, ds) in [("format 1, no MACs", plain), ("format 2, MACs", authed)] {
        let (m, _) = backup(&ds, "vm1", &image, opts());
        let mut best = Duration::MAX;
        for i in 0..3 {
            let out = dir.path().join(format!("out-{i}.img"));
            let t = Instant::now();
            // A fresh handle each time: index MACs are checked at open,
            // the manifest's at load.
            let again = Datastore::assemble(
                ds.inner.backend.clone(),
                StoreOptions::default(),
                None,
                ds.auth().map(|_| {
                    crate::auth::StoreAuth::read(&LocalBackend::default_store_key_file(ds.root()))
                        .unwrap()
                }),
            )
            .unwrap();
            again.restore_disk(&m.id, "data", &out, &()).unwrap();
            best = best.min(t.elapsed());
            fs::remove_file(&out).unwrap();
        }
        println!("{name}: open + restore of 256 MiB, best of 3: {best:?}");
    }
}

/// Runs its action once, when a copy announces its size: after the copy
/// looked at what the destination holds, before it copies anything.
struct OnStart<F: Fn() + Sync>(F, std::sync::atomic::AtomicBool);

impl<F: Fn() + Sync> crate::progress::Progress for OnStart<F> {
    fn set_total(&self, _total: u64) {
        if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            (self.0)()
        }
    }
    fn inc(&self, _delta: u64) {}
}

#[test]
fn hardening_a_copy_cannot_publish_a_point_naming_a_pack_gc_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    generate_key_file(&key).unwrap();
    // The same copy from a plain source (blobs copied as stored) and from
    // an encrypted one (re-encoded for the plain destination).
    let sources = [
        Datastore::open_or_create(&dir.path().join("plain")).unwrap(),
        Datastore::create_encrypted(
            &dir.path().join("sealed"),
            &KeySource::File(key),
            StoreOptions::default(),
        )
        .unwrap(),
    ];
    for (n, src) in sources.iter().enumerate() {
        let work = dir.path().join(format!("copy-{n}"));
        fs::create_dir_all(&work).unwrap();
        let image = work.join("disk.img");
        make_image(&image, 2 << 20, 8);
        let (m, _) = backup(src, "vm1", &image, opts());
        // The destination holds the same chunks in packs no point names.
        let (dst, b) = object_store(&work);
        garbage(&dst, &work, 8);
        // The copy finds them there and skips them... while its lease
        // lapses and gc (another process: its own handle) deletes those
        // packs.
        let other = Datastore::open_on(b.clone(), StoreOptions::default()).unwrap();
        let gc_now = || {
            for lease in b.list("locks/shared").unwrap() {
                b.delete(&lease.path).unwrap();
            }
            let gc = GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            };
            assert!(other.gc(gc, &()).unwrap().packs_deleted > 0);
        };
        let hook = OnStart(gc_now, Default::default());
        let e = src.sync_point(&m.id, &dst, &hook).unwrap_err();
        assert!(
            matches!(e, StoreError::PointRobbed { .. }) && e.is_temporary(),
            "source {n}: {e}"
        );
        assert!(
            dst.list_points().unwrap().is_empty(),
            "source {n}: a point naming deleted chunks was published"
        );
        // Copied again, it stores the chunks anew and restores.
        let s = src.sync_point(&m.id, &dst, &()).unwrap();
        assert!(s.chunks_copied > 0, "source {n}: {s:?}");
        let out = work.join("out.img");
        dst.restore_disk(&m.id, "data", &out, &()).unwrap();
        assert_same(&image, &out);
    }
}
