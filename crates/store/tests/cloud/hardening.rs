//! A point planted in a plain datastore on a real object store is refused.

use standby_store::backend::Backend;
use standby_store::{Manifest, PointId, StoreError};

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

/// Whoever can write to the bucket plants a newer point: a copy of the
/// genuine manifest one minute later, checksum recomputed, MAC copied.
fn planted_manifest_is_refused(kind: Kind) {
    let server = Server::start(kind);
    let cfg = config(&server, "site/cloud");
    let (ds, backend) = open(&cfg);
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("disk.img");
    make_image(&image, 4 << 20, 11, 0.5);
    let m = backup(&ds, "vm1", &image);

    let genuine: serde_json::Value =
        serde_json::from_slice(&backend.get(&m.id.manifest_path()).unwrap()).unwrap();
    let time = m.time + chrono::Duration::minutes(1);
    let id = PointId::new("vm1", time).unwrap();
    let mut planted = m.clone();
    planted.id = id.clone();
    planted.time = time;
    planted.site = "attacker".into();
    // The checksum anyone can compute (BLAKE3 of the canonical JSON); the
    // genuine manifest's MAC copied beside it.
    planted.checksum = planted.compute_checksum();
    let mut forged = serde_json::to_value(&planted).unwrap();
    forged["mac"] = genuine["mac"].clone();
    let without_mac = {
        let mut f = forged.clone();
        f.as_object_mut().unwrap().remove("mac");
        f
    };
    assert!(
        Manifest::from_bytes(&serde_json::to_vec(&without_mac).unwrap()).is_ok(),
        "the forgery passes every unkeyed check"
    );
    backend
        .put_new(
            &id.manifest_path(),
            &serde_json::to_vec_pretty(&forged).unwrap(),
        )
        .unwrap();

    // Another process opens the store: the planted point is refused by
    // name, and the newest point a failover would boot is the genuine one.
    let (again, _) = open(&cfg);
    let e = again.load_manifest(&id).unwrap_err();
    assert!(
        matches!(e, StoreError::BadManifest { .. })
            && e.to_string().contains(&id.manifest_path())
            && e.to_string().contains("MAC mismatch"),
        "{e}"
    );
    assert_eq!(again.latest_point("vm1").unwrap().unwrap().id, m.id);
    let report = again.verify(&()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object.contains(&id.manifest_path())),
        "{:?}",
        report.problems
    );
}

#[test]
fn hardening_a_planted_manifest_on_azure_blob_is_refused() {
    planted_manifest_is_refused(Kind::Azurite);
}

#[test]
fn hardening_a_planted_manifest_on_s3_is_refused() {
    planted_manifest_is_refused(Kind::Moto);
}
