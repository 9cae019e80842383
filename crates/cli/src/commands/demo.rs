//! `standby demo`: the whole story on one machine, in a temporary
//! directory: two sites with their own datastores, the sample SIP VNF at
//! site 1, registrations over real UDP while points are taken, the loss of
//! site 1 (VNF killed, its disk and datastore deleted), and the restore of
//! the newest point that reached site 2. It prints what survived, the
//! data-loss window and the time from disaster to SIP service at site 2.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use standby_types::api::{JobRef, RestoreRequest, VmView};
use standby_types::config::Config;
use standby_types::model::PointRecord;
use standby_vnf::client;

use crate::client::Client;
use crate::output;

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Seconds of SIP registrations before the disaster.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Interval between recovery points (seconds).
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Keep the temporary directory (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub dir: String,
    pub point: String,
    pub point_time: DateTime<Utc>,
    pub points_taken: usize,
    /// Registrations acknowledged with 200 OK, in order.
    pub acknowledged: Vec<String>,
    /// Registrations the restored VNF holds.
    pub survived: Vec<String>,
    /// Acknowledged before the point's time, yet missing: must be empty.
    pub missing_before_point: Vec<String>,
    /// Acknowledged after the point's time and lost with site 1.
    pub lost_after_point: Vec<String>,
    /// Written before the point but acknowledged just after it (in flight).
    pub in_flight: Vec<String>,
    /// REGISTERs that got no 200 in time (stored or not: never promised).
    pub unacknowledged: Vec<String>,
    /// Of those, the ones the restored VNF holds.
    pub unacknowledged_survivors: Vec<String>,
    /// Time between the point and the last acknowledged registration.
    pub data_loss_window_ms: i64,
    /// From the disaster to the VNF answering SIP OPTIONS at site 2.
    pub rto_ms: u128,
    pub restore_ms: u128,
    pub ok: bool,
}

