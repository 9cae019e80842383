//! The agent protocol with `[pki]`: mutual TLS with one certificate per
//! role (`standby pki`), each credential refused in another role, no
//! replayed call taken, heartbeat answers only from a controller, and no
//! command from the wire. Real `standby server` and `standby agent`
//! processes on loopback; the test holds certificates of its own to play
//! an intruder, a thief of one credential, and a forger of answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use standby_tls::{Identity, Material, Role};

use crate::agents::AgentProc;
use crate::harness::{Lab, LabOptions, free_port, pki_run};
use crate::qemu::rt;

/// A host agent and the VMs it started, all stopped when dropped.
struct HostAgent {
    proc: AgentProc,
    data: PathBuf,
}

impl HostAgent {
    fn start(cfg: &Path, name: &str, controller: &str, port: u16, data: &Path) -> HostAgent {
        HostAgent {
            proc: AgentProc::start(cfg, name, controller, port, data),
            data: data.to_path_buf(),
        }
    }
}

impl std::ops::Deref for HostAgent {
    type Target = AgentProc;
    fn deref(&self) -> &AgentProc {
        &self.proc
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        crate::harness::kill_agent_vms(&self.data);
    }
}

/// A client presenting `who`'s certificate from `dir`, expecting the
/// server to be `expect`.
fn client(dir: &Path, who: &Identity, expect: Identity) -> reqwest::Client {
    let m = Material::from_dir(dir, who).unwrap();
    standby_tls::reqwest_client(m, vec![expect], plain_builder()).unwrap()
}

fn plain_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
}

/// GET `url`: the status and JSON answer, or the connection's error.
fn get(c: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    rt().block_on(async {
        let r = c
            .get(url)
            .send()
            .await
            .map_err(|e| standby_types::error_chain(&e))?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    })
}

