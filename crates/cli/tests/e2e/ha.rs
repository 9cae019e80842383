//! Self-fencing (`[ha]`) on test hosts in network namespaces: site 1's
//! host is run by `standby agent` in the site-1 namespace, site 2's host
//! is in-process with its VMs in the site-2 namespace, a site-2 agent and
//! a witness agent (in the root namespace, beside the controller) vote
//! with site 1's agent. Cut off from everyone, site 1 stops its VM by
//! itself before the copy at site 2 starts, and what its LAN client wrote
//! after the last copied point is reported as the data-loss window; cut
//! off from site 2 or from the controller alone, it keeps running.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, LabOptions, STANDBY, free_port, kill_agent_vms};
use crate::netlab::NetLab;
use crate::watch::{alerts, probe_ok, wait_until};

/// `[ha] self_fence_after` of the namespace labs: 3 s, or
/// `STANDBY_HA_SELF_FENCE_AFTER` seconds (`scripts/bench-ha` measures the
/// RTO at other settings with it).
fn self_fence_after() -> Duration {
    std::env::var("STANDBY_HA_SELF_FENCE_AFTER")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs)
}

struct Agent {
    child: Child,
    data: Option<std::path::PathBuf>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.data {
            kill_agent_vms(d);
        }
    }
}

struct Ha {
    // Dropped in this order: agents (and their VMs), the lab, the
    // namespaces.
    agents: Vec<Agent>,
    lab: Lab,
    net: NetLab,
    /// Site 1's agent's port.
    p1: u16,
}

pub(crate) fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}

/// Whether a copy of pbx1 runs in namespace `ns`.
pub(crate) fn runs_in(ns: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| alive(p.parse().unwrap_or(0)))
        .any(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("standby-vnf") && c.contains("pbx1")
            })
        })
}

/// The agents of the namespace labs: site 1's host agent, site 2's agent
/// (its host's too with `site2_host`) and a witness, at ports `p1`, `p2`
/// and `pw`; the quorum of the three under `[ha]` (`self_fence_after` of
/// [`self_fence_after`]); and site 1's health probed from site 2 and from
/// the witness every 500 ms, so site-down needs both.
pub(crate) fn quorum_watch(
    net: &NetLab,
    (p1, p2, pw): (u16, u16, u16),
    site2_host: bool,
) -> String {
    let (s1, s2, w) = (net.addr(2), net.addr(6), net.addr(1));
    let probe = |name: &str, from: &str| {
        format!(
            r#"
[probes.{name}]
kind = "http"
url = "http://{s1}:{p1}/health"
interval = "500ms"
timeout = "400ms"
from = ["{from}"]
labels = {{ site = "site1", scope = "site" }}
"#
        )
    };
    let host2 = if site2_host {
        "host = \"site2-host1\"\nallowed_commands = [\"standby-vnf\"]\n"
    } else {
        ""
    };
    format!(
        r#"
[sites.witness]

[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://{s1}:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
url = "http://{s2}:{p2}"
heartbeat = "300ms"
{host2}
[agents.witness]
site = "witness"
url = "http://{w}:{pw}"
heartbeat = "300ms"

[ha]
self_fence_after = "{after}s"
quorum = ["site1-agent", "site2-agent", "witness"]
{probe_s2}
{probe_w}
"#,
        after = self_fence_after().as_secs(),
        probe_s2 = probe("site1-from-site2", "agent:site2-agent"),
        probe_w = probe("site1-from-witness", "agent:witness"),
    )
}

fn setup() -> Ha {
    let net = NetLab::new();
    net.route_all();
    let (p1, p2, pw) = (free_port(), free_port(), free_port());
    let watch = quorum_watch(&net, (p1, p2, pw), false);
    let lab = Lab::new(LabOptions {
        vm: Some(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#
                .into(),
        ),
        listen_host: "0.0.0.0",
        watch,
        // Site 2's host runs its VMs in site 2's namespace.
        hosts: [String::new(), format!("netns = \"{}\"", net.s2)],
        ..LabOptions::default()
    });
    let agent = |ns: Option<&str>, name: &str, ctl: String, port: u16, host: bool| {
        let data = host.then(|| lab.path(name));
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(net.in_ns(ns)).arg(STANDBY);
                c
            }
            None => Command::new(STANDBY),
        };
        cmd.args([
            "--config",
            lab.cfg.to_str().unwrap(),
            "agent",
            "--name",
            name,
        ])
        .args(["--controller", &ctl])
        .args(["--listen", &format!("0.0.0.0:{port}")]);
        if let Some(d) = &data {
            cmd.arg("--data-dir").arg(d);
        }
        let log = std::fs::File::create(lab.path(&format!("{name}.log"))).unwrap();
        let child = cmd
            .env("STANDBY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        Agent { child, data }
    };
    let agents = vec![
        agent(
            Some(&net.s1),
            "site1-agent",
            format!("http://{}:{}", net.addr(1), lab.api),
            p1,
            true,
        ),
        agent(
            Some(&net.s2),
            "site2-agent",
            format!("http://{}:{}", net.addr(5), lab.api),
            p2,
            false,
        ),
        agent(
            None,
            "witness",
            format!("http://127.0.0.1:{}", lab.api),
            pw,
            false,
        ),
    ];
    Ha {
        agents,
        lab,
        net,
        p1,
    }
}

