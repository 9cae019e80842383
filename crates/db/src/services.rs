//! State of the front door: which site each service's clients are sent to.
//!
//! # Invariants
//!
//! - A service's row is created once ([`ServiceRepo::init_service`]) and
//!   afterwards changed only by a switch, so a restart keeps the site.
//! - `switched_at` is the time of the last switch that changed the site.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DbError;

/// The persisted routing of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub active_site: String,
    /// `None` until the first switch.
    pub switched_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
pub trait ServiceRepo: Send + Sync {
    /// The record of `name`, creating it with `site` if there is none yet.
    async fn init_service(&self, name: &str, site: &str) -> Result<ServiceRecord, DbError>;
    async fn service(&self, name: &str) -> Result<ServiceRecord, DbError>;
    async fn services(&self) -> Result<Vec<ServiceRecord>, DbError>;
    /// Send `name` to `site` from `at` on (creating the record if missing);
    /// returns the record as it was before (`None` if there was none).
    async fn switch_service(
        &self,
        name: &str,
        site: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ServiceRecord>, DbError>;
}
