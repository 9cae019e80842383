//! The qemu driver and its QMP client against a real `qemu-system-x86_64`
//! (software emulation). A missing QEMU fails these tests with the command
//! that installs it; they never skip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use standby_hv::qemu::{Accel, DiskFormat, PortForward};
use standby_hv::qmp::Qmp;
use standby_hv::{DiskSpec, Driver, HvError, QemuDriver, QemuSpec, VmSpec, VmState, VmStatus};
use standby_store::{Consistency, Datastore, DiskWriteOptions, DiskWriteStats, PointId, PointMeta};
use standby_vnf::client::options;

const INSTALL: &str = "apt-get install -y qemu-system-x86 qemu-utils busybox-static cpio";

fn qemu_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("qemu-system-x86_64 is not installed; run: {INSTALL}"))
}

async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no qmp socket at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn qmp_against_real_qemu() {
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("m.qmp");
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_socket(&sock).await;
    let qmp = Qmp::connect(&sock, Duration::from_secs(10)).await.unwrap();
    assert!(qmp.version()["qemu"]["major"].as_u64().unwrap() >= 7);
    let mut events = qmp.events();
    // Concurrent callers on one connection.
    let (a, b) = tokio::join!(
        qmp.query_status(),
        qmp.execute_raw("query-name", serde_json::Value::Null)
    );
    assert!(a.unwrap().running);
    assert!(b.unwrap().is_object());
    qmp.stop().await.unwrap();
    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "paused"));
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.event, "STOP");
    qmp.cont().await.unwrap();
    assert!(qmp.query_status().await.unwrap().running);
    // A QMP error carries QEMU's class and description.
    match qmp
        .execute_raw(
            "block-dirty-bitmap-add",
            serde_json::json!({"node": "nope", "name": "b"}),
        )
        .await
    {
        Err(HvError::QmpCommand { class, desc, .. }) => {
            assert_eq!(class, "GenericError");
            assert!(desc.contains("nope"), "{desc}");
        }
        other => panic!("expected a qmp error, got {other:?}"),
    }
    qmp.quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), qmp.closed())
        .await
        .unwrap();
    // RESUME from `cont`, then SHUTDOWN from `quit`.
    let mut seen = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        seen.push(ev.event.clone());
        if ev.event == "SHUTDOWN" {
            assert_eq!(ev.data["reason"], "host-qmp-quit");
            break;
        }
    }
    assert_eq!(seen, ["RESUME", "SHUTDOWN"]);
}

/// `target/` of this build (CARGO_TARGET_TMPDIR is `target/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Build `standby-vnf` and the guest (kernel + initrd) once per test
/// binary, into `target/tmp/guest` (the .debs stay cached there).
fn guest() -> &'static (PathBuf, PathBuf) {
    static GUEST: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    GUEST.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", "standby-vnf", "--bin", "standby-vnf"])
            .env("CARGO_TARGET_DIR", target_dir())
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(st.success(), "cargo build -p standby-vnf failed");
        let vnf = target_dir().join("debug/standby-vnf");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
        let t = Instant::now();
        let st = std::process::Command::new(repo_root().join("scripts/build-guest"))
            .arg("--vnf")
            .arg(&vnf)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("scripts/build-guest: {e}; install: {INSTALL}"));
        assert!(st.success(), "scripts/build-guest failed; needs: {INSTALL}");
        eprintln!("guest built in {:.1?}", t.elapsed());
        (out.join("vmlinuz"), out.join("initrd.img"))
    })
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn vm_spec(dir: &Path, name: &str, sip_port: u16) -> VmSpec {
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
    }
}

async fn sip_answers(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if options(addr, Duration::from_millis(500)).await.is_ok() {
            return true;
        }
    }
    false
}