impl Ha {
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Start pbx1 at site 1 (through its agent, once it is up) and wait
    /// until both vantage points see site 1; its pid.
    fn start(&self) -> u64 {
        let started = wait_until("the agent to run pbx1", Duration::from_secs(30), || {
            let out = self.lab.run(&["--json", "vm", "start", "pbx1"]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        });
        assert_eq!(started["state"], "running", "{started}");
        wait_until(
            "site 1 seen from site 2 and the witness",
            Duration::from_secs(30),
            || {
                let all = [
                    ("site1-from-site2", "agent:site2-agent"),
                    ("site1-from-witness", "agent:witness"),
                ]
                .iter()
                .all(|(p, v)| probe_ok(&self.lab, p, v) == Some(true));
                all.then_some(())
            },
        );
        assert!(
            self.log("site1-agent").contains("self-fencing armed"),
            "{}",
            self.log("site1-agent")
        );
        started["pid"].as_u64().expect("a pid")
    }
}

/// Call `each` every `period` on a thread of its own (in network
/// namespace `ns`, if given) until `stop`, at most `max` times: what it
/// returned. `each` gets a runtime for async clients and the call's
/// number.
pub(crate) fn poll<T: Send + 'static>(
    ns: Option<&str>,
    period: Duration,
    max: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut each: impl FnMut(&tokio::runtime::Runtime, u32) -> Option<T> + Send + 'static,
) -> std::thread::JoinHandle<Vec<T>> {
    let ns = ns.map(|ns| format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let f = std::fs::File::open(&ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut out = Vec::new();
        for n in 0..max {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let t = Instant::now();
            out.extend(each(&rt, n));
            std::thread::sleep(period.saturating_sub(t.elapsed()));
        }
        out
    })
}

/// Sample both sites every 100 ms until `stop` (a minute at most): (since
/// the start, site 1 runs pbx1, site 2 runs pbx1).
pub(crate) fn sampler(
    net: &NetLab,
    pid1: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Duration, bool, bool)>> {
    let s2 = net.s2.clone();
    let t0 = Instant::now();
    poll(None, Duration::from_millis(100), 600, stop, move |_, _| {
        Some((t0.elapsed(), alive(pid1), runs_in(&s2)))
    })
}

/// A client on site 1's own network that REGISTERs a new user every 50 ms
/// at site 1's VNF until stopped (a minute at most); the users site 1
/// acknowledged, with when.
fn lan_writer(
    ns: &str,
    sip: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u32, Instant)>> {
    poll(
        Some(ns),
        Duration::from_millis(50),
        1200,
        stop,
        move |rt, n| {
            rt.block_on(standby_vnf::client::register(
                sip,
                &format!("sip:lan{n}@site1.invalid"),
                &format!("sip:lan{n}@198.18.0.1:5060"),
                3600,
                Duration::from_millis(300),
            ))
            .ok()
            .map(|_| (n, Instant::now()))
        },
    )
}

