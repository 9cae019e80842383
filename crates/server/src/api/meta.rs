//! The controller's own state: health, and the configuration it runs.

use axum::Json;
use axum::extract::State;
use serde_json::json;
use standby_types::api::{ApiError, ConfigReloaded};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{ApiResult, Ctl, operators_only};
use crate::auth::Principal;
use crate::state::AppState;

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(running_config))
        .routes(routes!(reload_config))
}

/// The controller is up (no authentication), with its role: `leader`
/// here; a replica waiting for the lease answers `replica` and the leader
/// it forwards to (`standby_server::replica`).
#[utoipa::path(get, path = "/api/v1/health", tag = "meta",
    extensions(("x-standby-auth" = json!("none"))),
    responses((status = 200, description = "Up; with the version and role", body = Object)))]
async fn health(State(ctl): Ctl) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "role": "leader",
        "name": ctl.leader.name,
        "epoch": ctl.leader.epoch(),
    }))
}

/// The configuration the controller runs, as it read it at start (paths
/// resolved; inline secrets replaced by a fingerprint); `standby config
/// check` compares a file with it (admin).
#[utoipa::path(get, path = "/api/v1/config", tag = "meta",
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The running configuration", body = Object),
        (status = 403, body = ApiError)))]
async fn running_config(State(ctl): Ctl, who: Principal) -> ApiResult<serde_json::Value> {
    operators_only(&who, "config", "running")?;
    Ok(Json(standby_types::config::redacted(&ctl.cfg())))
}

/// Read the controller's configuration file again and apply it without
/// a restart (admin; SIGHUP does the same). VMs, jobs and the front door
/// carry on. Refused whole (409) when a change needs a restart (a new
/// host, another listen address) or would strand a running VM; 400 when
/// the file does not load, with its file, line and field.
#[utoipa::path(post, path = "/api/v1/config/reload", tag = "meta",
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "Applied (the changes, maybe none)", body = ConfigReloaded),
        (status = 400, description = "The file does not load", body = ApiError),
        (status = 403, body = ApiError),
        (status = 409, description = "Refused: a change needs a restart or would strand a VM", body = ApiError)))]
async fn reload_config(State(ctl): Ctl, who: Principal) -> ApiResult<ConfigReloaded> {
    operators_only(&who, "config", "reload")?;
    Ok(Json(crate::reload_from_file(&ctl).await?))
}
