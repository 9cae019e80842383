//! Shared helpers: QEMU and the guest image, VM specs, waits, and taking
//! live points into a real datastore.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standby_hv::qemu::{Accel, DiskFormat, PortForward};
use standby_hv::{DiskSpec, Driver, QemuDriver, QemuSpec, VmSpec, VmState, VmStatus};
use standby_store::{Consistency, Datastore, DiskWriteOptions, DiskWriteStats, PointId, PointMeta};
use standby_vnf::client::options;

#[path = "../shared/guest.rs"]
mod guest;
pub use guest::{INSTALL, guest};

pub fn qemu_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("qemu-system-x86_64 is not installed; run: {INSTALL}"))
}

/// Connects to QEMU's QMP socket once it listens: QEMU creates the file
/// when it binds and listens a moment later, so a refused connection is
/// retried until a deadline.
pub async fn connect_qmp(path: &Path) -> standby_hv::qmp::Qmp {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match standby_hv::qmp::Qmp::connect(path, Duration::from_secs(10)).await {
            Ok(q) => return q,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no qmp at {}: {e}",
                path.display()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use standby_testkit::free_port as free_udp_port;

pub fn vm_spec(dir: &Path, name: &str, sip_port: u16) -> VmSpec {
    let (kernel, initrd) = guest().clone();
    let mut q = QemuSpec {
        memory_mib: 256,
        accel: Accel::Tcg,
        kernel: Some(kernel),
        initrd: Some(initrd),
        append: Some(format!("console=ttyS0 quiet vnf.name={name}")),
        forwards: vec![PortForward::udp(sip_port, 5060)],
        ..QemuSpec::default()
    };
    q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
    VmSpec {
        name: name.into(),
        command: qemu_binary(),
        args: vec![],
        env: BTreeMap::new(),
        // vda: an (empty) system overlay, vdb: the VNF's raw data disk.
        disks: vec![
            DiskSpec {
                name: "system".into(),
                path: dir.join(format!("{name}-system.qcow2")),
                size: 16 << 20,
            },
            DiskSpec {
                name: "data".into(),
                path: dir.join(format!("{name}-data.img")),
                size: 64 << 20,
            },
        ],
        workdir: dir.to_owned(),
        qemu: Some(q),
        libvirt: None,
    }
}

pub async fn sip_answers(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if options(addr, Duration::from_millis(500)).await.is_ok() {
            return true;
        }
    }
    false
}

pub async fn wait_state(d: &QemuDriver, name: &str, want: VmState, within: Duration) -> VmStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = d.status(name).await.unwrap();
        if st.state == want {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "vm {name}: {st:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------
// Live points into a real datastore.

pub const CHUNK: u32 = 64 << 10;

/// What one point did, as the tests look at it.
pub struct Taken {
    pub id: String,
    pub note: String,
    pub app_consistent: bool,
    pub stats: BTreeMap<String, DiskWriteStats>,
    /// `snapshot_begin_from` (freeze attempt + backup jobs).
    pub begin: Duration,
    /// Begin to commit.
    pub total: Duration,
}

impl Taken {
    pub fn read(&self, disk: &str) -> u64 {
        self.stats[disk].bytes_read
    }
}

/// Take a point the way the server will: open the writer, begin (relative
/// to `base`), read every disk with its dirty ranges, end, commit, and
/// tell the driver it is committed.
pub async fn take_point(
    d: &QemuDriver,
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
    let begin = t.elapsed();
    writer.restamp().unwrap();
    writer.set_label("snapshot", &src.consistency_note);
    let mut stats = BTreeMap::new();
    for disk in &src.disks {
        let opts = DiskWriteOptions {
            chunk_size: CHUNK,
            base: base.map(|b| b.parse::<PointId>().unwrap()),
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
    eprintln!(
        "point {} in {:.1?} (begin {:.1?}): {}; read {:?}",
        m.id,
        t.elapsed(),
        begin,
        src.consistency_note,
        stats
            .iter()
            .map(|(k, v)| (k, v.bytes_read))
            .collect::<Vec<_>>()
    );
    Taken {
        id: m.id.to_string(),
        note: src.consistency_note,
        app_consistent: src.app_consistent,
        stats,
        begin,
        total: t.elapsed(),
    }
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

/// Write into a disk of a running VM behind the guest's back (HMP
/// `qemu-io`), and apply the same change to `mirror`.
pub async fn qemu_io(d: &QemuDriver, vm: &str, node: &str, mirror: &mut [u8], op: Op) {
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
    let out = d
        .qmp(vm)
        .unwrap()
        .execute_raw(
            "human-monitor-command",
            serde_json::json!({ "command-line": format!("qemu-io -d /machine/peripheral/{node}-blk/virtio-backend \"{cmd}\"") }),
        )
        .await
        .unwrap();
    let out = out.as_str().unwrap_or_default();
    // Silent on success with -d; the restored images check the writes.
    assert!(!out.contains("rror"), "qemu-io {node} {cmd}: {out}");
}

#[derive(Clone, Copy)]
pub enum Op {
    Pattern(u8, usize, usize),
    Zero(usize, usize),
}

pub const K: usize = 1 << 10;
pub const M: usize = 1 << 20;

pub use standby_testkit::free_port as free_tcp_port;