async fn wait_state(d: &QemuDriver, name: &str, want: VmState, within: Duration) -> VmStatus {
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

/// Boot, SIP, freeze/thaw, graceful shutdown, restart, crash, adoption:
/// one VM at a time (two cores, software emulation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle() {
    qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_udp_port();
    let sip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let spec = vm_spec(dir.path(), "pbx1", port);
    let driver = QemuDriver::new(&state);
    driver.create_from_template(&spec, &[]).await.unwrap();
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Stopped);

    let t = Instant::now();
    let st = driver.start(&spec).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    let pid = st.pid.unwrap();
    assert!(
        sip_answers(sip, Duration::from_secs(60)).await,
        "no SIP answer; console: {}",
        std::fs::read_to_string(dir.path().join("pbx1.console.log")).unwrap_or_default()
    );
    eprintln!("boot to SIP answer (TCG): {:.1?}", t.elapsed());
    // Idempotent start: the same VM.
    assert_eq!(driver.start(&spec).await.unwrap().pid, Some(pid));
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Running);

    driver.freeze("pbx1").await.unwrap();
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Frozen);
    assert!(
        options(sip, Duration::from_millis(700)).await.is_err(),
        "a paused guest answered"
    );
    driver.freeze("pbx1").await.unwrap();
    driver.thaw("pbx1").await.unwrap();
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Running);
    assert!(sip_answers(sip, Duration::from_secs(10)).await);

    // A point is live: the guest keeps running and answering.
    let src = driver.snapshot_begin(&spec).await.unwrap();
    assert!(
        src.consistency_note.starts_with("crash-consistent")
            && src.consistency_note.contains("live"),
        "{}",
        src.consistency_note
    );
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Running);
    assert!(sip_answers(sip, Duration::from_secs(10)).await);
    driver.snapshot_end(&spec).await.unwrap();
    driver.snapshot_committed(&spec, None).await.unwrap();
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Running);

    let t = Instant::now();
    let st = driver
        .shutdown("pbx1", Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(st.state, VmState::Stopped, "{st:?}");
    eprintln!("graceful shutdown: {:.1?}, {:?}", t.elapsed(), st.exit);
    assert_eq!(driver.stop("pbx1").await.unwrap().state, VmState::Stopped);

    // Start again, then kill QEMU behind the driver's back: Crashed.
    let st = driver.start(&spec).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(st.pid.unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crashed = wait_state(&driver, "pbx1", VmState::Crashed, Duration::from_secs(10)).await;
    assert_eq!(crashed.exit.as_deref(), Some("signal 9"));

    // Adoption: a new driver on the same state dir (a restarted
    // controller) sees the running VM and can stop it.
    let st = driver.start(&spec).await.unwrap();
    let pid = st.pid.unwrap();
    assert!(sip_answers(sip, Duration::from_secs(60)).await);
    drop(driver);
    let second = QemuDriver::new(&state);
    let adopted = second.status("pbx1").await.unwrap();
    assert_eq!((adopted.state, adopted.pid), (VmState::Running, Some(pid)));
    assert_eq!(second.start(&spec).await.unwrap().pid, Some(pid));
    second.freeze("pbx1").await.unwrap();
    second.thaw("pbx1").await.unwrap();
    let st = second.stop("pbx1").await.unwrap();
    assert_eq!(st.state, VmState::Stopped, "{st:?}");

    // A guest that powers itself off was not asked to: Crashed, with the
    // SHUTDOWN reason. (The VNF cannot open its disk, init powers off.)
    let mut broken = spec.clone();
    broken.qemu.as_mut().unwrap().append =
        Some("console=ttyS0 quiet vnf.name=pbx1 vnf.disk=/proc/no-such-disk".into());
    second.start(&broken).await.unwrap();
    let st = wait_state(&second, "pbx1", VmState::Crashed, Duration::from_secs(60)).await;
    assert_eq!(
        st.exit.as_deref(),
        Some("exit code 0 (shutdown reason: guest-shutdown)")
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            s.contains(") Z")
        }
    );
}

