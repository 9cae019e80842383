use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, LabOptions, files_under, write_random};

fn points(lab: &Lab) -> Vec<Value> {
    lab.json(&["points", "list", "pbx1"])
        .as_array()
        .unwrap()
        .clone()
}

/// Job `id` once it has ended (at most 120 s).
fn wait_finished(lab: &Lab, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = lab.json(&["jobs", "show", &id.to_string()])[0].clone();
        if matches!(j["status"].as_str(), Some("succeeded" | "failed")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copies(p: &Value) -> Vec<String> {
    p["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn restore_at_site2_is_byte_identical_and_keeps_acknowledged_registrations() {
    let lab = Lab::new(LabOptions::default());
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..20);

    // A point of the running VM, copied to site 2.
    let run = lab.json(&["protect", "run", "gold"]);
    assert_eq!(run["vms"][0]["vm"], "pbx1");
    let ps = points(&lab);
    assert_eq!(ps.len(), 1);
    assert_eq!(copies(&ps[0]), ["site1-store", "site2-store"]);
    let id = ps[0]["id"].as_str().unwrap().to_string();

    // Never two copies: restoring elsewhere while it runs is refused.
    let err = lab.fails(&["restore", &id, "--site", "site2"]);
    assert!(err.contains("running"), "{err}");

    lab.json(&["vm", "shutdown", "pbx1"]);
    lab.json(&["protect", "run", "gold"]);
    let ps = points(&lab);
    assert_eq!(ps.len(), 2);
    let id = ps[1]["id"].as_str().unwrap().to_string();

    let r = lab.json(&["restore", &id, "--site", "site2", "--no-start"]);
    assert_eq!(r["datastore"], "site2-store", "the nearest copy is used");
    let a = std::fs::read(lab.path("site1/disks/pbx1/data.img")).unwrap();
    let b = std::fs::read(lab.path("site2/disks/pbx1/data.img")).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a == b, "restored disk differs from the source");

    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["active_site"], "site2");
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let expect: Vec<String> = {
        let mut v: Vec<String> = (0..20)
            .map(|n| format!("sip:user{n}@e2e.invalid"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(lab.bindings(), expect);
}

#[test]
fn incremental_point_is_small_and_second_sync_moves_nothing() {
    let lab = Lab::new(LabOptions {
        disk_size: "64MiB",
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..5);
    let first = lab.json(&["protect", "run", "gold"]);
    lab.register(5..6);
    let second = lab.json(&["protect", "run", "gold"]);
    let new1 = first["vms"][0]["bytes_new"].as_u64().unwrap();
    let new2 = second["vms"][0]["bytes_new"].as_u64().unwrap();
    assert!(new1 > 0);
    // One registration dirties one chunk (plus an index chunk).
    assert!(new2 < 4 * 65536, "second point stored {new2} bytes");
    let chunks_new = second["vms"][0]["chunks_new"].as_u64().unwrap();
    assert!(chunks_new <= 2, "second point wrote {chunks_new} chunks");

    let sync = lab.json(&["store", "sync", "site1-store", "--to", "site2-store"]);
    assert_eq!(sync["chunks_copied"], 0, "{sync:#}");
    assert_eq!(sync["points"].as_array().unwrap().len(), 2);
}

#[test]
fn flipped_byte_is_named_by_verify_and_blocks_restore() {
    let lab = Lab::new(LabOptions::default());
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    lab.register(0..3);
    lab.json(&["vm", "shutdown", "pbx1"]);
    lab.json(&["protect", "run", "gold"]);
    let id = points(&lab)[0]["id"].as_str().unwrap().to_string();
    lab.json(&["store", "verify", "site2-store"]);

    // Flip one byte in the middle of the data pack at site 2.
    let packs = files_under(&lab.path("site2/store"), "pack");
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(pack, &bytes).unwrap();

    let err = lab.fails(&["store", "verify", "site2-store"]);
    assert!(err.contains(&id), "verify does not name the point: {err}");
    assert!(err.contains("data"), "verify does not name the disk: {err}");

    let err = lab.fails(&[
        "restore",
        &id,
        "--site",
        "site2",
        "--from",
        "site2-store",
        "--no-start",
    ]);
    assert!(
        err.contains("chunk"),
        "restore error does not name the chunk: {err}"
    );
    assert!(
        !lab.path("site2/disks/pbx1/data.img").exists(),
        "a failed restore left a disk behind"
    );
    // The verify marked site 2's copy damaged: left to choose, restore
    // reads the intact one at site 1 first, skipping nothing.
    let ps = points(&lab);
    assert_eq!(ps[0]["damaged"][0]["datastore"], "site2-store", "{ps:#?}");
    let r = lab.json(&["restore", &id, "--site", "site2", "--no-start"]);
    assert_eq!(r["datastore"], "site1-store", "{r:#}");
    assert!(r["skipped"].as_array().unwrap().is_empty(), "{r:#}");
    let restored = std::fs::read(lab.path("site2/disks/pbx1/data.img")).unwrap();
    assert_eq!(
        restored,
        std::fs::read(lab.path("site1/disks/pbx1/data.img")).unwrap()
    );
}

#[test]
fn retention_keeps_exactly_keep_last() {
    let lab = Lab::new(LabOptions {
        retention: "keep_last = 2",
        ..LabOptions::default()
    });
    lab.json(&["vm", "start", "pbx1"]);
    lab.wait_sip();
    let mut ids = Vec::new();
    for n in 0..4 {
        lab.register(n..n + 1);
        let r = lab.json(&["protect", "run", "gold"]);
        ids.push(r["vms"][0]["point"].as_str().unwrap().to_string());
    }
    let kept: Vec<String> = points(&lab)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, ids[2..].to_vec());
    for store in ["site1/store", "site2/store"] {
        assert_eq!(
            files_under(&lab.path(store), "json").len() - 1,
            2,
            "{store}"
        );
    }
}

#[test]
fn controller_killed_mid_point_leaves_no_partial_point_and_next_run_succeeds() {
    let mut lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        disk_size: "768MiB",
        ..LabOptions::default()
    });
    // A disk of incompressible data, so the point takes a while.
    let disk = lab.path("site1/disks/pbx1/data.img");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    write_random(&disk, 768 << 20);
    let vm = lab.json(&["vm", "start", "pbx1"]);
    let pid = vm["pid"].as_u64().unwrap();

    let job = lab.json(&["protect", "run", "gold", "--no-wait"]);
    let job_id = job["job"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = lab.json(&["jobs", "show", &job_id.to_string()]);
        let j = &j[0];
        assert_eq!(
            j["status"], "running",
            "the point ended before the kill: {j:#}"
        );
        if j["progress_done"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.kill_server();
    // The workload outlives its controller, frozen mid-point.
    let stat = || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat().contains(") T "), "not frozen mid-point: {}", stat());

    assert!(
        files_under(&lab.path("site1/store/manifests"), "json").is_empty(),
        "a partial point became visible"
    );
    lab.start_server();
    // The new controller thaws it as it starts, before anyone asks and
    // before the cut-off run resumes (which freezes it again for its own
    // point), and adopts it (no second copy).
    let log = std::fs::read_to_string(lab.path("server.log")).unwrap();
    let thawed = log.find("thawing a vm left frozen by a previous controller");
    let resumed = log.find("resuming runbook job after a controller restart");
    assert!(
        matches!((thawed, resumed), (Some(t), Some(r)) if t < r),
        "not thawed at start, before the run resumed:\n{log}"
    );
    // The run is a job of the `protect` runbook: it resumes and takes its
    // point again from the start; the point it was writing never shows.
    let j = wait_finished(&lab, job_id);
    assert_eq!(j["status"], "succeeded", "{j:#}");
    let steps = lab.json(&["runbook", "steps", &job_id.to_string()]);
    let taken = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "point" && s["item"] == -1)
        .map(|s| s["output"]["points"][0]["point"].clone())
        .expect("a point step");
    let after = points(&lab);
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["id"], taken, "{after:#?}");
    assert!(
        !stat().contains(") T "),
        "still frozen after restart: {}",
        stat()
    );
    let vm = lab.json(&["vm", "status", "pbx1"]);
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["pid"].as_u64(), Some(pid));
    let vm = lab.json(&["vm", "start", "pbx1"]);
    assert_eq!(vm["pid"].as_u64(), Some(pid), "a second copy was started");

    let r = lab.json(&["protect", "run", "gold"]);
    assert_eq!(r["vms"][0]["vm"], "pbx1");
    assert_eq!(points(&lab).len(), 2);
    lab.json(&["store", "verify", "site1-store"]);
    lab.json(&["store", "verify", "site2-store"]);
    let vm = lab.json(&["vm", "stop", "pbx1"]);
    assert_eq!(vm["state"], "stopped");
    assert!(
        stat().is_empty() || stat().contains(") Z "),
        "the workload survived stop"
    );
}