/// POST `body` to `url` with exactly these extra headers.
fn post(c: &reqwest::Client, url: &str, headers: &[(&str, String)], body: &Value) -> (u16, Value) {
    rt().block_on(async {
        let mut r = c.post(url).json(body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let r = r.send().await.expect("the server answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

/// The leader epoch the agent has seen, which the test's commands carry
/// as the controller's do (set by [`fresh`]).
static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The agent's session and the caller's next counter, as headers; the
/// epoch the agent has seen, for [`headers`].
fn fresh(c: &reqwest::Client, base: &str) -> (String, u64) {
    let (status, s) = get(c, &format!("{base}/agent/v1/session")).unwrap();
    assert_eq!(status, 200, "{s}");
    let (_, st) = get(c, &format!("{base}/agent/v1/state")).unwrap();
    EPOCH.store(
        st["epoch"].as_u64().unwrap_or(0),
        std::sync::atomic::Ordering::SeqCst,
    );
    (
        s["session"].as_str().unwrap().to_string(),
        s["next"].as_u64().unwrap(),
    )
}

fn headers(session: &str, seq: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-standby-session", session.to_string()),
        ("x-standby-seq", seq.to_string()),
        (
            "x-standby-epoch",
            EPOCH.load(std::sync::atomic::Ordering::SeqCst).to_string(),
        ),
    ]
}

fn vm_status(lab: &Lab) -> String {
    let v = lab.json(&["vm", "status", "pbx1"]);
    v["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn protocol_mutual_tls_refuses_strangers_other_roles_replays_forged_answers_and_commands() {
    // Another CA's controller: a stranger with a well-formed certificate.
    let rogue = tempfile::tempdir().unwrap();
    pki_run(rogue.path(), &["init"]);
    pki_run(rogue.path(), &["issue", "controller", "controller"]);

    // The lab's CA issues the controller's and both agents' certificates.
    let (agent_port, agent2_port) = (free_port(), free_port());
    let lab = Lab::new(LabOptions {
        pki: true,
        watch: format!(
            r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "https://127.0.0.1:{agent_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "https://127.0.0.1:{agent2_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]
"#
        ),
        ..LabOptions::default()
    });
    let d = &lab.path("pki");
    let ctl_url = lab.controller_for_agents("127.0.0.1");
    let agent = HostAgent::start(
        &lab.cfg,
        "site1-agent",
        &ctl_url,
        agent_port,
        &lab.path("site1-agent"),
    );
    let base = format!("https://127.0.0.1:{agent_port}");
    // Site 2's host, where pbx1 may run too: the controller starts pbx1
    // only once it has said it does not run it there.
    let site2 = HostAgent::start(
        &lab.cfg,
        "site2-agent",
        &ctl_url,
        agent2_port,
        &lab.path("site2-agent"),
    );

    // The controller runs the VM at the agent over mutual TLS.
    let mut started = false;
    for _ in 0..100 {
        if lab.run(&["vm", "start", "pbx1"]).status.success() {
            started = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started,
        "pbx1 starts through the agent: {}",
        agent.log_text()
    );
    assert_eq!(vm_status(&lab), "running");
    agent.logged("agent API on mutual TLS");

    // 1. No client certificate, or one from another CA: no handshake.
    let bare = plain_builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let e = get(&bare, &format!("{base}/agent/v1/state")).unwrap_err();
    assert!(!e.is_empty());
    agent.logged("TLS handshake refused");
    let stranger = client(
        rogue.path(),
        &Identity::controller("controller").unwrap(),
        Identity::agent("site1-agent").unwrap(),
    );
    // The stranger does not even trust the agent (another CA); it would
    // be refused either way.
    assert!(get(&stranger, &format!("{base}/agent/v1/state")).is_err());

    // 2. A stolen agent or peer certificate is not the controller's: the
    // agent API refuses it (403), says why, and logs it.
    for role in [Role::Agent, Role::Peer] {
        let thief = client(
            d,
            &Identity::new(role, "site2-agent").unwrap(),
            Identity::agent("site1-agent").unwrap(),
        );
        let (status, v) = post(
            &thief,
            &format!("{base}/agent/v1/stop"),
            &[],
            &json!({"vm": "pbx1"}),
        );
        assert_eq!(status, 403, "{role:?}: {v}");
        let text = v.to_string();
        assert!(text.contains("controller"), "{role:?}: {text}");
    }
    agent.logged("call refused");
    assert_eq!(vm_status(&lab), "running", "refused calls change nothing");

    // 3. The controller's own credential: each call counts once.
    let ctl = client(
        d,
        &Identity::controller("controller").unwrap(),
        Identity::agent("site1-agent").unwrap(),
    );
    let (session, n) = fresh(&ctl, &base);
    let stop = json!({"vm": "pbx1"});
    let (status, v) = post(
        &ctl,
        &format!("{base}/agent/v1/stop"),
        &headers(&session, n),
        &stop,
    );
    assert_eq!(status, 200, "{v}");
    // Stopped behind the controller's back: its view shows it once the
    // VM-state probe has asked (a view may be a few seconds old).
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm_status(&lab) == "running" {
        assert!(Instant::now() < deadline, "the stop never showed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lab.run(&["vm", "start", "pbx1"]).status.success());
    assert_eq!(vm_status(&lab), "running");
    // The recorded stop, sent again: refused, pbx1 keeps running.
    let (status, v) = post(
        &ctl,
        &format!("{base}/agent/v1/stop"),
        &headers(&session, n),
        &stop,
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "replayed", "{v}");
    agent.logged(&format!("counter {n} was used already"));
    assert_eq!(vm_status(&lab), "running");
    // A call without the session and counter is not taken either.
    let (status, v) = post(&ctl, &format!("{base}/agent/v1/stop"), &[], &stop);
    assert_eq!(status, 409, "{v}");
    assert_eq!(vm_status(&lab), "running");

    // A recorded start, replayed after the VM was stopped: refused, the
    // VM stays stopped.
    let (session, n) = fresh(&ctl, &base);
    let rec = json!({"spec": {
        "name": "rec", "command": "standby-vnf", "workdir": "/tmp",
        "args": [
            "--name", "rec", "--disk", lab.path("rec.img"),
            "--sip", format!("127.0.0.1:{}", free_port()),
            "--http", format!("127.0.0.1:{}", free_port()),
        ],
    }});
    let call = |op: &str, seq: u64, body: &Value| {
        post(
            &ctl,
            &format!("{base}/agent/v1/{op}"),
            &headers(&session, seq),
            body,
        )
    };
    let (status, v) = call("start", n, &rec);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let (status, v) = call("stop", n + 1, &json!({"vm": "rec"}));
    assert_eq!(status, 200, "{v}");
    let (status, v) = call("start", n, &rec);
    assert_eq!(status, 409, "a replayed start: {v}");
    assert_eq!(v["code"], "replayed", "{v}");
    let (status, v) = call("status", n + 2, &json!({"vm": "rec"}));
    assert_eq!(status, 200, "{v}");
    assert_ne!(
        v["state"], "running",
        "a replayed start ran the VM again: {v}"
    );

    // A recorded fence, replayed after the site was unfenced: refused.
    let (session, n) = fresh(&ctl, &base);
    let fence = json!({"reason": "test"});
    let (status, v) = post(
        &ctl,
        &format!("{base}/agent/v1/fence"),
        &headers(&session, n),
        &fence,
    );
    assert_eq!(status, 200, "{v}");
    // The controller says the site is not fenced: the next heartbeat
    // answer unfences the agent; then pbx1 starts again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.run(&["vm", "start", "pbx1"]).status.success() {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(vm_status(&lab), "running");
    let (status, v) = post(
        &ctl,
        &format!("{base}/agent/v1/fence"),
        &headers(&session, n),
        &fence,
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "replayed", "{v}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm_status(&lab), "running", "a replayed fence stops nothing");

    // 4. No command from the wire: with the controller's own credential,
    // a program the agent's configuration does not allow is refused.
    let (session, n) = fresh(&ctl, &base);
    let canary = lab.path("pwned");
    let (status, v) = post(
        &ctl,
        &format!("{base}/agent/v1/start"),
        &headers(&session, n),
        &json!({"spec": {
            "name": "evil", "command": "/bin/sh",
            "args": ["-c", format!("touch {}", canary.display())],
            "workdir": "/tmp",
        }}),
    );
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "forbidden", "{v}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!canary.exists(), "the refused command ran");

    // 5. Heartbeats: only from the agent the route names, by its agent
    // certificate; a replayed heartbeat is refused. Site 1's own agent is
    // stopped first: its beats share the session's counter with the ones
    // sent here, and one of its own could take the counter this test
    // sends next.
    drop(agent);
    let hb = |who: Identity| client(d, &who, Identity::controller("controller").unwrap());
    let url = format!("{ctl_url}/api/v1/agents/site1-agent/heartbeat");
    for (who, why) in [
        (Identity::peer("site1-agent").unwrap(), "a peer certificate"),
        (Identity::agent("site2-agent").unwrap(), "another agent"),
    ] {
        let (status, v) = post(&hb(who), &url, &[], &json!({}));
        assert_eq!(status, 403, "{why}: {v}");
    }
    let me = hb(Identity::agent("site1-agent").unwrap());
    let (status, hello) = post(&me, &url, &[], &json!({}));
    assert_eq!(status, 200, "{hello}");
    let s = hello["session"]["session"].as_str().unwrap().to_string();
    let next = hello["session"]["next"].as_u64().unwrap();
    let beat = json!({"session": s, "seq": next});
    let (status, v) = post(&me, &url, &[], &beat);
    assert_eq!(status, 200, "{v}");
    assert!(v["session"].is_null(), "counted: {v}");
    let (status, v) = post(&me, &url, &[], &beat);
    assert_eq!(status, 409, "a replayed heartbeat: {v}");
    assert_eq!(v["code"], "replayed", "{v}");

    // 6. A forged heartbeat answer: site 2's agent reports to a server
    // that answers "fenced" with a certificate that is not a
    // controller's (site 1's agent certificate, from the right CA). The
    // agent does not take the answer: it stays unfenced.
    drop(site2);
    let forger_port = free_port();
    let forger = rt_forger(d, forger_port);
    let agent2 = HostAgent::start(
        &lab.cfg,
        "site2-agent",
        &format!("https://127.0.0.1:{forger_port}"),
        agent2_port,
        &lab.path("site2-agent"),
    );
    let log = agent2.logged("controller unreachable");
    assert!(log.contains("server certificate"), "{log}");
    let ctl2 = client(
        d,
        &Identity::controller("controller").unwrap(),
        Identity::agent("site2-agent").unwrap(),
    );
    let (status, st) = get(
        &ctl2,
        &format!("https://127.0.0.1:{agent2_port}/agent/v1/state"),
    )
    .unwrap();
    assert_eq!(status, 200, "{st}");
    assert_eq!(
        st["fenced"], false,
        "a forged answer fenced the agent: {st}"
    );
    assert_eq!(
        forger.answered(),
        0,
        "the agent sent a heartbeat to the forger"
    );
    drop(agent2);
}

/// A TLS server answering every heartbeat with `fenced: true`, presenting
/// site 1's agent certificate (right CA, wrong role).
struct Forger {
    answered: Arc<std::sync::atomic::AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Forger {
    fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn rt_forger(dir: &Path, port: u16) -> Forger {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = Material::from_dir(dir, &Identity::agent("site1-agent").unwrap()).unwrap();
    let cfg = standby_tls::server_config(m).unwrap();
    let n = answered.clone();
    rt.spawn(async move {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let l = standby_tls::TlsListener::new(tcp, cfg, Default::default()).unwrap();
        let app = axum::Router::new().fallback(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { axum::Json(json!({"probes": [], "heartbeat": 300, "fenced": true})) }
        });
        let _ = axum::serve(l, app).await;
    });
    Forger { answered, _rt: rt }
}

/// Every certificate is reissued, then the CA itself is rotated (a second
/// CA trusted beside the first, every certificate reissued from it, the
/// first retired), while a SIP client calls through the front door and
/// the controller keeps calling the agent: neither sees an error, both
/// ends load the new certificates without a restart, and after the
/// retirement a certificate of the old CA is refused.
#[test]
fn protocol_certificates_and_the_ca_rotate_under_load_without_an_error() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let (agent_port, front) = (free_port(), free_port());
    let lab = Lab::new(LabOptions {
        pki: true,
        watch: format!(
            r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "https://127.0.0.1:{agent_port}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
"#
        ),
        ..LabOptions::default()
    });
    let d = lab.path("pki");
    // The controller's first certificate, kept to try after the retirement.
    let old = tempfile::tempdir().unwrap();
    for f in [
        "ca.pem",
        "controller-controller.pem",
        "controller-controller.key",
    ] {
        std::fs::copy(d.join(f), old.path().join(f)).unwrap();
    }
    let agent = HostAgent::start(
        &lab.cfg,
        "site1-agent",
        &lab.controller_for_agents("127.0.0.1"),
        agent_port,
        &lab.path("site1-agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.run(&["vm", "start", "pbx1"]).status.success() {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let front: std::net::SocketAddr = ([127, 0, 0, 1], front).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !crate::fencing::sip_answers(front) {
        assert!(Instant::now() < deadline, "SIP through the front door");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Load: SIP OPTIONS through the front door, and the controller's calls
    // to the agent (vm status), each in a bounded loop until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sip_ok, sip_err) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sip = {
        let (stop, ok, err) = (stop.clone(), sip_ok.clone(), sip_err.clone());
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if crate::fencing::sip_answers(front) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    err.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut calls = 0;
    let mut call_errors = Vec::new();
    let mut control = |lab: &Lab| {
        for _ in 0..5 {
            let out = lab.run(&["--json", "vm", "status", "pbx1"]);
            calls += 1;
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if !out.status.success() || v["state"] != "running" {
                call_errors.push(format!("{v} {}", String::from_utf8_lossy(&out.stderr)));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    control(&lab);

    // 1. Reissue every certificate from the same CA.
    pki_run(&d, &["issue", "agent", "site1-agent"]);
    pki_run(&d, &["issue", "controller", "controller"]);
    control(&lab);
    // 2. A second CA beside the first; every certificate from it; the
    // first retired.
    pki_run(&d, &["init", "--rotate"]);
    control(&lab);
    pki_run(&d, &["issue", "agent", "site1-agent"]);
    pki_run(&d, &["issue", "controller", "controller"]);
    control(&lab);
    pki_run(&d, &["retire"]);
    control(&lab);

    stop.store(true, Ordering::Relaxed);
    sip.join().unwrap();
    let (ok, err) = (
        sip_ok.load(Ordering::Relaxed),
        sip_err.load(Ordering::Relaxed),
    );
    eprintln!(
        "rotation under load: {ok} SIP OPTIONS answered, {err} failed; {calls} controller calls to the agent, {} failed",
        call_errors.len()
    );
    assert_eq!(err, 0, "SIP calls failed during the rotation");
    assert!(ok > 50, "too little SIP load: {ok}");
    assert!(
        call_errors.is_empty(),
        "controller calls failed: {call_errors:?}"
    );

    // Both ends took the new certificates without a restart: three
    // certificates each (first, reissued, from the new CA).
    let agent_log = agent.log_text();
    assert!(
        agent_log.matches("TLS material reloaded").count() >= 2,
        "the agent did not reload: {agent_log}"
    );
    let server_log = std::fs::read_to_string(lab.path("server.log")).unwrap();
    assert!(
        server_log.matches("TLS material reloaded").count() >= 2,
        "the controller did not reload: {server_log}"
    );
    // The old CA is retired: the controller's first certificate (trusting
    // the new bundle, so only the agent can refuse) gets no handshake.
    std::fs::copy(d.join("ca.pem"), old.path().join("ca.pem")).unwrap();
    let retired = client(
        old.path(),
        &Identity::controller("controller").unwrap(),
        Identity::agent("site1-agent").unwrap(),
    );
    let e = get(
        &retired,
        &format!("https://127.0.0.1:{agent_port}/agent/v1/state"),
    );
    assert!(
        e.is_err(),
        "a certificate of the retired CA was taken: {e:?}"
    );
    agent.logged("TLS handshake refused");
}