/// QEMU refusing its command line is a start error naming QEMU's complaint,
/// and the VM is left Crashed with the exit status.
#[tokio::test]
async fn start_failure_reports_qemu_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = VmSpec {
        name: "bad".into(),
        command: qemu_binary(),
        args: vec!["-no-such-option".into()],
        env: BTreeMap::new(),
        disks: vec![],
        workdir: dir.path().to_owned(),
        qemu: Some(QemuSpec::default()),
    };
    let driver = QemuDriver::new(dir.path().join("state"));
    match driver.start(&spec).await {
        Err(HvError::StartFailed { detail, .. }) => {
            assert!(detail.contains("no-such-option"), "{detail}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    let st = wait_state(&driver, "bad", VmState::Crashed, Duration::from_secs(10)).await;
    assert_eq!(st.exit.as_deref(), Some("exit code 1"));
}

#[tokio::test]
async fn create_from_template_overlays_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.raw");
    std::fs::write(&template, vec![7u8; 1 << 20]).unwrap();
    let mut q = QemuSpec::default();
    q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
    let mut spec = VmSpec {
        name: "t1".into(),
        command: PathBuf::new(),
        args: vec![],
        env: BTreeMap::new(),
        disks: vec![
            DiskSpec {
                name: "system".into(),
                path: dir.path().join("t1-system.qcow2"),
                size: 4 << 20,
            },
            DiskSpec {
                name: "data".into(),
                path: dir.path().join("t1-data.img"),
                size: 2 << 20,
            },
        ],
        workdir: dir.path().to_owned(),
        qemu: Some(q),
    };
    let driver = QemuDriver::new(dir.path().join("state"));
    driver
        .create_from_template(
            &spec,
            &[
                ("system".into(), template.clone()),
                ("data".into(), template.clone()),
            ],
        )
        .await
        .unwrap();
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&spec.disks[0].path)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img: {e}; install: {INSTALL}"));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename"], template.to_str().unwrap());
    assert_eq!(info["virtual-size"], 4 << 20);
    // The raw copy holds the template's bytes, then zeros up to its size.
    let data = std::fs::read(&spec.disks[1].path).unwrap();
    assert_eq!(data.len(), 2 << 20);
    assert!(data[..1 << 20].iter().all(|b| *b == 7));
    assert!(data[1 << 20..].iter().all(|b| *b == 0));

    // Again: refused, and nothing changed.
    std::fs::write(&spec.disks[1].path, b"precious").unwrap();
    let err = driver.create_from_template(&spec, &[]).await.unwrap_err();
    assert!(matches!(err, HvError::DiskExists { .. }), "{err}");
    assert_eq!(std::fs::read(&spec.disks[1].path).unwrap(), b"precious");
    // A template that does not fit is refused before anything is made.
    spec.disks[0].path = dir.path().join("small.qcow2");
    spec.disks[0].size = 4096;
    spec.disks[1].path = dir.path().join("other.img");
    let err = driver
        .create_from_template(&spec, &[("system".into(), template)])
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::TemplateTooLarge { .. }), "{err}");
    assert!(!spec.disks[0].path.exists());
}

// ---------------------------------------------------------------------
// Live points into a real datastore.

const CHUNK: u32 = 64 << 10;

/// What one point did, as the tests look at it.
struct Taken {
    id: String,
    note: String,
    app_consistent: bool,
    stats: BTreeMap<String, DiskWriteStats>,
    /// `snapshot_begin_from` (freeze attempt + backup jobs).
    begin: Duration,
    /// Begin to commit.
    total: Duration,
}

impl Taken {
    fn read(&self, disk: &str) -> u64 {
        self.stats[disk].bytes_read
    }
}

