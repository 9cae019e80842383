//! Verify, prune, gc, leases, tampering and credentials on object stores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use standby_store::backend::Backend;
use standby_store::{Datastore, GcOptions, ObjectBackend, ObjectService, PackId, StoreError};
use standby_types::Retention;

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

fn verify_full_and_sampled(kind: Kind) {
    let server = Server::start(kind);
    let (cloud, backend) = open(&config(&server, "v"));
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    make_image(&image, 32 << 20, 5, 0.5);
    let m = backup(&cloud, "vm1", &image);

    let full = cloud.verify(&()).unwrap();
    assert!(full.ok(), "{:?}", full.problems);
    assert_eq!(full.sample_fraction, None);
    assert_eq!(full.chunks_checked, full.chunks_referenced);

    let before = backend.stats();
    let sample = cloud.verify_sample(0.2, 42, &()).unwrap();
    assert!(sample.ok());
    assert_eq!(sample.sample_fraction, Some(0.2));
    let share = sample.chunks_checked as f64 / sample.chunks_referenced as f64;
    assert!((0.1..0.3).contains(&share), "checked {share} of the chunks");
    let down = backend.stats().bytes_down - before.bytes_down;
    assert!(
        down < backend.stats().bytes_up / 2,
        "sampling read {down} bytes"
    );
    // The same seed picks the same chunks.
    let again = cloud.verify_sample(0.2, 42, &()).unwrap();
    assert_eq!(again.chunks_checked, sample.chunks_checked);

    // Tamper with one byte in the middle of a pack object.
    let pack = backend
        .list("packs")
        .unwrap()
        .into_iter()
        .find(|o| o.path.ends_with(".pack"))
        .unwrap();
    let mut bytes = backend.get(&pack.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    backend.put(&pack.path, &bytes).unwrap();
    let (pack_id, _) = PackId::from_path(&pack.path).unwrap();

    let report = cloud.verify(&()).unwrap();
    assert!(!report.ok());
    let p = &report.problems[0];
    assert!(
        p.object.contains("chunk") && p.object.contains(&pack_id.to_string()),
        "{p}"
    );
    assert_eq!(p.point.as_ref(), Some(&m.id));
    let sampled = cloud.verify_sample(1.0, 1, &()).unwrap();
    assert_eq!(sampled.problems, report.problems);

    let out = dir.path().join("out.img");
    let e = cloud.restore_disk(&m.id, "data", &out, &()).unwrap_err();
    let text = chain(&e);
    assert!(
        text.contains("corrupt chunk") && text.contains(&pack_id.to_string()),
        "{text}"
    );
    assert!(!e.is_temporary());
    assert!(!out.exists(), "no wrong data left behind");
}

#[test]
fn azure_verify_full_sampled_and_tampered() {
    verify_full_and_sampled(Kind::Azurite);
}

#[test]
fn s3_verify_full_sampled_and_tampered() {
    verify_full_and_sampled(Kind::Moto);
}

/// Prune then gc rewrites a pack that is mostly garbage, deletes wholly
/// dead ones, and leaves the kept point whole.
fn prune_and_repack(kind: Kind) {
    let server = Server::start(kind);
    let (cloud, _) = open(&config(&server, ""));
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    make_image(&a, 24 << 20, 7, 0.9);
    backup(&cloud, "vm1", &a);
    // The second point keeps a fifth of the first one's chunks.
    let b = dir.path().join("b.img");
    let mut data = std::fs::read(&a).unwrap();
    let cs = 64 << 10;
    let mut fresh = vec![0u8; 24 << 20];
    make_image(&dir.path().join("f.img"), 24 << 20, 8, 1.0);
    fresh.copy_from_slice(&std::fs::read(dir.path().join("f.img")).unwrap());
    for (k, chunk) in data.chunks_mut(cs).enumerate() {
        if k % 5 != 0 {
            chunk.copy_from_slice(&fresh[k * cs..(k + 1) * cs]);
        }
    }
    std::fs::write(&b, &data).unwrap();
    let keep = backup(&cloud, "vm1", &b);
    let pruned = cloud
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
    let before = cloud.stats().unwrap();
    let report = cloud
        .gc(
            GcOptions {
                grace: Duration::ZERO,
                ..Default::default()
            },
            &(),
        )
        .unwrap();
    assert!(report.packs_repacked >= 1, "{report:?}");
    let after = cloud.stats().unwrap();
    assert!(
        after.bytes_on_disk < before.bytes_on_disk * 2 / 3,
        "{before:?} {after:?}"
    );
    assert!(cloud.verify(&()).unwrap().ok());
    let out = dir.path().join("out.img");
    cloud.restore_disk(&keep.id, "data", &out, &()).unwrap();
    assert_same(&b, &out);
}

#[test]
fn azure_prune_and_gc_repack() {
    prune_and_repack(Kind::Azurite);
}

#[test]
fn s3_prune_and_gc_repack() {
    prune_and_repack(Kind::Moto);
}

fn lease_json(kind: &str, expires_in_ms: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    serde_json::to_vec(&serde_json::json!({
        "holder": "test:1:dead",
        "kind": kind,
        "expires": (now + expires_in_ms).max(0),
    }))
    .unwrap()
}

/// gc is refused while a writer holds a lease; expired leases (dead
/// holders) are ignored and removed; writers wait for a fresh gc lease.
fn leases(kind: Kind) {
    let server = Server::start(kind);
    let (cloud, backend) = open(&config(&server, "l"));
    let gc = GcOptions::default();

    let writer = cloud.begin_point(meta("vm1")).unwrap();
    assert_eq!(backend.list("locks/shared").unwrap().len(), 1);
    let e = cloud.gc(gc, &()).unwrap_err();
    assert!(
        matches!(e, StoreError::Locked(..)) && e.is_temporary(),
        "{e}"
    );
    assert!(
        !backend.exists("locks/gc.lease").unwrap(),
        "refused gc leaves no lease"
    );
    drop(writer);
    assert!(backend.list("locks/shared").unwrap().is_empty());
    cloud.gc(gc, &()).unwrap();
    assert!(!backend.exists("locks/gc.lease").unwrap());

    // A writer that died: its lease expired; gc ignores and removes it.
    backend
        .put("locks/shared/dead.lease", &lease_json("shared", -1000))
        .unwrap();
    cloud.gc(gc, &()).unwrap();
    assert!(!backend.exists("locks/shared/dead.lease").unwrap());

    // A live gc elsewhere: a new writer waits until its lease is gone
    // (here: expires), and a second gc is refused meanwhile.
    backend
        .put_new("locks/gc.lease", &lease_json("gc", 2500))
        .unwrap();
    let e = cloud.gc(gc, &()).unwrap_err();
    assert!(e.to_string().contains("another gc"), "{e}");
    let t = Instant::now();
    let w = cloud.begin_point(meta("vm1")).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    drop(w);

    // A lease is renewed while held (lease_secs is 6 in tests).
    let w = cloud.begin_point(meta("vm1")).unwrap();
    let path = backend.list("locks/shared").unwrap()[0].path.clone();
    let first = backend.get(&path).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(backend.get(&path).unwrap(), first, "lease renewed");
    drop(w);
}

#[test]
fn azure_leases() {
    leases(Kind::Azurite);
}

#[test]
fn s3_leases() {
    leases(Kind::Moto);
}

/// A wrong key: a clear error naming the store, never the secret, and
/// not worth retrying.
#[test]
fn azure_wrong_credentials() {
    let server = Server::start(Kind::Azurite);
    let mut cfg = config(&server, "");
    if let ObjectService::Azure { access_key_env, .. } = &mut cfg.service {
        *access_key_env = WRONG_KEY_ENV.into();
    }
    let backend = Arc::new(ObjectBackend::new(&cfg).unwrap());
    let e = Datastore::open_or_create_on(backend, small_packs()).unwrap_err();
    let text = format!("{} {e:?}", chain(&e));
    assert!(text.contains(&cfg.location()), "{text}");
    assert!(
        text.contains("403") || text.contains("uthenticat"),
        "{text}"
    );
    assert!(
        !text.contains(WRONG_KEY) && !text.contains(&WRONG_KEY[..20]),
        "{text}"
    );
    assert!(!e.is_temporary());
}

/// S3: a missing credential variable is named; the secret never shows.
#[test]
fn s3_missing_and_wrong_credentials() {
    let server = Server::start(Kind::Moto);
    let mut cfg = config(&server, "");
    if let ObjectService::S3 {
        secret_access_key_env,
        ..
    } = &mut cfg.service
    {
        *secret_access_key_env = "STANDBY_TEST_NOT_SET".into();
    }
    let e = ObjectBackend::new(&cfg).unwrap_err();
    assert!(e.to_string().contains("STANDBY_TEST_NOT_SET"), "{e}");
    // A bucket that does not exist (moto accepts any key): clear, final.
    let mut cfg = config(&server, "");
    if let ObjectService::S3 { bucket, .. } = &mut cfg.service {
        *bucket = "no-such-bucket".into();
    }
    let backend = Arc::new(ObjectBackend::new(&cfg).unwrap());
    let e = Datastore::open_or_create_on(backend, small_packs()).unwrap_err();
    let text = format!("{} {e:?}", chain(&e));
    assert!(text.contains("no-such-bucket"), "{text}");
    assert!(!text.contains(S3_SECRET), "{text}");
    assert!(!e.is_temporary());
}

/// An unreachable server: bounded retries, then an error saying retrying
/// later can help.
#[test]
fn unreachable_server_is_temporary() {
    let mut server = Server::start(Kind::Moto);
    let cfg = config(&server, "");
    server.kill();
    let backend = Arc::new(ObjectBackend::new(&cfg).unwrap());
    let t = Instant::now();
    let e = Datastore::open_or_create_on(backend, small_packs()).unwrap_err();
    assert!(e.is_temporary(), "{}", chain(&e));
    assert!(e.to_string().contains("retrying later can help"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(30));
}
