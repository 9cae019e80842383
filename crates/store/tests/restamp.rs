//! A writer opened before the VM is frozen takes the freeze instant as the
//! point's time when restamped, and cannot be restamped once data is in.

use std::time::Duration;

use standby_store::{Consistency, Datastore, DiskWriteOptions, PointMeta, StoreError};

fn meta() -> PointMeta {
    PointMeta {
        vm: "vm1".into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::Value::Null,
        labels: Default::default(),
    }
}

#[test]
fn restamp_moves_the_point_time_to_now_and_only_before_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![7u8; 256 << 10]).unwrap();

    let mut w = store.begin_point(meta()).unwrap();
    let opened = w.id().time();
    std::thread::sleep(Duration::from_millis(30));
    let frozen_at = chrono::Utc::now();
    w.restamp().unwrap();
    assert!(w.id().time() >= opened + chrono::Duration::milliseconds(25));
    assert!(w.id().time() <= frozen_at + chrono::Duration::milliseconds(5));
    w.set_label("snapshot", "crash-consistent");

    let opts = DiskWriteOptions {
        chunk_size: 64 << 10,
        base: None,
        dirty: None,
    };
    w.write_disk("data", &disk, opts, &()).unwrap();
    assert!(matches!(w.restamp(), Err(StoreError::PointStarted(_))));
    let m = w.commit().unwrap();
    assert_eq!(m.time, m.id.time());
    assert_eq!(m.labels["snapshot"], "crash-consistent");
    assert_eq!(store.latest_point("vm1").unwrap().unwrap().id, m.id);
}
