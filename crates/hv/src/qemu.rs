//! The `qemu` driver: a VM is a `qemu-system-x86_64` process controlled
//! over QMP ([`crate::qmp`]).
//!
//! # Process and files
//!
//! QEMU runs as a supervised child in its own session (`setsid`, as in the
//! process driver), so a controller that dies never takes its VMs along.
//! Per VM, in the driver's state directory:
//!
//! - `<name>.pid`: `<pid> <kernel start time>`, written atomically after the
//!   spawn. A restarted controller (a new [`QemuDriver`] on the same state
//!   dir) adopts a VM whose pid and start time still match: it reconnects
//!   to QMP and reports, freezes and stops it like its own; a VM found
//!   paused (its owner died mid-point) is resumed at once.
//! - `<name>.qmp`: the QMP socket (`server=on,wait=off`). QEMU serves one
//!   client at a time; the driver keeps one connection per VM and receives
//!   its events (SHUTDOWN gives the reason of an exit).
//! - `<name>.qemu.pid`: QEMU's own `-pidfile`, which QEMU locks: a second
//!   QEMU for the same VM refuses to start.
//!
//! In `workdir`: `<name>.log` (QEMU's stdout/stderr) and
//! `<name>.console.log` (the guest's serial console, appended).
//!
//! [`QemuDriver::in_netns`] runs QEMU inside a network namespace (a DR
//! drill's, loopback only), so its port forwards listen there alone.
//!
//! # Machine
//!
//! Built from the [`QemuSpec`] in [`VmSpec::qemu`]: memory, CPUs, machine
//! type, accelerator (KVM when `/dev/kvm` is usable, else TCG), disks as
//! virtio-blk in the order of [`VmSpec::disks`] (so `/dev/vda`, `/dev/vdb`,
//! …), each a `-blockdev` whose format node is named after the disk (dirty
//! bitmaps will hang off it), kernel/initrd/append or boot from the first
//! disk, user-mode networking with host port forwards. [`VmSpec::args`]
//! are appended to QEMU's command line.
//!
//! # States
//!
//! `query-status` `running` is [`VmState::Running`], any other live state
//! [`VmState::Frozen`]. An exit the driver did not ask for is
//! [`VmState::Crashed`], described by the exit status and the reason of
//! the last SHUTDOWN event (`guest-shutdown`, `host-signal`, …). Shutdown
//! is `system_powerdown`, `quit` after the timeout, then SIGKILL.
//!
//! # Recovery points (live)
//!
//! A point of a running VM never pauses it for the read
//! (the `points` submodule holds the QMP choreography):
//!
//! - Each disk carries a dirty bitmap `standby:<point id>` recording the
//!   writes since that committed point: persistent (saved in the image at
//!   QEMU's clean exit) on qcow2, in QEMU's memory only on raw disks.
//! - [`Driver::snapshot_begin_from`] (with the caller's base point and
//!   chunk size): the guest agent freezes the guest's filesystems when the
//!   spec has one (3 s bound, see [`FREEZE_TIMEOUT`]), then one QMP
//!   `transaction` makes the point's instant: it adds `standby.pending`
//!   (writes from now on), and starts a `blockdev-backup` per disk into a
//!   scratch image in `<state dir>/<vm>.point/` — `sync=full` into a sparse
//!   raw file for a full read, or, for an incremental one, disables the
//!   base bitmap, merges it into `standby.copy` at the chunk size (so
//!   every chunk the reader touches is copied whole) and runs
//!   `sync=bitmap bitmap-mode=never` into a qcow2 scratch. The guest is
//!   thawed right after. Backup jobs copy-before-write, so the scratch
//!   holds the disk as it was at the instant while the guest runs on.
//! - The incremental scratch's allocation (`qemu-img map`, the `present`
//!   extents: data *and* zero clusters, so a cluster rewritten with zeroes
//!   is dirty too) gives [`crate::SnapshotDisk::dirty`]; it is converted
//!   to a sparse raw file for the reader.
//! - [`Driver::snapshot_committed`]: committed as `P` → one transaction
//!   renames `standby.pending` into `standby:P` (add + merge + remove) and
//!   drops the old base bitmap; abandoned → the old bitmap is re-enabled
//!   and `standby.pending` merged back into it, so the next point still
//!   sees those writes (a full read keeps a sound bitmap it found until its
//!   commit, for the same reason). A point never settled (its controller
//!   died) is settled as abandoned at the next begin.
//! - A full read, said on the consistency note, when: no base point; no
//!   bitmap (raw disk after a QEMU restart, qcow2 after QEMU died without
//!   saving it); a bitmap QEMU flags inconsistent (QEMU killed while it
//!   was loaded); a bitmap counting from another point than the base.
//! - A VM that is not running: its image files (qcow2 converted to a raw
//!   scratch copy), a full read labelled "cold".
//!
//! Restore: the datastore writes raw images;
//! [`QemuDriver::install_restored_disk`] puts one in place as the disk's
//! format (qcow2: `qemu-img convert`, zeroes unallocated).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::qmp::{Qmp, QmpEvent};

