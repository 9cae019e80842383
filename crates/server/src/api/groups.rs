//! Protection groups made through the API and the portal (self-service):
//! create, change, delete, read back, export as TOML. The groups
//! `standby.toml` declares stay the file's (the API refuses to change
//! them); a tenant's user makes groups of the tenant's VMs only.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use standby_engine::groups::{self, Asker};
use standby_types::api::{ApiError, GroupSpec};
use standby_types::config::Group;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{ApiResult, Ctl};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;

/// The largest group specification read.
const MAX_BODY: usize = 64 * 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            group_spec,
            group_create,
            group_replace,
            group_delete
        ))
        .routes(routes!(export))
}

fn asker(who: &Principal) -> Asker<'_> {
    Asker {
        name: &who.name,
        tenant: who.tenant.as_deref(),
    }
}

/// A specification as the configuration's `[groups.NAME]` reads it.
async fn read_spec(body: axum::body::Body) -> Result<Group, ServerError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ServerError::TooLarge(format!("a group is at most {MAX_BODY} bytes")))?;
    GroupSpec::group_from_json(&bytes).map_err(ServerError::BadRequest)
}

/// Make (`create`) or replace the group `name` from the request's body;
/// the group as it is in force.
async fn put(
    ctl: &std::sync::Arc<standby_engine::Controller>,
    who: &Principal,
    name: &str,
    body: axum::body::Body,
    create: bool,
) -> ApiResult<GroupSpec> {
    let group = read_spec(body).await?;
    groups::put(ctl, name, group, &asker(who), create).await?;
    Ok(Json(spec_of(&ctl.cfg().groups[name])?))
}

/// The specification of a group as the API takes it.
fn spec_of(g: &Group) -> Result<GroupSpec, ServerError> {
    serde_json::to_value(g)
        .and_then(serde_json::from_value)
        .map_err(|e| ServerError::Internal(format!("group as a specification: {e}")))
}

/// Make a protection group (kept in the database, beside the file's):
/// its members, schedule, datastores, retention and RPO target. A
/// tenant's user makes a group of the tenant's VMs.
#[utoipa::path(post, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "The new group's name: a-z, 0-9, '-', '_'")),
    request_body = GroupSpec,
    responses((status = 200, description = "Made; in force at once", body = GroupSpec),
        (status = 400, description = "Not a valid group (the field and why)", body = ApiError),
        (status = 404, description = "A member is not a VM the caller sees", body = ApiError),
        (status = 409, description = "A group of that name exists", body = ApiError),
        (status = 413, body = ApiError)))]
async fn group_create(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> ApiResult<GroupSpec> {
    put(&ctl, &who, &name, body, true).await
}

/// A group's specification, and whether it was made through the API.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Protection group")),
    responses((status = 200, body = GroupSpec), (status = 404, body = ApiError)))]
async fn group_spec(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<GroupSpec> {
    let cfg = ctl.cfg();
    let g = cfg
        .groups
        .get(&name)
        .filter(|g| who.sees(g.tenant.as_deref()))
        .ok_or_else(|| ServerError::NotFound {
            kind: "group",
            name: name.clone(),
        })?;
    let mut spec = spec_of(g)?;
    spec.managed = Some(g.managed);
    Ok(Json(spec))
}

/// Change a group made through the API (the whole specification); the
/// file's groups are changed in the file.
#[utoipa::path(put, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Protection group")),
    request_body = GroupSpec,
    responses((status = 200, description = "Changed; in force at once", body = GroupSpec),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "Declared in the configuration file", body = ApiError),
        (status = 413, body = ApiError)))]
async fn group_replace(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> ApiResult<GroupSpec> {
    put(&ctl, &who, &name, body, false).await
}

/// Delete a group made through the API. Its points stay.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "Protection group")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ApiError),
        (status = 409, description = "Declared in the configuration file", body = ApiError)))]
async fn group_delete(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> Result<Response, ServerError> {
    groups::delete(&ctl, &name, &asker(&who)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// The groups made through the API (those the caller sees) as
/// `standby.toml` tables, to keep in version control or move into the
/// file (`standby config export`).
#[utoipa::path(get, path = "/api/v1/config/export", tag = "meta",
    responses((status = 200, description = "TOML", content_type = "application/toml", body = String)))]
async fn export(State(ctl): Ctl, who: Principal) -> Result<Response, ServerError> {
    let cfg = ctl.cfg();
    let text = cfg
        .managed_groups_toml(|g| who.sees(g.tenant.as_deref()))
        .map_err(ServerError::Internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/toml; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
