//! Encrypted datastores on object stores: encryption and the backend are
//! independent, so everything an encrypted local store does (keys, sealed
//! objects, re-encoding sync, tamper detection) works on Azure and S3, with
//! the batched ranged reads and leases of an object store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use standby_store::backend::Backend;
use standby_store::{
    Datastore, GcOptions, KdfParams, KeySource, ObjectBackend, ObjectStoreConfig, PackId,
    StoreError, generate_key_file,
};
use standby_types::Retention;

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

/// Argon2id at its cheapest: these tests are about storage, not cost.
const KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// A key file in `dir`.
fn key_file(dir: &Path, name: &str) -> (KeySource, PathBuf) {
    let path = dir.join(name);
    generate_key_file(&path).unwrap();
    (KeySource::File(path.clone()), path)
}

fn backend(cfg: &ObjectStoreConfig) -> Arc<ObjectBackend> {
    Arc::new(ObjectBackend::new(cfg).unwrap())
}

fn create(cfg: &ObjectStoreConfig, key: &KeySource) -> (Datastore, Arc<ObjectBackend>) {
    let b = backend(cfg);
    let ds = Datastore::create_encrypted_on_with_kdf(b.clone(), key, KDF, small_packs()).unwrap();
    (ds, b)
}

fn open_keyed(cfg: &ObjectStoreConfig, key: &KeySource) -> Result<Datastore, StoreError> {
    Datastore::open_on_with_key(backend(cfg), key, small_packs())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Write a point, restore it byte-identical from another handle; nothing
/// readable is stored; the key decides who opens the store.
fn write_and_restore(kind: Kind) {
    let server = Server::start(kind);
    let cfg = config(&server, "site/enc");
    let work = tempfile::tempdir().unwrap();
    let (key, key_path) = key_file(work.path(), "store.key");
    let (ds, b) = create(&cfg, &key);
    assert!(ds.is_encrypted());
    let image = work.path().join("disk.img");
    make_image(&image, 32 << 20, 21, 0.5);
    let m = backup(&ds, "vm1", &image);

    // Nothing stored shows the data, the point's metadata or the key.
    let key_hex = std::fs::read_to_string(&key_path).unwrap();
    let objects = b.list("").unwrap();
    assert!(objects.iter().any(|o| o.path.ends_with(".pack")));
    assert_eq!(
        objects
            .iter()
            .filter(|o| o.path.starts_with("keys/"))
            .count(),
        1,
        "{objects:?}"
    );
    for o in &objects {
        let bytes = b.get(&o.path).unwrap();
        assert!(!contains(&bytes, b"compressible"), "{} shows data", o.path);
        assert!(!contains(&bytes, b"site1"), "{} shows metadata", o.path);
        assert!(!contains(&bytes, key_hex.trim().as_bytes()), "{}", o.path);
    }

    // Another handle (another process) with the key restores it, reading
    // the chunks in ranged batches.
    let ds2_backend = backend(&cfg);
    let ds2 = Datastore::open_on_with_key(ds2_backend.clone(), &key, small_packs()).unwrap();
    assert_eq!(ds2.list_points().unwrap().len(), 1);
    let out = work.path().join("restored.img");
    ds2.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
    let chunks = (32u64 << 20) / (64 << 10);
    let s = ds2_backend.stats();
    assert!(s.requests < chunks / 4, "{s:?} for {chunks} chunks");

    // Verify, whole and sampled, opens every blob it reads.
    let full = ds2.verify(&()).unwrap();
    assert!(full.ok(), "{:?}", full.problems);
    assert_eq!(full.chunks_checked, full.chunks_referenced);
    let sample = ds2.verify_sample(0.3, 7, &()).unwrap();
    assert!(sample.ok(), "{:?}", sample.problems);
    assert!(sample.chunks_checked > 0 && sample.chunks_checked < sample.chunks_referenced);

    // Wrong key: the clear wrong-key error, naming the store, not worth
    // retrying; no key, or a plain open, is refused too.
    let expected = format!(
        "wrong key for datastore {}: no key object opens with it",
        cfg.location()
    );
    let (other, _) = key_file(work.path(), "other.key");
    for wrong in [other, KeySource::Passphrase("guess".into())] {
        let e = open_keyed(&cfg, &wrong).unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert_eq!(e.to_string(), expected);
        assert!(!e.is_temporary());
    }
    let e = Datastore::open_on(backend(&cfg), small_packs()).unwrap_err();
    assert!(matches!(e, StoreError::KeyRequired { .. }), "{e}");
    let e = Datastore::open_or_create_on(backend(&cfg), small_packs()).unwrap_err();
    assert!(matches!(e, StoreError::KeyRequired { .. }), "{e}");

    // The store is there: a second create is refused and leaves no key
    // object behind.
    let e = Datastore::create_encrypted_on_with_kdf(backend(&cfg), &key, KDF, small_packs())
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert_eq!(b.list("keys").unwrap().len(), 1);

    // A passphrase added next to the key file opens the same store.
    let pass = KeySource::Passphrase("correct horse battery staple".into());
    let object = ds2.add_key_with_kdf(&key, &pass, KDF).unwrap();
    assert!(b.exists(&object).unwrap());
    let by_pass = open_keyed(&cfg, &pass).unwrap();
    let out2 = work.path().join("by-pass.img");
    by_pass.restore_disk(&m.id, "data", &out2, &()).unwrap();
    assert_same(&image, &out2);

    // A plain store takes no key.
    let plain_cfg = config(&server, "plain");
    let _ = open(&plain_cfg);
    let e = open_keyed(&plain_cfg, &key).unwrap_err();
    assert!(matches!(e, StoreError::NotEncrypted { .. }), "{e}");
}

#[test]
fn azure_encrypted_write_and_restore() {
    write_and_restore(Kind::Azurite);
}

#[test]
fn s3_encrypted_write_and_restore() {
    write_and_restore(Kind::Moto);
}

/// Plain local → encrypted cloud → plain local, byte-identical, the second
/// point uploading only what changed; then prune and gc on the encrypted
/// cloud store (gc's lease) and the kept point still restores.
fn sync_across_schemes(kind: Kind) {
    let server = Server::start(kind);
    let work = tempfile::tempdir().unwrap();
    let (key, _) = key_file(work.path(), "cloud.key");
    let local = Datastore::open_or_create_with(&work.path().join("local"), small_packs()).unwrap();
    let a = work.path().join("a.img");
    make_image(&a, 24 << 20, 31, 0.8);
    let pa = backup(&local, "vm1", &a);
    // The second point changes one chunk in eight.
    let b_img = work.path().join("b.img");
    let mut data = std::fs::read(&a).unwrap();
    let fresh = work.path().join("fresh.img");
    make_image(&fresh, 24 << 20, 32, 1.0);
    let fresh = std::fs::read(&fresh).unwrap();
    let cs = 64 << 10;
    for (k, chunk) in data.chunks_mut(cs).enumerate() {
        if k % 8 == 0 {
            chunk.copy_from_slice(&fresh[k * cs..(k + 1) * cs]);
        }
    }
    std::fs::write(&b_img, &data).unwrap();
    let pb = backup(&local, "vm1", &b_img);

    let cfg = config(&server, "dr");
    let (cloud, cloud_backend) = create(&cfg, &key);
    let first = local.sync_point(&pa.id, &cloud, &()).unwrap();
    assert!(first.chunks_copied > 200, "{first:?}");
    let second = local.sync_point(&pb.id, &cloud, &()).unwrap();
    assert!(
        second.chunks_copied * 4 < first.chunks_copied,
        "only the changed chunks: {second:?} after {first:?}"
    );
    assert!(
        local
            .sync_point(&pb.id, &cloud, &())
            .unwrap()
            .already_present
    );
    // Leases were taken and given back.
    assert!(cloud_backend.list("locks/shared").unwrap().is_empty());

    // The cloud store holds sealed data under its own ids.
    let reopened = open_keyed(&cfg, &key).unwrap();
    assert!(reopened.verify(&()).unwrap().ok());
    let out = work.path().join("from-cloud.img");
    reopened.restore_disk(&pb.id, "data", &out, &()).unwrap();
    assert_same(&b_img, &out);

    // Back to a fresh plain local store: re-encoded again, reading the
    // cloud store in ranged batches.
    let before = cloud_backend.stats();
    let local2 = Datastore::open_or_create(&work.path().join("local2")).unwrap();
    let back = reopened.sync_point(&pa.id, &local2, &()).unwrap();
    assert!(back.chunks_copied > 200, "{back:?}");
    let down = cloud_backend.stats();
    assert!(
        down.requests - before.requests < back.chunks_copied / 8,
        "{down:?} for {} chunks",
        back.chunks_copied
    );
    reopened.sync_point(&pb.id, &local2, &()).unwrap();
    assert!(!local2.is_encrypted());
    assert!(local2.verify(&()).unwrap().ok());
    for (point, image) in [(&pa, &a), (&pb, &b_img)] {
        let out = work.path().join("from-local2.img");
        local2.restore_disk(&point.id, "data", &out, &()).unwrap();
        assert_same(image, &out);
    }

    // gc on the encrypted cloud store: drops the first point's own chunks,
    // keeps the second whole.
    let pruned = reopened
        .prune(
            &Retention {
                keep_last: 1,
                ..Default::default()
            },
            Some("vm1"),
            false,
        )
        .unwrap();
    assert_eq!(pruned.removed.len(), 1);
    let report = reopened
        .gc(
            GcOptions {
                grace: Duration::ZERO,
                repack_threshold: 0.05,
                ..Default::default()
            },
            &(),
        )
        .unwrap();
    assert!(report.chunks_removed > 0, "{report:?}");
    assert!(!cloud_backend.exists("locks/gc.lease").unwrap());
    let after_gc = open_keyed(&cfg, &key).unwrap();
    assert!(after_gc.verify(&()).unwrap().ok());
    let out = work.path().join("after-gc.img");
    after_gc.restore_disk(&pb.id, "data", &out, &()).unwrap();
    assert_same(&b_img, &out);
}

#[test]
fn azure_sync_plain_encrypted_plain() {
    sync_across_schemes(Kind::Azurite);
}

#[test]
fn s3_sync_plain_encrypted_plain() {
    sync_across_schemes(Kind::Moto);
}

/// Flip one byte of an object in place.
fn flip(b: &dyn Backend, path: &str, at: usize) -> Vec<u8> {
    let original = b.get(path).unwrap();
    let mut bytes = original.clone();
    bytes[at] ^= 0x20;
    b.put(path, &bytes).unwrap();
    original
}

/// Change one hex digit of the `"sealed"` field of a JSON object.
fn flip_sealed(b: &dyn Backend, path: &str) -> Vec<u8> {
    let original = b.get(path).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let at = text.find("\"sealed\": \"").unwrap() + 30;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    b.put(path, &bytes).unwrap();
    original
}

/// A tampered pack, manifest or key object is an error naming the object,
/// never wrong data.
fn tampered(kind: Kind) {
    let server = Server::start(kind);
    let cfg = config(&server, "t");
    let work = tempfile::tempdir().unwrap();
    let (key, _) = key_file(work.path(), "store.key");
    let (ds, b) = create(&cfg, &key);
    let image = work.path().join("disk.img");
    make_image(&image, 16 << 20, 41, 0.6);
    let m = backup(&ds, "vm1", &image);
    let out = work.path().join("out.img");

    // A pack: verify (whole and sampled) and restore name the chunk and
    // its pack; nothing is left behind.
    let pack = b
        .list("packs")
        .unwrap()
        .into_iter()
        .find(|o| o.path.ends_with(".pack"))
        .unwrap();
    let (pack_id, _) = PackId::from_path(&pack.path).unwrap();
    let original = flip(b.as_ref(), &pack.path, pack.size as usize / 2);
    let ds = open_keyed(&cfg, &key).unwrap();
    let report = ds.verify(&()).unwrap();
    assert!(!report.ok());
    let p = &report.problems[0];
    assert!(
        p.object.starts_with("chunk") && p.object.contains(&pack_id.to_string()),
        "{p}"
    );
    assert_eq!(p.point.as_ref(), Some(&m.id));
    assert_eq!(
        ds.verify_sample(1.0, 3, &()).unwrap().problems,
        report.problems
    );
    let e = ds.restore_disk(&m.id, "data", &out, &()).unwrap_err();
    let text = chain(&e);
    assert!(
        text.contains("corrupt chunk") && text.contains(&pack_id.to_string()),
        "{text}"
    );
    assert!(!e.is_temporary());
    assert!(!out.exists(), "no wrong data left behind");
    b.put(&pack.path, &original).unwrap();

    // A manifest: sealed, so an edit fails to authenticate.
    let manifest = m.id.manifest_path();
    let original = flip_sealed(b.as_ref(), &manifest);
    let ds = open_keyed(&cfg, &key).unwrap();
    let report = ds.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&manifest) && p.message.contains("authentication")),
        "{:?}",
        report.problems
    );
    let e = ds.restore_disk(&m.id, "data", &out, &()).unwrap_err();
    assert!(chain(&e).contains(&manifest), "{}", chain(&e));
    assert!(!out.exists());
    b.put(&manifest, &original).unwrap();

    // The key object: named at open, not taken for a wrong key.
    let object = b.list("keys").unwrap().remove(0).path;
    let original = flip_sealed(b.as_ref(), &object);
    let e = open_keyed(&cfg, &key).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&object), "{e}");
    b.put(&object, &original).unwrap();

    // All put back: whole again.
    let ds = open_keyed(&cfg, &key).unwrap();
    assert!(ds.verify(&()).unwrap().ok());
    ds.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
}

#[test]
fn azure_encrypted_tampered_objects_are_named() {
    tampered(Kind::Azurite);
}

#[test]
fn s3_encrypted_tampered_objects_are_named() {
    tampered(Kind::Moto);
}
