//! Behaviour tests of the whole datastore: the shared helpers here, the
//! tests by concern in the submodules.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use crate::*;
use standby_types::error_chain as chain;

mod damage;
mod gc;
mod hardening;
mod onto;
mod process;
mod repair;
mod sync;
mod template;
mod transfer;
mod write;

const CS: u32 = 64 << 10;

/// An image mixing zero, compressible and random 64 KiB regions
/// (40 % / 35 % / 25 %), with a partial last chunk when `size` asks.
fn make_image(path: &Path, size: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = fs::File::create(path).unwrap();
    let mut buf = vec![0u8; CS as usize];
    let mut off = 0u64;
    let mut n = 0u64;
    while off < size {
        let len = (size - off).min(u64::from(CS)) as usize;
        match n % 20 {
            0..8 => buf.fill(0),
            8..15 => {
                let line = format!("chunk {n} seed {seed} of a compressible standby test image\n");
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            }
            _ => rng.fill_bytes(&mut buf),
        }
        f.write_all(&buf[..len]).unwrap();
        off += len as u64;
        n += 1;
    }
}

fn meta(vm: &str) -> PointMeta {
    PointMeta {
        vm: vm.into(),
        site: "site1".into(),
        consistency: Consistency::Crash,
        config: serde_json::json!({"cpus": 2}),
        labels: BTreeMap::from([("tier".into(), "gold".into())]),
    }
}

fn opts() -> DiskWriteOptions {
    DiskWriteOptions::default()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    ds: Datastore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let ds = Datastore::open_or_create(&root).unwrap();
    Fixture {
        _dir: dir,
        root,
        work,
        ds,
    }
}

/// One point of `vm` with one disk `data` made from `image`.
fn backup(
    ds: &Datastore,
    vm: &str,
    image: &Path,
    o: DiskWriteOptions,
) -> (Manifest, DiskWriteStats) {
    let mut w = ds.begin_point(meta(vm)).unwrap();
    let stats = w.write_disk("data", image, o, &()).unwrap();
    (w.commit().unwrap(), stats)
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "sizes differ");
    assert!(x == y, "contents differ");
}

fn flip(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, offset).unwrap();
}

/// The first non-zero data chunk of a point's disk and its location.
fn some_chunk(ds: &Datastore, m: &Manifest) -> (ChunkId, catalog::Location) {
    let ids = ds.read_disk_index(&m.disks[0]).unwrap();
    let id = *ids.iter().find(|i| !i.is_zero()).unwrap();
    (id, ds.catalog().get(&id).unwrap())
}

fn pack_file(root: &Path, pack: &PackId) -> PathBuf {
    root.join(pack.pack_path())
}
