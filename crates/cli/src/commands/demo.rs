//! `standby demo`: the whole story on one machine, in a temporary
//! directory, with nobody at the keyboard after the disaster: two sites
//! with their own datastores and agents, the sample SIP VNF at site 1 behind
//! the front door, a client registering users through the front door while
//! points are taken, then the loss of site 1 (VNF killed, its disk,
//! datastore and agent gone). Two vantage points see site 1 go, the
//! `site-down` alert fires, and the built-in `failover-site` runbook
//! fences site 1, restores the newest point that reached site 2, starts the
//! VNF there, checks it and switches the front door. The demo prints the
//! incident's timeline, what survived, the data-loss window and the RTO the
//! client saw.
//!
//! `--driver qemu` makes pbx1 a real QEMU VM: the guest (kernel + initrd
//! holding `standby-vnf`) is built by `scripts/build-guest` into the demo
//! directory, and the VNF's SIP and HTTP ports are forwarded from each
//! site's address into the guest.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use standby_types::api::VmView;
use standby_types::config::Config;
use standby_types::model::{Job, JobStatus, PointRecord};
use standby_types::watch::{Alert, IncidentDetail};
use standby_vnf::client;
use tokio_util::sync::CancellationToken;

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
    /// How pbx1 runs: `process` (the VNF as a local process) or `qemu` (a
    /// real VM; needs qemu-system-x86_64, qemu-utils, busybox-static and
    /// cpio).
    #[arg(long, default_value = "process", value_parser = ["process", "qemu"])]
    pub driver: String,
    /// Skip the DR drill the demo runs before the disaster.
    #[arg(long)]
    pub no_drill: bool,
}

const QEMU_INSTALL: &str = "apt-get install qemu-system-x86 qemu-utils busybox-static cpio";

/// A guest for `--driver qemu`: `scripts/build-guest` (found beside the
/// binary's checkout or the current directory, or `STANDBY_BUILD_GUEST`)
/// builds it into `out` from the `standby-vnf` next to this binary; the
/// downloaded packages are cached in `~/.cache/standby/guest`.
fn build_guest(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
    });
    if !on_path {
        bail!(
            "--driver qemu needs qemu-system-x86_64, which is not installed; install it with: {QEMU_INSTALL}"
        );
    }
    let exe = std::env::current_exe().context("locating the standby binary")?;
    let script = std::env::var_os("STANDBY_BUILD_GUEST")
        .map(PathBuf::from)
        .or_else(|| {
            let cwd = std::env::current_dir().ok();
            exe.ancestors()
                .chain(cwd.iter().flat_map(|c| c.ancestors()))
                .map(|d| d.join("scripts/build-guest"))
                .find(|p| p.is_file())
        })
        .context("scripts/build-guest not found: run the demo from a standby checkout or set STANDBY_BUILD_GUEST")?;
    let vnf = exe
        .parent()
        .map(|d| d.join("standby-vnf"))
        .filter(|p| p.is_file())
        .context("standby-vnf is not next to the standby binary (cargo build -p standby-vnf)")?;
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/standby/guest"))
        .unwrap_or_else(|| out.join("cache"));
    let st = std::process::Command::new(&script)
        .arg("--vnf")
        .arg(&vnf)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(&cache)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !st.success() {
        bail!(
            "{} failed ({st}); it needs: {QEMU_INSTALL}",
            script.display()
        );
    }
    Ok((out.join("vmlinuz"), out.join("initrd.img")))
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub dir: String,
    /// The point the runbook restored at site 2.
    pub point: String,
    pub point_time: DateTime<Utc>,
    pub points_taken: usize,
    /// Registrations site 1 acknowledged with 200 OK, in order.
    pub acknowledged: Vec<String>,
    /// Registrations site 2 acknowledged after the failover.
    pub acknowledged_after: Vec<String>,
    /// Registrations the VNF at site 2 holds at the end.
    pub survived: Vec<String>,
    /// Acknowledged by site 1 before the point's time, yet missing: must be
    /// empty.
    pub missing_before_point: Vec<String>,
    /// Acknowledged by site 2, yet missing: must be empty.
    pub missing_after_failover: Vec<String>,
    /// Acknowledged by site 1 after the point's time and lost with it.
    pub lost_after_point: Vec<String>,
    /// Acknowledged just after the point's time yet in it (in flight).
    pub in_flight: Vec<String>,
    /// REGISTERs that got no 200 in time (stored or not: never promised).
    pub unacknowledged: Vec<String>,
    /// Of those, the ones the VNF at site 2 holds.
    pub unacknowledged_survivors: Vec<String>,
    /// Time between the point and site 1's last acknowledged registration.
    pub data_loss_window_ms: i64,
    /// From the disaster to the `site-down` alert firing.
    pub detection_ms: i64,
    /// What the client saw: site 1's last answer to site 2's first one,
    /// through the front door.
    pub rto_ms: i64,
    /// The failover runbook's job, start to end.
    pub runbook_ms: i64,
    pub job: i64,
    pub incident: Option<i64>,
    /// The incident's timeline, one line per entry.
    pub timeline: Vec<String>,
    /// The DR drill run before the disaster (none: not root, so no
    /// network namespace to isolate the copy in).
    pub drill: Option<DemoDrill>,
    pub ok: bool,
}

