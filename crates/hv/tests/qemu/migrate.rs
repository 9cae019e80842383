//! Live migration of the SIP VNF between two QEMUs ("two hosts" on
//! loopback), with SIP OPTIONS every 100 ms and REGISTERs writing the data
//! disk all along.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standby_hv::qemu::PortForward;
use standby_hv::{Driver, MigrationListen, MigrationOptions, QemuDriver, VmSpec, VmState};

use crate::common::*;

/// SIGKILLs the QEMUs of a failed test (the drivers never kill on drop).
struct Reaper(Mutex<Vec<u32>>);

impl Reaper {
    fn add(&self, pid: Option<u32>) {
        self.0.lock().unwrap().extend(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// SIP OPTIONS every 100 ms from one socket to `port` on loopback (the
/// port can change under it); the instants answers arrived.
struct Prober {
    stop: Arc<AtomicBool>,
    port: Arc<AtomicU16>,
    thread: std::thread::JoinHandle<(Vec<Instant>, u32)>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicU16::new(port));
        let (s, t) = (stop.clone(), target.clone());
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()));
        let sock = UdpSocket::bind(local).unwrap();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut sent = 0u32;
            let mut next = Instant::now();
            let mut buf = [0u8; 4096];
            // Bounded: ten minutes of probing at most.
            while !s.load(Ordering::Relaxed) && sent < 6000 {
                let now = Instant::now();
                if now >= next {
                    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, t.load(Ordering::Relaxed)));
                    let msg = format!(
                        "OPTIONS sip:{to} SIP/2.0\r\n\
                         Via: SIP/2.0/UDP {local};branch=z9hG4bKmig{sent};rport\r\n\
                         Max-Forwards: 70\r\n\
                         From: <sip:probe@{local}>;tag=mig\r\n\
                         To: <sip:{to}>\r\n\
                         Call-ID: mig{sent}@127.0.0.1\r\n\
                         CSeq: 1 OPTIONS\r\n\
                         Content-Length: 0\r\n\r\n"
                    );
                    let _ = sock.send_to(msg.as_bytes(), to);
                    sent += 1;
                    next += Duration::from_millis(100);
                    continue;
                }
                sock.set_read_timeout(Some(next - now)).unwrap();
                if let Ok((n, _)) = sock.recv_from(&mut buf)
                    && buf[..n].starts_with(b"SIP/2.0 200")
                {
                    answers.push(Instant::now());
                }
            }
            (answers, sent)
        });
        Prober {
            stop,
            port: target,
            thread,
        }
    }

    fn finish(self) -> (Vec<Instant>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Longest time between consecutive answers within `[from, to]`.
fn longest_gap(answers: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &a in answers.iter().filter(|&&a| a >= from && a <= to) {
        gap = gap.max(a - last);
        last = a;
    }
    gap.max(to.saturating_duration_since(last))
}

async fn bindings(http: SocketAddr) -> Vec<String> {
    let st = standby_vnf::client::state(http).await.unwrap();
    let mut aors: Vec<String> = st.bindings.iter().map(|b| b.aor.clone()).collect();
    aors.sort();
    aors
}

/// `b` holds every byte of `a` up to the last non-zero one of each MiB
/// (the source's journal; the destination appended after it), and is as
/// long. Read 1 MiB at a time: the data disk may be 1 GiB.
fn same_prefix(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; M], vec![0u8; M]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb {
            return false;
        }
        if na == 0 {
            return true;
        }
        if let Some(last) = ba[..na].iter().rposition(|&x| x != 0)
            && ba[..=last] != bb[..=last]
        {
            return false;
        }
    }
}

/// Random-looking bytes from 16 MiB to the end of a data disk, where the
/// VNF's journal never reaches in a test: data the mirror must copy.
fn fill_after_journal(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start(16 << 20)).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; M];
    for _ in 0..(len - (16 << 20)) / M as u64 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn spec_at(dir: &Path, sip: u16, http: u16, data_size: u64) -> VmSpec {
    std::fs::create_dir_all(dir).unwrap();
    let mut spec = vm_spec(dir, "pbx", sip);
    spec.qemu
        .as_mut()
        .unwrap()
        .forwards
        .push(PortForward::tcp(http, 8080));
    spec.disks[1].size = data_size;
    spec
}

