//! A real QEMU VM protected and restored through the controller: two qemu
//! hosts at two sites whose forwarded SIP/HTTP ports listen on each site's
//! own loopback address (`{site.addr}`). Skipped, saying so, when
//! `qemu-system-x86_64` is not installed (CI installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{STANDBY, free_port, wait_listening};

pub(crate) const INSTALL: &str =
    "apt-get install -y qemu-system-x86 qemu-utils busybox-static cpio";

pub(crate) fn qemu_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
    })
}

/// `target/` of this build (CARGO_TARGET_TMPDIR is `target/tmp`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Build `standby-vnf` and the guest (kernel + initrd) once per test
/// binary into `target/tmp/guest`, as the driver's own tests do (the
/// .debs stay cached there); tests running at once wait for the one build.
pub(crate) fn guest() -> (PathBuf, PathBuf) {
    static GUEST: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    GUEST
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "standby-vnf", "--bin", "standby-vnf"])
                .env("CARGO_TARGET_DIR", target_dir())
                .current_dir(repo_root())
                .status()
                .unwrap();
            assert!(st.success(), "cargo build -p standby-vnf failed");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
            let st = Command::new(repo_root().join("scripts/build-guest"))
                .arg("--vnf")
                .arg(target_dir().join("debug/standby-vnf"))
                .arg("--out")
                .arg(&out)
                .status()
                .unwrap_or_else(|e| panic!("scripts/build-guest: {e}; install: {INSTALL}"));
            assert!(st.success(), "scripts/build-guest failed; needs: {INSTALL}");
            (out.join("vmlinuz"), out.join("initrd.img"))
        })
        .clone()
}

pub(crate) struct QemuLab {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cfg: PathBuf,
    api: u16,
    server: Option<Child>,
}

impl QemuLab {
    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "standby {args:?} failed: {}\nserver log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn console(&self, host: &str) -> String {
        self.console_of(host, "pbx1")
    }

    pub(crate) fn console_of(&self, host: &str, vm: &str) -> String {
        let p = self
            .dir
            .path()
            .join(format!("controller/hosts/{host}/{vm}.console.log"));
        std::fs::read_to_string(p).unwrap_or_default()
    }
}

