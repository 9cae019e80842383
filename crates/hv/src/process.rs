//! The `process` driver: a VM is a supervised local process.
//!
//! Each VM runs in its own session and process group (`setsid`), so signals
//! sent to the group reach every child of the workload: SIGSTOP/SIGCONT for
//! freeze/thaw (the crash-consistency mechanism), SIGTERM then SIGKILL for
//! shutdown. stdout and stderr are appended to `workdir/<name>.log`; the
//! process runs with `workdir` as its current directory.
//!
//! A task per child awaits its exit and records it: if the driver had asked
//! the VM to stop, the VM becomes `Stopped`, otherwise `Crashed` with the
//! exit description. Children are not killed when the driver is dropped
//! (`kill_on_drop(false)`); call [`ProcessDriver::stop_all`] on shutdown.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::{
    Capabilities, Driver, HvError, SnapshotDisk, SnapshotSource, VmSpec, VmState, VmStatus,
};

/// How long to wait for the kernel to reap a process after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Block size of the sparse template copy; all-zero blocks become holes.
const COPY_BLOCK: usize = 64 * 1024;

struct Vm {
    status: VmStatus,
    /// Process group id (= pid of the leader) of the current or last run.
    pgid: Option<u32>,
    /// Set when we asked the VM to stop, so its exit is not a crash.
    stopping: bool,
    /// Flips to true when the current run has exited.
    exited: watch::Receiver<bool>,
    /// Distinguishes runs of the same name, so a late exit of an old run
    /// never overwrites a newer one.
    generation: u64,
}

#[derive(Default)]
struct Table {
    vms: HashMap<String, Vm>,
    next_generation: u64,
}

/// Supervises local processes. Cheap to clone handles via `Arc`.
#[derive(Default)]
pub struct ProcessDriver {
    table: Arc<Mutex<Table>>,
    /// Where pid files live (`<dir>/<vm>.pid`); see [`ProcessDriver::with_state_dir`].
    state_dir: Option<PathBuf>,
}