mod points;
use crate::{Capabilities, Driver, HvError, SnapshotSource, VmSpec, VmState, VmStatus};
pub use points::FREEZE_TIMEOUT;

/// How long QEMU may take to open its QMP socket after the spawn.
const QMP_START: Duration = Duration::from_secs(30);
/// Timeout of a QMP call made by the driver.
const QMP_CALL: Duration = Duration::from_secs(10);
/// How long `quit` may take before SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the kernel to reap QEMU after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Longest UNIX socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How QEMU runs one VM; carried in [`VmSpec::qemu`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuSpec {
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default)]
    pub machine: Machine,
    #[serde(default)]
    pub accel: Accel,
    /// Direct kernel boot; without it QEMU boots from the first disk.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub append: Option<String>,
    /// Image format per disk name; a disk not listed is raw.
    #[serde(default)]
    pub disk_formats: BTreeMap<String, DiskFormat>,
    /// Host ports forwarded into the guest (user-mode networking).
    #[serde(default)]
    pub forwards: Vec<PortForward>,
    /// The guest runs `qemu-ga`: give it a virtio-serial channel
    /// (`org.qemu.guest_agent.0`, host end `<state dir>/<vm>.qga`) and
    /// fsfreeze the guest around each point.
    #[serde(default)]
    pub guest_agent: bool,
}

fn default_memory() -> u32 {
    256
}

fn default_cpus() -> u32 {
    1
}

impl Default for QemuSpec {
    fn default() -> Self {
        QemuSpec {
            memory_mib: default_memory(),
            cpus: default_cpus(),
            machine: Machine::default(),
            accel: Accel::default(),
            kernel: None,
            initrd: None,
            append: None,
            disk_formats: BTreeMap::new(),
            forwards: Vec::new(),
            guest_agent: false,
        }
    }
}

