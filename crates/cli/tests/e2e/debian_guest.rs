//! An off-the-shelf guest: Debian 12 as Debian ships it (debootstrap,
//! systemd, Debian's kernel, `qemu-guest-agent`, PostgreSQL 15), built by
//! `scripts/build-debian-guest`, run by the qemu driver under site 1's
//! agent, protected with an application-consistent point (the guest agent
//! froze the filesystem) and failed over to site 2's agent, where every
//! row PostgreSQL acknowledged before the point must be.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::agents::QemuSites;
use crate::harness::free_port;
use crate::qemu::{INSTALL, processes_with, qemu_installed, repo_root, rt};

const DEBIAN_INSTALL: &str = "apt-get install -y debootstrap e2fsprogs util-linux zstd";

/// The guest `scripts/build-debian-guest` built (or found up to date).
struct DebianGuest {
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
}

/// Build the guest once per test binary into `target/tmp/debian-guest`,
/// where the debootstrapped tree stays cached between runs.
fn debian_guest() -> &'static DebianGuest {
    static GUEST: OnceLock<DebianGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-guest");
        let t = Instant::now();
        let st = Command::new(repo_root().join("scripts/build-debian-guest"))
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("scripts/build-debian-guest: {e}; install: {DEBIAN_INSTALL}"));
        assert!(
            st.success(),
            "scripts/build-debian-guest failed; needs: {DEBIAN_INSTALL}"
        );
        let disk = out.join("disk.img");
        let meta = std::fs::metadata(&disk).unwrap();
        eprintln!(
            "debian guest: scripts/build-debian-guest took {:.1?} (its stages above), image {} MiB ({} MiB allocated)",
            t.elapsed(),
            meta.len() >> 20,
            (std::os::unix::fs::MetadataExt::blocks(&meta) * 512) >> 20
        );
        DebianGuest {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            disk,
        }
    })
}

fn pg_options(host: &str, port: u16) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(host)
        .port(port)
        .username("standby")
        .password("standby")
        .database("standby")
}

/// Connect to PostgreSQL at `host:port`, retrying until `within`; the
/// last error if it never answered.
async fn pg_connect(host: &str, port: u16, within: Duration) -> Result<PgConnection, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let opts = pg_options(host, port);
        let try_once = PgConnection::connect_with(&opts);
        match tokio::time::timeout(Duration::from_secs(10), try_once).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "connect timed out (10 s)".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Rows inserted one transaction each; which COMMITs were acknowledged,
/// and when (taken after the answer, so a row acknowledged at `t` was
/// committed before `t`).
type Acked = Arc<Mutex<Vec<(i32, DateTime<Utc>)>>>;