impl ProcessDriver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A driver that records each running VM in `<dir>/<vm>.pid` (pid and
    /// kernel start time) and, after a restart of its owner, adopts the VMs
    /// still running: they are reported, stopped and frozen like its own,
    /// so a restarted controller never starts a second copy. A VM found
    /// frozen (its owner died mid-point) is thawed at once.
    pub fn with_state_dir(dir: impl Into<PathBuf>) -> Self {
        ProcessDriver {
            table: Arc::default(),
            state_dir: Some(dir.into()),
        }
    }

    fn pid_file(&self, name: &str) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.pid")))
    }

    /// Take over a VM started by an earlier owner of the state dir, if its
    /// process still runs. No-op when the name is known already.
    fn adopt(&self, name: &str) {
        let Some(path) = self.pid_file(name) else {
            return;
        };
        let mut table = self.lock();
        if table.vms.contains_key(name) {
            return;
        }
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
        // The same pid with another start time is a different process.
        let Some((state, started)) = proc_state(pid).filter(|(_, t)| *t == start) else {
            let _ = std::fs::remove_file(&path);
            return;
        };
        if state == 'T' {
            tracing::warn!(
                vm = name,
                pid,
                "thawing a vm left frozen by a previous controller"
            );
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
        tracing::info!(vm = name, pid, "adopted a running vm");
        let generation = table.next_generation;
        table.next_generation += 1;
        let (tx, rx) = watch::channel(false);
        table.vms.insert(
            name.to_owned(),
            Vm {
                status: VmStatus {
                    state: VmState::Running,
                    pid: Some(pid),
                    since: Some(Utc::now()),
                    exit: None,
                },
                pgid: Some(pid),
                stopping: false,
                exited: rx,
                generation,
            },
        );
        drop(table);
        // Not our child: watch /proc until it is gone.
        let shared = self.table.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while proc_state(pid).is_some_and(|(st, t)| t == started && st != 'Z') {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = std::fs::remove_file(&path);
            let mut table = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(vm) = table.vms.get_mut(&name)
                && vm.generation == generation
            {
                vm.status = VmStatus {
                    state: if vm.stopping {
                        VmState::Stopped
                    } else {
                        VmState::Crashed
                    },
                    pid: None,
                    since: Some(Utc::now()),
                    exit: Some("exited (adopted process, status unknown)".into()),
                };
            }
            drop(table);
            let _ = tx.send(true);
        });
    }

    /// Force-stop every running or frozen VM (server shutdown).
    pub async fn stop_all(&self) -> Vec<HvError> {
        let mut errors = Vec::new();
        for name in self.alive_names() {
            if let Err(e) = self.stop(&name).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Gracefully stop every running or frozen VM, each with `timeout`.
    pub async fn shutdown_all(&self, timeout: Duration) -> Vec<HvError> {
        let names = self.alive_names();
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let driver = ProcessDriver {
                table: self.table.clone(),
                state_dir: self.state_dir.clone(),
            };
            set.spawn(async move { driver.shutdown(&name, timeout).await.err() });
        }
        let mut errors = Vec::new();
        while let Some(res) = set.join_next().await {
            if let Ok(Some(e)) = res {
                errors.push(e);
            }
        }
        errors
    }

    /// Names and statuses of every VM this driver has run.
    pub fn list(&self) -> Vec<(String, VmStatus)> {
        let table = self.lock();
        let mut out: Vec<_> = table
            .vms
            .iter()
            .map(|(n, vm)| (n.clone(), vm.status.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn alive_names(&self) -> Vec<String> {
        self.lock()
            .vms
            .iter()
            .filter(|(_, vm)| vm.status.is_alive())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means another task panicked mid-update; the
        // table itself stays usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask a live VM to end with `signal`, wait up to `timeout`, then SIGKILL.
    async fn terminate(
        &self,
        name: &str,
        signal: Signal,
        timeout: Duration,
    ) -> Result<VmStatus, HvError> {
        let mut exited = {
            let mut table = self.lock();
            let Some(vm) = table.vms.get_mut(name) else {
                return Ok(VmStatus::stopped());
            };
            if !vm.status.is_alive() {
                return Ok(vm.status.clone());
            }
            vm.stopping = true;
            let pgid = vm.pgid.unwrap_or_default();
            send(name, pgid, signal)?;
            if vm.status.state == VmState::Frozen {
                // A stopped process only acts on SIGTERM once continued.
                send(name, pgid, Signal::SIGCONT)?;
            }
            vm.exited.clone()
        };
        tracing::info!(vm = name, signal = %signal, "stopping vm");
        if signal != Signal::SIGKILL
            && tokio::time::timeout(timeout, exited.wait_for(|e| *e))
                .await
                .is_err()
        {
            tracing::warn!(vm = name, ?timeout, "vm ignored {signal}, sending SIGKILL");
            let pgid = self
                .lock()
                .vms
                .get(name)
                .and_then(|vm| vm.pgid)
                .unwrap_or_default();
            send(name, pgid, Signal::SIGKILL)?;
        }
        match tokio::time::timeout(KILL_WAIT, exited.wait_for(|e| *e)).await {
            Ok(_) => Ok(self.current(name)),
            Err(_) => Err(HvError::ExitTimeout {
                vm: name.to_owned(),
                waited: KILL_WAIT,
            }),
        }
    }

    fn current(&self, name: &str) -> VmStatus {
        self.lock()
            .vms
            .get(name)
            .map(|vm| vm.status.clone())
            .unwrap_or_else(VmStatus::stopped)
    }

    fn spawn(&self, spec: &VmSpec, table: &mut Table) -> Result<VmStatus, HvError> {
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        let io_err = |action, path: &Path| {
            let vm = spec.name.clone();
            let path = path.to_owned();
            move |source| HvError::Io {
                vm,
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&spec.workdir)
            .map_err(io_err("create the work directory", &spec.workdir))?;
        let log_path = spec.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open the log", &log_path))?;
        let log_err = log.try_clone().map_err(io_err("open the log", &log_path))?;

        let mut cmd = tokio::process::Command::new(&spec.command);
        cmd.args(&spec.args)
            .envs(&spec.env)
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // Each VM leads its own session (and so its own process group).
        // A mere process group would be orphaned when the controller dies,
        // and the kernel then sends SIGHUP to an orphaned group holding a
        // stopped process: a controller killed mid-point would kill the
        // frozen VM with it. A session of its own is orphaned from the
        // start, so nothing is sent.
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and
        // only calls setsid(2), which is async-signal-safe; it allocates
        // nothing and touches no state shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| HvError::Spawn {
            vm: spec.name.clone(),
            command: spec.command.clone(),
            source,
        })?;
        let pid = child.id();
        let pid_file = self.pid_file(&spec.name);
        if let (Some(path), Some(pid)) = (&pid_file, pid) {
            // Without its pid file a restarted controller could not see this
            // VM and might start a second copy: no record, no VM.
            if let Err(source) = record_pid(path, pid) {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                return Err(HvError::Io {
                    vm: spec.name.clone(),
                    action: "record the pid in",
                    path: path.clone(),
                    source,
                });
            }
        }
        let generation = table.next_generation;
        table.next_generation += 1;
        let (tx, rx) = watch::channel(false);
        let status = VmStatus {
            state: VmState::Running,
            pid,
            since: Some(Utc::now()),
            exit: None,
        };
        table.vms.insert(
            spec.name.clone(),
            Vm {
                status: status.clone(),
                pgid: pid,
                stopping: false,
                exited: rx,
                generation,
            },
        );
        tracing::info!(vm = %spec.name, ?pid, command = %spec.command.display(), "vm started");

        let shared = self.table.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("unknown exit ({e})"),
            };
            let mut table = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(vm) = table.vms.get_mut(&name)
                && vm.generation == generation
            {
                if let Some(path) = &pid_file {
                    let _ = std::fs::remove_file(path);
                }
                let state = if vm.stopping {
                    tracing::info!(vm = %name, %exit, "vm stopped");
                    VmState::Stopped
                } else {
                    tracing::warn!(vm = %name, %exit, "vm crashed");
                    VmState::Crashed
                };
                vm.status = VmStatus {
                    state,
                    pid: None,
                    since: Some(Utc::now()),
                    exit: Some(exit),
                };
            }
            drop(table);
            let _ = tx.send(true);
        });
        Ok(status)
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// Write `<pid> <start time>` to `path` atomically (temporary file,
/// fsync, rename).
fn record_pid(path: &Path, pid: u32) -> std::io::Result<()> {
    let (_, start) =
        proc_state(pid).ok_or_else(|| std::io::Error::other("the process vanished at once"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pid.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{pid} {start}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What standby needs from a `/proc/.../stat` file.
struct ProcStat {
    state: char,
    pgrp: u32,
    /// Kernel start time (clock ticks since boot): with the pid, it names
    /// one process even after pids are reused.
    start: u64,
}

fn read_stat(path: &Path) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces) in parentheses:
    // state is field 3, pgrp field 5, starttime field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// State letter and start time of `pid`; None when there is no such process.
fn proc_state(pid: u32) -> Option<(char, u64)> {
    read_stat(Path::new(&format!("/proc/{pid}/stat"))).map(|s| (s.state, s.start))
}

/// True when no thread of any process of group `pgid` is runnable: each
/// is stopped (`T`), traced (`t`), a zombie or gone. Threads matter: the
/// leader may be stopped while a worker thread is still inside a write.
fn group_stopped(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let stopped = |state: char| matches!(state, 'T' | 't' | 'Z' | 'X');
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(stat) = read_stat(Path::new(&format!("/proc/{pid}/stat"))) else {
            continue;
        };
        if stat.pgrp != pgid {
            continue;
        }
        if !stopped(stat.state) {
            return false;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Some(st) = read_stat(&task.path().join("stat"))
                && !stopped(st.state)
            {
                return false;
            }
        }
    }
    true
}

fn send(vm: &str, pgid: u32, signal: Signal) -> Result<(), HvError> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Ok(());
    };
    if raw <= 1 {
        // Never signal group 0 (ourselves) or 1 (init) by accident.
        return Ok(());
    }
    match killpg(Pid::from_raw(raw), signal) {
        // Already gone: the exit task will record it.
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(HvError::Signal {
            vm: vm.to_owned(),
            signal: signal.as_str(),
            pgid,
            source,
        }),
    }
}

/// Copy `src` to a new file `dst`, leaving all-zero blocks as holes, and make
/// the result `len` bytes long. Refuses to overwrite `dst`.
fn sparse_copy(src: &Path, dst: &Path, len: u64) -> std::io::Result<()> {
    let mut input = File::open(src)?;
    let mut out = OpenOptions::new().write(true).create_new(true).open(dst)?;
    let result = (|| {
        let mut buf = vec![0u8; COPY_BLOCK];
        let mut pos = 0u64;
        loop {
            let n = read_full(&mut input, &mut buf)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                out.seek(SeekFrom::Start(pos))?;
                out.write_all(&buf[..n])?;
            }
            pos += n as u64;
        }
        out.set_len(len.max(pos))?;
        out.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Create an empty sparse disk of `len` bytes; refuses to overwrite.
fn create_empty(dst: &Path, len: u64) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).create_new(true).open(dst)?;
    f.set_len(len)?;
    f.sync_all()
}

#[async_trait]
impl Driver for ProcessDriver {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            live_snapshot: false,
            dirty_tracking: false,
            app_consistent: false,
            live_migration: false,
        }
    }

    /// Sparse-copies each template image to its disk path; disks without a
    /// template are created empty (sparse) with their declared size. The
    /// result is `max(template size, disk size)` bytes long.
    async fn create_from_template(
        &self,
        spec: &VmSpec,
        template_disks: &[(String, PathBuf)],
    ) -> Result<(), HvError> {
        // Validate everything before creating anything.
        crate::check_template_disks(spec, template_disks)?;
        for disk in &spec.disks {
            let template = template_disks
                .iter()
                .find(|(n, _)| n == &disk.name)
                .map(|(_, p)| p.clone());
            let vm = spec.name.clone();
            let disk = disk.clone();
            tokio::task::spawn_blocking(move || -> Result<(), HvError> {
                if let Some(parent) = disk.path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| HvError::Io {
                        vm: vm.clone(),
                        action: "create the disk directory",
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                let res = match &template {
                    Some(t) => {
                        let tlen = std::fs::metadata(t)
                            .map_err(|source| HvError::Io {
                                vm: vm.clone(),
                                action: "read the template image",
                                path: t.clone(),
                                source,
                            })?
                            .len();
                        if disk.size > 0 && tlen > disk.size {
                            return Err(HvError::TemplateTooLarge {
                                vm,
                                disk: disk.name,
                                template: t.clone(),
                                size: disk.size,
                            });
                        }
                        sparse_copy(t, &disk.path, disk.size)
                    }
                    None => create_empty(&disk.path, disk.size),
                };
                res.map_err(|source| {
                    if source.kind() == std::io::ErrorKind::AlreadyExists {
                        HvError::DiskExists {
                            vm: vm.clone(),
                            disk: disk.name.clone(),
                            path: disk.path.clone(),
                        }
                    } else {
                        HvError::Io {
                            vm: vm.clone(),
                            action: "copy the template image",
                            path: disk.path.clone(),
                            source,
                        }
                    }
                })?;
                tracing::info!(vm, disk = %disk.name, path = %disk.path.display(), "disk created");
                Ok(())
            })
            .await
            .map_err(|e| HvError::Io {
                vm: spec.name.clone(),
                action: "copy the template image",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })??;
        }
        Ok(())
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        self.adopt(&spec.name);
        let mut table = self.lock();
        if let Some(vm) = table.vms.get(&spec.name)
            && vm.status.is_alive()
        {
            return Ok(vm.status.clone());
        }
        self.spawn(spec, &mut table)
    }

    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, HvError> {
        self.adopt(name);
        self.terminate(name, Signal::SIGTERM, timeout).await
    }

    async fn stop(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name);
        self.terminate(name, Signal::SIGKILL, Duration::ZERO).await
    }

    async fn status(&self, name: &str) -> Result<VmStatus, HvError> {
        self.adopt(name);
        Ok(self.current(name))
    }

    async fn freeze(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name);
        let pgid = {
            let mut table = self.lock();
            let Some(vm) = table.vms.get_mut(name) else {
                return Err(HvError::NotRunning {
                    vm: name.to_owned(),
                    state: VmState::Stopped,
                });
            };
            match vm.status.state {
                VmState::Frozen => return Ok(()),
                VmState::Running => {
                    let pgid = vm.pgid.unwrap_or_default();
                    send(name, pgid, Signal::SIGSTOP)?;
                    vm.status.state = VmState::Frozen;
                    vm.status.since = Some(Utc::now());
                    pgid
                }
                state => {
                    return Err(HvError::NotRunning {
                        vm: name.to_owned(),
                        state,
                    });
                }
            }
        };
        // kill() returns once the signal is queued; a process in a system
        // call stops only when it returns. Wait until every member of the
        // group is really stopped, so nothing it writes lands after the
        // point starts reading.
        for _ in 0..400 {
            if group_stopped(pgid) {
                tracing::debug!(vm = name, "vm frozen");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A point of a half-stopped VM would not be crash-consistent: undo
        // the freeze and say so rather than label it wrongly.
        let _ = self.thaw(name).await;
        Err(HvError::FreezeTimeout {
            vm: name.to_owned(),
            waited: Duration::from_millis(800),
        })
    }

    async fn thaw(&self, name: &str) -> Result<(), HvError> {
        self.adopt(name);
        let mut table = self.lock();
        let Some(vm) = table.vms.get_mut(name) else {
            return Err(HvError::NotRunning {
                vm: name.to_owned(),
                state: VmState::Stopped,
            });
        };
        match vm.status.state {
            VmState::Running => Ok(()),
            VmState::Frozen => {
                send(name, vm.pgid.unwrap_or_default(), Signal::SIGCONT)?;
                vm.status.state = VmState::Running;
                vm.status.since = Some(Utc::now());
                tracing::debug!(vm = name, "vm thawed");
                Ok(())
            }
            state => Err(HvError::NotRunning {
                vm: name.to_owned(),
                state,
            }),
        }
    }

    async fn snapshot_begin(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError> {
        self.adopt(&spec.name);
        for disk in &spec.disks {
            if !disk.path.is_file() {
                return Err(HvError::DiskMissing {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    path: disk.path.clone(),
                });
            }
        }
        let consistency_note = match self.current(&spec.name).state {
            VmState::Running | VmState::Frozen => {
                self.freeze(&spec.name).await?;
                "crash-consistent: process group paused with SIGSTOP".to_owned()
            }
            VmState::Stopped | VmState::Crashed => "cold: workload not running".to_owned(),
        };
        Ok(SnapshotSource {
            disks: spec
                .disks
                .iter()
                .map(|d| SnapshotDisk {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    dirty: None,
                })
                .collect(),
            consistency_note,
            app_consistent: false,
            taken_after: None,
        })
    }

    async fn snapshot_end(&self, spec: &VmSpec) -> Result<(), HvError> {
        if self.current(&spec.name).state == VmState::Frozen {
            self.thaw(&spec.name).await?;
        }
        Ok(())
    }
}
