//! The automatic path, on test hosts in network namespaces: site 1 (the
//! VNF, run by site 1's own agent), site 2 (the DR host, an agent as second
//! vantage point), the customers (a client namespace that reaches only the
//! controller's front door) and the controller in the root namespace.
//!
//! A client registers users through the front door all along. A drill while
//! site 1 serves must not disturb it; cutting site 1's links must bring the
//! VNF back at site 2 with no human (alert → `failover-site`); when site 1
//! returns it must not run the VNF (fenced); `failback` must bring it home
//! without losing an acknowledged registration. The figures test repeats
//! the failover and prints detection, RTO and data-loss p50/p95.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::harness::{Lab, LabOptions, STANDBY, free_port, kill_agent_vms};
use crate::netlab::NetLab;
use crate::watch::{probe_ok, wait_until};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host agent; on drop it is killed, and so are the VMs it left
/// running (VMs outlive their agent by design, a test's not its test).
struct AgentProc {
    child: Child,
    data: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_agent_vms(&self.data);
    }
}

fn sibling(bin: &str) -> String {
    std::path::Path::new(STANDBY)
        .with_file_name(bin)
        .to_string_lossy()
        .into_owned()
}

struct Dr {
    // Dropped in this order: client, agents, lab (stops the VM and the
    // controller), namespaces.
    client: Option<Proc>,
    _agents: Vec<AgentProc>,
    lab: Lab,
    net: NetLab,
    client_out: PathBuf,
}

