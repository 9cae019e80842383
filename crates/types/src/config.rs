//! `standby.toml`: the one file that describes a standby installation.
//!
//! Parsing happens in two passes. serde reads the file into [`Config`]
//! (syntax and type errors carry toml's own span); [`Config::validate`] then
//! checks cross references (a VM's host exists, a group's datastores exist,
//! ...). Every error is a [`ConfigError`] naming the file, line, column and
//! the dotted field path, e.g.
//! `standby.toml:14:8: vms.pbx1.host: unknown host 'site9-host1'`.
//!
//! Relative paths in the file are relative to the file's directory;
//! [`Config::load`] resolves them so the rest of standby sees absolute paths.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Retention;
use crate::watch::{
    CONTROLLER_VANTAGE, Labels, ProbeCheck, ProbeSpec, ReceiverConfig, RouteConfig,
};

/// Default TCP address of the controller's HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7780";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub controller: Controller,
    #[serde(default)]
    pub sites: BTreeMap<String, Site>,
    #[serde(default)]
    pub hosts: BTreeMap<String, Host>,
    #[serde(default)]
    pub datastores: BTreeMap<String, DatastoreConfig>,
    #[serde(default)]
    pub vms: BTreeMap<String, Vm>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Agents that run as their own process (`standby agent`), usually at
    /// another site, as vantage points and heartbeat sources.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    /// Network probes (TCP, HTTP, UDP, SIP) and where they run from.
    #[serde(default)]
    pub probes: BTreeMap<String, ProbeConfig>,
    /// Where notifications go.
    #[serde(default)]
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// Which alerts go to which receivers, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Services behind the front door: one client address that follows
    /// the site where the service is active.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Customers sharing the system: a tenant's users see and act on
    /// their own VMs, groups, services, points, alerts and incidents only.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// `[tenants.NAME]`: a customer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Shown in the portal.
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    /// Address the API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the controller keeps its database, logs and VM work files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Rule files (YAML) read in addition to the built-in rules; they are
    /// re-read when they change, and a broken file keeps the previous rules.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Load the rules shipped with standby (VNF, VM, host and site down,
    /// RPO missed).
    #[serde(default = "yes")]
    pub builtin_rules: bool,
    /// How long events are kept.
    #[serde(default = "default_events_retention", with = "duration_str")]
    pub events_retention: Duration,
    /// Runbook files, or directories of `*.yaml` runbooks, read in
    /// addition to the built-in runbooks; a runbook with a built-in's name
    /// replaces it.
    #[serde(default)]
    pub runbooks: Vec<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Also serve `/metrics` here, without authentication (plain HTTP,
    /// e.g. on a monitoring network). On `listen` it needs a viewer token.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            listen: default_listen(),
            data_dir: default_data_dir(),
            rules: Vec::new(),
            builtin_rules: true,
            events_retention: default_events_retention(),
            runbooks: Vec::new(),
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_events_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

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
    /// The agent's shared secret, sent by the agent on heartbeats and
    /// results and by the controller on calls to `url`. Prefer
    /// `token_file`; an agent with neither is refused.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the agent's secret (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
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

/// `[probes.NAME]`: a network check, run from one or more vantage points.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// `tcp`, `http`, `udp` or `sip`.
    pub kind: String,
    /// `host:port` for tcp, udp and sip.
    #[serde(default)]
    pub target: Option<String>,
    /// For http.
    #[serde(default)]
    pub url: Option<String>,
    /// For http: the expected status (default any 2xx).
    #[serde(default)]
    pub status: Option<u16>,
    /// For http: text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// For udp: the datagram sent.
    #[serde(default)]
    pub send: Option<String>,
    /// For udp: text the answer must contain.
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default = "default_probe_interval", with = "duration_str")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// A run fails only when every attempt fails.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Vantage points: `controller` or `agent:NAME`.
    #[serde(default = "default_from")]
    pub from: Vec<String>,
    /// What the probe is about: `site`, `host`, `vm`, `scope`, ...
    #[serde(default)]
    pub labels: Labels,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_attempts() -> u32 {
    1
}

fn default_from() -> Vec<String> {
    vec![CONTROLLER_VANTAGE.to_string()]
}

impl ProbeConfig {
    /// The check this probe makes, or what is missing.
    pub fn check(&self) -> Result<ProbeCheck, (&'static str, String)> {
        let need = |v: &Option<String>, f: &'static str| {
            v.clone()
                .ok_or((f, format!("a {} probe needs '{f}'", self.kind)))
        };
        match self.kind.as_str() {
            "tcp" => Ok(ProbeCheck::Tcp {
                target: need(&self.target, "target")?,
            }),
            "http" => Ok(ProbeCheck::Http {
                url: need(&self.url, "url")?,
                status: self.status,
                body_contains: self.body_contains.clone(),
            }),
            "udp" => Ok(ProbeCheck::Udp {
                target: need(&self.target, "target")?,
                send: need(&self.send, "send")?,
                expect: self.expect.clone(),
            }),
            "sip" => Ok(ProbeCheck::Sip {
                target: need(&self.target, "target")?,
            }),
            other => Err((
                "kind",
                format!("unknown probe kind '{other}' (expected tcp, http, udp or sip)"),
            )),
        }
    }

    /// The spec a vantage point runs.
    pub fn spec(&self, name: &str) -> Option<ProbeSpec> {
        Some(ProbeSpec {
            name: name.to_string(),
            check: self.check().ok()?,
            interval: self.interval,
            timeout: self.timeout,
            attempts: self.attempts.max(1),
            labels: self.labels.clone(),
        })
    }
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("standby-data")
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A VM is a supervised local process (the embedded default).
    Process,
    /// A VM is a `qemu-system-x86_64` machine described by its
    /// `[vms.NAME.qemu]` table (in-process hosts only).
    Qemu,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverKind::Process => f.write_str("process"),
            DriverKind::Qemu => f.write_str("qemu"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub site: String,
    pub driver: DriverKind,
    /// Where this host keeps VM disk images: `<disk_dir>/<vm>/<disk>.img`.
    pub disk_dir: PathBuf,
    /// Network namespace the host's VMs run in (in-process hosts only):
    /// each VM's command runs as `ip netns exec NAME <command> <args>`.
    #[serde(default)]
    pub netns: Option<String>,
}

/// Where a datastore keeps its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    /// A directory (`path`).
    #[default]
    Local,
    /// Azure Blob Storage: `account`, `container`, `access_key_env`.
    Azure,
    /// S3 or a compatible store: `bucket`, `region`, key variables.
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreConfig {
    pub site: String,
    #[serde(default)]
    pub kind: DatastoreKind,
    /// Directory of a local datastore.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Azure: the storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Azure: the container.
    #[serde(default)]
    pub container: Option<String>,
    /// S3: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// S3: the region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Service endpoint, for Azurite, MinIO, moto or a private cloud.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where in the container or bucket the datastore lives.
    #[serde(default)]
    pub prefix: String,
    /// Azure: environment variable holding the account key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    /// S3: environment variables holding the key id and secret.
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    /// S3: allow plain HTTP to the endpoint (test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// Upload bandwidth limit per second, e.g. `"50MiB"`.
    #[serde(default)]
    pub upload_limit: Option<ByteSize>,
    /// Encrypt the datastore (set when it is created; needed to open it).
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
}

