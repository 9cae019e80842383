//! The host side of a DR drill: boot a copy of a VM from a recovery point
//! inside a network namespace of its own, probe it from inside, tear it
//! down and prove the teardown. The controller (`standby_engine::drill`)
//! picks the point and keeps the records; the host that runs the copy
//! (in-process or a remote agent, through [`crate::Host`]) does this.
//!
//! # Isolation
//! The copy runs in a fresh namespace `sbd-<id>` that has only a loopback
//! interface: it cannot reach production, production cannot reach it, and
//! the front door never points at it. Its disks are restored into the
//! drill's own directory (`<drills>/<id>/`, `<drills>` being
//! `<data_dir>/drills` in the controller or `DATA/drills` at a remote
//! agent), it runs under its own driver (own pid files, in `<dir>/run/`)
//! as `<vm>-drill`, and the VM's placement is never changed. A command
//! that already enters a namespace (`ip netns exec NS …`, as a lab's
//! per-site configuration may say) is unwrapped first, so the copy can
//! never join a production namespace.
//!
//! # QEMU VMs
//! A VM with a qemu definition gets a QEMU copy ([`CopyKind::Qemu`]): the
//! point is restored into `<dir>/disks/` exactly as a restore at the host
//! would do it (qcow2 disks staged raw and converted by
//! [`QemuDriver::install_restored_disk`]), and a [`QemuDriver`] on
//! `<dir>/run/` started [`QemuDriver::in_netns`] the drill's namespace
//! boots it. Its user-mode forwards keep their ports but listen on the
//! namespace's `127.0.0.1`, which is where [`probe`] looks; nothing outside
//! the namespace can reach them. A QEMU boot is slow under software
//! emulation (7–18 s on 2 shared cores), so its probe waits at least
//! [`QEMU_BOOT_TCG`] (or [`QEMU_BOOT_KVM`]) whatever timeout was given.
//!
//! # libvirt VMs
//! A libvirt VM standby defines (its domain XML is generated from its
//! `[vms.NAME.qemu]` machine) gets the same QEMU copy, booted by the qemu
//! driver in the drill's namespace, not a domain on the host's libvirtd:
//! libvirtd starts its QEMUs in its own network namespace, the host's,
//! where a domain's user-mode network reaches whatever the host reaches
//! (production), and an isolated libvirt network is a bridge the host
//! itself sits on. The copy's machine is the one the domain XML is built
//! from (memory, CPUs, machine type, kernel, the disks in order and
//! format), nothing is defined at libvirtd (no name to clash with the
//! production domain, nothing to undefine), and the teardown's checks are
//! the qemu copy's. A libvirt VM has no port forwards (its services
//! answer on its own address), so the controller gives the copy one: its
//! probed port, on the namespace's loopback, to the same port of the
//! guest. Adopted domains (no machine to boot from) are refused.
//!
//! # Teardown
//! [`stop`] stops the copy through its driver (a QEMU copy: QMP `quit`,
//! then SIGKILL), checks that its process is gone, kills whatever else
//! still runs in the namespace (`ip netns pids`) and checks that nothing
//! does, deletes the namespace and the directory and checks each is gone.
//! The answer's `verified` is true only when every check passed.
//!
//! # Idempotence
//! Every call can be repeated: [`start`] returns the running drill as
//! recorded in `drill.json` (a new driver adopts the copy from its pid
//! file when it is stopped), a start interrupted before its record was
//! written is cleared (processes in its namespace killed, directory
//! deleted) and made again, and [`stop`] of a drill already gone verifies
//! that nothing is left and succeeds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use standby_hv::qemu::{Accel, kvm_usable};
use standby_hv::{DiskSpec, Driver, ProcessDriver, QemuDriver, VmSpec};
use standby_store::{Datastore, PointId};
use standby_types::outcome::{CopyKind, DrillProbed, DrillState, DrillStopped};
use standby_types::watch::{ProbeCheck, ProbeSpec};

use crate::error::AgentError;
use crate::progress::Progress;
pub use crate::wire::DrillRequest;

/// The shortest wait for a QEMU copy's first passing probe under
/// software emulation (TCG): its boot alone takes 7–18 s on a loaded host.
pub const QEMU_BOOT_TCG: Duration = Duration::from_secs(120);
/// The same with KVM.
pub const QEMU_BOOT_KVM: Duration = Duration::from_secs(60);
/// How long processes left in a drill's namespace may take to die.
const NETNS_EMPTY_WAIT: Duration = Duration::from_secs(10);

