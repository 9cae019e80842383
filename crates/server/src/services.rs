//! `/api/v1/services`: the front door's routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use standby_types::api::{ApiError, ServiceView, SwitchRequest, SwitchResult};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::common::{ApiQuery, ListParams, ListResult, Page};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;
use standby_engine::Controller;

type Ctl = State<Arc<Controller>>;

/// `/api/v1/services`: list, show, switch.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(switch))
}

/// Services behind the front door and the site their clients go to.
#[utoipa::path(get, path = "/api/v1/services", operation_id = "services", tag = "services", params(ListParams),
    responses((status = 200, body = Vec<ServiceView>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn list(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<ServiceView> {
    let page = Page::new(q.limit, q.offset)?;
    let all: Vec<ServiceView> = ctl
        .frontdoor
        .views(&ctl.cfg())?
        .into_iter()
        .filter(|v| who.sees(ctl.cfg().tenant_of_service(&v.name)))
        .collect();
    Ok(page.of(all))
}

/// One service.
#[utoipa::path(get, path = "/api/v1/services/{name}", operation_id = "service", tag = "services",
    params(("name" = String, Path, description = "Service")),
    responses((status = 200, body = ServiceView), (status = 404, body = ApiError)))]
async fn show(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ServerError> {
    who.check(ctl.cfg().tenant_of_service(&name), "service", &name)?;
    Ok(Json(ctl.frontdoor.view(&ctl.cfg(), &name)?))
}

/// Send a service's clients to another site.
#[utoipa::path(post, path = "/api/v1/services/{name}/switch", operation_id = "service_switch", tag = "services",
    params(("name" = String, Path, description = "Service")),
    request_body = SwitchRequest,
    responses((status = 200, body = SwitchResult), (status = 400, body = ApiError),
        (status = 404, body = ApiError)))]
async fn switch(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: Result<Json<SwitchRequest>, JsonRejection>,
) -> Result<Json<SwitchResult>, ServerError> {
    who.check(ctl.cfg().tenant_of_service(&name), "service", &name)?;
    // 404 for an unknown service before looking at the body.
    ctl.frontdoor.record(&name)?;
    let Json(req) = body.map_err(|e| {
        ServerError::BadRequest(format!(
            "bad switch request (expected {{\"site\": NAME}}): {}",
            e.body_text()
        ))
    })?;
    Ok(Json(
        ctl.frontdoor.switch(&ctl.cfg(), &name, &req.site).await?,
    ))
}
