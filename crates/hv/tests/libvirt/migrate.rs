//! Live migration between two libvirtds, one per "site" network
//! namespace (each its own host UUID, hostname and run directories,
//! listening on TCP without authentication: a lab only), while a client
//! sends SIP OPTIONS every 100 ms to the VM.
//!
//! Addresses (198.19.N.0/24, N from the test's pid):
//!
//! ```text
//! root .1 ── .2  site 1 (source libvirtd, the VM's SIP forward)
//! root .5 ── .6  site 2 (destination libvirtd, the VM's SIP forward after the move)
//!  site1 .9 ── .10 site2 (libvirtd to libvirtd, migration and NBD streams)
//! ```
//!
//! The domains have user-mode networking without forwards (the driver
//! has none yet); the test adds the SIP forward itself with HMP
//! `hostfwd_add` at the source after its start and at the destination as
//! soon as the domain runs there (libvirt runs no monitor command on an
//! incoming domain), so the measured gap includes that last step.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standby_hv::libvirt::LibvirtDriver;
use standby_hv::{Driver, HvError, MigrationListen, MigrationOptions, VmState};
use standby_store::Datastore;
use standby_testkit::libvirt::{Libvirtd, LibvirtdOptions};

use crate::common::{spec, take_point, wait_console};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {} (the test needs root and iproute2)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces linked to the root one and to each other; removed on
/// drop.
struct Net {
    n: u32,
    s1: String,
    s2: String,
    root_links: [String; 2],
}

