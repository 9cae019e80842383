//! A datastore on a filesystem that fills up mid-point: the error says
//! what and where, no point becomes visible, and once space is freed the
//! next point succeeds. Needs root (it mounts a small tmpfs), as CI is.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use standby_store::{Consistency, Datastore, DiskWriteOptions, PointMeta, StoreError};

struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Tmpfs<'a> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn random_image(path: &Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                dir_size(&e.path())
            } else {
                md.len()
            }
        })
        .sum()
}

fn meta() -> PointMeta {
    PointMeta {
        vm: "vm1".into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::Value::Null,
        labels: Default::default(),
    }
}

fn opts() -> DiskWriteOptions {
    DiskWriteOptions {
        chunk_size: 64 << 10,
        base: None,
        dirty: None,
    }
}

#[test]
fn a_full_disk_fails_the_point_cleanly_and_the_next_one_succeeds() {
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "24m");
    let big = work.path().join("big.img");
    random_image(&big, 40);
    let small = work.path().join("small.img");
    random_image(&small, 4);

    let store = Datastore::open_or_create(&mnt.join("store")).unwrap();
    let mut w = store.begin_point(meta()).unwrap();
    let err = match w.write_disk("data", &big, opts(), &()) {
        Err(e) => e,
        Ok(_) => w
            .commit()
            .expect_err("40 MiB of random data cannot fit in 24 MiB"),
    };
    let chain = {
        let mut s = err.to_string();
        let mut src = std::error::Error::source(&err);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    };
    assert!(matches!(err, StoreError::Io { .. }), "{chain}");
    assert!(chain.contains("No space left"), "{chain}");
    assert!(
        chain.contains(&mnt.display().to_string()),
        "no path named: {chain}"
    );
    assert!(
        store.list_points().unwrap().is_empty(),
        "a partial point is visible"
    );

    // Space comes back (gc of the garbage the failed point left, or an
    // operator); a smaller point then succeeds and restores intact.
    let reopened = Datastore::open(&mnt.join("store")).unwrap();
    let report = reopened
        .gc(
            standby_store::GcOptions {
                grace: std::time::Duration::ZERO,
                ..Default::default()
            },
            &(),
        )
        .unwrap();
    // Nothing of the failed point is left taking space.
    let used = dir_size(&mnt);
    assert!(used < 1 << 20, "{used} bytes left after gc: {report:?}");
    let mut w = reopened.begin_point(meta()).unwrap();
    w.write_disk("data", &small, opts(), &()).unwrap();
    let m = w.commit().unwrap();
    let out = work.path().join("restored.img");
    reopened.restore_disk(&m.id, "data", &out, &()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());
}
