//! [`QemuDriver`]: its table of VMs, its files, and the small accessors the
//! lifecycle, disk and point code share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::qmp::Qmp;
use crate::{HvError, VmState, VmStatus};

/// How long QEMU may take to open its QMP socket after the spawn.
pub(super) const QMP_START: Duration = Duration::from_secs(30);
/// Timeout of a QMP call made by the driver.
pub(super) const QMP_CALL: Duration = Duration::from_secs(10);
/// How long `quit` may take before SIGKILL.
pub(super) const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the kernel to reap QEMU after SIGKILL.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);
/// Longest UNIX socket path (sun_path is 108 bytes with its NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

pub(super) struct Vm {
    pub(super) status: VmStatus,
    pub(super) pid: Option<u32>,
    /// Set when the driver asked the VM to end, so its exit is no crash.
    pub(super) stopping: bool,
    /// Flips to true when the current run has exited.
    pub(super) exited: watch::Receiver<bool>,
    pub(super) generation: u64,
    pub(super) qmp: Option<Qmp>,
    /// Reason of the last SHUTDOWN event of this run.
    pub(super) shutdown_reason: Option<String>,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) vms: HashMap<String, Vm>,
    pub(super) next_generation: u64,
}

/// Runs VMs with QEMU. See the module docs.
pub struct QemuDriver {
    pub(super) table: Arc<Mutex<Table>>,
    pub(super) state_dir: PathBuf,
    pub(super) qemu_img: PathBuf,
    /// Serializes adoption, which connects to QMP outside the table lock.
    pub(super) adopting: tokio::sync::Mutex<()>,
    /// Points begun and not yet committed or abandoned, per VM.
    pub(super) points: Mutex<HashMap<String, PendingPoint>>,
    /// Network namespace QEMU runs in (`ip netns exec NS qemu …`).
    pub(super) netns: Option<String>,
    /// TLS for live migrations ([`QemuDriver::with_migration_tls`]).
    pub(super) migration_tls: Option<crate::MigrationTls>,
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
            migration_tls: None,
        }
    }

    /// Run each VM's QEMU inside the network namespace `netns` (it must
    /// exist): QEMU is started as `ip netns exec NETNS qemu-system-x86_64
    /// …`, which execs QEMU, so the recorded pid is QEMU's own and adoption
    /// works as usual. The forwards' `host_addr` is bound inside that
    /// namespace; files and UNIX sockets (QMP, guest agent) are not
    /// affected.
    /// Live migrations onto and from this host's VMs go over TLS with
    /// `tls` (QEMU's `tls-creds-x509` for the NBD disk copy and the state
    /// stream); a destination without it is refused.
    pub fn with_migration_tls(mut self, tls: crate::MigrationTls) -> Self {
        self.migration_tls = Some(tls);
        self
    }

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

    pub(super) fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.pid"))
    }

    /// The QMP connection of a live VM (for callers that need raw access,
    /// e.g. block jobs).
    pub fn qmp(&self, name: &str) -> Option<Qmp> {
        self.lock().vms.get(name).and_then(|vm| vm.qmp.clone())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        lock_table(&self.table)
    }

    pub(super) fn current(&self, name: &str) -> VmStatus {
        self.lock()
            .vms
            .get(name)
            .map(|vm| vm.status.clone())
            .unwrap_or_else(VmStatus::stopped)
    }

    pub(super) fn io_err(
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

    pub(super) fn live_qmp(&self, name: &str) -> Result<(Qmp, VmState), HvError> {
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

    pub(super) fn set_state(&self, name: &str, state: VmState) {
        if let Some(vm) = self.lock().vms.get_mut(name)
            && vm.status.is_alive()
            && vm.status.state != state
        {
            vm.status.state = state;
            vm.status.since = Some(Utc::now());
        }
    }
}

pub(super) fn lock_table(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A point begun on a live VM and not yet committed or abandoned.
#[derive(Debug, Clone)]
pub(super) struct PendingPoint {
    pub(super) disks: Vec<PendingDisk>,
}

#[derive(Debug, Clone)]
pub(super) struct PendingDisk {
    pub(super) node: String,
    /// `standby:<base>` when the point is incremental.
    pub(super) base_bitmap: Option<String>,
    pub(super) persistent: bool,
}
