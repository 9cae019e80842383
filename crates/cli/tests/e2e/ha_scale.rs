//! The control plane at scale on PostgreSQL (a benchmark, ignored in the
//! suite; `scripts/bench-ha-scale` runs it and prints the figures):
//! `STANDBY_SCALE_HOSTS` hosts (default 100), each with its own `standby
//! agent` process heartbeating every second, `STANDBY_SCALE_VMS` VMs on
//! them (default 10,000), and `STANDBY_SCALE_POINTS` points in the
//! catalog (default 1,000,000, written straight into the database: what
//! months of points every 5 minutes leave). Measured: the leader's CPU
//! while it serves the agents and the API load, the API's latency at a
//! fixed request rate (`STANDBY_SCALE_RPS`, default 500) over 20 s, and
//! how long a waiting replica takes, after the leader is killed, to lead
//! and answer.

use std::time::{Duration, Instant};

use crate::harness::{Lab, LabOptions, free_port};
use crate::watch::wait_until;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the state).
    (ticks(11) + ticks(12)) / 100.0
}

/// `n` free ports for the agents, below the kernel's ephemeral range: a
/// port [`free_port`] hands out is free only until the agent binds it,
/// and meanwhile the controller's own connections (to PostgreSQL, to
/// the agents started before) may take it; they never take these.
fn agent_ports(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let start = low.saturating_sub(8000).max(1024);
    let ports: Vec<u16> = (start..low)
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect();
    assert_eq!(ports.len(), n, "{n} free ports below {low}");
    ports
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    let k = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[k.min(sorted.len() - 1)]
}

