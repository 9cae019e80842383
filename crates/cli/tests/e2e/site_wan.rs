//! Replication across a WAN: a copy leaving site 1 obeys site 1's
//! bandwidth windows, written in the site's own time zone. Two agents in
//! network namespaces (as in `site_data`), the link between them not
//! shaped: inside a window the agent-to-agent copy averages the window's
//! limit, outside every window it goes as fast as the link.
//!
//! The windows are computed from the current time in the site's zone
//! (`Asia/Kolkata`, UTC+05:30 all year): one covering now, one that
//! does not, so nothing waits for the wall clock.

use std::time::Duration;

use chrono::Timelike;
use serde_json::Value;

use crate::harness::{Lab, LabOptions, free_port, write_random};
use crate::netlab::NetLab;
use crate::site_data::{run_json, start_agent};
use crate::watch::wait_until;

const LIMIT: u64 = 4 << 20;
const BULK: u64 = 24 << 20;

/// `HH:MM` in Kolkata, `minutes` from now.
fn kolkata(minutes: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::minutes(minutes + 5 * 60 + 30);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// Copy a first point of pbx1 (a disk of `BULK` random bytes) from site
/// 1's agent to site 2's under `windows`; what `protect run` said of it.
fn copy_under(windows: &str) -> Value {
    let net = NetLab::new();
    let (p1, p2) = (free_port(), free_port());
    let watch = format!(
        r#"
[agents.site1-agent]
site = "site1"
host = "site1-host1"
url = "http://{s1}:{p1}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[agents.site2-agent]
site = "site2"
host = "site2-host1"
url = "http://{s2}:{p2}"
peer_url = "http://{s2_for_s1}:{p2}"
heartbeat = "300ms"
allowed_commands = ["standby-vnf"]

[[vms.pbx1.disks]]
name = "bulk"
size = "{BULK}"
"#,
        s1 = net.addr(2),
        s2 = net.addr(6),
        s2_for_s1 = net.addr(9),
    );
    let lab = Lab::new(LabOptions {
        vm: Some(
            r#"command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{disk.data}", "--sip", "0.0.0.0:5060", "--http", "0.0.0.0:8080"]"#
                .into(),
        ),
        listen_host: "0.0.0.0",
        watch,
        sites: [
            format!("timezone = \"Asia/Kolkata\"\nbandwidth = [\n{windows}\n]"),
            String::new(),
        ],
        stores: [
            "path = \"site1/fs/store\"\nagent = \"site1-agent\"".into(),
            "path = \"site2/fs/store\"\nagent = \"site2-agent\"".into(),
        ],
        ..LabOptions::default()
    });
    let a1 = start_agent(
        &lab,
        &net,
        &net.s1,
        "site1-agent",
        p1,
        &lab.path("site1/fs"),
    );
    let a2 = start_agent(
        &lab,
        &net,
        &net.s2,
        "site2-agent",
        p2,
        &lab.path("site2/fs"),
    );
    let bulk = lab.path("site1/disks/pbx1/bulk.img");
    std::fs::create_dir_all(bulk.parent().unwrap()).unwrap();
    write_random(&bulk, BULK as usize);
    wait_until(
        "site 1's agent to run pbx1",
        Duration::from_secs(20),
        || run_json(&lab, &["vm", "start", "pbx1"]).ok(),
    );
    let run = run_json(&lab, &["protect", "run", "gold"]).unwrap_or_else(|e| {
        panic!(
            "protect run failed: {e}\nsite1 agent:\n{}\nsite2 agent:\n{}",
            a1.log(),
            a2.log()
        )
    });
    let synced = run["vms"][0]["synced"][0].clone();
    assert_eq!(synced["datastore"], "site2-store", "{run}");
    assert_eq!(synced["by_agent"], "site1-agent", "{run}");
    synced
}

/// Bytes sent, seconds, and the achieved rate in bytes per second.
fn rate(synced: &Value) -> (u64, f64, f64) {
    let sent = synced["bytes_sent"].as_u64().unwrap();
    let secs = synced["seconds"].as_f64().unwrap();
    assert!(sent >= BULK - (1 << 20), "only {sent} bytes sent: {synced}");
    (sent, secs, sent as f64 / secs)
}

#[test]
fn agents_copy_at_the_sites_window_limit_inside_it_and_at_full_speed_outside() {
    // Inside: a window of LIMIT around now (in Kolkata), and a lower one
    // later that does not apply yet.
    let inside = format!(
        "  {{ limit = \"{LIMIT}\", from = \"{}\", to = \"{}\" }},\n  {{ limit = \"64KiB\", from = \"{}\", to = \"{}\" }},",
        kolkata(-60),
        kolkata(60),
        kolkata(120),
        kolkata(180),
    );
    let synced = copy_under(&inside);
    let (sent, secs, achieved) = rate(&synced);
    eprintln!(
        "inside the window: {sent} bytes in {secs:.2} s = {:.2} MiB/s (limit {} MiB/s)",
        achieved / (1 << 20) as f64,
        LIMIT >> 20
    );
    let limit = LIMIT as f64;
    assert!(
        achieved > 0.75 * limit && achieved < 1.25 * limit,
        "{achieved:.0} B/s inside a window of {LIMIT} B/s: {synced}"
    );

    // Outside: the only window is later today (Kolkata time).
    let outside = format!(
        "  {{ limit = \"{LIMIT}\", from = \"{}\", to = \"{}\" }},",
        kolkata(60),
        kolkata(180),
    );
    let synced = copy_under(&outside);
    let (sent, secs, achieved) = rate(&synced);
    eprintln!(
        "outside every window: {sent} bytes in {secs:.2} s = {:.2} MiB/s",
        achieved / (1 << 20) as f64
    );
    assert!(
        achieved > 3.0 * limit,
        "{achieved:.0} B/s outside every window: the limit of {LIMIT} B/s was applied anyway: {synced}"
    );
}
