//! Protection groups made through the API and the portal (self-service).
//! `standby.toml` stays the source of the groups it declares; these are
//! kept here, each as its specification, and joined to the file's at
//! start and at every reload.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use standby_types::config::{Config, Group};

use crate::DbError;

/// One group made through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedGroup {
    pub name: String,
    /// The group's fields as `[groups.NAME]` has them, as JSON.
    pub spec: String,
    /// The tenant that owns it (none: the operators').
    pub tenant: Option<String>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

#[async_trait::async_trait]
pub trait GroupRepo: Send + Sync {
    /// Every group made through the API, by name.
    async fn managed_groups(&self) -> Result<Vec<ManagedGroup>, DbError>;
    /// Create or replace one.
    async fn put_managed_group(&self, g: &ManagedGroup) -> Result<(), DbError>;
    /// Forget one; false when there was none.
    async fn delete_managed_group(&self, name: &str) -> Result<bool, DbError>;
}

/// `config` with the groups made through the API added. A group that no
/// longer fits (its VM dropped from the file, say) or that the file now
/// declares too is left out, with the reason in the second list.
pub async fn join_managed_groups(
    config: Config,
    repo: &dyn GroupRepo,
) -> Result<(Config, Vec<String>), DbError> {
    let mut problems = Vec::new();
    let mut cfg = config;
    for m in repo.managed_groups().await? {
        let g: Group = match serde_json::from_str(&m.spec) {
            Ok(g) => g,
            Err(e) => {
                problems.push(format!(
                    "group {} (made through the API) is unreadable: {e}",
                    m.name
                ));
                continue;
            }
        };
        let (with, shadowed) = cfg.clone().with_managed_groups(vec![(m.name.clone(), g)]);
        if !shadowed.is_empty() {
            problems.push(format!(
                "group {} (made through the API) is declared in the configuration file too: the file's is in force",
                m.name
            ));
            continue;
        }
        match with.check_whole() {
            Ok(()) => cfg = with,
            Err(e) => problems.push(format!(
                "group {} (made through the API) no longer fits the configuration: {e}",
                m.name
            )),
        }
    }
    Ok((cfg, problems))
}
