//! DR drills: boot a copy of a VM from a recovery point at its DR site,
//! inside a network namespace of its own, probe it, tear it down and prove
//! the teardown, without touching production.
//!
//! This module is the orchestration: which host (the DR site's first),
//! which point (the newest intact one there, or the one asked for), and
//! the controller's record of each drill. The host that runs the copy,
//! in-process or a remote `standby agent`, does the rest through the
//! [`standby_agent::Agent`] drill operations ([`standby_agent::drill`]:
//! the restore into the drill's directory, the copy's driver in namespace
//! `sbd-<id>`, the probe from inside it, the verified teardown). Nothing
//! here asks whether the host is local.
//!
//! # Records
//! `<data_dir>/drills/<id>.json` names the host of drill `<id>` (written
//! before the host is asked to start it, so a start cut off midway is
//! still torn down there) and, once started, its [`DrillState`]. It is
//! removed after a verified teardown.
//!
//! # Idempotence
//! Every call can be repeated (a runbook step resumed after a controller
//! restart): `start` returns the recorded drill, or asks its host again
//! (which returns the running copy or clears an interrupted start), and
//! `stop` of a drill already gone succeeds after the host verified that
//! nothing is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_agent::{DrillRequest, StoreRef};
use standby_types::outcome::{DrillProbed, DrillStopped, PointSkipped};
use standby_types::watch::ProbeCheck;

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};
use crate::jobs::JobProgress;

pub use standby_agent::drill::{QEMU_BOOT_KVM, QEMU_BOOT_TCG};
pub use standby_types::outcome::{CopyKind, DrillState};

/// The controller's record of a drill.
#[derive(Debug, Serialize, Deserialize)]
struct DrillRecord {
    host: String,
    vm: String,
    #[serde(default)]
    state: Option<DrillState>,
}

fn check_id(id: &str) -> Result<(), EngineError> {
    Ok(standby_agent::drill::check_id(id)?)
}

fn record_path(ctl: &Controller, id: &str) -> PathBuf {
    ctl.cfg()
        .controller
        .data_dir
        .join("drills")
        .join(format!("{id}.json"))
}

fn read_record(path: &Path) -> Result<Option<DrillRecord>, EngineError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            EngineError::Internal(format!("unreadable drill record {}: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::Internal(format!(
            "unable to read {}: {e}",
            path.display()
        ))),
    }
}

