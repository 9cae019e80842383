//! ETSI NFV routes (`docs/nfv.md`), at the API roots SOL 002/003 define,
//! so a VNF manager or NFVO (OpenStack Tacker's REST style) points at
//! standby's base URL:
//!
//! - VNF lifecycle management (`/vnflcm/v1`): the configured VNF
//!   instances, their heal, and the operation occurrences heals create
//!   (`standby_engine::nfv`);
//! - VNF fault management (`/vnffm/v1/notifications`): the callback a
//!   VNF manager's FM subscription names, where its alarm notifications
//!   become standby events (`standby_engine::nfv::fm`).
//!
//! Authentication is the API's (tokens; the roles of the OpenAPI
//! document). A tenant's user sees and heals the instances whose VMs are
//! theirs; notifications are the operators' (like Alertmanager's). Bodies
//! are read up to [`MAX_BODY`]. Every error under these roots, the
//! authentication layer's included, is SOL 013's `ProblemDetails`
//! (`application/problem+json`), by [`problem_details`].

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use standby_engine::Controller;
use standby_engine::nfv::{self, fm};
use standby_types::api::ApiError;
use standby_types::nfv::{
    FmNotification, HealVnfRequest, ProblemDetails, VnfInstance, VnfLcmOpOcc,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::common::{ApiQuery, ListParams, ListResult, Listed, Page, SCAN_CAP};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;

/// The largest request body read (a heal request, a notification).
pub const MAX_BODY: usize = 1 << 20;
/// The content type of SOL 013 errors.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The API roots whose errors are `ProblemDetails`.
pub const ROOTS: &[&str] = &["/vnflcm/", "/vnffm/"];

type Ctl = State<Arc<Controller>>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(instances))
        .routes(routes!(instance))
        .routes(routes!(heal))
        .routes(routes!(op_occs))
        .routes(routes!(op_occ))
        .routes(routes!(notify, notify_test))
}

async fn body_json<T: serde::de::DeserializeOwned>(
    body: Body,
    what: &str,
) -> Result<T, ServerError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ServerError::TooLarge(format!("a {what} is at most {MAX_BODY} bytes")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ServerError::BadRequest(format!("not a {what}: {e}")))
}

/// 404 for an instance that is not configured or not the caller's.
fn check_instance(ctl: &Controller, who: &Principal, id: &str) -> Result<(), ServerError> {
    if !ctl.cfg().nfv.vnf_instances.contains_key(id) {
        return Err(ServerError::not_found("vnf instance", id));
    }
    who.check(ctl.cfg().tenant_of_vnf_instance(id), "vnf instance", id)
}

/// The VNF instances of `[nfv.vnf_instances]` (SOL 003 `VnfInstance`),
/// each with where its VMs run now.
#[utoipa::path(get, path = "/vnflcm/v1/vnf_instances", operation_id = "nfv_vnf_instances", tag = "nfv",
    params(ListParams),
    responses((status = 200, body = Vec<VnfInstance>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn instances(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<VnfInstance> {
    let page = Page::new(q.limit, q.offset)?;
    let cfg = ctl.cfg();
    let ids: Vec<&String> = cfg
        .nfv
        .vnf_instances
        .keys()
        .filter(|id| who.sees(cfg.tenant_of_vnf_instance(id)))
        .collect();
    let total = ids.len();
    // Only the page's instances are looked up.
    let mut items = Vec::new();
    for id in ids.into_iter().skip(page.offset).take(page.limit) {
        items.push(nfv::vnf_instance(&ctl, id).await?);
    }
    Ok(Listed { items, total })
}

/// One VNF instance.
#[utoipa::path(get, path = "/vnflcm/v1/vnf_instances/{vnfInstanceId}", operation_id = "nfv_vnf_instance", tag = "nfv",
    params(("vnfInstanceId" = String, Path, description = "VNF instance id")),
    responses((status = 200, body = VnfInstance), (status = 404, body = ProblemDetails)))]
async fn instance(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<VnfInstance>, ServerError> {
    check_instance(&ctl, &who, &id)?;
    Ok(Json(nfv::vnf_instance(&ctl, &id).await?))
}

/// Heal a VNF instance (SOL 003 `HealVnfRequest`): each VM named by
/// `vnfcInstanceId` (default: all of them) restarted in place, or with
/// `additionalParams.standby_action = "recover"` recovered at its DR
/// site. 202 with the operation occurrence's URI in `Location`.
#[utoipa::path(post, path = "/vnflcm/v1/vnf_instances/{vnfInstanceId}/heal", operation_id = "nfv_heal", tag = "nfv",
    params(("vnfInstanceId" = String, Path, description = "VNF instance id")),
    request_body = HealVnfRequest,
    responses((status = 202, description = "Accepted: `Location` names the VnfLcmOpOcc"),
        (status = 400, description = "Not a HealVnfRequest, a VNFC not of the instance, an unknown action", body = ProblemDetails),
        (status = 404, body = ProblemDetails),
        (status = 409, description = "An operation on the instance is in progress", body = ProblemDetails),
        (status = 413, description = "Larger than 1 MiB", body = ProblemDetails)))]
