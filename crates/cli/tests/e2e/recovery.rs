//! Recovery you can trust: a failover brings the service back from the
//! newest point that restores, and says what it skipped; drills work on
//! the configuration `standby init` writes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, STANDBY, files_under, free_port};

fn points(lab: &Lab) -> Vec<Value> {
    lab.json(&["points", "list", "pbx1"])
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn users(r: std::ops::Range<u32>) -> Vec<String> {
    let mut v: Vec<String> = r.map(|n| format!("sip:user{n}@e2e.invalid")).collect();
    v.sort();
    v
}

/// Run runbook `name` with one parameter (`KEY=VALUE`) to its end, which
/// must be success; its steps.
pub(crate) fn run_job(lab: &Lab, name: &str, param: &str) -> Value {
    let v = lab.json(&["runbook", "run", name, "-p", param, "--wait"]);
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    lab.json(&["runbook", "steps", &v["job"]["id"].to_string()])
}

/// Flip a byte in the middle of each of `packs`.
pub(crate) fn damage(packs: &[PathBuf]) {
    for pack in packs {
        let mut bytes = std::fs::read(pack).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(pack, &bytes).unwrap();
    }
}

/// The user's story of the issue: points of a running VNF, the newest
/// one's pack damaged at the DR site, site 1 and its datastore lost. The
/// failover restores the next older point, which is intact, and the job,
/// the incident's timeline and its resolving note say which point was
/// skipped, where and why. With a `max_data_age` no point meets, the job
/// stops and says so, and nothing starts.
#[test]
fn recovery_failover_restores_the_newest_intact_point_and_names_what_it_skipped() {
    let lab = Lab::new(LabOptions::default());
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let site2_packs = || -> BTreeSet<PathBuf> {
        files_under(&lab.path("site2/store"), "pack")
            .into_iter()
            .collect()
    };
    let mut newest_packs = Vec::new();
    for batch in 0..3u32 {
        let before = site2_packs();
        lab.register(batch * 3..batch * 3 + 3);
        lab.json(&["protect", "run", "gold"]);
        newest_packs = site2_packs().difference(&before).cloned().collect();
    }
    let ps = points(&lab);
    assert_eq!(ps.len(), 3, "{ps:#?}");
    let newest = ps[2]["id"].as_str().unwrap().to_string();
    let intact = ps[1]["id"].as_str().unwrap().to_string();
    assert!(
        !newest_packs.is_empty(),
        "the newest point wrote no pack at site 2"
    );
    // The newest point's own chunks damaged at the DR site; site 1's
    // datastore gone with the site.
    damage(&newest_packs);
    std::fs::remove_dir_all(lab.path("site1/store")).unwrap();

    // No point is young enough: the job stops, says so, starts nothing.
    let out = lab.run(&[
        "--json",
        "runbook",
        "run",
        "failover-site",
        "-p",
        "site=site1",
        "-p",
        "max_data_age=1ms",
        "--wait",
    ]);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("max_data_age"), "{err}");
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1", "{vm:#}");

    // Without a limit: the newest intact point.
    let v = lab.json(&[
        "runbook",
        "run",
        "failover-site",
        "-p",
        "site=site1",
        "--wait",
    ]);
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    let job = v["job"]["id"].as_i64().unwrap();
    let steps = lab.json(&["runbook", "steps", &job.to_string()]);
    let restore = step_output(&steps, "restore", 0);
    assert_eq!(restore["point"], intact.as_str(), "{restore:#}");
    assert_eq!(restore["site"], "site2", "{restore:#}");
    assert_eq!(restore["datastore"], "site2-store", "{restore:#}");
    let skipped = restore["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{restore:#}");
    assert_eq!(skipped[0]["point"], newest.as_str());
    let reasons = skipped[0]["reasons"].to_string();
    assert!(
        reasons.contains("site2-store") && reasons.contains("chunk"),
        "the reason names the damaged copy and the chunk: {reasons}"
    );
    assert!(
        reasons.contains("site1-store"),
        "the reason names the lost copy too: {reasons}"
    );
    assert!(restore["data_age_seconds"].as_f64().unwrap() > 0.0);
    eprintln!(
        "fallback: restore with 1 skipped point {:.3} s (16 MiB disk, process driver)",
        restore["seconds"].as_f64().unwrap()
    );

    // The service is back with everything the intact point holds.
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..6));

    // The incident says it, on its timeline and in its resolving note.
    let incident = step_output(&steps, "incident", -1)["incident"]
        .as_i64()
        .unwrap_or_else(|| panic!("the job opened no incident: {steps:#}"));
    let inc = lab.json(&["incidents", "show", &incident.to_string()]);
    let timeline = inc["timeline"].to_string();
    assert!(
        timeline.contains(&format!("skipped point {newest}")),
        "{inc:#}"
    );
    assert!(
        timeline.contains(&format!("restored the older point {intact}")),
        "{inc:#}"
    );
    // The resolving note (the last entry of the timeline).
    let note = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| {
            e["text"]
                .as_str()
                .is_some_and(|n| n.contains("failed over"))
        })
        .unwrap_or_else(|| panic!("no resolving note: {inc:#}"))["text"]
        .to_string();
    assert!(
        note.contains(&newest) && note.contains("did not restore"),
        "{note}"
    );
}

