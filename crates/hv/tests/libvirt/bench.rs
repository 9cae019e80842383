//! Figures: the libvirt driver against the qemu driver on the same guest
//! and the same disk content (ignored: `scripts/bench-hypervisors`).

use std::path::Path;
use std::time::{Duration, Instant};

use standby_hv::{Driver, QemuDriver, VmSpec};
use standby_store::Datastore;

use crate::common::{CHUNK, K, M, Taken, lab, pattern, spec, take_point};

/// What one driver did.
struct Run {
    full: Taken,
    incr: Taken,
    restore: Duration,
}

/// Scattered 64 KiB writes into the data disk (index 1) of the running
/// VM behind the guest's back: (offset, len) each, the same for both
/// drivers.
fn changes(size: usize) -> Vec<(usize, usize)> {
    (0..8)
        .map(|i| ((size / 9) * (i + 1) / (64 * K) * (64 * K), 64 * K))
        .collect()
}

async fn run(
    d: &dyn Driver,
    spec: &VmSpec,
    store: &Datastore,
    dir: &Path,
    write: &dyn Fn(&str),
) -> Run {
    d.start(spec).await.unwrap();
    let full = take_point(d, spec, store, None).await;
    for (off, len) in changes(spec.disks[1].size as usize) {
        write(&format!("write -P 7 {off} {len}"));
    }
    let incr = take_point(d, spec, store, Some(&full.id)).await;
    d.stop(&spec.name).await.unwrap();
    // The restore a DR host does: every disk out of the datastore, raw,
    // then put in place in the disk's format by the driver (qcow2
    // converted).
    let mut target = spec.clone();
    for disk in &mut target.disks {
        disk.path = dir.join(format!("restored-{}.qcow2", disk.name));
    }
    let t = Instant::now();
    for disk in &target.disks {
        let raw = dir.join(format!("restored-{}.raw", disk.name));
        store
            .restore_disk(&incr.id.parse().unwrap(), &disk.name, &raw, &())
            .unwrap();
        let q = QemuDriver::new(dir.join("restore-state"));
        q.install_restored_disk(&target, &disk.name, &raw)
            .await
            .unwrap();
    }
    let restore = t.elapsed();
    // The restored data disk holds what the VM's did at the point.
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .args([&spec.disks[1].path, &target.disks[1].path])
        .status()
        .unwrap();
    assert!(cmp.success(), "the restored data disk differs");
    Run {
        full,
        incr,
        restore,
    }
}

/// The same VM (firmware only, 16 MiB qcow2 system disk, a qcow2 data
/// disk of `STANDBY_BENCH_MIB` MiB, default 256, full of incompressible
/// data) under the qemu driver and under the libvirt driver: full point,
/// incremental point after 8 scattered 64 KiB writes, restore of that
/// point (both disks out of the datastore, converted to qcow2). Bytes
/// read are the datastore's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by scripts/bench-hypervisors"]
async fn bench_libvirt_against_qemu() {
    let mib: usize = std::env::var("STANDBY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let lab = lab();
    let dir = lab.dir.path();
    // The disk content, once.
    let content = dir.join("content.qcow2");
    crate::common::qcow2_with(dir, &content, &pattern(mib * M, 3));

    let mut results = Vec::new();
    for kind in ["qemu", "libvirt"] {
        let d = dir.join(kind);
        std::fs::create_dir_all(d.join("state")).unwrap();
        let mut s = spec(&d, "bench", false, false);
        s.disks[1].size = (mib * M) as u64;
        if kind == "qemu" {
            s.libvirt = None;
        }
        let q = QemuDriver::new(d.join("state"));
        q.create_from_template(&s, &[("data".into(), content.clone())])
            .await
            .unwrap();
        let store = Datastore::open_or_create(&d.join("store")).unwrap();
        let r = match kind {
            "qemu" => {
                let write = |cmd: &str| {
                    let rt = tokio::runtime::Handle::current();
                    let qmp = q.qmp("bench").unwrap();
                    let line =
                        format!("qemu-io -d /machine/peripheral/data-blk/virtio-backend \"{cmd}\"");
                    let out = tokio::task::block_in_place(|| {
                        rt.block_on(qmp.execute_raw(
                            "human-monitor-command",
                            serde_json::json!({ "command-line": line }),
                        ))
                    })
                    .unwrap();
                    assert!(!out.to_string().contains("rror"), "{out}");
                };
                run(&q, &s, &store, &d, &write).await
            }
            _ => {
                let write = |cmd: &str| {
                    let out = lab.daemon.virsh(&[
                        "qemu-monitor-command",
                        "bench",
                        "--hmp",
                        &format!(
                            "qemu-io -d /machine/peripheral/virtio-disk1/virtio-backend \"{cmd}\""
                        ),
                    ]);
                    assert!(!out.contains("rror"), "{out}");
                };
                run(&lab.driver, &s, &store, &d, &write).await
            }
        };
        results.push((kind, r));
    }
    let total = |t: &Taken| t.stats.values().map(|s| s.bytes_read).sum::<u64>();
    println!(
        "same guest (firmware only, 256 MiB RAM, TCG), 16 MiB qcow2 system + {mib} MiB qcow2 data disk of incompressible data, chunks {} KiB",
        CHUNK >> 10
    );
    println!(
        "| driver | full point | read | incremental point (8 x 64 KiB written) | read | restore (both disks, to qcow2) |"
    );
    println!("|---|---|---|---|---|---|");
    for (kind, r) in &results {
        println!(
            "| {kind} | {:.2?} | {} bytes | {:.2?} | {} bytes | {:.2?} |",
            r.full.total,
            total(&r.full),
            r.incr.total,
            total(&r.incr),
            r.restore
        );
    }
    for (kind, r) in &results {
        assert_eq!(
            total(&r.full),
            (mib * M + 16 * M) as u64,
            "{kind}: full point"
        );
        assert!(
            r.incr.read("data") <= 8 * 64 * K as u64,
            "{kind}: the incremental point read {} bytes of the data disk",
            r.incr.read("data")
        );
    }
}
