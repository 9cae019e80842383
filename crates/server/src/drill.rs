//! DR drills: boot a copy of a VM from a recovery point at its DR site,
//! inside a network namespace of its own, probe it, tear it down and prove
//! the teardown, without touching production.
//!
//! # Isolation
//! The copy runs in a fresh namespace `sbd-<id>` that has only a loopback
//! interface: it cannot reach production, production cannot reach it, and
//! the front door never points at it. Its disks are restored into the
//! drill's own directory (`<data_dir>/drills/<id>/`), it runs under its own
//! process driver (own pid files) as `<vm>-drill`, and the VM's placement is
//! never changed. A command that already enters a namespace
//! (`ip netns exec NS …`, as a lab's per-site configuration may say) is
//! unwrapped first, so the copy can never join a production namespace.
//!
//! # Idempotence
//! Every call can be repeated (a runbook step resumed after a controller
//! restart): `start` returns the running drill as recorded in
//! `drill.json`, `stop` of a drill already gone verifies that nothing is
//! left and succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_hv::{DiskSpec, Driver, ProcessDriver, VmSpec};
use standby_store::PointId;
use standby_types::watch::{ProbeCheck, ProbeSpec};

use crate::controller::Controller;
use crate::error::ServerError;
use crate::jobs::JobProgress;

/// What a running drill is, as recorded in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillState {
    pub id: String,
    pub vm: String,
    pub site: String,
    pub point: String,
    pub point_time: DateTime<Utc>,
    pub datastore: String,
    pub netns: String,
    pub dir: PathBuf,
    /// The copy's name under the drill's process driver.
    pub copy: String,
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
    /// Age of the point's data when the drill started.
    pub data_age_seconds: f64,
    pub restore_seconds: f64,
    pub bytes: u64,
}

