//! Shared helpers: the lab daemon and driver, the guest, VM specs, and
//! taking points into a real datastore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standby_hv::libvirt::LibvirtDriver;
use standby_hv::qemu::{Accel, DiskFormat};
use standby_hv::{DiskSpec, Driver, LibvirtSpec, QemuSpec, VmSpec};
use standby_store::{Consistency, Datastore, DiskWriteOptions, DiskWriteStats, PointMeta};
use standby_testkit::libvirt::Libvirtd;

#[path = "../shared/guest.rs"]
mod guest;
pub use guest::guest;

pub const CHUNK: u32 = 64 << 10;
pub const K: usize = 1 << 10;
pub const M: usize = 1 << 20;

/// A private libvirtd, a driver on it, and a directory for disks and
/// state (dropped in reverse: the daemon and its QEMUs go first).
pub struct Lab {
    pub driver: LibvirtDriver,
    pub daemon: Libvirtd,
    pub dir: tempfile::TempDir,
}

pub fn lab() -> Lab {
    let t = Instant::now();
    let daemon = Libvirtd::start();
    eprintln!("libvirtd ready in {:.1?} at {}", t.elapsed(), daemon.uri());
    let dir = tempfile::Builder::new()
        .prefix("lvt")
        .tempdir_in("/tmp")
        .unwrap();
    let driver = LibvirtDriver::new(daemon.uri(), dir.path().join("state"));
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    Lab {
        driver,
        daemon,
        dir,
    }
}

/// A VM with two qcow2 disks, `system` (16 MiB, vda) and `data` (8 MiB,
/// vdb); with `boot` the guest kernel (and its agent when `agent`),
/// else no bootable disk (firmware only: the disks stay as written).
pub fn spec(dir: &Path, name: &str, boot: bool, agent: bool) -> VmSpec {
    let mut q = QemuSpec {
        memory_mib: 256,
        accel: Accel::Tcg,
        guest_agent: agent,
        ..QemuSpec::default()
    };
    if boot {
        let (kernel, initrd) = guest().clone();
        q.kernel = Some(kernel);
        q.initrd = Some(initrd);
        q.append = Some(format!(
            "console=ttyS0 quiet vnf.name={name}{}",
            if agent { " vnf.agent=1" } else { "" }
        ));
    }
    q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
    q.disk_formats.insert("data".into(), DiskFormat::Qcow2);
    VmSpec {
        name: name.into(),
        command: PathBuf::from("qemu-system-x86_64"),
        args: vec![],
        env: BTreeMap::new(),
        disks: vec![
            DiskSpec {
                name: "system".into(),
                path: dir.join(format!("{name}-system.qcow2")),
                size: 16 << 20,
            },
            DiskSpec {
                name: "data".into(),
                path: dir.join(format!("{name}-data.qcow2")),
                size: 8 << 20,
            },
        ],
        workdir: dir.to_owned(),
        qemu: Some(q),
        libvirt: Some(LibvirtSpec::default()),
    }
}

/// Wait for a line of the guest's console log.
pub async fn wait_console(dir: &Path, name: &str, needle: &str, within: Duration) {
    let log = dir.join(format!("{name}.console.log"));
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no '{needle}' on {} within {within:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one point did, as the tests look at it.
pub struct Taken {
    pub id: String,
    pub note: String,
    pub app_consistent: bool,
    pub stats: BTreeMap<String, DiskWriteStats>,
    pub total: Duration,
}

impl Taken {
    pub fn read(&self, disk: &str) -> u64 {
        self.stats[disk].bytes_read
    }
}

/// Take a point the way the server does: begin relative to `base`, read
/// every disk with its dirty ranges, end, commit, settle.
pub async fn take_point(
    d: &dyn Driver,
    spec: &VmSpec,
    store: &Datastore,
    base: Option<&str>,
) -> Taken {
    let t = Instant::now();
    let mut writer = store
        .begin_point(PointMeta {
            vm: spec.name.clone(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({}),
            labels: BTreeMap::new(),
        })
        .unwrap();
    let src = d
        .snapshot_begin_from(spec, base, u64::from(CHUNK))
        .await
        .unwrap();
    writer.restamp().unwrap();
    let mut stats = BTreeMap::new();
    for disk in &src.disks {
        let opts = DiskWriteOptions {
            chunk_size: CHUNK,
            base: base.map(|b| b.parse().unwrap()),
            dirty: disk.dirty.clone(),
        };
        let s = writer
            .write_disk(&disk.name, &disk.path, opts, &())
            .unwrap();
        stats.insert(disk.name.clone(), s);
    }
    d.snapshot_end(spec).await.unwrap();
    let m = writer.commit().unwrap();
    d.snapshot_committed(spec, Some(m.id.as_str()))
        .await
        .unwrap();
    let taken = Taken {
        id: m.id.to_string(),
        note: src.consistency_note,
        app_consistent: src.app_consistent,
        stats,
        total: t.elapsed(),
    };
    eprintln!(
        "point {} in {:.1?}: {}; read {:?}",
        taken.id,
        taken.total,
        taken.note,
        taken
            .stats
            .iter()
            .map(|(k, v)| (k, v.bytes_read))
            .collect::<Vec<_>>()
    );
    taken
}

pub fn restored(store: &Datastore, dir: &Path, point: &str, disk: &str) -> Vec<u8> {
    let dest = dir.join(format!("restored-{disk}.raw"));
    let _ = std::fs::remove_file(&dest);
    store
        .restore_disk(&point.parse().unwrap(), disk, &dest, &())
        .unwrap();
    let data = std::fs::read(&dest).unwrap();
    std::fs::remove_file(&dest).unwrap();
    data
}

#[derive(Clone, Copy)]
pub enum Op {
    Pattern(u8, usize, usize),
    Zero(usize, usize),
}

/// Write into disk `index` (virtio-disk<index>, libvirt's alias) of a
/// running domain behind the guest's back (HMP `qemu-io` through
/// libvirt), and apply the same change to `mirror`.
pub fn qemu_io(lab: &Lab, vm: &str, index: usize, mirror: &mut [u8], op: Op) {
    let cmd = match op {
        Op::Pattern(byte, off, len) => {
            mirror[off..off + len].fill(byte);
            format!("write -P {byte} {off} {len}")
        }
        Op::Zero(off, len) => {
            mirror[off..off + len].fill(0);
            format!("write -z {off} {len}")
        }
    };
    let out = lab.daemon.virsh(&[
        "qemu-monitor-command",
        vm,
        "--hmp",
        &format!("qemu-io -d /machine/peripheral/virtio-disk{index}/virtio-backend \"{cmd}\""),
    ]);
    assert!(!out.contains("rror"), "qemu-io {index} {cmd}: {out}");
}

/// A qcow2 image holding `data`.
pub fn qcow2_with(dir: &Path, path: &Path, data: &[u8]) {
    let raw = dir.join("pattern.raw");
    std::fs::write(&raw, data).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(raw).unwrap();
}

/// A deterministic non-zero pattern of `len` bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 1
        })
        .collect()
}
