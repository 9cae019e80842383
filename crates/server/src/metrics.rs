//! Prometheus metrics (OpenMetrics text), built from current state at each
//! scrape:
//!
//! - probes: latest result (`standby_probe_up`) and latency per probe and
//!   vantage point;
//! - alerts: active by state, firing by rule and severity, resolved since
//!   start; open incidents by state;
//! - jobs: count by kind and status;
//! - points: count, newest point's age and size, new bytes, per VM;
//! - sync: copies each datastore holds or still lacks (pending) of the
//!   points of the groups that write to it;
//! - RPO: newest point age against the group's target per VM
//!   (`standby_rpo_met`);
//! - RTO: the last measured drill RTO and data age per VM and site (from
//!   the newest `drill.report`), the last failover's RTO and data-loss
//!   window per VM and site (from the newest succeeded `failover-site`
//!   run);
//! - agent heartbeats and the front door.
//!
//! A scrape reads the point catalog once (one query) and the newest few
//! runbook jobs; nothing here walks a datastore.

use standby_types::outcome::DrillReport;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::Utc;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use standby_db::{CopyCount, EventQuery, VmPoints};
use standby_types::model::JobStatus;
use standby_types::watch::{AlertState, IncidentState};

use crate::error::ServerError;
use standby_engine::Controller;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn fam() -> Family<Labels, FGauge> {
    Family::default()
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn render(ctl: &Arc<Controller>) -> Result<String, ServerError> {
    let mut reg = Registry::default();
    let w = &ctl.watch;

    let up = fam();
    let latency = fam();
    for r in w.probe_states() {
        let mut labels = l(&[
            ("probe", &r.probe),
            ("vantage", &r.vantage),
            ("kind", r.labels.get("kind").map_or("", String::as_str)),
        ]);
        for k in ["site", "vm", "host", "scope"] {
            if let Some(v) = r.labels.get(k) {
                labels.push((k.to_string(), v.clone()));
            }
        }
        up.get_or_create(&labels).set(if r.ok { 1.0 } else { 0.0 });
        latency
            .get_or_create(&labels)
            .set(r.latency_ms as f64 / 1000.0);
    }
    reg.register(
        "standby_probe_up",
        "Whether the probe's latest run succeeded",
        up,
    );
    reg.register(
        "standby_probe_latency_seconds",
        "Duration of the probe's latest run",
        latency,
    );

    let alerts = fam();
    let active = w.active_alerts();
    for state in [AlertState::Firing, AlertState::Acknowledged] {
        let n = active.iter().filter(|a| a.state == state).count();
        alerts
            .get_or_create(&l(&[("state", state.as_str())]))
            .set(n as f64);
    }
    let muted = active
        .iter()
        .filter(|a| a.inhibited_by.is_some() || a.silenced_by.is_some())
        .count();
    alerts
        .get_or_create(&l(&[("state", "muted")]))
        .set(muted as f64);
    reg.register("standby_alerts", "Active alerts by state", alerts);
    let firing = fam();
    for a in active.iter().filter(|a| a.state == AlertState::Firing) {
        firing
            .get_or_create(&l(&[("rule", &a.rule), ("severity", a.severity.as_str())]))
            .inc();
    }
    reg.register(
        "standby_alerts_firing",
        "Firing alerts by rule and severity",
        firing,
    );
    let resolved: Counter = Counter::default();
    resolved.inc_by(w.resolved_total());
    reg.register(
        "standby_alerts_resolved",
        "Alerts resolved since the controller started",
        resolved,
    );

    let incidents = fam();
    let open = w
        .repo()
        .incidents(&[IncidentState::New, IncidentState::Active], 10_000)
        .await?;
    for state in [IncidentState::New, IncidentState::Active] {
        let n = open.iter().filter(|i| i.state == state).count();
        incidents
            .get_or_create(&l(&[("state", state.as_str())]))
            .set(n as f64);
    }
    reg.register("standby_incidents", "Open incidents by state", incidents);

    let now = Utc::now();
    let summary = ctl.repo.point_summary().await?;
    let copies = ctl.repo.copy_counts().await?;
    register_points(&mut reg, ctl, &summary, &copies, now);

    let jobs = fam();
    for (kind, status, n) in ctl.repo.job_counts().await? {
        jobs.get_or_create(&l(&[("kind", &kind), ("status", status.as_str())]))
            .set(n as f64);
    }
    reg.register("standby_jobs", "Jobs by kind and status", jobs);

    register_rto(&mut reg, ctl).await?;

    let hb = fam();
    for (name, seen) in w.agents_seen() {
        hb.get_or_create(&l(&[("agent", &name), ("site", &seen.site)]))
            .set((now - seen.last_seen).num_milliseconds() as f64 / 1000.0);
    }
    reg.register(
        "standby_agent_heartbeat_age_seconds",
        "Time since each agent's last heartbeat",
        hb,
    );

    standby_frontdoor::register_metrics(&mut reg, &ctl.frontdoor);

    let mut out = String::new();
    encode(&mut out, &reg)
        .map_err(|e| ServerError::Internal(format!("unable to encode metrics: {e}")))?;
    Ok(out)
}

/// Points, sync and RPO, from the catalog's aggregates (never a read of
/// every point).
fn register_points(
    reg: &mut Registry,
    ctl: &Controller,
    summary: &[VmPoints],
    counts: &[CopyCount],
    now: chrono::DateTime<Utc>,
) {
    let by_vm: HashMap<&str, &VmPoints> = summary.iter().map(|s| (s.vm.as_str(), s)).collect();
    let (count, newest_bytes, new_bytes) = (fam(), fam(), fam());
    for s in summary {
        let labels = l(&[("vm", &s.vm)]);
        count.get_or_create(&labels).set(s.count as f64);
        newest_bytes
            .get_or_create(&labels)
            .set(s.newest_size as f64);
        new_bytes.get_or_create(&labels).set(s.new_bytes as f64);
    }
    reg.register("standby_points", "Recovery points per VM", count);
    reg.register(
        "standby_point_newest_bytes",
        "Size of the disks in the newest point per VM",
        newest_bytes,
    );
    reg.register(
        "standby_points_new_bytes",
        "Bytes the VM's points added to their datastores (as recorded by the runs that took them)",
        new_bytes,
    );

    let (age, target, vm_target, met) = (fam(), fam(), fam(), fam());
    for (gname, g) in &ctl.cfg().groups {
        if let Some(t) = g.rpo_target {
            target
                .get_or_create(&l(&[("group", gname)]))
                .set(t.as_secs_f64());
        }
        for vm in &g.members {
            let labels = l(&[("group", gname), ("vm", vm)]);
            let age_s = by_vm
                .get(vm.as_str())
                .map(|s| (now - s.newest).num_milliseconds() as f64 / 1000.0);
            if let Some(a) = age_s {
                age.get_or_create(&labels).set(a);
            }
            if let Some(t) = g.rpo_target {
                vm_target.get_or_create(&labels).set(t.as_secs_f64());
                let ok = age_s.is_some_and(|a| a <= t.as_secs_f64());
                met.get_or_create(&labels).set(if ok { 1.0 } else { 0.0 });
            }
        }
    }
    reg.register(
        "standby_point_age_seconds",
        "Age of the newest recovery point per VM",
        age,
    );
    reg.register(
        "standby_rpo_target_seconds",
        "RPO target of each protection group",
        target,
    );
    reg.register(
        "standby_vm_rpo_target_seconds",
        "RPO target per VM (of each group it is in)",
        vm_target,
    );
    reg.register(
        "standby_rpo_met",
        "1 when the VM's newest point is within its group's RPO target, 0 when not (or no point)",
        met,
    );

    // Sync: a point is due at every datastore of its group (of every
    // group of its VM when it names none); it is done where a copy is.
    let mut sync: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let live = ctl.cfg();
    for ds in live.datastores.keys() {
        sync.insert((ds.as_str(), "done"), 0);
        sync.insert((ds.as_str(), "pending"), 0);
    }
    let due_at = |vm: &str, group: &Option<String>| -> Vec<&str> {
        let groups: Vec<&str> = match group {
            Some(g) if live.groups.contains_key(g) => vec![g.as_str()],
            _ => live.groups_of(vm),
        };
        let mut due: Vec<&str> = groups
            .iter()
            .filter_map(|g| live.groups.get(*g))
            .flat_map(|g| g.datastores.iter().map(String::as_str))
            .collect();
        due.sort_unstable();
        due.dedup();
        due
    };
    // Every due copy starts pending; each copy held moves one to done.
    let (totals, held): (Vec<&CopyCount>, Vec<&CopyCount>) =
        counts.iter().partition(|c| c.datastore.is_none());
    for c in totals.into_iter().chain(held) {
        let due = due_at(&c.vm, &c.group);
        match &c.datastore {
            None => {
                for ds in due {
                    *sync.entry((ds, "pending")).or_default() += c.count;
                }
            }
            Some(ds) => {
                if let Some(ds) = due.into_iter().find(|d| d == ds) {
                    *sync.entry((ds, "done")).or_default() += c.count;
                    let pending = sync.entry((ds, "pending")).or_default();
                    *pending = pending.saturating_sub(c.count);
                }
            }
        }
    }
    let copies = fam();
    for ((ds, state), n) in sync {
        copies
            .get_or_create(&l(&[("datastore", ds), ("state", state)]))
            .set(n as f64);
    }
    reg.register(
        "standby_sync_copies",
        "Copies of points due at each datastore: done (held) or pending (still to sync)",
        copies,
    );
}

/// How many of the newest drill reports and jobs a scrape looks at.
const RECENT: u32 = 200;

/// The last measured RTO and data loss per VM and site, of drills and of
/// failovers.
async fn register_rto(reg: &mut Registry, ctl: &Controller) -> Result<(), ServerError> {
    let (rto, loss, when) = (fam(), fam(), fam());
    let mut seen: std::collections::HashSet<(String, String, &str)> = Default::default();

    // Drills: the newest report per VM and site.
    let reports = ctl
        .watch
        .repo()
        .events(&EventQuery {
            kind: Some("drill.report".into()),
            limit: RECENT,
            ..EventQuery::default()
        })
        .await?;
    for e in reports.iter().rev() {
        let Some(job) = e.labels.get("job").and_then(|j| j.parse::<i64>().ok()) else {
            continue;
        };
        let steps = ctl.runbooks.repo().steps(job).await?;
        // The report is the output of the job's `drill.report` step.
        let reports = steps
            .iter()
            .filter_map(|s| serde_json::from_value::<DrillReport>(s.output.clone()).ok());
        for report in reports {
            let site = report.site.as_str();
            for v in &report.vms {
                let (vm, Some(r)) = (v.vm.as_str(), v.rto_seconds) else {
                    continue;
                };
                if !seen.insert((vm.to_string(), site.to_string(), "drill")) {
                    continue;
                }
                let labels = l(&[("vm", vm), ("site", site), ("kind", "drill")]);
                rto.get_or_create(&labels).set(r);
                loss.get_or_create(&labels).set(v.data_age_seconds);
                when.get_or_create(&labels)
                    .set(e.at.timestamp_millis() as f64 / 1000.0);
            }
        }
    }

    // Failovers: the newest succeeded failover-site run per VM and site.
    // RTO: from the trigger to the VM started at the DR site; data loss:
    // from the restored point to the first failing probe of the site when
    // an alert triggered it, else the point's age at restore (a bound).
    for job in ctl.repo.jobs(RECENT).await? {
        if job.kind != "runbook"
            || job.target != "failover-site"
            || job.status != JobStatus::Succeeded
        {
            continue;
        }
        let run = ctl.runbooks.repo().run(job.id).await?;
        let trigger = &run.run.trigger;
        let Some(t0) = trigger["at_epoch"].as_f64() else {
            continue;
        };
        let lost_at = trigger["alert"]["active_since_epoch"].as_f64();
        for s in ctl.runbooks.repo().steps(job.id).await? {
            let o = &s.output;
            let (Some(vm), Some(site), Some(at), Some(pt)) = (
                o["vm"].as_str(),
                o["site"].as_str(),
                o["at_epoch"].as_f64(),
                o["point_time_epoch"].as_f64(),
            ) else {
                continue;
            };
            if !seen.insert((vm.to_string(), site.to_string(), "failover")) {
                continue;
            }
            let labels = l(&[("vm", vm), ("site", site), ("kind", "failover")]);
            rto.get_or_create(&labels).set(at - t0);
            let d = match lost_at {
                Some(lost) => lost - pt,
                None => o["data_age_seconds"].as_f64().unwrap_or(at - pt),
            };
            loss.get_or_create(&labels).set(d.max(0.0));
            when.get_or_create(&labels).set(at);
        }
    }
    reg.register(
        "standby_rto_seconds",
        "Last measured RTO per VM and site, of a drill (start to the copy answering) or a failover (trigger to the VM started)",
        rto,
    );
    reg.register(
        "standby_data_loss_seconds",
        "Data loss of the last drill (data age) or failover (loss window) per VM and site",
        loss,
    );
    reg.register(
        "standby_rto_measured_timestamp_seconds",
        "When the last RTO per VM and site was measured (Unix time)",
        when,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use standby_store::{Consistency, Datastore, PointMeta};
    use standby_types::config::Config;

    /// The value of the sample `name{labels…}` whose labels include every
    /// pair of `want`.
    fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| {
                want.iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    struct Api {
        base: String,
        http: reqwest::Client,
        token: String,
    }

    impl Api {
        async fn get(&self, path: &str) -> String {
            let r = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.text().await.unwrap()
        }

        async fn post(&self, path: &str, body: Value) -> Value {
            let r = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(status.is_success(), "POST {path}: {status} {text}");
            serde_json::from_str(&text).unwrap()
        }

        /// Wait (at most 60 s) for job `id` to finish; its record.
        async fn finished(&self, id: i64) -> Value {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let job: Value =
                    serde_json::from_str(&self.get(&format!("/api/v1/jobs/{id}")).await).unwrap();
                if job["status"] == "succeeded" || job["status"] == "failed" {
                    return job;
                }
                assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn config(dir: &Path) -> Config {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        std::fs::write(
            dir.join("rules.yaml"),
            "rules:\n  - name: svc-down\n    condition:\n      probe: { probe: svc }\n    severity: critical\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("runbooks")).unwrap();
        // The report step of a drill, fed the outputs of a drill's boot,
        // probe and teardown steps (the drill itself is tested with it).
        std::fs::write(
            dir.join("runbooks/drill-report.yaml"),
            r#"name: drill-report
description: report of a drill of vm a at site2
trigger: { manual: true }
steps:
  - id: report
    action: drill.report
    with:
      site: site1
      boot: [{ vm: a, site: site2, point: "a@x", data_age_seconds: 12.5, restore_seconds: 1.0 }]
      probe: [{ vm: a, rto_seconds: 3.25 }]
      teardown: [{ vm: a, verified: true }]
"#,
        )
        .unwrap();
        let text = format!(
            r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "data"
builtin_rules = false
rules = ["rules.yaml"]
runbooks = ["runbooks"]
[sites.site1]
[sites.site2]
[hosts.h1]
site = "site1"
driver = "process"
disk_dir = "disks1"
[hosts.h2]
site = "site2"
driver = "process"
disk_dir = "disks2"
[datastores.store1]
site = "site1"
path = "store1"
[datastores.store2]
site = "site2"
path = "store2"
[vms.a]
host = "h1"
dr_site = "site2"
command = "sleep"
args = ["60"]
[[vms.a.disks]]
name = "data"
size = "64KiB"
[vms.b]
host = "h1"
command = "sleep"
args = ["60"]
[[vms.b.disks]]
name = "data"
size = "64KiB"
[groups.gold]
members = ["a"]
schedule = "every 24h"
datastores = ["store1", "store2"]
rpo_target = "1h"
[groups.silver]
members = ["b"]
schedule = "every 24h"
datastores = ["store1"]
rpo_target = "1h"
[probes.svc]
kind = "tcp"
target = "127.0.0.1:{closed_port}"
interval = "250ms"
timeout = "200ms"
labels = {{ site = "site1" }}
"#
        );
        std::fs::write(dir.join("standby.toml"), text).unwrap();
        Config::load(&dir.join("standby.toml")).unwrap()
    }

    /// The metric names an expression refers to (`standby_…`).
    fn metric_names(expr: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("standby_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push(&tail[..end]);
            rest = &tail[end..];
        }
        out
    }

    /// The metric families the code registers: the first argument of each
    /// `reg.register(` here and in the front door.
    fn registered_families() -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for src in [
            include_str!("metrics.rs"),
            include_str!("../../frontdoor/src/lib.rs"),
        ] {
            for part in src.split("reg.register(").skip(1) {
                let name = part.split('"').nth(1).unwrap_or_default();
                if name.starts_with("standby_") {
                    out.insert(name.to_string());
                }
            }
        }
        out
    }

    /// The shipped Grafana dashboard (`contrib/grafana/standby.json`)
    /// shows every metric family the code registers and queries no other
    /// (a counter's series end in `_total`); a scrape with samples of
    /// every non-front-door family checks the series names themselves
    /// (`scrape_covers_jobs_points_sync_alerts_probes_rpo_rto`).
    fn dashboard_series() -> std::collections::BTreeSet<String> {
        let dashboard: Value =
            serde_json::from_str(include_str!("../../../contrib/grafana/standby.json")).unwrap();
        let mut out = std::collections::BTreeSet::new();
        for p in dashboard["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                let names = metric_names(expr);
                assert!(
                    !names.is_empty(),
                    "{}: {expr} queries no standby metric",
                    p["title"]
                );
                out.extend(names.into_iter().map(String::from));
            }
        }
        out
    }

    #[test]
    fn the_grafana_dashboard_shows_every_registered_metric_and_no_other() {
        let families = registered_families();
        assert!(families.len() > 25, "{families:?}");
        let series = dashboard_series();
        for s in &series {
            let family = s.strip_suffix("_total").unwrap_or(s);
            assert!(
                families.contains(family),
                "the dashboard queries {s}, which nothing registers"
            );
        }
        let shown: std::collections::BTreeSet<&str> = series
            .iter()
            .map(|s| s.strip_suffix("_total").unwrap_or(s))
            .collect();
        let missing: Vec<_> = families
            .iter()
            .filter(|f| !shown.contains(f.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "no panel of the dashboard shows {missing:?}"
        );
    }

    /// A scrape covers jobs, points, sync, alerts, probes, RPO and the RTO
    /// of a drill and of a failover, each from what really happened: a
    /// protection run, a point not yet synced, a probe failing into a
    /// firing alert, a drill report and a real failover of site1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrape_covers_jobs_points_sync_alerts_probes_rpo_rto() {
        // reqwest has no TLS provider of its own: ring, as the binaries do.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let server = crate::start(config(dir.path())).await.unwrap();
        let api = Api {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
            // The admin token the controller wrote at its first start.
            token: std::fs::read_to_string(dir.path().join("data/admin.token"))
                .unwrap()
                .trim()
                .to_string(),
        };

        api.post("/api/v1/vms/a/start", json!({})).await;
        let run = api.post("/api/v1/groups/gold/run", json!({})).await;
        let protect = api.finished(run["job"].as_i64().unwrap()).await;
        assert_eq!(protect["status"], "succeeded", "{protect}");
        assert_eq!(
            (&protect["kind"], &protect["target"]),
            (&json!("runbook"), &json!("protect")),
            "{protect}"
        );

        let drill = api
            .post("/api/v1/runbooks/drill-report/run", json!({}))
            .await;
        let drill = api.finished(drill["job"].as_i64().unwrap()).await;
        assert_eq!(drill["status"], "succeeded", "{drill}");

        let failover = api
            .post(
                "/api/v1/runbooks/failover-site/run",
                json!({"params": {"site": "site1"}}),
            )
            .await;
        let failover = api.finished(failover["job"].as_i64().unwrap()).await;
        assert_eq!(failover["status"], "succeeded", "{failover}");

        // A point of a in store1 that is not yet synced to store2.
        let store = Datastore::open(&dir.path().join("store1")).unwrap();
        tokio::task::spawn_blocking(move || {
            let w = store
                .begin_point(PointMeta {
                    vm: "a".into(),
                    site: "site2".into(),
                    consistency: Consistency::Crash,
                    config: json!({}),
                    labels: [("group".to_string(), "gold".to_string())].into(),
                })
                .unwrap();
            w.commit().unwrap();
        })
        .await
        .unwrap();
        server.ctl.rescan().await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(15);
        let text = loop {
            let text = api.get("/metrics").await;
            if sample(&text, "standby_alerts_firing", &[("rule", "svc-down")]).is_some() {
                break text;
            }
            assert!(Instant::now() < deadline, "svc-down never fired:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let v = |name: &str, labels: &[(&str, &str)]| {
            sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
        };

        // The protection run is a job of the `protect` runbook, as the
        // drill report and the failover are.
        assert_eq!(
            v(
                "standby_jobs",
                &[("kind", "runbook"), ("status", "succeeded")]
            ),
            3.0
        );

        assert_eq!(v("standby_points", &[("vm", "a")]), 2.0);
        assert_eq!(v("standby_point_newest_bytes", &[("vm", "a")]), 0.0);
        assert!(sample(&text, "standby_points", &[("vm", "b")]).is_none());
        assert!(v("standby_point_age_seconds", &[("vm", "a")]) < 60.0);

        assert_eq!(
            v(
                "standby_sync_copies",
                &[("datastore", "store1"), ("state", "done")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "standby_sync_copies",
                &[("datastore", "store2"), ("state", "done")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "standby_sync_copies",
                &[("datastore", "store2"), ("state", "pending")]
            ),
            1.0
        );

        assert_eq!(
            v(
                "standby_alerts_firing",
                &[("rule", "svc-down"), ("severity", "critical")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "standby_probe_up",
                &[("probe", "svc"), ("vantage", "controller")]
            ),
            0.0
        );

        assert_eq!(v("standby_rpo_met", &[("group", "gold"), ("vm", "a")]), 1.0);
        assert_eq!(
            v("standby_rpo_met", &[("group", "silver"), ("vm", "b")]),
            0.0
        );
        assert_eq!(v("standby_vm_rpo_target_seconds", &[("vm", "b")]), 3600.0);

        let drill = [("vm", "a"), ("site", "site1"), ("kind", "drill")];
        assert_eq!(v("standby_rto_seconds", &drill), 3.25);
        assert_eq!(v("standby_data_loss_seconds", &drill), 12.5);
        let failover = [("vm", "a"), ("site", "site2"), ("kind", "failover")];
        let rto = v("standby_rto_seconds", &failover);
        assert!(rto > 0.0 && rto < 60.0, "failover rto {rto}");
        let loss = v("standby_data_loss_seconds", &failover);
        assert!((0.0..120.0).contains(&loss), "failover data loss {loss}");
        assert!(v("standby_rto_measured_timestamp_seconds", &failover) > 1.7e9);

        // Every family with samples here is queried by the dashboard under
        // the name of its series.
        let series = dashboard_series();
        for line in text.lines() {
            let Some(name) = line.split(['{', ' ']).next() else {
                continue;
            };
            if name.starts_with("standby_") && !name.starts_with("standby_frontdoor_") {
                assert!(series.contains(name), "the dashboard does not query {name}");
            }
        }

        server.stop().await;
    }
}