fn write_record(path: &Path, rec: &DrillRecord) -> Result<(), EngineError> {
    let io = |e: std::io::Error| {
        EngineError::Internal(format!("unable to record drill in {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The recorded state of drill `id`, if it runs.
pub fn state(ctl: &Controller, id: &str) -> Result<Option<DrillState>, EngineError> {
    check_id(id)?;
    Ok(read_record(&record_path(ctl, id))?.and_then(|r| r.state))
}

/// Restore the newest intact point of `vm` at `site` (or `point`) into a
/// drill directory at the site's host and boot it in the drill's
/// namespace there. `probed`: the check the drill's probe will run
/// against the copy when none is given (a libvirt VM's copy gets its port
/// forwarded, see [`expose_probed_port`]).
pub async fn start(
    ctl: &Arc<Controller>,
    id: &str,
    vm: &str,
    site: &str,
    point: Option<&str>,
    probed: Option<&ProbeCheck>,
    progress: Arc<JobProgress>,
) -> Result<DrillState, EngineError> {
    check_id(id)?;
    let path = record_path(ctl, id);
    let recorded = read_record(&path)?;
    if let Some(rec) = &recorded {
        if rec.vm != vm {
            return Err(EngineError::Conflict(format!(
                "drill {id} already runs vm {}, not {vm}",
                rec.vm
            )));
        }
        if let Some(st) = &rec.state {
            return Ok(st.clone());
        }
    }
    if !ctl.cfg().sites.contains_key(site) {
        return Err(EngineError::not_found("site", site));
    }
    let host = match recorded {
        Some(rec) => rec.host,
        None => ctl
            .cfg()
            .first_host_of_site(site)
            .ok_or_else(|| EngineError::BadRequest(format!("site {site} has no host")))?
            .to_string(),
    };
    let agent = ctl.agent(&host)?;
    let mut prod = agent.spec(&ctl.cfg(), vm)?;
    if prod.libvirt.is_some()
        && let Some(check) = probed
    {
        expose_probed_port(check, &mut prod);
    }
    // The point asked for; else the newest, then older ones while no copy
    // the host reads restores them (the drill says which it skipped).
    let candidates: Vec<(String, DateTime<Utc>, Vec<String>)> = match point {
        Some(p) => {
            let rec = ctl.repo.point(p).await?;
            vec![(p.to_string(), rec.time, rec.copies)]
        }
        None => {
            let mut all = ctl.repo.points(Some(vm)).await?;
            all.sort_by_key(|p| std::cmp::Reverse(p.time));
            all.into_iter().map(|p| (p.id, p.time, p.copies)).collect()
        }
    };
    if candidates.is_empty() {
        return Err(EngineError::Conflict(format!("vm {vm} has no point")));
    }
    write_record(
        &path,
        &DrillRecord {
            host: host.clone(),
            vm: vm.to_string(),
            state: None,
        },
    )?;
    let mut skipped: Vec<PointSkipped> = Vec::new();
    let mut started = None;
    'points: for (pid, point_time, copies) in candidates {
        // Copies the drill host reads itself, at its site first.
        let (mut reached, far): (Vec<String>, Vec<String>) = copies
            .into_iter()
            .filter(|d| ctl.host_reaches(&host, d))
            .partition(|d| ctl.cfg().datastores.get(d).is_some_and(|c| c.site == site));
        reached.extend(far);
        let mut tried = Vec::new();
        if reached.is_empty() {
            tried.push(format!("no copy that host {host} reads"));
        }
        for datastore in reached {
            let live = ctl.cfg();
            let Some(config) = live.datastores.get(&datastore) else {
                tried.push(format!("{datastore}: not configured"));
                continue;
            };
            let handle = match ctl.store_handle(&datastore) {
                Ok(h) => h,
                Err(e) => {
                    tried.push(format!("{datastore}: {}", error_chain(&e)));
                    continue;
                }
            };
            let store = StoreRef {
                name: &datastore,
                config,
                store: handle.here().cloned(),
            };
            let req = DrillRequest {
                id: id.to_string(),
                vm: vm.to_string(),
                site: site.to_string(),
                point: pid.clone(),
                point_time,
                datastore: datastore.clone(),
                spec: prod.clone(),
            };
            match agent.drill_start(req, &store, progress.clone()).await {
                Ok(st) => {
                    started = Some(st);
                    break 'points;
                }
                Err(e) if e.is_datastore() => {
                    tracing::warn!(drill = id, point = %pid, datastore = %datastore, "drill: this copy does not restore: {}", error_chain(&e));
                    tried.push(format!("{datastore}: {}", error_chain(&e)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if point.is_some() {
            return Err(EngineError::PointUnreadable { point: pid, tried });
        }
        skipped.push(PointSkipped {
            point: pid,
            time: point_time,
            reasons: tried,
        });
    }
    let Some(mut st) = started else {
        let each: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        return Err(EngineError::Conflict(format!(
            "vm {vm}: no point restores for the drill at host {host}: {}",
            each.join(", ")
        )));
    };
    st.skipped = skipped;
    write_record(
        &path,
        &DrillRecord {
            host,
            vm: vm.to_string(),
            state: Some(st.clone()),
        },
    )?;
    Ok(st)
}

/// A libvirt VM has no port forwards (its services answer on the VM's own
/// address), so its drill copy, a QEMU copy in the drill's namespace,
/// gets one: the port its default probe checks (its first service's
/// backend port at the drill's site, else its probe's), on the copy's
/// loopback, to the same port of the guest. Nothing to forward when the
/// VM has no service and no probe (then the drill's probe needs `kind`
/// and `port`, and fails the same way for any VM).
fn expose_probed_port(check: &ProbeCheck, prod: &mut standby_hv::VmSpec) {
    use standby_hv::qemu::PortForward;
    let port_of = |target: &str| {
        target
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    };
    let forward = match check {
        ProbeCheck::Sip { target } | ProbeCheck::Udp { target, .. } => {
            port_of(target).map(|p| PortForward::udp(p, p))
        }
        ProbeCheck::Tcp { target } => port_of(target).map(|p| PortForward::tcp(p, p)),
        ProbeCheck::Http { url, .. } => reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.port_or_known_default())
            .map(|p| PortForward::tcp(p, p)),
    };
    if let (Some(f), Some(q)) = (forward, prod.qemu.as_mut())
        && !q
            .forwards
            .iter()
            .any(|x| x.protocol == f.protocol && x.host_port == f.host_port)
    {
        tracing::info!(
            vm = %prod.name,
            port = f.host_port,
            "the libvirt vm's drill copy forwards its probed port"
        );
        q.forwards.push(f);
    }
}

/// Probe the drill's copy from inside its namespace, at its host, until
/// `check` passes or `timeout` runs out (at least the copy's boot
/// allowance: a QEMU copy boots slowly). Returns the time from the
/// drill's start to the first passing probe (the drill's RTO) and the
/// probe's latency.
pub async fn probe(
    ctl: &Controller,
    id: &str,
    check: ProbeCheck,
    timeout: Duration,
) -> Result<DrillProbed, EngineError> {
    check_id(id)?;
    let rec = read_record(&record_path(ctl, id))?
        .filter(|r| r.state.is_some())
        .ok_or_else(|| EngineError::not_found("drill", id))?;
    let probed = ctl
        .agent(&rec.host)?
        .drill_probe(id, check, timeout)
        .await
        .map_err(|e| match e {
            // Said as the engine says a wait that ran out.
            standby_agent::AgentError::Timeout(m) => EngineError::Timeout(m),
            e => e.into(),
        })?;
    Ok(probed)
}

/// Stop the copy at its host, delete its namespace and files there, and
/// verify each is gone; then forget the drill.
pub async fn stop(ctl: &Controller, id: &str) -> Result<DrillStopped, EngineError> {
    check_id(id)?;
    let path = record_path(ctl, id);
    let host = match read_record(&path)? {
        Some(rec) => rec.host,
        // Never recorded (or already torn down): the in-process hosts
        // share one drill directory; make sure nothing is left there.
        None => match ctl.agents.iter().find(|(_, a)| a.remote_name().is_none()) {
            Some((h, _)) => h.clone(),
            None => {
                return Ok(DrillStopped {
                    drill: id.to_string(),
                    vm: None,
                    verified: true,
                    checks: vec![format!("no drill {id} recorded at the controller")],
                });
            }
        },
    };
    let done = ctl.agent(&host)?.drill_stop(id).await?;
    if done.verified {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(EngineError::Internal(format!(
                    "unable to delete {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("12-pbx1").is_ok());
        for bad in ["", "a/b", "x y", &"a".repeat(41)] {
            let e = check_id(bad).unwrap_err();
            assert_eq!(e.code().0, "bad_request", "{bad}");
        }
    }

    #[test]
    fn a_record_is_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drills/7-pbx1.json");
        assert!(read_record(&path).unwrap().is_none());
        let rec = DrillRecord {
            host: "site2-host1".into(),
            vm: "pbx1".into(),
            state: None,
        };
        write_record(&path, &rec).unwrap();
        let back = read_record(&path).unwrap().unwrap();
        assert_eq!(
            (back.host.as_str(), back.vm.as_str()),
            ("site2-host1", "pbx1")
        );
        assert!(back.state.is_none());
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_record_without_kind_is_a_process_copy() {
        let rec = serde_json::json!({
            "id": "7-pbx1", "vm": "pbx1", "site": "site2", "point": "p",
            "point_time": "2026-01-01T00:00:00Z", "datastore": "s2",
            "netns": "sbd-7-pbx1", "dir": "/d", "copy": "pbx1-drill", "pid": 1,
            "started_at": "2026-01-01T00:00:01Z", "data_age_seconds": 1.0,
            "restore_seconds": 0.1, "bytes": 1
        });
        let st: DrillState = serde_json::from_value(rec).unwrap();
        assert_eq!(st.kind, CopyKind::Process);
        assert_eq!(st.boot_allowance_seconds, 0.0);
        let mut v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["kind"], "process");
        v["kind"] = "qemu".into();
        let st: DrillState = serde_json::from_value(v).unwrap();
        assert_eq!(st.kind, CopyKind::Qemu);
    }
}
