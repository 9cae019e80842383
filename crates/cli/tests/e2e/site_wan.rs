//! Replication across a WAN: a copy leaving site 1 obeys site 1's
//! bandwidth windows, written in the site's own time zone. Two agents in
//! network namespaces (as in `site_data`), the link between them not
//! shaped: inside a window the agent-to-agent copy averages the window's
//! limit, outside every window it goes as fast as the link.
//!
//! The windows are computed from the current time in the site's zone
//! (`Asia/Kolkata`, UTC+05:30 all year): one covering now, one that
//! does not, so nothing waits for the wall clock.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Timelike;
use serde_json::Value;

use crate::harness::{Lab, free_port, write_random};
use crate::netlab::NetLab;
use crate::relay::Relay;
use crate::site_data::{SiteAgent, run_json, site_lab, start_site_agents};
use crate::watch::wait_until;

const LIMIT: u64 = 4 << 20;
const BULK: u64 = 24 << 20;

/// `HH:MM` in Kolkata, `minutes` from now.
fn kolkata(minutes: i64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::minutes(minutes + 5 * 60 + 30);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

/// Two sites as in `site_data`: site 1's agent writes pbx1's points
/// (its `bulk` disk random), site 2's agent receives the copies; with
/// `wan`, through a [`Relay`] in site 2 adding 20 ms each way.
struct Sites {
    a1: SiteAgent,
    a2: SiteAgent,
    relay: Option<Relay>,
    lab: Lab,
    net: NetLab,
}

impl Sites {
    fn new(windows: &str, bulk: u64, wan: bool) -> Sites {
        let net = NetLab::new();
        let (p1, p2, relay_port) = (free_port(), free_port(), free_port());
        let relay = wan.then(|| {
            Relay::start(
                &net.s2,
                format!("{}:{relay_port}", net.addr(9)).parse().unwrap(),
                ([127, 0, 0, 1], p2).into(),
                Duration::from_millis(20),
            )
        });
        let site1 = if windows.is_empty() {
            String::new()
        } else {
            format!("timezone = \"Asia/Kolkata\"\nbandwidth = [\n{windows}\n]")
        };
        let peer_port = if wan { relay_port } else { p2 };
        let lab = site_lab(&net, (p1, p2, peer_port), &bulk.to_string(), site1);
        let (a1, a2) = start_site_agents(&lab, &net, p1, p2);
        let sites = Sites {
            a1,
            a2,
            relay,
            lab,
            net,
        };
        let path = sites.bulk();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_random(&path, bulk as usize);
        wait_until(
            "site 1's agent to run pbx1",
            Duration::from_secs(20),
            || run_json(&sites.lab, &["vm", "start", "pbx1"]).ok(),
        );
        sites
    }

    fn bulk(&self) -> PathBuf {
        self.lab.path("site1/disks/pbx1/bulk.img")
    }

    /// Take a point of pbx1 and copy it to site 2: what `protect run`
    /// said of the copy.
    fn protect(&self) -> Value {
        let run = run_json(&self.lab, &["protect", "run", "gold"]).unwrap_or_else(|e| {
            panic!(
                "protect run failed: {e}\nsite1 agent:\n{}\nsite2 agent:\n{}",
                self.a1.log(),
                self.a2.log()
            )
        });
        let synced = run["vms"][0]["synced"][0].clone();
        assert_eq!(synced["datastore"], "site2-store", "{run}");
        assert_eq!(synced["by_agent"], "site1-agent", "{run}");
        synced
    }
}

/// Bytes sent, seconds, and the achieved rate in bytes per second.
fn rate(synced: &Value, at_least: u64) -> (u64, f64, f64) {
    let sent = synced["bytes_sent"].as_u64().unwrap();
    let secs = synced["seconds"].as_f64().unwrap();
    assert!(sent >= at_least, "only {sent} bytes sent: {synced}");
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
    let synced = Sites::new(&inside, BULK, false).protect();
    let (sent, secs, achieved) = rate(&synced, BULK - (1 << 20));
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
    let synced = Sites::new(&outside, BULK, false).protect();
    let (sent, secs, achieved) = rate(&synced, BULK - (1 << 20));
    eprintln!(
        "outside every window: {sent} bytes in {secs:.2} s = {:.2} MiB/s",
        achieved / (1 << 20) as f64
    );
    assert!(
        achieved > 3.0 * limit,
        "{achieved:.0} B/s outside every window: the limit of {LIMIT} B/s was applied anyway: {synced}"
    );
}

/// Overwrite about `fraction` of `path` with random data in scattered
/// writes of 4 to 64 KiB (4 KiB multiples, one per 128 KiB slot at
/// most); the bytes written and the number of writes.
fn scatter_writes(path: &std::path::Path, fraction: f64) -> (u64, usize) {
    use rand::{Rng, RngCore, SeedableRng};
    use std::io::{Seek, SeekFrom, Write};
    const SLOT: u64 = 128 << 10;
    let len = std::fs::metadata(path).unwrap().len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut slots: Vec<u64> = (0..len / SLOT).collect();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let (mut written, mut writes) = (0u64, 0usize);
    while (written as f64) < fraction * len as f64 && !slots.is_empty() {
        let slot = slots.swap_remove(rng.random_range(0..slots.len()));
        let size = rng.random_range(1..=16u64) * 4096;
        let at = slot * SLOT + rng.random_range(0..=(SLOT - size) / 4096) * 4096;
        let mut buf = vec![0u8; size as usize];
        rng.fill_bytes(&mut buf);
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&buf).unwrap();
        (written, writes) = (written + size, writes + 1);
    }
    f.sync_all().unwrap();
    (written, writes)
}

