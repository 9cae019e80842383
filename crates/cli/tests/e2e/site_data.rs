//! Sites run themselves: each site's host is run by its own `standby
//! agent` in the site's network namespace, and each site's datastore is
//! a tmpfs mounted in that agent's own mount namespace, so only it can
//! open the store (the controller sees an empty directory). Points are
//! written by site 1's agent, copied to site 2 by the agents over a link
//! limited with `tc tbf` and cut in the middle of a copy, and after site
//! 1 is lost site 2's agent restores from its own store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Lab, LabOptions, STANDBY, bindings_at, free_port, kill_agent_vms, register_at, write_random,
};
use crate::netlab::NetLab;
use crate::watch::wait_until;

/// An agent process in a site namespace; on drop it and the VMs it left
/// running are killed.
pub(crate) struct SiteAgent {
    child: Child,
    data: PathBuf,
    log: PathBuf,
}

impl Drop for SiteAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl SiteAgent {
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_agent_vms(&self.data);
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Start agent `name` in namespace `ns`, with `fs` a tmpfs only its own
/// mount namespace sees (its datastore is created inside on first use).
pub(crate) fn start_agent(
    lab: &Lab,
    net: &NetLab,
    ns: &str,
    name: &str,
    port: u16,
    fs: &Path,
) -> SiteAgent {
    std::fs::create_dir_all(fs).unwrap();
    let data = lab.path(name);
    let log = lab.path(&format!("{name}.log"));
    let script = format!(
        "mount -t tmpfs -o size=1g standby-{name} '{fs}' && exec \"$0\" \"$@\"",
        fs = fs.display()
    );
    let child = Command::new("ip")
        .args(net.in_ns(ns))
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .args([
            STANDBY,
            "--config",
            lab.cfg.to_str().unwrap(),
            "agent",
            "--name",
            name,
            "--controller",
            &lab.controller_for_agents(&net.addr(if ns == net.s1 { 1 } else { 5 })),
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("STANDBY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("agent starts");
    SiteAgent { child, data, log }
}

/// A lab of two sites in `net`, each host run by its site's agent
/// (listening on `ports.0` and `ports.1`; site 1's agent reaches site 2's
/// at `ports.2` on their link), each datastore served by its site's agent
/// in `siteN/fs`, the VNF with a second disk `bulk` of `bulk` bytes;
/// `site1` holds lines for `[sites.site1]`. Agents and controller speak
/// mutual TLS (`[pki]`), copies between agents included.
pub(crate) fn site_lab(net: &NetLab, ports: (u16, u16, u16), bulk: &str, site1: String) -> Lab {
    let (p1, p2, peer_port) = ports;
    let watch = format!(
        r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "https://{s1}:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "https://{s2}:{p2}"
peer_url = "https://{s2_for_s1}:{peer_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[[vms.pbx1.disks]]
name = "bulk"
size = "{bulk}"
"#,
        s1 = net.addr(2),
        s2 = net.addr(6),
        s2_for_s1 = net.addr(9),
    );
    Lab::new(LabOptions {
        vm: Some(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#
                .into(),
        ),
        listen_host: "0.0.0.0",
        watch,
        sites: [site1, String::new()],
        stores: [
            "path = \"site1/fs/store\"\nagent = \"site1-agent\"".into(),
            "path = \"site2/fs/store\"\nagent = \"site2-agent\"".into(),
        ],
        pki: true,
        ..LabOptions::default()
    })
}

/// The two agents of a [`site_lab`], each in its site's namespace with
/// its datastore's tmpfs.
pub(crate) fn start_site_agents(
    lab: &Lab,
    net: &NetLab,
    p1: u16,
    p2: u16,
) -> (SiteAgent, SiteAgent) {
    (
        start_agent(lab, net, &net.s1, "site1-agent", p1, &lab.path("site1/fs")),
        start_agent(lab, net, &net.s2, "site2-agent", p2, &lab.path("site2/fs")),
    )
}

pub(crate) fn run_json(lab: &Lab, args: &[&str]) -> Result<Value, String> {
    let out = lab.run(&[&["--json"], args].concat());
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn agents_keep_points_at_their_site_copy_them_across_a_cut_link_and_restore_at_site2() {
    let net = NetLab::new();
    let (p1, p2) = (free_port(), free_port());
    let lab = site_lab(&net, (p1, p2, p2), "48MiB", String::new());
    let (store1, store2) = (lab.path("site1/fs"), lab.path("site2/fs"));
    let (mut a1, a2) = start_site_agents(&lab, &net, p1, p2);

    // A disk of random data: a copy long enough to cut in the middle.
    let bulk = lab.path("site1/disks/pbx1/bulk.img");
    std::fs::create_dir_all(bulk.parent().unwrap()).unwrap();
    write_random(&bulk, 48 << 20);

    let started = wait_until(
        "site 1's agent to run pbx1",
        Duration::from_secs(20),
        || run_json(&lab, &["vm", "start", "pbx1"]).ok(),
    );
    assert_eq!(started["state"], "running", "{started}");
    let sip1: SocketAddr = format!("{}:5060", net.addr(2)).parse().unwrap();
    wait_until("SIP at site 1", Duration::from_secs(15), || {
        crate::fencing::sip_answers(sip1).then_some(())
    });
    register_at(sip1, 0..3);

    // Site 1 to site 2 at 40 Mbit/s: the ~48 MiB copy takes about 10 s;
    // the link between the sites goes down for 3 s in the middle.
    net.shape_site1_to_site2("40mbit");
    let t0 = Instant::now();
    let run = std::thread::scope(|s| {
        let job = s.spawn(|| run_json(&lab, &["protect", "run", "gold"]));
        let t = Instant::now();
        while !a1.log().contains("point taken") {
            assert!(
                t.elapsed() < Duration::from_secs(30) && !job.is_finished(),
                "no point taken\nsite1 agent:\n{}\ncontroller:\n{}",
                a1.log(),
                std::fs::read_to_string(lab.path("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
        net.cut_between_sites();
        std::thread::sleep(Duration::from_secs(3));
        net.heal();
        job.join().unwrap()
    })
    .unwrap_or_else(|e| panic!("protect run failed: {e}\nsite1 agent:\n{}", a1.log()));
    let copy_secs = t0.elapsed().as_secs_f64();
    let vm = &run["vms"][0];
    let point = vm["point"].as_str().unwrap().to_string();
    assert_eq!(vm["datastore"], "site1-store", "{run}");
    let synced = &vm["synced"][0];
    assert_eq!(synced["datastore"], "site2-store", "{run}");
    assert_eq!(synced["by_agent"], "site1-agent", "{run}");
    let (stored, sent) = (
        synced["bytes_copied"].as_u64().unwrap(),
        synced["bytes_sent"].as_u64().unwrap(),
    );
    assert!(stored > 40 << 20, "{run}");
    // Resumed, not restarted: at most one batch (16 MiB) sent twice.
    assert!(
        sent < stored + (17 << 20),
        "{sent} bytes sent for {stored}: {run}"
    );
    eprintln!(
        "first point: {stored} bytes copied agent to agent in {copy_secs:.1} s (cut 3 s), {sent} bytes on the wire, {} batches resent",
        synced["resent"]
    );

    // The controller never opened either store: in its mount namespace
    // both are empty directories; the points are in the agents' own.
    assert_eq!(entries(&store1), 0, "the controller's view of site1/fs");
    assert_eq!(entries(&store2), 0, "the controller's view of site2/fs");
    assert!(a2.log().contains("copied point received"), "{}", a2.log());

    // An incremental point sends only what changed.
    register_at(sip1, 3..5);
    let run2 = run_json(&lab, &["protect", "run", "gold"]).unwrap();
    let s2 = &run2["vms"][0]["synced"][0];
    assert!(
        s2["bytes_sent"].as_u64().unwrap() < 4 << 20,
        "an incremental copy sent {}: {run2}",
        s2["bytes_sent"]
    );
    let point2 = run2["vms"][0]["point"].as_str().unwrap().to_string();
    let points = run_json(&lab, &["points", "list", "pbx1"]).unwrap();
    assert!(
        points
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["copies"] == serde_json::json!(["site1-store", "site2-store"])),
        "{points}"
    );
    assert_ne!(point, point2);

    // Site 1 is lost: its links, its agent, its VM, its store.
    net.cut_site1();
    a1.kill();
    let fence = run_json(
        &lab,
        &[
            "site",
            "fence",
            "site1",
            "--reason",
            "site 1 lost",
            "--confirmed",
        ],
    )
    .unwrap();
    assert_eq!(fence["pending"], true, "{fence}");
    let t1 = Instant::now();
    let restored = run_json(&lab, &["restore", &point2, "--site", "site2"])
        .unwrap_or_else(|e| panic!("restore at site 2: {e}\nsite2 agent:\n{}", a2.log()));
    assert_eq!(restored["datastore"], "site2-store", "{restored}");
    assert_eq!(restored["started"], true, "{restored}");
    let sip2: SocketAddr = format!("{}:5060", net.addr(6)).parse().unwrap();
    let http2: SocketAddr = format!("{}:8080", net.addr(6)).parse().unwrap();
    wait_until("SIP at site 2", Duration::from_secs(15), || {
        crate::fencing::sip_answers(sip2).then_some(())
    });
    eprintln!(
        "restored and answering at site 2 {:.1} s after the restore began",
        t1.elapsed().as_secs_f64()
    );
    let want: Vec<String> = (0..5).map(|n| format!("sip:user{n}@e2e.invalid")).collect();
    assert_eq!(bindings_at(http2), want);
    assert!(a2.log().contains("point restored"), "{}", a2.log());
}

/// A new leader (here the controller restarted) starts no VM while a host
/// that may run it has not said what it runs: site 2's agent is down, so
/// the controller cannot know that pbx1 does not run there, and `vm start`
/// is refused, naming the host and what to do; once the agent is back and
/// answers, the start goes ahead.
#[test]
fn ha_a_new_leader_starts_nothing_while_a_host_that_may_run_the_vm_is_silent() {
    let net = NetLab::new();
    let (p1, p2) = (free_port(), free_port());
    let mut lab = site_lab(&net, (p1, p2, p2), "1MiB", String::new());
    let (_a1, mut a2) = start_site_agents(&lab, &net, p1, p2);
    let started = wait_until(
        "site 1's agent to run pbx1",
        Duration::from_secs(20),
        || run_json(&lab, &["vm", "start", "pbx1"]).ok(),
    );
    assert_eq!(started["state"], "running", "{started}");
    lab.json(&["vm", "stop", "pbx1"]);

    a2.kill();
    lab.kill_server();
    lab.start_server();
    let refused = lab.fails(&["vm", "start", "pbx1"]);
    assert!(
        refused.contains("may be running at site2-host1")
            && refused.contains("has not answered since this controller started")
            && refused.contains("standby site fence site2"),
        "{refused}"
    );
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_ne!(
        vm["state"], "running",
        "started while site 2 was silent: {vm}"
    );

    let _a2 = start_agent(
        &lab,
        &net,
        &net.s2,
        "site2-agent",
        p2,
        &lab.path("site2/fs"),
    );
    let started = wait_until(
        "the start once site 2 answers",
        Duration::from_secs(20),
        || run_json(&lab, &["vm", "start", "pbx1"]).ok(),
    );
    assert_eq!(started["state"], "running", "{started}");
    assert_eq!(started["active_site"], "site1", "{started}");
}

/// An image of `size` bytes mixing zero, text and random 64 KiB regions
/// (a third each), as a VM disk holds.
fn write_mixed(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut random = vec![0u8; 64 << 10];
    let text: Vec<u8> = b"standby figures: a line of text a VM disk might hold\n"
        .iter()
        .copied()
        .cycle()
        .take(64 << 10)
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..size / (64 << 10) {
        match i % 3 {
            0 => f.write_all(&[0u8; 64 << 10]).unwrap(),
            1 => f.write_all(&text).unwrap(),
            _ => {
                for b in random.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b.copy_from_slice(&state.to_le_bytes());
                }
                f.write_all(&random).unwrap();
            }
        }
    }
}

/// Point, copy and restore of one VM with a `STANDBY_BENCH_GIB` (2 GiB)
/// disk: in-process, and through two remote agents on loopback whose
/// datastores only they serve, over plain HTTP with tokens and over
/// mutual TLS (`[pki]`). Run by `scripts/bench-agents`.
#[test]
#[ignore = "figures: scripts/bench-agents"]
fn agents_throughput_figures() {
    let gib: u64 = std::env::var("STANDBY_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let size = gib << 30;
    let mut rows = Vec::new();
    for (remote, pki) in [(false, false), (true, false), (true, true)] {
        let (p1, p2) = (free_port(), free_port());
        let scheme = Lab::agent_scheme(pki);
        let (stores, watch) = if remote {
            (
                [
                    "agent = \"site1-agent\"".to_string(),
                    "agent = \"site2-agent\"".to_string(),
                ],
                format!(
                    "[agents.site1-agent]\nsite = \"site1\"\nhost = \"site1-host1\"\nurl = \"{scheme}://127.0.0.1:{p1}\"\nallowed_commands = [\"sleep\"]\n[agents.site2-agent]\nsite = \"site2\"\nhost = \"site2-host1\"\nurl = \"{scheme}://127.0.0.1:{p2}\"\nallowed_commands = [\"sleep\"]\n"
                ),
            )
        } else {
            Default::default()
        };
        let lab = Lab::new(LabOptions {
            vm: Some("command = \"sleep\"\nargs = [\"3600\"]".into()),
            disk_size: Box::leak(format!("{gib}GiB").into_boxed_str()),
            watch,
            stores,
            pki,
            ..LabOptions::default()
        });
        let disk = lab.path("site1/disks/pbx1/data.img");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        write_mixed(&disk, size);
        let agents: Vec<SiteAgent> = if remote {
            [("site1-agent", p1), ("site2-agent", p2)]
                .iter()
                .map(|(name, port)| {
                    let data = lab.path(name);
                    let log = lab.path(&format!("{name}.log"));
                    let child = Command::new(STANDBY)
                        .args([
                            "--config",
                            lab.cfg.to_str().unwrap(),
                            "agent",
                            "--name",
                            name,
                        ])
                        .args(["--controller", &lab.controller_for_agents("127.0.0.1")])
                        .args(["--listen", &format!("127.0.0.1:{port}")])
                        .args(["--data-dir", data.to_str().unwrap()])
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(&log).unwrap())
                        .spawn()
                        .unwrap();
                    SiteAgent { child, data, log }
                })
                .collect()
        } else {
            Vec::new()
        };
        wait_until("pbx1 to start", Duration::from_secs(20), || {
            run_json(&lab, &["vm", "start", "pbx1"]).ok()
        });
        let run = run_json(&lab, &["protect", "run", "gold"]).unwrap();
        let vm = &run["vms"][0];
        let point = vm["point"].as_str().unwrap().to_string();
        let point_s = vm["seconds"].as_f64().unwrap();
        let copy_s = vm["synced"][0]["seconds"].as_f64().unwrap();
        run_json(&lab, &["vm", "stop", "pbx1"]).unwrap();
        let r = run_json(&lab, &["restore", &point, "--site", "site2", "--no-start"]).unwrap();
        assert_eq!(r["datastore"], "site2-store", "{r}");
        let restore_s = r["restore_seconds"].as_f64().unwrap();
        let mib = size as f64 / f64::from(1 << 20);
        let row = (
            match (remote, pki) {
                (false, _) => "in-process",
                (true, false) => "agents, HTTP",
                (true, true) => "agents, mTLS",
            },
            mib / point_s,
            mib / copy_s,
            mib / restore_s,
        );
        eprintln!(
            "{:<14} point {:>7.1} MiB/s  copy {:>7.1} MiB/s  restore {:>7.1} MiB/s",
            row.0, row.1, row.2, row.3
        );
        rows.push(row);
        drop(agents);
    }
    let (l, r, t) = (rows[0], rows[1], rows[2]);
    eprintln!(
        "\n{gib} GiB disk (a third each zero, text, random): remote agents against in-process: point {:.0} %, copy {:.0} %, restore {:.0} % (target >= 80 %)",
        100.0 * r.1 / l.1,
        100.0 * r.2 / l.2,
        100.0 * r.3 / l.3
    );
    eprintln!(
        "mutual TLS against plain HTTP through the agents: point {:.0} %, copy {:.0} %, restore {:.0} % (target >= 95 %)",
        100.0 * t.1 / r.1,
        100.0 * t.2 / r.2,
        100.0 * t.3 / r.3
    );
}
