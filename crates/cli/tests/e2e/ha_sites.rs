//! The control plane at the sites, on test hosts in network namespaces:
//! a controller replica and a host agent at each site, PostgreSQL and a
//! witness agent at a third place (the root namespace, which reaches both
//! sites), with BIND9 serving the service's name there too. Site 1, where
//! the leader runs, is lost whole: the replica at site 2 takes over, fails
//! the VNF over with no human in the loop and points the name at site 2;
//! a client outside both sites finds the service by DNS throughout.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ha::{alive, runs_in, sampler};
use crate::harness::{Lab, LabOptions, STANDBY, free_port, kill_agent_vms};
use crate::netlab::NetLab;
use crate::relay::Relay;
use crate::watch::{probe_ok, wait_until};
use standby_testkit::bind::{Bind, lookup_a};

/// A process in a namespace (`ip netns exec` execs it: the pid is its
/// own), killed when dropped, with its VMs if it is a host agent.
struct Proc {
    child: Child,
    vms: Option<std::path::PathBuf>,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.vms {
            kill_agent_vms(d);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    ns: Option<&str>,
    args: &[&str],
    log: std::fs::File,
    vms: Option<std::path::PathBuf>,
) -> Proc {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, STANDBY]);
            c
        }
        None => Command::new(STANDBY),
    };
    let child = cmd
        .args(args)
        .env("STANDBY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("standby starts");
    Proc { child, vms }
}

/// The A records of the service's name at the zone's server.
fn lookup(bind: &Bind) -> Vec<std::net::Ipv4Addr> {
    lookup_a(
        bind.addr,
        "sip.svc.example.test.",
        Duration::from_millis(500),
    )
    .unwrap_or_default()
}

