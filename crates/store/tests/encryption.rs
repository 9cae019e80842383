//! Encrypted datastores, as a user meets them: points written and
//! restored byte-identical, nothing readable in the stored bytes, a wrong
//! key refused at open, every tampered object named and never turned into
//! wrong data, and sync between stores of different schemes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use standby_store::{
    Consistency, Datastore, DiskWriteOptions, KdfParams, KeySource, PointMeta, StoreError,
    StoreOptions, generate_key_file,
};
use standby_types::error_chain as chain;

/// Cheap Argon2id, so tests do not spend half a second per open.
const KDF: KdfParams = KdfParams {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};
const MARKER: &[u8] = b"STANDBY-PLAINTEXT-MARKER-0f3a9c";
const CS: usize = 64 << 10;

fn meta() -> PointMeta {
    PointMeta {
        vm: "pbx1".into(),
        site: "site1".into(),
        consistency: Consistency::Application,
        config: serde_json::json!({"note": String::from_utf8_lossy(MARKER)}),
        labels: BTreeMap::from([("tag".into(), String::from_utf8_lossy(MARKER).into())]),
    }
}

/// `chunks` chunks of 64 KiB: every third the marker repeated, every
/// fifth zeros, the rest pseudo-random (seeded).
fn make_image(path: &Path, chunks: usize, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut x = seed | 1;
    let mut buf = vec![0u8; CS];
    for n in 0..chunks {
        if n % 5 == 0 {
            buf.fill(0);
        } else if n % 3 == 0 {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = MARKER[i % MARKER.len()];
            }
            buf[..8].copy_from_slice(&(n as u64).to_le_bytes());
        } else {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        f.write_all(&buf).unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn with_ext(root: &Path, ext: &str) -> Vec<PathBuf> {
    files(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn backup(ds: &Datastore, image: &Path) -> standby_store::Manifest {
    let mut w = ds.begin_point(meta()).unwrap();
    w.write_disk("data", image, DiskWriteOptions::default(), &())
        .unwrap();
    w.commit().unwrap()
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    keyfile: PathBuf,
    image: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let keyfile = dir.path().join("store.key");
        generate_key_file(&keyfile).unwrap();
        let image = dir.path().join("disk.img");
        make_image(&image, 64, 7);
        Fixture {
            dir,
            root,
            keyfile,
            image,
        }
    }

    fn key(&self) -> KeySource {
        KeySource::File(self.keyfile.clone())
    }

    fn create(&self) -> Datastore {
        Datastore::create_encrypted_with_kdf(&self.root, &self.key(), KDF, StoreOptions::default())
            .unwrap()
    }

    fn open(&self) -> Result<Datastore, StoreError> {
        Datastore::open_with_key(&self.root, &self.key(), StoreOptions::default())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn encrypted_round_trip_with_nothing_readable_stored() {
    let f = Fixture::new();
    let ds = f.create();
    assert!(ds.is_encrypted());
    let m = backup(&ds, &f.image);
    let out = f.path("restored.img");
    ds.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert!(same(&f.image, &out), "restore is byte-identical");

    // A second handle, opened with the key, reads the same point, and an
    // unchanged disk adds no chunk (keyed ids deduplicate as plain ones).
    let again = f.open().unwrap();
    let loaded = again.load_manifest(&m.id).unwrap();
    assert_eq!(loaded.config, meta().config);
    let before = again.stats().unwrap().chunks;
    let m2 = backup(&again, &f.image);
    assert_eq!(m2.disks[0].new_chunks, 0);
    assert_eq!(again.stats().unwrap().chunks, before);
    assert!(again.verify(&()).unwrap().ok());

    // No stored file holds the marker, the key file's text, or even a
    // plain BLAKE3 id of a chunk.
    let key_hex = std::fs::read_to_string(&f.keyfile).unwrap();
    let plain_id = blake3::hash(&std::fs::read(&f.image).unwrap()[3 * CS..4 * CS]);
    let stored = files(&f.root);
    assert!(
        stored
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "pack"))
    );
    for path in &stored {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !contains(&bytes, MARKER),
            "{} holds plaintext",
            path.display()
        );
        assert!(!contains(&bytes, key_hex.trim().as_bytes()));
        assert!(!contains(&bytes, plain_id.as_bytes()));
        assert!(!contains(&bytes, plain_id.to_hex().as_bytes()));
    }
    let marker = std::fs::read_to_string(f.root.join("standby-store.json")).unwrap();
    assert!(
        marker.contains("\"encryption\": \"xchacha20poly1305\""),
        "{marker}"
    );
    assert!(
        marker.contains("\"chunk_hash\": \"blake3-keyed\""),
        "{marker}"
    );

    // The same disk in an unencrypted store does show the marker: the
    // check above would have seen it.
    let plain = Datastore::open_or_create(&f.path("plain")).unwrap();
    assert!(!plain.is_encrypted());
    backup(&plain, &f.image);
    assert!(
        files(&f.path("plain"))
            .iter()
            .any(|p| contains(&std::fs::read(p).unwrap(), MARKER))
    );
}

#[test]
fn wrong_or_missing_key_is_refused_at_open() {
    let f = Fixture::new();
    f.create();
    let other = f.path("other.key");
    generate_key_file(&other).unwrap();
    let expected = format!(
        "wrong key for datastore {}: no key object opens with it",
        f.root.display()
    );
    let e = Datastore::open_with_key(&f.root, &KeySource::File(other), StoreOptions::default())
        .unwrap_err();
    assert_eq!(e.to_string(), expected);
    let e = Datastore::open_with_key(
        &f.root,
        &KeySource::Passphrase("guess".into()),
        StoreOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), expected);

    let e = Datastore::open(&f.root).unwrap_err();
    assert!(matches!(e, StoreError::KeyRequired { .. }), "{e}");
    assert!(e.to_string().contains("is encrypted"), "{e}");
    assert!(Datastore::open_or_create(&f.root).is_err());

    let plain = f.path("plain");
    Datastore::open_or_create(&plain).unwrap();
    let e = Datastore::open_with_key(&plain, &f.key(), StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::NotEncrypted { .. }), "{e}");

    // A key file that is not one says so, without echoing its content.
    let junk = f.path("junk.key");
    std::fs::write(&junk, "hunter2 is not a key").unwrap();
    let e = Datastore::open_with_key(&f.root, &KeySource::File(junk), StoreOptions::default())
        .unwrap_err();
    assert!(!chain(&e).contains("hunter2"), "{e}");
    // An existing directory is never turned into a store.
    let e = Datastore::create_encrypted_with_kdf(&f.root, &f.key(), KDF, StoreOptions::default())
        .unwrap_err();
    assert!(matches!(e, StoreError::NotADatastore { .. }), "{e}");
}