/// `[datastores.NAME.encryption]`: where the key comes from. The key
/// itself is never written to the datastore in the clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A key file (32 random bytes, hex): `standby store keygen FILE`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding a passphrase (Argon2id).
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

impl DatastoreConfig {
    /// Where it lives, for people: a path or `azure://account/container/prefix`.
    pub fn location(&self) -> String {
        let with_prefix = |base: String| {
            if self.prefix.is_empty() {
                base
            } else {
                format!("{base}/{}", self.prefix.trim_matches('/'))
            }
        };
        match self.kind {
            DatastoreKind::Local => self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            DatastoreKind::Azure => with_prefix(format!(
                "azure://{}/{}",
                self.account.as_deref().unwrap_or(""),
                self.container.as_deref().unwrap_or("")
            )),
            DatastoreKind::S3 => {
                with_prefix(format!("s3://{}", self.bucket.as_deref().unwrap_or("")))
            }
        }
    }

    /// The problem with this datastore's settings, as (field, message).
    fn check(&self) -> Result<(), (&'static str, String)> {
        let need = |v: bool, f: &'static str| {
            if v {
                Ok(())
            } else {
                Err((f, format!("a {} datastore needs '{f}'", self.kind_name())))
            }
        };
        let refuse = |v: bool, f: &'static str| {
            if v {
                Err((
                    f,
                    format!("'{f}' does not apply to a {} datastore", self.kind_name()),
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            DatastoreKind::Local => {
                need(self.path.is_some(), "path")?;
                refuse(self.account.is_some(), "account")?;
                refuse(self.container.is_some(), "container")?;
                refuse(self.bucket.is_some(), "bucket")?;
                refuse(self.endpoint.is_some(), "endpoint")?;
            }
            DatastoreKind::Azure => {
                refuse(self.path.is_some(), "path")?;
                refuse(self.bucket.is_some(), "bucket")?;
                need(self.account.is_some(), "account")?;
                need(self.container.is_some(), "container")?;
                need(self.access_key_env.is_some(), "access_key_env")?;
            }
            DatastoreKind::S3 => {
                refuse(self.path.is_some(), "path")?;
                refuse(self.container.is_some(), "container")?;
                need(self.bucket.is_some(), "bucket")?;
                need(self.access_key_id_env.is_some(), "access_key_id_env")?;
                need(
                    self.secret_access_key_env.is_some(),
                    "secret_access_key_env",
                )?;
            }
        }
        if let Some(e) = &self.encryption
            && e.key_file.is_some() == e.passphrase_env.is_some()
        {
            return Err((
                "encryption",
                "give exactly one of 'key_file' and 'passphrase_env'".into(),
            ));
        }
        Ok(())
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            DatastoreKind::Local => "local",
            DatastoreKind::Azure => "azure",
            DatastoreKind::S3 => "s3",
        }
    }
}

/// `[services.NAME]`: a service clients reach through the front door.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The VM providing the service.
    pub vm: String,
    /// The front door's address, e.g. `0.0.0.0:5060`.
    pub listen: String,
    /// What is forwarded (default both).
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// The service's address at each site, e.g.
    /// `{ site1 = "198.18.0.2:5060", site2 = "198.18.0.6:5060" }`.
    pub backends: BTreeMap<String, String>,
    /// How runbooks check the service at a site.
    #[serde(default)]
    pub probe: Option<ServiceProbe>,
    /// For `probe = "http"`: the URL to check.
    #[serde(default)]
    pub probe_url: Option<String>,
    /// A UDP flow (one client address) is forgotten after this long
    /// without a datagram either way.
    #[serde(default = "default_idle_timeout", with = "duration_str")]
    pub idle_timeout: Duration,
    /// The tenant that owns the service (default: its VM's).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A transport the front door forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

/// How a service is checked at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProbe {
    Sip,
    Tcp,
    Http,
}

impl fmt::Display for ServiceProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceProbe::Sip => "sip",
            ServiceProbe::Tcp => "tcp",
            ServiceProbe::Http => "http",
        })
    }
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Udp, Protocol::Tcp]
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl ServiceConfig {
    /// The listen address (validated by [`Config::parse`]).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }

    /// The backend address at `site` (validated by [`Config::parse`]).
    pub fn backend(&self, site: &str) -> Option<std::net::SocketAddr> {
        self.backends.get(site)?.parse().ok()
    }

    /// The problem with this service's own settings, as (field path below
    /// the service, message). References are checked by the caller.
    fn check(&self) -> Result<(), (Vec<String>, String)> {
        let f = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        if self.listen_addr().is_none() {
            return Err((
                f(&["listen"]),
                format!(
                    "'{}' is not an address like 0.0.0.0:5060 (an IP address and a port)",
                    self.listen
                ),
            ));
        }
        if self.protocols.is_empty() {
            return Err((
                f(&["protocols"]),
                "give at least one of \"udp\" and \"tcp\"".into(),
            ));
        }
        for (i, p) in self.protocols.iter().enumerate() {
            if self.protocols[..i].contains(p) {
                return Err((
                    f(&["protocols", &i.to_string()]),
                    format!("protocol '{p}' is listed twice"),
                ));
            }
        }
        if self.backends.is_empty() {
            return Err((
                f(&["backends"]),
                "a service needs a backend address at one site at least".into(),
            ));
        }
        for (site, addr) in &self.backends {
            match addr.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => {}
                _ => {
                    return Err((
                        f(&["backends", site]),
                        format!(
                            "'{addr}' is not a backend address like 198.18.0.2:5060 (an IP address and a port)"
                        ),
                    ));
                }
            }
        }
        match (self.probe, &self.probe_url) {
            (Some(ServiceProbe::Http), None) => {
                return Err((f(&["probe"]), "an http probe needs 'probe_url'".into()));
            }
            (Some(ServiceProbe::Http), Some(u))
                if !(u.starts_with("http://") || u.starts_with("https://")) =>
            {
                return Err((
                    f(&["probe_url"]),
                    format!("'{u}' is not an http:// or https:// URL"),
                ));
            }
            (_, Some(_)) if self.probe != Some(ServiceProbe::Http) => {
                return Err((
                    f(&["probe_url"]),
                    "'probe_url' applies only to probe = \"http\"".into(),
                ));
            }
            _ => {}
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err((
                f(&["idle_timeout"]),
                "an idle timeout below 1s would cut off flows between two datagrams".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The host the VM runs on at its home site.
    pub host: String,
    /// Where the VM is restored when its home site is lost.
    #[serde(default)]
    pub dr_site: Option<String>,
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
    /// The tenant that owns the VM (none: operators' own).
    #[serde(default)]
    pub tenant: Option<String>,
}

impl Config {
    /// The tenant owning VM `vm` (None: not a tenant's, or no such VM).
    pub fn tenant_of_vm(&self, vm: &str) -> Option<&str> {
        self.vms.get(vm).and_then(|v| v.tenant.as_deref())
    }

    /// The tenant owning service `name`: its own, else its VM's.
    pub fn tenant_of_service(&self, name: &str) -> Option<&str> {
        let s = self.services.get(name)?;
        s.tenant.as_deref().or_else(|| self.tenant_of_vm(&s.vm))
    }

    /// The tenant owning protection group `name`.
    pub fn tenant_of_group(&self, name: &str) -> Option<&str> {
        self.groups.get(name).and_then(|g| g.tenant.as_deref())
    }
}

impl Vm {
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
}

fn default_chunk_size() -> ByteSize {
    ByteSize(64 * 1024)
}

/// When a protection group runs: `every 30s` or a cron expression
/// (`*/5 * * * *`, five or six fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(String),
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("every ") {
            let d = humantime::parse_duration(rest.trim())
                .map_err(|e| format!("bad interval '{rest}': {e}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("interval '{rest}' is shorter than 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        croner::Cron::new(s)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("bad cron expression '{s}': {e}"))?;
        Ok(Schedule::Cron(s.to_string()))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => f.write_str(c),
        }
    }
}

impl Schedule {
    /// The first run strictly after `after`.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Every(d) => Some(after + chrono::Duration::from_std(*d).ok()?),
            Schedule::Cron(c) => {
                let cron = croner::Cron::new(c).with_seconds_optional().parse().ok()?;
                cron.find_next_occurrence(&after, false).ok()
            }
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written `65536`, `"64KiB"`, `"64 MiB"`, `"2GiB"`
/// (K/M/G alone mean KiB/MiB/GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad size '{s}': expected a number with an optional unit"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1 << 10,
            "m" | "mib" | "mb" => 1 << 20,
            "g" | "gib" | "gb" => 1 << 30,
            "t" | "tib" | "tb" => 1 << 40,
            other => return Err(format!("bad size '{s}': unknown unit '{other}'")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v >= 1 << shift && v.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

pub(crate) mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("bad duration '{s}': {e}")))
    }
}