/// `scripts/bench-wan`: copies from site 1 to site 2 over a link shaped
/// to 100 Mbit/s with `tc tbf` and a 40 ms round trip added by a
/// [`Relay`]. Prints the throughput of a first copy of a 256 MiB random
/// disk as a fraction of the link, the bytes sent per changed byte of an
/// incremental copy after a 2 % change, and the rate a 5 MiB/s window
/// holds a copy to, and what a copy cut for 3 s sends twice.
#[test]
#[ignore = "figures: scripts/bench-wan"]
fn wan_figures() {
    const LINK_BITS: f64 = 100e6;
    let mib = (1u64 << 20) as f64;
    let full_size: u64 = std::env::var("STANDBY_BENCH_WAN_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        << 20;

    let sites = Sites::new("", full_size, true);
    sites.net.shape_site1_to_site2("100mbit");
    let link0 = sites.net.site1_to_site2_tx_bytes();
    let first = sites.protect();
    let link1 = sites.net.site1_to_site2_tx_bytes();
    let (sent, secs, rate1) = rate(&first, full_size);
    let fraction = rate1 * 8.0 / LINK_BITS;
    let on_link = (link1 - link0) as f64 * 8.0 / secs / LINK_BITS;

    let (changed, writes) = scatter_writes(&sites.bulk(), 0.02);
    let second = sites.protect();
    let link2 = sites.net.site1_to_site2_tx_bytes();
    let sent2 = second["bytes_sent"].as_u64().unwrap();
    drop(sites);

    let limit = 5u64 << 20;
    let window = format!(
        "  {{ limit = \"{limit}\", from = \"{}\", to = \"{}\" }},",
        kolkata(-60),
        kolkata(60)
    );
    let limited_size = 64u64 << 20;
    let sites = Sites::new(&window, limited_size, true);
    sites.net.shape_site1_to_site2("100mbit");
    let third = sites.protect();
    let (sent3, secs3, rate3) = rate(&third, limited_size);
    drop(sites);

    // A cut of 3 s in the middle of a copy at WAN latency, its
    // connections reset: the copy resumes at the batches it was in.
    let cut_size = 128u64 << 20;
    let sites = Sites::new("", cut_size, true);
    sites.net.shape_site1_to_site2("100mbit");
    let before = sites.net.site1_to_site2_tx_bytes();
    let fourth = std::thread::scope(|s| {
        let job = s.spawn(|| sites.protect());
        let t = std::time::Instant::now();
        while !sites.a1.log().contains("point taken") {
            assert!(
                t.elapsed() < Duration::from_secs(60) && !job.is_finished(),
                "no point taken:\n{}",
                sites.a1.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(4));
        sites.net.cut_between_sites();
        // The connections on the way are lost with the link.
        sites.relay.as_ref().unwrap().reset();
        std::thread::sleep(Duration::from_secs(3));
        sites.net.heal();
        job.join().unwrap()
    });
    let (sent4, secs4, _) = rate(&fourth, cut_size);
    let stored4 = fourth["bytes_copied"].as_u64().unwrap();
    // What left site 1, the parts of batches cut on the way included.
    let link4 = sites.net.site1_to_site2_tx_bytes() - before;
    drop(sites);

    println!(
        "WAN figures: site 1 -> site 2, tc tbf 100 Mbit/s, 40 ms round trip (relay, 20 ms each way), {} batches in flight",
        standby_agent::transfer::IN_FLIGHT
    );
    println!(
        "first copy of a {} MiB random disk: {sent} bytes sent in {secs:.2} s = {:.1} Mbit/s = {:.1} % of the link (payload); {} bytes on the link = {:.1} % (with TCP/IP and Ethernet headers); {} batches resent",
        full_size >> 20,
        rate1 * 8.0 / 1e6,
        fraction * 100.0,
        link1 - link0,
        on_link * 100.0,
        first["resent"]
    );
    println!(
        "incremental copy after a 2 % change ({writes} writes of 4-64 KiB, {changed} bytes): {sent2} bytes sent ({} on the link) in {:.2} s, stored {} = {:.2} bytes sent per changed byte",
        link2 - link1,
        second["seconds"].as_f64().unwrap(),
        second["bytes_copied"],
        sent2 as f64 / changed as f64
    );
    println!(
        "window of {} MiB/s: {sent3} bytes in {secs3:.2} s = {:.2} MiB/s ({:.0} % of the limit; the link alone allows {:.1} MiB/s)",
        limit >> 20,
        rate3 / mib,
        rate3 / limit as f64 * 100.0,
        LINK_BITS / 8.0 / mib
    );
    println!(
        "cut of 3 s (connections reset) after 4 s of a {} MiB copy: {stored4} bytes stored, {sent4} bytes of batches answered, {link4} bytes on the link ({:.1} MiB more than stored, headers included), {} batches resent, {secs4:.2} s",
        cut_size >> 20,
        link4.saturating_sub(stored4) as f64 / mib,
        fourth["resent"]
    );
    // Resumed, not restarted: at most the batches in flight go twice.
    let twice = (standby_agent::transfer::IN_FLIGHT as u64 + 1) * (17 << 20);
    assert!(link4 < stored4 + stored4 / 20 + twice, "{link4}: {fourth}");
}
