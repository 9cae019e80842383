//! Recovery plans: the VMs of a site come back tier by tier, in a
//! failover and in a drill, and the reports give each tier's time.

use std::path::Path;

use serde_json::Value;

use crate::harness::{Lab, LabOptions, STANDBY, free_port};
use crate::recovery::{run_job, step_output};

/// A VM of the plan: a sample VNF at `sip`/`http`, which first sleeps
/// `sleep` seconds (a database replaying its log), in group `backend`.
fn vm(name: &str, sip: u16, http: u16, sleep: u32) -> String {
    let vnf = Path::new(STANDBY).with_file_name("standby-vnf");
    format!(
        r#"
[vms.{name}]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "5s"
command = "sh"
args = ["-c", "sleep {sleep}; exec {vnf} --name {name} --disk {{disk.data}} --sip 127.0.0.1:{sip} --http 127.0.0.1:{http}"]
[[vms.{name}.disks]]
name = "data"
size = "16MiB"
[probes.{name}-sip]
kind = "sip"
target = "127.0.0.1:{sip}"
interval = "500ms"
timeout = "400ms"
labels = {{ vm = "{name}" }}
"#,
        vnf = vnf.display()
    )
}

/// The registrar's own probe, good at either site (a process VM keeps
/// its loopback address).
const PBX_PROBE: &str = r#"
[probes.pbx1-sip]
kind = "sip"
target = "{sip}"
interval = "500ms"
timeout = "400ms"
labels = { vm = "pbx1" }
"#;

/// The restore outputs of a job's `restore` step, by VM.
fn restored(steps: &Value) -> Vec<Value> {
    (0..3).map(|i| step_output(steps, "restore", i)).collect()
}

fn epoch(v: &Value) -> f64 {
    v["at_epoch"].as_f64().unwrap_or_else(|| panic!("{v:#}"))
}