#[test]
fn a_passphrase_added_next_to_the_key_file_opens_the_same_store() {
    let f = Fixture::new();
    let ds = f.create();
    let m = backup(&ds, &f.image);
    let pass = KeySource::Passphrase("correct horse battery staple".into());
    let wrong = KeySource::Passphrase("incorrect horse".into());
    let e = ds.add_key_with_kdf(&wrong, &pass, KDF).unwrap_err();
    assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
    let object = ds.add_key_with_kdf(&f.key(), &pass, KDF).unwrap();
    assert!(object.starts_with("keys/"), "{object}");
    assert_eq!(with_ext(&f.root.join("keys"), "json").len(), 2);

    let by_pass = Datastore::open_with_key(&f.root, &pass, StoreOptions::default()).unwrap();
    let out = f.path("out.img");
    by_pass.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert!(same(&f.image, &out));
    // The key file still works, and the passphrase is stored nowhere.
    f.open().unwrap();
    for path in files(&f.root) {
        assert!(!contains(
            &std::fs::read(&path).unwrap(),
            b"correct horse battery staple"
        ));
    }
    let plain = Datastore::open_or_create(&f.path("plain")).unwrap();
    assert!(matches!(
        plain.add_key_with_kdf(&f.key(), &pass, KDF),
        Err(StoreError::NotEncrypted { .. })
    ));
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let f = Fixture::new();
    let ds = f.create();
    let key_hex = std::fs::read_to_string(&f.keyfile).unwrap();
    let pass = KeySource::Passphrase("s3cret-passphrase".into());
    let texts = [
        format!("{ds:?}"),
        format!("{ds:#?}"),
        format!("{pass:?}"),
        format!("{pass}"),
        format!("{:?}", f.key()),
        chain(&Datastore::open_with_key(&f.root, &pass, StoreOptions::default()).unwrap_err()),
    ];
    for text in texts {
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains(key_hex.trim()), "{text}");
        assert!(!text.contains(&key_hex.trim()[..16]), "{text}");
    }
}