/// Take a point the way the server will: open the writer, begin (relative
/// to `base`), read every disk with its dirty ranges, end, commit, and
/// tell the driver it is committed.
async fn take_point(d: &QemuDriver, spec: &VmSpec, store: &Datastore, base: Option<&str>) -> Taken {
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

fn restored(store: &Datastore, dir: &Path, point: &str, disk: &str) -> Vec<u8> {
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
async fn qemu_io(d: &QemuDriver, vm: &str, node: &str, mirror: &mut [u8], op: Op) {
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
enum Op {
    Pattern(u8, usize, usize),
    Zero(usize, usize),
}

const K: usize = 1 << 10;
const M: usize = 1 << 20;

/// A VM with no guest OS (firmware finds nothing to boot) whose disks the
/// test writes through QEMU: exact dirty accounting, zeroes, abandoned
/// points, base mismatch, QEMU restart (raw bitmap lost, qcow2 kept),
/// QEMU killed (qcow2 bitmap inconsistent), restore into qcow2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_points_follow_writes_zeroes_and_restarts() {
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let mut q = QemuSpec {
        memory_mib: 64,
        accel: Accel::Tcg,
        ..QemuSpec::default()
    };
    q.disk_formats.insert("sys".into(), DiskFormat::Qcow2);
    let spec = VmSpec {
        name: "lp".into(),
        command: qemu,
        args: vec![],
        env: BTreeMap::new(),
        disks: vec![
            DiskSpec {
                name: "sys".into(),
                path: dir.path().join("lp-sys.qcow2"),
                size: 8 << 20,
            },
            DiskSpec {
                name: "data".into(),
                path: dir.path().join("lp-data.img"),
                size: 8 << 20,
            },
        ],
        workdir: dir.path().to_owned(),
        qemu: Some(q),
    };
    // Both disks start full of a pattern (no zero chunks to hide behind).
    let mut sys: Vec<u8> = (0..8 * M).map(|i| (i % 251) as u8 + 1).collect();
    let mut data = sys.clone();
    let pattern = dir.path().join("pattern.raw");
    std::fs::write(&pattern, &sys).unwrap();
    std::fs::write(&spec.disks[1].path, &data).unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&pattern)
        .arg(&spec.disks[0].path)
        .status()
        .unwrap();
    assert!(st.success());
    let d = QemuDriver::new(dir.path().join("state"));
    d.start(&spec).await.unwrap();
    let caps = d.vm_capabilities(&spec);
    assert!(caps.live_snapshot && caps.dirty_tracking && !caps.app_consistent);

    let p1 = take_point(&d, &spec, &store, None).await;
    assert!(
        p1.note
            .starts_with("crash-consistent (no guest agent configured), live"),
        "{}",
        p1.note
    );
    assert!(
        p1.note.contains("sys: full read: no base point"),
        "{}",
        p1.note
    );
    assert!(!p1.app_consistent);
    assert_eq!(p1.read("data"), 8 << 20);
    assert_eq!(restored(&store, dir.path(), &p1.id, "data"), data);
    assert_eq!(restored(&store, dir.path(), &p1.id, "sys"), sys);

    // Data, zeroes over data, and data that happens to be zero.
    for op in [
        Op::Pattern(0x55, M, 64 * K),
        Op::Zero(3 * M, 128 * K),
        Op::Pattern(0, 5 * M, 4 * K),
    ] {
        qemu_io(&d, "lp", "data", &mut data, op).await;
    }
    for op in [Op::Zero(0, 64 * K), Op::Pattern(0x66, 6 * M + 8 * K, 4 * K)] {
        qemu_io(&d, "lp", "sys", &mut sys, op).await;
    }
    let p2 = take_point(&d, &spec, &store, Some(&p1.id)).await;
    assert!(
        p2.note
            .contains(&format!("data: incremental from {}", p1.id)),
        "{}",
        p2.note
    );
    assert!(
        p2.note
            .contains(&format!("sys: incremental from {}", p1.id)),
        "{}",
        p2.note
    );
    // Exactly the dirty 64 KiB chunks: 1 + 2 + 1 on data, 1 + 1 on sys.
    assert_eq!(p2.read("data"), 4 * 64 * 1024);
    assert_eq!(p2.read("sys"), 2 * 64 * 1024);
    assert_eq!(
        restored(&store, dir.path(), &p2.id, "data"),
        data,
        "zeroes restored as zeroes"
    );
    assert_eq!(restored(&store, dir.path(), &p2.id, "sys"), sys);

    // An abandoned point: its changes are still in the next one.
    qemu_io(
        &d,
        "lp",
        "data",
        &mut data,
        Op::Pattern(0x77, 2 * M, 64 * K),
    )
    .await;
    let abandoned = store
        .begin_point(PointMeta {
            vm: "lp".into(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({}),
            labels: BTreeMap::new(),
        })
        .unwrap();
    d.snapshot_begin_from(&spec, Some(&p2.id), u64::from(CHUNK))
        .await
        .unwrap();
    d.snapshot_end(&spec).await.unwrap();
    drop(abandoned);
    d.snapshot_committed(&spec, None).await.unwrap();
    qemu_io(&d, "lp", "data", &mut data, Op::Zero(M, 64 * K)).await;
    let p3 = take_point(&d, &spec, &store, Some(&p2.id)).await;
    assert!(
        p3.note
            .contains(&format!("data: incremental from {}", p2.id)),
        "{}",
        p3.note
    );
    assert_eq!(p3.read("data"), 2 * 64 * 1024);
    assert_eq!(p3.read("sys"), 0);
    assert_eq!(restored(&store, dir.path(), &p3.id, "data"), data);

    // A full point that fails keeps the bitmap it found.
    let failed = store
        .begin_point(PointMeta {
            vm: "lp".into(),
            site: "site1".into(),
            consistency: Consistency::Crash,
            config: serde_json::json!({}),
            labels: BTreeMap::new(),
        })
        .unwrap();
    let src = d
        .snapshot_begin_from(&spec, None, u64::from(CHUNK))
        .await
        .unwrap();
    assert!(src.disks.iter().all(|disk| disk.dirty.is_none()));
    d.snapshot_end(&spec).await.unwrap();
    drop(failed);
    d.snapshot_committed(&spec, None).await.unwrap();

    // The caller's base is not the point the bitmap counts from.
    let p4 = take_point(&d, &spec, &store, Some(&p2.id)).await;
    assert!(
        p4.note.contains(&format!(
            "data: full read: dirty bitmap counts from point {}, not from the base {}",
            p3.id, p2.id
        )),
        "{}",
        p4.note
    );
    assert_eq!(p4.read("data"), 8 << 20);

    // QEMU restarted (cleanly): the raw disk's bitmap is gone, the qcow2
    // one was saved in the image.
    d.stop("lp").await.unwrap();
    d.start(&spec).await.unwrap();
    qemu_io(&d, "lp", "sys", &mut sys, Op::Pattern(0x11, 7 * M, 64 * K)).await;
    let p5 = take_point(&d, &spec, &store, Some(&p4.id)).await;
    assert!(
        p5.note
            .contains("data: full read: dirty bitmap lost after QEMU restart"),
        "{}",
        p5.note
    );
    assert!(
        p5.note
            .contains(&format!("sys: incremental from {}", p4.id)),
        "{}",
        p5.note
    );
    assert_eq!(p5.read("data"), 8 << 20);
    assert_eq!(p5.read("sys"), 64 << 10);
    assert_eq!(restored(&store, dir.path(), &p5.id, "sys"), sys);
    assert_eq!(restored(&store, dir.path(), &p5.id, "data"), data);

    // QEMU killed while a bitmap it loaded from the qcow2 is in use: the
    // image flags it, the next QEMU loads it as inconsistent.
    d.stop("lp").await.unwrap();
    d.start(&spec).await.unwrap();
    let pid = d.status("lp").await.unwrap().pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_state(&d, "lp", VmState::Crashed, Duration::from_secs(10)).await;
    d.start(&spec).await.unwrap();
    let p6 = take_point(&d, &spec, &store, Some(&p5.id)).await;
    assert!(
        p6.note
            .contains("sys: full read: dirty bitmap inconsistent"),
        "{}",
        p6.note
    );
    assert_eq!(p6.read("sys"), 8 << 20);
    d.stop("lp").await.unwrap();

    // A cold point reads qcow2 as raw.
    let cold = take_point(&d, &spec, &store, Some(&p6.id)).await;
    assert!(cold.note.starts_with("cold"), "{}", cold.note);
    assert_eq!(restored(&store, dir.path(), &cold.id, "sys"), sys);

    // Restore into a new VM: qcow2 disk converted, raw disk as is.
    let mut site2 = spec.clone();
    site2.name = "lp2".into();
    site2.disks[0].path = dir.path().join("lp2-sys.qcow2");
    site2.disks[1].path = dir.path().join("lp2-data.img");
    for disk in ["sys", "data"] {
        let raw = dir.path().join(format!("lp2-{disk}.restore"));
        store
            .restore_disk(&p6.id.parse().unwrap(), disk, &raw, &())
            .unwrap();
        d.install_restored_disk(&site2, disk, &raw).await.unwrap();
        assert!(!raw.exists());
    }
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&site2.disks[0].path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&site2.disks[0].path)
        .arg(&spec.disks[0].path)
        .status()
        .unwrap();
    assert!(cmp.success(), "restored qcow2 differs from the source disk");
    assert_eq!(std::fs::read(&site2.disks[1].path).unwrap(), data);
    // Never over an existing disk.
    let raw = dir.path().join("again.restore");
    std::fs::write(&raw, b"x").unwrap();
    let err = d
        .install_restored_disk(&site2, "data", &raw)
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::DiskExists { .. }), "{err}");
    assert_eq!(std::fs::read(&site2.disks[1].path).unwrap(), data);
}