pub async fn run(args: &DemoArgs, json_out: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("standby-demo-").tempdir()?;
    let say = |s: String| {
        if !json_out {
            println!("{s}");
        }
    };
    let report = demo(args, dir.path(), &say).await;
    let keep = args.keep || report.is_err();
    let path = if keep {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    let report = report?;
    if json_out {
        output::json(&report);
    } else {
        print_report(&report);
        if keep {
            println!("files kept in {}", path.display());
        }
    }
    if !report.ok {
        bail!(
            "the restore does not match the point: {} acknowledged before it missing, {} in flight (at most 1), survivors never sent: see the report",
            report.missing_before_point.len(),
            report.in_flight.len()
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    // Free for both UDP and TCP at the moment of asking.
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

fn config_text(sip: u16, http: u16, interval: u64) -> String {
    format!(
        r#"# written by `standby demo`
[controller]
listen = "127.0.0.1:0"
data_dir = "controller"

[sites.site1]
description = "primary datacenter"
[sites.site2]
description = "DR site"

[hosts.site1-host1]
site = "site1"
driver = "process"
disk_dir = "site1/disks"
[hosts.site2-host1]
site = "site2"
driver = "process"
disk_dir = "site2/disks"

[datastores.site1-store]
site = "site1"
path = "site1/store"
[datastores.site2-store]
site = "site2"
path = "site2/store"

[vms.pbx1]
host = "site1-host1"
dr_site = "site2"
command = "standby-vnf"
args = ["--name", "pbx1", "--disk", "{{disk.data}}", "--sip", "127.0.0.1:{sip}", "--http", "127.0.0.1:{http}"]
shutdown_timeout = "5s"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB"

[groups.gold]
members = ["pbx1"]
schedule = "every {interval}s"
datastores = ["site1-store", "site2-store"]
chunk_size = "64KiB"
[groups.gold.retention]
keep_last = 50
"#
    )
}

async fn wait_sip(addr: SocketAddr, within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if client::options(addr, Duration::from_millis(300))
            .await
            .is_ok()
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the VNF did not answer SIP OPTIONS at {addr} within {within:?}");
        }
    }
}

async fn demo(args: &DemoArgs, dir: &Path, say: &dyn Fn(String)) -> Result<DemoReport> {
    let (sip_port, http_port) = (free_port()?, free_port()?);
    let sip: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let cfg_path = dir.join("standby.toml");
    std::fs::write(&cfg_path, config_text(sip_port, http_port, args.interval))?;
    let cfg = Config::load(&cfg_path)?;
    let site1_disks = cfg.hosts["site1-host1"].disk_dir.clone();
    let site1_store = cfg.datastores["site1-store"]
        .path
        .clone()
        .context("the demo's site1 store is a directory")?;

    say(format!("standby demo in {}", dir.display()));
    let server = standby_server::start(cfg)
        .await
        .context("starting the controller")?;
    let api = Client::new(&server.addr.to_string());
    let result = story(args, &api, sip, http, &site1_disks, &site1_store, say).await;
    // VMs outlive their controller by design; the demo cleans up its own.
    let _ = api
        .post::<_, VmView>("/api/v1/vms/pbx1/stop", &json!({}))
        .await;
    server.stop().await;
    result.map(|mut r| {
        r.dir = dir.display().to_string();
        r
    })
}

async fn story(
    args: &DemoArgs,
    api: &Client,
    sip: SocketAddr,
    http: SocketAddr,
    site1_disks: &Path,
    site1_store: &Path,
    say: &dyn Fn(String),
) -> Result<DemoReport> {
    say("site1: starting the SIP registrar VNF pbx1".into());
    let _: VmView = api.post("/api/v1/vms/pbx1/start", &json!({})).await?;
    wait_sip(sip, Duration::from_secs(15)).await?;
    say(format!(
        "site1: pbx1 answers SIP on {sip}; registering users for {}s while points are taken every {}s",
        args.seconds, args.interval
    ));

    let mut acked: Vec<(String, DateTime<Utc>)> = Vec::new();
    let mut unacked: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut n = 0;
    while Instant::now() < until {
        let aor = format!("sip:user{n}@demo.invalid");
        let contact = format!("sip:user{n}@198.18.0.{}:5060", 10 + n % 200);
        match client::register(sip, &aor, &contact, 3600, Duration::from_secs(2)).await {
            Ok(()) => acked.push((aor, Utc::now())),
            // Not acknowledged: it may or may not have been stored.
            Err(_) => unacked.push(aor),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The disaster may strike while a copy is on its way; only a point
    // that has reached site 2 counts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let points = loop {
        let points: Vec<PointRecord> = api.get("/api/v1/points?vm=pbx1").await?;
        if points
            .iter()
            .any(|p| p.copies.iter().any(|c| c == "site2-store"))
        {
            break points;
        }
        if Instant::now() > deadline {
            bail!("no point reached site2 within 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    say(format!(
        "site1: {} registrations acknowledged, {} points taken",
        acked.len(),
        points.len()
    ));

    say("DISASTER: site1 is lost (pbx1 killed, its disk and datastore deleted)".into());
    let disaster = Instant::now();
    let _: VmView = api.post("/api/v1/vms/pbx1/stop", &json!({})).await?;
    destroy(site1_disks).context("deleting site1's disks")?;
    destroy(site1_store).context("deleting site1's datastore")?;

    let points: Vec<PointRecord> = api.get("/api/v1/points?vm=pbx1").await?;
    let point = points
        .iter()
        .rev()
        .find(|p| p.copies.iter().any(|c| c == "site2-store"))
        .context("no point at site2")?
        .clone();
    say(format!(
        "site2: restoring {} (taken {}) from site2-store",
        point.id,
        point.time.format("%H:%M:%S%.3f")
    ));
    let job: JobRef = api
        .post(
            "/api/v1/restore",
            &RestoreRequest {
                point: point.id.clone(),
                site: "site2".into(),
                host: None,
                from: Some("site2-store".into()),
                start: true,
            },
        )
        .await?;
    api.wait_job(job, false).await?;
    let restored = disaster.elapsed();
    let up = wait_sip(sip, Duration::from_secs(30)).await?;
    let rto = up - disaster;
    say(format!(
        "site2: pbx1 answers SIP OPTIONS {:.2}s after the disaster",
        rto.as_secs_f64()
    ));

    let state = client::state(http)
        .await
        .context("reading the restored VNF's state")?;
    let survived: Vec<String> = state.bindings.iter().map(|b| b.aor.clone()).collect();
    let has = |aor: &str| survived.iter().any(|s| s == aor);
    let missing_before_point: Vec<String> = acked
        .iter()
        .filter(|(a, t)| *t < point.time && !has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let in_flight: Vec<String> = acked
        .iter()
        .filter(|(a, t)| *t >= point.time && has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let lost_after_point: Vec<String> = acked
        .iter()
        .filter(|(a, _)| !has(a))
        .map(|(a, _)| a.clone())
        .filter(|a| !missing_before_point.contains(a))
        .collect();
    let unacknowledged_survivors: Vec<String> = survived
        .iter()
        .filter(|s| unacked.contains(s))
        .cloned()
        .collect();
    let unknown = survived
        .iter()
        .filter(|s| !acked.iter().any(|(a, _)| a == *s) && !unacked.contains(s))
        .count();
    let last_ack = acked.last().map(|(_, t)| *t).unwrap_or(point.time);
    Ok(DemoReport {
        dir: String::new(),
        point: point.id.clone(),
        point_time: point.time,
        points_taken: points.len(),
        acknowledged: acked.iter().map(|(a, _)| a.clone()).collect(),
        ok: missing_before_point.is_empty() && in_flight.len() <= 1 && unknown == 0,
        unacknowledged: unacked,
        unacknowledged_survivors,
        survived,
        missing_before_point,
        lost_after_point,
        in_flight,
        data_loss_window_ms: (last_ack - point.time).num_milliseconds().max(0),
        rto_ms: rto.as_millis(),
        restore_ms: restored.as_millis(),
    })
}

fn summarize(list: &[String]) -> String {
    let short: Vec<&str> = list
        .iter()
        .map(|a| {
            a.trim_start_matches("sip:")
                .trim_end_matches("@demo.invalid")
        })
        .collect();
    match short.len() {
        0 => "none".into(),
        1..=6 => short.join(", "),
        n => format!(
            "{} … {} ({n})",
            short[..3].join(", "),
            short[n - 2..].join(", ")
        ),
    }
}

fn print_report(r: &DemoReport) {
    println!();
    println!(
        "point used          {} ({} points taken)",
        r.point, r.points_taken
    );
    println!("acknowledged        {} registrations", r.acknowledged.len());
    println!(
        "survived            {} registrations: {}",
        r.survived.len(),
        summarize(&r.survived)
    );
    println!(
        "lost                {} acknowledged after the point: {}",
        r.lost_after_point.len(),
        summarize(&r.lost_after_point)
    );
    if !r.unacknowledged.is_empty() {
        println!(
            "unacknowledged      {} REGISTERs got no answer in time ({} of them survived)",
            r.unacknowledged.len(),
            r.unacknowledged_survivors.len()
        );
    }
    println!(
        "missing             {} acknowledged before the point (must be 0)",
        r.missing_before_point.len()
    );
    println!(
        "data-loss window    {:.3}s (last acknowledged registration − point time)",
        r.data_loss_window_ms as f64 / 1000.0
    );
    println!(
        "recovery time       {:.3}s from disaster to SIP answer at site2 (restore {:.3}s)",
        r.rto_ms as f64 / 1000.0,
        r.restore_ms as f64 / 1000.0
    );
    println!("result              {}", if r.ok { "OK" } else { "FAILED" });
}

/// Delete a directory that a protection run may still be writing into
/// (the disaster strikes mid-point): retry while new files appear.
fn destroy(path: &Path) -> std::io::Result<()> {
    for _ in 0..100 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::remove_dir_all(path)
}
