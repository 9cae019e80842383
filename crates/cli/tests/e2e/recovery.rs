//! Recovery you can trust: a failover brings the service back from the
//! newest point that restores, and says what it skipped; drills work on
//! the configuration `standby init` writes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{Lab, LabOptions, STANDBY, files_under, free_port};

fn points(lab: &Lab) -> Vec<Value> {
    lab.json(&["points", "list", "pbx1"])
        .as_array()
        .unwrap()
        .clone()
}

fn users(r: std::ops::Range<u32>) -> Vec<String> {
    let mut v: Vec<String> = r.map(|n| format!("sip:user{n}@e2e.invalid")).collect();
    v.sort();
    v
}

/// Flip a byte in the middle of each of `packs`.
fn damage(packs: &[PathBuf]) {
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
    let restore = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "restore" && s["item"] == 0)
        .unwrap_or_else(|| panic!("no restore step: {steps:#}"))["output"]
        .clone();
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

    // The service is back with everything the intact point holds.
    lab.wait_sip();
    assert_eq!(lab.bindings(), users(0..6));

    // The incident says it, on its timeline and in its resolving note.
    let incident = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "incident")
        .and_then(|s| s["output"]["incident"].as_i64())
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
    let report = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "report")
        .unwrap_or_else(|| panic!("no report: {steps:#}"))["output"]
        .clone();
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
