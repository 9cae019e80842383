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

    // A point pauses the guest, is labelled, and resumes it.
    let src = driver.snapshot_begin(&spec).await.unwrap();
    assert!(
        src.consistency_note.starts_with("crash-consistent"),
        "{}",
        src.consistency_note
    );
    assert_eq!(driver.status("pbx1").await.unwrap().state, VmState::Frozen);
    driver.snapshot_end(&spec).await.unwrap();
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