/// The SIP VNF moves to a second QEMU while it runs: disks mirrored over
/// NBD, then its memory; OPTIONS every 100 ms (sent to the source's
/// forward until the move, then to the destination's, as the front door
/// will) and REGISTERs (journal writes on the data disk) go on all along.
/// The destination answers with every acknowledged registration, its data
/// disk equals the source's at the switchover, the source QEMU is gone.
/// `STANDBY_MIG_DATA_MIB` sets the data disk's size (default 64), and
/// `STANDBY_MIG_FILLED` fills it with data after the journal's first
/// 16 MiB, so the copy carries that much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_qemu_live_migration_keeps_sip_answering() {
    qemu_binary();
    let data_mib: u64 = std::env::var("STANDBY_MIG_DATA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let reaper = Reaper(Mutex::new(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let (sip1, http1, sip2, http2) = (
        free_udp_port(),
        free_tcp_port(),
        free_udp_port(),
        free_tcp_port(),
    );
    let spec1 = spec_at(&dir.path().join("host1"), sip1, http1, data_mib << 20);
    let spec2 = spec_at(&dir.path().join("host2"), sip2, http2, data_mib << 20);
    let host1 = QemuDriver::new(dir.path().join("host1/state"));
    let host2 = QemuDriver::new(dir.path().join("host2/state"));
    host1.create_from_template(&spec1, &[]).await.unwrap();
    let filled = std::env::var_os("STANDBY_MIG_FILLED").is_some();
    if filled {
        fill_after_journal(&spec1.disks[1].path);
    }
    let st = host1.start(&spec1).await.unwrap();
    reaper.add(st.pid);
    let src_pid = st.pid.unwrap();
    let sip_at = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let t = Instant::now();
    assert!(
        sip_answers(sip_at(sip1), Duration::from_secs(60)).await,
        "no SIP answer; console: {}",
        std::fs::read_to_string(dir.path().join("host1/pbx.console.log")).unwrap_or_default()
    );
    eprintln!("source booted to SIP in {:.1?}", t.elapsed());

    // REGISTERs all along, to whichever host the client targets.
    let reg_port = Arc::new(AtomicU16::new(sip1));
    let reg_stop = Arc::new(AtomicBool::new(false));
    let registrar = {
        let (port, stop) = (reg_port.clone(), reg_stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut tried) = (Vec::new(), Vec::new());
            for i in 0..10_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let aor = format!("sip:m{i:04}@example.com");
                tried.push(aor.clone());
                let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port.load(Ordering::Relaxed)));
                let contact = format!("sip:m{i:04}@198.18.0.1:5070");
                if standby_vnf::client::register(to, &aor, &contact, 3600, Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    acked.push(aor);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (acked, tried)
        })
    };
    let prober = Prober::start(sip1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let listen = MigrationListen {
        addr: Ipv4Addr::LOCALHOST.into(),
        state_port: free_tcp_port(),
        disk_port: free_tcp_port(),
    };
    let t0 = Instant::now();
    let target = host2.migrate_in_prepare(&spec2, listen).await.unwrap();
    reaper.add(host2.status("pbx").await.unwrap().pid);
    let prepared = t0.elapsed();
    let options = MigrationOptions {
        max_bandwidth: Some(1 << 30),
        timeout: Duration::from_secs(300),
        ..MigrationOptions::default()
    };
    // Nobody listens for the state: the disks get in sync, the state
    // copy fails, everything is undone and the source runs on.
    let mut dead_end = target.clone();
    dead_end.listen.state_port = free_tcp_port();
    let err = host1
        .migrate_out(&spec1, &dead_end, options)
        .await
        .unwrap_err();
    eprintln!("migration to a dead port: {err}");
    assert!(
        matches!(err, standby_hv::HvError::Migration { .. }),
        "{err:?}"
    );
    let jobs = host1
        .qmp("pbx")
        .unwrap()
        .execute_raw("query-block-jobs", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(jobs, serde_json::json!([]));
    assert_eq!(host1.status("pbx").await.unwrap().state, VmState::Running);
    assert!(sip_answers(sip_at(sip1), Duration::from_secs(2)).await);
    // Copied but given up before the switchover: the destination's QEMU
    // and disks are gone, the source resumes with its disks.
    let spec3 = spec_at(
        &dir.path().join("host3"),
        free_udp_port(),
        free_tcp_port(),
        data_mib << 20,
    );
    let host3 = QemuDriver::new(dir.path().join("host3/state"));
    let listen3 = MigrationListen {
        addr: Ipv4Addr::LOCALHOST.into(),
        state_port: free_tcp_port(),
        disk_port: free_tcp_port(),
    };
    let target3 = host3.migrate_in_prepare(&spec3, listen3).await.unwrap();
    reaper.add(host3.status("pbx").await.unwrap().pid);
    assert!(spec3.disks.iter().all(|d| d.path.is_file()));
    let t_abort = Instant::now();
    host1.migrate_out(&spec1, &target3, options).await.unwrap();
    assert_eq!(host1.status("pbx").await.unwrap().state, VmState::Frozen);
    host3.migrate_in_abort(&spec3).await.unwrap();
    let st = host1.migrate_out_confirm(&spec1, false).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(sip_answers(sip_at(sip1), Duration::from_secs(5)).await);
    assert_eq!(host3.status("pbx").await.unwrap().state, VmState::Stopped);
    assert!(spec3.disks.iter().all(|d| !d.path.exists()));
    assert!(host3.migrate_in_finish(&spec3).await.is_err());
    let t_move = Instant::now();
    let report = host1.migrate_out(&spec1, &target, options).await.unwrap();
    let t_finish = Instant::now();
    let st = host2.migrate_in_finish(&spec2).await.unwrap();
    let finish = t_finish.elapsed();
    assert_eq!(st.state, VmState::Running);
    prober.port.store(sip2, Ordering::Relaxed);
    reg_port.store(sip2, Ordering::Relaxed);
    let moved = t_move.elapsed();
    let st = host1.migrate_out_confirm(&spec1, true).await.unwrap();
    assert_eq!(st.state, VmState::Stopped, "{st:?}");
    let confirmed = t_move.elapsed();
    assert!(
        !Path::new(&format!("/proc/{src_pid}")).exists(),
        "source qemu {src_pid} still runs"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    reg_stop.store(true, Ordering::Relaxed);
    let (mut acked, tried) = registrar.await.unwrap();
    let t_end = Instant::now();
    let (answers, sent) = prober.finish();
    let st = host2.status("pbx").await.unwrap();
    if st.state != VmState::Running {
        let why = match host2.qmp("pbx") {
            Some(q) => format!(
                "{:?}",
                q.execute_raw("query-status", serde_json::Value::Null).await
            ),
            None => "no qmp".into(),
        };
        panic!(
            "destination {st:?} after the move ({why}); qemu log: {}",
            std::fs::read_to_string(dir.path().join("host2/pbx.log")).unwrap_or_default()
        );
    }
    assert!(sip_answers(sip_at(sip2), Duration::from_secs(5)).await);
    // Every acknowledged registration is there, nothing never sent.
    acked.sort();
    let have = bindings(SocketAddr::from((Ipv4Addr::LOCALHOST, http2))).await;
    for aor in &acked {
        assert!(
            have.contains(aor),
            "{aor} acknowledged, missing after the move"
        );
    }
    assert!(have.iter().all(|a| tried.contains(a)), "{have:?}");

    let attempt = t_move - t0 - prepared;
    let gap = longest_gap(&answers, t_move, t_end);
    let aborted_gap = longest_gap(&answers, t_abort, t_move);
    let before = longest_gap(&answers, t0 - Duration::from_secs(2), t0);
    let unanswered = sent as usize - answers.len();
    eprintln!(
        "live migration ({data_mib} MiB data disk{} + 16 MiB system, 256 MiB RAM, TCG): \
         prepare {prepared:.2?}, failed attempt + copied-then-aborted attempt {attempt:.2?} \
         (longest SIP gap in the aborted one {aborted_gap:.2?}), moved (destination resumed) {moved:.2?}, source stopped {confirmed:.2?}; \
         disks in sync after {:.2?} ({} bytes mirrored), state copy {:.2?} ({} bytes), \
         qemu downtime {:?} (switchover {:.2?}), finish {finish:.2?}; longest SIP gap {gap:.2?} (before the move {before:.2?}); \
         {sent} OPTIONS, {unanswered} unanswered; {} of {} REGISTERs acknowledged",
        if filled {
            " filled after 16 MiB"
        } else {
            " (sparse)"
        },
        report.disk_sync,
        report.disk_bytes,
        report.state_copy,
        report.state_bytes,
        report.downtime,
        report.switchover,
        acked.len(),
        tried.len(),
    );
    assert!(report.disk_bytes >= (data_mib << 20) + (16 << 20));
    assert!(gap < Duration::from_secs(5), "SIP gap {gap:?}");

    // The destination's disks hold what the source's held at the
    // switchover (the source's data disk is its journal up to its last
    // record, zeroes after it; the destination appended after that).
    host2.stop("pbx").await.unwrap();
    assert!(
        same_prefix(&spec1.disks[1].path, &spec2.disks[1].path),
        "data disks differ"
    );
    let cmp = std::process::Command::new("qemu-img")
        .arg("compare")
        .args([&spec1.disks[0].path, &spec2.disks[0].path])
        .output()
        .unwrap();
    assert!(cmp.status.success(), "system disks differ: {cmp:?}");
    // The journal on the destination's disk holds them: reboot from it.
    let st = host2.start(&spec2).await.unwrap();
    reaper.add(st.pid);
    assert!(sip_answers(sip_at(sip2), Duration::from_secs(60)).await);
    let replayed = bindings(SocketAddr::from((Ipv4Addr::LOCALHOST, http2))).await;
    assert_eq!(
        replayed, have,
        "registrations after a reboot from the moved disk"
    );

    // Over TLS (each host with its own certificate from one CA): the VM
    // moves from host 2 to host 4; a TLS host refuses a plain destination,
    // and a destination whose certificate another CA signed fails the
    // handshake, the source running on.
    let pki = dir.path().join("pki");
    standby_tls::pki::init(&pki).unwrap();
    let other = dir.path().join("other-pki");
    standby_tls::pki::init(&other).unwrap();
    let tls_of = |pki: &Path, name: &str| {
        let who = standby_tls::Identity::peer(name).unwrap();
        standby_tls::pki::issue(pki, &who, 1).unwrap();
        standby_hv::MigrationTls {
            ca: standby_tls::pki::bundle_path(pki),
            cert: standby_tls::pki::cert_path(pki, &who),
            key: standby_tls::pki::key_path(pki, &who),
            name: who.dns_name(),
        }
    };
    // Host 2's driver again, now with TLS: it adopts the running VM.
    drop(host2);
    let host2 =
        QemuDriver::new(dir.path().join("host2/state")).with_migration_tls(tls_of(&pki, "host2"));
    assert_eq!(host2.status("pbx").await.unwrap().state, VmState::Running);
    let mut plain = target.clone();
    plain.tls_name = None;
    let err = host2
        .migrate_out(&spec2, &plain, options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS only"), "{err}");
    let (sip4, http4) = (free_udp_port(), free_tcp_port());
    let spec4 = spec_at(&dir.path().join("host4"), sip4, http4, data_mib << 20);
    let listen = || MigrationListen {
        addr: Ipv4Addr::LOCALHOST.into(),
        state_port: free_tcp_port(),
        disk_port: free_tcp_port(),
    };
    let stranger =
        QemuDriver::new(dir.path().join("host4/state")).with_migration_tls(tls_of(&other, "host4"));
    let bad = stranger.migrate_in_prepare(&spec4, listen()).await.unwrap();
    reaper.add(stranger.status("pbx").await.unwrap().pid);
    let err = host2.migrate_out(&spec2, &bad, options).await.unwrap_err();
    eprintln!("migration to a destination of another CA: {err}");
    stranger.migrate_in_abort(&spec4).await.unwrap();
    drop(stranger);
    assert_eq!(host2.status("pbx").await.unwrap().state, VmState::Running);
    assert!(sip_answers(sip_at(sip2), Duration::from_secs(5)).await);
    let host4 =
        QemuDriver::new(dir.path().join("host4/state")).with_migration_tls(tls_of(&pki, "host4"));
    let target4 = host4.migrate_in_prepare(&spec4, listen()).await.unwrap();
    reaper.add(host4.status("pbx").await.unwrap().pid);
    assert_eq!(target4.tls_name.as_deref(), Some("host4.peer.standby"));
    let t_tls = Instant::now();
    let report = host2.migrate_out(&spec2, &target4, options).await.unwrap();
    host4.migrate_in_finish(&spec4).await.unwrap();
    let tls_moved = t_tls.elapsed();
    host2.migrate_out_confirm(&spec2, true).await.unwrap();
    assert!(sip_answers(sip_at(sip4), Duration::from_secs(5)).await);
    assert_eq!(
        bindings(SocketAddr::from((Ipv4Addr::LOCALHOST, http4))).await,
        have,
        "registrations after the move over TLS"
    );
    eprintln!(
        "live migration over TLS: moved in {tls_moved:.2?} (disks in sync after {:.2?}, qemu downtime {:?})",
        report.disk_sync, report.downtime
    );
    host4.stop("pbx").await.unwrap();
    drop(reaper);
}
