//! `standby.toml`: the one file that describes a standby installation.
//!
//! Parsing happens in two passes. serde reads the file into [`Config`]
//! (syntax and type errors carry toml's own span); `Config::validate` then
//! checks cross references (a VM's host exists, a group's datastores exist,
//! ...). Every error is a [`ConfigError`] naming the file, line, column and
//! the dotted field path, e.g.
//! `standby.toml:14:8: vms.pbx1.host: unknown host 'site9-host1'`.
//!
//! Relative paths in the file are relative to the file's directory;
//! [`Config::load`] resolves them so the rest of standby sees absolute paths.
//!
//! The module splits by concern; every type is re-exported here:
//! - `root`: [`Config`] itself and the lookups across its tables;
//! - `controller`: `[controller]` and `[tenants]`;
//! - `sites`: `[sites]`, `[hosts]` and `[agents]`;
//! - `bandwidth`: a site's bandwidth windows in its time zone;
//! - `datastores`: `[datastores]`;
//! - `vms`: `[vms]` (with their QEMU settings and disks) and `[groups]`;
//! - `probes`: `[probes]`;
//! - `services`: `[services]`;
//! - `plans`: `[plans]`, recovery plans (tiers, their order, RTO target);
//! - `ha`: `[ha]` (self-fencing and its quorum);
//! - `dns`: `[dns]`, the DNS traffic target of services with a `dns_name`;
//! - `nfv`: `[nfv]`, VNF instances (ETSI NFV) and their VMs;
//! - `units`: schedules, byte sizes and durations written as strings;
//! - `error`: [`ConfigError`] and where in the file a field is;
//! - `load`: [`Config::load`] and [`Config::parse`];
//! - `managed`: groups made through the API beside the file's;
//! - `validate`, `validate_watch`: the cross-reference checks;
//! - `redact`: [`redacted`], the configuration as the API shows it;
//! - `diff`: what changes between two configurations, and what of it a
//!   running controller applies without a restart.

mod bandwidth;
mod controller;
mod datastores;
pub mod diff;
mod dns;
mod error;
mod ha;
mod load;
mod managed;
mod nfv;
mod plans;
mod probes;
mod redact;
mod root;
mod services;
mod sites;
mod units;
mod validate;
mod validate_watch;
mod vms;

pub use bandwidth::{BandwidthSchedule, BandwidthWindow, Day, TimeOfDay, parse_timezone};
pub use controller::{Controller, DEFAULT_LISTEN, Database, Pki, TenantConfig, is_postgres_url};
pub use datastores::{DatastoreConfig, DatastoreKind, EncryptionConfig};
pub use dns::{DnsConfig, TsigAlgorithm};
pub use error::ConfigError;
pub use ha::Ha;
pub use nfv::{Nfv, VnfInstanceConfig, vnf_instance_id_ok};
pub use plans::{Plan, PlanPlace, Tier, TierStart};
pub use probes::ProbeConfig;
pub use redact::{redacted, url_redacted};
pub use root::Config;
pub use services::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_FLOWS, Protocol, ServiceConfig, ServiceProbe,
};
pub use sites::{AgentConfig, DriverKind, Host, HostMigration, Site, default_migration_ports};
pub(crate) use units::duration_str;
pub use units::{ByteSize, MAX_DURATION, Schedule, parse_duration, within_limit};
pub use vms::{
    Disk, DiskFormat, ForwardProtocol, Group, LibvirtVm, QemuAccel, QemuForward, QemuMachine,
    QemuVm, Replica, Vm, expand_site_vars,
};

/// The commented example `standby init` writes.
pub const EXAMPLE: &str = include_str!("../../standby.example.toml");

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_libvirt;