/// Flip one byte of a file.
fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// Restore must fail, naming `object`, and leave no file behind.
fn restore_fails(f: &Fixture, id: &standby_store::PointId, object: &str) {
    let out = f.path("tampered.img");
    let e = f
        .open()
        .and_then(|ds| ds.restore_disk(id, "data", &out, &()))
        .unwrap_err();
    assert!(chain(&e).contains(object), "{object} not in: {}", chain(&e));
    assert!(!out.exists());
}

#[test]
fn a_tampered_pack_is_named_by_verify_and_restore() {
    let f = Fixture::new();
    let ds = f.create();
    let m = backup(&ds, &f.image);
    let pack = with_ext(&f.root, "pack").remove(0);
    let pack_id = pack.file_stem().unwrap().to_string_lossy().into_owned();
    // Inside the first blob's sealed payload.
    flip(&pack, 8 + 20 + 100);
    let report = f.open().unwrap().verify(&()).unwrap();
    assert!(!report.ok());
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&pack_id) && p.object.starts_with("chunk")),
        "{:?}",
        report.problems
    );
    restore_fails(&f, &m.id, &pack_id);
}

#[test]
fn a_tampered_index_is_named_and_its_blobs_still_authenticate() {
    let f = Fixture::new();
    let ds = f.create();
    let m = backup(&ds, &f.image);
    let idx = with_ext(&f.root, "idx").remove(0);
    let name = idx.file_name().unwrap().to_string_lossy().into_owned();
    // The MAC trailer: the entries are intact, so data still restores
    // right, but verify names the index.
    let len = std::fs::metadata(&idx).unwrap().len() as usize;
    flip(&idx, len - 3);
    let report = f.open().unwrap().verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&name) && p.message.contains("MAC mismatch")),
        "{:?}",
        report.problems
    );
    let out = f.path("out.img");
    f.open()
        .unwrap()
        .restore_disk(&m.id, "data", &out, &())
        .unwrap();
    assert!(same(&f.image, &out));
}

