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
