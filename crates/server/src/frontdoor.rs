//! The front door: per service, UDP and TCP forwarders on the controller
//! that send client traffic to the site where the service is active.
//! Seam only; the forwarders land with issue 4.

use crate::controller::Controller;
use crate::error::ServerError;

impl Controller {
    /// Send `service`'s traffic to `site` from now on. Idempotent.
    pub async fn switch_traffic(
        &self,
        service: &str,
        site: &str,
    ) -> Result<serde_json::Value, ServerError> {
        Err(ServerError::Internal(format!(
            "switching service {service} to {site} is not implemented yet"
        )))
    }
}
