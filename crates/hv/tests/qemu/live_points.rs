//! Live points of a VM without a guest OS, written through QEMU.

use std::collections::BTreeMap;
use std::time::Duration;

use standby_hv::qemu::{Accel, DiskFormat};
use standby_hv::{DiskSpec, Driver, HvError, QemuDriver, QemuSpec, VmSpec, VmState};
use standby_store::{Consistency, Datastore, PointMeta};

use crate::common::*;

/// A VM with no guest OS (firmware finds nothing to boot) whose disks the
/// test writes through QEMU: exact dirty accounting, zeroes, abandoned
/// points, base mismatch, QEMU restart (raw bitmap lost, qcow2 kept),
/// QEMU killed (qcow2 bitmap inconsistent), restore into qcow2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_points_follow_writes_zeroes_and_restarts() {
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let mut q = QemuSpec {
        memory_mib: 64,
        accel: Accel::Tcg,
        ..QemuSpec::default()
    };
    q.disk_formats.insert("sys".into(), DiskFormat::Qcow2);
    let spec = VmSpec {
        name: "lp".into(),
        command: qemu,
        args: vec![],
        env: BTreeMap::new(),
        disks: vec![
            DiskSpec {
                name: "sys".into(),
                path: dir.path().join("lp-sys.qcow2"),
                size: 8 << 20,
            },
            DiskSpec {
                name: "data".into(),
                path: dir.path().join("lp-data.img"),
                size: 8 << 20,
            },
        ],
        workdir: dir.path().to_owned(),
        qemu: Some(q),
        libvirt: None,
    };
    // Both disks start full of a pattern (no zero chunks to hide behind).
    let mut sys: Vec<u8> = (0..8 * M).map(|i| (i % 251) as u8 + 1).collect();
    let mut data = sys.clone();
    let pattern = dir.path().join("pattern.raw");
    std::fs::write(&pattern, &sys).unwrap();
    std::fs::write(&spec.disks[1].path, &data).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&pattern)
        .arg(&spec.disks[0].path)
        .status()
        .unwrap();
    assert!(st.success());
    let d = QemuDriver::new(dir.path().join("state"));
    d.start(&spec).await.unwrap();
    let caps = d.vm_capabilities(&spec);
    assert!(caps.live_snapshot && caps.dirty_tracking && !caps.app_consistent);

    let p1 = take_point(&d, &spec, &store, None).await;
    assert!(
        p1.note
            .starts_with("crash-consistent (no guest agent configured), live"),
        "{}",
        p1.note
    );
    assert!(
        p1.note.contains("sys: full read: no base point"),
        "{}",
        p1.note
    );
    assert!(!p1.app_consistent);
    assert_eq!(p1.read("data"), 8 << 20);
    assert_eq!(restored(&store, dir.path(), &p1.id, "data"), data);
    assert_eq!(restored(&store, dir.path(), &p1.id, "sys"), sys);

    // Data, zeroes over data, and data that happens to be zero.
    for op in [
        Op::Pattern(0x55, M, 64 * K),
        Op::Zero(3 * M, 128 * K),
        Op::Pattern(0, 5 * M, 4 * K),
    ] {
        qemu_io(&d, "lp", "data", &mut data, op).await;
    }
    for op in [Op::Zero(0, 64 * K), Op::Pattern(0x66, 6 * M + 8 * K, 4 * K)] {
        qemu_io(&d, "lp", "sys", &mut sys, op).await;
    }
    let p2 = take_point(&d, &spec, &store, Some(&p1.id)).await;
    assert!(
        p2.note
            .contains(&format!("data: incremental from {}", p1.id)),
        "{}",
        p2.note
    );
    assert!(
        p2.note
            .contains(&format!("sys: incremental from {}", p1.id)),
        "{}",
        p2.note
    );
    // Exactly the dirty 64 KiB chunks: 1 + 2 + 1 on data, 1 + 1 on sys.
    assert_eq!(p2.read("data"), 4 * 64 * 1024);
    assert_eq!(p2.read("sys"), 2 * 64 * 1024);
    assert_eq!(
        restored(&store, dir.path(), &p2.id, "data"),
        data,
        "zeroes restored as zeroes"
    );
    assert_eq!(restored(&store, dir.path(), &p2.id, "sys"), sys);

    // An abandoned point: its changes are still in the next one.
    qemu_io(
        &d,
        "lp",
        "data",
        &mut data,
        Op::Pattern(0x77, 2 * M, 64 * K),
    )
    .await;
    let abandoned = store
        .begin_point(PointMeta {
            vm: "lp".into(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({}),
            labels: BTreeMap::new(),
        })
        .unwrap();
    d.snapshot_begin_from(&spec, Some(&p2.id), u64::from(CHUNK))
        .await
        .unwrap();
    d.snapshot_end(&spec).await.unwrap();
    drop(abandoned);
    d.snapshot_committed(&spec, None).await.unwrap();
    qemu_io(&d, "lp", "data", &mut data, Op::Zero(M, 64 * K)).await;
    let p3 = take_point(&d, &spec, &store, Some(&p2.id)).await;
    assert!(
        p3.note
            .contains(&format!("data: incremental from {}", p2.id)),
        "{}",
        p3.note
    );
    assert_eq!(p3.read("data"), 2 * 64 * 1024);
    assert_eq!(p3.read("sys"), 0);
    assert_eq!(restored(&store, dir.path(), &p3.id, "data"), data);

    // A full point that fails keeps the bitmap it found.
    let failed = store
        .begin_point(PointMeta {
            vm: "lp".into(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({}),
            labels: BTreeMap::new(),
        })
        .unwrap();
    let src = d
        .snapshot_begin_from(&spec, None, u64::from(CHUNK))
        .await
        .unwrap();
    assert!(src.disks.iter().all(|disk| disk.dirty.is_none()));
    d.snapshot_end(&spec).await.unwrap();
    drop(failed);
    d.snapshot_committed(&spec, None).await.unwrap();

    // The caller's base is not the point the bitmap counts from.
    let p4 = take_point(&d, &spec, &store, Some(&p2.id)).await;
    assert!(
        p4.note.contains(&format!(
            "data: full read: dirty bitmap counts from point {}, not from the base {}",
            p3.id, p2.id
        )),
        "{}",
        p4.note
    );
    assert_eq!(p4.read("data"), 8 << 20);

    // QEMU restarted (cleanly): the raw disk's bitmap is gone, the qcow2
    // one was saved in the image.
    d.stop("lp").await.unwrap();
    d.start(&spec).await.unwrap();
    qemu_io(&d, "lp", "sys", &mut sys, Op::Pattern(0x11, 7 * M, 64 * K)).await;
    let p5 = take_point(&d, &spec, &store, Some(&p4.id)).await;
    assert!(
        p5.note
            .contains("data: full read: dirty bitmap lost after QEMU restart"),
        "{}",
        p5.note
    );
    assert!(
        p5.note
            .contains(&format!("sys: incremental from {}", p4.id)),
        "{}",
        p5.note
    );
    assert_eq!(p5.read("data"), 8 << 20);
    assert_eq!(p5.read("sys"), 64 << 10);
    assert_eq!(restored(&store, dir.path(), &p5.id, "sys"), sys);
    assert_eq!(restored(&store, dir.path(), &p5.id, "data"), data);

    // QEMU killed while a bitmap it loaded from the qcow2 is in use: the
    // image flags it, the next QEMU loads it as inconsistent.
    d.stop("lp").await.unwrap();
    d.start(&spec).await.unwrap();
    let pid = d.status("lp").await.unwrap().pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_state(&d, "lp", VmState::Crashed, Duration::from_secs(10)).await;
    d.start(&spec).await.unwrap();
    let p6 = take_point(&d, &spec, &store, Some(&p5.id)).await;
    assert!(
        p6.note
            .contains("sys: full read: dirty bitmap inconsistent"),
        "{}",
        p6.note
    );
    assert_eq!(p6.read("sys"), 8 << 20);
    d.stop("lp").await.unwrap();

    // A cold point reads qcow2 as raw.
    let cold = take_point(&d, &spec, &store, Some(&p6.id)).await;
    assert!(cold.note.starts_with("cold"), "{}", cold.note);
    assert_eq!(restored(&store, dir.path(), &cold.id, "sys"), sys);

    // Restore into a new VM: qcow2 disk converted, raw disk as is.
    let mut site2 = spec.clone();
    site2.name = "lp2".into();
    site2.disks[0].path = dir.path().join("lp2-sys.qcow2");
    site2.disks[1].path = dir.path().join("lp2-data.img");
    for disk in ["sys", "data"] {
        let raw = dir.path().join(format!("lp2-{disk}.restore"));
        store
            .restore_disk(&p6.id.parse().unwrap(), disk, &raw, &())
            .unwrap();
        d.install_restored_disk(&site2, disk, &raw).await.unwrap();
        assert!(!raw.exists());
    }
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&site2.disks[0].path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&site2.disks[0].path)
        .arg(&spec.disks[0].path)
        .status()
        .unwrap();
    assert!(cmp.success(), "restored qcow2 differs from the source disk");
    assert_eq!(std::fs::read(&site2.disks[1].path).unwrap(), data);
    // Never over an existing disk.
    let raw = dir.path().join("again.restore");
    std::fs::write(&raw, b"x").unwrap();
    let err = d
        .install_restored_disk(&site2, "data", &raw)
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::DiskExists { .. }), "{err}");
    assert_eq!(std::fs::read(&site2.disks[1].path).unwrap(), data);
}