fn start_agent(lab: &Lab, net: &NetLab, ns: &str, name: &str, controller: &str) -> AgentProc {
    let log = std::fs::File::create(lab.path(&format!("{name}.log"))).unwrap();
    let data = lab.path(name);
    let child = Command::new("ip")
        .args(net.in_ns(ns))
        .args([
            STANDBY,
            "--config",
            lab.cfg.to_str().unwrap(),
            "agent",
            "--name",
            name,
            "--controller",
            controller,
            "--listen",
            "0.0.0.0:7781",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("STANDBY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts");
    AgentProc { child, data }
}

/// The witness: an agent with no host beside the controller, a member
/// of the quorum.
fn witness(lab: &Lab, port: u16) -> AgentProc {
    let log = std::fs::File::create(lab.path("witness.log")).unwrap();
    let child = Command::new(STANDBY)
        .args([
            "--config",
            lab.cfg.to_str().unwrap(),
            "agent",
            "--name",
            "witness",
        ])
        .args(["--controller", &format!("http://127.0.0.1:{}", lab.api)])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .env("STANDBY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("witness starts");
    AgentProc {
        child,
        data: lab.path("witness"),
    }
}

fn dr_lab() -> Dr {
    let net = NetLab::new();
    // Quorum pings cross only the direct links (see `NetLab::route_all`).
    net.route_all();
    let witness_port = free_port();
    let vm = format!(
        r#"command = "{vnf}"
args = ["--name", "pbx1@{{site}}", "--disk", "{{disk.data}}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#,
        vnf = sibling("standby-vnf"),
    );
    let probe = |name: &str, url: String, from: &str| {
        format!(
            r#"
[probes.{name}]
kind = "http"
url = "{url}"
interval = "1s"
timeout = "900ms"
attempts = 3
from = ["{from}"]
labels = {{ site = "site1", scope = "site" }}
"#
        )
    };
    let watch = format!(
        r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://{s1}:7781"
heartbeat = "1s"
allowed_commands = ["{vnf}"]
[agents.site2-agent]
site = "site2"
url = "http://{s2}:7781"
heartbeat = "1s"
[sites.witness]
[agents.witness]
site = "witness"
url = "http://{w}:{witness_port}"
heartbeat = "1s"
[ha]
self_fence_after = "3s"
quorum = ["site1-agent", "site2-agent", "witness"]
{p1}
{p2}
[services.pbx]
vm = "pbx1"
listen = "{front}:5060"
protocols = ["udp"]
backends = {{ site1 = "{s1}:5060", site2 = "{s2}:5060" }}
probe = "sip"
"#,
        p1 = probe(
            "site1-from-controller",
            format!("http://{}:7781/health", net.addr(2)),
            "controller"
        ),
        p2 = probe(
            "site1-from-site2",
            format!("http://{}:7781/health", net.addr(10)),
            "agent:site2-agent"
        ),
        s1 = net.addr(2),
        s2 = net.addr(6),
        front = net.addr(13),
        w = net.addr(1),
        vnf = sibling("standby-vnf"),
    );
    let lab = Lab::new(LabOptions {
        vm: Some(vm),
        disk_size: "32MiB",
        schedule: "every 5s",
        retention: "keep_last = 20",
        listen_host: "0.0.0.0",
        watch,
        hosts: [String::new(), format!("netns = \"{}\"", net.s2)],
        ..LabOptions::default()
    });
    let agents = vec![
        start_agent(
            &lab,
            &net,
            &net.s1,
            "site1-agent",
            &format!("http://{}:{}", net.addr(1), lab.api),
        ),
        start_agent(
            &lab,
            &net,
            &net.s2,
            "site2-agent",
            &format!("http://{}:{}", net.addr(5), lab.api),
        ),
        witness(&lab, witness_port),
    ];
    wait_until("site1's agent to report", Duration::from_secs(20), || {
        probe_ok(&lab, "heartbeat:site1-agent", "controller")
            .filter(|ok| *ok)
            .map(|_| ())
    });
    lab.json(&["vm", "start", "pbx1"]);
    wait_until("every probe to pass", Duration::from_secs(30), || {
        [
            ("site1-from-controller", "controller"),
            ("site1-from-site2", "agent:site2-agent"),
        ]
        .iter()
        .all(|(p, v)| probe_ok(&lab, p, v) == Some(true))
        .then_some(())
    });
    let client_out = lab.path("client.jsonl");
    Dr {
        client: None,
        _agents: agents,
        lab,
        net,
        client_out,
    }
}

/// One line of `standby-sipload`.
#[derive(Debug, Clone)]
struct Attempt {
    aor: String,
    acked: Option<DateTime<Utc>>,
    site: Option<String>,
}

impl Dr {
    fn start_client(&mut self) {
        let log = std::fs::File::create(self.lab.path("client.log")).unwrap();
        let child = Command::new("ip")
            .args(self.net.in_ns(&self.net.client))
            .args([
                &sibling("standby-sipload"),
                "--target",
                &format!("{}:5060", self.net.addr(13)),
                "--interval",
                "50ms",
                "--timeout",
                "500ms",
                "--duration",
                "300s",
                "--out",
                self.client_out.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("standby-sipload starts");
        self.client = Some(Proc(child));
    }

    fn attempts(&self) -> Vec<Attempt> {
        let text = std::fs::read_to_string(&self.client_out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Attempt {
                aor: v["aor"].as_str().unwrap_or_default().to_string(),
                acked: v["acked"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                site: v["server"]
                    .as_str()
                    .and_then(|s| s.rsplit_once('@'))
                    .map(|(_, site)| site.to_string()),
            })
            .collect()
    }

    fn acked_by(&self, site: &str) -> Vec<(String, DateTime<Utc>)> {
        self.attempts()
            .into_iter()
            .filter(|a| a.site.as_deref() == Some(site))
            .filter_map(|a| a.acked.map(|t| (a.aor, t)))
            .collect()
    }

    /// The VNF's bindings at `addr` (its HTTP state endpoint).
    fn bindings(&self, addr: &str) -> BTreeSet<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let st = rt
            .block_on(standby_vnf::client::state(
                format!("{addr}:8080").parse().unwrap(),
            ))
            .expect("VNF state");
        st.bindings.into_iter().map(|b| b.aor).collect()
    }

    /// Pids of `standby-vnf` processes in namespace `ns`.
    fn vnf_pids(&self, ns: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("standby-vnf"))
            })
            .collect()
    }

    fn points_at_site2(&self) -> usize {
        let points = self.lab.json(&["points", "list", "pbx1"]);
        points
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["copies"].to_string().contains("site2-store"))
            .count()
    }

    fn runbook_job(&self, name: &str, after: DateTime<Utc>) -> Option<Value> {
        let jobs = self.lab.json(&["jobs", "list", "--limit", "500"]);
        jobs.as_array().unwrap().iter().find_map(|j| {
            let created = DateTime::parse_from_rfc3339(j["created_at"].as_str()?)
                .ok()?
                .with_timezone(&Utc);
            (j["kind"] == "runbook" && j["target"] == name && created >= after).then(|| j.clone())
        })
    }
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// What one failover measured.
struct Measured {
    detection: f64,
    rto: f64,
    loss_window: f64,
    lost: usize,
}

/// Cut site 1 and wait for the automatic failover; check what the client
/// got and return the figures.
fn cut_and_fail_over(dr: &Dr) -> Measured {
    let cut = Utc::now();
    dr.net.cut_site1();
    let job = wait_until(
        "the failover-site runbook to finish",
        Duration::from_secs(120),
        || {
            dr.runbook_job("failover-site", cut)
                .filter(|j| j["status"] == "succeeded" || j["status"] == "failed")
        },
    );
    assert_eq!(job["status"], "succeeded", "failover failed: {job:#}");
    wait_until(
        "the client to be answered by site 2",
        Duration::from_secs(30),
        || (dr.acked_by("site2").len() >= 10).then_some(()),
    );
    let alerts = dr.lab.json(&["alerts", "list", "--all", "--limit", "1000"]);
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "site-down" && a["labels"]["site"] == "site1")
        .cloned()
        .expect("a site-down alert");
    let fired = DateTime::parse_from_rfc3339(alert["fired_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    // Every step is on the incident's timeline.
    let incident = alert["incident"].as_i64().expect("the alert's incident");
    let detail = dr.lab.json(&["incidents", "show", &incident.to_string()]);
    let timeline = detail["timeline"].to_string();
    for step in ["fence", "restore", "traffic"] {
        assert!(
            timeline.contains(step),
            "no {step} on the timeline: {timeline}"
        );
    }
    // What the recovered VNF has against what site 1 acknowledged.
    let site1 = dr.acked_by("site1");
    let site2 = dr.acked_by("site2");
    let have = dr.bindings(&dr.net.addr(6));
    let lost: Vec<&(String, DateTime<Utc>)> =
        site1.iter().filter(|(a, _)| !have.contains(a)).collect();
    // Lost registrations are the newest ones only (after the point used).
    if let Some((_, first_lost)) = lost.first() {
        assert!(
            site1
                .iter()
                .filter(|(_, t)| t > first_lost)
                .all(|(a, _)| !have.contains(a)),
            "a registration acknowledged after a lost one survived: the restore is not a point in time"
        );
    }
    for (a, _) in &site2 {
        assert!(have.contains(a), "{a} acknowledged by site 2 is missing");
    }
    let last1 = site1.last().unwrap().1;
    let first2 = site2.first().unwrap().1;
    // The window of acknowledged data lost: from the first lost
    // registration to the last one site 1 acknowledged.
    let loss_window = lost.first().map(|(_, t)| secs(*t, last1)).unwrap_or(0.0);
    Measured {
        detection: secs(cut, fired),
        rto: secs(last1, first2),
        loss_window,
        lost: lost.len(),
    }
}

#[test]
fn drill_failover_fence_and_failback_through_the_front_door() {
    let mut dr = dr_lab();
    dr.start_client();
    wait_until(
        "points at site 2 and registrations",
        Duration::from_secs(60),
        || (dr.points_at_site2() >= 2 && dr.acked_by("site1").len() >= 40).then_some(()),
    );

    // A drill while site 1 serves: the client sees no error.
    let errors_before = dr.attempts().iter().filter(|a| a.acked.is_none()).count();
    let drill = dr
        .lab
        .json(&["runbook", "run", "drill", "--param", "site=site1", "--wait"]);
    let errors_after = dr.attempts().iter().filter(|a| a.acked.is_none()).count();
    assert_eq!(
        errors_after, errors_before,
        "the drill disturbed production"
    );
    let report = drill.to_string();
    if let Some(r) = drill["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["step"] == "report"))
    {
        eprintln!("drill: {}", r["output"]["summary"]);
    }
    assert!(report.contains("rto_seconds"), "{drill:#}");
    assert!(report.contains("data_age_seconds"), "{drill:#}");
    assert!(report.contains("\"verified\":true"), "{drill:#}");
    let leftovers = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&leftovers.stdout).contains("sbd-"),
        "the drill's namespace is left behind"
    );

    // The newest point's own chunks are damaged at site 2 just after it
    // landed there, and site 1's datastore goes with the site: the
    // automatic failover must restore the next older point, and say which
    // it skipped and why. (Points come every 5 s: the cut follows at once.)
    let site2_packs = || -> BTreeSet<PathBuf> {
        crate::harness::files_under(&dr.lab.path("site2/store"), "pack")
            .into_iter()
            .collect()
    };
    let landed = |after: usize| {
        wait_until("a new point at site 2", Duration::from_secs(60), || {
            let n = dr.points_at_site2();
            (n > after).then_some(n)
        })
    };
    let n = landed(dr.points_at_site2());
    let before = site2_packs();
    landed(n);
    let newest = dr
        .lab
        .json(&["points", "list", "pbx1"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["copies"].to_string().contains("site2-store"))
        .filter_map(|p| p["id"].as_str().map(String::from))
        .max_by(|a, b| a.split('@').nth(1).cmp(&b.split('@').nth(1)))
        .unwrap();
    let new: Vec<PathBuf> = site2_packs().difference(&before).cloned().collect();
    crate::recovery::damage(&new);
    let away = dr.lab.path("site1/store.away");
    std::fs::rename(dr.lab.path("site1/store"), &away).unwrap();

    // Site 1 is cut off: the runbook does the rest.
    let cut = Utc::now();
    let m = cut_and_fail_over(&dr);
    let job = dr.runbook_job("failover-site", cut).unwrap();
    let steps = dr.lab.json(&["runbook", "steps", &job["id"].to_string()]);
    let restored = crate::recovery::step_output(&steps, "restore", 0);
    assert_ne!(restored["point"], newest.as_str(), "{restored:#}");
    let skipped = restored["skipped"].to_string();
    assert!(
        skipped.contains(&newest)
            && skipped.contains("site2-store")
            && skipped.contains("site1-store"),
        "the newest point skipped, with why at each copy: {restored:#}"
    );
    let alerts = dr.lab.json(&["alerts", "list", "--all", "--limit", "1000"]);
    let incident = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "site-down" && a["labels"]["site"] == "site1")
        .and_then(|a| a["incident"].as_i64())
        .expect("the site-down alert's incident");
    let detail = dr.lab.json(&["incidents", "show", &incident.to_string()]);
    assert!(
        detail
            .to_string()
            .contains(&format!("skipped point {newest}")),
        "the incident names the skipped point: {detail:#}"
    );
    // (Site 1's datastore stays away while the site is cut off; a vanished
    // datastore is never recreated by a write, so it is back before the
    // failback below.)
    eprintln!(
        "failover: detection {:.2}s, client RTO {:.2}s, {} acknowledged registrations lost over {:.2}s",
        m.detection, m.rto, m.lost, m.loss_window
    );
    assert!(m.rto < 60.0, "RTO {:.1}s", m.rto);
    // Cut off from the controller, site 2 and the witness, site 1's agent
    // fenced itself ([ha]) before the copy at site 2 was allowed.
    assert!(
        dr.vnf_pids(&dr.net.s1).is_empty(),
        "site 1's copy still runs beside site 2's"
    );
    assert!(
        std::fs::read_to_string(dr.lab.path("site1-agent.log"))
            .unwrap_or_default()
            .contains("self-fenced"),
        "site 1's agent did not fence itself"
    );

    // Site 1 comes back, its datastore's disk with it: its agent learns of
    // the controller's fence and keeps its VNF stopped.
    std::fs::rename(&away, dr.lab.path("site1/store")).unwrap();
    dr.net.heal();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        dr.vnf_pids(&dr.net.s1).is_empty(),
        "a fenced site restarted the VNF"
    );
    assert_eq!(
        dr.vnf_pids(&dr.net.s2).len(),
        1,
        "exactly one copy, at site 2"
    );

    // Failback: nothing acknowledged by site 2 is lost.
    let before = Utc::now();
    dr.lab.json(&[
        "runbook",
        "run",
        "failback",
        "--param",
        "site=site1",
        "--wait",
    ]);
    wait_until(
        "the client to be answered by site 1 again",
        Duration::from_secs(30),
        || {
            dr.acked_by("site1")
                .iter()
                .any(|(_, t)| *t > before)
                .then_some(())
        },
    );
    let site2 = dr.acked_by("site2");
    let have = dr.bindings(&dr.net.addr(2));
    let lost: Vec<&String> = site2
        .iter()
        .map(|(a, _)| a)
        .filter(|a| !have.contains(*a))
        .collect();
    assert!(
        lost.is_empty(),
        "failback lost {} acknowledged registrations: {lost:?}",
        lost.len()
    );
    assert!(
        dr.vnf_pids(&dr.net.s2).is_empty(),
        "site 2's copy stopped after the failback"
    );
    assert_eq!(dr.vnf_pids(&dr.net.s1).len(), 1);
    let vm = dr.lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1", "{vm:#}");
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// `scripts/bench-failover`: five automatic failovers with a 5 s
/// protection interval; prints detection, client-observed RTO and the
/// data-loss window p50/p95.
#[test]
#[ignore]
fn failover_figures() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let (mut det, mut rto, mut loss) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..trials {
        let mut dr = dr_lab();
        dr.start_client();
        wait_until("points at site 2", Duration::from_secs(60), || {
            (dr.points_at_site2() >= 2).then_some(())
        });
        // Cut at a random moment of the protection interval.
        std::thread::sleep(Duration::from_millis(1000 + (i as u64 * 1700) % 5000));
        let m = cut_and_fail_over(&dr);
        eprintln!(
            "trial {}: detection {:.2}s, RTO {:.2}s, data-loss window {:.2}s ({} lost)",
            i + 1,
            m.detection,
            m.rto,
            m.loss_window,
            m.lost
        );
        assert_eq!(dr.vnf_pids(&dr.net.s2).len(), 1);
        det.push(m.detection);
        rto.push(m.rto);
        loss.push(m.loss_window);
    }
    for (name, v) in [
        ("detection", &mut det),
        ("RTO (client)", &mut rto),
        ("data-loss window", &mut loss),
    ] {
        println!(
            "{name:<18} p50 {:.2}s  p95 {:.2}s  ({trials} trials)",
            percentile(v, 0.5),
            percentile(v, 0.95)
        );
    }
}
