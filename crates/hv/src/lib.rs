//! Hypervisor drivers: one [`Driver`] trait, one implementation per kind of
//! workload.
//!
//! # Layout
//!
//! - this file: the driver-neutral types ([`VmSpec`], [`VmStatus`],
//!   [`SnapshotSource`], …), the [`Driver`] trait and [`HvError`].
//! - [`process`]: the embedded default. A workload is a supervised local
//!   process whose disks are image files handed to it on its command line.
//! - [`qemu`]: real VMs. A VM is a supervised `qemu-system-x86_64` built
//!   from the [`QemuSpec`] in [`VmSpec::qemu`] (memory, CPUs, virtio disks
//!   in qcow2 or raw, kernel or disk boot, user-mode networking with port
//!   forwards) and controlled over QMP. Live points: dirty bitmaps and
//!   backup jobs into scratch images, guest-agent fsfreeze; live
//!   migration by NBD block mirror and QEMU migration (see its docs).
//! - [`qga`]: the minimal guest-agent client (sync, fsfreeze, deadlines).
//! - [`line`]: reading one reply line of QMP or the guest agent, bounded.
//! - [`qmp`]: the thin async QMP client the qemu driver uses (id-matched
//!   commands, event stream, timeouts, raw escape hatch).
//! - [`libvirt`]: VMs as libvirt domains (cargo feature `libvirt`; the
//!   spec types and XML builder are always built, so a build without it
//!   refuses `driver = "libvirt"` by name). A VM is a libvirt VM when its
//!   spec has [`VmSpec::libvirt`]. Live migration is libvirt's own
//!   peer-to-peer migration with storage copy.
//!
//! Both drivers keep `<state dir>/<vm>.pid` (`<pid> <kernel start time>`)
//! so a restarted controller adopts the VMs still running instead of
//! starting a second copy; both run each VM in its own session.
//!
//! # Invariants
//!
//! - Every lifecycle call is idempotent: starting a running VM returns its
//!   status, stopping a stopped one returns its status. Runbooks retry
//!   actions blindly, so this is load-bearing.
//! - A VM that exits without being asked to is [`VmState::Crashed`] and keeps
//!   its exit description; one that exits because of `shutdown`/`stop` is
//!   [`VmState::Stopped`].
//! - Between [`Driver::snapshot_begin`] and [`Driver::snapshot_end`] the
//!   files named in the [`SnapshotSource`] hold a crash-consistent (or
//!   better, see [`SnapshotSource::consistency_note`]) image that the caller
//!   may read. The caller must always call `snapshot_end`, even when reading
//!   failed, and then [`Driver::snapshot_committed`] with the point's id
//!   once it is committed (or `None`): dirty tracking forgets a point's
//!   changes only then.
//! - Disk images are never overwritten by [`Driver::create_from_template`].
//!
//! Moving a VM to another host or site is composed by the controller from
//! the calls here (shutdown, a final point, restore at the target, start),
//! which works across drivers and sites alike. A driver with
//! [`Capabilities::live_migration`] also moves a running VM between two of
//! its hosts without stopping it, in three halves that the two hosts'
//! agents run (the libvirt shape: prepare, perform, finish, confirm):
//!
//! 1. destination: [`Driver::migrate_in_prepare`] creates the disks empty,
//!    starts the VM waiting for its state, and returns a [`MigrationTarget`];
//! 2. source: [`Driver::migrate_out`] copies the disks and the running
//!    state to it; the source ends paused, still whole;
//! 3. destination: [`Driver::migrate_in_finish`] resumes the VM there (the
//!    switchover), or [`Driver::migrate_in_abort`] removes it;
//! 4. source: [`Driver::migrate_out_confirm`] quits the source (moved) or
//!    resumes it (not moved: only after the destination was aborted).
//!
//! Until step 3 resumes the destination, the source's disks are the VM's
//! and it can always be resumed; from then on the destination is the VM.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod libvirt;
pub mod line;
pub mod process;
pub mod qemu;
pub mod qga;
pub mod qmp;