impl Net {
    fn new() -> Net {
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let tag = format!("lm{}", pid % 100_000);
        let net = Net {
            n,
            s1: format!("{tag}a"),
            s2: format!("{tag}b"),
            root_links: [format!("{tag}r1"), format!("{tag}r2")],
        };
        for ns in [&net.s1, &net.s2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for l in &net.root_links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        net.veth(
            &net.root_links[0],
            None,
            1,
            &format!("{tag}s1"),
            Some(&net.s1),
            2,
        );
        net.veth(
            &net.root_links[1],
            None,
            5,
            &format!("{tag}s2"),
            Some(&net.s2),
            6,
        );
        net.veth(
            &format!("{tag}x1"),
            Some(&net.s1),
            9,
            &format!("{tag}x2"),
            Some(&net.s2),
            10,
        );
        net
    }

    fn addr(&self, host: u32) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.n as u8, host as u8)
    }

    fn veth(&self, a: &str, ans: Option<&str>, ah: u32, b: &str, bns: Option<&str>, bh: u32) {
        sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        for (dev, ns, h) in [(a, ans, ah), (b, bns, bh)] {
            let addr = format!("{}/30", self.addr(h));
            match ns {
                Some(ns) => {
                    sh(&["ip", "link", "set", dev, "netns", ns]);
                    sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev]);
                    sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
                }
                None => {
                    sh(&["ip", "addr", "add", &addr, "dev", dev]);
                    sh(&["ip", "link", "set", dev, "up"]);
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.s1, &self.s2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in &self.root_links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

/// SIP OPTIONS every 100 ms to an address that can change under it;
/// the instants answers arrived.
struct Prober {
    stop: Arc<AtomicBool>,
    to: Arc<Mutex<SocketAddr>>,
    thread: std::thread::JoinHandle<(Vec<Instant>, u32)>,
}

impl Prober {
    fn start(to: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(Mutex::new(to));
        let (s, t) = (stop.clone(), target.clone());
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut sent = 0u32;
            let mut next = Instant::now();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) && sent < 6000 {
                let now = Instant::now();
                if now >= next {
                    let to = *t.lock().unwrap();
                    let msg = format!(
                        "OPTIONS sip:{to} SIP/2.0\r\n\
                         Via: SIP/2.0/UDP 198.19.0.1:5060;branch=z9hG4bKlvm{sent};rport\r\n\
                         Max-Forwards: 70\r\n\
                         From: <sip:probe@198.19.0.1>;tag=lvm\r\n\
                         To: <sip:{to}>\r\n\
                         Call-ID: lvm{sent}@198.19.0.1\r\n\
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
            to: target,
            thread,
        }
    }

    fn finish(self) -> (Vec<Instant>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn longest_gap(answers: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &a in answers.iter().filter(|&&a| a >= from && a <= to) {
        gap = gap.max(a - last);
        last = a;
    }
    gap.max(to.saturating_duration_since(last))
}

fn answered_since(answers: &[Instant], since: Instant) -> usize {
    answers.iter().filter(|&&a| a >= since).count()
}

/// `virsh -c URI ARGS`, its success and output.
fn virsh(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The guest's SIP port (udp 5060) forwarded on every address of the
/// domain's namespace (HMP through libvirt: the driver has no forwards).
fn forward_sip(uri: &str, vm: &str) -> (bool, String) {
    virsh(
        uri,
        &[
            "qemu-monitor-command",
            vm,
            "--hmp",
            "hostfwd_add hostnet0 udp:0.0.0.0:5060-:5060",
        ],
    )
}

fn qemu_io(file: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-io {cmd}: {out:?}");
}

/// The disks hold the same data (`qemu-img compare`, shared locks: the
/// destination's domain runs).
fn same_disk(a: &Path, b: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-q"])
        .args([a, b])
        .output()
        .unwrap();
    out.status.success()
}

/// The SIP VNF moves from site 1's libvirtd to site 2's while it runs:
/// libvirt's peer-to-peer migration with storage copy, through the
/// driver's halves (prepare at the destination, migrate out at the
/// source, finish, confirm). First two failed attempts (the
/// destination's libvirtd unreachable; the destination aborted while the
/// disks copy): each time the source runs on, answering, and the aborted
/// destination leaves nothing. Then the move: SIP OPTIONS every
/// 100 ms throughout (to site 1 until the VM runs at site 2), the
/// longest gap and the duration reported; at the end the destination
/// answers, runs a persistent standby domain, the source's domain is
/// gone and the disks are equal. The data disk is 1 GiB qcow2 with
/// 64 MiB written after the journal (`STANDBY_MIG_DATA_MIB` sets the size,
/// `STANDBY_MIG_FILLED` writes all of it). A point is taken first, so
/// the domain migrates with a checkpoint, as a protected VM does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisor_libvirt_live_migration_keeps_sip_answering() {
    let data_mib: u64 = std::env::var("STANDBY_MIG_DATA_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let filled = std::env::var_os("STANDBY_MIG_FILLED").is_some();
    let net = Net::new();
    let lab = |ns: &str, addr: Ipv4Addr| {
        Libvirtd::start_with(LibvirtdOptions {
            netns: Some(ns.to_owned()),
            tcp_listen: Some(addr.to_string()),
            ..LibvirtdOptions::default()
        })
    };
    let (site1, site2) = (lab(&net.s1, net.addr(9)), lab(&net.s2, net.addr(10)));
    assert_ne!(site1.host_uuid, site2.host_uuid);
    let dir = tempfile::Builder::new()
        .prefix("lvmig")
        .tempdir_in("/tmp")
        .unwrap();
    let (d1, d2) = (dir.path().join("host1"), dir.path().join("host2"));
    for d in [&d1, &d2] {
        std::fs::create_dir_all(d.join("state")).unwrap();
    }
    let host1 = LibvirtDriver::new(site1.uri(), d1.join("state"));
    let peer = "qemu+tcp://{addr}/system";
    let host2 = LibvirtDriver::new(site2.uri(), d2.join("state")).with_peer_uri(peer);
    assert!(host1.capabilities().live_migration);
    let mut spec1 = spec(&d1, "pbx", true, false);
    let mut spec2 = spec(&d2, "pbx", true, false);
    spec1.disks[1].size = data_mib << 20;
    spec2.disks[1].size = data_mib << 20;

    host1.create_from_template(&spec1, &[]).await.unwrap();
    // After the VNF's journal (its first 16 MiB): data the copy carries.
    let written = if filled { data_mib - 16 } else { 64 };
    qemu_io(
        &spec1.disks[1].path,
        &format!("write -P 0x5a 16M {written}M"),
    );
    let t = Instant::now();
    assert_eq!(host1.start(&spec1).await.unwrap().state, VmState::Running);
    wait_console(&d1, "pbx", "ready sip=", Duration::from_secs(90)).await;
    eprintln!("source booted in {:.1?}", t.elapsed());
    let (ok, out) = forward_sip(site1.uri(), "pbx");
    assert!(ok, "hostfwd_add at the source: {out}");
    // A protected VM has a checkpoint: the domain migrates with it.
    let store = Datastore::open_or_create(&dir.path().join("store")).unwrap();
    let point = take_point(&host1, &spec1, &store, None).await;
    assert!(point.read("system") > 0);

    let sip1 = SocketAddr::from((net.addr(2), 5060));
    let sip2 = SocketAddr::from((net.addr(6), 5060));
    let prober = Prober::start(sip1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listen = MigrationListen {
        addr: net.addr(10).into(),
        state_port: 49300,
        disk_port: 49301,
    };
    let options = MigrationOptions {
        max_bandwidth: Some(1 << 30),
        timeout: Duration::from_secs(120),
        ..MigrationOptions::default()
    };

    // 1. The destination's libvirtd cannot be reached: nothing moves.
    let target = host2.migrate_in_prepare(&spec2, listen).await.unwrap();
    assert!(spec2.disks.iter().all(|d| d.path.is_file()));
    let lt = target.libvirt.clone().unwrap();
    assert_eq!(lt.peer_uri, format!("qemu+tcp://{}/system", net.addr(10)));
    let mut unreachable = target.clone();
    unreachable.libvirt.as_mut().unwrap().peer_uri =
        format!("qemu+tcp://{}:1/system", net.addr(10));
    let t_fail = Instant::now();
    let err = host1
        .migrate_out(&spec1, &unreachable, options)
        .await
        .unwrap_err();
    eprintln!(
        "migration to an unreachable libvirtd failed in {:.1?}: {err}",
        t_fail.elapsed()
    );
    assert!(matches!(err, HvError::Migration { .. }), "{err:?}");
    assert_eq!(host1.status("pbx").await.unwrap().state, VmState::Running);
    let st = host1.migrate_out_confirm(&spec1, false).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    host2.migrate_in_abort(&spec2).await.unwrap();
    assert!(spec2.disks.iter().all(|d| !d.path.exists()));
    assert!(!virsh(site2.uri(), &["dominfo", "pbx"]).0);
    assert!(host2.migrate_in_finish(&spec2).await.is_err());

    // 2. Given up while the disks copy: the destination's abort destroys
    // the incoming domain, the source's migration fails, the source runs
    // on and the destination is left with nothing.
    let target = host2.migrate_in_prepare(&spec2, listen).await.unwrap();
    let aborter = {
        let uri = site2.uri().to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if virsh(&uri, &["domstate", "pbx"]).1.trim() == "paused" {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let out = {
        let (h, s, t) = (&host1, &spec1, &target);
        async move { h.migrate_out(s, t, options).await }
    };
    let aborting = async {
        while !aborter.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(aborter.join().unwrap(), "no incoming domain at site 2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        host2.migrate_in_abort(&spec2).await
    };
    let t_abort = Instant::now();
    let (out, aborted) = tokio::join!(out, aborting);
    aborted.unwrap();
    let err = out.unwrap_err();
    eprintln!(
        "migration aborted at the destination: failed after {:.1?}: {err}",
        t_abort.elapsed()
    );
    assert!(matches!(err, HvError::Migration { .. }), "{err:?}");
    let st = host1.migrate_out_confirm(&spec1, false).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(spec2.disks.iter().all(|d| !d.path.exists()));
    assert!(!virsh(site2.uri(), &["dominfo", "pbx"]).0);
    assert_eq!(site2.qemu_pids().len(), 0);

    // 3. The move.
    let t_prep = Instant::now();
    // Fresh ports: libvirt 9.0 keeps the NBD port of a destroyed
    // incoming domain reserved ("Failed to reserve port").
    let listen = MigrationListen {
        state_port: 49302,
        disk_port: 49303,
        ..listen
    };
    let target = host2.migrate_in_prepare(&spec2, listen).await.unwrap();
    let prepared = t_prep.elapsed();
    // The destination's SIP forward, as soon as the domain runs there.
    let forwarder = {
        let (uri, src, to) = (
            site2.uri().to_owned(),
            site1.uri().to_owned(),
            prober.to.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(200);
            while Instant::now() < deadline {
                let (ok, state) = virsh(&uri, &["domstate", "pbx"]);
                if ok && state.trim() == "running" {
                    let running = Instant::now();
                    let source = virsh(&src, &["domstate", "pbx"]).1;
                    let (ok, out) = forward_sip(&uri, "pbx");
                    assert!(ok, "hostfwd_add at the destination: {out}");
                    *to.lock().unwrap() = sip2;
                    return Some((running, Instant::now(), source));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    let t_move = Instant::now();
    let report = host1.migrate_out(&spec1, &target, options).await.unwrap();
    let moved = t_move.elapsed();
    let st = host2.migrate_in_finish(&spec2).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    let st = host1.migrate_out_confirm(&spec1, true).await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    let returned = t_move + moved;
    let (running, forwarded, source) = forwarder.join().unwrap().expect("the domain ran at site 2");
    // Never two running copies: when site 2 ran it, site 1's was paused
    // or gone.
    assert!(source.trim() != "running", "the source ran too: {source}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_end = Instant::now();
    let (answers, sent) = prober.finish();
    let gap = longest_gap(&answers, t_move, t_end);
    let after = answered_since(&answers, forwarded + Duration::from_millis(200));
    // The source's last answer before the destination ran: libvirt's
    // switchover as the client saw it (the guest paused, the last pages,
    // the device state, libvirt's Finish resuming the destination).
    let last_source = answers
        .iter()
        .rev()
        .find(|&&a| a <= running)
        .copied()
        .unwrap_or(t_move);
    let signed = |a: Instant, b: Instant| {
        if b >= a {
            format!("{} ms", (b - a).as_millis())
        } else {
            format!("-{} ms", (a - b).as_millis())
        }
    };
    eprintln!(
        "source's last answer -> destination running {} ms; destination running -> forwarded (test's hostfwd_add) {} ms; destination running -> migrate_out returned {}",
        running.saturating_duration_since(last_source).as_millis(),
        (forwarded - running).as_millis(),
        signed(running, returned),
    );
    eprintln!(
        "libvirt live move ({data_mib} MiB data disk, {written} MiB written): prepare {prepared:.1?}, \
         migrate_out {moved:.2?} (disks {:.2?}, {} disk bytes, {} memory bytes), destination \
         forward {:.2?} after the start; longest SIP gap {} ms; {} answers to {sent} probes",
        report.disk_sync,
        report.disk_bytes,
        report.state_bytes,
        forwarded - t_move,
        gap.as_millis(),
        answers.len(),
    );
    assert!(
        after >= 10,
        "the destination answered {after} probes after the move"
    );
    assert!(gap < Duration::from_secs(15), "longest gap {gap:?}");
    // The destination: a persistent standby domain with its own paths.
    let xml = site2.virsh(&["dumpxml", "pbx", "--inactive"]);
    assert!(xml.contains("standby:vm"), "{xml}");
    assert!(
        xml.contains(&spec2.disks[1].path.display().to_string()),
        "{xml}"
    );
    assert!(!xml.contains(&d1.display().to_string()), "{xml}");
    assert!(site2.virsh(&["domstate", "pbx"]).contains("running"));
    // The source: no domain.
    assert!(!virsh(site1.uri(), &["dominfo", "pbx"]).0);
    assert_eq!(site1.qemu_pids().len(), 0);
    for (a, b) in spec1.disks.iter().zip(&spec2.disks) {
        assert!(same_disk(&a.path, &b.path), "disk {} differs", a.name);
    }
    // Finished: an abort finds no migration target and removes nothing.
    assert!(host2.migrate_in_abort(&spec2).await.is_ok());
    assert!(spec2.disks.iter().all(|d| d.path.exists()));
    host2.stop("pbx").await.unwrap();
    drop((site1, site2));
    drop(net);
}
