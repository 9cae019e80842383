//! `standby config reload` and SIGHUP: a changed `standby.toml` applied to
//! the running controller, with SIP clients going through the front door
//! all along and VMs left running; changes a reload cannot apply refused
//! whole, with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, LabOptions, free_port};
use crate::watch::wait_until;

const PBX2: &str = r#"
[vms.pbx2]
host = "site1-host1"
dr_site = "site2"
command = "sleep"
args = ["600"]
shutdown_timeout = "2s"
[[vms.pbx2.disks]]
name = "data"
size = "1MiB"
[groups.silver]
members = ["pbx2"]
schedule = "every 2s"
datastores = ["site1-store"]
[groups.silver.retention]
keep_last = 3
"#;

/// SIP OPTIONS to an address every `period` until stopped (at most
/// 20 000): how many went unanswered and the longest time between two
/// answers.
pub(crate) struct SipLoad {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize, Duration)>,
}

impl SipLoad {
    pub(crate) fn start(front: std::net::SocketAddr, period: Duration) -> SipLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut gap) = (0, 0, Duration::ZERO);
            let mut last = Instant::now();
            for _ in 0..20_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if crate::fencing::sip_answers(front) {
                    ok += 1;
                    gap = gap.max(last.elapsed());
                    last = Instant::now();
                } else {
                    failed += 1;
                }
                std::thread::sleep(period);
            }
            (ok, failed, gap)
        });
        SipLoad { stop, thread }
    }

    pub(crate) fn finish(self) -> (usize, usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn running_config(lab: &Lab) -> Value {
    let (s, text) = lab.get("/api/v1/config");
    assert_eq!(s, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn ecosystem_config_reload_applies_without_disturbing_vms_or_the_front_door() {
    let front = free_port();
    let lab = Lab::new(LabOptions {
        watch: format!(
            r#"
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "{{sip}}", site2 = "{{sip}}" }}
"#
        ),
        ..LabOptions::default()
    });
    let original = std::fs::read_to_string(&lab.cfg).unwrap();
    let started = lab.json(&["vm", "start", "pbx1"]);
    let pid = started["pid"].as_u64().expect("pbx1's pid");
    let front: std::net::SocketAddr = ([127, 0, 0, 1], front).into();
    wait_until(
        "SIP through the front door",
        Duration::from_secs(20),
        || crate::fencing::sip_answers(front).then_some(()),
    );
    let load = SipLoad::start(front, Duration::from_millis(50));

    // 1. A VM and a group added: applied at once; the new VM starts at
    // its host and the new group's schedule takes points of it.
    std::fs::write(&lab.cfg, format!("{original}{PBX2}")).unwrap();
    let t = Instant::now();
    let r = lab.json(&["config", "reload"]);
    let wall = t.elapsed();
    let changes: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(changes, ["group silver: added", "vm pbx2: added"], "{r}");
    let took = r["took_ms"].as_u64().unwrap();
    assert!(running_config(&lab)["vms"]["pbx2"].is_object());
    let v = lab.json(&["vm", "start", "pbx2"]);
    assert_eq!(v["state"], "running", "{v}");
    wait_until("a scheduled point of pbx2", Duration::from_secs(30), || {
        let p = lab.json(&["points", "list", "pbx2"]);
        p.as_array().is_some_and(|a| !a.is_empty()).then_some(())
    });
    let (s, text) = lab.get("/api/v1/events?kind=config.reloaded");
    assert_eq!(s, 200, "{text}");
    let events: Value = serde_json::from_str(&text).unwrap();
    assert!(
        events[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("vm pbx2: added")),
        "{events:#}"
    );

    // 2. A new host needs a restart: refused whole, nothing applied (the
    // group change beside it neither).
    let with_pbx2 = format!("{original}{PBX2}");
    std::fs::write(
        &lab.cfg,
        with_pbx2.replace("schedule = \"every 2s\"", "schedule = \"every 3s\"")
            + "\n[hosts.site2-host2]\nsite = \"site2\"\ndriver = \"process\"\ndisk_dir = \"site2/disks2\"\n",
    )
    .unwrap();
    let err = lab.fails(&["config", "reload"]);
    assert!(
        err.contains("host site2-host2: added: needs a controller restart"),
        "{err}"
    );
    let cfg = running_config(&lab);
    assert!(cfg["hosts"]["site2-host2"].is_null(), "{}", cfg["hosts"]);
    assert_eq!(cfg["groups"]["silver"]["schedule"], "every 2s");

    // 3. Dropping a VM that runs would strand it: refused.
    std::fs::write(&lab.cfg, &original).unwrap();
    let err = lab.fails(&["config", "reload"]);
    assert!(
        err.contains("vm pbx2: removed while it runs at host site1-host1"),
        "{err}"
    );

    // 4. A file that does not load: its line and field, nothing applied.
    std::fs::write(
        &lab.cfg,
        with_pbx2.replace("dr_site = \"site2\"", "dr_site = \"site9\""),
    )
    .unwrap();
    let (s, text) = lab.post("/api/v1/config/reload", serde_json::json!({}));
    assert_eq!(s, 400, "{text}");
    assert!(
        text.contains("standby.toml:") && text.contains("dr_site"),
        "{text}"
    );

    // 5. SIGHUP: pbx2 stopped, then dropped with its group.
    std::fs::write(&lab.cfg, &with_pbx2).unwrap();
    lab.json(&["vm", "stop", "pbx2"]);
    std::fs::write(&lab.cfg, &original).unwrap();
    let server = lab.server_pid().expect("the controller's pid");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until(
        "the reload SIGHUP asked for",
        Duration::from_secs(10),
        || running_config(&lab)["vms"]["pbx2"].is_null().then_some(()),
    );

    // All along: pbx1 kept running (same process) and the front door
    // answered every client.
    let (ok, failed, gap) = load.finish();
    let v = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(v["pid"].as_u64(), Some(pid), "{v}");
    assert_eq!(v["state"], "running", "{v}");
    eprintln!(
        "reload: applied in {took} ms ({} ms for `standby config reload`); through the front door {ok} OPTIONS answered, {failed} unanswered, longest gap {} ms",
        wall.as_millis(),
        gap.as_millis()
    );
    assert_eq!(failed, 0, "SIP clients went unanswered during the reloads");
    assert!(ok > 20, "too little SIP load: {ok}");
    // Every point of the new group the scheduler took succeeded.
    let jobs = lab.json(&["jobs", "list"]);
    let failed_jobs: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "failed")
        .collect();
    assert!(failed_jobs.is_empty(), "{failed_jobs:#?}");
}