async fn heal(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ServerError> {
    check_instance(&ctl, &who, &id)?;
    let req: HealVnfRequest = body_json(body, "HealVnfRequest").await?;
    let job = nfv::heal(&ctl, &id, &req).await?;
    let location = format!(
        "{}{}/vnf_lcm_op_occs/{job}",
        ctl.cfg().controller.url(),
        nfv::LCM_ROOT
    );
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Body::empty(),
    )
        .into_response())
}

/// The operation occurrences (SOL 003 `VnfLcmOpOcc`): every heal, newest
/// first.
#[utoipa::path(get, path = "/vnflcm/v1/vnf_lcm_op_occs", operation_id = "nfv_op_occs", tag = "nfv",
    params(ListParams),
    responses((status = 200, body = Vec<VnfLcmOpOcc>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn op_occs(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<VnfLcmOpOcc> {
    let page = Page::new(q.limit, q.offset)?;
    let all = nfv::op_occs(&ctl, SCAN_CAP).await?;
    Ok(page.of(all
        .into_iter()
        .filter(|o| who.sees(ctl.cfg().tenant_of_vnf_instance(&o.vnf_instance_id)))
        .collect()))
}

/// One operation occurrence: `STARTING`, `PROCESSING`, `COMPLETED` or
/// `FAILED` (with `error`), as its job is.
#[utoipa::path(get, path = "/vnflcm/v1/vnf_lcm_op_occs/{vnfLcmOpOccId}", operation_id = "nfv_op_occ", tag = "nfv",
    params(("vnfLcmOpOccId" = String, Path, description = "Operation occurrence id (its job's)")),
    responses((status = 200, body = VnfLcmOpOcc), (status = 404, body = ProblemDetails)))]
async fn op_occ(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<VnfLcmOpOcc>, ServerError> {
    let job: i64 = id
        .parse()
        .map_err(|_| ServerError::not_found("vnf lcm op occ", &id))?;
    let o = nfv::op_occ(&ctl, job).await?;
    who.check(
        ctl.cfg().tenant_of_vnf_instance(&o.vnf_instance_id),
        "vnf lcm op occ",
        &id,
    )?;
    Ok(Json(o))
}

/// A VNF manager's fault management notification
/// (`AlarmNotification`, `AlarmClearedNotification`,
/// `AlarmListRebuiltNotification`): the callback an FM subscription
/// names. Each alarm becomes a standby event (`nfv.alarm`,
/// `nfv.alarm_cleared`); 204 (operators' side only).
#[utoipa::path(post, path = "/vnffm/v1/notifications", operation_id = "nfv_notify", tag = "nfv",
    request_body = FmNotification,
    responses((status = 204, description = "Received"),
        (status = 400, description = "Not a fault management notification", body = ProblemDetails),
        (status = 403, body = ProblemDetails),
        (status = 413, description = "Larger than 1 MiB", body = ProblemDetails)))]
async fn notify(State(ctl): Ctl, who: Principal, body: Body) -> Result<StatusCode, ServerError> {
    if who.tenant.is_some() {
        return Err(ServerError::Forbidden(
            "VNF fault notifications are the operators' (a tenant's token cannot post them)".into(),
        ));
    }
    let n: FmNotification = body_json(body, "VNF fault management notification").await?;
    fm::receive(&ctl, &n).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// SOL 013's test of a notification endpoint: 204.
#[utoipa::path(get, path = "/vnffm/v1/notifications", operation_id = "nfv_notify_test", tag = "nfv",
    responses((status = 204, description = "The endpoint receives notifications")))]
async fn notify_test(_who: Principal) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Every error answered under the NFV roots ([`ROOTS`]), the
/// authentication layer's too, as SOL 013's `ProblemDetails`: standby's
/// `ApiError` rewritten (`detail` its message, `code` and `retryable`
/// kept as extension members), `application/problem+json`.
pub async fn problem_details(req: Request, next: Next) -> Response {
    let nfv = ROOTS.iter().any(|r| req.uri().path().starts_with(r));
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
    if !nfv || !(resp.status().is_client_error() || resp.status().is_server_error()) || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (parts.status, "").into_response();
    };
    let Ok(e) = serde_json::from_slice::<ApiError>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let p = ProblemDetails {
        title: parts.status.canonical_reason().map(String::from),
        status: parts.status.as_u16(),
        detail: e.message,
        code: Some(e.code),
        retryable: Some(e.retryable),
    };
    let body = serde_json::to_vec(&p).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(parts, Body::from(body))
}