pub use libvirt::LibvirtSpec;
pub use process::ProcessDriver;
pub use qemu::{QemuDriver, QemuSpec};

/// Everything a driver needs to run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    /// Program to run (process driver) or hypervisor binary (qemu driver).
    pub command: PathBuf,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Working directory; the VM's console/log goes to `workdir/<name>.log`.
    pub workdir: PathBuf,
    /// Machine description for the qemu driver; other drivers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuSpec>,
    /// Set for a VM of the libvirt driver (which takes the machine from
    /// `qemu` when it defines the domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtSpec>,
}

impl VmSpec {
    /// Path of the log file that receives the VM's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.workdir.join(format!("{}.log", self.name))
    }
}

/// One disk image of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub name: String,
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Stopped,
    Frozen,
    Crashed,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Frozen => "frozen",
            VmState::Crashed => "crashed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub state: VmState,
    pub pid: Option<u32>,
    /// When the VM entered `state` (None for a VM this driver never ran).
    pub since: Option<DateTime<Utc>>,
    /// How the last run ended: "exit code 1", "signal 9".
    pub exit: Option<String>,
}

impl VmStatus {
    /// Status of a VM the driver knows nothing about.
    pub fn stopped() -> Self {
        VmStatus {
            state: VmState::Stopped,
            pid: None,
            since: None,
            exit: None,
        }
    }

    /// Running or frozen: the workload exists and holds its disks.
    pub fn is_alive(&self) -> bool {
        matches!(self.state, VmState::Running | VmState::Frozen)
    }
}

/// What a driver can do; the planner picks the snapshot method from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Points can be taken without stopping the workload for the whole read.
    pub live_snapshot: bool,
    /// [`SnapshotDisk::dirty`] can be `Some`.
    pub dirty_tracking: bool,
    /// The guest can be asked to flush (fsfreeze) before a point.
    pub app_consistent: bool,
    /// A running VM can move to another host of this driver without
    /// stopping ([`Driver::migrate_out`] and its halves).
    #[serde(default)]
    pub live_migration: bool,
}

/// Where the destination half of a live migration listens: an address of
/// the destination host that the source host reaches, and two free ports
/// (the VM's running state, its disks over NBD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationListen {
    pub addr: IpAddr,
    pub state_port: u16,
    pub disk_port: u16,
}

/// What [`Driver::migrate_in_prepare`] hands to the source half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationTarget {
    pub listen: MigrationListen,
    /// Per disk of the VM (by name), the NBD export that receives it.
    pub exports: Vec<MigrationExport>,
    /// The destination takes the streams over TLS only, proving itself
    /// with a certificate for this DNS name ([`MigrationTls`]); `None`:
    /// plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
    /// The libvirt driver's destination: where the source's libvirtd
    /// reaches the destination's, and the destination's own paths (the
    /// qemu driver leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<libvirt::LibvirtMigrationTarget>,
}

/// TLS for a host's live-migration streams (the running state and the
/// disks): its certificate (PEM, with its chain) and key, the CA bundle
/// the other hosts' certificates are checked against, and the DNS name
/// its own certificate carries. Both ends verify each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationExport {
    pub disk: String,
    pub export: String,
    /// Bytes; must equal the source disk's size.
    pub size: u64,
}