#[test]
fn ha_a_site_cut_off_from_everyone_fences_itself_before_its_copy_starts_elsewhere() {
    let mut h = setup();
    let lab = &h.lab;
    let pid1 = h.start();
    // A client on site 1's LAN writes to it for the whole trial; the last
    // point copied out of site 1 is taken while it writes.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sip1: std::net::SocketAddr = format!("{}:5060", h.net.addr(2)).parse().unwrap();
    let writer = lan_writer(&h.net.s1, sip1, writing.clone());
    std::thread::sleep(Duration::from_millis(500));
    let point_taken = Instant::now();
    lab.json(&["protect", "run", "gold"]);
    let point_done = Instant::now();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = sampler(&h.net, pid1, stop.clone());
    let cut = Instant::now();
    h.net.cut_site1();
    // Nobody acts by hand: site-down fires (the witness and site 2 agree),
    // failover-site fences site 1 and restores at site 2, whose start
    // waits until site 1 has fenced itself for certain (not heard for
    // self_fence_after + margin, site-down firing).
    let sip2: std::net::SocketAddr = format!("{}:5060", h.net.addr(6)).parse().unwrap();
    wait_until("SIP at site 2", Duration::from_secs(60), || {
        crate::fencing::sip_answers(sip2).then_some(())
    });
    let answering = cut.elapsed();
    // A second more of samples with both sites as they are now.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = samples.join().unwrap();

    writing.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().unwrap();
    let overlaps = samples.iter().filter(|(_, a, b)| *a && *b).count();
    assert_eq!(overlaps, 0, "two copies ran at once: {samples:?}");
    // What site 1 acknowledged and site 2's copy does not have: nothing
    // from before the last copied point, only what came after it.
    let http2: std::net::SocketAddr = format!("{}:8080", h.net.addr(6)).parse().unwrap();
    let at_site2: std::collections::HashSet<String> =
        crate::harness::bindings_at(http2).into_iter().collect();
    let lost: Vec<&(u32, Instant)> = acked
        .iter()
        .filter(|(n, _)| !at_site2.contains(&format!("sip:lan{n}@site1.invalid")))
        .collect();
    assert!(
        acked.iter().any(|(_, t)| *t < point_taken),
        "the LAN client wrote nothing before the point"
    );
    assert!(
        lost.iter().all(|(_, t)| *t > point_taken),
        "writes acknowledged before the last copied point were lost: {lost:?}"
    );
    let last_ack = acked.last().map(|(_, t)| *t).expect("acknowledged writes");
    assert!(
        last_ack > cut,
        "site 1 stopped answering its LAN before the cut"
    );
    let s1_stopped = samples
        .iter()
        .find(|(_, a, _)| !a)
        .map(|(t, ..)| *t)
        .expect("site 1's copy never stopped");
    let s2_started = samples
        .iter()
        .find(|(_, _, b)| *b)
        .map(|(t, ..)| *t)
        .expect("site 2's copy never seen");
    assert!(
        s1_stopped >= self_fence_after() - Duration::from_millis(200),
        "{s1_stopped:?}"
    );
    assert!(s1_stopped < s2_started);
    assert!(
        h.log("site1-agent").contains("self-fenced"),
        "{}",
        h.log("site1-agent")
    );
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2", "{vm}");
    let window = last_ack.saturating_duration_since(point_done);
    eprintln!(
        "ha figures (self_fence_after {}s): site 1 fenced itself {:.1}s after the cut; the copy at site 2 running at \
         {:.1}s, answering SIP at {:.1}s; 0 overlaps in {} samples; data-loss window: {} of {} \
         writes site 1 acknowledged to its LAN client are not at site 2, acknowledged up to \
         {:.1}s after the last copied point ({:.1}s after the cut), none from before the point",
        self_fence_after().as_secs(),
        s1_stopped.as_secs_f64(),
        s2_started.as_secs_f64(),
        answering.as_secs_f64(),
        samples.len(),
        lost.len(),
        acked.len(),
        window.as_secs_f64(),
        last_ack.saturating_duration_since(cut).as_secs_f64(),
    );

    // Healed, site 1 stays fenced: its copy does not come back.
    h.net.heal();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!alive(pid1));
    assert!(runs_in(&h.net.s2));

    // The controller's database is lost after the failover: the new one
    // knows only the VMs' homes (site 1) and no fence. It adopts site 1's
    // fence from its agent, learns from the hosts that pbx1 runs at site
    // 2, and no second copy starts.
    h.lab.stop_server();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(h.lab.path(&format!("controller/{f}")));
    }
    h.lab.start_server();
    wait_until("site 1's fence adopted", Duration::from_secs(15), || {
        let sites = h.lab.json(&["site", "list"]);
        let s1 = sites
            .as_array()?
            .iter()
            .find(|s| s["name"] == "site1")?
            .clone();
        (s1["fenced"] == true).then_some(s1)
    });
    wait_until("pbx1's placement learned", Duration::from_secs(15), || {
        (h.lab.json(&["vm", "status", "pbx1"])["active_site"] == "site2").then_some(())
    });
    let out = h.lab.run(&["vm", "start", "pbx1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!runs_in(&h.net.s1), "a second copy started at site 1");
    assert!(runs_in(&h.net.s2));
    drop(h.agents);
}

#[test]
fn ha_a_site_that_still_reaches_a_majority_keeps_its_vm() {
    let h = setup();
    let lab = &h.lab;
    let pid1 = h.start();

    // The site link is cut, the witness (and the controller) see both.
    h.net.cut_between_sites();
    std::thread::sleep(self_fence_after() * 2);
    assert!(
        alive(pid1),
        "site 1 stopped its VM with a majority in reach"
    );
    let site_down = |lab: &Lab| alerts(lab, false).iter().any(|a| a["rule"] == "site-down");
    assert!(!site_down(lab), "the witness vetoes site-down");
    h.net.heal();

    // Now the controller's link (and so the witness beside it) is cut:
    // site 1 still reaches site 2's agent, itself and site 2 a majority.
    h.net.cut_controller_site1();
    std::thread::sleep(self_fence_after() * 2);
    assert!(
        alive(pid1),
        "site 1 stopped its VM with a majority in reach:\n{}",
        h.log("site1-agent")
    );
    assert!(!h.log("site1-agent").contains("self-fenced"));
    // Site 2's agent still reaches site 1: no site-down, so a failover
    // would wait; the fence would stay unconfirmed.
    assert!(!site_down(lab), "site 2's agent vetoes site-down");
    h.net.heal();
    drop(h.agents);
}

/// The epoch the agent at `base` has seen (its state).
fn agent_epoch(lab: &Lab, base: &str) -> u64 {
    let client = crate::harness::plain_client(Duration::from_secs(5));
    let token = lab.agent_token("site1-agent");
    crate::qemu::rt().block_on(async {
        let v: Value = client
            .get(format!("{base}/agent/v1/state"))
            .bearer_auth(token)
            .send()
            .await
            .expect("the agent answers")
            .json()
            .await
            .expect("its state");
        v["epoch"].as_u64().expect("an epoch in the state")
    })
}

#[test]
fn ha_agents_refuse_a_deposed_controllers_epoch_and_a_fresh_database_learns_it() {
    let mut h = setup();
    h.start();
    let base = format!("http://{}:{}", h.net.addr(2), h.p1);
    let e1 = agent_epoch(&h.lab, &base);
    assert!(e1 >= 1, "the controller's commands carry its epoch");

    // A new leader (this controller, restarted): a new epoch, which the
    // agent learns from the next heartbeat answer or command.
    h.lab.kill_server();
    h.lab.start_server();
    let e2 = wait_until(
        "the agent to see the new epoch",
        Duration::from_secs(15),
        || {
            let e = agent_epoch(&h.lab, &base);
            (e > e1).then_some(e)
        },
    );
    // A command of the old leader is refused, whatever it is; the new
    // one's is taken.
    let client = crate::harness::plain_client(Duration::from_secs(10));
    let token = h.lab.agent_token("site1-agent");
    let stop = serde_json::json!({"vm": "pbx1"});
    let (status, body) =
        crate::harness::agent_call_at(&client, &base, Some(&token), "stop", &stop, e1);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "stale_epoch", "{body}");
    assert!(
        h.log("site1-agent").contains("a deposed controller"),
        "{}",
        h.log("site1-agent")
    );
    let vm = h.lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running", "the old leader stopped it: {vm}");

    // The database is lost: a new one starts its epochs at 1, below what
    // the agent has seen; the agent's heartbeat tells the controller,
    // which raises its epoch above it before its commands count.
    h.lab.stop_server();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(h.lab.path(&format!("controller/{f}")));
    }
    h.lab.start_server();
    let e3 = wait_until(
        "the epoch raised above the agent's",
        Duration::from_secs(15),
        || {
            let e = agent_epoch(&h.lab, &base);
            (e > e2).then_some(e)
        },
    );
    let vm = h.lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running", "{vm}");
    eprintln!("ha figures: epochs {e1} -> {e2} (restart) -> {e3} (fresh database)");
    drop(h.agents);
}
