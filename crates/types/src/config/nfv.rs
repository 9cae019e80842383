//! `[nfv]`: the ETSI NFV integration (`docs/nfv.md`). Each
//! `[nfv.vnf_instances."ID"]` maps a VNF instance, by the id its VNF
//! manager or NFVO knows it by, to the standby VMs that are its VNFCs: a
//! heal of the instance acts on those VMs, and an alarm about it becomes
//! an event labelled with them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nfv {
    /// VNF instances by id.
    #[serde(default)]
    pub vnf_instances: BTreeMap<String, VnfInstanceConfig>,
}

/// One VNF instance: its VMs and what SOL 003's `VnfInstance` shows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnfInstanceConfig {
    /// Its VMs (VNFCs), at least one; a VM belongs to one instance.
    pub vms: Vec<String>,
    /// `vnfInstanceName`.
    #[serde(default)]
    pub name: Option<String>,
    /// `vnfInstanceDescription`.
    #[serde(default)]
    pub description: Option<String>,
    /// `vnfdId`, `vnfProvider`, `vnfProductName`, `vnfSoftwareVersion`,
    /// `vnfdVersion`: as the VNF manager knows them (empty by default).
    #[serde(default)]
    pub vnfd_id: String,
    #[serde(default)]
    pub vnf_provider: String,
    #[serde(default)]
    pub vnf_product_name: String,
    #[serde(default)]
    pub vnf_software_version: String,
    #[serde(default)]
    pub vnfd_version: String,
}

/// Whether `id` may name a VNF instance: it is a path segment of the API
/// (`/vnflcm/v1/vnf_instances/{id}`), so 1-128 letters, digits, `-`, `_`
/// and `.` (UUIDs, as VNF managers give them, fit).
pub fn vnf_instance_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl super::Config {
    /// The VNF instance VM `vm` belongs to, if any.
    pub fn vnf_instance_of_vm(&self, vm: &str) -> Option<&str> {
        self.nfv
            .vnf_instances
            .iter()
            .find(|(_, i)| i.vms.iter().any(|v| v == vm))
            .map(|(id, _)| id.as_str())
    }

    /// The tenant owning VNF instance `id`: its VMs' (they share one).
    pub fn tenant_of_vnf_instance(&self, id: &str) -> Option<&str> {
        let i = self.nfv.vnf_instances.get(id)?;
        self.tenant_of_vm(i.vms.first()?)
    }

    pub(super) fn validate_nfv(&self) -> Result<(), (Vec<String>, String)> {
        let p = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, i) in &self.nfv.vnf_instances {
            if !vnf_instance_id_ok(id) {
                return Err((
                    p(&["nfv", "vnf_instances", id]),
                    "a VNF instance id is 1-128 letters, digits, '-', '_' and '.'".into(),
                ));
            }
            if i.vms.is_empty() {
                return Err((
                    p(&["nfv", "vnf_instances", id, "vms"]),
                    "a VNF instance needs at least one vm".into(),
                ));
            }
            for (j, vm) in i.vms.iter().enumerate() {
                let at = || p(&["nfv", "vnf_instances", id, "vms", &j.to_string()]);
                if !self.vms.contains_key(vm) {
                    return Err((at(), format!("unknown vm '{vm}'")));
                }
                if let Some(other) = owner.insert(vm, id) {
                    return Err((
                        at(),
                        format!("vm '{vm}' is already a VNFC of VNF instance '{other}'"),
                    ));
                }
                if self.tenant_of_vm(vm) != self.tenant_of_vm(&i.vms[0]) {
                    return Err((
                        at(),
                        format!(
                            "vm '{vm}' belongs to another tenant than vm '{}': a VNF instance is one tenant's",
                            i.vms[0]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, EXAMPLE};

    const MORE: &str = r#"
[tenants.acme]
[vms.pbx2]
host = "site1-host1"
command = "sleep"
tenant = "acme"
"#;

    fn parse(nfv: &str) -> Result<Config, super::super::ConfigError> {
        Config::parse(&format!("{EXAMPLE}{MORE}{nfv}"), Path::new("standby.toml"))
    }

    #[test]
    fn a_vnf_instance_maps_to_its_vms() {
        let cfg = parse(
            "[nfv.vnf_instances.\"6e1f-4a2b.c3\"]\nvms = [\"pbx1\"]\nname = \"pbx\"\nvnfd_id = \"d1\"\n",
        )
        .unwrap();
        let i = &cfg.nfv.vnf_instances["6e1f-4a2b.c3"];
        assert_eq!(i.vms, ["pbx1"]);
        assert_eq!(i.name.as_deref(), Some("pbx"));
        assert_eq!(i.vnfd_id, "d1");
        assert_eq!(i.vnf_provider, "");
        assert_eq!(cfg.vnf_instance_of_vm("pbx1"), Some("6e1f-4a2b.c3"));
        assert_eq!(cfg.vnf_instance_of_vm("pbx2"), None);
        assert_eq!(cfg.tenant_of_vnf_instance("6e1f-4a2b.c3"), None);
        // None configured: an empty table.
        assert!(parse("").unwrap().nfv.vnf_instances.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        for (nfv, field, msg) in [
            (
                "[nfv.vnf_instances.v1]\nvms = [\"pbx1\", \"y\"]\n",
                "nfv.vnf_instances.v1.vms.1",
                "unknown vm 'y'",
            ),
            (
                "[nfv.vnf_instances.v1]\nvms = []\n",
                "nfv.vnf_instances.v1.vms",
                "at least one vm",
            ),
            (
                "[nfv.vnf_instances.\"a/b\"]\nvms = [\"pbx1\"]\n",
                "nfv.vnf_instances.a/b",
                "letters, digits",
            ),
            (
                "[nfv.vnf_instances.v1]\nvms = [\"pbx1\"]\n[nfv.vnf_instances.v2]\nvms = [\"pbx1\"]\n",
                "nfv.vnf_instances.v2.vms.0",
                "already a VNFC of VNF instance 'v1'",
            ),
            (
                "[nfv.vnf_instances.v1]\nvms = [\"pbx1\", \"pbx2\"]\n",
                "nfv.vnf_instances.v1.vms.1",
                "another tenant",
            ),
        ] {
            let err = parse(nfv).expect_err(field);
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(err.message.contains(msg), "{field}: {err}");
        }
        let err = parse("[nfv.vnf_instances.v1]\nvms = [\"pbx1\"]\nrecover = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `recover`"), "{err}");
    }
}