/// A three-tier plan: a database (which answers 2 s after it starts),
/// the registrar that needs it (pbx1, tier 2: once the database answers)
/// and a front end (tier 3: 1 s after the registrar runs). A drill of
/// site 1 boots the copies in that order and reports each tier's time;
/// then the failover of site 1 starts them at site 2 in that order, and
/// its resolving note gives each tier's time against the plan's RTO
/// target; and the failback starts them at home in that order again.
#[test]
fn recovery_a_three_tier_plan_comes_up_in_order() {
    let (db_sip, db_http, fe_sip, fe_http) = (free_port(), free_port(), free_port(), free_port());
    let extra = format!(
        r#"{db}{fe}
[groups.backend]
members = ["db1", "fe1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
[plans.pbx]
rto_target = "2m"
[[plans.pbx.tiers]]
vms = ["db1"]
[[plans.pbx.tiers]]
groups = ["gold"]
[[plans.pbx.tiers]]
vms = ["fe1"]
after = "1s"
"#,
        db = vm("db1", db_sip, db_http, 2),
        fe = vm("fe1", fe_sip, fe_http, 0),
    );
    let lab = Lab::new(LabOptions {
        extra: Box::leak(extra.into_boxed_str()),
        watch: PBX_PROBE.into(),
        ..LabOptions::default()
    });
    for v in ["db1", "pbx1", "fe1"] {
        lab.json(&["vm", "start", v]);
    }
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["protect", "run", "gold"]);
    lab.json(&["protect", "run", "backend"]);

    // The drill: copies boot tier by tier.
    let steps = run_job(&lab, "drill", "site=site1");
    let report = step_output(&steps, "report", -1);
    assert_eq!(report["ok"], true, "{report:#}");
    let tiers = report["tiers"]
        .as_array()
        .unwrap_or_else(|| panic!("{report:#}"));
    let names: Vec<String> = tiers.iter().map(|t| t["vms"].to_string()).collect();
    assert_eq!(
        names,
        [r#"["db1"]"#, r#"["pbx1"]"#, r#"["fe1"]"#],
        "{report:#}"
    );
    let secs: Vec<f64> = tiers
        .iter()
        .map(|t| t["seconds"].as_f64().unwrap())
        .collect();
    // The registrar's copy boots only once the database's answers (2 s
    // after it booted); the front end's 1 s after the registrar's runs.
    assert!(secs[0] >= 2.0, "{report:#}");
    assert!(secs[1] > secs[0], "{report:#}");
    assert!(secs[2] > secs[1], "{report:#}");
    let boots: Vec<Value> = (0..3).map(|i| step_output(&steps, "boot", i)).collect();
    let at = |b: &Value| {
        chrono::DateTime::parse_from_rfc3339(b["started_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis() as f64
            / 1000.0
    };
    assert_eq!(boots[1]["vm"], "pbx1");
    assert!(at(&boots[1]) >= at(&boots[0]) + 2.0, "{boots:#?}");
    assert!(at(&boots[2]) >= at(&boots[1]) + 1.0, "{boots:#?}");
    let summary = report["summary"].as_str().unwrap();
    assert!(
        summary.contains("plan pbx: tier 1 (db1) up at") && summary.contains("target 2m: met"),
        "{summary}"
    );
    eprintln!("three-tier plan, drill: {summary}");

    // The failover: restored together, started tier by tier.
    let steps = run_job(&lab, "failover-site", "site=site1");
    let r = restored(&steps);
    let order: Vec<&str> = r.iter().map(|o| o["vm"].as_str().unwrap()).collect();
    assert_eq!(order, ["db1", "pbx1", "fe1"], "tier by tier: {r:#?}");
    assert!(
        r[0]["tier"].is_null(),
        "the first tier waits for nothing: {:#}",
        r[0]
    );
    assert_eq!(r[1]["tier"], 2, "{:#}", r[1]);
    assert!(
        r[1]["waited_for"]
            .to_string()
            .contains("db1: probe db1-sip answered at site2"),
        "{:#}",
        r[1]
    );
    // The database answers 2 s after it starts: the registrar started
    // after that, the front end 1 s after the registrar.
    assert!(epoch(&r[1]) >= epoch(&r[0]) + 1.9, "{r:#?}");
    assert_eq!(r[2]["tier"], 3, "{:#}", r[2]);
    assert!(
        r[2]["waited_for"].to_string().contains("then 1s"),
        "{:#}",
        r[2]
    );
    assert!(epoch(&r[2]) >= epoch(&r[1]) + 1.0, "{r:#?}");
    let incident = step_output(&steps, "incident", -1)["incident"]
        .as_i64()
        .unwrap();
    let inc = lab.json(&["incidents", "show", &incident.to_string()]);
    let note = inc.to_string();
    assert!(
        note.contains("Plan pbx: tier 1 (db1) started at")
            && note.contains("tier 3 (fe1) started at")
            && note.contains("within the plan's RTO target of 120"),
        "{inc:#}"
    );
    let t0 = epoch(&r[0]) - r[0]["seconds"].as_f64().unwrap();
    eprintln!(
        "three-tier plan, failover: started after the first restore began: db1 {:.1} s, pbx1 {:.1} s (waited {:.1} s), fe1 {:.1} s (waited {:.1} s)",
        epoch(&r[0]) - t0,
        epoch(&r[1]) - t0,
        r[1]["waited_seconds"].as_f64().unwrap(),
        epoch(&r[2]) - t0,
        r[2]["waited_seconds"].as_f64().unwrap(),
    );
    // Everyone is back at site 2, the registrar with its registrations.
    for v in ["db1", "pbx1", "fe1"] {
        let s = lab.json(&["vm", "status", v]);
        assert_eq!(s["active_site"], "site2", "{s:#}");
        assert_eq!(s["state"], "running", "{s:#}");
    }
    lab.wait_sip();
    assert_eq!(lab.bindings().len(), 3);

    // The failback home follows the plan too.
    let steps = run_job(&lab, "failback", "site=site1");
    let r = restored(&steps);
    let order: Vec<&str> = r.iter().map(|o| o["vm"].as_str().unwrap()).collect();
    assert_eq!(order, ["db1", "pbx1", "fe1"], "tier by tier: {r:#?}");
    assert!(
        r[1]["waited_for"]
            .to_string()
            .contains("db1: probe db1-sip answered at site1"),
        "{:#}",
        r[1]
    );
    assert!(epoch(&r[1]) >= epoch(&r[0]) + 1.9, "{r:#?}");
    assert!(epoch(&r[2]) >= epoch(&r[1]) + 1.0, "{r:#?}");
    lab.wait_sip();
    assert_eq!(lab.bindings().len(), 3);
}
