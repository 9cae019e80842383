//! Define, start, status, freeze, graceful shutdown and stop of a domain
//! standby defines; a foreign domain of the same name is never
//! redefined; application-consistent points and their fallback.

use std::time::{Duration, Instant};

use standby_hv::{Driver, HvError, VmState};
use standby_store::Datastore;

use crate::common::{lab, spec, take_point, wait_console};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_lifecycle() {
    let lab = lab();
    let d = &lab.driver;
    let dir = lab.dir.path();
    let spec = spec(dir, "lc", true, false);
    assert_eq!(d.kind(), "libvirt");
    assert!(matches!(
        d.start(&spec).await,
        Err(HvError::DiskMissing { .. })
    ));
    d.create_from_template(&spec, &[]).await.unwrap();
    assert_eq!(d.status("lc").await.unwrap().state, VmState::Stopped);

    let t = Instant::now();
    let st = d.start(&spec).await.unwrap();
    let start = t.elapsed();
    assert_eq!(st.state, VmState::Running, "{st:?}");
    let xml = lab.daemon.virsh(&["dumpxml", "lc"]);
    assert!(xml.contains("standby:vm"), "{xml}");
    assert!(xml.contains("<target dev='vdb' bus='virtio'/>"), "{xml}");
    // Idempotent: a second start returns the running status.
    let again = d.start(&spec).await.unwrap();
    assert_eq!(again.state, VmState::Running);
    assert_eq!(again.since, st.since);
    let t = Instant::now();
    wait_console(dir, "lc", "ready sip=", Duration::from_secs(90)).await;
    let boot = t.elapsed() + start;

    d.freeze("lc").await.unwrap();
    assert_eq!(d.status("lc").await.unwrap().state, VmState::Frozen);
    d.thaw("lc").await.unwrap();
    assert_eq!(d.status("lc").await.unwrap().state, VmState::Running);

    // Graceful: the ACPI power button, within the timeout.
    let t = Instant::now();
    let st = d.shutdown("lc", Duration::from_secs(30)).await.unwrap();
    let shutdown = t.elapsed();
    assert_eq!(st.state, VmState::Stopped, "{st:?}");
    let reason = st.exit.clone().unwrap_or_default();
    assert!(reason.contains("shut off"), "{st:?}");
    assert!(
        d.shutdown("lc", Duration::from_secs(1))
            .await
            .unwrap()
            .state
            == VmState::Stopped
    );
    assert_eq!(d.stop("lc").await.unwrap().state, VmState::Stopped);

    // Forced stop of a running domain; the definition stays, redefined
    // at the next start with the same UUID.
    let uuid = lab.daemon.virsh(&["domuuid", "lc"]);
    d.start(&spec).await.unwrap();
    let t = Instant::now();
    let st = d.stop("lc").await.unwrap();
    let stop = t.elapsed();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(lab.daemon.virsh(&["domuuid", "lc"]), uuid);
    eprintln!(
        "define+start {start:.1?}, boot to ready {boot:.1?}, acpi shutdown {shutdown:.1?} ({reason}), destroy {stop:.1?}"
    );

    // A domain of that name standby did not define is left alone.
    let mut other = crate::common::spec(dir, "foreign", false, false);
    other.disks.truncate(0);
    lab.daemon.virsh(&["define", &write_foreign(dir)]);
    let e = d.start(&other).await.unwrap_err();
    assert!(e.to_string().contains("standby did not define"), "{e}");
    assert!(
        !lab.daemon
            .virsh(&["dumpxml", "foreign"])
            .contains("standby:vm")
    );
    // No QEMU outlives its domain (libvirt reaps it; give the kernel a
    // moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.daemon.qemu_pids().is_empty() {
        let stats: Vec<String> = (lab.daemon.qemu_pids().iter())
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
            .collect();
        assert!(
            Instant::now() < deadline,
            "a qemu outlived its domain: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal domain made by someone else.
pub fn write_foreign(dir: &std::path::Path) -> String {
    let f = dir.join("foreign.xml");
    std::fs::write(
        &f,
        "<domain type='qemu'><name>foreign</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os></domain>",
    )
    .unwrap();
    f.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_guest_agent_points() {
    let lab = lab();
    let d = &lab.driver;
    let dir = lab.dir.path();
    let store = Datastore::open_or_create(&dir.join("store")).unwrap();

    // The guest runs qemu-ga: the point goes through fsfreeze.
    let spec = spec(dir, "ga", true, true);
    d.create_from_template(&spec, &[]).await.unwrap();
    d.start(&spec).await.unwrap();
    assert!(d.vm_capabilities(&spec).app_consistent);
    wait_console(dir, "ga", "ready sip=", Duration::from_secs(90)).await;
    // qemu-ga starts with the VNF; give it a moment to open its port.
    let deadline = Instant::now() + Duration::from_secs(20);
    let p = loop {
        let p = take_point(d, &spec, &store, None).await;
        if !p.note.contains("not connected") || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The tiny guest mounts no filesystem on its disks: the agent
    // answers and freezes nothing, which the label says.
    assert!(
        p.note
            .starts_with("crash-consistent (guest agent froze no filesystems)")
            || p.note
                .starts_with("application-consistent (guest agent froze"),
        "{}",
        p.note
    );
    assert_eq!(
        p.app_consistent,
        p.note.starts_with("application-consistent")
    );
    let frozen = lab.daemon.virsh(&[
        "qemu-agent-command",
        "ga",
        r#"{"execute":"guest-fsfreeze-status"}"#,
    ]);
    assert!(frozen.contains("thawed"), "guest left frozen: {frozen}");
    d.stop("ga").await.unwrap();

    // A guest agent channel but no agent in the guest: bounded, labelled
    // crash-consistent.
    let spec = crate::common::spec(dir, "noga", true, true);
    let mut spec = spec;
    if let Some(q) = spec.qemu.as_mut() {
        q.append = Some("console=ttyS0 quiet vnf.name=noga".into());
    }
    d.create_from_template(&spec, &[]).await.unwrap();
    d.start(&spec).await.unwrap();
    wait_console(dir, "noga", "ready sip=", Duration::from_secs(90)).await;
    let t = Instant::now();
    let p = take_point(d, &spec, &store, None).await;
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(p.note.starts_with("crash-consistent ("), "{}", p.note);
    assert!(!p.app_consistent);
    d.stop("noga").await.unwrap();
}