/// The insert loop on its own thread; stopped when dropped (a failing
/// test included).
struct Inserter {
    stop: Arc<AtomicBool>,
    acked: Acked,
    failed: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Inserter {
    fn start(host: String, port: u16) -> Inserter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::default();
        let failed = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            std::thread::spawn(move || {
                rt().block_on(async {
                    let mut conn: Option<PgConnection> = None;
                    let mut next = 0i32;
                    while !stop.load(Ordering::SeqCst) {
                        if conn.is_none() {
                            conn = pg_connect(&host, port, Duration::from_secs(2)).await.ok();
                            continue;
                        }
                        let c = conn.as_mut().expect("connected");
                        let id = next;
                        next += 1;
                        let insert = sqlx::query("INSERT INTO acks (id) VALUES ($1)")
                            .bind(id)
                            .execute(&mut *c);
                        match tokio::time::timeout(Duration::from_secs(20), insert).await {
                            Ok(Ok(_)) => acked.lock().unwrap().push((id, Utc::now())),
                            _ => {
                                *failed.lock().unwrap() += 1;
                                conn = None;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
        };
        Inserter {
            stop,
            acked,
            failed,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<(i32, DateTime<Utc>)> {
        self.acked.lock().unwrap().clone()
    }

    fn wait_for(&self, rows: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked.lock().unwrap().len() < rows {
            assert!(
                Instant::now() < deadline,
                "only {} rows acknowledged in {within:?}",
                self.acked.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The guest's VM at both sites: PostgreSQL forwarded from each site's
/// address, the guest-agent channel on, the image as its one disk.
fn pg_vm(g: &DebianGuest, pg_port: u16, disk_mib: u64) -> String {
    format!(
        r#"[vms.pg1]
host = "site1-host1"
dr_site = "site2"
shutdown_timeout = "30s"
[vms.pg1.qemu]
memory_mib = 512
accel = "tcg"
kernel = "{kernel}"
initrd = "{initrd}"
append = "console=ttyS0 root=/dev/vda rw quiet"
guest_agent = true
forwards = [
  {{ protocol = "tcp", host_addr = "{{site.addr}}", host_port = {pg_port}, guest_port = 5432 }},
]
[[vms.pg1.disks]]
name = "system"
size = "{disk_mib}MiB"
[groups.gold]
members = ["pg1"]
schedule = "every 1h"
datastores = ["site1-store", "site2-store"]
"#,
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
    )
}

/// Debian's PostgreSQL in a Debian guest: rows inserted one transaction
/// each, an application-consistent point (qemu-ga froze the filesystem)
/// while they go on, site 1 lost, the point restored and started at site
/// 2: every row acknowledged before the point's time is there.
#[test]
fn hypervisor_debian_guest_postgres_app_consistent_point_fails_over_with_acknowledged_rows() {
    if !qemu_installed() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed; run: {INSTALL}");
        return;
    }
    let g = debian_guest();
    // One runtime: a connection lives on the runtime that made it.
    let rt = rt();
    let disk_mib = std::fs::metadata(&g.disk).unwrap().len() >> 20;
    let pg_port = free_port();
    let mut lab = QemuSites::start_with("pg1", |_, _| pg_vm(g, pg_port, disk_mib));
    let (s1, s2) = (lab.net.addr(2), lab.net.addr(6));
    // The VM's disk at site 1 is a copy of the image (sparse).
    let disk1 = lab.path("site1/disks/pg1/system.img");
    std::fs::create_dir_all(disk1.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&g.disk)
        .arg(&disk1)
        .status()
        .unwrap();
    assert!(st.success(), "cp of the guest image");

    let t = Instant::now();
    lab.json(&["vm", "start", "pg1"]);
    let conn = rt.block_on(pg_connect(&s1, pg_port, Duration::from_secs(240)));
    let mut conn = conn.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL never answered at {s1}:{pg_port}: {e}\n{}\n{}",
            lab.console("agent1"),
            lab.agents[0].log_text()
        )
    });
    let boot1 = t.elapsed();
    eprintln!("site 1: start to PostgreSQL accepting connections {boot1:.1?}");
    rt.block_on(async {
        sqlx::query("CREATE TABLE acks (id integer PRIMARY KEY, at timestamptz DEFAULT now())")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });

    let mut inserter = Inserter::start(s1.clone(), pg_port);
    inserter.wait_for(20, Duration::from_secs(60));
    let t = Instant::now();
    let run = lab.json(&["protect", "run", "gold"]);
    let point_s = t.elapsed();
    let run = &run["vms"][0];
    let id = run["point"].as_str().expect("a point").to_string();
    let points = lab.json(&["points", "list", "pg1"]);
    let point = points
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {points:#}"))
        .clone();
    // The guest agent froze the filesystem: the point says so.
    assert_eq!(
        point["consistency"],
        "application",
        "{point:#}\n{run:#}\nagent 1: {}",
        lab.agents[0].log_text()
    );
    let at: DateTime<Utc> = serde_json::from_value(point["time"].clone()).unwrap();
    let snapshot = run["snapshot"].as_str().unwrap_or_default();
    assert!(
        snapshot.starts_with("application-consistent (guest agent froze")
            && snapshot.contains(" ms"),
        "{run:#}"
    );
    eprintln!(
        "point {id}: {point_s:.1?} (protect run; {} bytes read, {}s at the agent), {}: {snapshot}",
        run["bytes_read"], run["seconds"], point["consistency"]
    );
    // Rows acknowledged after the point (so the guest was thawed): these
    // may be lost.
    let before = inserter.acked().len();
    inserter.wait_for(before + 20, Duration::from_secs(60));

    // Site 1 is lost: its links, its agent, its QEMU.
    let lost = Instant::now();
    lab.net.cut_site1();
    let agent1 = lab.agents.remove(0);
    drop(agent1);
    for p in processes_with(&lab.path("agent1/run").to_string_lossy()) {
        if let Some(pid) = p.split(':').next() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let fence = lab.json(&[
        "site",
        "fence",
        "site1",
        "--reason",
        "site 1 lost",
        "--confirmed",
    ]);
    assert_eq!(fence["pending"], true, "{fence}");
    // The shipped failover runbook: fence, restore the newest point of
    // every VM of site 1 at its DR site and start it.
    let job = lab.json(&["runbook", "run", "failover-site", "--param", "site=site1"]);
    let job = job["job"].as_i64().expect("a job id").to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    let steps = loop {
        let v = lab.json(&["runbook", "steps", &job]);
        if matches!(v["job"]["status"].as_str(), Some("succeeded" | "failed")) {
            break v;
        }
        assert!(Instant::now() < deadline, "the failover did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let restored = lost.elapsed();
    assert_eq!(
        steps["job"]["status"],
        "succeeded",
        "{steps:#}\nagent 2: {}",
        lab.agents[0].log_text()
    );
    let r = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "restore")
        .map(|s| &s["output"][0])
        .unwrap_or_else(|| panic!("no restore step: {steps:#}"))
        .clone();
    assert_eq!(r["point"].as_str(), Some(id.as_str()), "{r:#}");
    assert_eq!(r["site"], "site2", "{r:#}");
    assert_eq!(r["datastore"], "site2-store", "{r:#}");
    assert_eq!(r["started"], true, "{r:#}");
    let conn = rt.block_on(pg_connect(&s2, pg_port, Duration::from_secs(240)));
    let mut conn = conn.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL never answered at site 2 ({s2}:{pg_port}): {e}\n{}\n{}",
            lab.console("agent2"),
            lab.agents[0].log_text()
        )
    });
    let failover = lost.elapsed();
    // The insert in flight when site 1 went has timed out by now (the
    // inserts are not waited for: they are not the failover).
    inserter.stop();
    let acked = inserter.acked();
    let failed = *inserter.failed.lock().unwrap();
    let have: std::collections::BTreeSet<i32> = rt.block_on(async {
        let rows: Vec<(i32,)> = sqlx::query_as("SELECT id FROM acks")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        rows.into_iter().map(|(i,)| i).collect()
    });
    let (in_point, after): (Vec<_>, Vec<_>) = acked.iter().partition(|(_, t)| *t < at);
    let missing: Vec<i32> = in_point
        .iter()
        .map(|(i, _)| *i)
        .filter(|i| !have.contains(i))
        .collect();
    let survived = after.iter().filter(|(i, _)| have.contains(i)).count();
    eprintln!(
        "failover: the failover-site runbook done {restored:.1?} after the loss (restore + start {}s), PostgreSQL answering {failover:.1?} after the loss ({:.1?} more)",
        r["seconds"],
        failover - restored
    );
    eprintln!(
        "rows: {} acknowledged before the point, all {} there: {}; {} acknowledged after it, {survived} of them survived; {failed} inserts not acknowledged",
        in_point.len(),
        have.len(),
        missing.is_empty(),
        after.len()
    );
    assert!(
        missing.is_empty(),
        "rows acknowledged before the point are missing at site 2: {missing:?}"
    );
    assert!(in_point.len() >= 20, "{} rows in the point", in_point.len());
    assert_eq!(lab.json(&["vm", "status", "pg1"])["active_site"], "site2");
}