/// Limits of [`Driver::migrate_out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    /// Longest pause of the VM the state copy aims for (QEMU's
    /// `downtime-limit`); the pause also holds the disks' last writes.
    pub downtime_limit: Duration,
    /// Bytes per second of the state copy; `None`: the driver's default.
    pub max_bandwidth: Option<u64>,
    /// The whole copy (disks, then state) gives up after this; the
    /// source keeps running.
    pub timeout: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            downtime_limit: Duration::from_millis(300),
            max_bandwidth: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// What one [`Driver::migrate_out`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Bytes the disk copy processed (whole disks, zeroes included, plus
    /// what the guest rewrote meanwhile).
    pub disk_bytes: u64,
    /// From the start to every disk in sync.
    pub disk_sync: Duration,
    /// Bytes of memory and device state sent.
    pub state_bytes: u64,
    /// From the start of the state copy to its end.
    pub state_copy: Duration,
    /// How long the VM was paused on the source, as the hypervisor
    /// measured it (the last pages, the disks' completion, the device
    /// state).
    pub downtime: Option<Duration>,
    /// Of that pause, from the driver seeing the source paused to it
    /// seeing the copy completed (the disks' completion inside).
    pub switchover: Duration,
    pub total: Duration,
}

/// Files to read for a recovery point, valid until `snapshot_end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSource {
    pub disks: Vec<SnapshotDisk>,
    /// Human-readable consistency label, e.g. "crash-consistent (SIGSTOP)".
    pub consistency_note: String,
    /// The guest flushed and froze its filesystems for the point (guest
    /// agent fsfreeze); false = crash-consistent at best.
    #[serde(default)]
    pub app_consistent: bool,
    /// A time no later than the instant the data is from, taken as late
    /// as the driver can tell (a live snapshot: after the guest froze,
    /// just before the snapshot transaction). `None`: the caller stamps
    /// the point itself.
    #[serde(default)]
    pub taken_after: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDisk {
    pub name: String,
    /// File to read.
    pub path: PathBuf,
    /// Byte ranges changed since the previous point; `None` = unknown, read all.
    pub dirty: Option<Vec<Range<u64>>>,
}

