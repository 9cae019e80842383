//! End-to-end tests: the real `standby-vnf` binary on 127.0.0.1 ephemeral
//! ports, driven with real UDP packets through `standby_vnf::client`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use standby_vnf::{ClientError, client, journal};

const T: Duration = Duration::from_secs(3);

struct Vnf {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    sip: SocketAddr,
    http: SocketAddr,
}

impl Vnf {
    fn start(disk: &Path) -> Vnf {
        Self::try_start(disk).unwrap_or_else(|e| panic!("vnf did not start: {e}"))
    }

    fn try_start(disk: &Path) -> Result<Vnf, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_standby-vnf"))
            .args(["--disk", disk.to_str().unwrap()])
            .args(["--sip", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--name", "test-vnf"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn standby-vnf");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.is_empty() {
            let output = child.wait_with_output().unwrap();
            return Err(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("bad ready line {line:?}"))
        };
        let (sip, http) = (field("sip="), field("http="));
        Ok(Vnf {
            child,
            _stdout: out,
            sip,
            http,
        })
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Vnf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn disk(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("vnf.img");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn aor(i: usize) -> String {
    format!("sip:user{i}@example.com")
}

fn contact(i: usize) -> String {
    format!("sip:user{i}@127.0.0.1:{}", 20000 + i)
}

#[tokio::test]
async fn register_is_acknowledged_and_visible_in_state() {
    let dir = tempfile::tempdir().unwrap();
    let vnf = Vnf::start(&disk(dir.path(), 64 << 20));
    for i in 0..3 {
        client::register(vnf.sip, &aor(i), &contact(i), 600, T)
            .await
            .unwrap();
    }
    let st = client::state(vnf.http).await.unwrap();
    assert_eq!(st.name, "test-vnf");
    assert_eq!(st.bindings.len(), 3);
    for i in 0..3 {
        assert!(st.has_binding(&aor(i), &contact(i)), "{st:?}");
    }
    let b = &st.bindings[0];
    assert_eq!((b.expires, b.seq), (600, 1));
    assert!(b.registered_at > 1_600_000_000_000);
    assert_eq!((st.writes, st.records, st.last_seq), (3, 3, 3));

    // A second contact for the same AOR, then unregister the first.
    client::register(vnf.sip, &aor(0), "sip:desk@127.0.0.1:5999", 60, T)
        .await
        .unwrap();
    client::register(vnf.sip, &aor(0), &contact(0), 0, T)
        .await
        .unwrap();
    let st = client::state(vnf.http).await.unwrap();
    assert!(!st.has_binding(&aor(0), &contact(0)));
    assert!(st.has_binding(&aor(0), "sip:desk@127.0.0.1:5999"));
    assert_eq!((st.writes, st.last_seq, st.bindings.len()), (5, 5, 3));
    // Unregister all contacts of an AOR.
    client::register(vnf.sip, &aor(0), "*", 0, T).await.unwrap();
    let st = client::state(vnf.http).await.unwrap();
    assert!(st.bindings.iter().all(|b| b.aor != aor(0)));

    // /health.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(vnf.http).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

#[tokio::test]
async fn options_answers_200() {
    let dir = tempfile::tempdir().unwrap();
    let vnf = Vnf::start(&disk(dir.path(), 1 << 20));
    let rtt = client::options(vnf.sip, T).await.unwrap();
    assert!(rtt < Duration::from_secs(1), "rtt {rtt:?}");
    // OPTIONS writes nothing.
    assert_eq!(client::state(vnf.http).await.unwrap().writes, 0);
}

#[tokio::test]
async fn options_to_a_dead_port_times_out_after_retransmissions() {
    // Bind then free a port so nothing listens there.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t0 = std::time::Instant::now();
    let err = client::options(port, Duration::from_millis(1200))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.is_temporary());
    assert!(t0.elapsed() >= Duration::from_millis(1100));
}

#[tokio::test]
async fn garbage_packets_do_not_crash_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut vnf = Vnf::start(&disk(dir.path(), 1 << 20));
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0u8; 1],
        vec![0xff; 60_000],
        b"hello".to_vec(),
        b"REGISTER\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n".to_vec(),
        b"REGISTER sip:x SIP/2.0\r\nTo: <>\r\n\r\n".to_vec(),
        b"REGISTER sip:x SIP/2.0\r\nExpires: soon\r\n\r\n".to_vec(),
        "REGISTER sip:x SIP/2.0\r\nVia: \u{1F4A5}\r\n"
            .as_bytes()
            .to_vec(),
    ];
    // Pseudo-random bytes, deterministic.
    let mut x: u32 = 0x1234_5678;
    for len in [7, 100, 1400, 9000] {
        junk.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect(),
        );
    }
    for j in &junk {
        udp.send_to(j, vnf.sip).await.unwrap();
    }
    // Replies to the junk (some of it earns a 400) went to `udp`; the
    // checks below use their own sockets.

    // A request with unreadable headers gets 400, echoing what it can.
    let reply = exchange(
        vnf.sip,
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKa\r\nCall-ID: bad1\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    assert!(reply.contains("Call-ID: bad1"), "{reply}");
    // REGISTER without the mandatory headers: 400.
    let reply = exchange(
        vnf.sip,
        b"REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKb\r\nCall-ID: bad2\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    // Unknown method: 405 with Allow.
    let reply = exchange(
        vnf.sip,
        b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKc\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: inv1\r\nCSeq: 1 INVITE\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("SIP/2.0 405 Method Not Allowed\r\n"),
        "{reply}"
    );
    assert!(reply.contains("Allow: REGISTER, OPTIONS"), "{reply}");
    assert!(reply.contains("To: <sip:x>;tag="), "{reply}");

    assert!(vnf.alive());
    client::options(vnf.sip, T).await.unwrap();
    let st = client::state(vnf.http).await.unwrap();
    assert_eq!(st.writes, 0, "garbage must not be persisted");
}

async fn exchange(to: SocketAddr, msg: &[u8]) -> String {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(msg, to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(T, udp.recv_from(&mut buf))
        .await
        .expect("no reply")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Register from `workers` tasks until `stop`; returns the acknowledged
/// (aor, contact) pairs and every pair that was attempted.
async fn load(
    sip: SocketAddr,
    workers: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    attempted: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (stop, acked, attempted) = (stop.clone(), acked.clone(), attempted.clone());
        set.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = w * 100_000 + i;
                let (a, c) = (aor(n), contact(n));
                attempted.lock().unwrap().push((a.clone(), c.clone()));
                match client::register(sip, &a, &c, 3600, Duration::from_millis(1500)).await {
                    Ok(()) => acked.lock().unwrap().push((a, c)),
                    Err(_) => break,
                }
                i += 1;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_bindings_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 64 << 20);
    let mut vnf = Vnf::start(&img);
    let (stop, acked, attempted) = Default::default();
    let (s2, a2, t2) = (
        Arc::clone(&stop),
        Arc::clone(&acked),
        Arc::clone(&attempted),
    );
    let sip = vnf.sip;
    let loader = tokio::spawn(load(sip, 8, s2, a2, t2));
    // Kill in the middle of the load.
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    vnf.kill9();
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    let acked: Vec<_> = acked.lock().unwrap().clone();
    let attempted: BTreeSet<_> = attempted.lock().unwrap().iter().cloned().collect();

    let vnf = Vnf::start(&img);
    let st = client::state(vnf.http).await.unwrap();
    for (a, c) in &acked {
        assert!(st.has_binding(a, c), "acknowledged {a} -> {c} lost");
    }
    for b in &st.bindings {
        assert!(attempted.contains(&(b.aor.clone(), b.contact.clone())));
    }
    assert!(st.records >= acked.len() as u64);
    assert_eq!(st.writes, 0);
    assert_eq!(st.last_seq, st.records);
    // And it keeps working after the restart.
    client::register(vnf.sip, "sip:after@example.com", "sip:after@h", 60, T)
        .await
        .unwrap();
    let st2 = client::state(vnf.http).await.unwrap();
    assert_eq!(st2.last_seq, st.last_seq + 1);
}

#[tokio::test]
async fn torn_or_garbage_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 1 << 20);
    let mut vnf = Vnf::start(&img);
    for i in 0..5 {
        client::register(vnf.sip, &aor(i), &contact(i), 60, T)
            .await
            .unwrap();
    }
    vnf.kill9();
    let records = journal::scan(&img).unwrap();
    assert_eq!(records.len(), 5);
    let last = records.last().unwrap();
    let tail = last.offset + journal::RECORD_HEADER + last.payload.len() as u64;

    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        // Torn: header and half the payload of record 6.
        journal::encode_record(
            6,
            br#"{"aor":"sip:torn@x","contact":"sip:t","expires":1,"registered_at":1}"#,
        )[..40]
            .to_vec(),
        // Bad CRC.
        {
            let mut r = journal::encode_record(
                6,
                br#"{"aor":"sip:bad@x","contact":"sip:b","expires":1,"registered_at":1}"#,
            );
            r[25] ^= 0x40;
            r
        },
        // Stale sequence number.
        journal::encode_record(
            2,
            br#"{"aor":"sip:old@x","contact":"sip:o","expires":1,"registered_at":1}"#,
        ),
        // Plain garbage.
        vec![0xa5; 300],
    ];
    for (n, garbage) in cases.iter().enumerate() {
        f.write_all_at(garbage, tail).unwrap();
        f.sync_all().unwrap();
        let mut vnf = Vnf::start(&img);
        let st = client::state(vnf.http).await.unwrap();
        assert_eq!(st.records, 5, "case {n}");
        assert_eq!(st.last_seq, 5, "case {n}");
        assert_eq!(st.bindings.len(), 5, "case {n}");
        vnf.kill9();
    }

    // The next append overwrites the garbage; the result replays cleanly.
    let mut vnf = Vnf::start(&img);
    client::register(vnf.sip, &aor(5), &contact(5), 60, T)
        .await
        .unwrap();
    vnf.kill9();
    let vnf = Vnf::start(&img);
    let st = client::state(vnf.http).await.unwrap();
    assert_eq!((st.records, st.last_seq, st.bindings.len()), (6, 6, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_copy_taken_mid_run_replays_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 8 << 20);
    let vnf = Vnf::start(&img);
    let (stop, acked, attempted): (Arc<AtomicBool>, _, _) = Default::default();
    let (s2, a2, t2) = (stop.clone(), Arc::clone(&acked), Arc::clone(&attempted));
    let loader = tokio::spawn(load(vnf.sip, 4, s2, a2, t2));
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut copies = Vec::new();
    for n in 0..3 {
        let before: Vec<(String, String)> = acked.lock().unwrap().clone();
        let copy = dir.path().join(format!("copy{n}.img"));
        std::fs::copy(&img, &copy).unwrap();
        copies.push((copy, before));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    let attempted: BTreeSet<_> = attempted.lock().unwrap().iter().cloned().collect();

    for (copy, before) in copies {
        let v = Vnf::start(&copy);
        let st = client::state(v.http).await.unwrap();
        for (a, c) in &before {
            assert!(
                st.has_binding(a, c),
                "{a} acked before the copy, missing in it"
            );
        }
        for b in &st.bindings {
            assert!(attempted.contains(&(b.aor.clone(), b.contact.clone())));
        }
        assert_eq!(st.last_seq, st.records);
        // A copy is a working disk: it takes new registrations.
        client::register(v.sip, "sip:copy@x", "sip:copy@h", 60, T)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn full_disk_answers_500_and_never_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), journal::MIN_DISK_SIZE);
    let mut vnf = Vnf::start(&img);
    let long = "x".repeat(2000);
    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len();
        let c = format!("sip:{long}{i}@h");
        match client::register(vnf.sip, &aor(i), &c, 60, T).await {
            Ok(()) => acked.push((aor(i), c)),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "disk never filled up");
    };
    match &err {
        ClientError::Rejected { code, reason, .. } => {
            assert_eq!(*code, 500);
            assert_eq!(reason, "Disk Full");
        }
        other => panic!("expected 500, got {other:?}"),
    }
    assert!(!acked.is_empty());
    // Small records still fit in what is left.
    client::options(vnf.sip, T).await.unwrap();
    vnf.kill9();
    let vnf = Vnf::start(&img);
    let st = client::state(vnf.http).await.unwrap();
    assert_eq!(st.records, acked.len() as u64);
    for (a, c) in &acked {
        assert!(st.has_binding(a, c));
    }
}

