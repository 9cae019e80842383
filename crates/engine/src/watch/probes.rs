//! Probes the controller runs: the configured network probes whose `from`
//! includes `controller`, and probes made from the inventory: agent
//! heartbeats, VM state from the driver and the age of each protected VM's
//! newest point against its group's RPO target.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use standby_hv::VmState;
use standby_types::watch::{CONTROLLER_VANTAGE, Labels, ProbeResult};

use crate::controller::Controller;

/// How often generated probes are evaluated.
const GENERATED_INTERVAL: Duration = Duration::from_secs(1);

/// Run the probes whose vantage is the controller, until the controller
/// stops or a reload runs them anew (the ones running stop first).
pub(super) fn run_controller_probes(ctl: &Arc<Controller>) {
    let stop = ctl.cancel.child_token();
    if let Some(old) = ctl
        .watch
        .controller_probes
        .lock()
        .expect("probes lock")
        .replace(stop.clone())
    {
        old.cancel();
    }
    for spec in super::agents::probes_for(ctl, CONTROLLER_VANTAGE) {
        let (ctl2, stop) = (ctl.clone(), stop.clone());
        ctl.tasks.spawn(async move {
            let mut tick = tokio::time::interval(spec.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let at = Utc::now();
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    o = standby_monitor::probe::run(&spec) => o,
                };
                ctl2.watch.record(standby_monitor::probe::result(
                    &spec,
                    CONTROLLER_VANTAGE,
                    at,
                    &outcome,
                ));
            }
        });
    }
}

fn generated(
    probe: String,
    kind: &str,
    ok: bool,
    detail: String,
    mut labels: Labels,
    stale_after: Duration,
) -> ProbeResult {
    labels.insert("probe".into(), probe.clone());
    labels.insert("kind".into(), kind.into());
    labels.insert("vantage".into(), CONTROLLER_VANTAGE.into());
    ProbeResult {
        probe,
        vantage: CONTROLLER_VANTAGE.into(),
        at: Utc::now(),
        ok,
        latency_ms: 0,
        detail,
        labels,
        stale_after,
    }
}

pub(super) async fn run_generated(ctl: Arc<Controller>) {
    let mut tick = tokio::time::interval(GENERATED_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stale = GENERATED_INTERVAL * 5;
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        record_all(&ctl, heartbeats(&ctl, stale)).await;
        record_all(&ctl, vm_states(&ctl, stale).await).await;
        record_all(&ctl, point_ages(&ctl, stale).await).await;
        record_all(&ctl, damage_probes(&ctl, stale).await).await;
    }
}

/// Take in one result per agent or VM, letting other tasks (API
/// requests) run between batches: 10,000 VMs are 10,000 results a second.
async fn record_all(ctl: &Controller, results: Vec<ProbeResult>) {
    for (i, r) in results.into_iter().enumerate() {
        ctl.watch.record_changes(r);
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
}

fn heartbeats(ctl: &Controller, stale: Duration) -> Vec<ProbeResult> {
    let now = Utc::now();
    let seen = ctl.watch.agents.lock().expect("agents lock").clone();
    let mut out = Vec::new();
    for (name, a) in &ctl.cfg().agents {
        let limit =
            chrono::Duration::from_std(a.heartbeat * 3).unwrap_or(chrono::Duration::seconds(3));
        let (ok, detail) = match seen.get(name) {
            Some(s) => {
                let age = now - s.last_seen;
                (
                    age <= limit,
                    format!(
                        "last heartbeat {:.1}s ago",
                        age.num_milliseconds() as f64 / 1000.0
                    ),
                )
            }
            // No evidence yet: give a starting agent three intervals.
            None if now - ctl.watch.started <= limit => continue,
            None => (false, "no heartbeat since the controller started".into()),
        };
        let mut labels = Labels::new();
        labels.insert("agent".into(), name.clone());
        labels.insert("site".into(), a.site.clone());
        labels.insert("scope".into(), "host".into());
        labels.insert(
            "host".into(),
            a.host.clone().unwrap_or_else(|| format!("agent:{name}")),
        );
        out.push(generated(
            format!("heartbeat:{name}"),
            "heartbeat",
            ok,
            detail,
            labels,
            stale,
        ));
    }
    out
}

/// Hosts asked at once by the VM-state probe.
const STATUS_CALLS_AT_ONCE: usize = 16;

/// Each VM's state on its active host: one call per host (a remote agent
/// answers for all its VMs at once), a few hosts at a time.
async fn vm_states(ctl: &Arc<Controller>, stale: Duration) -> Vec<ProbeResult> {
    use futures::StreamExt;
    let Ok(vms) = ctl.repo.vms().await else {
        return Vec::new();
    };
    let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for vm in vms.iter() {
        by_host
            .entry(vm.active_host.clone())
            .or_default()
            .push(vm.name.clone());
    }
    type Answer = Result<std::collections::HashMap<String, standby_hv::VmStatus>, String>;
    let answers: std::collections::HashMap<String, Answer> = futures::stream::iter(by_host)
        .map(|(host, names)| {
            let ctl = ctl.clone();
            async move {
                // A host the configuration does not know is not probed.
                let agent = ctl.agent(&host).ok()?;
                let r = agent
                    .statuses(&names)
                    .await
                    .map(|l| l.into_iter().collect())
                    .map_err(|e| e.to_string());
                Some((host, r))
            }
        })
        .buffer_unordered(STATUS_CALLS_AT_ONCE)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let mut out = Vec::new();
    for vm in vms.iter() {
        let Some(answer) = answers.get(&vm.active_host) else {
            continue;
        };
        // A host that does not answer says nothing of its VMs: no result
        // (the last one goes stale); the host's heartbeat probe is what
        // tells that it is gone. Only a crash the host reports fails.
        let st = match answer.as_ref().map(|m| m.get(&vm.name)) {
            Ok(Some(st)) => st,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(vm = %vm.name, host = %vm.active_host, "VM state unknown: {e}");
                continue;
            }
        };
        let (ok, detail) = match st.state {
            VmState::Crashed => (
                false,
                format!(
                    "crashed ({})",
                    st.exit.as_deref().unwrap_or("no exit status")
                ),
            ),
            s => (true, s.to_string()),
        };
        let mut labels = Labels::new();
        labels.insert("vm".into(), vm.name.clone());
        labels.insert("site".into(), vm.active_site.clone());
        labels.insert("host".into(), vm.active_host.clone());
        labels.insert("scope".into(), "vm".into());
        out.push(generated(
            format!("vm:{}", vm.name),
            "vm",
            ok,
            detail,
            labels,
            stale,
        ));
    }
    out
}

