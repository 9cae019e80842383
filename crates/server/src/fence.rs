//! Site fencing: a fenced site runs no VM. Seam only; the durable fence
//! state and its enforcement by agents land with issue 4.

use crate::controller::Controller;
use crate::error::ServerError;

impl Controller {
    /// Whether `site` is fenced (no VM may start there).
    pub async fn is_fenced(&self, _site: &str) -> Result<bool, ServerError> {
        Ok(false)
    }

    /// Fence `site`: record it durably and have its agents stop every VM
    /// there and refuse to start any. Idempotent.
    pub async fn fence_site(
        &self,
        site: &str,
        _reason: &str,
    ) -> Result<serde_json::Value, ServerError> {
        Err(ServerError::Internal(format!(
            "fencing site {site} is not implemented yet"
        )))
    }

    /// Lift the fence of `site`. Idempotent.
    pub async fn unfence_site(&self, site: &str) -> Result<serde_json::Value, ServerError> {
        Err(ServerError::Internal(format!(
            "unfencing site {site} is not implemented yet"
        )))
    }
}