fn check_id(id: &str) -> Result<(), ServerError> {
    if id.is_empty()
        || id.len() > 40
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ServerError::BadRequest(format!(
            "bad drill id '{id}': use 1 to 40 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

fn drill_dir(ctl: &Controller, id: &str) -> PathBuf {
    ctl.cfg.controller.data_dir.join("drills").join(id)
}

fn netns_name(id: &str) -> String {
    format!("sbd-{id}")
}

fn driver(dir: &Path) -> ProcessDriver {
    ProcessDriver::with_state_dir(dir.join("run"))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("drill.json")
}

fn read_state(dir: &Path) -> Result<Option<DrillState>, ServerError> {
    match std::fs::read(state_path(dir)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            ServerError::Internal(format!(
                "unreadable drill record {}: {e}",
                state_path(dir).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::Internal(format!(
            "unable to read {}: {e}",
            state_path(dir).display()
        ))),
    }
}

fn ip(args: &[&str]) -> Result<String, ServerError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        ServerError::Internal(format!(
            "unable to run ip {} (install iproute2): {e}",
            args.join(" ")
        ))
    })?;
    if !out.status.success() {
        return Err(ServerError::Internal(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Drop a leading `ip netns exec NS` from a command line.
fn unwrap_netns(command: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    let is_ip = command.file_name().is_some_and(|n| n == "ip");
    if is_ip && args.len() > 3 && args[0] == "netns" && args[1] == "exec" {
        return (PathBuf::from(&args[3]), args[4..].to_vec());
    }
    (command.to_path_buf(), args.to_vec())
}

/// The recorded state of drill `id`, if it runs.
pub fn state(ctl: &Controller, id: &str) -> Result<Option<DrillState>, ServerError> {
    check_id(id)?;
    read_state(&drill_dir(ctl, id))
}

/// Restore the newest intact point of `vm` at `site` (or `point`) into the
/// drill's directory and boot it in the drill's namespace.
pub async fn start(
    ctl: &Arc<Controller>,
    id: &str,
    vm: &str,
    site: &str,
    point: Option<&str>,
    progress: Arc<JobProgress>,
) -> Result<DrillState, ServerError> {
    check_id(id)?;
    let dir = drill_dir(ctl, id);
    if let Some(st) = read_state(&dir)? {
        if st.vm != vm {
            return Err(ServerError::Conflict(format!(
                "drill {id} already runs vm {}, not {vm}",
                st.vm
            )));
        }
        return Ok(st);
    }
    if !ctl.cfg.sites.contains_key(site) {
        return Err(ServerError::not_found("site", site));
    }
    let host = ctl
        .cfg
        .first_host_of_site(site)
        .ok_or_else(|| ServerError::BadRequest(format!("site {site} has no host")))?
        .to_string();
    let prod = ctl.agent(&host)?.spec(&ctl.cfg, vm)?;
    let started = Instant::now();
    let started_at = Utc::now();
    let (pid, point_time, datastore) = match point {
        Some(p) => {
            let rec = ctl.repo.point(p).await?;
            let ds = rec
                .copies
                .iter()
                .find(|d| ctl.cfg.datastores.get(*d).is_some_and(|c| c.site == site))
                .or(rec.copies.first())
                .cloned()
                .ok_or_else(|| ServerError::Conflict(format!("point {p} has no copy")))?;
            let id: PointId = p
                .parse()
                .map_err(|e| ServerError::BadRequest(format!("bad point id '{p}': {e}")))?;
            (id, rec.time, ds)
        }
        None => {
            let (m, ds) = crate::restore::newest_readable(ctl, vm, Some(site)).await?;
            (m.id, m.time, ds)
        }
    };
    let data_age_seconds = (started_at - point_time).num_milliseconds() as f64 / 1000.0;
    let disks_dir = dir.join("disks");
    std::fs::create_dir_all(&disks_dir).map_err(|e| {
        ServerError::Internal(format!("unable to create {}: {e}", disks_dir.display()))
    })?;
    // Restore every disk into the drill's directory.
    let store = ctl.store(&datastore)?;
    let disks: Vec<DiskSpec> = prod
        .disks
        .iter()
        .map(|d| DiskSpec {
            name: d.name.clone(),
            path: disks_dir.join(format!("{}.img", d.name)),
            size: d.size,
        })
        .collect();
    let bytes = {
        let (store, pid, disks, progress) =
            (store.clone(), pid.clone(), disks.clone(), progress.clone());
        let vm = vm.to_string();
        tokio::task::spawn_blocking(move || -> Result<u64, ServerError> {
            let manifest = store.load_manifest(&pid)?;
            progress.stage(
                format!("{vm}: restoring point {pid} for the drill"),
                manifest.disks.iter().map(|d| d.size).sum(),
            );
            let mut bytes = 0;
            for d in &disks {
                bytes += store
                    .restore_disk(&pid, &d.name, &d.path, progress.as_ref())?
                    .size;
            }
            Ok(bytes)
        })
        .await??
    };
    let restore_seconds = started.elapsed().as_secs_f64();
    // The namespace: loopback only.
    let netns = netns_name(id);
    if !netns_exists(&netns) {
        ip(&["netns", "add", &netns])?;
    }
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    // The copy's command line: production's, unwrapped from any namespace,
    // with the drill's disk paths.
    let (command, mut args) = unwrap_netns(&prod.command, &prod.args);
    for (p, d) in prod.disks.iter().zip(&disks) {
        let (from, to) = (p.path.to_string_lossy(), d.path.to_string_lossy());
        for a in &mut args {
            *a = a.replace(from.as_ref(), to.as_ref());
        }
    }
    let mut ns_args = vec![
        "netns".to_string(),
        "exec".into(),
        netns.clone(),
        command.to_string_lossy().into_owned(),
    ];
    ns_args.extend(args);
    let copy = format!("{vm}-drill");
    let spec = VmSpec {
        name: copy.clone(),
        command: PathBuf::from("ip"),
        args: ns_args,
        env: prod.env.clone(),
        disks,
        workdir: dir.clone(),
        qemu: None,
    };
    progress.stage(format!("{vm}: booting the copy in namespace {netns}"), 0);
    let status = driver(&dir).start(&spec).await?;
    let st = DrillState {
        id: id.to_string(),
        vm: vm.to_string(),
        site: site.to_string(),
        point: pid.to_string(),
        point_time,
        datastore,
        netns,
        dir: dir.clone(),
        copy,
        pid: status.pid,
        started_at,
        data_age_seconds,
        restore_seconds,
        bytes,
    };
    let tmp = dir.join("drill.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&st).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, state_path(&dir)))
        .map_err(|e| ServerError::Internal(format!("unable to record drill {id}: {e}")))?;
    tracing::info!(drill = id, vm, site, point = %st.point, netns = %st.netns, "drill copy booted");
    Ok(st)
}

/// Probe the drill's copy from inside its namespace until `check` passes
/// or `timeout` runs out. Returns the time from the drill's start to the
/// first passing probe (the drill's RTO) and the probe's latency.
pub async fn probe(
    ctl: &Controller,
    id: &str,
    check: ProbeCheck,
    timeout: Duration,
) -> Result<serde_json::Value, ServerError> {
    check_id(id)?;
    let st = read_state(&drill_dir(ctl, id))?.ok_or_else(|| ServerError::not_found("drill", id))?;
    let spec = ProbeSpec {
        name: format!("drill-{id}"),
        check,
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(1),
        attempts: 2,
        labels: Default::default(),
    };
    let deadline = Instant::now() + timeout;
    loop {
        let o = standby_monitor::probe::run_in_netns(&st.netns, &spec)
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        if o.ok {
            let rto = (Utc::now() - st.started_at).num_milliseconds() as f64 / 1000.0;
            return Ok(serde_json::json!({
                "drill": id,
                "rto_seconds": rto,
                "latency_seconds": o.latency.as_secs_f64(),
                "detail": o.detail,
            }));
        }
        if Instant::now() >= deadline {
            return Err(ServerError::Conflict(format!(
                "the drill copy of {} did not pass its probe within {timeout:?} (last: {})",
                st.vm, o.detail
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stop the copy, delete its namespace and files, and verify each is gone.
pub async fn stop(ctl: &Controller, id: &str) -> Result<serde_json::Value, ServerError> {
    check_id(id)?;
    let dir = drill_dir(ctl, id);
    let netns = netns_name(id);
    let st = read_state(&dir)?;
    let mut checks = Vec::new();
    if let Some(st) = &st {
        let d = driver(&dir);
        d.stop(&st.copy).await?;
        let status = d.status(&st.copy).await?;
        if status.is_alive() {
            return Err(ServerError::Conflict(format!(
                "drill {id}: the copy of {} is still {} after stop",
                st.vm, status.state
            )));
        }
        if let Some(pid) = st.pid
            && Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(&st.netns))
        {
            return Err(ServerError::Conflict(format!(
                "drill {id}: process {pid} of the copy is still alive"
            )));
        }
        checks.push(format!("copy {} stopped", st.copy));
    }
    if netns_exists(&netns) {
        ip(&["netns", "del", &netns])?;
    }
    if netns_exists(&netns) {
        return Err(ServerError::Conflict(format!(
            "drill {id}: namespace {netns} still exists after deletion"
        )));
    }
    checks.push(format!("namespace {netns} gone"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| {
            ServerError::Internal(format!("unable to delete {}: {e}", dir.display()))
        })?;
    }
    if dir.exists() {
        return Err(ServerError::Conflict(format!(
            "drill {id}: {} still exists after deletion",
            dir.display()
        )));
    }
    checks.push(format!("{} deleted", dir.display()));
    Ok(serde_json::json!({
        "drill": id,
        "vm": st.as_ref().map(|s| s.vm.clone()),
        "verified": true,
        "checks": checks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("12-pbx1").is_ok());
        for bad in ["", "a/b", "x y", &"a".repeat(41)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_namespace_prefix_is_dropped() {
        let args: Vec<String> = ["netns", "exec", "site2", "/bin/vnf", "--disk", "d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (c, a) = unwrap_netns(Path::new("ip"), &args);
        assert_eq!(c, PathBuf::from("/bin/vnf"));
        assert_eq!(a, vec!["--disk", "d"]);
        let (c, a) = unwrap_netns(Path::new("/bin/vnf"), &args[4..]);
        assert_eq!(c, PathBuf::from("/bin/vnf"));
        assert_eq!(a, vec!["--disk", "d"]);
    }
}