#[tokio::test]
async fn disk_is_created_when_missing_and_refused_when_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("new.img");
    let vnf = Vnf::start(&img);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    drop(vnf);

    let small = dir.path().join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = Vnf::try_start(&small)
        .err()
        .expect("must refuse a tiny disk");
    assert!(err.contains("too small"), "{err}");

    let foreign = dir.path().join("foreign.img");
    std::fs::write(&foreign, vec![7u8; 1 << 20]).unwrap();
    let err = Vnf::try_start(&foreign)
        .err()
        .expect("must refuse a foreign disk");
    assert!(err.contains("something else"), "{err}");
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 1 << 20);
    let mut vnf = Vnf::start(&img);
    client::register(vnf.sip, &aor(1), &contact(1), 60, T)
        .await
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vnf.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = vnf.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = status.expect("vnf did not exit on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(journal::scan(&img).unwrap().len(), 1);
}

fn sipp() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("sipp"))
            .find(|p| p.is_file())
    });
    found.expect(
        "sipp not found in PATH: install sip-tester (`apt-get install -y sip-tester`) \
         to run the SIPp interoperability test",
    )
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

fn run_sipp(target: SocketAddr, scenario: &Path, calls: u32, workdir: &Path) {
    let out = Command::new(sipp())
        .arg(target.to_string())
        .arg("-sf")
        .arg(scenario)
        .args(["-m", &calls.to_string(), "-r", "50"])
        .args(["-i", "127.0.0.1", "-nostdin", "-timeout", "20s"])
        .current_dir(workdir)
        .output()
        .expect("run sipp");
    assert!(
        out.status.success(),
        "sipp {} failed ({}):\n{}\n{}",
        scenario.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_options_and_register_succeed() {
    let sipp_bin = sipp();
    assert!(sipp_bin.is_file());
    let dir = tempfile::tempdir().unwrap();
    let vnf = Vnf::start(&disk(dir.path(), 1 << 20));
    let (sip, http) = (vnf.sip, vnf.http);
    let wd = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        run_sipp(sip, &scenario("options.xml"), 10, &wd);
        run_sipp(sip, &scenario("register.xml"), 5, &wd);
    })
    .await
    .unwrap();
    let st = client::state(http).await.unwrap();
    assert_eq!(st.writes, 5);
    for n in 1..=5 {
        let a = format!("sip:sipp-{n}@example.com");
        assert!(
            st.bindings.iter().any(|b| b.aor == a),
            "{a} missing: {st:?}"
        );
    }
}
