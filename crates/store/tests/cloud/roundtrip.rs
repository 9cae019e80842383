//! Create a store, write a point, restore it byte-identical.

use standby_store::{Datastore, ObjectBackend, StoreError};

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

fn roundtrip(kind: Kind) {
    let server = Server::start(kind);
    let cfg = config(&server, "site/cloud");
    let (ds, backend) = open(&cfg);
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.img");
    make_image(&image, 40 << 20, 1, 0.5);
    let m = backup(&ds, "vm1", &image);
    let up = backend.stats();
    assert!(up.bytes_up > 10 << 20, "{up:?}");

    // A second handle (another process) sees the point and restores it.
    let (ds2, b2) = open(&cfg);
    assert_eq!(ds2.list_points().unwrap().len(), 1);
    let out = work.path().join("restored.img");
    ds2.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_same(&image, &out);
    // Chunks are fetched in ranged batches, not one request each.
    let chunks = (40u64 << 20) / (64 << 10);
    let s = b2.stats();
    assert!(s.requests < chunks / 4, "{s:?} for {chunks} chunks");

    // The location now holds a datastore: create refuses, open works.
    let again = Datastore::create_on(
        std::sync::Arc::new(ObjectBackend::new(&cfg).unwrap()),
        small_packs(),
    );
    assert!(again.is_err());
    // Another prefix in the same bucket holding foreign objects is not a store.
    let mut other = cfg.clone();
    other.prefix = String::new();
    let b = std::sync::Arc::new(ObjectBackend::new(&other).unwrap());
    let e = Datastore::open_or_create_on(b, small_packs()).unwrap_err();
    assert!(matches!(e, StoreError::NotADatastore { .. }), "{e}");
}

#[test]
fn azure_roundtrip() {
    roundtrip(Kind::Azurite);
}

#[test]
fn s3_roundtrip() {
    roundtrip(Kind::Moto);
}