/// The drill of pbx1 the demo runs before the disaster.
#[derive(Debug, Serialize)]
pub struct DemoDrill {
    pub job: i64,
    pub ok: bool,
    /// From the drill's start to the copy's first passing probe.
    pub rto_seconds: Option<f64>,
    pub summary: String,
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
            "the recovered VNF does not match what was acknowledged: {} acknowledged before the point missing, {} acknowledged after the failover missing, {} in flight (at most 1): see the report",
            report.missing_before_point.len(),
            report.missing_after_failover.len(),
            report.in_flight.len()
        );
    }
    Ok(())
}

/// Site 1's services live on 127.0.1.1, site 2's on 127.0.2.1 (any
/// 127/8 address is loopback on Linux), the controller and the front door
/// on 127.0.0.1.
const SITE1_IP: [u8; 4] = [127, 0, 1, 1];
const SITE2_IP: [u8; 4] = [127, 0, 2, 1];

fn free_port() -> Result<u16> {
    // Free for both UDP and TCP on every address the demo uses.
    'next: for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        for ip in [[127, 0, 0, 1], SITE1_IP, SITE2_IP] {
            if std::net::UdpSocket::bind(SocketAddr::from((ip, port))).is_err()
                || (ip != [127, 0, 0, 1]
                    && std::net::TcpListener::bind(SocketAddr::from((ip, port))).is_err())
            {
                continue 'next;
            }
        }
        return Ok(port);
    }
    bail!("no free port on 127.0.0.1, 127.0.1.1 and 127.0.2.1")
}

struct Ports {
    sip: u16,
    http: u16,
    front: u16,
    agent1: u16,
    agent2: u16,
}

/// The `[vms.pbx1]` entry: the VNF as a process, or in a QEMU guest
/// whose SIP and HTTP ports are forwarded from the site's address.
fn vm_text(p: &Ports, guest: Option<&(PathBuf, PathBuf)>) -> String {
    match guest {
        None => format!(
            r#"command = "standby-vnf"
args = ["--name", "pbx1@{{site}}", "--disk", "{{disk.data}}", "--sip", "{{site.ip}}:{sip}", "--http", "{{site.ip}}:{http}"]
shutdown_timeout = "5s"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB""#,
            sip = p.sip,
            http = p.http
        ),
        Some((kernel, initrd)) => format!(
            r#"shutdown_timeout = "15s"
[vms.pbx1.qemu]
memory_mib = 256
# Software emulation: works everywhere, also where /dev/kvm opens but
# nested KVM does not run guests.
accel = "tcg"
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 quiet vnf.name=pbx1@{{site}}"
forwards = [
  {{ protocol = "udp", host_addr = "{{site.ip}}", host_port = {sip}, guest_port = 5060 }},
  {{ protocol = "tcp", host_addr = "{{site.ip}}", host_port = {http}, guest_port = 8080 }},
]
[[vms.pbx1.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx1.disks]]
name = "data"
size = "64MiB""#,
            kernel = kernel.display(),
            initrd = initrd.display(),
            sip = p.sip,
            http = p.http
        ),
    }
}