/// The configuration `standby init` writes (its ports moved to free ones)
/// runs a drill that passes: the VM has no front-door service, so the
/// drill probes the copy with the VM's own SIP probe.
#[test]
fn recovery_a_drill_passes_on_the_init_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(STANDBY)
        .arg("init")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.path().join("standby.toml")).unwrap();
    let (api, sip, http) = (free_port(), free_port(), free_port());
    for needle in ["127.0.0.1:7780", "127.0.0.1:15060", "127.0.0.1:18080"] {
        assert!(text.contains(needle), "init no longer writes {needle}");
    }
    let text = text
        .replace("127.0.0.1:7780", &format!("127.0.0.1:{api}"))
        .replace("127.0.0.1:15060", &format!("127.0.0.1:{sip}"))
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{http}"))
        .replace("data_dir = \"standby-data\"", "data_dir = \"controller\"");
    let lab = Lab::from_text(&text, api, sip, http);
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["protect", "run", "gold"]);
    let v = lab.json(&["runbook", "run", "drill", "-p", "vm=pbx1", "--wait"]);
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    let steps = lab.json(&["runbook", "steps", &v["job"]["id"].to_string()]);
    let report = step_output(&steps, "report", -1);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["vms"][0]["vm"], "pbx1", "{report:#}");
    assert!(
        report["vms"][0]["rto_seconds"].as_f64().is_some(),
        "{report:#}"
    );
    // Production is untouched.
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1");
    assert_eq!(vm["state"], "running", "{vm:#}");
}

/// Three sites with hosts, pbx1 at site 1 with DR sites site 2 then
/// site 3, points copied to all three sites' datastores.
fn three_sites() -> Lab {
    let (api, sip, http) = (free_port(), free_port(), free_port());
    let mut text = format!(
        r#"[controller]
listen = "127.0.0.1:{api}"
data_dir = "controller"
[vms.pbx1]
host = "site1-host1"
dr_sites = ["site2", "site3"]
shutdown_timeout = "5s"
command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}", "--http", "127.0.0.1:{http}"]
[[vms.pbx1.disks]]
name = "data"
size = "16MiB"
[groups.gold]
members = ["pbx1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store", "site3-store"]
[groups.gold.retention]
keep_last = 10
"#
    );
    for n in 1..=3 {
        text.push_str(&format!(
            "[sites.site{n}]\n[hosts.site{n}-host1]\nsite = \"site{n}\"\ndriver = \"process\"\ndisk_dir = \"site{n}/disks\"\n[datastores.site{n}-store]\nsite = \"site{n}\"\npath = \"site{n}/store\"\n"
        ));
    }
    Lab::from_text(&text, api, sip, http)
}

