//! Templates: no data copied, gc roots, untouched by prune, verified,
//! sealed in encrypted stores, copied between stores.

use super::*;

fn no_grace() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    }
}

#[test]
fn template_shares_its_points_chunks_and_survives_prune_and_gc() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 71);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    let before = f.ds.stats().unwrap();

    let t = f.ds.create_template("base", &m.id).unwrap();
    assert_eq!(t.source, m.id);
    assert_eq!(t.point, m, "the template holds the point's manifest");
    assert_eq!(t.point.config, serde_json::json!({"cpus": 2}));
    // No chunk copied: the packs are the same, one small object added.
    let after = f.ds.stats().unwrap();
    assert_eq!((after.packs, after.chunks), (before.packs, before.chunks));
    let obj = fs::metadata(f.root.join(template_path("base")))
        .unwrap()
        .len();
    assert!(obj < 8192, "template object is {obj} bytes");
    // Names are unique, and checked.
    let e = f.ds.create_template("base", &m.id).unwrap_err();
    assert!(matches!(e, StoreError::TemplateExists(..)), "{e}");
    let e = f.ds.create_template("../x", &m.id).unwrap_err();
    assert!(matches!(e, StoreError::InvalidTemplateName(..)), "{e}");
    assert_eq!(
        f.ds.list_templates()
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["base"]
    );

    // Retention never removes a template; the point goes.
    let r =
        f.ds.prune(
            &standby_types::Retention {
                keep_last: 1,
                ..Default::default()
            },
            None,
            false,
        )
        .unwrap();
    assert!(r.removed.is_empty());
    let (m2, _) = backup(&f.ds, "pbx1", &f.work.join("disk.img"), opts());
    std::fs::remove_file(f.root.join(m.id.manifest_path())).unwrap();
    std::fs::remove_file(f.root.join(m2.id.manifest_path())).unwrap();
    assert!(f.ds.list_points().unwrap().is_empty());
    assert!(f.ds.has_template("base").unwrap());

    // gc after the point is gone keeps every chunk the template names.
    let r = f.ds.gc(no_grace(), &()).unwrap();
    assert_eq!(r.packs_deleted, 0, "{r:?}");
    assert_eq!(r.live_chunks_unlocated, 0);
    let out = f.work.join("restored.img");
    let s =
        f.ds.restore_template_disk("base", "data", &out, &())
            .unwrap();
    assert_same(&image, &out);
    // Sparse: the zero regions are holes.
    let allocated = fs::metadata(&out).unwrap().blocks() * 512;
    assert!(allocated < s.size, "{allocated} of {} allocated", s.size);
    // Verify covers the template's chunks.
    let v = f.ds.verify(&()).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.templates_checked, 1);
    assert!(v.chunks_checked > 0);

    // Deleted, its chunks go at the next gc.
    assert!(f.ds.delete_template("base").unwrap());
    assert!(!f.ds.delete_template("base").unwrap());
    let r = f.ds.gc(no_grace(), &()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    assert_eq!(f.ds.stats().unwrap().chunks, 0);
}

#[test]
fn verify_reports_a_damaged_template_chunk_and_a_tampered_template() {
    let f = fixture();
    let image = f.work.join("disk.img");
    make_image(&image, 1 << 20, 72);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    f.ds.create_template("base", &m.id).unwrap();
    fs::remove_file(f.root.join(m.id.manifest_path())).unwrap();
    let (id, loc) = some_chunk(&f.ds, &m);
    flip(
        &pack_file(&f.root, &loc.pack),
        loc.offset + u64::from(loc.len) / 2,
    );
    let v = f.ds.verify(&()).unwrap();
    let p = v
        .problems
        .iter()
        .find(|p| p.object.contains(&id.to_string()))
        .unwrap_or_else(|| panic!("{:?}", v.problems));
    assert_eq!(p.disk.as_deref(), Some("data (template base)"));

    // An edited template does not read: its MAC no longer checks.
    let path = f.root.join(template_path("base"));
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("\"cpus\": 2", "\"cpus\": 64")).unwrap();
    let e = f.ds.load_template("base").unwrap_err();
    assert!(chain(&e).contains("MAC mismatch"), "{}", chain(&e));
    let v = f.ds.verify(&()).unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| p.object.contains("templates/base.json")),
        "{:?}",
        v.problems
    );
    // gc cannot know what an unreadable template needs: it stops.
    assert!(f.ds.gc(no_grace(), &()).is_err());
    // A point's manifest put at a template's path does not read either.
    fs::copy(
        f.root.join(template_path("base")),
        f.root.join(template_path("other")),
    )
    .unwrap();
    let e = f.ds.load_template("other").unwrap_err();
    assert!(matches!(e, StoreError::BadTemplate { .. }), "{e}");
}