#[test]
#[ignore = "a benchmark: scripts/bench-ha-scale prints its figures"]
fn ha_scale_figures() {
    let hosts = env_or("STANDBY_SCALE_HOSTS", 100);
    let vms = env_or("STANDBY_SCALE_VMS", 10_000);
    let points = env_or("STANDBY_SCALE_POINTS", 1_000_000);
    let rps = env_or("STANDBY_SCALE_RPS", 500);
    let url = standby_testkit::postgres::database();
    let db = url.rsplit_once('/').unwrap().1.to_string();
    let ports = agent_ports(hosts);
    let mut extra = String::new();
    for (h, port) in ports.iter().enumerate() {
        let site = if h.is_multiple_of(2) {
            "site1"
        } else {
            "site2"
        };
        extra.push_str(&format!(
            "\n[hosts.host-{h}]\nsite = \"{site}\"\ndriver = \"process\"\ndisk_dir = \"disks/host-{h}\"\n\
             \n[agents.agent-{h}]\nsite = \"{site}\"\nhost = \"host-{h}\"\nurl = \"http://127.0.0.1:{port}\"\n\
             heartbeat = \"1s\"\nallowed_commands = [\"sleep\"]\n"
        ));
    }
    for v in 0..vms {
        let h = v % hosts;
        let dr = if h.is_multiple_of(2) {
            "site2"
        } else {
            "site1"
        };
        extra.push_str(&format!(
            "\n[vms.vm-{v}]\nhost = \"host-{h}\"\ndr_site = \"{dr}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\n"
        ));
    }
    let b_port = free_port();
    let t = Instant::now();
    let mut lab = Lab::new(LabOptions {
        controller: format!("database = \"{url}\"\n"),
        watch: extra,
        // Served by the sites' agents: a controller start reads no
        // manifest, the catalog is the database's.
        stores: [
            "agent = \"agent-0\"".to_string(),
            "agent = \"agent-1\"".to_string(),
        ],
        ..Default::default()
    });
    let first_start = t.elapsed();

    // The catalog: `points` points over the VMs, one copy each.
    let cluster = standby_testkit::postgres::cluster();
    let t = Instant::now();
    cluster.sql_in(
        &db,
        &format!(
            "INSERT INTO points (id, vm, group_name, site, time, consistency, size, bytes_read, bytes_new) \
             SELECT 'vm-' || (g % {vms}) || '@' || t, 'vm-' || (g % {vms}), NULL, \
                    CASE WHEN (g % {vms}) % {hosts} % 2 = 0 THEN 'site1' ELSE 'site2' END, t, 'crash', \
                    1048576, 1048576, 65536 \
             FROM (SELECT g, to_char(timestamp '2026-01-01' + g * interval '300 milliseconds', \
                   'YYYY-MM-DD\"T\"HH24:MI:SS.MS') || '000000Z' AS t \
                   FROM generate_series(1, {points}) g) s; \
             INSERT INTO point_copies (point_id, datastore, position) \
             SELECT id, CASE WHEN site = 'site1' THEN 'site1-store' ELSE 'site2-store' END, 0 FROM points; \
             ANALYZE;"
        ),
    );
    let catalogued = t.elapsed();

    // Every host's agent, heartbeating to both replicas' addresses.
    let both = format!("http://127.0.0.1:{},http://127.0.0.1:{b_port}", lab.api);
    let t = Instant::now();
    let agents: Vec<crate::agents::AgentProc> = ports
        .iter()
        .enumerate()
        .map(|(h, port)| {
            crate::agents::AgentProc::start(
                &lab.cfg,
                &format!("agent-{h}"),
                &both,
                *port,
                &lab.path(&format!("agent-{h}")),
            )
        })
        .collect();
    let agents_up = t.elapsed();
    lab.stop_server();
    lab.start_server();
    let leader = lab.server_pid().expect("the leader runs");
    std::thread::sleep(Duration::from_secs(5));

    // The API at `rps` requests a second for 20 s: a VM's status, its
    // points, the list of VMs' protection, in turn.
    let token = lab.token();
    let base = format!("http://127.0.0.1:{}", lab.api);
    let cpu0 = cpu_seconds(leader);
    let t0 = Instant::now();
    let latencies = crate::qemu::rt().block_on(async {
        let client = crate::harness::plain_client(Duration::from_secs(10));
        let total = rps * 20;
        let mut tasks = tokio::task::JoinSet::new();
        let start = tokio::time::Instant::now();
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rps as f64);
            let (client, token, base) = (client.clone(), token.clone(), base.clone());
            let vm = format!("vm-{}", (i * 7919) % vms);
            tasks.spawn(async move {
                tokio::time::sleep_until(at).await;
                let path = match i % 3 {
                    0 => format!("/api/v1/vms/{vm}"),
                    1 => format!("/api/v1/points?vm={vm}&limit=20"),
                    _ => "/api/v1/sites".to_string(),
                };
                let sent = tokio::time::Instant::now();
                let answer = client
                    .get(format!("{base}{path}"))
                    .bearer_auth(token)
                    .send()
                    .await;
                let took = sent.elapsed();
                match answer {
                    // When it was sent, for the slowest ones.
                    Ok(r) if r.status().is_success() => (
                        took,
                        true,
                        format!("{path} at {:.2}s", (sent - start).as_secs_f64()),
                    ),
                    Ok(r) => (took, false, format!("{path}: {}", r.status())),
                    Err(e) => (
                        took,
                        false,
                        format!("{path} after {took:?}: {:?}", std::error::Error::source(&e)),
                    ),
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    let busy = t0.elapsed();
    let cpu = (cpu_seconds(leader) - cpu0) / busy.as_secs_f64();
    let failed: Vec<&String> = latencies
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(_, _, p)| p)
        .collect();
    // The leader's log, kept for a look after the run.
    let _ = std::fs::copy(
        lab.path("server.log"),
        std::env::temp_dir().join("standby-scale-leader.log"),
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}; the leader's log ends: {}",
        failed.len(),
        latencies.len(),
        failed.first(),
        std::fs::read_to_string(lab.path("server.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut lat: Vec<Duration> = latencies.iter().map(|(d, ..)| *d).collect();
    lat.sort();
    // p99 of each kind of request, to see which is slow.
    let by_kind: Vec<String> = ["/api/v1/vms/", "/api/v1/points?", "/api/v1/sites"]
        .iter()
        .map(|k| {
            let mut l: Vec<Duration> = latencies
                .iter()
                .filter(|(_, _, p)| p.starts_with(k))
                .map(|(d, ..)| *d)
                .collect();
            l.sort();
            format!("{k} p99 {:.1}ms", pct(&l, 99).as_secs_f64() * 1e3)
        })
        .collect();

    let mut slowest: Vec<&(Duration, bool, String)> = latencies.iter().collect();
    slowest.sort_by_key(|r| std::cmp::Reverse(r.0));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(d, _, p)| format!("{p} took {:.0}ms", d.as_secs_f64() * 1e3))
        .collect();

    // A replica waits; the leader is killed; how long until the replica
    // leads and answers a VM's status.
    let cfg_b = lab.replica_config("replica-b", b_port, "controller-b", None);
    let b = crate::ha_db::replica(&lab, &cfg_b, "replica-b.log");
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    lab.kill_server();
    let client = crate::harness::plain_client(Duration::from_secs(5));
    wait_until(
        "the replica to lead and answer",
        Duration::from_secs(120),
        || {
            crate::qemu::rt().block_on(async {
                let r = client
                    .get(format!("http://127.0.0.1:{b_port}/api/v1/vms/vm-1"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                (v["name"] == "vm-1").then_some(())
            })
        },
    );
    let takeover = killed.elapsed();
    drop(b);
    drop(agents);
    eprintln!(
        "ha scale figures: {hosts} agents, {vms} VMs, {points} points; first start {:.1}s, \
         catalog written in {:.1}s, agents up in {:.1}s; API at {rps} req/s for {:.1}s: \
         p50 {:.1}ms p95 {:.1}ms p99 {:.1}ms max {:.1}ms; leader CPU {:.0}% of a core; \
         a new leader answered {:.2}s after the old one was killed; by request: {}; slowest: {}",
        first_start.as_secs_f64(),
        catalogued.as_secs_f64(),
        agents_up.as_secs_f64(),
        busy.as_secs_f64(),
        pct(&lat, 50).as_secs_f64() * 1e3,
        pct(&lat, 95).as_secs_f64() * 1e3,
        pct(&lat, 99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        cpu * 100.0,
        takeover.as_secs_f64(),
        by_kind.join(", "),
        slowest.join(", ")
    );
}
