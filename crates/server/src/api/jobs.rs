//! Jobs: listed, shown and followed as they run.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use standby_types::api::ApiError;
use standby_types::model::{Job, JobStatus};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{ApiQuery, ApiResult, Ctl, ListResult, Page, Rd, SCAN_CAP, check_job};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::{AppState, Reads};

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(read_routes())
        .routes(routes!(job_stream))
}

/// The routes a replica that does not lead answers from the database
/// (see [`crate::follower`]).
pub(crate) fn read_routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    std::sync::Arc<Reads>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(jobs))
        .routes(routes!(job))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobParams {
    /// Only jobs of this kind (`protect`, `restore`, `runbook`, `sync`…).
    kind: Option<String>,
    /// Only jobs in this state: `queued`, `running`, `succeeded`, `failed`.
    status: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobParams),
    responses((status = 200, body = Vec<Job>,
        headers(("x-total-count" = u64, description = "Number of matches"))),
        (status = 400, body = ApiError)))]
async fn jobs(State(ctl): Rd, who: Principal, ApiQuery(q): ApiQuery<JobParams>) -> ListResult<Job> {
    let page = Page::new(q.limit, q.offset)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(ServerError::BadRequest)?;
    let mut all = Vec::new();
    for j in ctl.repo.jobs(SCAN_CAP).await? {
        if q.kind.as_ref().is_some_and(|k| &j.kind != k) || status.is_some_and(|s| j.status != s) {
            continue;
        }
        if who.tenant.is_some()
            && !who.sees(
                crate::tenancy::job(&ctl.cfg(), &*ctl.runs, &j)
                    .await?
                    .as_deref(),
            )
        {
            continue;
        }
        all.push(j);
    }
    Ok(page.of(all))
}

/// One job with its progress and result.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ApiError)))]
async fn job(State(ctl): Rd, who: Principal, Path(id): Path<i64>) -> ApiResult<Job> {
    let j = ctl.repo.job(id).await?;
    check_job(&ctl, &who, &j).await?;
    Ok(Json(j))
}

/// A job as it runs, as server-sent events: `job` (the job, at once and
/// whenever its progress changes), `steps` (a runbook job's steps, when
/// they change) and, last, `end` (the finished job); then the stream
/// closes.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/stream", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "Server-sent events: `job`, `steps`, `end`",
        content_type = "text/event-stream", body = String),
        (status = 404, body = ApiError)))]
async fn job_stream(
    State(ctl): Ctl,
    State(reads): Rd,
    who: Principal,
    Path(id): Path<i64>,
) -> Result<Response, ServerError> {
    let j = ctl.repo.job(id).await?;
    check_job(&reads, &who, &j).await?;
    Ok(crate::stream::stream(ctl, id))
}
