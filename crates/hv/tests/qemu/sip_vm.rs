//! Live points of the SIP VNF in a real guest, restored and booted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use standby_hv::qemu::PortForward;
use standby_hv::{Driver, QemuDriver};
use standby_store::Datastore;

use crate::common::*;

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
        p1.begin < standby_hv::qemu::AGENT_TIMEOUT + Duration::from_secs(20),
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
    assert!(p2.begin < standby_hv::qemu::AGENT_TIMEOUT + Duration::from_secs(20));
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
