//! Delta restores and warm replicas: a restore onto disks that are there
//! already writes only what differs.

use serde_json::Value;

use crate::harness::{Lab, LabOptions};
use crate::recovery::{run_job, step_output, users};

/// The point a `protect run` took of pbx1.
fn protect(lab: &Lab) -> Value {
    let v = lab.json(&["protect", "run", "gold"]);
    v["vms"][0].clone()
}

/// A group with a warm replica at site 2: the first point builds it, the
/// next is applied as a delta (only the changed chunks, through a
/// journal); the failover restores onto it and writes nothing it already
/// holds; the failback home writes only what differs from the old disk
/// there (read: it ran since its last known point), and every
/// acknowledged registration is there at each step.
#[test]
fn recovery_a_warm_replica_fails_over_without_writing_and_failback_writes_the_delta() {
    let lab = Lab::new(LabOptions {
        disk_size: "64MiB",
        group: "replica = \"warm\"",
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    let first = protect(&lab);
    let r = &first["replica"];
    assert_eq!(r["host"], "site2-host1", "{first:#}");
    assert_eq!(r["mode"], "full", "{first:#}");

    lab.register(3..6);
    let second = protect(&lab);
    let r = &second["replica"];
    let mode = r["mode"].as_str().unwrap_or_default();
    assert!(
        mode.starts_with(&format!(
            "delta from point {}",
            first["point"].as_str().unwrap()
        )) && mode.ends_with("(journaled)"),
        "{second:#}"
    );
    let written = r["written"].as_u64().unwrap();
    assert!(
        written > 0 && written <= 4 << 16,
        "only the changed chunks: {second:#}"
    );
    assert_eq!(r["read"], 0, "{second:#}");

    // The failover: the replica holds the newest point already.
    let steps = run_job(&lab, "failover-site", "site=site1");
    let restored = step_output(&steps, "restore", 0);
    assert_eq!(restored["point"], second["point"], "{restored:#}");
    assert_eq!(
        restored["mode"].as_str(),
        Some(format!("delta from point {}", second["point"].as_str().unwrap()).as_str()),
        "{restored:#}"
    );
    assert_eq!(restored["written"], 0, "{restored:#}");
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..6));

    // Failback: the old disk at home ran after its last point; it is read
    // and only what differs from the final point is written.
    lab.register(6..9);
    let steps = run_job(&lab, "failback", "site=site1");
    let home = step_output(&steps, "restore", 0);
    assert_eq!(home["mode"], "delta (disks read)", "{home:#}");
    let written = home["written"].as_u64().unwrap();
    assert!(written > 0 && written <= 8 << 16, "{home:#}");
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..9));
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1", "{vm:#}");
}

/// Overwrite every `every`-th chunk (64 KiB) of `path` with new random
/// data: `1/every` of the disk changes.
fn change_every(path: &std::path::Path, every: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < len {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&buf, at).unwrap();
        at += every * (64 << 10);
    }
    f.sync_all().unwrap();
}

fn cold() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn env_mib(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A lab whose pbx1 is a plain process over a disk of `mib` MiB of
/// incompressible data, stopped.
fn big_lab(mib: usize, group: &'static str) -> Lab {
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        disk_size: Box::leak(format!("{mib}MiB").into_boxed_str()),
        group,
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.json(&["vm", "stop", "pbx1"]);
    crate::harness::write_random(&lab.path("site1/disks/pbx1/data.img"), mib << 20);
    lab
}

/// Figures for `scripts/bench-recovery`: a delta failback against a full
/// restore of the same point (`STANDBY_BENCH_FAILBACK_MIB`, default 2048,
/// 2 % changed, the old disk read cold), and the restore before a
/// failover with a warm replica against one without
/// (`STANDBY_BENCH_REPLICA_MIB`, default 8192, 1 % changed). The page
/// cache is dropped before each restore.
#[test]
#[ignore]
fn recovery_delta_figures() {
    let cmp = |a: &std::path::Path, b: &std::path::Path| {
        let st = std::process::Command::new("cmp")
            .args([a.as_os_str(), b.as_os_str()])
            .status()
            .unwrap();
        assert!(st.success(), "{} and {} differ", a.display(), b.display());
    };
    let restore = |lab: &Lab, point: &str, site: &str| -> Value {
        cold();
        lab.json(&["restore", point, "--site", site, "--no-start"])
    };

    // Failback: home holds the old point's data, unknown to its host.
    let mib = env_mib("STANDBY_BENCH_FAILBACK_MIB", 2048);
    let lab = big_lab(mib, "");
    let home = lab.path("site1/disks/pbx1/data.img");
    protect(&lab);
    let old = lab.path("old.img");
    std::fs::copy(&home, &old).unwrap();
    change_every(&home, 50, 1);
    let p2 = protect(&lab)["point"].as_str().unwrap().to_string();
    let full = restore(&lab, &p2, "site2");
    assert_eq!(full["mode"], "full", "{full:#}");
    std::fs::rename(&old, &home).unwrap();
    let _ = std::fs::remove_file(lab.path("site1/disks/pbx1/.standby-disks.json"));
    let delta = restore(&lab, &p2, "site1");
    assert_eq!(delta["mode"], "delta (disks read)", "{delta:#}");
    cmp(&home, &lab.path("site2/disks/pbx1/data.img"));
    let (tf, td) = (
        full["restore_seconds"].as_f64().unwrap(),
        delta["restore_seconds"].as_f64().unwrap(),
    );
    println!(
        "delta failback figures: {mib} MiB disk of random data, 2 % changed, process driver, local datastores, page cache dropped before each restore"
    );
    println!(
        "  full restore of the final point:   {tf:.2} s ({} MiB written)",
        full["written"].as_u64().unwrap() >> 20
    );
    println!(
        "  delta onto the old disk at home:   {td:.2} s ({} MiB read, {} MiB written): {:.0} % of the full restore",
        delta["read"].as_u64().unwrap() >> 20,
        delta["written"].as_u64().unwrap() >> 20,
        100.0 * td / tf
    );
    drop(lab);

    // Warm replica: the failover's restore writes what the replica lacks.
    let mib = env_mib("STANDBY_BENCH_REPLICA_MIB", 8192);
    let lab = big_lab(mib, "replica = \"warm\"");
    let built = protect(&lab);
    change_every(&lab.path("site1/disks/pbx1/data.img"), 100, 2);
    let next = protect(&lab);
    let p2 = next["point"].as_str().unwrap().to_string();
    let warm = restore(&lab, &p2, "site2");
    assert_eq!(warm["written"], 0, "{warm:#}");
    std::fs::remove_file(lab.path("site1/disks/pbx1/data.img")).unwrap();
    let cold_restore = restore(&lab, &p2, "site1");
    assert_eq!(cold_restore["mode"], "full", "{cold_restore:#}");
    let (tw, tc) = (
        warm["restore_seconds"].as_f64().unwrap(),
        cold_restore["restore_seconds"].as_f64().unwrap(),
    );
    println!(
        "warm replica figures: {mib} MiB disk of random data, 1 % changed between points, process driver, local datastores, page cache dropped before each restore"
    );
    println!(
        "  replica built with the first point: {:.2} s; next point applied: {:.2} s ({} MiB written, journaled)",
        built["replica"]["seconds"].as_f64().unwrap(),
        next["replica"]["seconds"].as_f64().unwrap(),
        next["replica"]["written"].as_u64().unwrap() >> 20
    );
    println!("  restore before the VM starts, warm replica: {tw:.2} s (nothing written)");
    println!("  restore before the VM starts, no replica:   {tc:.2} s");
}