fn config_text(p: &Ports, interval: u64, guest: Option<&(PathBuf, PathBuf)>) -> String {
    let driver = if guest.is_some() { "qemu" } else { "process" };
    let probe = |name: &str, from: &str| {
        format!(
            r#"
[probes.{name}]
kind = "http"
url = "http://127.0.1.1:{a1}/health"
interval = "1s"
timeout = "800ms"
attempts = 2
from = ["{from}"]
labels = {{ site = "site1", scope = "site" }}
"#,
            a1 = p.agent1
        )
    };
    format!(
        r#"# written by `standby demo`
[controller]
listen = "127.0.0.1:0"
data_dir = "controller"

[sites.site1]
description = "primary datacenter"
vars = {{ ip = "127.0.1.1" }}
[sites.site2]
description = "DR site"
vars = {{ ip = "127.0.2.1" }}

[hosts.site1-host1]
site = "site1"
driver = "{driver}"
disk_dir = "site1/disks"
[hosts.site2-host1]
site = "site2"
driver = "{driver}"
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
{vm}

[groups.gold]
members = ["pbx1"]
schedule = "every {interval}s"
datastores = ["site1-store", "site2-store"]
chunk_size = "64KiB"
[groups.gold.retention]
keep_last = 50

# The customers' address: the front door sends their SIP to the site
# where pbx1 is active.
[services.pbx]
vm = "pbx1"
listen = "127.0.0.1:{front}"
protocols = ["udp"]
backends = {{ site1 = "127.0.1.1:{sip}", site2 = "127.0.2.1:{sip}" }}
probe = "sip"

# Two vantage points on site 1: the controller and site 2's agent. Site 1
# is declared down only when both lose it.
[agents.site1-agent]
site = "site1"
heartbeat = "1s"
token = "{t1}"
[agents.site2-agent]
site = "site2"
heartbeat = "1s"
token = "{t2}"
{p1}{p2}"#,
        t1 = demo_secret("site1-agent"),
        t2 = demo_secret("site2-agent"),
        vm = vm_text(p, guest),
        sip = p.sip,
        front = p.front,
        p1 = probe("site1-from-controller", "controller"),
        p2 = probe("site1-from-site2", "agent:site2-agent"),
    )
}

/// An agent secret for this demo run only.
fn demo_secret(name: &str) -> String {
    let seed = format!(
        "{name} {} {:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    blake3::hash(seed.as_bytes()).to_hex().to_string()
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

/// One REGISTER through the front door and what came of it.
#[derive(Debug, Clone)]
struct Attempt {
    aor: String,
    acked: Option<DateTime<Utc>>,
    /// `standby-vnf/pbx1@site1`, …
    server: Option<String>,
}

/// Registers a new user every 50 ms through `target` until cancelled.
fn start_client(
    target: SocketAddr,
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0..100_000u32 {
            if stop.is_cancelled() {
                return;
            }
            let next = tokio::time::Instant::now() + Duration::from_millis(50);
            let aor = format!("sip:user{n}@demo.invalid");
            let contact = format!("sip:user{n}@198.18.0.{}:5060", 10 + n % 200);
            let r =
                client::register_answer(target, &aor, &contact, 3600, Duration::from_millis(500))
                    .await;
            let (acked, server) = match r {
                Ok(a) => (Some(Utc::now()), a.server),
                Err(_) => (None, None),
            };
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Attempt { aor, acked, server });
            tokio::time::sleep_until(next).await;
        }
    })
}