/// The site a `failover-site` run restored pbx1 at.
fn fail_over(lab: &Lab, site: &str) -> String {
    let v = lab.json(&[
        "runbook",
        "run",
        "failover-site",
        "-p",
        &format!("site={site}"),
        "--wait",
    ]);
    assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
    let steps = lab.json(&["runbook", "steps", &v["job"]["id"].to_string()]);
    let restore = step_output(&steps, "restore", 0);
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], restore["site"], "{vm:#}");
    restore["site"].as_str().unwrap().to_string()
}

/// Failing over again: after site 1 failed over to site 2, the loss of
/// site 2 moves pbx1 to the next site of its list (site 3, not the fenced
/// site 2 or site 1); with site 1 repaired and unfenced, the loss of
/// site 3 brings it home. Each time with its registrations.
#[test]
fn recovery_a_vm_fails_over_again_down_its_list_of_dr_sites_then_home() {
    let lab = three_sites();
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["protect", "run", "gold"]);
    assert_eq!(fail_over(&lab, "site1"), "site2");
    lab.wait_sip();
    lab.register(3..6);
    lab.json(&["protect", "run", "gold"]);
    assert_eq!(fail_over(&lab, "site2"), "site3");
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..6));
    lab.register(6..9);
    lab.json(&["protect", "run", "gold"]);
    lab.json(&["site", "unfence", "site1"]);
    assert_eq!(fail_over(&lab, "site3"), "site1");
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..9));
}

/// (status, body) of `method path` with `token`.
fn call(lab: &Lab, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", lab.api),
            )
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

/// Tenants stay in their lane: every runbook parameter that names a VM,
/// service, group or site is checked before the job starts (acme cannot
/// point its move at globex's service), and incident keys are per
/// tenant (acme cannot reach globex's or the operators' incident by its
/// key).
#[test]
fn recovery_a_tenant_names_only_its_own_objects() {
    let front = free_port();
    let gsip = free_port();
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]\ntenant = \"acme\"".into()),
        extra: crate::auth::TENANTS_AND_ANOTHER_VM,
        // (Appended after `extra`.)
        watch: format!(
            "[services.gsvc]\nvm = \"other\"\nlisten = \"127.0.0.1:{front}\"\nprotocols = [\"udp\"]\nbackends = {{ site1 = \"127.0.0.1:{gsip}\", site2 = \"127.0.0.1:{gsip}\" }}\n"
        ),
        ..LabOptions::default()
    });
    let acme = lab.json(&[
        "token", "create", "--name", "acme-op", "--role", "operator", "--tenant", "acme",
    ])["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = lab.token();
    let run = |params: Value| {
        call(
            &lab,
            "POST",
            "/api/v1/runbooks/move-vm/run",
            &acme,
            json!({ "params": params, "dry_run": true }),
        )
    };
    // Its own VM to an existing site: planned.
    let (s, body) = run(json!({ "vm": "pbx1", "site": "site2" }));
    assert_eq!(s, 200, "{body}");
    // Another tenant's service, group or VM, or a site that does not
    // exist: not found, and no job.
    for (params, names) in [
        (
            json!({ "vm": "pbx1", "site": "site2", "service": "gsvc" }),
            "gsvc",
        ),
        (
            json!({ "vm": "pbx1", "site": "site2", "group": "silver" }),
            "silver",
        ),
        (json!({ "vm": "other", "site": "site2" }), "other"),
        (json!({ "vm": "pbx1", "site": "site9" }), "site9"),
    ] {
        let (s, body) = run(params.clone());
        assert_eq!(s, 404, "{params}: {body}");
        assert!(body.to_string().contains(names), "{params}: {body}");
    }
    let jobs = lab.json(&["jobs", "list"]);
    assert!(
        !jobs.to_string().contains("move-vm"),
        "a refused run started a job: {jobs:#}"
    );

    // Incident keys: globex's and the operators' incidents are not found
    // by acme's key.
    let open = |token: &str, labels: Value, key: &str| {
        let (s, v) = call(
            &lab,
            "POST",
            "/api/v1/incidents",
            token,
            json!({ "title": format!("about {labels}"), "key": key, "labels": labels }),
        );
        assert_eq!(s, 200, "{v}");
        v["id"].as_i64().unwrap()
    };
    let globex = open(&admin, json!({ "vm": "other" }), "outage");
    let ops = open(&admin, json!({}), "maintenance");
    let mine = open(&acme, json!({ "vm": "pbx1" }), "outage");
    assert_ne!(mine, globex, "acme reached globex's incident by its key");
    let mine2 = open(&acme, json!({ "vm": "pbx1" }), "maintenance");
    assert_ne!(
        mine2, ops,
        "acme reached the operators' incident by its key"
    );
    // Deduplication within a tenant still works.
    assert_eq!(open(&acme, json!({ "vm": "pbx1" }), "outage"), mine);
    assert_eq!(open(&admin, json!({ "vm": "other" }), "outage"), globex);
}