#[test]
fn a_blob_moved_to_another_id_never_opens() {
    let f = Fixture::new();
    let ds = f.create();
    let m = backup(&ds, &f.image);
    let idx = with_ext(&f.root, "idx").remove(0);
    // Swap the chunk ids of the first two entries: each id now points at
    // the other's blob (an attacker cannot fix the MAC).
    let mut bytes = std::fs::read(&idx).unwrap();
    let (a, b) = (28, 28 + 45);
    let id_a: Vec<u8> = bytes[a..a + 32].to_vec();
    let id_b: Vec<u8> = bytes[b..b + 32].to_vec();
    bytes[a..a + 32].copy_from_slice(&id_b);
    bytes[b..b + 32].copy_from_slice(&id_a);
    std::fs::write(&idx, bytes).unwrap();
    let (hex_a, hex_b) = (hex(&id_a), hex(&id_b));
    let report = f.open().unwrap().verify(&()).unwrap();
    for id in [&hex_a, &hex_b] {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.object.contains(id.as_str()) && p.message.contains("authentication")),
            "{id}: {:?}",
            report.problems
        );
    }
    let out = f.path("tampered.img");
    let e = f
        .open()
        .unwrap()
        .restore_disk(&m.id, "data", &out, &())
        .unwrap_err();
    let text = chain(&e);
    assert!(text.contains(&hex_a) || text.contains(&hex_b), "{text}");
    assert!(!out.exists());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_tampered_manifest_is_named_by_verify_and_restore() {
    let f = Fixture::new();
    let ds = f.create();
    let m = backup(&ds, &f.image);
    let path = f.root.join(m.id.manifest_path());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("pbx1\""), "the manifest is sealed: {text}");
    // Change one hex digit of the sealed part: still well-formed JSON.
    let at = text.find("\"sealed\": \"").unwrap() + 40;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, bytes).unwrap();
    let report = f.open().unwrap().verify(&()).unwrap();
    let manifest = m.id.manifest_path();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&manifest) && p.message.contains("authentication")),
        "{:?}",
        report.problems
    );
    restore_fails(&f, &m.id, &manifest);

    // A sealed manifest copied to another point's path does not open
    // either: the path is bound to it.
    let ds = f.open().unwrap();
    let m2 = backup(&ds, &f.image);
    let m3 = backup(&ds, &f.image);
    std::fs::copy(
        f.root.join(m2.id.manifest_path()),
        f.root.join(m3.id.manifest_path()),
    )
    .unwrap();
    let e = ds.load_manifest(&m3.id).unwrap_err();
    assert!(chain(&e).contains(&m3.id.manifest_path()), "{e}");
}

#[test]
fn a_tampered_key_object_is_named_at_open() {
    let f = Fixture::new();
    f.create();
    let object = with_ext(&f.root.join("keys"), "json").remove(0);
    let name = format!("keys/{}", object.file_name().unwrap().to_string_lossy());
    let text = std::fs::read_to_string(&object).unwrap();
    let at = text.find("\"sealed\": \"").unwrap() + 30;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&object, bytes).unwrap();
    let e = f.open().unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&name), "{e}");
}

#[test]
fn sync_plain_to_encrypted_and_back_is_byte_identical_and_incremental() {
    let f = Fixture::new();
    let plain = Datastore::open_or_create(&f.path("site")).unwrap();
    let cloud = f.create();
    // 256 chunks of 64 KiB, most of them random.
    let image = f.path("big.img");
    make_image(&image, 256, 11);
    let m1 = backup(&plain, &image);
    let s1 = plain.sync_point(&m1.id, &cloud, &()).unwrap();
    assert!(s1.chunks_copied > 150, "{s1:?}");
    assert!(cloud.verify(&()).unwrap().ok());

    // Ids differ between the schemes.
    let in_cloud = cloud.load_manifest(&m1.id).unwrap();
    assert_ne!(in_cloud.disks[0].index, m1.disks[0].index);
    assert_eq!(in_cloud.config, m1.config);

    // About 2 %: 5 scattered 4 KiB writes.
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    let changed = [7usize, 61, 100, 171, 222];
    for &c in &changed {
        use std::os::unix::fs::FileExt;
        data.write_all_at(&[0xa5; 4096], (c * CS + 8192) as u64)
            .unwrap();
    }
    drop(data);
    let m2 = backup(&plain, &image);
    let s2 = plain.sync_point(&m2.id, &cloud, &()).unwrap();
    // The changed chunks and one index chunk, nothing else.
    assert_eq!(s2.chunks_copied, changed.len() as u64 + 1, "{s2:?}");
    assert!(
        s2.bytes_copied < 2 * (changed.len() as u64 + 1) * CS as u64,
        "{s2:?}"
    );
    assert_eq!(
        plain.sync_point(&m2.id, &cloud, &()).unwrap().chunks_copied,
        0
    );

    // And back into a fresh unencrypted store, from the cloud alone.
    let back = Datastore::open_or_create(&f.path("rebuilt")).unwrap();
    let cloud = f.open().unwrap();
    for m in [&m1, &m2] {
        cloud.sync_point(&m.id, &back, &()).unwrap();
    }
    let out = f.path("back.img");
    back.restore_disk(&m2.id, "data", &out, &()).unwrap();
    assert!(same(&image, &out));
    assert_eq!(
        back.load_manifest(&m2.id).unwrap().disks[0].index,
        m2.disks[0].index
    );
    let out1 = f.path("back1.img");
    cloud.restore_disk(&m1.id, "data", &out1, &()).unwrap();
    assert!(!same(&image, &out1));
    assert!(back.verify(&()).unwrap().ok());

    // Two encrypted stores with different keys re-encode too.
    let f2 = Fixture::new();
    let other = f2.create();
    cloud.sync_point(&m2.id, &other, &()).unwrap();
    other.restore_disk(&m2.id, "data", &out, &()).unwrap();
    assert!(same(&image, &out));
}