/// A drill id: it names a directory and a namespace.
pub fn check_id(id: &str) -> Result<(), AgentError> {
    if id.is_empty()
        || id.len() > 40
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AgentError::BadRequest(format!(
            "bad drill id '{id}': use 1 to 40 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

fn netns_name(id: &str) -> String {
    format!("sbd-{id}")
}

/// The copy's driver: its state (pid files, QMP socket) in `<dir>/run`.
fn driver(dir: &Path, kind: CopyKind, netns: &str) -> Box<dyn Driver> {
    match kind {
        CopyKind::Process => Box::new(ProcessDriver::with_state_dir(dir.join("run"))),
        CopyKind::Qemu => Box::new(QemuDriver::new(dir.join("run")).in_netns(netns)),
    }
}

/// Processes running in namespace `ns` (none when it does not exist).
fn netns_pids(ns: &str) -> Result<Vec<u32>, AgentError> {
    if !netns_exists(ns) {
        return Ok(Vec::new());
    }
    Ok(ip(&["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kill every process left in the drill's namespace and wait until none
/// is. Returns how many there were.
async fn empty_netns(id: &str, ns: &str) -> Result<usize, AgentError> {
    let pids = netns_pids(ns)?;
    if pids.is_empty() {
        return Ok(0);
    }
    tracing::warn!(
        drill = id,
        netns = ns,
        ?pids,
        "killing processes left in the drill's namespace"
    );
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output();
    }
    let deadline = Instant::now() + NETNS_EMPTY_WAIT;
    loop {
        let left = netns_pids(ns)?;
        if left.is_empty() {
            return Ok(pids.len());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Conflict(format!(
                "drill {id}: processes {left:?} still run in namespace {ns} after SIGKILL"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("drill.json")
}

fn write_state(dir: &Path, st: &DrillState) -> Result<(), AgentError> {
    let tmp = dir.join("drill.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, state_path(dir)))
        .map_err(AgentError::io(format!("unable to record drill {}", st.id)))
}

fn read_state(dir: &Path) -> Result<Option<DrillState>, AgentError> {
    match std::fs::read(state_path(dir)) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            AgentError::Internal(format!(
                "unreadable drill record {}: {e}",
                state_path(dir).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::Internal(format!(
            "unable to read {}: {e}",
            state_path(dir).display()
        ))),
    }
}

fn ip(args: &[&str]) -> Result<String, AgentError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        AgentError::Internal(format!(
            "unable to run ip {} (install iproute2): {e}",
            args.join(" ")
        ))
    })?;
    if !out.status.success() {
        return Err(AgentError::Internal(format!(
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

/// Restore `req.point` from `store` into the drill's directory under
/// `drills` and boot it in the drill's namespace.
pub async fn start(
    drills: &Path,
    req: DrillRequest,
    store: &Datastore,
    progress: Arc<dyn Progress>,
) -> Result<DrillState, AgentError> {
    let DrillRequest {
        id,
        vm,
        site,
        point,
        point_time,
        datastore,
        spec: prod,
    } = req;
    check_id(&id)?;
    let pid: PointId = point
        .parse()
        .map_err(|e| AgentError::BadRequest(format!("bad point id '{point}': {e}")))?;
    let dir = drills.join(&id);
    if let Some(st) = read_state(&dir)? {
        if st.vm != vm {
            return Err(AgentError::Conflict(format!(
                "drill {id} already runs vm {}, not {vm}",
                st.vm
            )));
        }
        return Ok(st);
    }
    if prod.libvirt.is_some()
        && (prod.qemu.is_none() || prod.libvirt.as_ref().is_some_and(|l| l.adopt))
    {
        return Err(AgentError::BadRequest(format!(
            "vm {vm} is an adopted libvirt domain: its drill copy has no machine to boot from \
             (add a [vms.{vm}.qemu] table to make it a domain standby defines)"
        )));
    }
    let kind = if prod.qemu.is_some() {
        CopyKind::Qemu
    } else {
        CopyKind::Process
    };
    let netns = netns_name(&id);
    let copy = format!("{vm}-drill");
    if dir.exists() {
        // A start interrupted before its record: its copy may run.
        let killed = empty_netns(&id, &netns).await?;
        tracing::warn!(drill = id, killed, dir = %dir.display(), "clearing an interrupted drill start");
        std::fs::remove_dir_all(&dir).map_err(AgentError::io(format!(
            "unable to delete {}",
            dir.display()
        )))?;
    }
    let started = Instant::now();
    let started_at = Utc::now();
    let data_age_seconds = (started_at - point_time).num_milliseconds() as f64 / 1000.0;
    let disks_dir = dir.join("disks");
    std::fs::create_dir_all(&disks_dir).map_err(AgentError::io(format!(
        "unable to create {}",
        disks_dir.display()
    )))?;
    let disks: Vec<DiskSpec> = prod
        .disks
        .iter()
        .map(|d| DiskSpec {
            name: d.name.clone(),
            path: disks_dir.join(format!("{}.img", d.name)),
            size: d.size,
        })
        .collect();
    // Production's disk paths in the command line become the copy's.
    let retarget = |args: &mut Vec<String>| {
        for (p, d) in prod.disks.iter().zip(&disks) {
            let (from, to) = (p.path.to_string_lossy(), d.path.to_string_lossy());
            for a in args.iter_mut() {
                *a = a.replace(from.as_ref(), to.as_ref());
            }
        }
    };
    let (spec, bytes, boot_allowance) = match kind {
        CopyKind::Process => {
            let bytes = {
                let (store, pid, disks, progress) =
                    (store.clone(), pid.clone(), disks.clone(), progress.clone());
                let vm = vm.clone();
                tokio::task::spawn_blocking(move || -> Result<u64, AgentError> {
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
            // The copy's command line: production's, unwrapped from any
            // namespace, entering the drill's.
            let (command, mut args) = unwrap_netns(&prod.command, &prod.args);
            retarget(&mut args);
            let mut ns_args = vec![
                "netns".to_string(),
                "exec".into(),
                netns.clone(),
                command.to_string_lossy().into_owned(),
            ];
            ns_args.extend(args);
            let spec = VmSpec {
                name: copy.clone(),
                command: PathBuf::from("ip"),
                args: ns_args,
                env: prod.env.clone(),
                disks,
                workdir: dir.clone(),
                qemu: None,
                libvirt: None,
            };
            (spec, bytes, Duration::ZERO)
        }
        CopyKind::Qemu => {
            let mut q = prod.qemu.clone().unwrap_or_default();
            // The same ports, on the drill namespace's loopback only.
            for f in &mut q.forwards {
                f.host_addr = std::net::Ipv4Addr::LOCALHOST;
            }
            let allowance = match q.accel {
                Accel::Kvm => QEMU_BOOT_KVM,
                Accel::Auto if kvm_usable() => QEMU_BOOT_KVM,
                _ => QEMU_BOOT_TCG,
            };
            let mut args = prod.args.clone();
            retarget(&mut args);
            let spec = VmSpec {
                name: copy.clone(),
                command: prod.command.clone(),
                args,
                env: prod.env.clone(),
                disks,
                workdir: dir.clone(),
                qemu: Some(q),
                libvirt: None,
            };
            // As a restore at this host does it: qcow2 disks staged raw
            // and converted, all disks or none.
            progress.stage(format!("{vm}: restoring point {pid} for the drill"), 0);
            let bytes = crate::restore::restore_point(
                &spec,
                store,
                &pid,
                crate::wire::Onto::Fresh,
                progress.clone(),
                Some(&QemuDriver::new(dir.join("run"))),
            )
            .await?
            .bytes;
            (spec, bytes, allowance)
        }
    };
    let restore_seconds = started.elapsed().as_secs_f64();
    // The namespace: loopback only.
    if !netns_exists(&netns) {
        ip(&["netns", "add", &netns])?;
    }
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    progress.stage(format!("{vm}: booting the copy in namespace {netns}"), 0);
    let status = driver(&dir, kind, &netns).start(&spec).await?;
    let st = DrillState {
        id: id.clone(),
        vm: vm.clone(),
        site: site.clone(),
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
        kind,
        boot_allowance_seconds: boot_allowance.as_secs_f64(),
        skipped: Vec::new(),
        tier: None,
        waited_seconds: 0.0,
        answered_at: None,
    };
    write_state(&dir, &st)?;
    tracing::info!(drill = id, vm, site, point = %st.point, netns = %st.netns, kind = ?kind, "drill copy booted");
    Ok(st)
}

/// The longest [`probe`] may take for `timeout`: at least a QEMU boot.
pub fn probe_bound(timeout: Duration) -> Duration {
    timeout.max(QEMU_BOOT_TCG) + Duration::from_secs(5)
}

/// Probe the drill's copy from inside its namespace until `check` passes
/// or `timeout` runs out (at least the copy's boot allowance: a QEMU copy
/// boots slowly). Returns the time from the drill's start to the first
/// passing probe (the drill's RTO) and the probe's latency.
pub async fn probe(
    drills: &Path,
    id: &str,
    check: ProbeCheck,
    timeout: Duration,
) -> Result<DrillProbed, AgentError> {
    check_id(id)?;
    let st = read_state(&drills.join(id))?.ok_or_else(|| AgentError::not_found("drill", id))?;
    let spec = ProbeSpec {
        name: format!("drill-{id}"),
        check,
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(1),
        attempts: 2,
        labels: Default::default(),
    };
    let timeout = timeout.max(Duration::from_secs_f64(st.boot_allowance_seconds));
    let deadline = Instant::now() + timeout;
    loop {
        let o = standby_monitor::probe::run_in_netns(&st.netns, &spec)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        if o.ok {
            // The RTO counts to the first answer anyone saw (a later
            // probe, after the copies of a plan's next tiers booted, says
            // the same).
            let first = match st.answered_at {
                Some(t) => t,
                None => {
                    let now = Utc::now();
                    let mut seen = st.clone();
                    seen.answered_at = Some(now);
                    write_state(&drills.join(id), &seen)?;
                    now
                }
            };
            let rto = (first - st.started_at).num_milliseconds() as f64 / 1000.0;
            return Ok(DrillProbed {
                drill: id.to_string(),
                rto_seconds: rto,
                latency_seconds: o.latency.as_secs_f64(),
                detail: o.detail,
                vm: st.vm,
            });
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Timeout(format!(
                "the drill copy of {} did not pass its probe within {timeout:?} (last: {})",
                st.vm, o.detail
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stop the copy, delete its namespace and files, and verify each is gone.
pub async fn stop(drills: &Path, id: &str) -> Result<DrillStopped, AgentError> {
    check_id(id)?;
    let dir = drills.join(id);
    let netns = netns_name(id);
    let st = read_state(&dir)?;
    let mut checks = Vec::new();
    if let Some(st) = &st {
        // A new driver adopts the copy from its pid file.
        let d = driver(&dir, st.kind, &netns);
        d.stop(&st.copy).await?;
        let status = d.status(&st.copy).await?;
        if status.is_alive() {
            return Err(AgentError::Conflict(format!(
                "drill {id}: the copy of {} is still {} after stop",
                st.vm, status.state
            )));
        }
        if let Some(pid) = st.pid
            && Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(&st.netns) || c.contains(&*dir.to_string_lossy()))
        {
            return Err(AgentError::Conflict(format!(
                "drill {id}: process {pid} of the copy is still alive"
            )));
        }
        checks.push(format!("copy {} stopped", st.copy));
    }
    // Nothing else may outlive the drill in its namespace (a copy whose
    // start was interrupted before its record, a process it started).
    let killed = empty_netns(id, &netns).await?;
    checks.push(if killed == 0 {
        format!("no process in namespace {netns}")
    } else {
        format!("{killed} process(es) left in namespace {netns} killed")
    });
    if netns_exists(&netns) {
        ip(&["netns", "del", &netns])?;
    }
    if netns_exists(&netns) {
        return Err(AgentError::Conflict(format!(
            "drill {id}: namespace {netns} still exists after deletion"
        )));
    }
    checks.push(format!("namespace {netns} gone"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(AgentError::io(format!(
            "unable to delete {}",
            dir.display()
        )))?;
    }
    if dir.exists() {
        return Err(AgentError::Conflict(format!(
            "drill {id}: {} still exists after deletion",
            dir.display()
        )));
    }
    checks.push(format!("{} deleted", dir.display()));
    Ok(DrillStopped {
        drill: id.to_string(),
        vm: st.map(|s| s.vm),
        verified: true,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("12-pbx1").is_ok());
        for bad in ["", "a/b", "x y", "..", &"a".repeat(41)] {
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

    #[tokio::test]
    async fn stopping_a_drill_that_is_gone_verifies_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let done = stop(dir.path(), "never-started-1").await.unwrap();
        assert!(done.verified && done.vm.is_none(), "{done:?}");
        assert!(!dir.path().join("never-started-1").exists());
    }
}
