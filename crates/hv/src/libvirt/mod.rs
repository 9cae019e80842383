//! The `libvirt` driver: a VM is a libvirt domain on the host's libvirtd
//! (`qemu:///system` by default), driven through the `virt` bindings.
//! Built only with the cargo feature `libvirt` (it links libvirt.so); the
//! spec types, the XML builder and [`open_driver`] are always here, so a
//! build without the feature refuses `driver = "libvirt"` by name.
//!
//! # Domains
//!
//! - Defined by standby (the default): the domain XML is generated from
//!   the VM's machine ([`VmSpec::qemu`](crate::VmSpec::qemu): memory, CPUs, machine, accel,
//!   direct kernel boot, disk formats, guest agent) by [`xml`]; disks are
//!   virtio-blk `vda`, `vdb`, … in the order of [`VmSpec::disks`](crate::VmSpec::disks); the
//!   guest's serial console goes to `workdir/<vm>.console.log`; user-mode
//!   networking. The XML carries a `standby:vm` metadata element, and a
//!   domain of the same name *without* it is never redefined (someone
//!   else's domain). An inactive domain is redefined from the spec at
//!   each start, keeping its UUID.
//! - Adopted ([`LibvirtSpec::adopt`], written by `standby vm import`):
//!   the domain is used as libvirt has it; standby's disk names are its
//!   target devices (`vda`, `sdb`) and its disks are where its XML says.
//!
//! The domain's name is the VM's name. Every call opens its own
//! connection in a blocking task (a restarted libvirtd is reconnected
//! to without ceremony).
//!
//! # States
//!
//! running/blocked/shutting down → [`VmState::Running`]; paused or
//! PM-suspended → [`VmState::Frozen`]; shut off → [`VmState::Stopped`],
//! or [`VmState::Crashed`] when libvirt's reason is `crashed` or
//! `failed`; crashed → [`VmState::Crashed`]; no domain → stopped.
//! Graceful shutdown is the ACPI power button, then `destroy` after the
//! timeout; stop is `destroy`.
//!
//! # Recovery points
//!
//! The `virt` 0.5 safe API has no `virDomainBackupBegin`, no
//! `virDomainCheckpointCreateXML`/`Delete`/`ListAll` and no
//! `virDomainFSFreeze` (the raw functions exist in `virt-sys`, unsafe),
//! so the driver runs Debian's `virsh` (libvirt-clients) for checkpoints
//! and backups; it uses the safe `qemu_agent_command` for fsfreeze and
//! `job_stats` to wait for the backup. See the `points` submodule.
//!
//! # Live migration
//!
//! libvirt's peer-to-peer migration with storage copy, split into the
//! driver's halves: see the `migrate` submodule.
//!
//! [`VmState::Running`]: crate::VmState::Running
//! [`VmState::Frozen`]: crate::VmState::Frozen
//! [`VmState::Stopped`]: crate::VmState::Stopped
//! [`VmState::Crashed`]: crate::VmState::Crashed

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Driver, HvError};

#[cfg(feature = "libvirt")]
mod driver;
#[cfg(feature = "libvirt")]
mod import;
#[cfg(feature = "libvirt")]
mod migrate;
#[cfg(feature = "libvirt")]
mod points;
pub mod xml;

#[cfg(feature = "libvirt")]
pub use driver::LibvirtDriver;

/// The URI of the host's own libvirtd.
pub const DEFAULT_URI: &str = "qemu:///system";

/// Granularity of the bitmaps libvirt makes for a checkpoint of a
/// 64 KiB-cluster qcow2 image: an incremental point needs a chunk size
/// that divides it.
pub const GRANULARITY: u64 = 64 << 10;

/// A point begun and not yet committed or abandoned: the checkpoint it
/// made, if any.
#[cfg(feature = "libvirt")]
#[derive(Debug, Clone)]
struct Pending {
    new_checkpoint: Option<String>,
}

/// Whether this build has the libvirt driver (cargo feature `libvirt`).
pub const ENABLED: bool = cfg!(feature = "libvirt");

