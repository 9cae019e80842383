use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Lab, LabOptions, write_random};

/// Points appear on the group's schedule without anyone asking.
#[test]
fn scheduled_protection_takes_points_by_itself() {
    let lab = Lab::new(LabOptions {
        schedule: "every 1s",
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let points = lab.json(&["points", "list", "pbx1"]);
        let synced = points
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["copies"].as_array().unwrap().len() == 2)
            .count();
        if synced >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled points: {points:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let groups = lab.json(&["protect", "list"]);
    assert_eq!(groups[0]["last_status"], "succeeded", "{groups:#}");
}

/// The next run is persisted: a controller restart keeps the schedule
/// instead of starting the interval over.
#[test]
fn a_restart_keeps_the_schedule() {
    let mut lab = Lab::new(LabOptions {
        schedule: "every 1h",
        ..LabOptions::default()
    });
    let next = |lab: &Lab| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let g = lab.json(&["protect", "list"]);
            if let Some(t) = g[0]["next_run"].as_str() {
                return t.to_string();
            }
            assert!(Instant::now() < deadline, "next run never set: {g:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = next(&lab);
    lab.stop_server();
    std::thread::sleep(Duration::from_millis(1100));
    lab.start_server();
    assert_eq!(next(&lab), before);
}

/// The jobs of the `protect` runbook, newest first.
fn protect_jobs(lab: &Lab) -> Vec<Value> {
    lab.json(&["jobs", "list", "--limit", "100"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "runbook" && j["target"] == "protect")
        .cloned()
        .collect()
}

fn job(lab: &Lab, id: i64) -> Value {
    lab.json(&["jobs", "show", &id.to_string()])[0].clone()
}

/// Job `id` once it has ended (at most 120 s).
fn wait_finished(lab: &Lab, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(lab, id);
        if matches!(j["status"].as_str(), Some("succeeded" | "failed")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The points a finished `protect` job took.
fn points_of(lab: &Lab, id: i64) -> Vec<Value> {
    let steps = lab.json(&["runbook", "steps", &id.to_string()]);
    steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["output"]["points"].as_array())
        .flatten()
        .map(|p| p["point"].clone())
        .collect()
}

/// One guard for a group's protection, whoever starts it: while the
/// group's scheduled run holds the group's lock, `POST groups/NAME/run`
/// (and `standby protect run`) is a 409 and starts nothing; while a run
/// started through that API holds it, starting the `protect` runbook for
/// the group the way the schedule does is refused the same way. Each run
/// takes exactly one point.
#[test]
fn a_group_has_one_protection_run_at_a_time_whoever_starts_it() {
    let mut lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        disk_size: "512MiB",
        ..LabOptions::default()
    });
    // A disk of incompressible data, so a run takes a while.
    let disk = lab.path("site1/disks/pbx1/data.img");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    write_random(&disk, 512 << 20);
    lab.json(&["vm", "start", "pbx1"]);

    // The group's schedule fires once, a few seconds from now (cron, UTC);
    // the VM keeps running across the controller's restart.
    lab.stop_server();
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 5;
    let cron = format!("{} {} {} * * *", at % 60, at / 60 % 60, at / 3600 % 24);
    let text = std::fs::read_to_string(&lab.cfg).unwrap();
    assert!(text.contains("schedule = \"every 1h\""), "{text}");
    let text = text.replace("schedule = \"every 1h\"", &format!("schedule = \"{cron}\""));
    std::fs::write(&lab.cfg, text).unwrap();
    lab.start_server();

    let deadline = Instant::now() + Duration::from_secs(30);
    let scheduled = loop {
        if let Some(j) = protect_jobs(&lab).first() {
            break j["id"].as_i64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the schedule ({cron}) never fired"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let steps = lab.json(&["runbook", "steps", &scheduled.to_string()]);
    assert_eq!(steps["trigger"]["kind"], "schedule", "{steps:#}");
    assert_eq!(steps["lock"], "group:gold", "{steps:#}");

    // While it runs, the API's run of the group is refused.
    let (status, body) = lab.post("/api/v1/groups/gold/run", json!({}));
    assert_eq!(status, 409, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "conflict", "{err:#}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("group gold is already being protected"),
        "{err:#}"
    );
    let out = lab.fails(&["protect", "run", "gold"]);
    assert!(
        out.contains("(conflict)") && out.contains("already being protected"),
        "{out}"
    );
    // Refused because the scheduled run held the lock, not because it ended.
    assert_eq!(job(&lab, scheduled)["status"], "running");
    let j = wait_finished(&lab, scheduled);
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let taken = points_of(&lab, scheduled);
    let points = lab.json(&["points", "list", "pbx1"]);
    let ids: Vec<Value> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(ids, taken, "only the scheduled run's point: {points:#}");
    assert_eq!(taken.len(), 1, "{points:#}");
    let last_run = |lab: &Lab| {
        let g = lab.json(&["protect", "list"]);
        assert_eq!(g[0]["last_status"], "succeeded", "{g:#}");
        chrono::DateTime::parse_from_rfc3339(g[0]["last_run"].as_str().unwrap()).unwrap()
    };
    let scheduled_run = last_run(&lab);

    // The other way round: a run started through the API holds the same
    // lock against the `protect` runbook started for the group.
    let api = lab.json(&["protect", "run", "gold", "--no-wait"])["job"]
        .as_i64()
        .unwrap();
    let (status, body) = lab.post(
        "/api/v1/runbooks/protect/run",
        json!({ "params": { "group": "gold" } }),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(job(&lab, api)["status"], "running");
    let j = wait_finished(&lab, api);
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let steps = lab.json(&["runbook", "steps", &api.to_string()]);
    assert_eq!(steps["lock"], "group:gold", "{steps:#}");
    assert_eq!(steps["params"], json!({ "group": "gold" }), "{steps:#}");
    assert_eq!(points_of(&lab, api).len(), 1);
    assert_eq!(
        lab.json(&["points", "list", "pbx1"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Two runs, nothing started by the refused requests; the API's run is
    // the group's last run, as the scheduled one was.
    let jobs: Vec<i64> = protect_jobs(&lab)
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(jobs, [api, scheduled]);
    assert!(last_run(&lab) > scheduled_run);
    lab.json(&["vm", "stop", "pbx1"]);
}
