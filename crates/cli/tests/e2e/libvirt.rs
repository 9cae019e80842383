//! A VM on libvirt hosts through the controller (`driver = "libvirt"`,
//! cargo feature `libvirt`): two sites, each host a private libvirtd of
//! its own (testkit's lab); standby defines the domain at site 1, takes a
//! full then an incremental point from libvirt checkpoints and backups,
//! and the restore at site 2 defines the domain at site 2's libvirtd,
//! where the guest boots.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use standby_testkit::libvirt::Libvirtd;

use crate::harness::{STANDBY, free_port, wait_listening};
use crate::qemu::guest;

struct Lab {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    server: Option<Child>,
    site1: Libvirtd,
    site2: Libvirtd,
}

impl Lab {
    fn json(&self, args: &[&str]) -> Value {
        let out = Command::new(STANDBY)
            .args(["--config", self.cfg.to_str().unwrap(), "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "standby {args:?} failed: {}\nserver log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn console(&self, host: &str) -> String {
        let p = self
            .dir
            .path()
            .join(format!("controller/hosts/{host}/pbx1.console.log"));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    fn wait_console(&self, host: &str, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.console(host).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no '{needle}' on {host}'s console: {}",
                self.console(host)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
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
        // The labs' daemons and QEMUs go with `site1` and `site2`.
    }
}

impl Lab {
    /// A controller with two libvirt hosts (site 1, site 2), each a
    /// private libvirtd, and pbx1, a VM standby defines, protected by
    /// group `gold` (both sites' datastores); `extra` is appended to the
    /// configuration.
    fn start(extra: &str) -> Lab {
        let (kernel, initrd) = guest();
        let (site1, site2) = (Libvirtd::start(), Libvirtd::start());
        assert_ne!(site1.host_uuid, site2.host_uuid);
        let dir = tempfile::Builder::new()
            .prefix("standby-libvirt-")
            .tempdir()
            .unwrap();
        let api = free_port();
        let text = format!(
            r#"[controller]
listen = "127.0.0.1:{api}"
data_dir = "controller"
[sites.site1]
[sites.site2]
[hosts.site1-host1]
site = "site1"
driver = "libvirt"
libvirt_uri = "{uri1}"
disk_dir = "site1/disks"
[hosts.site2-host1]
site = "site2"
driver = "libvirt"
libvirt_uri = "{uri2}"
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
[[vms.pbx1.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB"
format = "qcow2"
[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
{extra}"#,
            uri1 = site1.uri(),
            uri2 = site2.uri(),
            kernel = kernel.display(),
            initrd = initrd.display(),
        );
        let cfg = dir.path().join("standby.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(STANDBY)
            .args(["--config", cfg.to_str().unwrap(), "server"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("standby server starts");
        let mut lab = Lab {
            dir,
            cfg,
            server: Some(server),
            site1,
            site2,
        };
        let log = lab.dir.path().join("server.log");
        wait_listening(
            lab.server.as_mut().unwrap(),
            &log,
            api,
            Duration::from_secs(20),
        );
        lab
    }
}

#[test]
fn hypervisor_libvirt_vm_is_protected_and_restored_at_site2() {
    let lab = Lab::start("");
    let t = Instant::now();
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_console("site1-host1", "ready sip=", Duration::from_secs(120));
    eprintln!("site 1: define + boot {:.1?}", t.elapsed());
    assert!(lab.site1.virsh(&["domstate", "pbx1"]).contains("running"));

    let full = lab.json(&["protect", "run", "gold"]);
    let incr = lab.json(&["protect", "run", "gold"]);
    let (full, incr) = (&full["vms"][0], &incr["vms"][0]);
    let (read1, read2) = (
        full["bytes_read"].as_u64().unwrap(),
        incr["bytes_read"].as_u64().unwrap(),
    );
    assert_eq!(read1, 80 << 20, "the first point reads everything");
    // The guest idles between the points: a few chunks at most.
    assert!(read2 <= 8 * 65536, "incremental point read {read2} bytes");
    eprintln!(
        "points through the server: full {read1} bytes in {}s, incremental {read2} bytes in {}s",
        full["seconds"], incr["seconds"]
    );
    let points = lab.json(&["points", "list", "pbx1"]);
    let id = points[1]["id"].as_str().unwrap().to_string();
    lab.json(&["vm", "stop", "pbx1"]);
    assert!(lab.site1.virsh(&["domstate", "pbx1"]).contains("shut off"));

    let t = Instant::now();
    let r = lab.json(&["restore", &id, "--site", "site2"]);
    assert_eq!(r["site"], "site2");
    lab.wait_console("site2-host1", "ready sip=", Duration::from_secs(120));
    eprintln!("site 2: restore + define + boot {:.1?}", t.elapsed());
    let xml = lab.site2.virsh(&["dumpxml", "pbx1"]);
    assert!(xml.contains("standby:vm"), "{xml}");
    assert!(xml.contains("site2/disks/pbx1/system.img"), "{xml}");
    assert!(lab.site2.virsh(&["domstate", "pbx1"]).contains("running"));
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2");
    lab.json(&["vm", "stop", "pbx1"]);
}

/// The same at remote agents: each site a network namespace whose host
/// is run by a `standby agent` (its datastore in a tmpfs of its own
/// mount namespace) talking to that site's private libvirtd (started in
/// the same namespace). The agents define, read and restore the domain;
/// the controller never touches libvirt.
#[test]
fn hypervisor_libvirt_vm_at_agents_is_protected_and_restored_at_site2() {
    use crate::agents::AgentProc;
    use crate::netlab::NetLab;
    use standby_testkit::libvirt::LibvirtdOptions;

    let (kernel, initrd) = guest();
    let net = NetLab::new();
    let site = |ns: &str| {
        Libvirtd::start_with(LibvirtdOptions {
            netns: Some(ns.to_owned()),
            ..LibvirtdOptions::default()
        })
    };
    let (site1, site2) = (site(&net.s1), site(&net.s2));
    let dir = tempfile::Builder::new()
        .prefix("standby-lvagents-")
        .tempdir()
        .unwrap();
    let (s1, s2, s2_for_s1) = (net.addr(2), net.addr(6), net.addr(9));
    let (api, a1, a2) = (free_port(), free_port(), free_port());
    let (t1, t2) = (
        "site1-agent-secret-0123456789",
        "site2-agent-secret-0123456789",
    );
    let text = format!(
        r#"[controller]
listen = "0.0.0.0:{api}"
data_dir = "controller"
[sites.site1]
[sites.site2]
[hosts.site1-host1]
site = "site1"
driver = "libvirt"
libvirt_uri = "{uri1}"
disk_dir = "site1/disks"
[hosts.site2-host1]
site = "site2"
driver = "libvirt"
libvirt_uri = "{uri2}"
disk_dir = "site2/disks"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://{s1}:{a1}"
token = "{t1}"
[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "http://{s2}:{a2}"
peer_url = "http://{s2_for_s1}:{a2}"
token = "{t2}"
[datastores.site1-store]
site = "site1"
path = "site1/fs/store"
agent = "site1-agent"
[datastores.site2-store]
site = "site2"
path = "site2/fs/store"
agent = "site2-agent"
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
[[vms.pbx1.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB"
format = "qcow2"
[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
"#,
        uri1 = site1.uri(),
        uri2 = site2.uri(),
        kernel = kernel.display(),
        initrd = initrd.display(),
    );
    let cfg = dir.path().join("standby.toml");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("server.log");
    let server = Command::new(STANDBY)
        .args(["--config", cfg.to_str().unwrap(), "server"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("standby server starts");
    let mut lab = Lab {
        dir,
        cfg,
        server: Some(server),
        site1,
        site2,
    };
    wait_listening(
        lab.server.as_mut().unwrap(),
        &log,
        api,
        Duration::from_secs(20),
    );
    let d = lab.dir.path().to_owned();
    let _agents = [
        AgentProc::start_in(
            &lab.cfg,
            "site1-agent",
            &format!("http://{}:{api}", net.addr(1)),
            a1,
            &d.join("agent1"),
            Some(&d.join("site1/fs")),
            Some((&net.s1, &s1)),
        ),
        AgentProc::start_in(
            &lab.cfg,
            "site2-agent",
            &format!("http://{}:{api}", net.addr(5)),
            a2,
            &d.join("agent2"),
            Some(&d.join("site2/fs")),
            Some((&net.s2, &s2)),
        ),
    ];
    let console = |agent: &str| {
        std::fs::read_to_string(d.join(format!("{agent}/vms/pbx1.console.log"))).unwrap_or_default()
    };
    let wait = |agent: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !console(agent).contains("ready sip=") {
            assert!(Instant::now() < deadline, "{agent}: {}", console(agent));
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let t = Instant::now();
    lab.json(&["vm", "start", "pbx1"]);
    wait("agent1");
    eprintln!("agent 1: define + boot {:.1?}", t.elapsed());
    assert!(lab.site1.virsh(&["domstate", "pbx1"]).contains("running"));
    let full = lab.json(&["protect", "run", "gold"]);
    let incr = lab.json(&["protect", "run", "gold"]);
    let (read1, read2) = (
        full["vms"][0]["bytes_read"].as_u64().unwrap(),
        incr["vms"][0]["bytes_read"].as_u64().unwrap(),
    );
    assert_eq!(read1, 80 << 20);
    assert!(read2 <= 8 * 65536, "incremental point read {read2} bytes");
    eprintln!("points at agent 1: full {read1} bytes, incremental {read2} bytes");
    let points = lab.json(&["points", "list", "pbx1"]);
    let id = points[1]["id"].as_str().unwrap().to_string();
    lab.json(&["vm", "stop", "pbx1"]);

    let t = Instant::now();
    let r = lab.json(&["restore", &id, "--site", "site2"]);
    assert_eq!(r["site"], "site2");
    wait("agent2");
    eprintln!("agent 2: restore + define + boot {:.1?}", t.elapsed());
    assert!(lab.site2.virsh(&["domstate", "pbx1"]).contains("running"));
    assert!(lab.site2.virsh(&["dumpxml", "pbx1"]).contains("standby:vm"));
    lab.json(&["vm", "stop", "pbx1"]);
}

/// Poll the SIP of a drill's copy from inside its namespace `netns`
/// (joined on this thread once it appears) until it answers; `None` when
/// the namespace never came or went away first.
fn sip_in_drill(netns: &str, sip: std::net::SocketAddr, within: Duration) -> Option<Duration> {
    let deadline = Instant::now() + within;
    let path = std::path::Path::new("/run/netns").join(netns);
    while !path.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = std::fs::File::open(&path).ok()?;
    let seen = Instant::now();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the drill");
    crate::qemu::rt().block_on(async {
        while Instant::now() < deadline && path.exists() {
            if standby_vnf::client::options(sip, Duration::from_millis(500))
                .await
                .is_ok()
            {
                return Some(seen.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

/// The shipped `drill` runbook against a libvirt VM: its copy is the
/// QEMU copy of the domain's machine, booted by the qemu driver inside
/// the drill's own namespace (loopback only), never a domain at a
/// libvirtd; the controller forwards the VM's probed SIP port (5060) on
/// that loopback. The copy answers SIP there and only there, the
/// production domain runs on untouched (same QEMU, same UUID, its SIP
/// answering all along), and the drill leaves nothing: no domain at
/// either libvirtd, no namespace, no process, no file.
#[test]
fn hypervisor_libvirt_drill_boots_the_copy_isolated_while_production_runs() {
    // Production's SIP, forwarded by the test (the driver has no
    // forwards) on an address of its own in 127.0.0.0/8.
    let lo = format!("127.0.{}.1", std::process::id() % 200 + 20);
    let lab = Lab::start(&format!(
        r#"[probes.pbx1-sip]
kind = "sip"
target = "{lo}:5060"
interval = "1s"
timeout = "500ms"
labels = {{ vm = "pbx1", site = "site1", scope = "service" }}
"#
    ));
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_console("site1-host1", "ready sip=", Duration::from_secs(120));
    lab.site1.virsh(&[
        "qemu-monitor-command",
        "pbx1",
        "--hmp",
        &format!("hostfwd_add hostnet0 udp:{lo}:5060-:5060"),
    ]);
    let prod: std::net::SocketAddr = format!("{lo}:5060").parse().unwrap();
    assert!(
        crate::qemu::sip_answers(prod, Duration::from_secs(30)),
        "production's SIP does not answer at {prod}"
    );
    let uuid = lab.site1.virsh(&["domuuid", "pbx1"]);
    let qemus = lab.site1.qemu_pids();
    assert_eq!(qemus.len(), 1);
    lab.json(&["protect", "run", "gold"]);

    // Production polled all through the drill; the copy's port tried
    // from outside its namespace, where nothing may answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let outside: std::net::SocketAddr = "127.0.0.1:5060".parse().unwrap();
        std::thread::spawn(move || {
            crate::qemu::rt().block_on(async {
                let (mut ok, mut failed, mut leaked) = (0u32, 0u32, 0u32);
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    match standby_vnf::client::options(prod, Duration::from_secs(2)).await {
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
    let job = lab.json(&[
        "runbook",
        "run",
        "drill",
        "--param",
        "site=site1",
        "--param",
        "hold=5s",
    ]);
    let job = job["job"].as_i64().expect("a job id");
    let netns = format!("sbd-{job}-pbx1");
    let watcher = {
        let netns = netns.clone();
        std::thread::spawn(move || {
            sip_in_drill(
                &netns,
                "127.0.0.1:5060".parse().unwrap(),
                Duration::from_secs(300),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(400);
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
    assert_eq!(vm["verified"], true, "{report:#}");
    let boot = &step("boot")["output"];
    let boot = if boot.is_array() { &boot[0] } else { boot };
    assert_eq!(boot["kind"], "qemu", "{boot:#}");
    let rto = vm["rto_seconds"].as_f64().expect("an RTO");
    let restore = vm["restore_seconds"].as_f64().expect("a restore time");
    eprintln!(
        "libvirt drill: restore {restore:.2} s, RTO {rto:.1} s, whole runbook {wall:.1?}; production {ok} OPTIONS answered, {failed} missed"
    );
    // The copy answered SIP inside its namespace, not outside.
    assert!(
        seen.is_some(),
        "the drill's copy never answered SIP inside {netns}"
    );
    assert_eq!(leaked, 0, "the copy's SIP answered outside its namespace");
    // Production untouched: the same QEMU and domain, answering all along.
    assert!(ok >= 5, "production polled only {ok} times");
    assert_eq!(
        failed, 0,
        "production missed {failed} OPTIONS during the drill"
    );
    assert_eq!(lab.site1.qemu_pids(), qemus);
    assert_eq!(lab.site1.virsh(&["domuuid", "pbx1"]), uuid);
    assert!(lab.site1.virsh(&["domstate", "pbx1"]).contains("running"));
    let vmst = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vmst["active_site"], "site1", "{vmst:#}");
    // Nothing of the drill is left: no domain at either libvirtd, no
    // namespace, no process, no file.
    assert_eq!(lab.site1.virsh(&["list", "--all", "--name"]).trim(), "pbx1");
    assert_eq!(lab.site2.virsh(&["list", "--all", "--name"]).trim(), "");
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "the drill's namespace {netns} is left"
    );
    let drills = lab.dir.path().join("controller/drills");
    let left = crate::qemu::processes_with(&drills.to_string_lossy());
    assert!(left.is_empty(), "drill QEMU left running: {left:?}");
    let files: Vec<_> = std::fs::read_dir(&drills)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "drill files left: {files:?}");
    lab.json(&["vm", "stop", "pbx1"]);
}
