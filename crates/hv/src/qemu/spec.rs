//! [`QemuSpec`]: how QEMU runs one VM (memory, CPUs, machine, disks'
//! formats, port forwards).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How QEMU runs one VM; carried in [`VmSpec::qemu`](crate::VmSpec::qemu).
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
