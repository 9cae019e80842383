//! Incremental points from libvirt checkpoints and push-mode backups:
//! only the changed chunks are read (counted by the datastore's writer),
//! restores match, an abandoned point's writes are in the next one, a raw
//! disk and a cold VM are read whole.

use std::time::Instant;

use standby_hv::Driver;
use standby_hv::qemu::DiskFormat;
use standby_store::Datastore;

use crate::common::{K, M, Op, lab, pattern, qcow2_with, qemu_io, restored, spec, take_point};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_incremental_points() {
    let lab = lab();
    let d = &lab.driver;
    let dir = lab.dir.path();
    let store = Datastore::open_or_create(&dir.join("store")).unwrap();
    // No guest: firmware only, so the disks change only by our writes.
    let spec = spec(dir, "lp", false, false);
    let mut sys = pattern(16 * M, 7);
    let mut data = pattern(8 * M, 9);
    qcow2_with(dir, &spec.disks[0].path, &sys);
    qcow2_with(dir, &spec.disks[1].path, &data);
    d.start(&spec).await.unwrap();

    let p1 = take_point(d, &spec, &store, None).await;
    assert!(
        p1.note.starts_with(
            "crash-consistent (no guest agent channel); libvirt backup, full read (no base point)"
        ),
        "{}",
        p1.note
    );
    assert_eq!(p1.read("data"), 8 << 20);
    assert_eq!(p1.read("system"), 16 << 20);
    assert_eq!(restored(&store, dir, &p1.id, "data"), data);
    assert_eq!(restored(&store, dir, &p1.id, "system"), sys);
    let cps = lab.daemon.virsh(&["checkpoint-list", "lp", "--name"]);
    assert_eq!(
        cps.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{cps}"
    );

    // Data, zeroes over data, and data that happens to be zero.
    for op in [
        Op::Pattern(0x55, M, 64 * K),
        Op::Zero(3 * M, 128 * K),
        Op::Pattern(0, 5 * M, 4 * K),
    ] {
        qemu_io(&lab, "lp", 1, &mut data, op);
    }
    for op in [Op::Zero(0, 64 * K), Op::Pattern(0x66, 6 * M + 8 * K, 4 * K)] {
        qemu_io(&lab, "lp", 0, &mut sys, op);
    }
    let p2 = take_point(d, &spec, &store, Some(&p1.id)).await;
    assert!(
        p2.note
            .contains("libvirt backup, incremental from checkpoint standby."),
        "{}",
        p2.note
    );
    // Exactly the dirty 64 KiB chunks: 1 + 2 + 1 on data, 1 + 1 on system.
    assert_eq!(p2.read("data"), 4 * 64 * 1024);
    assert_eq!(p2.read("system"), 2 * 64 * 1024);
    assert_eq!(
        restored(&store, dir, &p2.id, "data"),
        data,
        "zeroes restored as zeroes"
    );
    assert_eq!(restored(&store, dir, &p2.id, "system"), sys);
    // Only the newest committed point's checkpoint is kept.
    let cps = lab.daemon.virsh(&["checkpoint-list", "lp", "--name"]);
    assert_eq!(
        cps.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{cps}"
    );

    // An abandoned point: its changes are still in the next one.
    qemu_io(&lab, "lp", 1, &mut data, Op::Pattern(0x77, 2 * M, 64 * K));
    d.snapshot_begin_from(&spec, Some(&p2.id), 64 << 10)
        .await
        .unwrap();
    d.snapshot_end(&spec).await.unwrap();
    d.snapshot_committed(&spec, None).await.unwrap();
    qemu_io(&lab, "lp", 1, &mut data, Op::Pattern(0x78, 7 * M, 64 * K));
    let p3 = take_point(d, &spec, &store, Some(&p2.id)).await;
    assert!(p3.note.contains("incremental"), "{}", p3.note);
    assert_eq!(p3.read("data"), 2 * 64 * 1024);
    assert_eq!(p3.read("system"), 0);
    assert_eq!(restored(&store, dir, &p3.id, "data"), data);

    // A base the driver has no checkpoint for: a full read, said so.
    let p4 = take_point(d, &spec, &store, Some(&p1.id)).await;
    assert!(
        p4.note
            .contains("full read (no checkpoint counts from base"),
        "{}",
        p4.note
    );
    assert_eq!(p4.read("data"), 8 << 20);
    // A larger chunk size than the bitmaps' granularity: full read.
    let src = d
        .snapshot_begin_from(&spec, Some(&p4.id), 1 << 20)
        .await
        .unwrap();
    assert!(
        src.consistency_note.contains("larger than the bitmaps"),
        "{}",
        src.consistency_note
    );
    assert!(src.disks.iter().all(|x| x.dirty.is_none()));
    d.snapshot_end(&spec).await.unwrap();
    d.snapshot_committed(&spec, None).await.unwrap();

    // Cold: the domain shut off, its files read whole.
    d.stop("lp").await.unwrap();
    let t = Instant::now();
    let p5 = take_point(d, &spec, &store, Some(&p4.id)).await;
    assert_eq!(p5.note, "cold: vm not running, full read");
    assert_eq!(restored(&store, dir, &p5.id, "data"), data);
    eprintln!("cold point in {:.1?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_raw_disks_read_whole() {
    let lab = lab();
    let d = &lab.driver;
    let dir = lab.dir.path();
    let store = Datastore::open_or_create(&dir.join("store")).unwrap();
    let mut spec = spec(dir, "raw", false, false);
    let q = spec.qemu.as_mut().unwrap();
    q.disk_formats.insert("data".into(), DiskFormat::Raw);
    spec.disks[1].path = dir.join("raw-data.img");
    let sys = pattern(16 * M, 3);
    let mut data = pattern(8 * M, 4);
    qcow2_with(dir, &spec.disks[0].path, &sys);
    std::fs::write(&spec.disks[1].path, &data).unwrap();
    d.start(&spec).await.unwrap();
    let p1 = take_point(d, &spec, &store, None).await;
    qemu_io(&lab, "raw", 1, &mut data, Op::Pattern(0x11, M, 4 * K));
    let p2 = take_point(d, &spec, &store, Some(&p1.id)).await;
    assert!(
        p2.note.contains("full read (a disk is not qcow2)"),
        "{}",
        p2.note
    );
    assert_eq!(p2.read("data"), 8 << 20);
    assert_eq!(restored(&store, dir, &p2.id, "data"), data);
    assert!(
        lab.daemon
            .virsh(&["checkpoint-list", "raw", "--name"])
            .trim()
            .is_empty()
    );
    d.stop("raw").await.unwrap();
}
