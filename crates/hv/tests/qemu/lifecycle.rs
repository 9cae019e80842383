//! VM lifecycle: boot, SIP, freeze/thaw, shutdown, crash, adoption, start
//! errors, disks from templates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standby_hv::qemu::DiskFormat;
use standby_hv::{DiskSpec, Driver, HvError, QemuDriver, QemuSpec, VmSpec, VmState};
use standby_vnf::client::options;

use crate::common::*;

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
        libvirt: None,
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
        libvirt: None,
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