/// A hypervisor driver. Object-safe; used as `Arc<dyn Driver>`.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Short name of the driver: "process", "qemu", "libvirt".
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Create the VM's disks from template images (`(disk name, image)`),
    /// refusing to overwrite an existing disk.
    async fn create_from_template(
        &self,
        spec: &VmSpec,
        template_disks: &[(String, PathBuf)],
    ) -> Result<(), HvError>;

    /// Start the VM. Already running (or frozen) → its current status.
    /// Fails if a disk file is missing.
    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, HvError>;

    /// Graceful stop: ask the guest, wait up to `timeout`, then force.
    async fn shutdown(&self, name: &str, timeout: Duration) -> Result<VmStatus, HvError>;

    /// Forced stop. Idempotent.
    async fn stop(&self, name: &str) -> Result<VmStatus, HvError>;

    /// Current status; an unknown VM is `Stopped`.
    async fn status(&self, name: &str) -> Result<VmStatus, HvError>;

    /// Pause the VM so its disks stop changing. Error if it is not running.
    async fn freeze(&self, name: &str) -> Result<(), HvError>;

    /// Resume a frozen VM.
    async fn thaw(&self, name: &str) -> Result<(), HvError>;

    /// Make the disks readable as a consistent image (see the crate docs).
    async fn snapshot_begin(&self, spec: &VmSpec) -> Result<SnapshotSource, HvError>;

    /// Release what `snapshot_begin` took (thaw, drop the backup job, …).
    async fn snapshot_end(&self, spec: &VmSpec) -> Result<(), HvError>;

    /// What this driver can do for this VM (e.g. app consistency needs a
    /// guest agent in its spec). Defaults to [`Driver::capabilities`].
    fn vm_capabilities(&self, spec: &VmSpec) -> Capabilities {
        let _ = spec;
        self.capabilities()
    }

    /// [`Driver::snapshot_begin`] for a point written on top of point
    /// `base` (a store point id; `None` = no base, a full read) whose
    /// dirty ranges the caller reads in whole units of `align` bytes (its
    /// chunk size, a power of two). A driver with dirty tracking returns
    /// [`SnapshotDisk::dirty`] only when its tracking counts from exactly
    /// `base`, and otherwise says on the consistency note why it read all.
    async fn snapshot_begin_from(
        &self,
        spec: &VmSpec,
        base: Option<&str>,
        align: u64,
    ) -> Result<SnapshotSource, HvError> {
        let _ = (base, align);
        self.snapshot_begin(spec).await
    }

    /// After [`Driver::snapshot_end`]: the point was committed to the store
    /// as `point`, or abandoned (`None`). Dirty tracking forgets the
    /// changes a point holds only once it is committed, so an abandoned
    /// point's changes are still in the next one.
    async fn snapshot_committed(&self, spec: &VmSpec, point: Option<&str>) -> Result<(), HvError> {
        let _ = (spec, point);
        Ok(())
    }

    /// Live migration, destination half 1: create `spec`'s disks (empty,
    /// at their sizes; none may exist) and start the VM waiting for its
    /// state on `listen`. `spec` is the destination's: its own disk paths,
    /// work directory and forwards, the same machine and disks otherwise.
    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, HvError> {
        let _ = (spec, listen);
        Err(self.unsupported("live migration"))
    }

    /// Live migration, source half: copy the running VM's disks and state
    /// to `target`. On success the source is paused, whole, and must be
    /// settled with [`Driver::migrate_out_confirm`]; on failure it runs on
    /// untouched.
    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, HvError> {
        let _ = (spec, target, options);
        Err(self.unsupported("live migration"))
    }

    /// Live migration, destination half 2 (the switchover): after a
    /// successful [`Driver::migrate_out`], resume the VM here.
    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, HvError> {
        let _ = spec;
        Err(self.unsupported("live migration"))
    }

    /// Live migration given up at the destination: stop the VM there and
    /// remove the disks [`Driver::migrate_in_prepare`] created.
    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), HvError> {
        let _ = spec;
        Err(self.unsupported("live migration"))
    }

    /// Live migration, source half 2: `moved` (the destination resumed) →
    /// stop the source; not moved (the destination was aborted) → resume
    /// it.
    async fn migrate_out_confirm(&self, spec: &VmSpec, moved: bool) -> Result<VmStatus, HvError> {
        let _ = (spec, moved);
        Err(self.unsupported("live migration"))
    }

    /// [`HvError::Unsupported`] for this driver.
    fn unsupported(&self, operation: &'static str) -> HvError {
        HvError::Unsupported {
            driver: self.kind(),
            operation,
        }
    }
}

/// Before [`Driver::create_from_template`] creates anything: every
/// template names a disk of the VM, and no disk of the VM exists yet.
pub fn check_template_disks(
    spec: &VmSpec,
    template_disks: &[(String, PathBuf)],
) -> Result<(), HvError> {
    for (disk_name, _) in template_disks {
        if !spec.disks.iter().any(|d| &d.name == disk_name) {
            return Err(HvError::UnknownDisk {
                vm: spec.name.clone(),
                disk: disk_name.clone(),
            });
        }
    }
    for disk in &spec.disks {
        if disk.path.exists() {
            return Err(HvError::DiskExists {
                vm: spec.name.clone(),
                disk: disk.name.clone(),
                path: disk.path.clone(),
            });
        }
    }
    Ok(())
}