/// How the libvirt driver treats one VM; carried in
/// [`VmSpec::libvirt`](crate::VmSpec::libvirt), whose presence makes the
/// VM a libvirt VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtSpec {
    /// Use the existing domain of the VM's name as libvirt has it
    /// instead of defining it from [`VmSpec::qemu`](crate::VmSpec::qemu).
    #[serde(default)]
    pub adopt: bool,
}

/// The libvirt half of a [`MigrationTarget`](crate::MigrationTarget):
/// libvirt's peer-to-peer migration has the source's libvirtd connect
/// to the destination's, and the domain arrives with the destination's
/// own file paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtMigrationTarget {
    /// The destination libvirtd as the source's libvirtd reaches it
    /// (`qemu+tls://HOST/system` in production).
    pub peer_uri: String,
    /// The destination's file of each disk (by standby's disk name),
    /// created empty by `migrate_in_prepare`.
    pub disk_paths: std::collections::BTreeMap<String, PathBuf>,
    /// The destination's serial console file.
    pub console: PathBuf,
}

/// The default [`LibvirtMigrationTarget::peer_uri`]: `{addr}` is the
/// destination's [`MigrationListen::addr`](crate::MigrationListen::addr).
pub const DEFAULT_PEER_URI: &str = "qemu+tls://{addr}/system";

/// A VM found by [`list_domains`]: its domain and its disks' sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedVm {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Active (running or paused) at the time of the listing.
    pub active: bool,
    pub guest_agent: bool,
    /// Defined by standby (carries its metadata).
    pub standby: bool,
    pub disks: Vec<ImportedDisk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedDisk {
    /// Target device, standby's name of the disk.
    pub name: String,
    pub source: Option<PathBuf>,
    pub format: Option<String>,
    /// Capacity in bytes (what the guest sees).
    pub size: u64,
}

/// The error of a build without the `libvirt` feature.
pub fn feature_missing() -> HvError {
    HvError::FeatureMissing {
        driver: "libvirt",
        feature: "libvirt",
    }
}

/// The libvirt driver on `uri`, keeping its files in `state_dir`; in a
/// build without the `libvirt` feature, [`HvError::FeatureMissing`].
pub fn open_driver(uri: &str, state_dir: PathBuf) -> Result<Arc<dyn Driver>, HvError> {
    #[cfg(feature = "libvirt")]
    {
        Ok(Arc::new(LibvirtDriver::new(uri, state_dir)))
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = (uri, state_dir);
        Err(feature_missing())
    }
}

/// Every domain defined (or running) at `uri`, with its disks and their
/// capacities, sorted by name; in a build without the `libvirt`
/// feature, [`HvError::FeatureMissing`].
pub async fn list_domains(uri: &str) -> Result<Vec<ImportedVm>, HvError> {
    #[cfg(feature = "libvirt")]
    {
        import::list(uri).await
    }
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = uri;
        Err(feature_missing())
    }
}

