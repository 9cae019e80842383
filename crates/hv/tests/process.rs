//! The process driver against real processes (`sh`, `sleep`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use standby_hv::{DiskSpec, Driver, HvError, ProcessDriver, VmSpec, VmState};

fn sh(name: &str, dir: &Path, script: &str) -> VmSpec {
    VmSpec {
        name: name.to_owned(),
        command: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: BTreeMap::new(),
        disks: vec![],
        workdir: dir.to_owned(),
        qemu: None,
        libvirt: None,
    }
}

async fn wait_state(d: &dyn Driver, name: &str, want: VmState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = d.status(name).await.unwrap();
        if st.state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stuck in {st:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn start_status_shutdown_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let d: Arc<dyn Driver> = Arc::new(ProcessDriver::new());
    assert_eq!(d.kind(), "process");
    assert_eq!(d.status("vm1").await.unwrap().state, VmState::Stopped);

    let spec = sh("vm1", dir.path(), "echo hello; exec sleep 60");
    let st = d.start(&spec).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    let pid = st.pid.unwrap();
    assert!(pid_alive(pid));
    // The log receives the workload's output.
    let log_path = dir.path().join("vm1.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("hello")
    {
        assert!(Instant::now() < deadline, "no output in {log_path:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Starting again returns the same run.
    assert_eq!(d.start(&spec).await.unwrap().pid, Some(pid));

    let st = d.shutdown("vm1", Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(st.exit.as_deref(), Some("signal 15"));
    assert_eq!(st.pid, None);
    assert!(!pid_alive(pid));
    // Idempotent when stopped.
    assert_eq!(
        d.shutdown("vm1", Duration::from_secs(1))
            .await
            .unwrap()
            .state,
        VmState::Stopped
    );
    assert_eq!(d.stop("vm1").await.unwrap().state, VmState::Stopped);
    assert_eq!(
        d.stop("never-started").await.unwrap().state,
        VmState::Stopped
    );
}

#[tokio::test]
async fn shutdown_kills_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    let spec = sh(
        "stubborn",
        dir.path(),
        "trap '' TERM; echo ready > ready; while true; do sleep 0.05; done",
    );
    d.start(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dir.path().join("ready").exists() {
        assert!(Instant::now() < deadline, "shell never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = Instant::now();
    let st = d
        .shutdown("stubborn", Duration::from_millis(500))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(st.exit.as_deref(), Some("signal 9"));
    assert!(
        took >= Duration::from_millis(450),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    // The child sleep writes its pid so we can check it died too.
    let spec = sh("group", dir.path(), "sleep 60 & echo $! > child; wait");
    d.start(&spec).await.unwrap();
    let child_file = dir.path().join("child");
    let deadline = Instant::now() + Duration::from_secs(5);
    let child: u32 = loop {
        if let Ok(s) = std::fs::read_to_string(&child_file)
            && let Ok(pid) = s.trim().parse()
        {
            break pid;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(pid_alive(child));
    let st = d.stop("group").await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(st.exit.as_deref(), Some("signal 9"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(child) {
        assert!(Instant::now() < deadline, "child {child} survived stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unexpected_exit_is_a_crash_and_can_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    let spec = sh("crashy", dir.path(), "sleep 0.1; exit 3");
    d.start(&spec).await.unwrap();
    wait_state(&d, "crashy", VmState::Crashed).await;
    let st = d.status("crashy").await.unwrap();
    assert_eq!(st.exit.as_deref(), Some("exit code 3"));
    assert!(st.since.is_some());
    assert_eq!(st.pid, None);

    // Killed by a signal from outside: also a crash, described as such.
    let spec = sh("victim", dir.path(), "exec sleep 60");
    let pid = d.start(&spec).await.unwrap().pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_state(&d, "victim", VmState::Crashed).await;
    assert_eq!(
        d.status("victim").await.unwrap().exit.as_deref(),
        Some("signal 9")
    );

    // A crashed VM starts again.
    let spec = sh("crashy", dir.path(), "exec sleep 60");
    assert_eq!(d.start(&spec).await.unwrap().state, VmState::Running);
    assert!(d.stop_all().await.is_empty());
    assert_eq!(d.status("crashy").await.unwrap().state, VmState::Stopped);
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test]
async fn freeze_stops_progress_and_thaw_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    let out = dir.path().join("out");
    let spec = sh(
        "writer",
        dir.path(),
        "while true; do echo tick >> out; sleep 0.01; done",
    );
    d.start(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(file_len(&out) > 0);

    d.freeze("writer").await.unwrap();
    d.freeze("writer").await.unwrap(); // idempotent
    assert_eq!(d.status("writer").await.unwrap().state, VmState::Frozen);
    // Let a write that was in flight land, then measure.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let frozen_len = file_len(&out);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(file_len(&out), frozen_len, "file grew while frozen");

    d.thaw("writer").await.unwrap();
    assert_eq!(d.status("writer").await.unwrap().state, VmState::Running);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(file_len(&out) > frozen_len, "file did not grow after thaw");

    // A frozen VM can still be shut down gracefully.
    d.freeze("writer").await.unwrap();
    let st = d.shutdown("writer", Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.state, VmState::Stopped);

    let err = d.freeze("writer").await.unwrap_err();
    assert!(matches!(err, HvError::NotRunning { .. }), "{err}");
    assert!(d.freeze("nobody").await.is_err());
    assert!(d.thaw("writer").await.is_err());
}

#[tokio::test]
async fn snapshot_freezes_and_returns_the_disk_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    let disk = dir.path().join("disk0.img");
    std::fs::write(&disk, b"data").unwrap();
    let mut spec = sh("snap", dir.path(), "exec sleep 60");
    spec.disks.push(DiskSpec {
        name: "disk0".into(),
        path: disk.clone(),
        size: 4,
    });

    // Not running: a cold snapshot.
    let src = d.snapshot_begin(&spec).await.unwrap();
    assert!(src.consistency_note.starts_with("cold"));
    d.snapshot_end(&spec).await.unwrap();

    d.start(&spec).await.unwrap();
    let src = d.snapshot_begin(&spec).await.unwrap();
    assert_eq!(src.disks.len(), 1);
    assert_eq!(src.disks[0].name, "disk0");
    assert_eq!(src.disks[0].path, disk);
    assert_eq!(src.disks[0].dirty, None);
    assert!(src.consistency_note.contains("crash-consistent"));
    assert_eq!(d.status("snap").await.unwrap().state, VmState::Frozen);
    d.snapshot_end(&spec).await.unwrap();
    assert_eq!(d.status("snap").await.unwrap().state, VmState::Running);
    d.stop("snap").await.unwrap();
}

#[tokio::test]
async fn start_fails_clearly_when_a_disk_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    let mut spec = sh("nodisk", dir.path(), "exec sleep 60");
    let missing = dir.path().join("missing.img");
    spec.disks.push(DiskSpec {
        name: "root".into(),
        path: missing.clone(),
        size: 1 << 20,
    });
    let err = d.start(&spec).await.unwrap_err();
    assert!(matches!(err, HvError::DiskMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("root") && msg.contains("missing.img"), "{msg}");
    assert!(!err.is_temporary());
    assert_eq!(d.status("nodisk").await.unwrap().state, VmState::Stopped);

    // A command that does not exist is a clear error too.
    let mut spec = sh("nocmd", dir.path(), "");
    spec.command = dir.path().join("no-such-binary");
    let err = d.start(&spec).await.unwrap_err();
    assert!(matches!(err, HvError::Spawn { .. }), "{err:?}");
}

#[tokio::test]
async fn create_from_template_makes_a_sparse_copy_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDriver::new();
    // 8 MiB template: data at the start and at 4 MiB, holes elsewhere.
    let template = dir.path().join("template.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&template).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all(b"boot sector").unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
    }
    let root = dir.path().join("vms/vm1/root.img");
    let scratch = dir.path().join("vms/vm1/scratch.img");
    let mut spec = sh("vm1", dir.path(), "exec sleep 60");
    spec.disks = vec![
        DiskSpec {
            name: "root".into(),
            path: root.clone(),
            size: 16 << 20,
        },
        DiskSpec {
            name: "scratch".into(),
            path: scratch.clone(),
            size: 1 << 20,
        },
    ];
    d.create_from_template(&spec, &[("root".into(), template.clone())])
        .await
        .unwrap();

    let src = std::fs::read(&template).unwrap();
    let dst = std::fs::read(&root).unwrap();
    assert_eq!(dst.len(), 16 << 20, "grown to the declared disk size");
    assert_eq!(&dst[..src.len()], &src[..]);
    assert!(dst[src.len()..].iter().all(|b| *b == 0));
    let allocated = std::fs::metadata(&root).unwrap().blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "copy is not sparse: {allocated} bytes allocated"
    );
    assert_eq!(std::fs::metadata(&scratch).unwrap().len(), 1 << 20);

    // Never overwrite an existing disk.
    std::fs::write(&root, b"precious").unwrap();
    let err = d
        .create_from_template(&spec, &[("root".into(), template.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::DiskExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&root).unwrap(), b"precious");

    // Unknown disk names and too-small disks are refused.
    let err = d
        .create_from_template(&spec, &[("nope".into(), template.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::UnknownDisk { .. }), "{err:?}");
    let mut small = sh("vm2", dir.path(), "");
    small.disks = vec![DiskSpec {
        name: "root".into(),
        path: dir.path().join("vm2.img"),
        size: 1 << 20,
    }];
    let err = d
        .create_from_template(&small, &[("root".into(), template)])
        .await
        .unwrap_err();
    assert!(matches!(err, HvError::TemplateTooLarge { .. }), "{err:?}");
    assert!(!dir.path().join("vm2.img").exists());
}

#[tokio::test]
async fn status_serializes_lowercase() {
    let st = standby_hv::VmStatus::stopped();
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains("\"stopped\""), "{json}");
}

/// A restarted owner (a new driver on the same state dir) adopts the VM
/// its predecessor left running, thaws it if it was left frozen, never
/// starts a second copy, and can stop it.
#[tokio::test]
async fn a_new_driver_adopts_running_vms_and_never_starts_a_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("run");
    let spec = sh("vm1", dir.path(), "exec sleep 60");
    let first = ProcessDriver::with_state_dir(&state);
    let pid = first.start(&spec).await.unwrap().pid.unwrap();
    first.freeze("vm1").await.unwrap();
    // The owner dies mid-point: its children are not killed.
    drop(first);

    let second = ProcessDriver::with_state_dir(&state);
    let st = second.status("vm1").await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.pid, Some(pid));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(
        !stat.contains(") T "),
        "the adopted vm is still frozen: {stat}"
    );
    let again = second.start(&spec).await.unwrap();
    assert_eq!(again.pid, Some(pid), "a second copy was started");

    let st = second.stop("vm1").await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert!(!pid_alive(pid));
    assert!(!state.join("vm1.pid").exists());

    // A pid file naming a process that is gone (or another process with
    // the same pid) is not adopted.
    std::fs::write(state.join("vm1.pid"), format!("{} 1\n", std::process::id())).unwrap();
    let third = ProcessDriver::with_state_dir(&state);
    assert_eq!(third.status("vm1").await.unwrap().state, VmState::Stopped);
}
