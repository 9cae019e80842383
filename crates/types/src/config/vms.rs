//! `[vms.NAME]` and `[groups.NAME]`: the protected VMs, how they run,
//! their disks, and the protection groups that schedule them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Schedule, duration_str, opt_duration_str};
use crate::Retention;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The host the VM runs on at its home site.
    pub host: String,
    /// Where the VM is restored when its home site is lost (shorthand for
    /// `dr_sites = [dr_site]`).
    #[serde(default)]
    pub dr_site: Option<String>,
    /// The VM's DR sites, in order of preference: a failover of the site
    /// where it runs moves it to the first of these that is not fenced
    /// and not down, else back home if home is (sites with hosts only).
    #[serde(default)]
    pub dr_sites: Vec<String>,
    /// Program to run (process driver; required there) or the QEMU binary
    /// (qemu driver; default `qemu-system-x86_64`). A bare name is looked
    /// up next to the `standby` binary first, then on `PATH`.
    #[serde(default)]
    pub command: String,
    /// Arguments; `{disk.NAME}` becomes the path of disk NAME on the host
    /// where the VM runs, `{vm}` its name and `{site}` the site.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Grace period between SIGTERM and SIGKILL on shutdown.
    #[serde(default = "default_shutdown_timeout", with = "duration_str")]
    pub shutdown_timeout: Duration,
    /// The machine of a VM on a qemu host (required there, refused on a
    /// process host).
    #[serde(default)]
    pub qemu: Option<QemuVm>,
    /// How a libvirt host treats the VM's domain (libvirt hosts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<LibvirtVm>,
    /// The tenant that owns the VM (none: operators' own).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Higher comes back first among the VMs of its plan tier (or of a
    /// failover without a plan); default 0.
    #[serde(default)]
    pub priority: i32,
    /// Made from a template through the API, the CLI or the portal and
    /// kept in the database, not declared in `standby.toml` (see
    /// [`Config::with_managed_vms`](super::Config::with_managed_vms)).
    #[serde(skip)]
    pub managed: bool,
}

impl Vm {
    /// The VM's DR sites in order of preference: `dr_sites`, else
    /// `dr_site`.
    pub fn dr_sites(&self) -> Vec<&str> {
        if self.dr_sites.is_empty() {
            self.dr_site.iter().map(String::as_str).collect()
        } else {
            self.dr_sites.iter().map(String::as_str).collect()
        }
    }

    /// The program the driver runs: `command`, or QEMU's default binary
    /// for a qemu VM without one.
    pub fn program(&self) -> &str {
        if self.command.is_empty() && self.qemu.is_some() {
            "qemu-system-x86_64"
        } else {
            &self.command
        }
    }
}

/// `[vms.NAME.libvirt]`: how a libvirt host treats the VM's domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtVm {
    /// Use the existing domain named like the VM as libvirt has it (its
    /// disks are named by their target devices, `vda`, …); written by
    /// `standby vm import`. Without it standby defines the domain from
    /// `[vms.NAME.qemu]`.
    #[serde(default)]
    pub adopt: bool,
}

impl Vm {
    /// An adopted libvirt domain (`[vms.NAME.libvirt] adopt = true`).
    pub fn adopted(&self) -> bool {
        self.libvirt.as_ref().is_some_and(|l| l.adopt)
    }
}

/// `{site.VAR}` replaced by the site's variables (unknown ones left).
pub fn expand_site_vars(s: &str, vars: Option<&BTreeMap<String, String>>) -> String {
    let mut s = s.to_string();
    for (k, v) in vars.into_iter().flatten() {
        s = s.replace(&format!("{{site.{k}}}"), v);
    }
    s
}

/// `[vms.NAME.qemu]`: how QEMU runs the VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuVm {
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default)]
    pub machine: QemuMachine,
    #[serde(default)]
    pub accel: QemuAccel,
    /// Direct kernel boot; without it QEMU boots from the first disk.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `{vm}`, `{site}` and `{site.VAR}` expand.
    #[serde(default)]
    pub append: Option<String>,
    /// Host ports forwarded into the guest (user-mode networking).
    #[serde(default)]
    pub forwards: Vec<QemuForward>,
    /// The guest runs `qemu-ga`: points freeze its filesystems
    /// (application-consistent).
    #[serde(default)]
    pub guest_agent: bool,
}

fn default_memory_mib() -> u32 {
    256
}

fn default_cpus() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuMachine {
    #[default]
    Q35,
    Pc,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    /// KVM when `/dev/kvm` is usable, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardProtocol {
    Tcp,
    Udp,
}

/// One `[[vms.NAME.qemu.forwards]]` entry: `host_addr:host_port` on the
/// host reaches `guest_port` in the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuForward {
    pub protocol: ForwardProtocol,
    /// An IPv4 address, or `{site.VAR}` (the VM's address at the site
    /// where it runs). Default 127.0.0.1.
    #[serde(default = "default_host_addr")]
    pub host_addr: String,
    pub host_port: u16,
    pub guest_port: u16,
}

fn default_host_addr() -> String {
    "127.0.0.1".into()
}

/// Image format of a disk (qemu VMs; process VMs use raw files).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub name: String,
    pub size: ByteSize,
    /// `raw` (default) or `qcow2` (qemu VMs only).
    #[serde(default)]
    pub format: DiskFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub members: Vec<String>,
    pub schedule: Schedule,
    /// Datastores that receive every point. The point is written to the
    /// first one at the VM's site (or the first listed), then synced to the
    /// others.
    pub datastores: Vec<String>,
    #[serde(default = "default_chunk_size")]
    pub chunk_size: ByteSize,
    #[serde(default)]
    pub retention: Retention,
    /// Age of the newest point beyond which the group is out of target.
    #[serde(default, with = "opt_duration_str")]
    pub rpo_target: Option<Duration>,
    /// The tenant that owns the group (none: operators' own).
    #[serde(default)]
    pub tenant: Option<String>,
    /// `warm`: each member's DR host keeps a standing copy of its disks
    /// at the newest point (each new point applied as it arrives, only
    /// what changed, journaled), so a failover writes almost nothing
    /// before the VM starts. `none` (default): a failover restores.
    #[serde(default)]
    pub replica: Replica,
    /// Made through the API or the portal and kept in the database, not
    /// declared in `standby.toml` (see [`Config::with_managed_groups`]).
    #[serde(skip)]
    pub managed: bool,
}

/// Whether a group's members keep warm replicas at their DR site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replica {
    #[default]
    None,
    Warm,
}

fn default_chunk_size() -> ByteSize {
    ByteSize(64 * 1024)
}