/// Errors of every driver.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("disk '{disk}' of vm '{vm}' is missing at {}", path.display())]
    DiskMissing {
        vm: String,
        disk: String,
        path: PathBuf,
    },
    #[error("disk '{disk}' of vm '{vm}' already exists at {}", path.display())]
    DiskExists {
        vm: String,
        disk: String,
        path: PathBuf,
    },
    #[error("vm '{vm}' has no disk named '{disk}'")]
    UnknownDisk { vm: String, disk: String },
    #[error("template image {} for disk '{disk}' of vm '{vm}' is larger than the disk ({size} bytes)", template.display())]
    TemplateTooLarge {
        vm: String,
        disk: String,
        template: PathBuf,
        size: u64,
    },
    #[error("vm '{vm}' is not running (state {state})")]
    NotRunning { vm: String, state: VmState },
    #[error("unable to start vm '{vm}' with {}", command.display())]
    Spawn {
        vm: String,
        command: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to {action} for vm '{vm}' at {}", path.display())]
    Io {
        vm: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to send {signal} to vm '{vm}' (process group {pgid})")]
    Signal {
        vm: String,
        signal: &'static str,
        pgid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("vm '{vm}' did not exit within {waited:?} of SIGKILL")]
    ExitTimeout { vm: String, waited: Duration },
    #[error("vm '{vm}' did not stop within {waited:?} of SIGSTOP; it was thawed")]
    FreezeTimeout { vm: String, waited: Duration },
    #[error("qmp command '{command}' failed on {}: {class}: {desc}", socket.display())]
    QmpCommand {
        socket: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
    #[error("qmp command '{command}' got no answer within {waited:?} on {}", socket.display())]
    QmpTimeout {
        socket: PathBuf,
        command: String,
        waited: Duration,
    },
    #[error("unable to {action} qmp socket {}", socket.display())]
    QmpIo {
        socket: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("qmp connection {} is closed (qemu exited?)", socket.display())]
    QmpClosed { socket: PathBuf },
    #[error("qmp protocol error on {}: {detail}", socket.display())]
    QmpProtocol { socket: PathBuf, detail: String },
    #[error("qmp reply on {} is longer than {limit} bytes; connection closed", socket.display())]
    QmpTooLong { socket: PathBuf, limit: usize },
    #[error("vm '{vm}' failed to start: {detail}")]
    StartFailed { vm: String, detail: String },
    #[error("{program} failed for vm '{vm}': {detail}")]
    Tool {
        vm: String,
        program: &'static str,
        detail: String,
    },
    #[error("invalid spec for vm '{vm}': {detail}")]
    InvalidSpec { vm: String, detail: String },
    #[error("unable to {action} for vm '{vm}' at {uri}: {detail}")]
    Libvirt {
        vm: String,
        action: &'static str,
        uri: String,
        detail: String,
        /// The daemon could not be reached (retrying may help).
        temporary: bool,
    },
    #[error(
        "the {driver} driver is not in this build of standby: build it with the cargo feature `{feature}` (cargo build -p standby-cli --features {feature})"
    )]
    FeatureMissing {
        driver: &'static str,
        feature: &'static str,
    },
    #[error("live migration of vm '{vm}' failed: {detail}")]
    Migration { vm: String, detail: String },
    #[error("{operation} is not supported by the {driver} driver")]
    Unsupported {
        driver: &'static str,
        operation: &'static str,
    },
}

impl HvError {
    /// Whether retrying the same call later can succeed without someone
    /// changing the spec or the files first.
    pub fn is_temporary(&self) -> bool {
        match self {
            HvError::NotRunning { .. }
            | HvError::Io { .. }
            | HvError::Signal { .. }
            | HvError::ExitTimeout { .. }
            | HvError::FreezeTimeout { .. }
            | HvError::QmpTimeout { .. }
            | HvError::QmpIo { .. }
            | HvError::QmpClosed { .. }
            | HvError::Migration { .. } => true,
            HvError::Libvirt { temporary, .. } => *temporary,
            HvError::DiskMissing { .. }
            | HvError::DiskExists { .. }
            | HvError::UnknownDisk { .. }
            | HvError::TemplateTooLarge { .. }
            | HvError::Spawn { .. }
            | HvError::Unsupported { .. }
            | HvError::FeatureMissing { .. }
            | HvError::QmpCommand { .. }
            | HvError::QmpProtocol { .. }
            | HvError::QmpTooLong { .. }
            | HvError::StartFailed { .. }
            | HvError::Tool { .. }
            | HvError::InvalidSpec { .. } => false,
        }
    }
}
