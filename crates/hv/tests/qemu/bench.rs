//! Figures of live points (ignored: run by hand).

use std::collections::BTreeMap;
use std::time::Instant;

use standby_hv::qemu::Accel;
use standby_hv::{DiskSpec, Driver, QemuDriver, QemuSpec, VmSpec};
use standby_store::Datastore;

use crate::common::*;

/// Figures (run by hand: `cargo test -p standby-hv --test qemu
/// bench_live_points -- --ignored --nocapture`): full vs incremental live
/// point of a 1 GiB raw disk full of incompressible data with ~1 % of it
/// rewritten in scattered 4–64 KiB writes, and the restore of the
/// incremental point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: writes and reads several GiB"]
async fn bench_live_points() {
    const SIZE: usize = 1 << 30;
    let qemu = qemu_binary();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let disk = dir.path().join("bench-data.img");
    // xorshift: incompressible, deterministic.
    {
        use std::io::Write as _;
        let mut f =
            std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&disk).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..SIZE / buf.len() {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let spec = VmSpec {
        name: "bench".into(),
        command: qemu,
        args: vec![],
        env: BTreeMap::new(),
        disks: vec![DiskSpec {
            name: "data".into(),
            path: disk.clone(),
            size: SIZE as u64,
        }],
        workdir: dir.path().to_owned(),
        qemu: Some(QemuSpec {
            memory_mib: 64,
            accel: Accel::Tcg,
            ..QemuSpec::default()
        }),
        libvirt: None,
    };
    let d = QemuDriver::new(dir.path().join("state"));
    d.start(&spec).await.unwrap();
    let full = take_point(&d, &spec, &store, None).await;

    // ~1 % of the disk rewritten: 4–64 KiB writes at 4 KiB-aligned offsets.
    let mut x: u64 = 42;
    let mut changed = 0usize;
    let mut writes = 0;
    while changed < SIZE / 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 4 * K * (1 + (x % 16) as usize);
        let off = ((x >> 8) as usize % (SIZE - len)) & !(4 * K - 1);
        let cmd = format!("write -P {} {off} {len}", (x >> 40) as u8 | 1);
        let out = d
            .qmp("bench")
            .unwrap()
            .execute_raw(
                "human-monitor-command",
                serde_json::json!({ "command-line": format!("qemu-io -d /machine/peripheral/data-blk/virtio-backend \"{cmd}\"") }),
            )
            .await
            .unwrap();
        assert!(!out.as_str().unwrap_or_default().contains("rror"), "{out}");
        changed += len;
        writes += 1;
    }
    let incr = take_point(&d, &spec, &store, Some(&full.id)).await;
    let dest = dir.path().join("restored.raw");
    let t = Instant::now();
    store
        .restore_disk(&incr.id.parse().unwrap(), "data", &dest, &())
        .unwrap();
    let restore = t.elapsed();
    d.stop("bench").await.unwrap();
    let same = std::process::Command::new("cmp")
        .arg(&dest)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(same.success(), "restored image differs from the disk");
    let gib = SIZE as f64;
    println!(
        "1 GiB raw disk, {writes} writes of 4-64 KiB, {changed} bytes changed ({:.2} %)",
        changed as f64 * 100.0 / gib
    );
    println!(
        "full point:        {:>8.2?}  read {:>11} bytes (100 %)",
        full.total,
        full.read("data")
    );
    println!(
        "incremental point: {:>8.2?}  read {:>11} bytes ({:.2} % of the disk), {:.1} % of the full point's time",
        incr.total,
        incr.read("data"),
        incr.read("data") as f64 * 100.0 / gib,
        incr.total.as_secs_f64() * 100.0 / full.total.as_secs_f64()
    );
    println!("restore (1 GiB):   {restore:>8.2?}");
    assert!(
        incr.read("data") as f64 <= 0.03 * gib * 1.5,
        "incremental read too much"
    );
}
