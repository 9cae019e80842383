//! `POST /api/v1/alertmanager`: Prometheus Alertmanager's webhook receiver.
//! Each alert becomes a standby event (`standby_engine::watch::alertmanager`
//! says how); rules and runbooks take it from there.
//!
//! Alertmanager authenticates with an API token of role `operator`
//! (`http_config.authorization.credentials`), the operators' side only:
//! events are not scoped to a tenant, and a tenant must not raise alerts
//! about others' objects. The body is read up to [`MAX_BODY`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use standby_engine::Controller;
use standby_engine::watch::alertmanager;
use standby_types::alertmanager::{Webhook, WebhookReceipt};
use standby_types::api::ApiError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;

/// The largest notification read: Alertmanager's groups are small (a few
/// KiB per alert); a larger body is refused (413).
pub const MAX_BODY: usize = 1 << 20;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// Alertmanager's webhook (payload version 4): one event per alert, kind
/// `alertmanager.firing` or `alertmanager.resolved` (operators' side
/// only).
#[utoipa::path(post, path = "/api/v1/alertmanager", tag = "watch",
    request_body = Webhook,
    responses((status = 200, body = WebhookReceipt),
        (status = 400, description = "Not Alertmanager's payload, or another version", body = ApiError),
        (status = 403, body = ApiError),
        (status = 413, description = "Larger than 1 MiB", body = ApiError)))]
async fn receive(
    State(ctl): State<Arc<Controller>>,
    who: Principal,
    body: axum::body::Body,
) -> Result<Json<WebhookReceipt>, ServerError> {
    if who.tenant.is_some() {
        return Err(ServerError::Forbidden(
            "Alertmanager's alerts are the operators' (a tenant's token cannot post them)".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ServerError::TooLarge(format!(
            "an Alertmanager notification is at most {MAX_BODY} bytes"
        ))
    })?;
    let hook: Webhook = serde_json::from_slice(&bytes).map_err(|e| {
        ServerError::BadRequest(format!("not an Alertmanager webhook payload: {e}"))
    })?;
    let events = alertmanager::receive(&ctl, &hook)?;
    Ok(Json(WebhookReceipt { events }))
}