/// A client outside both sites, polling until `stop` (a minute at most):
/// every 100 ms it resolves the service's name at `dns` and sends SIP
/// OPTIONS to what it got. Each try: (when, the address, answered).
#[allow(clippy::type_complexity)]
fn outside_client(
    dns: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, Option<std::net::Ipv4Addr>, bool)>> {
    crate::ha::poll(None, Duration::from_millis(100), 600, stop, move |rt, _| {
        let t = Instant::now();
        let ip = lookup_a(dns, "sip.svc.example.test.", Duration::from_millis(300))
            .and_then(|ips| ips.first().copied());
        let ok = ip.is_some_and(|ip| {
            rt.block_on(standby_vnf::client::options(
                (ip, 5060).into(),
                Duration::from_millis(300),
            ))
            .is_ok()
        });
        if ok {
            answered.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Some((t, ip, ok))
    })
}

/// The role the controller at `base` reports, if it answers.
fn role(base: &str) -> Option<String> {
    crate::ha_db::role_at(base).map(|(role, _)| role)
}

/// Total loss of site 1 with the leader on it: its controller, its agent
/// and its VNF die at once and its links go down. The replica at site 2
/// takes the lease, the site-down alert (the witness and site 2 agree)
/// runs `failover-site`, whose start at site 2 waits until site 1's agent
/// has fenced itself for certain, and the VNF answers SIP at site 2. The
/// sites are sampled every 100 ms: no two copies at once. The RTO is
/// measured from the loss to SIP answering at site 2, from the third
/// place, and as a client outside both sites sees it: it resolves the
/// service's name at the zone's server every 100 ms and sends SIP OPTIONS
/// to the address it got.
#[test]
fn ha_total_loss_of_the_leaders_site_fails_over_from_the_other_replica() {
    let net = NetLab::new();
    net.route_all();
    // PostgreSQL at the third place, reached from the sites through a
    // relay on the root namespace's address.
    let real = standby_testkit::postgres::database();
    let (_, rest) = real.rsplit_once(':').unwrap();
    let (pg_port, db) = rest.split_once('/').unwrap();
    let relay_port = free_port();
    let _database = Relay::start(
        "",
        format!("0.0.0.0:{relay_port}").parse().unwrap(),
        ([127, 0, 0, 1], pg_port.parse().unwrap()).into(),
        Duration::ZERO,
    );
    let (p1, p2, pw, b_port) = (free_port(), free_port(), free_port(), free_port());
    let (s1, s2, w) = (net.addr(2), net.addr(6), net.addr(1));
    // The zone's server at the third place, which both sites' replicas
    // reach at its address on their links.
    let bind = Bind::start_on("svc.example.test.", "hmac-sha256", Some(w.parse().unwrap()));
    let watch = format!(
        r#"{quorum}
[dns]
server = "{w}:{dns_port}"
zone = "svc.example.test."
key_name = "{key}"
secret_file = "{secret}"
ttl = "1s"

[services.sip]
vm = "pbx1"
listen = "0.0.0.0:{door}"
protocols = ["udp"]
backends = {{ site1 = "{s1}:5060", site2 = "{s2}:5060" }}
probe = "sip"
dns_name = "sip"
"#,
        quorum = crate::ha::quorum_watch(&net, (p1, p2, pw), true),
        dns_port = bind.addr.port(),
        key = Bind::KEY,
        secret = bind.key_file(Bind::KEY).display(),
        door = free_port(),
    );
    let mut lab = Lab::new(LabOptions {
        vm: Some(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#
                .into(),
        ),
        listen_host: "0.0.0.0",
        controller: format!("database = \"postgres://postgres@{w}:{relay_port}/{db}\"\n"),
        watch,
        ..LabOptions::default()
    });
    // The lab's controller made the schema and the admin token; the
    // replicas run at the sites from now on.
    lab.stop_server();
    let a_port = lab.api;
    let (url_a, url_b) = (
        format!("http://{s1}:{a_port}"),
        format!("http://{s2}:{b_port}"),
    );
    let cfg_a = lab.replica_config("ctl-site1", a_port, "controller", Some(&url_a));
    let cfg_b = lab.replica_config("ctl-site2", b_port, "controller-b", Some(&url_b));
    let dir = lab.path("");
    let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let read_log =
        |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let server =
        |cfg: &std::path::Path| ["--config", cfg.to_str().unwrap(), "server"].map(String::from);
    let mut ctl_a = spawn(
        Some(&net.s1),
        &server(&cfg_a).each_ref().map(String::as_str),
        log("ctl-site1"),
        None,
    );
    wait_until(
        "the controller at site 1 to lead",
        Duration::from_secs(30),
        || (role(&url_a).as_deref() == Some("leader")).then_some(()),
    );
    let ctl_b = spawn(
        Some(&net.s2),
        &server(&cfg_b).each_ref().map(String::as_str),
        log("ctl-site2"),
        None,
    );
    wait_until(
        "the replica at site 2 to follow",
        Duration::from_secs(30),
        || (role(&url_b).as_deref() == Some("replica")).then_some(()),
    );
    let cfg_path = lab.cfg.clone();
    let agent = |ns: Option<&str>, name: &str, ctls: String, port: u16, host: bool| {
        let data = dir.join(name);
        let cfg = cfg_path.to_str().unwrap().to_string();
        let listen = format!("0.0.0.0:{port}");
        let mut args = vec![
            "--config",
            &cfg,
            "agent",
            "--name",
            name,
            "--controller",
            &ctls,
            "--listen",
            &listen,
        ];
        let data_s = data.to_str().unwrap().to_string();
        if host {
            args.extend(["--data-dir", &data_s]);
        }
        spawn(ns, &args, log(name), host.then_some(data))
    };
    let mut agent1 = agent(
        Some(&net.s1),
        "site1-agent",
        format!("{url_a},{url_b}"),
        p1,
        true,
    );
    let agent2 = agent(
        Some(&net.s2),
        "site2-agent",
        format!("{url_b},{url_a}"),
        p2,
        true,
    );
    let witness = agent(None, "witness", format!("{url_a},{url_b}"), pw, false);
    lab.set_env("STANDBY_URL", Some(&format!("{url_a},{url_b}")));
    lab.set_env("STANDBY_TOKEN", Some(&lab.token()));

    let started = wait_until("the agent to run pbx1", Duration::from_secs(30), || {
        let out = lab.run(&["--json", "vm", "start", "pbx1"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    let pid1 = started["pid"].as_u64().expect("a pid");
    wait_until(
        "site 1 seen from site 2 and the witness",
        Duration::from_secs(30),
        || {
            [
                ("site1-from-site2", "agent:site2-agent"),
                ("site1-from-witness", "agent:witness"),
            ]
            .iter()
            .all(|(p, v)| probe_ok(&lab, p, v) == Some(true))
            .then_some(())
        },
    );
    assert!(read_log("site1-agent").contains("self-fencing armed"));
    lab.json(&["protect", "run", "gold"]);
    // The outside client finds the service at site 1 by its name.
    let outside_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outside_answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outside = outside_client(bind.addr, outside_stop.clone(), outside_answered.clone());
    wait_until(
        "the name to lead to site 1",
        Duration::from_secs(30),
        || lookup(&bind).contains(&s1.parse().unwrap()).then_some(()),
    );
    // Not before the client has been answered by the name (a slow
    // machine may take a few tries), so the loss is seen from a working
    // service.
    wait_until(
        "the outside client to be answered",
        Duration::from_secs(30),
        || {
            outside_answered
                .load(std::sync::atomic::Ordering::Relaxed)
                .then_some(())
        },
    );

    // Site 1 is lost whole: the leader, the agent and the VNF die, the
    // links go down.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = sampler(&net, pid1, stop.clone());
    let lost = Instant::now();
    ctl_a.kill();
    agent1.kill();
    net.cut_site1();
    let sip2: std::net::SocketAddr = format!("{s2}:5060").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::fencing::sip_answers(sip2) {
        if Instant::now() > deadline {
            // What the survivors did, to tell which step stalled.
            for name in [
                "ctl-site1",
                "site1-agent",
                "ctl-site2",
                "site2-agent",
                "witness",
            ] {
                let text = read_log(name);
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- {name}.log (last 60 lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            panic!("timed out after 60s waiting for SIP at site 2 (logs above)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rto = lost.elapsed();
    let s2_ip: std::net::Ipv4Addr = s2.parse().unwrap();
    wait_until(
        "the name to lead to site 2",
        Duration::from_secs(30),
        || (lookup(&bind) == vec![s2_ip]).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    outside_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = samples.join().unwrap();
    let outside = outside.join().unwrap();
    let since_loss = |t: Instant| t.saturating_duration_since(lost);
    // Before the loss the client reached site 1 by the name; after it,
    // the first answer comes from site 2, where the name leads.
    assert!(
        outside
            .iter()
            .any(|(t, ip, ok)| *t < lost && *ip == Some(s1.parse().unwrap()) && *ok),
        "the outside client never reached site 1 by DNS: {outside:?}"
    );
    let back = outside
        .iter()
        .find(|(t, _, ok)| *t > lost && *ok)
        .unwrap_or_else(|| panic!("the outside client never got an answer again: {outside:?}"));
    assert_eq!(back.1, Some(s2_ip), "{outside:?}");
    let dns_rto = since_loss(back.0);
    let overlaps = samples.iter().filter(|(_, a, b)| *a && *b).count();
    assert_eq!(overlaps, 0, "two copies ran at once: {samples:?}");
    assert!(!alive(pid1));
    assert!(runs_in(&net.s2));
    let log_b = read_log("ctl-site2");
    assert!(log_b.contains("this controller leads"), "{log_b}");
    lab.set_env("STANDBY_URL", Some(&url_b));
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(
        (vm["active_site"].as_str(), vm["state"].as_str()),
        (Some("site2"), Some("running")),
        "{vm:#}"
    );
    let jobs = lab.json(&["jobs", "list"]).to_string();
    assert!(jobs.contains("failover-site"), "{jobs}");
    eprintln!(
        "ha figures: site 1 lost with its leader: the VNF answered SIP at site 2 {:.1}s later \
         (the replica at site 2 leading, self-fencing wait included), the outside client by DNS \
         {:.1}s later (zone TTL 1s, asked every 100 ms); 0 overlaps in {} samples",
        rto.as_secs_f64(),
        dns_rto.as_secs_f64(),
        samples.len()
    );
    net.heal();
    drop(witness);
    drop(agent2);
    drop(ctl_b);
}
