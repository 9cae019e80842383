//! VMs made from templates through the API, the CLI and the portal
//! (`standby vm create --template`). `standby.toml` stays the source of
//! the VMs it declares; these are kept here, each as its `[vms.NAME]`
//! fields, and joined to the file's at start and at every reload, as
//! the groups made through the API are (`groups.rs`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use standby_types::config::{Config, Vm};

use crate::DbError;

/// One VM made from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedVm {
    pub name: String,
    /// The VM's fields as `[vms.NAME]` has them, as JSON.
    pub spec: String,
    /// The template it was made from.
    pub template: String,
    /// The tenant that owns it (none: the operators').
    pub tenant: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait::async_trait]
pub trait ManagedVmRepo: Send + Sync {
    /// Every VM made from a template, by name.
    async fn managed_vms(&self) -> Result<Vec<ManagedVm>, DbError>;
    /// Create or replace one.
    async fn put_managed_vm(&self, v: &ManagedVm) -> Result<(), DbError>;
    /// Forget one; false when there was none.
    async fn delete_managed_vm(&self, name: &str) -> Result<bool, DbError>;
}

/// `config` with the VMs made from templates added. One that no longer
/// fits (its host dropped from the file, say) or that the file now
/// declares too is left out, with the reason in the second list.
pub async fn join_managed_vms(
    config: Config,
    repo: &dyn ManagedVmRepo,
) -> Result<(Config, Vec<String>), DbError> {
    let mut problems = Vec::new();
    let mut cfg = config;
    for m in repo.managed_vms().await? {
        let v: Vm = match serde_json::from_str(&m.spec) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "vm {} (made from template {}) is unreadable: {e}",
                    m.name, m.template
                ));
                continue;
            }
        };
        let (with, shadowed) = cfg.clone().with_managed_vms(vec![(m.name.clone(), v)]);
        if !shadowed.is_empty() {
            problems.push(format!(
                "vm {} (made from template {}) is declared in the configuration file too: the file's is in force",
                m.name, m.template
            ));
            continue;
        }
        match with.check_whole() {
            Ok(()) => cfg = with,
            Err(e) => problems.push(format!(
                "vm {} (made from template {}) no longer fits the configuration: {e}",
                m.name, m.template
            )),
        }
    }
    Ok((cfg, problems))
}
