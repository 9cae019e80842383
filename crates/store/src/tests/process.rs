//! Several processes and threads on one store, and the throughput
//! benchmark (ignored).

use super::*;

/// Throughput on a generated 512 MiB image (40 % zero, 35 % compressible,
/// 25 % random). Run with
/// `cargo test --release -p standby-store -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let f = fixture();
    let image = f.work.join("big.img");
    let size: u64 = std::env::var("STANDBY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
        << 20;
    make_image(&image, size, 42);
    let mb = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let t = Instant::now();
    let (m1, s1) = backup(&f.ds, "vm", &image, opts());
    let full = t.elapsed();
    // Change ~1 % of the image.
    let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
    let mut rng = rand::rng();
    for _ in 0..(size >> 16) / 100 {
        let at = rng.random_range(0..size - 100);
        file.write_all_at(&[rng.random::<u8>(); 100], at).unwrap();
    }
    let t = Instant::now();
    let (_m2, s2) = backup(&f.ds, "vm", &image, opts());
    let second = t.elapsed();
    let dest = f.work.join("out.img");
    // Start from a clean page cache writeback state.
    let _ = std::process::Command::new("sync").status();
    let t = Instant::now();
    f.ds.restore_disk(&m1.id, "data", &dest, &()).unwrap();
    let restore = t.elapsed();
    let t = Instant::now();
    let v = f.ds.verify(&()).unwrap();
    let verify = t.elapsed();
    assert!(v.ok());
    println!("image {} MiB", size >> 20);
    println!(
        "full point:   {:>8.0} MB/s ({full:.2?}, stored {} MiB)",
        mb(full),
        s1.bytes_new_stored >> 20
    );
    println!(
        "second point: {:>8.0} MB/s ({second:.2?}, {} new chunks)",
        mb(second),
        s2.chunks_new
    );
    println!("restore:      {:>8.0} MB/s ({restore:.2?})", mb(restore));
    println!("verify:       {verify:.2?} for 2 points");
}

/// Progress that slows a writer down so a test can kill it mid-point.
struct Slow;

impl Progress for Slow {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _delta: u64) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Not a test on its own: the body of a child process started by the
/// multi-process tests below (it does nothing without their environment).
#[test]
#[ignore]
fn child_writer() {
    let (Some(root), Some(vm), Some(image)) = (
        std::env::var_os("STANDBY_CHILD_ROOT"),
        std::env::var("STANDBY_CHILD_VM").ok(),
        std::env::var_os("STANDBY_CHILD_IMAGE"),
    ) else {
        return;
    };
    let ds = Datastore::open(Path::new(&root)).unwrap();
    let mut w = ds.begin_point(meta(&vm)).unwrap();
    let slow = std::env::var_os("STANDBY_CHILD_SLOW").is_some();
    let progress: &dyn Progress = if slow { &Slow } else { &() };
    w.write_disk("data", Path::new(&image), opts(), progress)
        .unwrap();
    w.commit().unwrap();
}

fn spawn_child(root: &Path, vm: &str, image: &Path, slow: bool) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "tests::process::child_writer",
        "--test-threads",
        "1",
    ])
    .env("STANDBY_CHILD_ROOT", root)
    .env("STANDBY_CHILD_VM", vm)
    .env("STANDBY_CHILD_IMAGE", image)
    .stdout(std::process::Stdio::null());
    if slow {
        cmd.env("STANDBY_CHILD_SLOW", "1");
    }
    cmd.spawn().unwrap()
}

#[test]
fn two_processes_write_concurrently() {
    let f = fixture();
    let a = f.work.join("a.img");
    let b = f.work.join("b.img");
    make_image(&a, 24 << 20, 20);
    make_image(&b, 24 << 20, 20); // same content: both store the same chunks
    let children = [
        spawn_child(&f.root, "vma", &a, false),
        spawn_child(&f.root, "vmb", &b, false),
    ];
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let points = f.ds.list_points().unwrap();
    assert_eq!(points.len(), 2);
    assert!(f.ds.verify(&()).unwrap().ok());
    for m in &points {
        let dest = f.work.join("out.img");
        f.ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
        assert_same(&a, &dest);
    }
}

#[test]
fn killed_writer_leaves_no_point() {
    let f = fixture();
    let image = f.work.join("big.img");
    // Random data so packs fill and are flushed before the kill.
    let mut data = vec![0u8; 64 << 20];
    rand::rngs::StdRng::seed_from_u64(21).fill_bytes(&mut data);
    fs::write(&image, &data).unwrap();
    let mut child = spawn_child(&f.root, "vm", &image, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let packs = f.ds.backend().list("packs").unwrap();
        if packs.iter().any(|o| o.path.ends_with(".idx")) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "child finished too soon"
        );
        assert!(Instant::now() < deadline, "child wrote no pack");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let ds = Datastore::open(&f.root).unwrap();
    assert!(ds.list_points().unwrap().is_empty());
    assert!(ds.stats().unwrap().packs >= 1);
    assert!(ds.verify(&()).unwrap().ok());
    // The next point succeeds and reuses what the killed one made durable.
    let (m, stats) = backup(&ds, "vm", &image, opts());
    assert!(stats.chunks_reused > 0, "{stats:?}");
    let dest = f.work.join("out.img");
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
    // gc (no grace) keeps what the new point uses.
    ds.gc(
        GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
        &(),
    )
    .unwrap();
    ds.restore_disk(&m.id, "data", &dest, &()).unwrap();
    assert_same(&image, &dest);
}

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync::<Datastore>();
    send::<PointWriter>();
}
