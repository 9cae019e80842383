//! Protection groups made through the API and the portal (self-service).
//! `standby.toml` stays the source of the groups it declares; these are
//! kept here, each as its specification, and joined to the file's at
//! start and at every reload.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
