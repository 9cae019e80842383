//! The controller's own state: health.

use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The controller is up (no authentication).
#[utoipa::path(get, path = "/api/v1/health", tag = "meta",
    extensions(("x-standby-auth" = json!("none"))),
    responses((status = 200, description = "Up; with the version", body = Object)))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}
