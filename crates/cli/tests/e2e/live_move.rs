//! Live moves ahead of a disaster (issue 18): `move-vm` with `live: true`
//! moves the running QEMU VM from site 1's agent to site 2's while a SIP
//! client asks it every 100 ms through the front door; back again with
//! the controller killed mid-move (the restarted one settles it, never
//! two copies); and where a live move is not possible, the job says why
//! and moves it cold.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::free_port;
use serde_json::Value;

use crate::agents::QemuSites;
use crate::qemu::{
    INSTALL, bindings, guest, processes_with, qemu_installed, register, sip_answers,
};
use crate::reload::SipLoad;

/// Start `move-vm` with `params`: the job's id.
fn start_move(lab: &QemuSites, params: &[&str]) -> String {
    let mut args = vec!["runbook", "run", "move-vm"];
    for p in params {
        args.extend(["--param", p]);
    }
    let job = lab.json(&args);
    job["job"].as_i64().expect("a job id").to_string()
}

/// Wait for the end of job `job`: its steps. A controller starting (not
/// leading yet) is waited for too.
fn wait_job(lab: &QemuSites, job: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = lab
            .try_json(&["runbook", "steps", job])
            .unwrap_or_else(Value::String);
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            return v;
        }
        assert!(Instant::now() < deadline, "move-vm did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run `move-vm` with `params` and wait for its end: the job's steps.
fn move_vm(lab: &QemuSites, params: &[&str]) -> Value {
    let job = start_move(lab, params);
    wait_job(lab, &job)
}

/// The job succeeded (else: its steps and both agents' logs).
fn assert_succeeded(lab: &QemuSites, job: &Value) {
    assert_eq!(
        job["job"]["status"],
        "succeeded",
        "{job:#}\nagent 1: {}\nagent 2: {}",
        lab.agents[0].log_text(),
        lab.agents[1].log_text()
    );
}

fn step(job: &Value, name: &str) -> Value {
    job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {job:#}"))
        .clone()
}

#[test]
fn hypervisor_live_move_keeps_sip_answering_survives_a_crash_and_falls_back_cold() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let (kernel, initrd) = guest();
    let (sip_port, http_port) = (free_port(), free_port());
    let lab = QemuSites::start(&kernel, &initrd, sip_port, http_port);
    let (s1, s2) = (lab.net.addr(2), lab.net.addr(6));
    let at = |addr: &str, port: u16| -> SocketAddr { format!("{addr}:{port}").parse().unwrap() };
    let (sip1, http1) = (at(&s1, sip_port), at(&s1, http_port));
    let (sip2, http2) = (at(&s2, sip_port), at(&s2, http_port));
    let door = at("127.0.0.1", lab.door);

    lab.json(&["vm", "start", "pbx1"]);
    assert!(
        sip_answers(sip1, Duration::from_secs(90)),
        "no SIP at {sip1}: {}",
        lab.console("agent1")
    );
    assert!(
        sip_answers(door, Duration::from_secs(30)),
        "no SIP at the front door"
    );
    let acked = register(sip1, 0..20);
    let run1 = lab.path("agent1/run");

    // The live move, with a client asking every 100 ms through the door.
    let load = SipLoad::start(door, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let job = move_vm(&lab, &["vm=pbx1", "site=site2", "service=sip", "live=true"]);
    let wall = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (answered, unanswered, gap) = load.finish();
    assert_succeeded(&lab, &job);
    let live = step(&job, "live");
    let out = &live["output"];
    assert_eq!(live["state"], "succeeded", "{live:#}");
    assert_eq!(
        (out["from_host"].as_str(), out["host"].as_str()),
        (Some("site1-host1"), Some("site2-host1")),
        "{out:#}"
    );
    assert_eq!(out["source_stopped"], true, "{out:#}");
    // Live: never shut down, no final point, no restore.
    for s in ["shutdown", "final", "restore"] {
        assert_eq!(step(&job, s)["state"], "skipped", "{job:#}");
    }
    assert_eq!(lab.json(&["vm", "status", "pbx1"])["active_site"], "site2");
    // It runs at site 2's agent with everything it acknowledged; nothing
    // of it runs at site 1.
    assert!(
        sip_answers(sip2, Duration::from_secs(5)),
        "no SIP at {sip2}"
    );
    assert_eq!(bindings(http2), acked);
    assert!(
        processes_with(&run1.to_string_lossy()).is_empty(),
        "a QEMU of agent 1 is left after the move"
    );
    assert!(
        !sip_answers(sip1, Duration::from_secs(1)),
        "site 1 still answers"
    );
    eprintln!(
        "live move: {:.1} s in the step ({wall:.1?} the whole job), disks {} bytes in sync after {:.2} s, \
         state {} bytes, paused {} ms; through the front door {answered} OPTIONS answered, {unanswered} \
         unanswered, longest gap {} ms",
        out["seconds"].as_f64().unwrap(),
        out["disk_bytes"],
        out["disk_sync_seconds"].as_f64().unwrap(),
        out["state_bytes"],
        out["downtime_ms"],
        gap.as_millis()
    );
    // The target is 2 s; a loaded machine gets some slack.
    assert!(gap < Duration::from_secs(5), "longest gap {gap:?}");

    // Back to site 1, live, and the controller dies once the copy is
    // complete (source paused, target waiting): neither copy serves while
    // it is down, and the restarted controller's re-run of the step undoes
    // the half-done move (target removed, source resumed) and moves again.
    let mut lab = lab;
    lab.restart_server(Some("migrate:copied"));
    let job = start_move(&lab, &["vm=pbx1", "site=site1", "service=sip", "live=true"]);
    assert!(
        lab.wait_server_exit(Duration::from_secs(120)),
        "the controller did not stop at migrate:copied"
    );
    assert!(
        !sip_answers(sip1, Duration::from_secs(1)),
        "the target answers before its switchover"
    );
    assert!(
        !sip_answers(sip2, Duration::from_secs(1)),
        "the paused source answers"
    );
    lab.restart_server(None);
    let t = Instant::now();
    let job = wait_job(&lab, &job);
    assert_succeeded(&lab, &job);
    let live = step(&job, "live");
    assert_eq!(live["output"]["host"], "site1-host1", "{live:#}");
    assert_eq!(live["output"]["source_stopped"], true, "{live:#}");
    assert_eq!(lab.json(&["vm", "status", "pbx1"])["active_site"], "site1");
    assert!(
        sip_answers(sip1, Duration::from_secs(5)),
        "no SIP at {sip1}"
    );
    assert_eq!(bindings(http1), acked);
    assert!(
        !sip_answers(sip2, Duration::from_secs(1)),
        "site 2 still answers"
    );
    assert!(
        processes_with(&lab.path("agent2/run").to_string_lossy()).is_empty(),
        "a QEMU of agent 2 is left after the move"
    );
    eprintln!(
        "live move resumed after a controller crash: done {:.1?} after the restart",
        t.elapsed()
    );

    // A stopped VM cannot move live: the job says why and moves it cold.
    lab.json(&["vm", "stop", "pbx1"]);
    let t = Instant::now();
    let job = move_vm(&lab, &["vm=pbx1", "site=site2", "service=sip", "live=true"]);
    assert_succeeded(&lab, &job);
    let live = step(&job, "live");
    assert_eq!(live["state"], "failed", "{live:#}");
    let why = live["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("not possible") && why.contains("only a running VM moves live"),
        "{why}"
    );
    let note = step(&job, "why");
    assert_eq!(note["state"], "succeeded", "{note:#}");
    assert!(
        note["input"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("moving it cold instead"),
        "{note:#}"
    );
    assert_eq!(
        step(&job, "restore")["output"]["host"],
        "site2-host1",
        "{job:#}"
    );
    assert!(
        sip_answers(sip2, Duration::from_secs(90)),
        "no SIP at {sip2} after the cold move"
    );
    assert_eq!(bindings(http2), acked);
    assert!(
        !sip_answers(sip1, Duration::from_secs(1)),
        "site 1 still answers"
    );
    eprintln!(
        "cold move after the live move was refused: {:.1?}",
        t.elapsed()
    );
}