#[test]
fn an_encrypted_store_seals_its_templates() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    generate_key_file(&key).unwrap();
    let root = dir.path().join("sealed");
    let ds = Datastore::create_encrypted(
        &root,
        &KeySource::File(key.clone()),
        StoreOptions::default(),
    )
    .unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 1 << 20, 73);
    let mut meta = meta("pbx1");
    meta.config = serde_json::json!({"qemu": {"memory_mib": 256}, "secret": "sip-trunk-password"});
    let mut w = ds.begin_point(meta).unwrap();
    w.write_disk("data", &image, opts(), &()).unwrap();
    let m = w.commit().unwrap();
    ds.create_template("base-image", &m.id).unwrap();
    let bytes = fs::read(root.join(template_path("base-image"))).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\"sealed\""), "{text}");
    for clear in ["sip-trunk-password", "memory_mib", "pbx1", "base-image"] {
        assert!(!text.contains(clear), "{clear} in the clear: {text}");
    }
    // It reads back with the key, in a new handle too.
    let again =
        Datastore::open_with_key(&root, &KeySource::File(key), StoreOptions::default()).unwrap();
    let t = again.load_template("base-image").unwrap();
    assert_eq!(t.point.config["secret"], "sip-trunk-password");
    // Under another name the seal does not open.
    fs::copy(
        root.join(template_path("base-image")),
        root.join(template_path("other")),
    )
    .unwrap();
    let e = again.load_template("other").unwrap_err();
    assert!(chain(&e).contains("authentication failed"), "{}", chain(&e));
    let out = dir.path().join("out.img");
    again
        .restore_template_disk("base-image", "data", &out, &())
        .unwrap();
    assert_same(&image, &out);
}

#[test]
fn a_template_is_copied_with_only_the_chunks_the_destination_lacks() {
    let f = fixture();
    let dst = Datastore::open_or_create(&f.work.join("dst")).unwrap();
    let image = f.work.join("disk.img");
    make_image(&image, 2 << 20, 74);
    let (m, _) = backup(&f.ds, "pbx1", &image, opts());
    f.ds.create_template("base", &m.id).unwrap();
    // The point is at the destination already (the group copies it):
    // the template costs no chunk there.
    f.ds.sync_point(&m.id, &dst, &()).unwrap();
    let before = dst.stats().unwrap();
    let s = f.ds.sync_template("base", &dst, &()).unwrap();
    assert_eq!(s.chunks_copied, 0, "{s:?}");
    assert!(s.chunks_skipped > 0);
    assert_eq!(dst.stats().unwrap().packs, before.packs);
    assert_eq!(dst.load_template("base").unwrap().source, m.id);
    assert!(
        f.ds.sync_template("base", &dst, &())
            .unwrap()
            .already_present
    );

    // Without the point there, the chunks go along; restorable after
    // the source point is gone everywhere and gc ran.
    let other = Datastore::open_or_create(&f.work.join("other")).unwrap();
    fs::remove_file(f.root.join(m.id.manifest_path())).unwrap();
    let s = f.ds.sync_template("base", &other, &()).unwrap();
    assert!(
        s.chunks_copied > 0 && s.chunks_verified == s.chunks_copied,
        "{s:?}"
    );
    other.gc(no_grace(), &()).unwrap();
    let out = f.work.join("out.img");
    other
        .restore_template_disk("base", "data", &out, &())
        .unwrap();
    assert_same(&image, &out);

    // To an encrypted store it goes through the point, re-encoded.
    let key = f.work.join("key");
    generate_key_file(&key).unwrap();
    let enc = Datastore::create_encrypted(
        &f.work.join("enc"),
        &KeySource::File(key),
        StoreOptions::default(),
    )
    .unwrap();
    let e = f.ds.sync_template("base", &enc, &()).unwrap_err();
    assert!(chain(&e).contains("is gone"), "{}", chain(&e));
    let (m3, _) = backup(&f.ds, "pbx1", &image, opts());
    f.ds.create_template("base3", &m3.id).unwrap();
    f.ds.sync_template("base3", &enc, &()).unwrap();
    let t = enc.load_template("base3").unwrap();
    assert_ne!(t.point.disks[0].index, m3.disks[0].index, "re-encoded ids");
    let out = f.work.join("enc.img");
    enc.restore_template_disk("base3", "data", &out, &())
        .unwrap();
    assert_same(&image, &out);
}