async fn demo(args: &DemoArgs, dir: &Path, say: &dyn Fn(String)) -> Result<DemoReport> {
    let ports = Ports {
        sip: free_port()?,
        http: free_port()?,
        front: free_port()?,
        agent1: free_port()?,
        agent2: free_port()?,
    };
    let guest = if args.driver == "qemu" {
        say("building the QEMU guest (scripts/build-guest)".into());
        Some(build_guest(&dir.join("guest"))?)
    } else {
        None
    };
    let cfg_path = dir.join("standby.toml");
    std::fs::write(
        &cfg_path,
        config_text(&ports, args.interval, guest.as_ref()),
    )?;
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
    let admin_file = server
        .ctl
        .cfg()
        .controller
        .data_dir
        .join(standby_server::auth::ADMIN_TOKEN_FILE);
    let admin = std::fs::read_to_string(&admin_file)
        .with_context(|| format!("reading the admin token {}", admin_file.display()))?
        .trim()
        .to_string();
    say(format!(
        "admin token (also in {}): {admin}",
        admin_file.display()
    ));
    let api = Client::new(&server.addr.to_string()).with_token(Some(admin));
    // The sites' agents: heartbeats, and site 2's view of site 1.
    let agent = |name: &str, ip: [u8; 4], port: u16, cancel: CancellationToken| {
        let opts = standby_agent::daemon::AgentOptions {
            controller: format!("http://{}", server.addr),
            name: name.to_string(),
            listen: Some((ip, port).into()),
            data_dir: None,
            auth: standby_agent::daemon::AgentAuth::Token(
                server.ctl.cfg().agents[name].secret().ok().flatten(),
            ),
            policy: None,
            ready: None,
        };
        tokio::spawn(async move {
            if let Err(e) = standby_agent::daemon::run(opts, cancel).await {
                tracing::warn!("demo agent: {e}");
            }
        })
    };
    let site1_agent = CancellationToken::new();
    let site2_agent = CancellationToken::new();
    let a1 = agent("site1-agent", SITE1_IP, ports.agent1, site1_agent.clone());
    let a2 = agent("site2-agent", SITE2_IP, ports.agent2, site2_agent.clone());
    let result = story(
        args,
        &api,
        &ports,
        &site1_disks,
        &site1_store,
        &site1_agent,
        say,
    )
    .await;
    // VMs outlive their controller by design; the demo cleans up its own.
    let _ = api
        .post::<_, VmView>("/api/v1/vms/pbx1/stop", &json!({}))
        .await;
    site1_agent.cancel();
    site2_agent.cancel();
    let _ = tokio::join!(a1, a2);
    server.stop().await;
    result.map(|mut r| {
        r.dir = dir.display().to_string();
        r
    })
}

