//! The controller's state in PostgreSQL (`[controller] database`), on a
//! database of the test binary's PostgreSQL cluster (`standby_testkit`).

use crate::harness::{Lab, LabOptions};

/// A controller on PostgreSQL takes a point and moves nothing into a
/// SQLite file; restarted, it still has the point, the job and the VM's
/// placement, and the API never shows the database password.
#[test]
fn ha_controller_keeps_its_state_in_postgresql() {
    // The cluster trusts loopback: the password is only there to be hidden.
    let url = standby_testkit::postgres::database().replace("postgres@", "postgres:pg-s3cret@");
    let mut lab = Lab::new(LabOptions {
        controller: format!("database = \"{url}\"\n"),
        ..Default::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let run = lab.json(&["protect", "run", "gold"]);
    assert_eq!(run["vms"][0]["vm"], "pbx1", "{run:#}");
    lab.json(&["vm", "shutdown", "pbx1"]);
    let points = lab.json(&["points", "list", "pbx1"]);
    assert_eq!(points.as_array().unwrap().len(), 1, "{points:#}");
    let jobs = lab.json(&["jobs", "list"]);
    let (status, config) = lab.get("/api/v1/config");
    assert_eq!(status, 200, "{config}");
    assert!(!config.contains("pg-s3cret"), "{config}");
    assert!(config.contains("postgres:redacted:"), "{config}");

    lab.stop_server();
    assert!(
        !lab.path("controller/state.db").exists(),
        "the state went to PostgreSQL, not to a SQLite file"
    );
    lab.start_server();
    assert_eq!(lab.json(&["points", "list", "pbx1"]), points);
    let after = lab.json(&["jobs", "list"]);
    for job in jobs.as_array().unwrap() {
        let same = after
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job["id"])
            .unwrap_or_else(|| panic!("job {} lost: {after:#}", job["id"]));
        assert_eq!(same["status"], job["status"], "{same:#}");
    }
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1", "{vm:#}");
}

/// A `standby server` of its own (a second replica), killed when dropped.
pub(crate) struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn replica(lab: &Lab, cfg: &std::path::Path, log: &str) -> Replica {
    let child = std::process::Command::new(crate::harness::STANDBY)
        .args(["--config", cfg.to_str().unwrap(), "server"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(lab.path(log)).unwrap())
        .spawn()
        .expect("a replica starts");
    Replica(child)
}

impl Replica {
    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

/// The host agent; dropped, it is stopped and so are the VMs it runs
/// (they outlive their agent by design).
struct HostAgent {
    agent: Option<crate::agents::AgentProc>,
    data: std::path::PathBuf,
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        drop(self.agent.take());
        crate::harness::kill_agent_vms(&self.data);
    }
}

/// The role the controller on loopback `port` reports (see [`role_at`]).
fn role(port: u16) -> Option<(String, String)> {
    role_at(&format!("http://127.0.0.1:{port}"))
}

/// The role the controller at `base` reports (`leader`, `replica`), and
/// for a replica the leader it forwards to; none while it does not answer.
pub(crate) fn role_at(base: &str) -> Option<(String, String)> {
    let c = crate::harness::plain_client(std::time::Duration::from_secs(2));
    crate::qemu::rt().block_on(async {
        let v: serde_json::Value = c
            .get(format!("{base}/api/v1/health"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some((
            v["role"].as_str()?.to_string(),
            v["leader"]["name"].as_str().unwrap_or_default().to_string(),
        ))
    })
}

/// `standby --url URLS --token TOKEN --json ARGS`, which must succeed.
fn cli_at(urls: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(crate::harness::STANDBY)
        .args(["--url", urls, "--token", token, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn leads(port: u16) -> bool {
    role(port).is_some_and(|(r, _)| r == "leader")
}

/// GET `path` at the controller on `port`: the status, the replica that
/// answered it from the database (`x-standby-answered-by`), the body.
fn get_at(port: u16, token: &str, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let c = crate::harness::plain_client(std::time::Duration::from_secs(10));
    crate::qemu::rt().block_on(async {
        let r = c
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let by = r
            .headers()
            .get("x-standby-answered-by")
            .map(|v| v.to_str().unwrap().to_string());
        let status = r.status().as_u16();
        (status, by, r.json().await.unwrap_or_default())
    })
}

fn signal(p: &Replica, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, &p.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Two replicas share one PostgreSQL: the second waits while the first
/// leads, takes over within the lease time when the first dies, and
/// commands the agent at a new epoch. Paused past its lease (SIGSTOP),
/// a leader is replaced; continued, it steps down and exits, and the
/// agent refuses its epoch.
#[test]
fn ha_a_replica_takes_over_a_dead_leader_and_a_paused_one_steps_down() {
    use std::time::{Duration, Instant};

    use crate::watch::wait_until;

    let url = standby_testkit::postgres::database();
    let agent_port = crate::harness::free_port();
    let b_port = crate::harness::free_port();
    let mut lab = Lab::new(LabOptions {
        controller: format!("database = \"{url}\"\n"),
        watch: format!(
            r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://127.0.0.1:{agent_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]
"#
        ),
        ..Default::default()
    });
    let cfg_b = lab.replica_config("replica-b", b_port, "controller-b", None);
    let agent = HostAgent {
        agent: Some(crate::agents::AgentProc::start(
            &lab.cfg,
            "site1-agent",
            &format!("http://127.0.0.1:{},http://127.0.0.1:{b_port}", lab.api),
            agent_port,
            &lab.path("site1-agent"),
        )),
        data: lab.path("site1-agent"),
    };
    wait_until("the agent to run pbx1", Duration::from_secs(30), || {
        let out = lab.run(&["--json", "vm", "start", "pbx1"]);
        out.status.success().then_some(())
    });
    let token = lab.token();
    let a_port = lab.api;
    // Both replicas (the CLI takes the one that serves), or b alone.
    let both = format!("http://127.0.0.1:{a_port},http://127.0.0.1:{b_port}");
    let via_b = |args: &[&str]| cli_at(&both, &token, args);
    let only_b = |args: &[&str]| cli_at(&format!("http://127.0.0.1:{b_port}"), &token, args);

    // The second replica waits for the lease; meanwhile its API forwards
    // reads and writes to the leader and says whom it follows.
    let b = replica(&lab, &cfg_b, "replica-b.log");
    let b_log = lab.path("replica-b.log");
    let log_b = || std::fs::read_to_string(&b_log).unwrap_or_default();
    let follows = wait_until("replica b to answer", Duration::from_secs(20), || {
        role(b_port).filter(|(r, l)| r == "replica" && !l.is_empty())
    });
    assert_eq!(follows.1, "controller", "b follows the leader by name");
    assert!(
        log_b().contains("waiting for the leader's lease"),
        "{}",
        log_b()
    );
    let vm = only_b(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running", "a read through b: {vm}");
    // What the database alone holds b reads there itself, the same as
    // the leader answers; a VM's live state above came from the leader.
    for path in [
        "/api/v1/groups",
        "/api/v1/jobs",
        "/api/v1/points?vm=pbx1",
        "/api/v1/sites",
    ] {
        // (A job may move on between the two reads: asked again.)
        wait_until(
            &format!("b and the leader to agree on {path}"),
            Duration::from_secs(10),
            || {
                let (status, by, body) = get_at(b_port, &token, path);
                assert_eq!(
                    (status, by.as_deref()),
                    (200, Some("replica-b")),
                    "{path}: {body}"
                );
                let (_, by, leaders) = get_at(a_port, &token, path);
                assert_eq!(by, None, "the leader answers itself");
                (body == leaders).then_some(())
            },
        );
    }
    let (status, by, _) = get_at(b_port, &token, "/api/v1/vms/pbx1");
    assert_eq!(
        (status, by),
        (200, None),
        "a VM's live state is the leader's"
    );
    let (status, _, body) = get_at(b_port, &token, "/api/v1/points/nope@20260101T000000.000Z");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let sil = only_b(&[
        "alerts",
        "silence",
        "--match",
        "alertname=through-b",
        "--for",
        "1h",
        "--comment",
        "written through a replica",
    ]);
    let silences = lab.json(&["alerts", "silences"]);
    assert!(
        silences
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sil["id"] && s["comment"] == "written through a replica"),
        "the leader has the write b forwarded: {silences}"
    );

    // The leader dies: the replica takes over within the lease time.
    let t0 = Instant::now();
    lab.kill_server();
    wait_until(
        "replica b to lead and serve",
        Duration::from_secs(20),
        || leads(b_port).then_some(()),
    );
    let takeover = t0.elapsed();
    assert!(log_b().contains("this controller leads"), "{}", log_b());
    let vm = via_b(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running", "{vm}");
    let base = format!("http://127.0.0.1:{agent_port}");
    let agent_epoch = || -> u64 {
        let c = crate::harness::plain_client(Duration::from_secs(5));
        let t = lab.agent_token("site1-agent");
        crate::qemu::rt().block_on(async {
            let v: serde_json::Value = c
                .get(format!("{base}/agent/v1/state"))
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["epoch"].as_u64().unwrap()
        })
    };
    let epoch_b = wait_until("the agent to follow b", Duration::from_secs(10), || {
        let e = agent_epoch();
        (e >= 2).then_some(e)
    });

    // The first comes back as a replica and waits; b is paused past its
    // lease: a takes over with a newer epoch, and the agent follows it.
    let a = replica(&lab, &lab.cfg, "replica-a.log");
    let follows = wait_until("replica a to answer", Duration::from_secs(20), || {
        role(lab.api).filter(|(r, l)| r == "replica" && !l.is_empty())
    });
    assert_eq!(follows.1, "replica-b", "a follows b");
    signal(&b, "-STOP");
    let t1 = Instant::now();
    // The leader paused, a still answers reads from the database (a
    // replica that only forwarded would wait for the paused leader).
    let (status, by, groups) = get_at(a_port, &token, "/api/v1/groups");
    assert_eq!(status, 200, "{groups}");
    assert!(
        by.as_deref() == Some("controller") || leads(a_port),
        "answered by a's follower, or by a once it led: {by:?}"
    );
    wait_until("replica a to take over", Duration::from_secs(20), || {
        leads(lab.api).then_some(())
    });
    let takeover2 = t1.elapsed();
    let epoch_a = wait_until("the agent to follow a", Duration::from_secs(10), || {
        let e = agent_epoch();
        (e > epoch_b).then_some(e)
    });

    // Continued, b finds its lease gone and steps down: it exits.
    signal(&b, "-CONT");
    let mut b = b;
    wait_until("b to step down", Duration::from_secs(10), || {
        b.0.try_wait().unwrap().map(|_| ())
    });
    assert!(log_b().contains("stepping down"), "{}", log_b());
    // Whatever b still sent would be refused: its epoch is older.
    let client = crate::harness::plain_client(Duration::from_secs(10));
    let (status, body) = crate::harness::agent_call_at(
        &client,
        &base,
        Some(&lab.agent_token("site1-agent")),
        "stop",
        &serde_json::json!({"vm": "pbx1"}),
        epoch_b,
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("stale_epoch")),
        "{body}"
    );
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running", "{vm}");
    eprintln!(
        "ha figures: takeover of a dead leader {:.2}s, of a paused one {:.2}s (lease 3s); epochs {} -> {epoch_b} -> {epoch_a}",
        takeover.as_secs_f64(),
        takeover2.as_secs_f64(),
        1
    );
    drop(a);
    drop(agent);
}

/// The steps of `failover-site` at which the leader is killed: every one
/// in turn, or the comma-separated list in `STANDBY_HA_CRASH_STEPS`.
fn crash_steps() -> Vec<String> {
    const ALL: [&str; 7] = [
        "incident", "fence", "vms", "restore", "probes", "traffic", "resolve",
    ];
    match std::env::var("STANDBY_HA_CRASH_STEPS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|s| s.trim().into()).collect(),
        _ => ALL.iter().map(|s| s.to_string()).collect(),
    }
}

/// The leader is killed while it runs `failover-site`, at each of its
/// steps in turn, right after the step's action returned and before its success is recorded: the waiting
/// replica takes the lease, resumes the job and finishes it with every
/// step done once: one incident, site 1 fenced, the VNF running once at
/// site 2 (both hosts are agents of their own, so the copy each replica
/// would otherwise run in-process cannot hide a double start) and the
/// front door at site 2.
#[test]
fn ha_a_failover_survives_its_leader_killed_at_a_step() {
    use std::time::{Duration, Instant};

    use crate::runbooks::wait_job;
    use crate::watch::wait_until;

    for crash_step in crash_steps() {
        let url = standby_testkit::postgres::database();
        let (p1, p2, front, b_port) = (
            crate::harness::free_port(),
            crate::harness::free_port(),
            crate::harness::free_port(),
            crate::harness::free_port(),
        );
        let mut lab = Lab::new(LabOptions {
            controller: format!("database = \"{url}\"\n"),
            watch: format!(
                r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://127.0.0.1:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "http://127.0.0.1:{p2}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
probe = "sip"
"#
            ),
            ..Default::default()
        });
        let cfg_b = lab.replica_config("replica-b", b_port, "controller-b", None);
        let both = format!("http://127.0.0.1:{},http://127.0.0.1:{b_port}", lab.api);
        let agents: Vec<HostAgent> = [("site1-agent", p1), ("site2-agent", p2)]
            .into_iter()
            .map(|(name, port)| HostAgent {
                agent: Some(crate::agents::AgentProc::start(
                    &lab.cfg,
                    name,
                    &both,
                    port,
                    &lab.path(name),
                )),
                data: lab.path(name),
            })
            .collect();
        // Under load the agents may take a while to answer; the last
        // refusal is named if they never do.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = lab.run(&["--json", "vm", "start", "pbx1"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the agents did not run pbx1 within 60 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        lab.wait_sip();
        lab.json(&["protect", "run", "gold"]);

        // The leader, armed to die at the step; then the replica.
        lab.stop_server();
        lab.set_env(
            "STANDBY_CRASH_AT",
            Some(&format!("failover-site:{crash_step}:after")),
        );
        lab.start_server();
        let mut b = replica(&lab, &cfg_b, "replica-b.log");
        // Generous under a loaded machine; its log if it never follows.
        let deadline = Instant::now() + Duration::from_secs(60);
        while role(b_port).is_none_or(|(r, l)| r != "replica" || l.is_empty()) {
            assert!(
                Instant::now() < deadline && !b.exited(),
                "replica b did not follow within 60 s: {}",
                std::fs::read_to_string(lab.path("replica-b.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let job = lab.json(&["runbook", "run", "failover-site", "-p", "site=site1"])["job"]
            .as_i64()
            .unwrap();
        let t0 = Instant::now();
        assert!(
            lab.wait_server_exit(Duration::from_secs(60)),
            "the leader did not die at {crash_step}"
        );
        // From now on the lab's CLI talks to b (with the lab's token: the
        // tokens live in the shared database).
        let token = lab.token();
        lab.set_env("STANDBY_TOKEN", Some(&token));
        lab.cfg = cfg_b.clone();
        lab.api = b_port;
        let log_b = || std::fs::read_to_string(lab.path("replica-b.log")).unwrap_or_default();
        wait_until("replica b to lead", Duration::from_secs(20), || {
            assert!(!b.exited(), "replica b exited: {}", log_b());
            leads(b_port).then_some(())
        });
        let v = wait_job(&lab, job, Duration::from_secs(90));
        let finished = t0.elapsed();
        let log_b = log_b();
        assert!(
            log_b.contains("resuming runbook job"),
            "killed at {crash_step}: b resumed the job: {log_b}"
        );
        crate::runbooks::assert_failed_over_once(&lab, &v, &format!("killed at {crash_step}"));
        eprintln!(
            "ha figures: leader killed after {crash_step}: the replica finished the failover {:.1}s later",
            finished.as_secs_f64()
        );
        drop(b);
        drop(agents);
    }
}

/// The database is lost alone (its connections cut and refused, as when
/// PostgreSQL stops), then the witness alone: no VM stops and nothing
/// fails over. Without the database the leader cannot renew its lease and
/// steps down, and the waiting replica cannot take it, so nobody acts;
/// the host agents still reach each other, a majority of the quorum, and
/// keep their VMs. When the database is back, the replica leads and finds
/// the VM where it was; the witness lost leaves site 1 with itself and
/// site 2, a majority.
#[test]
fn ha_losing_postgresql_or_the_witness_alone_stops_no_vm() {
    use std::time::Duration;

    use crate::ha::alive;
    use crate::relay::Relay;
    use crate::watch::wait_until;

    const SELF_FENCE_AFTER: Duration = Duration::from_secs(3);
    let real = standby_testkit::postgres::database();
    // postgres://postgres@127.0.0.1:PORT/t_N, reached through a relay.
    let (head, rest) = real.rsplit_once(':').unwrap();
    let (pg_port, db) = rest.split_once('/').unwrap();
    let free = crate::harness::free_port;
    let (relay_port, p1, p2, pw, b_port) = (free(), free(), free(), free(), free());
    let to: std::net::SocketAddr = ([127, 0, 0, 1], pg_port.parse().unwrap()).into();
    let open_db = || Relay::start("", ([127, 0, 0, 1], relay_port).into(), to, Duration::ZERO);
    let mut database = Some(open_db());
    let mut lab = Lab::new(LabOptions {
        controller: format!("database = \"{head}:{relay_port}/{db}\"\n"),
        watch: format!(
            r#"
[sites.witness]

[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://127.0.0.1:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
url = "http://127.0.0.1:{p2}"
heartbeat = "300ms"

[agents.witness]
site = "witness"
url = "http://127.0.0.1:{pw}"
heartbeat = "300ms"

[ha]
self_fence_after = "{after}s"
quorum = ["site1-agent", "site2-agent", "witness"]
"#,
            after = SELF_FENCE_AFTER.as_secs()
        ),
        ..Default::default()
    });
    let cfg_b = lab.replica_config("replica-b", b_port, "controller-b", None);
    let both = format!("http://127.0.0.1:{},http://127.0.0.1:{b_port}", lab.api);
    let site1 = HostAgent {
        agent: Some(crate::agents::AgentProc::start(
            &lab.cfg,
            "site1-agent",
            &both,
            p1,
            &lab.path("site1-agent"),
        )),
        data: lab.path("site1-agent"),
    };
    let site2 = crate::agents::AgentProc::start(
        &lab.cfg,
        "site2-agent",
        &both,
        p2,
        &lab.path("site2-agent"),
    );
    let witness =
        crate::agents::AgentProc::start(&lab.cfg, "witness", &both, pw, &lab.path("witness"));
    let started = wait_until("the agent to run pbx1", Duration::from_secs(30), || {
        let out = lab.run(&["--json", "vm", "start", "pbx1"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    });
    let pid = started["pid"].as_u64().expect("a pid");
    let agent1 = site1.agent.as_ref().unwrap();
    agent1.logged("self-fencing armed");
    let mut b = replica(&lab, &cfg_b, "replica-b.log");
    wait_until("replica b to follow", Duration::from_secs(20), || {
        role(b_port).filter(|(r, l)| r == "replica" && !l.is_empty())
    });

    // The database is lost: the leader steps down; nobody leads.
    database.take().unwrap().close();
    let a_log = lab.path("server.log");
    let log_a = || std::fs::read_to_string(&a_log).unwrap_or_default();
    let exited = lab.wait_server_exit(Duration::from_secs(15));
    assert!(
        exited,
        "the leader kept leading without its database: {}",
        log_a()
    );
    let log_a = log_a();
    assert!(log_a.contains("stepping down"), "{log_a}");
    std::thread::sleep(SELF_FENCE_AFTER * 2);
    assert!(
        alive(pid),
        "pbx1 stopped without its database:\n{}",
        agent1.log_text()
    );
    assert!(
        !agent1.log_text().contains("self-fenced"),
        "{}",
        agent1.log_text()
    );
    assert!(!b.exited(), "the replica gave up waiting");
    assert_eq!(
        role(b_port),
        Some(("replica".to_string(), String::new())),
        "no leader while the database is lost"
    );

    // The database is back: the replica leads and finds pbx1 where it was.
    database = Some(open_db());
    let b_log = lab.path("replica-b.log");
    let log_b = || std::fs::read_to_string(&b_log).unwrap_or_default();
    let t = std::time::Instant::now();
    while !leads(b_port) {
        assert!(!b.exited(), "replica b exited: {}", log_b());
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "replica b does not lead: {}",
            log_b()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = lab.token();
    lab.set_env("STANDBY_TOKEN", Some(&token));
    lab.cfg = cfg_b.clone();
    lab.api = b_port;
    let unmoved = |lab: &Lab, when: &str| {
        let vm = lab.json(&["vm", "status", "pbx1"]);
        assert_eq!(
            (vm["active_site"].as_str(), vm["state"].as_str()),
            (Some("site1"), Some("running")),
            "{when}: {vm:#}"
        );
        let sites = lab.json(&["site", "list"]).to_string();
        assert!(!sites.contains("\"fenced\":true"), "{when}: {sites}");
        assert!(alive(pid), "{when}: pbx1 stopped");
    };
    wait_until("b to hear the agent", Duration::from_secs(10), || {
        let vm = lab.json(&["vm", "status", "pbx1"]);
        (vm["state"] == "running").then_some(())
    });
    unmoved(&lab, "after the database came back");

    // The witness is lost alone: site 1 still has itself and site 2.
    drop(witness);
    std::thread::sleep(SELF_FENCE_AFTER * 2);
    unmoved(&lab, "without the witness");
    assert!(
        !agent1.log_text().contains("self-fenced"),
        "{}",
        agent1.log_text()
    );
    drop(b);
    drop(site2);
    drop(site1);
    drop(database);
}

/// A second front door (`standby frontdoor`, here on 127.0.0.2) forwards
/// the service where the leader decided, follows each switch within a
/// poll or two, and keeps the last decision while no controller answers:
/// clients behind it keep the service through the controller's loss.
#[test]
fn ha_a_second_front_door_follows_the_leader_and_outlives_it() {
    use std::time::{Duration, Instant};

    use crate::fencing::sip_answers;
    use crate::watch::wait_until;

    let (front, dead) = (crate::harness::free_port(), crate::harness::free_port());
    let mut lab = Lab::new(LabOptions {
        watch: format!(
            r#"
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "127.0.0.1:{dead}" }}
"#
        ),
        ..Default::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let log_path = lab.path("frontdoor.log");
    let mut door = Replica(
        std::process::Command::new(crate::harness::STANDBY)
            .args(["--config", lab.cfg.to_str().unwrap()])
            .args(["--token", &lab.token()])
            .args([
                "frontdoor",
                "--listen-host",
                "127.0.0.2",
                "--interval",
                "200ms",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("the front door starts"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let second: std::net::SocketAddr = ([127, 0, 0, 2], front).into();
    wait_until(
        "the second front door to forward",
        Duration::from_secs(20),
        || {
            assert!(!door.exited(), "the front door exited: {}", log());
            sip_answers(second).then_some(())
        },
    );

    // The leader switches the service: the second door follows.
    let t0 = Instant::now();
    lab.json(&["service", "switch", "pbx", "site2"]);
    wait_until(
        "the door to follow to site 2",
        Duration::from_secs(10),
        || (!sip_answers(second)).then_some(()),
    );
    let followed = t0.elapsed();
    assert!(log().contains("as the leader decided"), "{}", log());
    lab.json(&["service", "switch", "pbx", "site1"]);
    wait_until(
        "the door to follow back to site 1",
        Duration::from_secs(10),
        || sip_answers(second).then_some(()),
    );

    // The controller is lost: the door keeps forwarding where it was told.
    lab.kill_server();
    wait_until("the door to notice", Duration::from_secs(10), || {
        log().contains("keeping the last decision").then_some(())
    });
    for _ in 0..5 {
        assert!(sip_answers(second), "the door stopped with the controller");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.start_server();
    wait_until("the door to follow again", Duration::from_secs(10), || {
        log()
            .contains("following the controller again")
            .then_some(())
    });
    assert!(sip_answers(second));
    eprintln!(
        "ha figures: a second front door followed a switch in {:.2}s (poll 200ms)",
        followed.as_secs_f64()
    );
}