/// A VM's disks are restored all or none: when one disk cannot be
/// restored, the disks restored before it are not left in place either.
#[test]
fn a_failed_restore_leaves_no_disk_of_the_vm_behind() {
    let lab = Lab::new(LabOptions {
        vm: Some("command = \"sleep\"\nargs = [\"600\"]".into()),
        extra: "[[vms.pbx1.disks]]\nname = \"logs\"\nsize = \"8MiB\"",
        ..LabOptions::default()
    });
    // `data` stays all zeros (nothing stored); `logs` holds random data,
    // so any damage in the store hits `logs`, restored second.
    let logs = lab.path("site1/disks/pbx1/logs.img");
    lab.json(&["vm", "start", "pbx1"]);
    write_random(&logs, 8 << 20);
    let bytes = std::fs::read(&logs).unwrap();
    lab.json(&["vm", "stop", "pbx1"]);
    lab.json(&["protect", "run", "gold"]);
    let id = points(&lab)[0]["id"].as_str().unwrap().to_string();

    for pack in files_under(&lab.path("site2/store"), "pack") {
        let mut b = std::fs::read(&pack).unwrap();
        let last = b.len() - 100;
        b[last] ^= 0x01;
        std::fs::write(&pack, &b).unwrap();
    }
    let err = lab.fails(&[
        "restore",
        &id,
        "--site",
        "site2",
        "--from",
        "site2-store",
        "--no-start",
    ]);
    assert!(err.contains("logs"), "{err}");
    for disk in ["data", "logs"] {
        let p = lab.path(&format!("site2/disks/pbx1/{disk}.img"));
        assert!(!p.exists(), "{disk} was left behind by a failed restore");
    }
    // The intact copy restores both.
    lab.json(&[
        "restore",
        &id,
        "--site",
        "site2",
        "--from",
        "site1-store",
        "--no-start",
    ]);
    assert_eq!(
        std::fs::read(lab.path("site2/disks/pbx1/logs.img")).unwrap(),
        bytes
    );
    let data = std::fs::read(lab.path("site2/disks/pbx1/data.img")).unwrap();
    assert!(data.len() == 16 << 20 && data.iter().all(|b| *b == 0));
}