async fn story(
    args: &DemoArgs,
    api: &Client,
    ports: &Ports,
    site1_disks: &Path,
    site1_store: &Path,
    site1_agent: &CancellationToken,
    say: &dyn Fn(String),
) -> Result<DemoReport> {
    let site1_sip: SocketAddr = (SITE1_IP, ports.sip).into();
    let front: SocketAddr = ([127, 0, 0, 1], ports.front).into();
    say("site1: starting the SIP registrar VNF pbx1".into());
    let _: VmView = api.post("/api/v1/vms/pbx1/start", &json!({})).await?;
    // A QEMU guest boots first (software emulation without KVM).
    let boot = if args.driver == "qemu" { 90 } else { 15 };
    wait_sip(site1_sip, Duration::from_secs(boot)).await?;
    say(format!(
        "site1: pbx1 answers SIP at {site1_sip}; customers register through the front door at {front} for {}s while points are taken every {}s",
        args.seconds, args.interval
    ));
    let log = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let stop_client = CancellationToken::new();
    let client_task = start_client(front, log.clone(), stop_client.clone());
    let result = async {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        // The disaster may strike while a copy is on its way; only a point
        // that has reached site 2 counts.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let points: Vec<PointRecord> = api.get("/api/v1/points?vm=pbx1").await?;
            if points
                .iter()
                .any(|p| p.copies.iter().any(|c| c == "site2-store"))
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("no point reached site2 within 60s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drill = match args.no_drill {
            true => None,
            false => drill(api, say).await?,
        };
        let acked = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|a| a.acked.is_some())
            .count();
        say(format!(
            "site1: {acked} registrations acknowledged through the front door"
        ));
        say("DISASTER: site1 is lost (pbx1 killed, its disk, datastore and agent gone); nobody touches anything from here on".into());
        let disaster = Utc::now();
        let _: VmView = api.post("/api/v1/vms/pbx1/stop", &json!({})).await?;
        site1_agent.cancel();
        destroy(site1_disks).context("deleting site1's disks")?;
        destroy(site1_store).context("deleting site1's datastore")?;

        // The alert, then the runbook.
        let alert = wait_for(api, Duration::from_secs(60), "the site-down alert", |api| async move {
            let alerts: Vec<Alert> = api.get("/api/v1/alerts").await?;
            Ok(alerts
                .into_iter()
                .find(|a| a.rule == "site-down" && a.fired_at >= disaster))
        })
        .await?;
        let detection_ms = (alert.fired_at - disaster).num_milliseconds();
        say(format!(
            "watch: site-down fired {:.2}s after the disaster (site1 unreachable from the controller and from site2)",
            detection_ms as f64 / 1000.0
        ));
        let job = wait_for(api, Duration::from_secs(120), "the failover-site runbook to finish", |api| async move {
            let jobs: Vec<Job> = api.get("/api/v1/jobs?limit=50").await?;
            Ok(jobs.into_iter().find(|j| {
                j.kind == "runbook"
                    && j.target == "failover-site"
                    && j.created_at >= disaster
                    && matches!(j.status, JobStatus::Succeeded | JobStatus::Failed)
            }))
        })
        .await?;
        if job.status != JobStatus::Succeeded {
            bail!(
                "the failover-site runbook (job {}) failed: {}",
                job.id,
                job.error.unwrap_or_default()
            );
        }
        let runbook_ms = job
            .finished_at
            .zip(job.started_at)
            .map(|(f, s)| (f - s).num_milliseconds())
            .unwrap_or_default();
        say(format!(
            "act: failover-site (job {}) finished in {:.2}s",
            job.id,
            runbook_ms as f64 / 1000.0
        ));
        // Let the client see site 2 for a moment.
        let deadline = Instant::now() + Duration::from_secs(boot + 15);
        loop {
            let first_site2 = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|a| a.server.as_deref().is_some_and(|s| s.ends_with("@site2")))
                .count();
            if first_site2 >= 20 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the front door did not reach pbx1 at site2 within {}s of the failover", boot + 15);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((disaster, alert, job, detection_ms, runbook_ms, drill))
    }
    .await;
    stop_client.cancel();
    let _ = client_task.await;
    let (disaster, alert, job, detection_ms, runbook_ms, drill) = result?;

    let attempts = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let points: Vec<PointRecord> = api.get("/api/v1/points?vm=pbx1").await?;
    let steps: serde_json::Value = api.get(&format!("/api/v1/jobs/{}/steps", job.id)).await?;
    let point_id = restored_point(&steps).context("the runbook's steps name no restored point")?;
    let point: PointRecord = api.get(&format!("/api/v1/points/{point_id}")).await?;
    let state = client::state((SITE2_IP, ports.http).into())
        .await
        .context("reading the VNF's state at site2")?;
    let survived: Vec<String> = state.bindings.iter().map(|b| b.aor.clone()).collect();
    let has = |aor: &str| survived.iter().any(|s| s == aor);
    let by = |site: &str| -> Vec<(String, DateTime<Utc>)> {
        attempts
            .iter()
            .filter(|a| {
                a.server
                    .as_deref()
                    .is_some_and(|s| s.ends_with(&format!("@{site}")))
            })
            .filter_map(|a| a.acked.map(|t| (a.aor.clone(), t)))
            .collect()
    };
    let (site1, site2) = (by("site1"), by("site2"));
    let unacked: Vec<String> = attempts
        .iter()
        .filter(|a| a.acked.is_none())
        .map(|a| a.aor.clone())
        .collect();
    let missing_before_point: Vec<String> = site1
        .iter()
        .filter(|(a, t)| *t < point.time && !has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let in_flight: Vec<String> = site1
        .iter()
        .filter(|(a, t)| *t >= point.time && has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let lost_after_point: Vec<String> = site1
        .iter()
        .filter(|(a, t)| *t >= point.time && !has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let missing_after_failover: Vec<String> = site2
        .iter()
        .filter(|(a, _)| !has(a))
        .map(|(a, _)| a.clone())
        .collect();
    let unacknowledged_survivors: Vec<String> = survived
        .iter()
        .filter(|s| unacked.contains(s))
        .cloned()
        .collect();
    let known = |s: &String| {
        site1.iter().any(|(a, _)| a == s)
            || site2.iter().any(|(a, _)| a == s)
            || unacked.contains(s)
    };
    let unknown = survived.iter().filter(|s| !known(s)).count();
    let last_site1 = site1.last().map(|(_, t)| *t).unwrap_or(disaster);
    let first_site2 = site2.first().map(|(_, t)| *t).unwrap_or(disaster);
    let incident = alert
        .incident
        .or_else(|| steps["incident"].as_i64())
        .or_else(|| job.result["incident"].as_i64());
    let mut timeline = Vec::new();
    if let Some(id) = incident {
        let detail: IncidentDetail = api.get(&format!("/api/v1/incidents/{id}")).await?;
        timeline = detail
            .timeline
            .iter()
            .map(|e| {
                format!(
                    "{} +{:>6.2}s  {:<8} {}",
                    e.at.format("%H:%M:%S%.3f"),
                    (e.at - disaster).num_milliseconds() as f64 / 1000.0,
                    e.kind,
                    e.text
                )
            })
            .collect();
    }
    Ok(DemoReport {
        dir: String::new(),
        point: point.id.clone(),
        point_time: point.time,
        points_taken: points.len(),
        acknowledged: site1.iter().map(|(a, _)| a.clone()).collect(),
        acknowledged_after: site2.iter().map(|(a, _)| a.clone()).collect(),
        ok: missing_before_point.is_empty()
            && missing_after_failover.is_empty()
            && in_flight.len() <= 1
            && unknown == 0
            && !site2.is_empty()
            && drill.as_ref().is_none_or(|d| d.ok),
        unacknowledged: unacked,
        unacknowledged_survivors,
        survived,
        missing_before_point,
        missing_after_failover,
        lost_after_point,
        in_flight,
        data_loss_window_ms: (last_site1 - point.time).num_milliseconds().max(0),
        detection_ms,
        rto_ms: (first_site2 - last_site1).num_milliseconds(),
        runbook_ms,
        job: job.id,
        incident,
        timeline,
        drill,
    })
}

/// Prove before the disaster: the built-in `drill` runbook boots pbx1's
/// newest intact point at site 2 in a network namespace of its own,
/// probes it and tears it down, production untouched. Namespaces need
/// root; without it the demo says so and goes on.
async fn drill(api: &Client, say: &dyn Fn(String)) -> Result<Option<DemoDrill>> {
    if !nix::unistd::geteuid().is_root() {
        say("prove: DR drill skipped (a drill isolates its copy in a network namespace, which needs root)".into());
        return Ok(None);
    }
    say("prove: DR drill of pbx1: its newest point boots at site2 in an isolated namespace, is probed and torn down".into());
    let v: serde_json::Value = api
        .post(
            "/api/v1/runbooks/drill/run",
            &json!({ "params": { "vm": "pbx1" } }),
        )
        .await?;
    let id = v["job"]
        .as_i64()
        .with_context(|| format!("the controller started no drill: {v}"))?;
    let steps = wait_for(
        api,
        Duration::from_secs(180),
        "the drill to finish",
        |api| async move {
            let v: serde_json::Value = api.get(&format!("/api/v1/jobs/{id}/steps")).await?;
            Ok(matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")).then_some(v))
        },
    )
    .await?;
    let ok = steps["job"]["status"] == "succeeded";
    let report = steps["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "report")
        .map(|s| s["output"].clone())
        .unwrap_or_default();
    let summary = report["summary"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            steps["job"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
    say(format!(
        "prove: drill (job {id}) {}: {summary}",
        if ok { "passed" } else { "FAILED" }
    ));
    Ok(Some(DemoDrill {
        job: id,
        ok,
        rto_seconds: report["vms"][0]["rto_seconds"].as_f64(),
        summary,
    }))
}

/// Poll `f` every 200 ms until it finds something or `within` ends.
async fn wait_for<'a, T, F, Fut>(api: &'a Client, within: Duration, what: &str, f: F) -> Result<T>
where
    F: Fn(&'a Client) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f(api).await? {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("waited {within:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The point a runbook job's `restore` step restored.
fn restored_point(steps: &serde_json::Value) -> Option<String> {
    steps["steps"].as_array()?.iter().find_map(|st| {
        (st["step"] == "restore" && st["state"] == "succeeded")
            .then(|| st["output"]["point"].as_str().map(str::to_string))
            .flatten()
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
    println!("incident timeline (time since the disaster):");
    for line in &r.timeline {
        println!("  {line}");
    }
    println!();
    println!(
        "point restored      {} ({} points taken)",
        r.point, r.points_taken
    );
    println!(
        "acknowledged        {} registrations by site1, {} by site2 after the failover",
        r.acknowledged.len(),
        r.acknowledged_after.len()
    );
    println!(
        "survived            {} registrations at site2: {}",
        r.survived.len(),
        summarize(&r.survived)
    );
    println!(
        "lost                {} acknowledged by site1 after the point: {}",
        r.lost_after_point.len(),
        summarize(&r.lost_after_point)
    );
    if !r.unacknowledged.is_empty() {
        println!(
            "unacknowledged      {} REGISTERs got no answer in time, most while site1 was gone ({} of them survived)",
            r.unacknowledged.len(),
            r.unacknowledged_survivors.len()
        );
    }
    println!(
        "missing             {} acknowledged before the point, {} acknowledged by site2 (both must be 0)",
        r.missing_before_point.len(),
        r.missing_after_failover.len()
    );
    println!(
        "data-loss window    {:.3}s (site1's last acknowledged registration − point time)",
        r.data_loss_window_ms as f64 / 1000.0
    );
    println!(
        "detection           {:.3}s from the disaster to the site-down alert",
        r.detection_ms as f64 / 1000.0
    );
    println!(
        "recovery time       {:.3}s seen by the client: site1's last answer to site2's first, through the front door (runbook {:.3}s)",
        r.rto_ms as f64 / 1000.0,
        r.runbook_ms as f64 / 1000.0
    );
    match &r.drill {
        Some(d) => println!(
            "drill               {} before the disaster (job {}): copy answered {}",
            if d.ok { "passed" } else { "FAILED" },
            d.job,
            d.rto_seconds
                .map(|s| format!("{s:.3}s after the drill started"))
                .unwrap_or_else(|| "never".into())
        ),
        None => println!(
            "drill               not run (--no-drill, or not root: a drill's network namespace needs root)"
        ),
    }
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