/// One `damage` result per datastore: failing while it holds damaged
/// copies of points (naming them), passing otherwise.
async fn damage_probes(ctl: &Controller, stale: std::time::Duration) -> Vec<ProbeResult> {
    let Ok(damaged) = ctl.repo.damaged_copies().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, d) in &ctl.cfg().datastores {
        let mine: Vec<&str> = damaged
            .iter()
            .filter(|c| c.datastore == *name)
            .map(|c| c.point.as_str())
            .collect();
        let detail = match mine.len() {
            0 => "no damaged copy known".to_string(),
            n => format!(
                "{n} damaged point copies: {}{}",
                mine.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if n > 5 { ", ..." } else { "" }
            ),
        };
        let mut labels = Labels::new();
        labels.insert("datastore".into(), name.clone());
        labels.insert("site".into(), d.site.clone());
        labels.insert("scope".into(), "datastore".into());
        out.push(generated(
            format!("damage:{name}"),
            "damage",
            mine.is_empty(),
            detail,
            labels,
            stale,
        ));
    }
    out
}

async fn point_ages(ctl: &Controller, stale: Duration) -> Vec<ProbeResult> {
    let live = ctl.cfg();
    let groups: Vec<_> = live
        .groups
        .iter()
        .filter_map(|(n, g)| g.rpo_target.map(|t| (n, g, t)))
        .collect();
    if groups.is_empty() {
        return Vec::new();
    }
    let (Ok(summary), Ok(vms)) = (ctl.repo.point_summary().await, ctl.repo.vms().await) else {
        return Vec::new();
    };
    let newest: std::collections::HashMap<&str, chrono::DateTime<Utc>> =
        summary.iter().map(|s| (s.vm.as_str(), s.newest)).collect();
    let active: std::collections::HashMap<&str, &str> = vms
        .iter()
        .map(|v| (v.name.as_str(), v.active_site.as_str()))
        .collect();
    let now = Utc::now();
    let mut out = Vec::new();
    for (gname, g, target) in groups {
        let target_c = chrono::Duration::from_std(target).unwrap_or(chrono::Duration::MAX);
        for vm in &g.members {
            let (ok, detail) = match newest.get(vm.as_str()).copied() {
                Some(t) => {
                    let age = now - t;
                    (
                        age <= target_c,
                        format!(
                            "newest point {:.1}s old, target {}",
                            age.num_milliseconds() as f64 / 1000.0,
                            humantime::format_duration(target)
                        ),
                    )
                }
                None if now - ctl.watch.started <= target_c => continue,
                None => (false, "no recovery point yet".into()),
            };
            let mut labels = Labels::new();
            labels.insert("vm".into(), vm.clone());
            labels.insert("group".into(), gname.clone());
            labels.insert("scope".into(), "vm".into());
            if let Some(site) = active.get(vm.as_str()) {
                labels.insert("site".into(), site.to_string());
            }
            out.push(generated(
                format!("point_age:{gname}:{vm}"),
                "point_age",
                ok,
                detail,
                labels,
                stale,
            ));
        }
    }
    out
}
