//! The QEMU process: spawn, adoption by a restarted driver, QMP events,
//! termination, and the pid files that make adoption safe.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::cmdline::{command_line, kvm_usable};
use super::driver::{
    KILL_WAIT, MAX_SOCKET_PATH, QMP_CALL, QMP_START, QUIT_WAIT, QemuDriver, Table, Vm, lock_table,
};
use crate::qmp::{Qmp, QmpEvent};
use crate::{Driver, HvError, VmSpec, VmState, VmStatus};

impl QemuDriver {
    /// Take over a VM started by an earlier driver on the same state dir,
    /// if its QEMU still runs. No-op when the name is known already.
    pub(super) async fn adopt(&self, name: &str) {
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
        // Only a plain pause is ours to undo: a migration's target (marked)
        // or a source paused by a migration must never run by itself.
        let incoming = self.incoming_marker(name).exists();
        if let Some(q) = &qmp
            && let Ok(st) = q.query_status().await
            && !st.running
            && (incoming || st.status != "paused")
        {
            tracing::warn!(
                vm = name,
                pid,
                status = st.status,
                "adopting a vm paused by a migration; left paused"
            );
            state = VmState::Frozen;
        } else if let Some(q) = &qmp
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
        // Ends when QEMU closes the socket too: a caller still holding a
        // clone of the connection (`terminate` does) keeps the event
        // stream open, and the exit would wait for this task in vain.
        let closed = qmp.on_close();
        let shared = self.table.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    biased;
                    ev = events.recv() => match ev {
                        Ok(ev) => on_event(&shared, &name, generation, &ev),
                        Err(_) => break,
                    },
                    () = &mut closed => {
                        // The reader sent every event before it closed.
                        while let Ok(ev) = events.try_recv() {
                            on_event(&shared, &name, generation, &ev);
                        }
                        break;
                    }
                }
            }
        })
    }

    pub(super) async fn spawn(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
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
    pub(super) async fn terminate(
        &self,
        name: &str,
        graceful: Option<Duration>,
    ) -> Result<VmStatus, HvError> {
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