async fn bindings(http: SocketAddr) -> Vec<String> {
    let st = standby_vnf::client::state(http).await.unwrap();
    let mut aors: Vec<String> = st.bindings.iter().map(|b| b.aor.clone()).collect();
    aors.sort();
    aors
}

async fn register_users(sip: SocketAddr, range: std::ops::Range<u32>) -> Vec<String> {
    let mut aors = Vec::new();
    for i in range {
        let aor = format!("sip:u{i:03}@example.com");
        standby_vnf::client::register(
            sip,
            &aor,
            &format!("sip:u{i:03}@198.18.0.1:5070"),
            3600,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        aors.push(aor);
    }
    aors
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The SIP VNF in a real guest: users registered, a full point, more
/// users, an incremental point that reads about what changed; the guest
/// agent channel is configured but nothing answers in this guest, so the
/// points are crash-consistent and say so, within the freeze timeout.
/// Restored at "site 2" into new images, the VM boots with exactly the
/// registrations acknowledged before the point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_points_of_a_sip_vm_restore_and_boot() {
    qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let port = free_udp_port();
    let http_port = free_tcp_port();
    let sip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut spec = vm_spec(dir.path(), "pbx2", port);
    {
        let q = spec.qemu.as_mut().unwrap();
        q.forwards.push(PortForward::tcp(http_port, 8080));
        q.guest_agent = true;
    }
    let driver = QemuDriver::new(dir.path().join("site1"));
    driver.create_from_template(&spec, &[]).await.unwrap();
    assert!(driver.vm_capabilities(&spec).app_consistent);
    driver.start(&spec).await.unwrap();
    assert!(
        sip_answers(sip, Duration::from_secs(60)).await,
        "no SIP answer; console: {}",
        std::fs::read_to_string(dir.path().join("pbx2.console.log")).unwrap_or_default()
    );
    let mut acked = register_users(sip, 0..20).await;

    let p1 = take_point(&driver, &spec, &store, None).await;
    assert!(!p1.app_consistent);
    assert!(
        p1.note
            .starts_with("crash-consistent (guest agent did not answer"),
        "{}",
        p1.note
    );
    // Nothing answering costs the freeze timeout, not a hang.
    assert!(
        p1.begin < standby_hv::qemu::FREEZE_TIMEOUT + Duration::from_secs(20),
        "{:?}",
        p1.begin
    );
    let data_size = spec.disks[1].size;
    assert_eq!(p1.read("data"), data_size);

    acked.extend(register_users(sip, 20..40).await);
    let p2 = take_point(&driver, &spec, &store, Some(&p1.id)).await;
    assert!(
        p2.note
            .contains(&format!("data: incremental from {}", p1.id)),
        "{}",
        p2.note
    );
    // 20 journal records of ~100 bytes: a chunk or two, not 64 MiB.
    let read = p2.read("data");
    assert!(
        read > 0 && read <= 4 * u64::from(CHUNK),
        "read {read} bytes"
    );
    assert_eq!(p2.read("system"), 0);
    assert!(p2.begin < standby_hv::qemu::FREEZE_TIMEOUT + Duration::from_secs(20));
    eprintln!(
        "incremental point: {read} of {data_size} bytes read, {:.1?} (full: {:.1?})",
        p2.total, p1.total
    );
    // Acknowledged after the point: must not come back.
    register_users(sip, 40..45).await;
    driver.stop("pbx2").await.unwrap();

    // Site 2: restore into new images (system qcow2, data raw), boot.
    let port2 = free_udp_port();
    let http2 = free_tcp_port();
    let mut spec2 = vm_spec(dir.path(), "pbx2r", port2);
    spec2
        .qemu
        .as_mut()
        .unwrap()
        .forwards
        .push(PortForward::tcp(http2, 8080));
    // This one runs qemu-ga in the guest.
    spec2.qemu.as_mut().unwrap().append =
        Some("console=ttyS0 quiet vnf.name=pbx2 vnf.agent=1".into());
    spec2.qemu.as_mut().unwrap().guest_agent = true;
    let site2 = QemuDriver::new(dir.path().join("site2"));
    let t = Instant::now();
    for disk in ["system", "data"] {
        let raw = dir.path().join(format!("site2-{disk}.restore"));
        store
            .restore_disk(&p2.id.parse().unwrap(), disk, &raw, &())
            .unwrap();
        site2
            .install_restored_disk(&spec2, disk, &raw)
            .await
            .unwrap();
    }
    eprintln!("restore of {} (2 disks): {:.1?}", p2.id, t.elapsed());
    let t = Instant::now();
    site2.start(&spec2).await.unwrap();
    let sip2: SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    assert!(
        sip_answers(sip2, Duration::from_secs(60)).await,
        "restored vm: no SIP answer; console: {}",
        std::fs::read_to_string(dir.path().join("pbx2r.console.log")).unwrap_or_default()
    );
    eprintln!("restored vm: boot to SIP answer {:.1?}", t.elapsed());
    let http: SocketAddr = format!("127.0.0.1:{http2}").parse().unwrap();
    acked.sort();
    assert_eq!(bindings(http).await, acked);
    // A guest agent that answers: sync, freeze, thaw through the
    // virtio-serial port. This guest's data is on a raw block device, so
    // nothing is frozen and the point says it is crash-consistent.
    let p3 = take_point(&site2, &spec2, &store, None).await;
    assert!(
        p3.note
            .starts_with("crash-consistent (guest agent froze no filesystems)"),
        "{}; console: {}",
        p3.note,
        std::fs::read_to_string(dir.path().join("pbx2r.console.log")).unwrap_or_default()
    );
    assert!(p3.begin < Duration::from_secs(3) + Duration::from_secs(20));
    assert!(
        sip_answers(sip2, Duration::from_secs(10)).await,
        "guest left frozen?"
    );
    register_users(sip2, 100..101).await;
    site2.stop("pbx2r").await.unwrap();
}

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
