use std::time::{Duration, Instant};

use crate::harness::{Lab, LabOptions};

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
