//! Throughput and request figures for a 2 GiB image against Azurite and
//! moto on loopback. Run with
//! `cargo test --release -p standby-store --test cloud cloud_figures -- --ignored --nocapture`.

use std::io::{Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;

use standby_store::backend::Backend;
use standby_store::object::{ObjectBackend, ObjectStoreConfig};
use standby_store::{Datastore, DiskWriteOptions, KeySource, ObjectStats};

use crate::common::*;
use standby_testkit::objects::{Kind, Server};

const SIZE: u64 = 2 << 30;
const MIB: f64 = (1 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// Random data in 25 % of the 64 KiB chunks, zeros elsewhere (as `standby
/// bench` makes).
fn bench_image(path: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut w = std::io::BufWriter::with_capacity(4 << 20, f);
    let mut buf = vec![0u8; 64 << 10];
    for k in 0..SIZE / (64 << 10) {
        if rng.random_bool(0.25) {
            rng.fill_bytes(&mut buf);
            w.seek(SeekFrom::Start(k * (64 << 10))).unwrap();
            w.write_all(&buf).unwrap();
        }
    }
    w.flush().unwrap();
}

/// Scattered random writes of 4–64 KiB covering 2 % of the image; the
/// ranges written and their byte count.
fn change(path: &Path) -> (Vec<Range<u64>>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut ranges = Vec::new();
    let mut changed = 0;
    let mut buf = vec![0u8; 64 << 10];
    use std::os::unix::fs::FileExt;
    while changed < SIZE / 50 {
        let len = rng.random_range(1..=16u64) * 4096;
        let off = rng.random_range(0..(SIZE - len) / 4096) * 4096;
        rng.fill_bytes(&mut buf[..len as usize]);
        f.write_all_at(&buf[..len as usize], off).unwrap();
        ranges.push(off..off + len);
        changed += len;
    }
    f.sync_all().unwrap();
    (ranges, changed)
}

fn delta(a: ObjectStats, b: ObjectStats) -> ObjectStats {
    ObjectStats {
        requests: b.requests - a.requests,
        bytes_up: b.bytes_up - a.bytes_up,
        bytes_down: b.bytes_down - a.bytes_down,
    }
}

#[test]
#[ignore = "2 GiB figures; run by hand in release mode"]
fn cloud_figures() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    bench_image(&image);
    let local = Datastore::open_or_create(&dir.path().join("local")).unwrap();
    let p1 = backup(&local, "vm1", &image);
    let (ranges, changed) = change(&image);
    let mut w = local.begin_point(meta("vm1")).unwrap();
    let s2 = w
        .write_disk(
            "data",
            &image,
            DiskWriteOptions {
                base: Some(p1.id.clone()),
                dirty: Some(ranges),
                ..Default::default()
            },
            &(),
        )
        .unwrap();
    let p2 = w.commit().unwrap();
    println!(
        "image {} GiB, 25 % random; second point: {} bytes changed in scattered writes, {} stored locally",
        SIZE >> 30,
        changed,
        s2.bytes_new_stored
    );

    let key_file = dir.path().join("cloud.key");
    standby_store::generate_key_file(&key_file).unwrap();
    let key = KeySource::File(key_file);
    for (kind, encrypted) in [
        (Kind::Azurite, false),
        (Kind::Moto, false),
        (Kind::Azurite, true),
        (Kind::Moto, true),
    ] {
        let server = Server::start(kind);
        let mut cfg = config(&server, "figures");
        cfg.max_retries = 8;
        cfg.retry_timeout_secs = 120;
        let open = |cfg: &ObjectStoreConfig| {
            let backend = Arc::new(ObjectBackend::new(cfg).unwrap());
            let ds = if !encrypted {
                Datastore::open_or_create_on(backend.clone(), small_packs()).unwrap()
            } else if backend.exists(standby_store::MARKER_FILE).unwrap() {
                Datastore::open_on_with_key(backend.clone(), &key, small_packs()).unwrap()
            } else {
                Datastore::create_encrypted_on(backend.clone(), &key, small_packs()).unwrap()
            };
            (ds, backend)
        };
        let (cloud, backend) = open(&cfg);
        let name = format!("{kind:?}{}", if encrypted { " encrypted" } else { "" });

        let s0 = backend.stats();
        let t = Instant::now();
        let sync = local.sync_point(&p1.id, &cloud, &()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let up = delta(s0, backend.stats());
        println!(
            "{name}: sync point 1: {:.1} s, {:.0} MiB/s of disk, {:.0} MiB/s uploaded ({} MiB), \
             {} requests = {:.0} per GiB uploaded ({} chunks copied)",
            secs,
            SIZE as f64 / MIB / secs,
            up.bytes_up as f64 / MIB / secs,
            up.bytes_up >> 20,
            up.requests,
            up.requests as f64 / (up.bytes_up as f64 / GIB),
            sync.chunks_copied
        );

        let s0 = backend.stats();
        let sync2 = local.sync_point(&p2.id, &cloud, &()).unwrap();
        let up2 = delta(s0, backend.stats());
        println!(
            "{name}: sync point 2 (2 % changed): {} bytes uploaded = {:.2}x the {} changed bytes; \
             {} chunks copied",
            up2.bytes_up,
            up2.bytes_up as f64 / changed as f64,
            changed,
            sync2.chunks_copied
        );

        let (fresh, fresh_backend) = open(&cfg);
        let out = dir.path().join("restored.img");
        let s0 = fresh_backend.stats();
        let t = Instant::now();
        fresh.restore_disk(&p1.id, "data", &out, &()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let down = delta(s0, fresh_backend.stats());
        println!(
            "{name}: restore point 1: {:.1} s, {:.0} MiB/s of disk, {:.0} MiB/s downloaded ({} MiB), \
             {} requests = {:.0} per GiB downloaded",
            secs,
            SIZE as f64 / MIB / secs,
            down.bytes_down as f64 / MIB / secs,
            down.bytes_down >> 20,
            down.requests,
            down.requests as f64 / (down.bytes_down as f64 / GIB)
        );
        std::fs::remove_file(&out).unwrap();
    }
}
