//! `[sites]`, `[hosts]` and `[agents]`: where VMs run and who runs them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bandwidth::{BandwidthSchedule, BandwidthWindow};
use super::units::duration_str;

/// `[agents.NAME]`: a `standby agent` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub site: String,
    /// The host the agent runs on, if it is a hypervisor host's agent.
    #[serde(default)]
    pub host: Option<String>,
    /// How often the agent reports; it is missed after three intervals.
    #[serde(default = "default_heartbeat", with = "duration_str")]
    pub heartbeat: Duration,
    /// Where the agent listens (`http://ADDR:PORT`). With `host` set, the
    /// host's VMs are run by this agent instead of in the controller: start,
    /// stop, points and restores go to it over HTTP.
    #[serde(default)]
    pub url: Option<String>,
    /// Where other sites' agents reach this agent to copy points into
    /// the datastores it serves (a replication network, say); default
    /// `url`.
    #[serde(default)]
    pub peer_url: Option<String>,
    /// The agent's shared secret, sent by the agent on heartbeats and
    /// results and by the controller on calls to `url`. Prefer
    /// `token_file`; an agent with neither is refused.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the agent's secret (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The programs this agent runs as process VMs: the command it would
    /// start (a bare name resolved as for `[vms.NAME] command`) must be
    /// one of these, resolved the same way. Read by the agent from its own
    /// copy of this file; none: the agent refuses every process VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_commands: Vec<String>,
}

impl AgentConfig {
    /// The agent's secret, from `token` or `token_file` (None: neither).
    pub fn secret(&self) -> std::io::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        match &self.token_file {
            Some(f) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display()))),
            None => Ok(None),
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default)]
    pub description: String,
    /// Values a VM's `args` and `env` may use as `{site.NAME}` where the
    /// VM runs at this site: its address there, say (a VM often has
    /// another IP at its DR site).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The site's IANA time zone (`Europe/Berlin`), in which its
    /// `bandwidth` windows are written; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `[[sites.NAME.bandwidth]]`: how fast copies may leave this site,
    /// by time of day (see [`super::BandwidthSchedule`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bandwidth: Vec<BandwidthWindow>,
}

impl Site {
    /// The site's bandwidth windows with its time zone; none when it has
    /// no window (copies leave it unlimited).
    pub fn bandwidth_schedule(&self) -> Option<BandwidthSchedule> {
        (!self.bandwidth.is_empty()).then(|| BandwidthSchedule {
            timezone: self.timezone.clone().unwrap_or_else(|| "UTC".into()),
            windows: self.bandwidth.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A VM is a supervised local process (the embedded default).
    Process,
    /// A VM is a `qemu-system-x86_64` machine described by its
    /// `[vms.NAME.qemu]` table (in-process, or at a remote agent).
    Qemu,
    /// A VM is a libvirt domain at the host's libvirtd (`libvirt_uri`):
    /// defined from its `[vms.NAME.qemu]` table, or adopted as it is
    /// (`[vms.NAME.libvirt] adopt = true`). Needs a standby built with
    /// the cargo feature `libvirt`.
    Libvirt,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverKind::Process => f.write_str("process"),
            DriverKind::Qemu => f.write_str("qemu"),
            DriverKind::Libvirt => f.write_str("libvirt"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub site: String,
    pub driver: DriverKind,
    /// The libvirtd of a libvirt host (default `qemu:///system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_uri: Option<String>,
    /// Where this host keeps VM disk images: `<disk_dir>/<vm>/<disk>.img`.
    pub disk_dir: PathBuf,
    /// Network namespace the host's VMs run in (in-process hosts only):
    /// each VM's command runs as `ip netns exec NAME <command> <args>`.
    #[serde(default)]
    pub netns: Option<String>,
    /// A command that powers the host off for certain (an IPMI or Redfish
    /// call, say), as the program and its arguments: run when the host's
    /// site is fenced and its agent cannot be reached; its success
    /// confirms the fence (see docs/fencing.md). `STANDBY_HOST` and
    /// `STANDBY_SITE` are set in its environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_fence: Vec<String>,
    /// Where the other hosts reach this one to live-migrate a VM onto it
    /// (`move-vm` with `live: true`). None: loopback for an in-process
    /// host; a host at a remote agent then takes no live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<HostMigration>,
}

/// `[hosts.NAME.migration]`: the address and ports a live migration onto
/// the host listens on (its running state and its disks, over TCP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMigration {
    /// An IP address of the host that the other hosts reach; site
    /// variables expand (`"{site.addr}"`).
    pub address: String,
    /// The first and last port a migration may listen on: each takes two
    /// free ones of the range (default 31400–31499).
    #[serde(default = "default_migration_ports")]
    pub ports: [u16; 2],
}

pub fn default_migration_ports() -> [u16; 2] {
    [31400, 31499]
}