#[test]
fn gc_repacks_an_encrypted_store_and_its_points_still_restore() {
    let f = Fixture::new();
    let ds = f.create();
    let m1 = backup(&ds, &f.image);
    let second = f.path("second.img");
    make_image(&second, 64, 99);
    let m2 = backup(&ds, &second);
    // What prune does: the manifest goes, the data waits for gc.
    std::fs::remove_file(f.root.join(m1.id.manifest_path())).unwrap();
    let report = ds
        .gc(
            standby_store::GcOptions {
                grace: std::time::Duration::ZERO,
                repack_threshold: 0.0,
                dry_run: false,
            },
            &(),
        )
        .unwrap();
    assert!(
        report.packs_deleted + report.packs_repacked > 0,
        "{report:?}"
    );
    let ds = f.open().unwrap();
    assert!(ds.verify(&()).unwrap().ok());
    let out = f.path("out.img");
    ds.restore_disk(&m2.id, "data", &out, &()).unwrap();
    assert!(same(&second, &out));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn stores_sharing_keys_copy_blobs_as_they_are() {
    let f = Fixture::new();
    let ds = f.create();
    // A copy of the empty store has the same master keys.
    let twin_root = f.path("twin");
    copy_dir(&f.root, &twin_root);
    let twin = Datastore::open_with_key(&twin_root, &f.key(), StoreOptions::default()).unwrap();
    let m = backup(&ds, &f.image);
    let stats = ds.sync_point(&m.id, &twin, &()).unwrap();
    assert!(stats.chunks_copied > 0);
    // The twin's packs hold the very blobs of the original (a re-encoded
    // blob would have a fresh nonce).
    let original = std::fs::read(with_ext(&f.root, "pack").remove(0)).unwrap();
    let copied = std::fs::read(with_ext(&twin_root, "pack").remove(0)).unwrap();
    assert!(contains(&original, &copied[8..8 + 512]));
    assert_eq!(twin.load_manifest(&m.id).unwrap(), m);
    let out = f.path("out.img");
    twin.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert!(same(&f.image, &out));
    // An encrypted point read by an unencrypted handle never passes for
    // plain data: the manifest says it is sealed.
    let plain = Datastore::open_or_create(&f.path("plain")).unwrap();
    std::fs::create_dir_all(f.path("plain/manifests/pbx1")).unwrap();
    std::fs::copy(
        f.root.join(m.id.manifest_path()),
        f.path("plain").join(m.id.manifest_path()),
    )
    .unwrap();
    let e = plain.load_manifest(&m.id).unwrap_err();
    assert!(chain(&e).contains("encrypted"), "{e}");
}