impl QemuLab {
    /// A controller with two qemu hosts (site 1 at 127.0.1.1, site 2 at
    /// 127.0.2.1) and pbx1, a QEMU VM protected by group `gold` (both
    /// sites' datastores) whose SIP (UDP) and HTTP (TCP) are forwarded
    /// from `{site.addr}`; `extra` is appended to the configuration.
    pub(crate) fn start(
        kernel: &Path,
        initrd: &Path,
        sip_port: u16,
        http_port: u16,
        extra: &str,
    ) -> QemuLab {
        let dir = tempfile::Builder::new()
            .prefix("standby-qemu-")
            .tempdir()
            .unwrap();
        let api = free_port();
        let text = format!(
            r#"[controller]
listen = "127.0.0.1:{api}"
data_dir = "controller"
[sites.site1]
vars = {{ addr = "127.0.1.1" }}
[sites.site2]
vars = {{ addr = "127.0.2.1" }}
[hosts.site1-host1]
site = "site1"
driver = "qemu"
disk_dir = "site1/disks"
[hosts.site2-host1]
site = "site2"
driver = "qemu"
disk_dir = "site2/disks"
[datastores.site1-store]
site = "site1"
path = "site1/store"
[datastores.site2-store]
site = "site2"
path = "site2/store"
[vms.pbx1]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "15s"
[vms.pbx1.qemu]
memory_mib = 256
accel = "tcg"
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet vnf.name={{vm}}"
forwards = [
  {{ protocol = "udp", host_addr = "{{site.addr}}", host_port = {sip_port}, guest_port = 5060 }},
  {{ protocol = "tcp", host_addr = "{{site.addr}}", host_port = {http_port}, guest_port = 8080 }},
]
[[vms.pbx1.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB"
[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
{extra}"#,
            kernel = kernel.display(),
            initrd = initrd.display(),
        );
        let cfg = dir.path().join("standby.toml");
        std::fs::write(&cfg, text).unwrap();
        let mut lab = QemuLab {
            dir,
            cfg,
            api,
            server: None,
        };
        lab.spawn_server();
        lab
    }

    /// Start the controller (its log appended to `server.log`) and wait
    /// until it listens.
    fn spawn_server(&mut self) {
        let path = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let server = Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap(), "server"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("standby server starts");
        let child = self.server.insert(server);
        wait_listening(child, &path, self.api, Duration::from_secs(20));
    }

    /// Stop the controller (SIGTERM; VMs keep running) and start it again.
    pub(crate) fn restart_server(&mut self) {
        self.stop_server();
        self.spawn_server();
    }

    fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for QemuLab {
    fn drop(&mut self) {
        // VMs outlive the controller by design: stop the lab's own first.
        let _ = self.run(&["vm", "stop", "pbx1"]);
        self.stop_server();
    }
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn sip_answers(addr: SocketAddr, within: Duration) -> bool {
    rt().block_on(async {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if standby_vnf::client::options(addr, Duration::from_millis(500))
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    })
}

pub(crate) fn register(sip: SocketAddr, users: std::ops::Range<u32>) -> Vec<String> {
    rt().block_on(async {
        let mut aors = Vec::new();
        for n in users {
            let aor = format!("sip:u{n:03}@e2e.invalid");
            standby_vnf::client::register(
                sip,
                &aor,
                &format!("sip:u{n:03}@198.18.0.1:5070"),
                3600,
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("REGISTER {aor}: {e}"));
            aors.push(aor);
        }
        aors
    })
}

pub(crate) fn bindings(http: SocketAddr) -> Vec<String> {
    let st = rt()
        .block_on(standby_vnf::client::state(http))
        .expect("VNF state");
    let mut v: Vec<String> = st.bindings.into_iter().map(|b| b.aor).collect();
    v.sort();
    v
}

#[test]
fn a_qemu_vm_is_protected_incrementally_and_restored_at_site2() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let (sip_port, http_port) = (free_port(), free_port());
    let lab = QemuLab::start(&kernel, &initrd, sip_port, http_port, "");
    let sip1: SocketAddr = format!("127.0.1.1:{sip_port}").parse().unwrap();
    let sip2: SocketAddr = format!("127.0.2.1:{sip_port}").parse().unwrap();
    let http2: SocketAddr = format!("127.0.2.1:{http_port}").parse().unwrap();

    let t = Instant::now();
    let st = lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}: {st}\n{}",
        lab.console("site1-host1")
    );
    eprintln!("site 1: boot to SIP {:.1?}", t.elapsed());
    // The system disk is qcow2 and the data disk raw, as configured.
    let sys = lab.dir.path().join("site1/disks/pbx1/system.img");
    let head = std::fs::read(&sys).unwrap();
    assert_eq!(&head[..4], b"QFI\xfb", "system disk is not qcow2");
    let mut acked = register(sip1, 0..20);

    let full = lab.json(&["protect", "run", "gold"]);
    let full = &full["vms"][0];
    acked.extend(register(sip1, 20..40));
    let incr = lab.json(&["protect", "run", "gold"]);
    let incr = &incr["vms"][0];
    let size = incr["size"].as_u64().unwrap();
    assert_eq!(size, 80 << 20);
    let (read1, read2) = (
        full["bytes_read"].as_u64().unwrap(),
        incr["bytes_read"].as_u64().unwrap(),
    );
    assert_eq!(read1, size, "the first point reads everything");
    // 20 journal records: a few 64 KiB chunks, not 80 MiB.
    assert!(
        read2 > 0 && read2 <= 8 * 65536,
        "incremental point read {read2} bytes"
    );
    eprintln!(
        "points through the server: full {read1} bytes in {}s, incremental {read2} bytes in {}s",
        full["seconds"], incr["seconds"]
    );
    let points = lab.json(&["points", "list", "pbx1"]);
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 2);
    let id = points[1]["id"].as_str().unwrap().to_string();
    assert_eq!(incr["point"].as_str(), Some(id.as_str()));
    // The point records what it read and how consistent it is (no
    // guest agent: crash-consistent).
    assert_eq!(points[1]["bytes_read"].as_u64(), Some(read2));
    assert_eq!(points[0]["bytes_read"].as_u64(), Some(read1));
    assert_eq!(points[1]["consistency"], "crash");
    // Acknowledged after the point: must not come back.
    register(sip1, 40..45);
    lab.json(&["vm", "stop", "pbx1"]);

    let t = Instant::now();
    let r = lab.json(&["restore", &id, "--site", "site2"]);
    assert_eq!(r["site"], "site2");
    eprintln!(
        "restore at site 2: {}s restoring, {:.1?} with start",
        r["restore_seconds"],
        t.elapsed()
    );
    let sys2 = lab.dir.path().join("site2/disks/pbx1/system.img");
    assert_eq!(
        &std::fs::read(&sys2).unwrap()[..4],
        b"QFI\xfb",
        "restored system disk is not qcow2"
    );
    assert!(
        !lab.dir
            .path()
            .join("site2/disks/pbx1/system.img.restoring")
            .exists()
    );
    assert!(
        sip_answers(sip2, Duration::from_secs(90)),
        "no SIP at {sip2}: {}",
        lab.console("site2-host1")
    );
    eprintln!("site 2: restore + boot to SIP {:.1?}", t.elapsed());
    // Only at site 2's address now.
    assert!(!sip_answers(sip1, Duration::from_secs(1)));
    acked.sort();
    assert_eq!(bindings(http2), acked);
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2");
}

/// The automatic path with a real VM: `standby demo --driver qemu` loses
/// site 1, and the site-down alert's `failover-site` runbook restores the
/// QEMU VM at site 2, waits for its SIP answer and switches the front door;
/// nothing acknowledged before the point is missing.
#[test]
fn the_demo_fails_a_real_vm_over_automatically() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let out = std::process::Command::new(crate::harness::STANDBY)
        // The QEMU drill has its own test below; this one is the failover.
        .args(["demo", "--driver", "qemu", "--json", "--no-drill"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo --driver qemu failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(r["missing_before_point"].as_array().unwrap().is_empty());
    assert!(!r["acknowledged_after"].as_array().unwrap().is_empty());
    let timeline = r["timeline"].to_string();
    for step in ["fence", "restore", "probes", "traffic"] {
        assert!(timeline.contains(step), "no {step} on the timeline: {r:#}");
    }
    eprintln!(
        "real VM failover: detection {} ms, client RTO {} ms, data-loss window {} ms",
        r["detection_ms"], r["rto_ms"], r["data_loss_window_ms"]
    );
    assert!(r["rto_ms"].as_i64().unwrap() < 120_000, "{r:#}");
}

/// What the test saw of the drill's copy from inside its namespace.
struct CopySeen {
    netns: String,
    sip: bool,
    bindings: Vec<String>,
}

/// Wait (bounded) for the drill's namespace `netns` to appear, join it on
/// this thread, and poll the copy's HTTP state through its forward on the
/// namespace's loopback until it answers (or the namespace is gone).
fn watch_drill_copy(
    netns: String,
    sip_port: u16,
    http_port: u16,
    within: Duration,
) -> Option<CopySeen> {
    let deadline = Instant::now() + within;
    let path = Path::new("/run/netns").join(&netns);
    while !path.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = std::fs::File::open(&path).ok()?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the drill");
    let sip: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    rt().block_on(async {
        while Instant::now() < deadline && path.exists() {
            if let Ok(st) = standby_vnf::client::state(http).await {
                let sip = standby_vnf::client::options(sip, Duration::from_secs(1))
                    .await
                    .is_ok();
                let mut bindings: Vec<String> = st.bindings.into_iter().map(|b| b.aor).collect();
                bindings.sort();
                return Some(CopySeen {
                    netns,
                    sip,
                    bindings,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

/// Processes whose command line holds `needle`.
pub(crate) fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(format!("{name}: {c}"));
            }
        }
    }
    found
}

/// The shipped `drill` runbook against a QEMU VM: the point is restored
/// into the drill's directory and booted by QEMU inside the drill's own
/// namespace, its SIP answers there (and only there) with exactly the
/// registrations of the point, production answers throughout, and nothing
/// of the drill is left.
#[test]
fn a_qemu_vm_is_drilled_in_its_own_namespace_while_production_answers() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let (sip_port, http_port, door) = (free_port(), free_port(), free_port());
    // The service's probe is how the drill checks the copy.
    let service = format!(
        r#"[services.sip]
vm = "pbx1"
listen = "127.0.0.1:{door}"
protocols = ["udp"]
backends = {{ site1 = "127.0.1.1:{sip_port}", site2 = "127.0.2.1:{sip_port}" }}
probe = "sip"
"#
    );
    let lab = QemuLab::start(&kernel, &initrd, sip_port, http_port, &service);
    let sip1: SocketAddr = format!("127.0.1.1:{sip_port}").parse().unwrap();
    let http1: SocketAddr = format!("127.0.1.1:{http_port}").parse().unwrap();
    let st = lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}: {st}\n{}",
        lab.console("site1-host1")
    );
    let mut in_point = register(sip1, 0..12);
    let point = lab.json(&["protect", "run", "gold"]);
    let point = point["vms"][0]["point"].as_str().unwrap().to_string();
    // Acknowledged after the point: production has them, the copy not.
    let after = register(sip1, 12..16);
    in_point.sort();

    // Production is polled all through the drill; the copy's SIP port is
    // tried from outside its namespace too, where nothing may answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let outside: SocketAddr = format!("127.0.0.1:{sip_port}").parse().unwrap();
        std::thread::spawn(move || {
            rt().block_on(async {
                let (mut ok, mut failed, mut leaked) = (0u32, 0u32, 0u32);
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    match standby_vnf::client::options(sip1, Duration::from_secs(2)).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    if standby_vnf::client::options(outside, Duration::from_millis(200))
                        .await
                        .is_ok()
                    {
                        leaked += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (ok, failed, leaked)
            })
        })
    };
    let t = Instant::now();
    // `hold` keeps the copy up after its probe, so this test can look
    // inside its namespace before the teardown (no race with it).
    let job = lab.json(&[
        "runbook",
        "run",
        "drill",
        "--param",
        "site=site1",
        "--param",
        "hold=20s",
    ]);
    let job = job["job"].as_i64().expect("a job id");
    // The drill's id is `<job>-<vm>`, its namespace `sbd-<id>`.
    let netns = format!("sbd-{job}-pbx1");
    let watcher = {
        let netns = netns.clone();
        std::thread::spawn(move || {
            watch_drill_copy(netns, sip_port, http_port, Duration::from_secs(300))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let drill = loop {
        let v = lab.json(&["runbook", "steps", &job.to_string()]);
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            break v;
        }
        assert!(Instant::now() < deadline, "the drill did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let wall = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, leaked) = poller.join().unwrap();
    let seen = watcher.join().unwrap();

    let steps = drill["steps"].as_array().unwrap();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {drill:#}"))
    };
    assert_eq!(drill["job"]["status"], "succeeded", "{drill:#}");
    let report = &step("report")["output"];
    assert_eq!(report["ok"], true, "{drill:#}");
    let vm = &report["vms"][0];
    assert_eq!(vm["vm"], "pbx1");
    assert_eq!(vm["site"], "site2");
    assert_eq!(vm["point"].as_str(), Some(point.as_str()), "{report:#}");
    assert_eq!(vm["verified"], true, "{report:#}");
    let rto = vm["rto_seconds"].as_f64().expect("an RTO");
    let restore = vm["restore_seconds"].as_f64().expect("a restore time");
    let age = vm["data_age_seconds"].as_f64().expect("a data age");
    assert!(rto > restore && age > 0.0, "{report:#}");
    let boot = &step("boot")["output"];
    let boot = if boot.is_array() { &boot[0] } else { boot };
    assert_eq!(boot["kind"], "qemu", "{boot:#}");
    eprintln!(
        "qemu drill: restore {restore:.2} s, RTO (restore + boot + first SIP answer) {rto:.1} s, data age {age:.1} s, whole runbook {wall:.1?}; {}",
        report["summary"]
    );

    // The copy answered inside its namespace with the point's bindings.
    let seen = seen.expect("the drill's copy never answered inside its namespace");
    assert!(
        seen.sip,
        "the copy's HTTP answered in {} but not its SIP",
        seen.netns
    );
    assert_eq!(
        seen.bindings, in_point,
        "the copy holds other bindings than the point"
    );
    // Production answered all along and kept everything.
    assert!(ok >= 5, "production polled only {ok} times");
    assert_eq!(
        failed,
        0,
        "production missed {failed} of {} OPTIONS during the drill",
        ok + failed
    );
    assert_eq!(leaked, 0, "the copy's SIP answered outside its namespace");
    let mut all = in_point.clone();
    all.extend(after);
    all.sort();
    assert_eq!(bindings(http1), all, "production lost bindings");
    let vmst = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vmst["active_site"], "site1", "{vmst:#}");

    // Nothing of the drill is left: namespace, QEMU, files.
    assert_eq!(seen.netns, netns);
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "the drill's namespace {netns} is left"
    );
    let drills = lab.dir.path().join("controller/drills");
    let left = processes_with(&drills.to_string_lossy());
    assert!(left.is_empty(), "drill QEMU left running: {left:?}");
    let files: Vec<_> = std::fs::read_dir(&drills)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "drill files left: {files:?}");
}
