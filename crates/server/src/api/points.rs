//! Restore points: listed, shown and restored.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use standby_types::api::{ApiError, JobRef, RestoreRequest};
use standby_types::model::PointRecord;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{ApiQuery, ApiResult, Ctl, ListResult, Listed, Page, Rd, check_vm};
use crate::auth::Principal;
use crate::state::{AppState, Reads};
use standby_engine::jobs::spawn_job;
use standby_engine::restore;

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(read_routes())
        .routes(routes!(restore_point))
}

/// The routes a replica that does not lead answers from the database
/// (see [`crate::follower`]).
pub(crate) fn read_routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    std::sync::Arc<Reads>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(points))
        .routes(routes!(point))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PointParams {
    /// Only this VM's points (404 for an unknown VM).
    vm: Option<String>,
    /// Only points taken at this site.
    site: Option<String>,
    /// Only points of this protection group.
    group: Option<String>,
    /// Only points taken since: a duration ago (`1h`) or an RFC 3339 time.
    since: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// Recovery points, oldest first.
#[utoipa::path(get, path = "/api/v1/points", tag = "points", params(PointParams),
    responses((status = 200, body = Vec<PointRecord>,
        headers(("x-total-count" = u64, description = "Number of matches"))),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn points(
    State(ctl): Rd,
    who: Principal,
    ApiQuery(q): ApiQuery<PointParams>,
) -> ListResult<PointRecord> {
    let page = Page::new(q.limit, q.offset)?;
    let since = q
        .since
        .as_deref()
        .map(crate::api_watch::parse_since)
        .transpose()?;
    if let Some(vm) = &q.vm {
        check_vm(&ctl.cfg(), &who, vm)?;
        ctl.repo.vm(vm).await?;
    }
    // A tenant's user: only the points of their VMs.
    let vms = who.tenant.is_some().then(|| {
        ctl.cfg()
            .vms
            .keys()
            .filter(|v| who.sees(ctl.cfg().tenant_of_vm(v)))
            .cloned()
            .collect()
    });
    let (items, total) = ctl
        .repo
        .point_page(&standby_db::PointQuery {
            vm: q.vm,
            vms,
            site: q.site,
            group: q.group,
            since,
            newest_first: false,
            limit: page.limit as u32,
            offset: page.offset as u32,
        })
        .await?;
    Ok(Listed {
        items: with_damage(&ctl, items).await?,
        total: total as usize,
    })
}

/// The points with the damaged copies a verify found (a small table, read
/// whole).
async fn with_damage(
    ctl: &crate::state::Reads,
    mut points: Vec<PointRecord>,
) -> Result<Vec<PointRecord>, crate::ServerError> {
    let damaged = ctl.repo.damaged_copies().await?;
    if damaged.is_empty() {
        return Ok(points);
    }
    for p in &mut points {
        p.damaged = damaged
            .iter()
            .filter(|d| d.point == p.id)
            .cloned()
            .collect();
    }
    Ok(points)
}

/// One recovery point.
#[utoipa::path(get, path = "/api/v1/points/{id}", tag = "points",
    params(("id" = String, Path, description = "Point id, `vm@time`")),
    responses((status = 200, body = PointRecord), (status = 404, body = ApiError)))]
async fn point(State(ctl): Rd, who: Principal, Path(id): Path<String>) -> ApiResult<PointRecord> {
    let p = ctl.repo.point(&id).await?;
    who.check(ctl.cfg().tenant_of_vm(&p.vm), "point", &id)?;
    let p = with_damage(&ctl, vec![p]).await?.remove(0);
    Ok(Json(p))
}

/// Restore a point at a site (and start the VM there).
#[utoipa::path(post, path = "/api/v1/restore", tag = "points",
    request_body = RestoreRequest,
    responses((status = 200, description = "The job", body = JobRef),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn restore_point(
    State(ctl): Ctl,
    who: Principal,
    Json(req): Json<RestoreRequest>,
) -> ApiResult<JobRef> {
    who.check(
        crate::tenancy::point(&ctl.cfg(), &req.point),
        "point",
        &req.point,
    )?;
    restore::check(&ctl, &req).await?;
    let target = req.point.clone();
    let job = spawn_job(&ctl, "restore", &target, move |ctl, p| {
        restore::run(ctl, req, p)
    })
    .await?;
    Ok(Json(JobRef { job }))
}