pub(crate) mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("bad duration '{s}': {e}")))
    }
}

/// A configuration error with its place in the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}{message}", location(.file, .line, .column), field_prefix(.field))]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place (the file is unreadable).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, e.g. `vms.pbx1.host`.
    pub field: Option<String>,
    pub message: String,
}

fn location(file: &Path, line: &usize, column: &usize) -> String {
    if *line == 0 {
        format!("{}: ", file.display())
    } else {
        format!("{}:{line}:{column}: ", file.display())
    }
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

/// 1-based line and column of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Span of the value at a dotted path (`["vms", "pbx1", "host"]`, array
/// elements by index), or of the nearest ancestor that exists.
fn span_of(src: &str, path: &[String]) -> Option<Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(src).ok()?;
    let mut best = root.span();
    let mut cur: Option<&DeValue> = None;
    let mut table = Some(root.get_ref());
    for seg in path {
        let next = match (table, cur) {
            (Some(t), _) => t.get(seg.as_str()),
            (None, Some(DeValue::Array(a))) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        let Some(next) = next else { break };
        best = next.span();
        cur = Some(next.get_ref());
        table = next.get_ref().as_table();
    }
    Some(best)
}

impl Config {
    /// Read, parse, validate and resolve relative paths of a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: None,
            message: format!("unable to read configuration: {e}"),
        })?;
        let mut cfg = Config::parse(&src, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// Parse and validate configuration text; `file` is only used in errors.
    pub fn parse(src: &str, file: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
            ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field: None,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err((path, message)) = cfg.validate() {
            let (line, column) = span_of(src, &path).map_or((0, 0), |s| line_col(src, s.start));
            return Err(ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                field: Some(path.join(".")),
                message,
            });
        }
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.controller.data_dir);
        self.controller.rules.iter_mut().for_each(abs);
        self.controller.runbooks.iter_mut().for_each(abs);
        self.controller.tls_cert.iter_mut().for_each(abs);
        self.controller.tls_key.iter_mut().for_each(abs);
        for a in self.agents.values_mut() {
            a.token_file.iter_mut().for_each(abs);
        }
        for r in self.receivers.values_mut() {
            match r {
                ReceiverConfig::Webhook { secret_file, .. } => {
                    secret_file.iter_mut().for_each(abs);
                }
                ReceiverConfig::Smtp { password_file, .. } => {
                    password_file.iter_mut().for_each(abs);
                }
            }
        }
        self.hosts.values_mut().for_each(|h| abs(&mut h.disk_dir));
        for d in self.datastores.values_mut() {
            d.path.iter_mut().for_each(abs);
            if let Some(e) = &mut d.encryption {
                e.key_file.iter_mut().for_each(abs);
            }
        }
    }

    /// Cross-reference checks. Returns the field path and message of the
    /// first problem.
    fn validate(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if self
            .controller
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err((
                p(&["controller", "listen"]),
                format!(
                    "'{}' is not an address like 127.0.0.1:7780",
                    self.controller.listen
                ),
            ));
        }
        if self.controller.tls_cert.is_some() != self.controller.tls_key.is_some() {
            return Err((
                p(&["controller", "tls_cert"]),
                "tls_cert and tls_key go together".into(),
            ));
        }
        if let Some(m) = &self.controller.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                p(&["controller", "metrics_listen"]),
                format!("'{m}' is not an address like 127.0.0.1:9780"),
            ));
        }
        for (kind, names) in [
            ("sites", self.sites.keys().collect::<Vec<_>>()),
            ("hosts", self.hosts.keys().collect()),
            ("datastores", self.datastores.keys().collect()),
            ("vms", self.vms.keys().collect()),
            ("groups", self.groups.keys().collect()),
            ("services", self.services.keys().collect()),
            ("tenants", self.tenants.keys().collect()),
        ] {
            if let Some(bad) = names.into_iter().find(|n| !name_ok(n)) {
                return Err((
                    p(&[kind, bad]),
                    format!("name '{bad}' may only hold letters, digits, '-' and '_'"),
                ));
            }
        }
        let owners = self
            .vms
            .iter()
            .map(|(n, v)| ("vms", n, &v.tenant))
            .chain(self.groups.iter().map(|(n, g)| ("groups", n, &g.tenant)))
            .chain(
                self.services
                    .iter()
                    .map(|(n, s)| ("services", n, &s.tenant)),
            );
        for (kind, name, tenant) in owners {
            if let Some(t) = tenant
                && !self.tenants.contains_key(t)
            {
                return Err((
                    p(&[kind, name, "tenant"]),
                    format!("unknown tenant '{t}' (add a [tenants.{t}] table)"),
                ));
            }
        }
        for (name, site) in &self.sites {
            if let Some(bad) = site.vars.keys().find(|k| {
                k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }) {
                return Err((
                    p(&["sites", name, "vars", bad]),
                    format!("variable name '{bad}' may only hold a-z, 0-9 and '_'"),
                ));
            }
        }
        for (name, h) in &self.hosts {
            if !self.sites.contains_key(&h.site) {
                return Err((
                    p(&["hosts", name, "site"]),
                    format!("unknown site '{}'", h.site),
                ));
            }
            if h.driver == DriverKind::Qemu && h.netns.is_some() {
                return Err((
                    p(&["hosts", name, "netns"]),
                    "a qemu host's VMs reach the network through their port forwards; 'netns' applies to process hosts only".into(),
                ));
            }
            if let Some(ns) = &h.netns
                && (ns.is_empty()
                    || ns.len() > 64
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            {
                return Err((
                    p(&["hosts", name, "netns"]),
                    format!(
                        "'{ns}' is not a network namespace name (letters, digits, '-', '_', '.')"
                    ),
                ));
            }
        }
        for (name, d) in &self.datastores {
            if !self.sites.contains_key(&d.site) {
                return Err((
                    p(&["datastores", name, "site"]),
                    format!("unknown site '{}'", d.site),
                ));
            }
            if let Err((field, msg)) = d.check() {
                return Err((p(&["datastores", name, field]), msg));
            }
        }
        for (name, vm) in &self.vms {
            let Some(host) = self.hosts.get(&vm.host) else {
                return Err((
                    p(&["vms", name, "host"]),
                    format!("unknown host '{}'", vm.host),
                ));
            };
            if let Some(dr) = &vm.dr_site {
                if !self.sites.contains_key(dr) {
                    return Err((p(&["vms", name, "dr_site"]), format!("unknown site '{dr}'")));
                }
                if *dr == host.site {
                    return Err((
                        p(&["vms", name, "dr_site"]),
                        format!("the DR site '{dr}' is the VM's own site"),
                    ));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, d) in vm.disks.iter().enumerate() {
                let idx = i.to_string();
                if !name_ok(&d.name) || !seen.insert(&d.name) {
                    return Err((
                        p(&["vms", name, "disks", &idx, "name"]),
                        format!("disk name '{}' is invalid or repeated", d.name),
                    ));
                }
                if d.size.0 == 0 {
                    return Err((
                        p(&["vms", name, "disks", &idx, "size"]),
                        "a disk needs a size above zero".into(),
                    ));
                }
                if d.format == DiskFormat::Qcow2 && vm.qemu.is_none() {
                    return Err((
                        p(&["vms", name, "disks", &idx, "format"]),
                        "qcow2 disks need a qemu VM (a [vms.NAME.qemu] table on a qemu host)"
                            .into(),
                    ));
                }
            }
            self.validate_vm_driver(name, vm, host)?;
        }
        for (name, g) in &self.groups {
            for (i, m) in g.members.iter().enumerate() {
                if !self.vms.contains_key(m) {
                    return Err((
                        p(&["groups", name, "members", &i.to_string()]),
                        format!("unknown vm '{m}'"),
                    ));
                }
            }
            if g.datastores.is_empty() {
                return Err((
                    p(&["groups", name, "datastores"]),
                    "a group needs at least one datastore".into(),
                ));
            }
            for (i, d) in g.datastores.iter().enumerate() {
                if !self.datastores.contains_key(d) {
                    return Err((
                        p(&["groups", name, "datastores", &i.to_string()]),
                        format!("unknown datastore '{d}'"),
                    ));
                }
            }
            // Retention prunes a VM's points per datastore: two groups
            // with different policies must not share one for the same VM.
            for (other_name, other) in self.groups.range::<String, _>((
                std::ops::Bound::Excluded(name.clone()),
                std::ops::Bound::Unbounded,
            )) {
                let vm = g.members.iter().find(|m| other.members.contains(m));
                let ds = g.datastores.iter().find(|d| other.datastores.contains(d));
                if let (Some(vm), Some(ds)) = (vm, ds) {
                    return Err((
                        p(&["groups", other_name, "members"]),
                        format!(
                            "vm '{vm}' is also in group '{name}' and both groups write to datastore '{ds}'; their retention would prune each other's points"
                        ),
                    ));
                }
            }
            let cs = g.chunk_size.0;
            if !cs.is_power_of_two() || !(64 << 10..=4 << 20).contains(&cs) {
                return Err((
                    p(&["groups", name, "chunk_size"]),
                    format!(
                        "chunk size {} must be a power of two from 64KiB to 4MiB",
                        g.chunk_size
                    ),
                ));
            }
        }
        self.validate_watch()?;
        self.validate_services()
    }

    /// A VM's kind matches its hosts': a `[vms.NAME.qemu]` table exactly
    /// when its home host (and the first host of its DR site) runs qemu.
    fn validate_vm_driver(
        &self,
        name: &str,
        vm: &Vm,
        host: &Host,
    ) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut hosts = vec![(vm.host.as_str(), host)];
        if let Some(dr) = vm.dr_site.as_deref()
            && let Some(h) = self.first_host_of_site(dr)
        {
            hosts.push((h, &self.hosts[h]));
        }
        for (hname, h) in hosts {
            match (h.driver, &vm.qemu) {
                (DriverKind::Process, Some(_)) => {
                    return Err((
                        p(&["vms", name, "qemu"]),
                        format!(
                            "host '{hname}' uses the process driver; a qemu VM needs hosts with driver = \"qemu\""
                        ),
                    ));
                }
                (DriverKind::Qemu, None) => {
                    return Err((
                        p(&["vms", name]),
                        format!(
                            "host '{hname}' uses the qemu driver: the VM needs a [vms.{name}.qemu] table"
                        ),
                    ));
                }
                _ => {}
            }
        }
        let Some(q) = &vm.qemu else {
            if vm.command.trim().is_empty() {
                return Err((
                    p(&["vms", name, "command"]),
                    "a process VM needs a command".into(),
                ));
            }
            return Ok(());
        };
        if q.memory_mib < 16 {
            return Err((
                p(&["vms", name, "qemu", "memory_mib"]),
                format!(
                    "{} MiB is too little memory for a VM (16 at least)",
                    q.memory_mib
                ),
            ));
        }
        if q.cpus == 0 || q.cpus > 64 {
            return Err((
                p(&["vms", name, "qemu", "cpus"]),
                format!("{} CPUs: use 1 to 64", q.cpus),
            ));
        }
        for (i, d) in vm.disks.iter().enumerate() {
            // The disk names QEMU's block nodes.
            if !d.name.starts_with(|c: char| c.is_ascii_alphabetic()) || d.name.len() > 26 {
                return Err((
                    p(&["vms", name, "disks", &i.to_string(), "name"]),
                    format!(
                        "disk '{}' of a qemu VM must start with a letter and hold at most 26 characters",
                        d.name
                    ),
                ));
            }
        }
        if q.initrd.is_some() && q.kernel.is_none() {
            return Err((
                p(&["vms", name, "qemu", "initrd"]),
                "an initrd needs a kernel".into(),
            ));
        }
        if q.kernel.is_none() && vm.disks.is_empty() {
            return Err((
                p(&["vms", name, "qemu", "kernel"]),
                "a VM without a kernel boots from its first disk, and it has none".into(),
            ));
        }
        // Every site the VM may run at must give each forward an address.
        let mut sites = vec![host.site.as_str()];
        sites.extend(vm.dr_site.as_deref());
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in q.forwards.iter().enumerate() {
            let at = p(&["vms", name, "qemu", "forwards", &i.to_string(), "host_addr"]);
            if f.host_port == 0 || f.guest_port == 0 {
                return Err((
                    p(&["vms", name, "qemu", "forwards", &i.to_string()]),
                    "forwarded ports must be above zero".into(),
                ));
            }
            for site in &sites {
                let vars = self.sites.get(*site).map(|s| &s.vars);
                let addr = expand_site_vars(&f.host_addr, vars);
                if let Some(var) = addr.split("{site.").nth(1) {
                    let var = var.split('}').next().unwrap_or_default();
                    return Err((
                        at,
                        format!("site '{site}' has no variable '{var}' (sites.{site}.vars)"),
                    ));
                }
                if addr.parse::<std::net::Ipv4Addr>().is_err() {
                    return Err((
                        at,
                        format!("'{addr}' (at site '{site}') is not an IPv4 address"),
                    ));
                }
                if !seen.insert((*site, f.protocol, addr.clone(), f.host_port)) {
                    return Err((
                        p(&["vms", name, "qemu", "forwards", &i.to_string()]),
                        format!("{addr}:{} is forwarded twice", f.host_port),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let api: Option<std::net::SocketAddr> = self.controller.listen.parse().ok();
        for (name, s) in &self.services {
            let Some(home) = self.home_site(&s.vm) else {
                return Err((
                    p(&["services", name, "vm"]),
                    format!("unknown vm '{}'", s.vm),
                ));
            };
            if let Err((mut field, msg)) = s.check() {
                let mut path = p(&["services", name]);
                path.append(&mut field);
                return Err((path, msg));
            }
            for site in s.backends.keys() {
                if !self.sites.contains_key(site) {
                    return Err((
                        p(&["services", name, "backends", site]),
                        format!("unknown site '{site}'"),
                    ));
                }
            }
            if !s.backends.contains_key(home) {
                return Err((
                    p(&["services", name, "backends"]),
                    format!(
                        "no backend at site '{home}', the home site of vm '{}'",
                        s.vm
                    ),
                ));
            }
            let listen = s.listen_addr();
            if s.protocols.contains(&Protocol::Tcp) && listen.is_some() && listen == api {
                return Err((
                    p(&["services", name, "listen"]),
                    format!(
                        "{} is the controller's API address (controller.listen)",
                        s.listen
                    ),
                ));
            }
            // Two services on one address and transport: the second bind
            // would fail at start.
            for (other_name, other) in self.services.range::<String, _>(..name.clone()) {
                let shared = s.protocols.iter().find(|p| other.protocols.contains(p));
                if let Some(proto) = shared
                    && listen.is_some()
                    && other.listen_addr() == listen
                    && listen.is_some_and(|a| a.port() != 0)
                {
                    return Err((
                        p(&["services", name, "listen"]),
                        format!(
                            "service '{other_name}' already listens on {proto} {}",
                            s.listen
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_watch(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (name, a) in &self.agents {
            if a.token.is_some() && a.token_file.is_some() {
                return Err((
                    p(&["agents", name, "token"]),
                    "set token or token_file, not both".into(),
                ));
            }
            if a.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
                return Err((
                    p(&["agents", name, "token"]),
                    "an agent token needs at least 16 characters".into(),
                ));
            }
            if !self.sites.contains_key(&a.site) {
                return Err((
                    p(&["agents", name, "site"]),
                    format!("unknown site '{}'", a.site),
                ));
            }
            if let Some(h) = &a.host {
                match self.hosts.get(h) {
                    None => {
                        return Err((p(&["agents", name, "host"]), format!("unknown host '{h}'")));
                    }
                    Some(host) if host.site != a.site => {
                        return Err((
                            p(&["agents", name, "host"]),
                            format!("host '{h}' is at site '{}', not '{}'", host.site, a.site),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if a.url.is_some()
                && let Some(h) = a.host.as_ref().and_then(|h| self.hosts.get(h))
                && h.driver == DriverKind::Qemu
            {
                return Err((
                    p(&["agents", name, "url"]),
                    format!(
                        "host '{}' uses the qemu driver, which runs in the controller only; remote agents run process hosts",
                        a.host.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if let Some(url) = &a.url {
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .unwrap_or_default();
                if rest.trim_end_matches('/').is_empty() {
                    return Err((
                        p(&["agents", name, "url"]),
                        format!("'{url}' is not an http:// URL like http://198.18.0.2:7781"),
                    ));
                }
                let Some(h) = &a.host else {
                    return Err((
                        p(&["agents", name, "url"]),
                        "an agent with a url runs a host's VMs: set 'host' too".into(),
                    ));
                };
                if let Some((other, _)) = self
                    .agents
                    .iter()
                    .find(|(o, oa)| *o != name && oa.url.is_some() && oa.host.as_ref() == Some(h))
                {
                    return Err((
                        p(&["agents", name, "host"]),
                        format!("host '{h}' is already run by agent '{other}'"),
                    ));
                }
                if self.hosts.get(h).is_some_and(|host| host.netns.is_some()) {
                    return Err((
                        p(&["hosts", h, "netns"]),
                        format!(
                            "host '{h}' is run by agent '{name}'; 'netns' applies to in-process hosts only"
                        ),
                    ));
                }
            }
            if a.heartbeat < Duration::from_millis(100) {
                return Err((
                    p(&["agents", name, "heartbeat"]),
                    "a heartbeat interval below 100ms would flood the controller".into(),
                ));
            }
        }
        for (name, pr) in &self.probes {
            if let Err((field, msg)) = pr.check() {
                return Err((p(&["probes", name, field]), msg));
            }
            if pr.interval < Duration::from_millis(100) {
                return Err((
                    p(&["probes", name, "interval"]),
                    "a probe interval must be at least 100ms".into(),
                ));
            }
            if pr.timeout.is_zero() || pr.timeout > pr.interval.max(Duration::from_secs(1)) * 10 {
                return Err((
                    p(&["probes", name, "timeout"]),
                    "a probe timeout must be above zero and at most ten intervals".into(),
                ));
            }
            if pr.attempts == 0 || pr.attempts > 10 {
                return Err((
                    p(&["probes", name, "attempts"]),
                    "attempts must be from 1 to 10".into(),
                ));
            }
            if pr.from.is_empty() {
                return Err((
                    p(&["probes", name, "from"]),
                    "a probe needs at least one vantage point".into(),
                ));
            }
            for (i, v) in pr.from.iter().enumerate() {
                let known = v == CONTROLLER_VANTAGE
                    || v.strip_prefix("agent:")
                        .is_some_and(|a| self.agents.contains_key(a));
                if !known {
                    return Err((
                        p(&["probes", name, "from", &i.to_string()]),
                        format!(
                            "unknown vantage point '{v}' (expected 'controller' or 'agent:NAME' of a declared agent)"
                        ),
                    ));
                }
            }
            for (key, table) in [
                ("site", self.sites.keys().collect::<Vec<_>>()),
                ("host", self.hosts.keys().collect()),
                ("vm", self.vms.keys().collect()),
            ] {
                if let Some(v) = pr.labels.get(key)
                    && !table.contains(&v)
                {
                    return Err((
                        p(&["probes", name, "labels", key]),
                        format!("unknown {key} '{v}'"),
                    ));
                }
            }
            for reserved in ["probe", "kind", "vantage"] {
                if pr.labels.contains_key(reserved) {
                    return Err((
                        p(&["probes", name, "labels", reserved]),
                        format!("label '{reserved}' is set by standby"),
                    ));
                }
            }
        }
        for (name, r) in &self.receivers {
            if let ReceiverConfig::Webhook { url, .. } = r
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err((
                    p(&["receivers", name, "url"]),
                    format!("'{url}' is not an http:// or https:// URL"),
                ));
            }
            if let ReceiverConfig::Smtp { to, .. } = r
                && to.is_empty()
            {
                return Err((
                    p(&["receivers", name, "to"]),
                    "a mail receiver needs at least one address".into(),
                ));
            }
            if r.max_attempts() == 0 {
                return Err((
                    p(&["receivers", name, "max_attempts"]),
                    "max_attempts must be at least 1".into(),
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let idx = i.to_string();
            if r.receivers.is_empty() {
                return Err((
                    p(&["routes", &idx, "receivers"]),
                    "a route needs at least one receiver".into(),
                ));
            }
            for (j, rc) in r.receivers.iter().enumerate() {
                if !self.receivers.contains_key(rc) {
                    return Err((
                        p(&["routes", &idx, "receivers", &j.to_string()]),
                        format!("unknown receiver '{rc}'"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The site a host belongs to.
    pub fn site_of_host(&self, host: &str) -> Option<&str> {
        self.hosts.get(host).map(|h| h.site.as_str())
    }

    /// The home site of a VM.
    pub fn home_site(&self, vm: &str) -> Option<&str> {
        self.vms.get(vm).and_then(|v| self.site_of_host(&v.host))
    }

    /// The agent that runs `host`'s VMs (an `[agents]` entry with this
    /// host and a `url`), if any: its name and URL.
    pub fn remote_agent_of(&self, host: &str) -> Option<(&str, &str)> {
        self.agents.iter().find_map(|(n, a)| {
            (a.host.as_deref() == Some(host))
                .then_some(())
                .and(a.url.as_deref())
                .map(|u| (n.as_str(), u))
        })
    }

    /// The first host of a site, in name order.
    pub fn first_host_of_site(&self, site: &str) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(_, h)| h.site == site)
            .map(|(n, _)| n.as_str())
    }

    /// Datastores located at a site, in name order.
    pub fn datastores_at(&self, site: &str) -> Vec<&str> {
        self.datastores
            .iter()
            .filter(|(_, d)| d.site == site)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The groups a VM belongs to.
    pub fn groups_of(&self, vm: &str) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|(_, g)| g.members.iter().any(|m| m == vm))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// The commented example `standby init` writes.
pub const EXAMPLE: &str = include_str!("../standby.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(src, Path::new("standby.toml"))
    }

    #[test]
    fn example_parses() {
        let cfg = parse(EXAMPLE).expect("example config is valid");
        assert_eq!(cfg.sites.len(), 2);
        assert_eq!(cfg.home_site("pbx1"), Some("site1"));
        assert_eq!(cfg.groups["gold"].chunk_size, ByteSize(64 << 10));
        assert_eq!(
            cfg.groups["gold"].schedule,
            Schedule::Every(Duration::from_secs(30))
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("[sites.site1]\ndescription = \n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.to_string().starts_with("standby.toml:2:"), "{err}");
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let src = EXAMPLE.replace("disk_dir = \"site2/disks\"", "disk_dir = \"x\"\ncolour = 3");
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        let line = src.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        assert_eq!(err.line, line, "{err}");
    }

    #[test]
    fn bad_reference_names_field_and_line() {
        let src = EXAMPLE.replace("host = \"site1-host1\"", "host = \"nowhere\"");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vms.pbx1.host"), "{err}");
        let line = src.lines().position(|l| l.contains("\"nowhere\"")).unwrap() + 1;
        assert_eq!(err.line, line, "{err}");
        assert!(err.to_string().contains("unknown host 'nowhere'"), "{err}");
    }

    #[test]
    fn bad_chunk_size_and_schedule_are_rejected() {
        let src = EXAMPLE.replace("chunk_size = \"64KiB\"", "chunk_size = \"96KiB\"");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("groups.gold.chunk_size"));
        let src = EXAMPLE.replace("schedule = \"every 30s\"", "schedule = \"whenever\"");
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("bad cron expression"), "{err}");
        assert!(err.line > 0);
    }

    #[test]
    fn site_variables_are_read_and_checked() {
        let src = EXAMPLE.replace(
            "[sites.site2]",
            "[sites.site2]\nvars = { ip = \"127.0.2.1\" }",
        );
        let cfg = parse(&src).unwrap();
        assert_eq!(cfg.sites["site2"].vars["ip"], "127.0.2.1");
        let src = EXAMPLE.replace(
            "[sites.site2]",
            "[sites.site2]\nvars = { \"my-ip\" = \"x\" }",
        );
        let err = parse(&src).unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("sites.site2.vars.my-ip"),
            "{err}"
        );
    }

    #[test]
    fn groups_sharing_a_vm_and_a_datastore_are_refused() {
        let src = format!(
            "{EXAMPLE}\n[groups.silver]\nmembers = [\"pbx1\"]\nschedule = \"every 1h\"\ndatastores = [\"site2-store\"]\n"
        );
        let err = parse(&src).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("groups.silver.members"), "{err}");
        assert!(err.message.contains("site2-store"), "{err}");
    }

    const WATCH: &str = r#"
[agents.site2-agent]
site = "site2"

[probes.pbx1-sip]
kind = "sip"
target = "127.0.0.1:5060"
labels = { vm = "pbx1", site = "site1", scope = "service" }

[probes.site1-from-site2]
kind = "http"
url = "http://198.18.0.2:7781/health"
attempts = 3
from = ["controller", "agent:site2-agent"]
labels = { site = "site1", scope = "site" }

[receivers.hook]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
secret_env = "HOOK_SECRET"

[[routes]]
severity = "critical"
receivers = ["hook"]
group_by = ["site"]
"#;

    /// The example without its watch part.
    fn no_probes() -> &'static str {
        &EXAMPLE[..EXAMPLE.find("\n# A probe:").expect("example has a probe")]
    }

    #[test]
    fn watch_sections_parse() {
        let cfg = parse(&format!("{}{WATCH}", no_probes())).expect("valid");
        let spec = cfg.probes["pbx1-sip"].spec("pbx1-sip").unwrap();
        assert_eq!(
            spec.check,
            ProbeCheck::Sip {
                target: "127.0.0.1:5060".into()
            }
        );
        assert_eq!(spec.interval, Duration::from_secs(1));
        assert_eq!(spec.attempts, 1);
        assert_eq!(cfg.probes["pbx1-sip"].from, vec!["controller"]);
        assert_eq!(cfg.probes["site1-from-site2"].from.len(), 2);
        assert_eq!(cfg.agents["site2-agent"].heartbeat, Duration::from_secs(1));
        assert_eq!(cfg.routes[0].group_wait, Duration::from_secs(1));
        assert_eq!(cfg.receivers["hook"].max_attempts(), 10);
    }

    #[test]
    fn watch_errors_name_the_field() {
        let cases = [
            (
                "kind = \"sip\"",
                "kind = \"icmp\"",
                "probes.pbx1-sip.kind",
                "unknown probe kind 'icmp'",
            ),
            (
                "target = \"127.0.0.1:5060\"",
                "",
                "probes.pbx1-sip.target",
                "a sip probe needs 'target'",
            ),
            (
                "\"agent:site2-agent\"]",
                "\"agent:nobody\"]",
                "probes.site1-from-site2.from.1",
                "unknown vantage point 'agent:nobody'",
            ),
            (
                "vm = \"pbx1\"",
                "vm = \"pbx9\"",
                "probes.pbx1-sip.labels.vm",
                "unknown vm 'pbx9'",
            ),
            (
                "receivers = [\"hook\"]",
                "receivers = [\"pager\"]",
                "routes.0.receivers.0",
                "unknown receiver 'pager'",
            ),
            (
                "url = \"http://127.0.0.1:9/hook\"",
                "url = \"ftp://x\"",
                "receivers.hook.url",
                "not an http",
            ),
            (
                "site = \"site2\"\n\n[probes",
                "site = \"site7\"\n\n[probes",
                "agents.site2-agent.site",
                "unknown site 'site7'",
            ),
        ];
        for (from, to, field, msg) in cases {
            let src = format!("{}{}", no_probes(), WATCH.replacen(from, to, 1));
            let err = parse(&src).expect_err(field);
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(err.message.contains(msg), "{err}");
            assert!(err.line > 0, "{err}");
        }
    }

    const SERVICE: &str = r#"
[services.sip]
vm = "pbx1"
listen = "0.0.0.0:5060"
backends = { site1 = "198.18.0.2:5060", site2 = "198.18.0.6:5060" }
"#;

    #[test]
    fn services_parse_with_defaults() {
        let cfg = parse(&format!("{EXAMPLE}{SERVICE}")).expect("valid");
        let s = &cfg.services["sip"];
        assert_eq!(s.protocols, vec![Protocol::Udp, Protocol::Tcp]);
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.backend("site2"), Some("198.18.0.6:5060".parse().unwrap()));
        assert_eq!(s.listen_addr(), Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(s.probe, None);
        let src = SERVICE.replace(
            "listen =",
            "protocols = [\"udp\"]\nprobe = \"http\"\nprobe_url = \"http://198.18.0.2/health\"\nidle_timeout = \"30s\"\nlisten =",
        );
        let cfg = parse(&format!("{EXAMPLE}{src}")).expect("valid");
        let s = &cfg.services["sip"];
        assert_eq!(s.protocols, vec![Protocol::Udp]);
        assert_eq!(s.probe, Some(ServiceProbe::Http));
        assert_eq!(s.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn service_errors_name_the_field() {
        let cases = [
            (
                "vm = \"pbx1\"",
                "vm = \"pbx9\"",
                "services.sip.vm",
                "unknown vm 'pbx9'",
            ),
            (
                "listen = \"0.0.0.0:5060\"",
                "listen = \"sip.example.net\"",
                "services.sip.listen",
                "'sip.example.net' is not an address",
            ),
            (
                "listen = \"0.0.0.0:5060\"",
                "listen = \"127.0.0.1:7780\"",
                "services.sip.listen",
                "the controller's API address",
            ),
            (
                "site2 = \"198.18.0.6:5060\"",
                "site3 = \"198.18.0.6:5060\"",
                "services.sip.backends.site3",
                "unknown site 'site3'",
            ),
            (
                "site2 = \"198.18.0.6:5060\"",
                "site2 = \"198.18.0.6\"",
                "services.sip.backends.site2",
                "'198.18.0.6' is not a backend address",
            ),
            (
                "backends = { site1 = \"198.18.0.2:5060\", ",
                "backends = { ",
                "services.sip.backends",
                "no backend at site 'site1', the home site of vm 'pbx1'",
            ),
            (
                "backends = {",
                "protocols = []\nbackends = {",
                "services.sip.protocols",
                "at least one",
            ),
            (
                "backends = {",
                "protocols = [\"udp\", \"udp\"]\nbackends = {",
                "services.sip.protocols.1",
                "protocol 'udp' is listed twice",
            ),
            (
                "backends = {",
                "probe = \"http\"\nbackends = {",
                "services.sip.probe",
                "an http probe needs 'probe_url'",
            ),
            (
                "backends = {",
                "probe = \"sip\"\nprobe_url = \"http://x/\"\nbackends = {",
                "services.sip.probe_url",
                "applies only to probe = \"http\"",
            ),
            (
                "backends = {",
                "idle_timeout = \"10ms\"\nbackends = {",
                "services.sip.idle_timeout",
                "below 1s",
            ),
        ];
        for (from, to, field, msg) in cases {
            let src = format!("{EXAMPLE}{}", SERVICE.replacen(from, to, 1));
            let err = parse(&src).expect_err(field);
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(err.message.contains(msg), "{field}: {err}");
            assert!(err.line > 0, "{err}");
        }
    }

    #[test]
    fn service_syntax_errors_are_refused() {
        for (from, to, what) in [
            ("vm =", "colour = 3\nvm =", "colour"),
            (
                "backends = {",
                "protocols = [\"sctp\"]\nbackends = {",
                "sctp",
            ),
            ("backends = {", "probe = \"icmp\"\nbackends = {", "icmp"),
        ] {
            let src = format!("{EXAMPLE}{}", SERVICE.replacen(from, to, 1));
            let err = parse(&src).expect_err(what);
            assert!(err.message.contains(what), "{err}");
            assert!(err.line > 0, "{err}");
        }
    }

    #[test]
    fn two_services_on_one_address_are_refused() {
        let other = SERVICE.replace("[services.sip]", "[services.sip2]");
        let err = parse(&format!("{EXAMPLE}{SERVICE}{other}")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("services.sip2.listen"), "{err}");
        assert!(
            err.message
                .contains("service 'sip' already listens on udp 0.0.0.0:5060"),
            "{err}"
        );
        // Different transports on one address are fine.
        let udp = SERVICE.replace("backends = {", "protocols = [\"udp\"]\nbackends = {");
        let tcp = other.replace("backends = {", "protocols = [\"tcp\"]\nbackends = {");
        parse(&format!("{EXAMPLE}{udp}{tcp}")).expect("udp and tcp apart");
    }

    #[test]
    fn byte_sizes_and_schedules() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("2 GiB".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        let cron: Schedule = "*/5 * * * *".parse().unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            cron.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T00:05:00+00:00"
        );
    }

    #[test]
    fn agent_url_and_host_netns_are_checked() {
        let base = |extra: &str| {
            format!(
                r#"
[sites.s1]
[hosts.h1]
site = "s1"
driver = "process"
disk_dir = "d"
{extra}
"#
            )
        };
        let ok = parse(&base(
            "netns = \"lab-s1\"\n[hosts.h2]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"d2\"\n[agents.a]\nsite = \"s1\"\nhost = \"h2\"\nurl = \"http://198.18.0.2:7781\"",
        ))
        .unwrap();
        assert_eq!(ok.hosts["h1"].netns.as_deref(), Some("lab-s1"));
        assert_eq!(
            ok.remote_agent_of("h2"),
            Some(("a", "http://198.18.0.2:7781"))
        );
        assert_eq!(ok.remote_agent_of("h1"), None);
        for (extra, field, msg) in [
            (
                "netns = \"a b\"",
                "hosts.h1.netns",
                "not a network namespace name",
            ),
            (
                "[agents.a]\nsite = \"s1\"\nurl = \"http://x:1\"",
                "agents.a.url",
                "set 'host' too",
            ),
            (
                "[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"ftp://x\"",
                "agents.a.url",
                "not an http:// URL",
            ),
            (
                "netns = \"n\"\n[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"http://x:1\"",
                "hosts.h1.netns",
                "in-process hosts only",
            ),
        ] {
            let e = parse(&base(extra)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(msg), "{extra}: {e}");
        }
    }

    #[test]
    fn qemu_vms_parse_and_are_checked() {
        let base = |h2_driver: &str, vm: &str| {
            format!(
                r#"
[sites.s1]
vars = {{ sip = "127.0.1.1" }}
[sites.s2]
vars = {{ sip = "127.0.2.1" }}
[hosts.h1]
site = "s1"
driver = "qemu"
disk_dir = "d1"
[hosts.h2]
site = "s2"
driver = "{h2_driver}"
disk_dir = "d2"
[vms.pbx]
host = "h1"
dr_site = "s2"
{vm}
"#
            )
        };
        let good = r#"
[vms.pbx.qemu]
memory_mib = 128
accel = "tcg"
kernel = "/g/vmlinuz"
initrd = "/g/initrd.img"
append = "console=ttyS0 vnf.name={vm}"
forwards = [{ protocol = "udp", host_addr = "{site.sip}", host_port = 5060, guest_port = 5060 }]
[[vms.pbx.disks]]
name = "system"
size = "16MiB"
format = "qcow2"
[[vms.pbx.disks]]
name = "data"
size = "64MiB"
"#;
        let cfg = parse(&base("qemu", good)).unwrap();
        let vm = &cfg.vms["pbx"];
        assert_eq!(vm.program(), "qemu-system-x86_64");
        let q = vm.qemu.as_ref().unwrap();
        assert_eq!((q.memory_mib, q.cpus, q.accel), (128, 1, QemuAccel::Tcg));
        assert_eq!(q.forwards[0].protocol, ForwardProtocol::Udp);
        assert_eq!(vm.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(vm.disks[1].format, DiskFormat::Raw);
        for (h2, vm, field, msg) in [
            (
                "process",
                good,
                "vms.pbx.qemu",
                "host 'h2' uses the process driver",
            ),
            (
                "qemu",
                "command = \"/bin/true\"",
                "vms.pbx",
                "needs a [vms.pbx.qemu] table",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\nkernel = \"/k\"\nforwards = [{ protocol = \"udp\", host_addr = \"{site.nope}\", host_port = 1, guest_port = 1 }]",
                "vms.pbx.qemu.forwards.0.host_addr",
                "site 's1' has no variable 'nope'",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\nkernel = \"/k\"\nforwards = [{ protocol = \"udp\", host_addr = \"localhost\", host_port = 1, guest_port = 1 }]",
                "vms.pbx.qemu.forwards.0.host_addr",
                "not an IPv4 address",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\nmachine = \"virt\"",
                "standby.toml:18",
                "unknown variant `virt`",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\nkernel = \"/k\"\n[[vms.pbx.disks]]\nname = \"0d\"\nsize = \"1MiB\"",
                "vms.pbx.disks.0.name",
                "must start with a letter",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\ninitrd = \"/i\"",
                "vms.pbx.qemu.initrd",
                "needs a kernel",
            ),
            (
                "qemu",
                "[vms.pbx.qemu]\nkernel = \"/k\"\n[agents.a]\nsite = \"s1\"\nhost = \"h1\"\nurl = \"http://x:1\"",
                "agents.a.url",
                "runs in the controller only",
            ),
        ] {
            let e = parse(&base(h2, vm)).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(msg), "{vm}: {e}");
        }
        // A process VM: qcow2 and a missing command are refused.
        let proc_base = |vm: &str| {
            format!(
                "[sites.s1]\n[hosts.h1]\nsite = \"s1\"\ndriver = \"process\"\ndisk_dir = \"d\"\n[vms.v]\nhost = \"h1\"\n{vm}"
            )
        };
        let e = parse(&proc_base("args = []")).unwrap_err().to_string();
        assert!(
            e.contains("vms.v.command") && e.contains("needs a command"),
            "{e}"
        );
        let e = parse(&proc_base(
            "command = \"x\"\n[[vms.v.disks]]\nname = \"d\"\nsize = \"1MiB\"\nformat = \"qcow2\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("vms.v.disks.0.format"), "{e}");
    }
}