impl QemuSpec {
    pub fn disk_format(&self, disk: &str) -> DiskFormat {
        self.disk_formats.get(disk).copied().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Q35,
    Pc,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened read-write, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `hostfwd=<proto>:<host_addr>:<host_port>-:<guest_port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub protocol: Protocol,
    #[serde(default = "localhost")]
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

fn localhost() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

impl PortForward {
    pub fn udp(host_port: u16, guest_port: u16) -> Self {
        PortForward {
            protocol: Protocol::Udp,
            host_addr: localhost(),
            host_port,
            guest_port,
        }
    }

    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        PortForward {
            protocol: Protocol::Tcp,
            ..Self::udp(host_port, guest_port)
        }
    }
}

struct Vm {
    status: VmStatus,
    pid: Option<u32>,
    /// Set when the driver asked the VM to end, so its exit is no crash.
    stopping: bool,
    /// Flips to true when the current run has exited.
    exited: watch::Receiver<bool>,
    generation: u64,
    qmp: Option<Qmp>,
    /// Reason of the last SHUTDOWN event of this run.
    shutdown_reason: Option<String>,
}

#[derive(Default)]
struct Table {
    vms: HashMap<String, Vm>,
    next_generation: u64,
}

/// Runs VMs with QEMU. See the module docs.
pub struct QemuDriver {
    table: Arc<Mutex<Table>>,
    state_dir: PathBuf,
    qemu_img: PathBuf,
    /// Serializes adoption, which connects to QMP outside the table lock.
    adopting: tokio::sync::Mutex<()>,
    /// Points begun and not yet committed or abandoned, per VM.
    points: Mutex<HashMap<String, points::PendingPoint>>,
    /// Network namespace QEMU runs in (`ip netns exec NS qemu …`).
    netns: Option<String>,
}

impl Drop for QemuDriver {
    fn drop(&mut self) {
        // Release the QMP connections (QEMU serves one client at a time) so
        // a successor driver can adopt the VMs; the VMs keep running.
        for vm in self.lock().vms.values_mut() {
            vm.qmp = None;
        }
    }
}

impl QemuDriver {
    /// A driver keeping its pid files and QMP sockets in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        QemuDriver {
            table: Arc::default(),
            state_dir: state_dir.into(),
            qemu_img: PathBuf::from("qemu-img"),
            adopting: tokio::sync::Mutex::new(()),
            points: Mutex::default(),
            netns: None,
        }
    }

    /// Run each VM's QEMU inside the network namespace `netns` (it must
    /// exist): QEMU is started as `ip netns exec NETNS qemu-system-x86_64
    /// …`, which execs QEMU, so the recorded pid is QEMU's own and adoption
    /// works as usual. The forwards' `host_addr` is bound inside that
    /// namespace; files and UNIX sockets (QMP, guest agent) are not
    /// affected.
    pub fn in_netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    pub fn qmp_socket(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.qmp"))
    }

    /// Host end of the guest agent's channel (when `guest_agent` is set).
    pub fn qga_socket(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.qga"))
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.pid"))
    }

    /// The QMP connection of a live VM (for callers that need raw access,
    /// e.g. block jobs).
    pub fn qmp(&self, name: &str) -> Option<Qmp> {
        self.lock().vms.get(name).and_then(|vm| vm.qmp.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock_table(&self.table)
    }

    fn current(&self, name: &str) -> VmStatus {
        self.lock()
            .vms
            .get(name)
            .map(|vm| vm.status.clone())
            .unwrap_or_else(VmStatus::stopped)
    }

    /// Take over a VM started by an earlier driver on the same state dir,
    /// if its QEMU still runs. No-op when the name is known already.
    async fn adopt(&self, name: &str) {
        let _guard = self.adopting.lock().await;
        if self.lock().vms.contains_key(name) {
            return;
        }
        let path = self.pid_file(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let mut parts = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|p| p.parse::<u64>().ok()),
        ) else {
            tracing::warn!(vm = name, path = %path.display(), "ignoring unreadable pid file");
            return;
        };
        if !proc_start(pid).is_some_and(|(st, t)| t == start && st != 'Z') {
            let _ = std::fs::remove_file(&path);
            return;
        }
        let qmp = match Qmp::connect(&self.qmp_socket(name), QMP_CALL).await {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(vm = name, pid, error = %e, "adopting a vm without qmp");
                None
            }
        };
        let mut state = VmState::Running;
        if let Some(q) = &qmp
            && let Ok(st) = q.query_status().await
            && !st.running
        {
            tracing::warn!(
                vm = name,
                pid,
                status = st.status,
                "resuming a vm left paused by a previous controller"
            );
            match q.cont().await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(vm = name, error = %e, "unable to resume the adopted vm");
                    state = VmState::Frozen;
                }
            }
        }
        tracing::info!(vm = name, pid, "adopted a running vm");
        let (tx, rx) = watch::channel(false);
        let generation = {
            let mut table = self.lock();
            let generation = table.next_generation;
            table.next_generation += 1;
            table.vms.insert(
                name.to_owned(),
                Vm {
                    status: VmStatus {
                        state,
                        pid: Some(pid),
                        since: Some(Utc::now()),
                        exit: None,
                    },
                    pid: Some(pid),
                    stopping: false,
                    exited: rx,
                    generation,
                    qmp: qmp.clone(),
                    shutdown_reason: None,
                },
            );
            generation
        };
        let events = qmp.as_ref().map(|q| self.watch_events(name, generation, q));
        // Not our child: watch /proc until it is gone.
        let shared = self.table.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while proc_start(pid).is_some_and(|(st, t)| t == start && st != 'Z') {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = std::fs::remove_file(&path);
            finish_run(
                &shared,
                &name,
                generation,
                "exited (adopted process, status unknown)".into(),
                events,
            )
            .await;
            let _ = tx.send(true);
        });
    }

    /// Record SHUTDOWN reasons and STOP/RESUME of one run.
    fn watch_events(&self, name: &str, generation: u64, qmp: &Qmp) -> tokio::task::JoinHandle<()> {
        let mut events = qmp.events();
        let shared = self.table.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                on_event(&shared, &name, generation, &ev);
            }
        })
    }

    fn io_err(
        vm: &str,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> HvError {
        let vm = vm.to_owned();
        let path = path.to_owned();
        move |source| HvError::Io {
            vm,
            action,
            path,
            source,
        }
    }

    async fn spawn(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        let qspec = spec.qemu.clone().unwrap_or_default();
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        let socket = self.qmp_socket(&spec.name);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HvError::InvalidSpec {
                vm: spec.name.clone(),
                detail: format!("qmp socket path {} is too long", socket.display()),
            });
        }
        std::fs::create_dir_all(&spec.workdir).map_err(Self::io_err(
            &spec.name,
            "create the work directory",
            &spec.workdir,
        ))?;
        std::fs::create_dir_all(&self.state_dir).map_err(Self::io_err(
            &spec.name,
            "create the state directory",
            &self.state_dir,
        ))?;
        // No live QEMU owns it (we checked): a leftover of a dead run.
        let _ = std::fs::remove_file(&socket);
        let args = command_line(spec, &qspec, &self.state_dir, kvm_usable())?;
        let log_path = spec.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Self::io_err(&spec.name, "open the log", &log_path))?;
        let log_err =
            log.try_clone()
                .map_err(Self::io_err(&spec.name, "open the log", &log_path))?;
        let command = if spec.command.as_os_str().is_empty() {
            PathBuf::from("qemu-system-x86_64")
        } else {
            spec.command.clone()
        };
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&command);
                c
            }
            None => tokio::process::Command::new(&command),
        };
        cmd.args(&args)
            .envs(&spec.env)
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // Own session, as in the process driver: a dying controller's
        // SIGHUP never reaches the VM.
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| HvError::Spawn {
            vm: spec.name.clone(),
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        let pid_file = self.pid_file(&spec.name);
        if let Some(pid) = pid
            && let Err(source) = record_pid(&pid_file, pid)
        {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return Err(HvError::Io {
                vm: spec.name.clone(),
                action: "record the pid in",
                path: pid_file,
                source,
            });
        }
        let (tx, rx) = watch::channel(false);
        let status = VmStatus {
            state: VmState::Running,
            pid,
            since: Some(Utc::now()),
            exit: None,
        };
        let generation = {
            let mut table = self.lock();
            let generation = table.next_generation;
            table.next_generation += 1;
            table.vms.insert(
                spec.name.clone(),
                Vm {
                    status: status.clone(),
                    pid,
                    stopping: false,
                    exited: rx.clone(),
                    generation,
                    qmp: None,
                    shutdown_reason: None,
                },
            );
            generation
        };
        tracing::info!(vm = %spec.name, ?pid, "qemu started");

        let (events_tx, events_rx) = tokio::sync::oneshot::channel::<tokio::task::JoinHandle<()>>();
        let shared = self.table.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("unknown exit ({e})"),
            };
            let _ = std::fs::remove_file(&pid_file);
            let events = events_rx.await.ok();
            finish_run(&shared, &name, generation, exit, events).await;
            let _ = tx.send(true);
        });

        // QEMU opens the socket early in its start; a bad option makes it
        // exit before that.
        let deadline = tokio::time::Instant::now() + QMP_START;
        let qmp = loop {
            // The exit task waits for the event task's handle: look at the
            // process itself, and release that wait before failing.
            let gone = pid.is_none_or(|p| proc_start(p).is_none_or(|(st, _)| st == 'Z'));
            if gone || *rx.borrow() {
                drop(events_tx);
                let mut exited = rx.clone();
                let _ = tokio::time::timeout(KILL_WAIT, exited.wait_for(|e| *e)).await;
                let tail = log_tail(&log_path);
                return Err(HvError::StartFailed {
                    vm: spec.name.clone(),
                    detail: format!("qemu exited at once: {tail}"),
                });
            }
            if socket.exists()
                && let Ok(q) = Qmp::connect(&socket, QMP_CALL).await
            {
                break q;
            }
            if tokio::time::Instant::now() > deadline {
                drop(events_tx);
                let _ = self.stop(&spec.name).await;
                return Err(HvError::StartFailed {
                    vm: spec.name.clone(),
                    detail: format!("no qmp socket at {} within {QMP_START:?}", socket.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = events_tx.send(self.watch_events(&spec.name, generation, &qmp));
        if let Some(vm) = self.lock().vms.get_mut(&spec.name)
            && vm.generation == generation
        {
            vm.qmp = Some(qmp);
        }
        Ok(self.current(&spec.name))
    }

    /// Ask a live VM to end: `powerdown` first when graceful, then `quit`,
    /// then SIGKILL.
    async fn terminate(&self, name: &str, graceful: Option<Duration>) -> Result<VmStatus, HvError> {
        let (mut exited, qmp, pid, frozen) = {
            let mut table = self.lock();
            let Some(vm) = table.vms.get_mut(name) else {
                return Ok(VmStatus::stopped());
            };
            if !vm.status.is_alive() {
                return Ok(vm.status.clone());
            }
            vm.stopping = true;
            (
                vm.exited.clone(),
                vm.qmp.clone(),
                vm.pid,
                vm.status.state == VmState::Frozen,
            )
        };
        let wait = |exited: &mut watch::Receiver<bool>, d: Duration| {
            let mut rx = exited.clone();
            async move { tokio::time::timeout(d, rx.wait_for(|e| *e)).await.is_ok() }
        };
        if let (Some(timeout), Some(q)) = (graceful, &qmp) {
            tracing::info!(vm = name, "asking the guest to power down");
            // A paused guest cannot see the power button.
            if frozen {
                let _ = q.cont().await;
            }
            match q.system_powerdown().await {
                Ok(()) => {
                    if wait(&mut exited, timeout).await {
                        return Ok(self.current(name));
                    }
                    tracing::warn!(
                        vm = name,
                        ?timeout,
                        "guest ignored the power button, quitting"
                    );
                }
                Err(e) => tracing::warn!(vm = name, error = %e, "system_powerdown failed"),
            }
        }
        if let Some(q) = &qmp {
            match q.with_timeout(QUIT_WAIT).quit().await {
                Ok(()) => {
                    if wait(&mut exited, QUIT_WAIT).await {
                        return Ok(self.current(name));
                    }
                }
                Err(e) => tracing::warn!(vm = name, error = %e, "quit failed"),
            }
        }
        if let Some(pid) = pid {
            tracing::warn!(vm = name, pid, "killing qemu");
            send_kill(name, pid)?;
        }
        if wait(&mut exited, KILL_WAIT).await {
            Ok(self.current(name))
        } else {
            Err(HvError::ExitTimeout {
                vm: name.to_owned(),
                waited: KILL_WAIT,
            })
        }
    }

    fn live_qmp(&self, name: &str) -> Result<(Qmp, VmState), HvError> {
        let table = self.lock();
        let Some(vm) = table.vms.get(name) else {
            return Err(HvError::NotRunning {
                vm: name.to_owned(),
                state: VmState::Stopped,
            });
        };
        if !vm.status.is_alive() {
            return Err(HvError::NotRunning {
                vm: name.to_owned(),
                state: vm.status.state,
            });
        }
        let qmp = vm.qmp.clone().ok_or_else(|| HvError::QmpClosed {
            socket: self.qmp_socket(name),
        })?;
        Ok((qmp, vm.status.state))
    }

    fn set_state(&self, name: &str, state: VmState) {
        if let Some(vm) = self.lock().vms.get_mut(name)
            && vm.status.is_alive()
            && vm.status.state != state
        {
            vm.status.state = state;
            vm.status.since = Some(Utc::now());
        }
    }

    /// Create one disk image at a temporary name, then link it into place,
    /// which fails instead of overwriting.
    async fn create_disk(
        &self,
        vm: &str,
        disk: &crate::DiskSpec,
        format: DiskFormat,
        template: Option<&Path>,
    ) -> Result<(), HvError> {
        if let Some(parent) = disk.path.parent() {
            std::fs::create_dir_all(parent).map_err(Self::io_err(
                vm,
                "create the disk directory",
                parent,
            ))?;
        }
        let mut tmp = disk.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut args: Vec<OsString> = Vec::new();
        match template {
            Some(t) => {
                let t =
                    std::path::absolute(t).map_err(Self::io_err(vm, "resolve the template", t))?;
                let (tfmt, tsize) = self.image_info(vm, &t).await?;
                if disk.size > 0 && tsize > disk.size {
                    return Err(HvError::TemplateTooLarge {
                        vm: vm.to_owned(),
                        disk: disk.name.clone(),
                        template: t,
                        size: disk.size,
                    });
                }
                let size = disk.size.max(tsize);
                match format {
                    DiskFormat::Qcow2 => {
                        args.extend(["create", "-q", "-f", "qcow2", "-b"].map(OsString::from));
                        args.push(t.into_os_string());
                        args.extend(["-F".into(), tfmt.into(), tmp.clone().into_os_string()]);
                        args.push(size.to_string().into());
                    }
                    DiskFormat::Raw => {
                        args.extend(["convert", "-q", "-f"].map(OsString::from));
                        args.extend([tfmt.into(), "-O".into(), "raw".into()]);
                        args.extend([t.into_os_string(), tmp.clone().into_os_string()]);
                    }
                }
                self.qemu_img(vm, &args).await?;
                if format == DiskFormat::Raw {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&tmp)
                        .map_err(Self::io_err(vm, "resize the disk", &tmp))?;
                    if f.metadata().map(|m| m.len()).unwrap_or(0) < size {
                        f.set_len(size)
                            .map_err(Self::io_err(vm, "resize the disk", &tmp))?;
                    }
                }
            }
            None => {
                args.extend(["create", "-q", "-f", format.as_str()].map(OsString::from));
                args.push(tmp.clone().into_os_string());
                args.push(disk.size.to_string().into());
                self.qemu_img(vm, &args).await?;
            }
        }
        let linked = std::fs::hard_link(&tmp, &disk.path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                HvError::DiskExists {
                    vm: vm.to_owned(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                }
            } else {
                HvError::Io {
                    vm: vm.to_owned(),
                    action: "link the new disk",
                    path: disk.path.clone(),
                    source,
                }
            }
        })?;
        tracing::info!(vm, disk = %disk.name, path = %disk.path.display(), "disk created");
        Ok(())
    }

    /// Put a raw image restored from the datastore in place as `disk` of
    /// `spec`, in the disk's format: a raw disk is the file itself
    /// (renamed), a qcow2 disk is converted (`qemu-img convert -O qcow2`,
    /// zeroes left unallocated) and the raw file removed. Never overwrites
    /// an existing disk (`DiskExists`); nothing half-written is left at
    /// the disk's path.
    pub async fn install_restored_disk(
        &self,
        spec: &VmSpec,
        disk: &str,
        raw: &Path,
    ) -> Result<(), HvError> {
        let vm = spec.name.as_str();
        let d = spec
            .disks
            .iter()
            .find(|d| d.name == disk)
            .ok_or_else(|| HvError::UnknownDisk {
                vm: vm.to_owned(),
                disk: disk.to_owned(),
            })?;
        let exists = || HvError::DiskExists {
            vm: vm.to_owned(),
            disk: disk.to_owned(),
            path: d.path.clone(),
        };
        if d.path.exists() {
            return Err(exists());
        }
        let format = spec.qemu.clone().unwrap_or_default().disk_format(disk);
        let mut tmp = d.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let source = match format {
            DiskFormat::Raw => raw.to_owned(),
            DiskFormat::Qcow2 => {
                let _ = std::fs::remove_file(&tmp);
                let args: Vec<OsString> = vec![
                    "convert".into(),
                    "-q".into(),
                    "-f".into(),
                    "raw".into(),
                    "-O".into(),
                    "qcow2".into(),
                    raw.as_os_str().to_owned(),
                    tmp.clone().into_os_string(),
                ];
                if let Err(e) = self.qemu_img(vm, &args).await {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                tmp.clone()
            }
        };
        let linked = std::fs::hard_link(&source, &d.path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                exists()
            } else {
                HvError::Io {
                    vm: vm.to_owned(),
                    action: "link the restored disk",
                    path: d.path.clone(),
                    source,
                }
            }
        })?;
        let _ = std::fs::remove_file(raw);
        tracing::info!(vm, disk, format = format.as_str(), path = %d.path.display(), "restored disk installed");
        Ok(())
    }

    /// Format and virtual size of an image.
    async fn image_info(&self, vm: &str, path: &Path) -> Result<(String, u64), HvError> {
        let out = self
            .qemu_img(
                vm,
                &[
                    "info".into(),
                    "--output=json".into(),
                    "-U".into(),
                    path.as_os_str().to_owned(),
                ],
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| HvError::Tool {
            vm: vm.to_owned(),
            program: "qemu-img info",
            detail: e.to_string(),
        })?;
        Ok((
            v["format"].as_str().unwrap_or("raw").to_owned(),
            v["virtual-size"].as_u64().unwrap_or(0),
        ))
    }

    async fn qemu_img(&self, vm: &str, args: &[OsString]) -> Result<Vec<u8>, HvError> {
        let out = tokio::process::Command::new(&self.qemu_img)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| HvError::Spawn {
                vm: vm.to_owned(),
                command: self.qemu_img.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(HvError::Tool {
                vm: vm.to_owned(),
                program: "qemu-img",
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }
}

fn lock_table(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn on_event(table: &Mutex<Table>, name: &str, generation: u64, ev: &QmpEvent) {
    let mut table = lock_table(table);
    let Some(vm) = table
        .vms
        .get_mut(name)
        .filter(|vm| vm.generation == generation)
    else {
        return;
    };
    match ev.event.as_str() {
        "SHUTDOWN" => {
            let reason = ev.data["reason"].as_str().unwrap_or("unknown").to_owned();
            tracing::info!(vm = name, reason, "qemu SHUTDOWN event");
            vm.shutdown_reason = Some(reason);
        }
        "STOP" | "RESUME" if vm.status.is_alive() => {
            let state = if ev.event == "STOP" {
                VmState::Frozen
            } else {
                VmState::Running
            };
            if vm.status.state != state {
                vm.status.state = state;
                vm.status.since = Some(Utc::now());
            }
        }
        _ => {}
    }
}

/// Record the end of a run: Stopped when asked for, else Crashed.
async fn finish_run(
    table: &Mutex<Table>,
    name: &str,
    generation: u64,
    exit: String,
    events: Option<tokio::task::JoinHandle<()>>,
) {
    // Let the event task see the last events (SHUTDOWN) first: it ends when
    // the connection is dropped below or the socket closes.
    let qmp = lock_table(table)
        .vms
        .get_mut(name)
        .filter(|vm| vm.generation == generation)
        .and_then(|vm| vm.qmp.take());
    if let Some(q) = &qmp {
        let _ = tokio::time::timeout(Duration::from_secs(2), q.closed()).await;
    }
    drop(qmp);
    if let Some(handle) = events {
        let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    }
    let mut table = lock_table(table);
    let Some(vm) = table
        .vms
        .get_mut(name)
        .filter(|vm| vm.generation == generation)
    else {
        return;
    };
    let exit = match &vm.shutdown_reason {
        Some(reason) => format!("{exit} (shutdown reason: {reason})"),
        None => exit,
    };
    let state = if vm.stopping {
        tracing::info!(vm = name, %exit, "vm stopped");
        VmState::Stopped
    } else {
        tracing::warn!(vm = name, %exit, "vm crashed");
        VmState::Crashed
    };
    vm.status = VmStatus {
        state,
        pid: None,
        since: Some(Utc::now()),
        exit: Some(exit),
    };
    vm.pid = None;
}

/// True when KVM can be used: `/dev/kvm` opens read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// QEMU option values double their commas.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A disk name usable as a QEMU node name (letter first, then letters,
/// digits, `-`, `_`; at most 26 characters so `-file` still fits in 31).
fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 26
}

/// QEMU's arguments for `spec` (without the binary).
pub fn command_line(
    spec: &VmSpec,
    q: &QemuSpec,
    state_dir: &Path,
    kvm: bool,
) -> Result<Vec<String>, HvError> {
    let invalid = |detail: String| HvError::InvalidSpec {
        vm: spec.name.clone(),
        detail,
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let accel = match (q.accel, kvm) {
        (Accel::Kvm, _) | (Accel::Auto, true) => "kvm",
        _ => "tcg",
    };
    let machine = match q.machine {
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    };
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", spec.name.replace(',', ",,")),
    ]);
    push(&["-machine", machine, "-accel", accel]);
    if accel == "kvm" {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-m",
        &q.memory_mib.to_string(),
        "-smp",
        &q.cpus.max(1).to_string(),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    let console = spec.workdir.join(format!("{}.console.log", spec.name));
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", opt_path(&console)),
        "-serial",
        "chardev:console",
    ]);
    let socket = state_dir.join(format!("{}.qmp", spec.name));
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&socket)),
    ]);
    push(&[
        "-pidfile",
        &state_dir
            .join(format!("{}.qemu.pid", spec.name))
            .to_string_lossy(),
    ]);
    if let Some(kernel) = &q.kernel {
        push(&["-kernel", &kernel.to_string_lossy()]);
        if let Some(initrd) = &q.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        if let Some(append) = &q.append {
            push(&["-append", append]);
        }
    }
    for name in q.disk_formats.keys() {
        if !spec.disks.iter().any(|d| &d.name == name) {
            return Err(invalid(format!("disk_formats names unknown disk '{name}'")));
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if !valid_node_name(&disk.name) {
            return Err(invalid(format!(
                "disk name '{}' is not usable as a qemu node name (letter first, then letters, digits, '-', '_'; at most 26)",
                disk.name
            )));
        }
        let blockdev = serde_json::json!({
            "driver": q.disk_format(&disk.name).as_str(),
            "node-name": disk.name,
            "file": {
                "driver": "file",
                "filename": disk.path,
                "node-name": format!("{}-file", disk.name),
            },
        });
        push(&["-blockdev", &blockdev.to_string()]);
        let mut device = format!("virtio-blk-pci,drive={0},id={0}-blk", disk.name);
        if q.kernel.is_none() && i == 0 {
            device.push_str(",bootindex=0");
        }
        push(&["-device", &device]);
    }
    let mut netdev = "user,id=net0".to_owned();
    for f in &q.forwards {
        let proto = match f.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        netdev.push_str(&format!(
            ",hostfwd={proto}:{}:{}-:{}",
            f.host_addr, f.host_port, f.guest_port
        ));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
    if q.guest_agent {
        let qga = state_dir.join(format!("{}.qga", spec.name));
        push(&[
            "-chardev",
            &format!("socket,id=qga0,path={},server=on,wait=off", opt_path(&qga)),
            "-device",
            "virtio-serial-pci,id=qga-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]);
    }
    a.extend(spec.args.iter().cloned());
    Ok(a)
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// Last lines of QEMU's log, for start errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        format!("see {}", path.display())
    } else {
        tail.join(" | ")
    }
}

/// Write `<pid> <start time>` atomically.
fn record_pid(path: &Path, pid: u32) -> std::io::Result<()> {
    let (_, start) =
        proc_start(pid).ok_or_else(|| std::io::Error::other("qemu vanished at once"))?;
    let tmp = path.with_extension("pid.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{pid} {start}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// State letter and kernel start time of `pid`.
fn proc_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn send_kill(vm: &str, pid: u32) -> Result<(), HvError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    if raw <= 1 {
        return Ok(());
    }
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(HvError::Signal {
            vm: vm.to_owned(),
            signal: "SIGKILL",
            pgid: pid,
            source,
        }),
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> Capabilities {
        // App consistency needs a guest agent: see `vm_capabilities`.
        Capabilities {
            live_snapshot: true,
            dirty_tracking: true,
            app_consistent: true,
        }
    }

    fn vm_capabilities(&self, spec: &VmSpec) -> Capabilities {
        Capabilities {
            app_consistent: spec.qemu.as_ref().is_some_and(|q| q.guest_agent),
            ..self.capabilities()
        }
    }

    /// qcow2 disks with a template become overlays backed by it (the
    /// template must stay in place); raw disks get a converted copy. Disks
    /// without a template are created empty. Never overwrites.
    async fn create_from_template(
        &self,
        spec: &VmSpec,
        template_disks: &[(String, PathBuf)],
    ) -> Result<(), HvError> {
        let q = spec.qemu.clone().unwrap_or_default();
        crate::check_template_disks(spec, template_disks)?;
        for disk in &spec.disks {
            let template = template_disks
                .iter()
                .find(|(n, _)| n == &disk.name)
                .map(|(_, p)| p.as_path());
            self.create_disk(&spec.name, disk, q.disk_format(&disk.name), template)
                .await?;
        }
        Ok(())
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        self.adopt(&spec.name).await;
        if self.current(&spec.name).is_alive() {
            return self.status(&spec.name).await;
        }
        self.spawn(spec).await
    }

    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        self.terminate(name, Some(timeout)).await
    }

    async fn stop(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        self.terminate(name, None).await
    }

    async fn status(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name).await;
        if let Ok((qmp, _)) = self.live_qmp(name)
            && let Ok(st) = qmp
                .with_timeout(Duration::from_secs(3))
                .query_status()
                .await
        {
            let state = if st.running {
                VmState::Running
            } else {
                VmState::Frozen
            };
            self.set_state(name, state);
        }
        Ok(self.current(name))
    }

    async fn freeze(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name).await;
        let (qmp, state) = self.live_qmp(name)?;
        if state == VmState::Frozen {
            return Ok(());
        }
        qmp.stop().await?;
        self.set_state(name, VmState::Frozen);
        tracing::debug!(vm = name, "vm paused");
        Ok(())
    }

    async fn thaw(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name).await;
        let (qmp, _) = self.live_qmp(name)?;
        qmp.cont().await?;
        self.set_state(name, VmState::Running);
        tracing::debug!(vm = name, "vm resumed");
        Ok(())
    }

    /// A full read (no base): see [`Driver::snapshot_begin_from`].
    async fn snapshot_begin(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError> {
        self.snapshot_begin_from(spec, None, 64 << 10).await
    }

    async fn snapshot_begin_from(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        self.adopt(&spec.name).await;
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        if self.current(&spec.name).is_alive() {
            let (qmp, _) = self.live_qmp(&spec.name)?;
            self.live_point(spec, &qmp, base, align).await
        } else {
            self.cold_point(spec).await
        }
    }

    async fn snapshot_end(&self, spec: &VmSpec) -> Result<(), HvError> {
        self.drop_scratch(&spec.name);
        Ok(())
    }

    async fn snapshot_committed(&self, spec: &VmSpec, point: Option<&str>) -> Result<(), HvError> {
        self.finish_point(spec, point).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            name: "pbx1".into(),
            command: PathBuf::new(),
            args: vec!["-cpu".into(), "qemu64".into()],
            env: BTreeMap::new(),
            disks: vec![
                DiskSpec {
                    name: "system".into(),
                    path: "/v/sys,1.qcow2".into(),
                    size: 1 << 20,
                },
                DiskSpec {
                    name: "data".into(),
                    path: "/v/data.img".into(),
                    size: 1 << 20,
                },
            ],
            workdir: "/w".into(),
            qemu: None,
        }
    }

    #[test]
    fn command_line_from_spec() {
        let mut q = QemuSpec {
            memory_mib: 128,
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            append: Some("console=ttyS0".into()),
            forwards: vec![PortForward::udp(15060, 5060), PortForward::tcp(18080, 8080)],
            ..QemuSpec::default()
        };
        q.disk_formats.insert("system".into(), DiskFormat::Qcow2);
        let a = command_line(&spec(), &q, Path::new("/s"), false).unwrap();
        let s = a.join(" ");
        assert!(s.contains("-machine q35 -accel tcg -m 128 -smp 1"), "{s}");
        assert!(s.contains("-qmp unix:/s/pbx1.qmp,server=on,wait=off"));
        assert!(s.contains("path=/w/pbx1.console.log,append=on"));
        assert!(s.contains("-kernel /g/vmlinuz -initrd /g/initrd.img -append console=ttyS0"));
        assert!(s.contains("hostfwd=udp:127.0.0.1:15060-:5060,hostfwd=tcp:127.0.0.1:18080-:8080"));
        assert!(s.ends_with("-cpu qemu64"));
        // Disks in order, JSON blockdevs (commas in paths need no escaping).
        let devs: Vec<&String> = a.iter().filter(|x| x.starts_with("virtio-blk")).collect();
        assert_eq!(
            devs,
            [
                "virtio-blk-pci,drive=system,id=system-blk",
                "virtio-blk-pci,drive=data,id=data-blk"
            ]
        );
        let bd: serde_json::Value =
            serde_json::from_str(a.iter().find(|x| x.contains("qcow2")).unwrap()).unwrap();
        assert_eq!(bd["node-name"], "system");
        assert_eq!(bd["file"]["filename"], "/v/sys,1.qcow2");
        assert!(a.iter().any(|x| x.contains("\"driver\":\"raw\"")));

        assert!(!s.contains("qga"));
        q.guest_agent = true;
        let s = command_line(&spec(), &q, Path::new("/s"), false)
            .unwrap()
            .join(" ");
        assert!(s.contains("-chardev socket,id=qga0,path=/s/pbx1.qga,server=on,wait=off"));
        assert!(s.contains("virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"));

        let a = command_line(&spec(), &QemuSpec::default(), Path::new("/s"), true).unwrap();
        assert!(a.join(" ").contains("-accel kvm -cpu host"));
        assert!(a.iter().any(|x| x.ends_with("bootindex=0")));

        let mut bad = spec();
        bad.disks[0].name = "1st disk".into();
        assert!(matches!(
            command_line(&bad, &QemuSpec::default(), Path::new("/s"), false),
            Err(HvError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn qemu_spec_defaults_from_json() {
        let q: QemuSpec = serde_json::from_str(
            r#"{"kernel": "/k", "disk_formats": {"system": "qcow2"},
                "forwards": [{"protocol": "udp", "host_port": 5070, "guest_port": 5060}]}"#,
        )
        .unwrap();
        assert_eq!(q.memory_mib, 256);
        assert_eq!(q.machine, Machine::Q35);
        assert_eq!(q.accel, Accel::Auto);
        assert_eq!(q.disk_format("system"), DiskFormat::Qcow2);
        assert_eq!(q.disk_format("data"), DiskFormat::Raw);
        assert_eq!(q.forwards[0].host_addr, Ipv4Addr::LOCALHOST);
    }
}