/// Points that do not depend on clocks: with site 1's agent a minute
/// ahead (libfaketime), a scheduled point is stamped in the controller's
/// future. `move-vm`'s final point is still the one its own step asked
/// for, taken after the VM stopped: every registration moves with it.
#[test]
fn recovery_a_move_keeps_every_write_when_the_agents_clock_is_ahead() {
    let port = free_port();
    let lab = Lab::new(LabOptions {
        watch: format!(
            "[agents.site1-agent]\nsite = \"site1\"\nhost = \"site1-host1\"\nurl = \"http://127.0.0.1:{port}\"\nheartbeat = \"300ms\"\nallowed_commands = [\"standby-vnf\"]\n"
        ),
        ..LabOptions::default()
    });
    let data = lab.path("agent1");
    let log = std::fs::File::create(lab.path("agent1.log")).unwrap();
    // libfaketime preloaded into the agent itself (not the `faketime`
    // wrapper, whose child would outlive a kill of the wrapper).
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "{lib} is missing: apt-get install faketime"
    );
    let mut agent = std::process::Command::new(STANDBY)
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", "+60s")
        .args(["--config", lab.cfg.to_str().unwrap(), "agent"])
        .args(["--name", "site1-agent"])
        .args(["--controller", &format!("http://127.0.0.1:{}", lab.api)])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", data.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || std::fs::read_to_string(lab.path("agent1.log")).unwrap_or_default();
            if let Some(st) = agent.try_wait().unwrap() {
                panic!("the agent exited ({st}): {}", log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not listen: {}",
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        lab.json(&["vm", "start", "pbx1"]);
        lab.wait_sip();
        lab.register(0..3);
        lab.json(&["protect", "run", "gold"]);
        let early = points(&lab)[0].clone();
        let stamped = chrono::DateTime::parse_from_rfc3339(early["time"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(
            stamped > chrono::Utc::now() + chrono::Duration::seconds(30),
            "the agent's clock is not ahead: {early:#}"
        );
        // Written after that point, before the move.
        lab.register(3..6);
        let v = lab.json(&[
            "runbook",
            "run",
            "move-vm",
            "-p",
            "vm=pbx1",
            "-p",
            "site=site2",
            "--wait",
        ]);
        assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
        let steps = lab.json(&["runbook", "steps", &v["job"]["id"].to_string()]);
        let out = |id: &str| step_output(&steps, id, -1);
        let final_point = out("final")["points"][0].clone();
        assert_ne!(final_point["reused"], true, "{final_point:#}");
        assert_ne!(final_point["point"], early["id"], "{final_point:#}");
        assert_eq!(out("restore")["point"], final_point["point"]);
        lab.wait_sip();
        assert_eq!(
            lab.bindings(),
            users(0..6),
            "writes after the early point were lost"
        );
    }));
    let _ = lab.run(&["vm", "stop", "pbx1"]);
    let _ = agent.kill();
    let _ = agent.wait();
    crate::harness::kill_agent_vms(&data);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The SIP probe of pbx1 (`{sip}` is its address).
const SIP_PROBE: &str = r#"
[probes.pbx1-sip]
kind = "sip"
target = "{sip}"
interval = "500ms"
timeout = "400ms"
labels = { vm = "pbx1", site = "site1", scope = "service" }
"#;

/// The first `heal-vm` job after job `after` once it has ended, with its
/// steps.
fn heal_job(lab: &Lab, after: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id = loop {
        let jobs = lab.json(&["jobs", "list"]);
        if let Some(id) = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "runbook" && j["target"] == "heal-vm")
            .filter_map(|j| j["id"].as_i64())
            .filter(|id| *id > after)
            .min()
        {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heal-vm job after job {after}: {jobs:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let v = lab.json(&["runbook", "steps", &id.to_string()]);
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "heal-vm did not end: {v:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The output of step `id` (item `item`, -1 without `for_each`) of a
/// runbook job's steps.
pub(crate) fn step_output(steps: &Value, id: &str, item: i64) -> Value {
    steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == id && s["item"] == item)
        .unwrap_or_else(|| panic!("no step {id}[{item}]: {steps:#}"))["output"]
        .clone()
}

/// Healing one VNF in place: a killed VNF (the hypervisor reports it
/// crashed) is restarted where it ran by the shipped `heal-vm` runbook,
/// answers SIP again with its registrations, and the incident says so.
#[test]
fn recovery_a_killed_vnf_is_restarted_in_place() {
    let lab = Lab::new(LabOptions {
        watch: SIP_PROBE.into(),
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    let pid = lab.json(&["vm", "status", "pbx1"])["pid"].as_u64().unwrap();
    let killed = std::time::Instant::now();
    crate::watch::nix_kill(pid);
    let steps = heal_job(&lab, 0);
    assert_eq!(steps["job"]["status"], "succeeded", "{steps:#}");
    let r = step_output(&steps, "restart", -1);
    assert_eq!(r["healed"], true, "{r:#}");
    assert_eq!(r["host"], "site1-host1", "{r:#}");
    assert!(r["attempts"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(r["checked"], "probe pbx1-sip", "{r:#}");
    assert!(step_output(&steps, "restore", -1).is_null(), "{steps:#}");
    lab.wait_sip();
    eprintln!(
        "heal in place: killed VNF answering again {:.2} s after the kill (restart step {:.2} s)",
        killed.elapsed().as_secs_f64(),
        r["seconds"].as_f64().unwrap()
    );
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site1", "{vm:#}");
    assert_ne!(vm["pid"].as_u64(), Some(pid), "{vm:#}");
    assert_eq!(lab.bindings(), users(0..3));
    // Stopped on request, it stops answering too (vnf-down), but it did
    // not crash: heal-vm leaves it stopped.
    // Once the kill's alerts have cleared, and after every job so far.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lab
        .json(&["alerts", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|a| {
            a["labels"]["vm"] == "pbx1"
                && matches!(a["rule"].as_str(), Some("vnf-down" | "vm-crashed"))
        })
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the kill's alerts did not clear"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let last = lab
        .json(&["jobs", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .max()
        .unwrap();
    lab.json(&["vm", "stop", "pbx1"]);
    let steps = heal_job(&lab, last);
    let r = step_output(&steps, "restart", -1);
    assert_eq!(r["healed"], false, "{r:#}");
    assert!(
        r["left_alone"]
            .as_str()
            .is_some_and(|w| w.contains("stopped on request")),
        "{r:#}"
    );
    assert_eq!(r["attempts"], 0, "{r:#}");
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "stopped", "{vm:#}");
}

/// Healing one VNF at its DR site: its host lost its disk, so it does not
/// start again there; `heal-vm` restores its newest intact point at its
/// DR site and starts it, with the point's registrations.
#[test]
fn recovery_a_vnf_whose_host_lost_its_disk_comes_back_at_its_dr_site() {
    let lab = Lab::new(LabOptions {
        watch: SIP_PROBE.into(),
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["protect", "run", "gold"]);
    let pid = lab.json(&["vm", "status", "pbx1"])["pid"].as_u64().unwrap();
    std::fs::remove_file(lab.path("site1/disks/pbx1/data.img")).unwrap();
    crate::watch::nix_kill(pid);
    let steps = heal_job(&lab, 0);
    assert_eq!(steps["job"]["status"], "succeeded", "{steps:#}");
    let r = step_output(&steps, "restart", -1);
    assert_eq!(r["healed"], false, "{r:#}");
    assert_eq!(r["host_answers"], true, "{r:#}");
    assert!(r["failures"].to_string().contains("missing"), "{r:#}");
    let restored = step_output(&steps, "restore", -1);
    assert_eq!(restored["site"], "site2", "{restored:#}");
    lab.wait_sip();
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2", "{vm:#}");
    assert_eq!(vm["state"], "running", "{vm:#}");
    assert_eq!(lab.bindings(), users(0..3));
}

/// A lab whose site 2 datastore verifies all its chunks every `every`,
/// with a point of the VNF (3 registrations) whose largest pack at site 2
/// has a flipped byte; the point's id.
fn damaged_at_site2(every: &str) -> (Lab, String) {
    let lab = Lab::new(LabOptions {
        stores: [
            String::new(),
            format!("verify_every = \"{every}\"\nverify_cycle = \"{every}\""),
        ],
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["vm", "shutdown", "pbx1"]);
    lab.json(&["protect", "run", "gold"]);
    let id = points(&lab)[0]["id"].as_str().unwrap().to_string();
    let pack = files_under(&lab.path("site2/store"), "pack")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    damage(&[pack]);
    (lab, id)
}

/// Corruption is found before it matters: site 2's datastore verifies a
/// slice of its chunks on a schedule (here every 2 s, all chunks each
/// time); a flipped byte in a pack marks the point damaged there (`points
/// list` says so), raises `point-damaged`, and a restore reads the intact
/// copy at site 1 first.
#[test]
fn recovery_scheduled_verify_marks_a_damaged_point_and_alerts() {
    let (lab, id) = damaged_at_site2("2s");
    let damaged_at = std::time::Instant::now();
    let deadline = damaged_at + std::time::Duration::from_secs(60);
    let alert = loop {
        let a = lab.json(&["alerts", "list"]);
        if let Some(a) = a
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == "point-damaged")
        {
            break a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no point-damaged alert: {a:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    eprintln!(
        "point-damaged alert {:.1} s after the corruption (verify every 2 s)",
        damaged_at.elapsed().as_secs_f64()
    );
    assert_eq!(alert["labels"]["datastore"], "site2-store", "{alert:#}");
    let p = points(&lab)
        .into_iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap();
    let damaged = p["damaged"].as_array().unwrap_or_else(|| panic!("{p:#}"));
    assert_eq!(damaged.len(), 1, "{p:#}");
    assert_eq!(damaged[0]["datastore"], "site2-store");
    assert!(
        damaged[0]["reason"].as_str().unwrap().contains("chunk"),
        "{p:#}"
    );
    let table = String::from_utf8(lab.run(&["points", "list", "pbx1"]).stdout).unwrap();
    assert!(table.contains("site2-store (DAMAGED)"), "{table}");
    // A restore at site 2 reads the intact copy first, skipping nothing.
    let r = lab.json(&["restore", &id, "--site", "site2", "--no-start"]);
    assert_eq!(r["datastore"], "site1-store", "{r:#}");
    assert!(
        r["skipped"].as_array().is_none_or(|s| s.is_empty()),
        "{r:#}"
    );
}

/// Repaired by the next copy: a flipped byte in site 2's pack marks the
/// point damaged there (a scheduled verify); the next point's copy from
/// site 1, whose copy is intact, re-sends the damaged chunks, the point
/// is whole again at site 2 (`points list`, the alert clears) and
/// restores there from site 2's own datastore.
#[test]
fn recovery_a_damaged_chunk_is_repaired_by_the_next_copy() {
    let (lab, id) = damaged_at_site2("1s");
    let damaged_here = |lab: &Lab| {
        points(lab)
            .into_iter()
            .find(|p| p["id"] == id.as_str())
            .and_then(|p| p["damaged"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|d| d["datastore"] == "site2-store")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !damaged_here(&lab) {
        assert!(
            std::time::Instant::now() < deadline,
            "the damage was not found"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The next copy repairs it.
    let v = lab.json(&["protect", "run", "gold"]);
    let synced = &v["vms"][0]["synced"][0];
    assert_eq!(synced["datastore"], "site2-store", "{v:#}");
    assert!(
        synced["repaired"]
            .as_array()
            .is_some_and(|r| r.iter().any(|p| p == id.as_str())),
        "{v:#}"
    );
    assert!(!damaged_here(&lab), "{:#?}", points(&lab));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lab
        .json(&["alerts", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["rule"] == "point-damaged")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "point-damaged did not clear"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Whole again at site 2: restored from there, nothing skipped.
    let r = lab.json(&[
        "restore",
        &id,
        "--site",
        "site2",
        "--from",
        "site2-store",
        "--no-start",
    ]);
    assert_eq!(r["datastore"], "site2-store", "{r:#}");
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..3));
}

/// Figures for `scripts/bench-recovery`: the extra RTO per skipped point.
/// A VM with a disk of incompressible data (`STANDBY_BENCH_DISK_MIB`,
/// default 256) gets three points, each changing an eighth of the disk;
/// then a runbook restores with `fallback: older` at site 2, first with
/// every point intact, then with the newest, then the two newest points'
/// new packs damaged at site 2 (site 1's copies gone). Prints each
/// restore's time and the extra per skipped point.
#[test]
#[ignore]
fn recovery_figures() {
    let mib: usize = std::env::var("STANDBY_BENCH_DISK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let restore = "name: restore-older\nparams:\n  vm: { type: string, required: true }\nsteps:\n  - id: restore\n    action: point.restore\n    with: { vm: \"{{ params.vm }}\", site: site2, fallback: older }\n";
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        disk_size: Box::leak(format!("{mib}MiB").into_boxed_str()),
        controller: "runbooks = [\"restore-older.yaml\"]".into(),
        files: vec![("restore-older.yaml", restore.into())],
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.json(&["vm", "stop", "pbx1"]);
    let disk = lab.path("site1/disks/pbx1/data.img");
    crate::harness::write_random(&disk, mib << 20);
    let site2_packs = || -> BTreeSet<PathBuf> {
        files_under(&lab.path("site2/store"), "pack")
            .into_iter()
            .collect()
    };
    let mut new_packs = Vec::new();
    for i in 0..3u64 {
        // An eighth of the disk changes between points.
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            let len = (mib << 20) / 8;
            f.seek(std::io::SeekFrom::Start(i * len as u64)).unwrap();
            let mut x: u64 = 0xD1B5_4A32_D192_ED03 ^ i;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len / 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        let before = site2_packs();
        lab.json(&["protect", "run", "gold"]);
        new_packs.push(
            site2_packs()
                .difference(&before)
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    std::fs::remove_dir_all(lab.path("site1/store")).unwrap();
    let run = || -> (f64, usize) {
        // Each restore reads the datastore cold, where the system lets us
        // drop the page cache (root).
        let _ = std::process::Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
        let v = lab.json(&["runbook", "run", "restore-older", "-p", "vm=pbx1", "--wait"]);
        assert_eq!(v["job"]["status"], "succeeded", "{v:#}");
        let steps = lab.json(&["runbook", "steps", &v["job"]["id"].to_string()]);
        let out = step_output(&steps, "restore", -1);
        (
            out["seconds"].as_f64().unwrap(),
            out["skipped"].as_array().map_or(0, |s| s.len()),
        )
    };
    // The first restore also creates site 2's disk: a warm-up.
    let _ = run();
    let (t0, s0) = run();
    damage(&new_packs[2]);
    let (t1, s1) = run();
    damage(&new_packs[1]);
    let (t2, s2) = run();
    assert_eq!((s0, s1, s2), (0, 1, 2));
    println!(
        "fallback figures: {mib} MiB disk of random data, process driver, local datastore, page cache dropped before each restore"
    );
    println!("  restore, newest point intact:          {t0:.2} s");
    println!(
        "  restore, 1 point skipped:              {t1:.2} s (+{:.2} s)",
        t1 - t0
    );
    println!(
        "  restore, 2 points skipped:             {t2:.2} s (+{:.2} s, {:.2} s per skipped point)",
        t2 - t0,
        (t2 - t0) / 2.0
    );
}