/// `[vms.NAME]` entries (TOML) for domains found on `host`: adopted as
/// they are, disks included. Names standby cannot use as VM names are
/// listed as comments.
pub fn import_toml(host: &str, vms: &[ImportedVm]) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = String::new();
    for vm in vms {
        let ok = !vm.name.is_empty()
            && vm
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !vm.name.starts_with('.');
        if !ok {
            out += &format!(
                "# domain {} skipped: not a valid vm name (letters, digits, '-', '_', '.')\n\n",
                q(&vm.name)
            );
            continue;
        }
        let state = if vm.active { "running" } else { "shut off" };
        out += &format!(
            "# domain {} ({state}, {} MiB, {} vcpu{}{})\n",
            vm.name,
            vm.memory_mib,
            vm.vcpus,
            if vm.vcpus == 1 { "" } else { "s" },
            if vm.guest_agent {
                ", guest agent channel"
            } else {
                ""
            },
        );
        out += &format!("[vms.{}]\nhost = {}\n", vm.name, q(host));
        out += &format!("\n[vms.{}.libvirt]\nadopt = true\n", vm.name);
        for d in &vm.disks {
            let source = d
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no local source)".into());
            out += &format!(
                "\n# {}\n[[vms.{}.disks]]\nname = {}\nsize = {}\n",
                source,
                vm.name,
                q(&d.name),
                d.size
            );
            if d.format.as_deref() == Some("qcow2") {
                out += "format = \"qcow2\"\n";
            }
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_toml_parses_back_and_skips_bad_names() {
        let vms = vec![
            ImportedVm {
                name: "web".into(),
                memory_mib: 512,
                vcpus: 2,
                active: true,
                guest_agent: true,
                standby: false,
                disks: vec![
                    ImportedDisk {
                        name: "vda".into(),
                        source: Some("/var/lib/libvirt/images/web.qcow2".into()),
                        format: Some("qcow2".into()),
                        size: 16 << 20,
                    },
                    ImportedDisk {
                        name: "vdb".into(),
                        source: Some("/dev/vg/web-data".into()),
                        format: Some("raw".into()),
                        size: 1 << 30,
                    },
                ],
            },
            ImportedVm {
                name: "bad name\"".into(),
                memory_mib: 1,
                vcpus: 1,
                active: false,
                guest_agent: false,
                standby: false,
                disks: vec![],
            },
        ];
        let t = import_toml("h1", &vms);
        let v: serde_json::Value = toml_to_json(&t);
        assert_eq!(v["vms"]["web"]["host"], "h1");
        assert_eq!(v["vms"]["web"]["libvirt"]["adopt"], true);
        assert_eq!(v["vms"]["web"]["disks"][0]["name"], "vda");
        assert_eq!(v["vms"]["web"]["disks"][0]["format"], "qcow2");
        assert_eq!(v["vms"]["web"]["disks"][1]["size"], 1u64 << 30);
        assert!(v["vms"]["web"]["disks"][1].get("format").is_none());
        assert_eq!(v["vms"].as_object().unwrap().len(), 1);
        assert!(t.contains("# domain \"bad name\\\"\" skipped"), "{t}");
    }

    /// A tiny reader for the TOML subset `import_toml` writes (tables,
    /// arrays of tables, string/int/bool values), so the test needs no
    /// TOML crate here.
    fn toml_to_json(t: &str) -> serde_json::Value {
        let mut root = serde_json::json!({});
        let mut cur: Vec<String> = vec![];
        let mut in_array = false;
        for line in t.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(h) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                cur = h.split('.').map(String::from).collect();
                in_array = true;
                let (last, parent) = cur.split_last().unwrap();
                let p = walk(&mut root, parent);
                let arr = p
                    .as_object_mut()
                    .unwrap()
                    .entry(last.clone())
                    .or_insert(serde_json::json!([]));
                arr.as_array_mut().unwrap().push(serde_json::json!({}));
            } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                cur = h.split('.').map(String::from).collect();
                in_array = false;
                walk(&mut root, &cur);
            } else {
                let (k, v) = line.split_once(" = ").unwrap();
                let v: serde_json::Value = serde_json::from_str(v).unwrap();
                let target = if in_array {
                    let (last, parent) = cur.split_last().unwrap();
                    let arr = walk(&mut root, parent)[last].as_array_mut().unwrap();
                    arr.last_mut().unwrap()
                } else {
                    walk(&mut root, &cur)
                };
                target[k] = v;
            }
        }
        root
    }

    fn walk<'a>(v: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
        path.iter().fold(v, |v, k| {
            v.as_object_mut()
                .unwrap()
                .entry(k.clone())
                .or_insert(serde_json::json!({}))
        })
    }

    #[test]
    fn open_driver_names_the_feature_when_missing() {
        let r = open_driver(DEFAULT_URI, "/nonexistent".into());
        if ENABLED {
            assert!(r.is_ok());
        } else {
            let e = r.err().unwrap().to_string();
            assert!(e.contains("cargo feature `libvirt`"), "{e}");
        }
    }
}
