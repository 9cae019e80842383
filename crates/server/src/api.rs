//! The HTTP/JSON API under `/api/v1`, used by the CLI and the portal.
//! Long operations answer with a job id to poll or stream
//! (`jobs/{id}/stream`).
//!
//! Every route is registered through [`OpenApiRouter`] with `routes!`, so
//! registering a route documents it: the OpenAPI document
//! ([`crate::openapi::openapi`]) is built from the same `#[utoipa::path]`
//! annotations, and the role each operation needs is read from it.
//!
//! Lists take `limit` (default 100, at most 1000) and `offset`, answer
//! the page as a JSON array and the number of matches in `X-Total-Count`
//! ([`Page`]). Every handler narrows what it shows to the caller's tenant
//! ([`owner`]; the rule is in `docs/api.md`).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use standby_store::{GcOptions, PointId};
use standby_types::api::{
    ApiError, DatastoreView, FenceRequest, GcRequest, JobRef, PruneRequest, RestoreRequest,
    ShutdownRequest, SiteView, SyncRequest, VmView,
};
use standby_types::model::{GroupRecord, Job, JobStatus, PointRecord};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;
use standby_engine::Controller;
use standby_engine::jobs::spawn_job;
use standby_engine::restore;
use standby_engine::scheduler::start_group_run;
use standby_engine::vms;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

/// The API as served: every documented route, authentication, tracing.
pub fn router(state: crate::AppState) -> Router {
    let (api, _) = routes().split_for_parts();
    api.merge(crate::portal::routes())
        .layer(axum::middleware::from_fn(crate::auth::layer))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route under `/api/v1` (and `/metrics`) with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(health))
        .routes(routes!(crate::openapi::openapi_json))
        .routes(routes!(sites))
        .routes(routes!(site_fence))
        .routes(routes!(site_unfence))
        .routes(routes!(vms))
        .routes(routes!(vm))
        .routes(routes!(vm_start))
        .routes(routes!(vm_shutdown))
        .routes(routes!(vm_stop))
        .routes(routes!(groups))
        .routes(routes!(group_run))
        .routes(routes!(points))
        .routes(routes!(point))
        .routes(routes!(restore_point))
        .routes(routes!(datastores))
        .routes(routes!(store_verify))
        .routes(routes!(store_prune))
        .routes(routes!(store_gc))
        .routes(routes!(store_sync))
        .routes(routes!(jobs))
        .routes(routes!(job))
        .routes(routes!(job_stream))
        .merge(crate::api_watch::routes())
        .merge(crate::services::routes())
        .merge(crate::runbooks::routes())
        .merge(crate::auth::api::routes())
}

/// Query parameters, with a JSON 400 naming the parameter when one is bad
/// (axum's own `Query` answers in plain text).
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(ApiQuery)
            .map_err(|e| ServerError::BadRequest(format!("bad query string '{q}': {e}")))
    }
}

/// Default page size of a list.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of a list.
pub const MAX_LIMIT: u32 = 1000;

/// One page of a list: `offset` matches skipped, at most `limit` shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub offset: usize,
}

impl Page {
    /// The page asked for; 400 for a limit of 0 or above [`MAX_LIMIT`].
    pub fn new(limit: Option<u32>, offset: Option<u32>) -> Result<Page, ServerError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ServerError::BadRequest(format!(
                "limit {limit} is out of range (1 to {MAX_LIMIT})"
            )));
        }
        Ok(Page {
            limit: limit as usize,
            offset: offset.unwrap_or(0) as usize,
        })
    }

    /// The page of `all` (in list order) and the number of matches.
    pub fn of<T>(self, all: Vec<T>) -> Listed<T> {
        let total = all.len();
        let items = all.into_iter().skip(self.offset).take(self.limit).collect();
        Listed { items, total }
    }

    /// For a list shown oldest first whose `offset` counts from the newest
    /// end (events): the page nearest the end, still oldest first.
    pub fn of_newest<T>(self, all: Vec<T>) -> Listed<T> {
        let total = all.len();
        let end = total.saturating_sub(self.offset);
        let start = end.saturating_sub(self.limit);
        let items = all.into_iter().take(end).skip(start).collect();
        Listed { items, total }
    }
}

/// A page of a list: the JSON array of the page, the number of matches in
/// `X-Total-Count`.
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: usize,
}

pub const TOTAL_COUNT: &str = "x-total-count";

impl<T: Serialize> IntoResponse for Listed<T> {
    fn into_response(self) -> Response {
        let mut r = Json(self.items).into_response();
        r.headers_mut()
            .insert(TOTAL_COUNT, HeaderValue::from(self.total as u64));
        r
    }
}

pub(crate) type ListResult<T> = Result<Listed<T>, ServerError>;

/// Who owns what, for tenant scoping: `Some(tenant)` for a tenant's
/// object, `None` for the operators' own (see `docs/api.md`).
pub mod owner {
    use standby_types::config::Config;
    use standby_types::model::Job;
    use standby_types::watch::Labels;

    use crate::error::ServerError;
    use standby_engine::Controller;

    /// The runbooks a tenant's user may run, for a VM of theirs (`vm`
    /// parameter).
    pub const TENANT_RUNBOOKS: &[&str] = &["drill", "move-vm"];

    /// A point belongs to its VM's tenant; so does a point id `vm@time`.
    pub fn point<'a>(cfg: &'a Config, point_id: &str) -> Option<&'a str> {
        let vm = point_id.split_once('@').map_or(point_id, |(vm, _)| vm);
        cfg.tenant_of_vm(vm)
    }

    /// An alert, incident or event: its `tenant` label, else the tenant of
    /// its `vm`, `service` or `group` label; none of them: the operators'.
    pub fn labels<'a>(cfg: &'a Config, labels: &'a Labels) -> Option<&'a str> {
        if let Some(t) = labels.get("tenant") {
            return Some(t);
        }
        labels
            .get("vm")
            .and_then(|v| cfg.tenant_of_vm(v))
            .or_else(|| labels.get("service").and_then(|s| cfg.tenant_of_service(s)))
            .or_else(|| labels.get("group").and_then(|g| cfg.tenant_of_group(g)))
    }

    /// A job without a database look-up: a restore is its point's VM's, a
    /// protection run its group's; maintenance of datastores the
    /// operators'. `None` for a runbook job (see [`job`]).
    pub fn job_by_kind<'a>(cfg: &'a Config, job: &Job) -> Option<Option<&'a str>> {
        match job.kind.as_str() {
            "restore" => Some(point(cfg, &job.target)),
            "protect" => Some(cfg.tenant_of_group(&job.target)),
            "runbook" => None,
            _ => Some(None),
        }
    }

    /// A runbook job belongs to the tenant of its `vm` parameter.
    pub fn runbook_params<'a>(cfg: &'a Config, params: &serde_json::Value) -> Option<&'a str> {
        params
            .get("vm")
            .and_then(|v| v.as_str())
            .and_then(|vm| cfg.tenant_of_vm(vm))
    }

    /// The tenant of any job.
    pub async fn job(ctl: &Controller, job: &Job) -> Result<Option<String>, ServerError> {
        if let Some(o) = job_by_kind(&ctl.cfg, job) {
            return Ok(o.map(String::from));
        }
        let run = ctl.runbooks.repo().run(job.id).await?;
        Ok(runbook_params(&ctl.cfg, &run.run.params).map(String::from))
    }
}

/// 404 unless the principal sees the job.
pub(crate) async fn check_job(
    ctl: &Controller,
    who: &Principal,
    job: &Job,
) -> Result<(), ServerError> {
    if who.tenant.is_none() {
        return Ok(());
    }
    let o = owner::job(ctl, job).await?;
    who.check(o.as_deref(), "job", &job.id.to_string())
}

/// 404 for a tenant's user: sites, hosts, datastores and the like are the
/// operators'.
pub(crate) fn operators_only(
    who: &Principal,
    kind: &'static str,
    name: &str,
) -> Result<(), ServerError> {
    who.check(None, kind, name)
}

/// The controller is up (no authentication).
#[utoipa::path(get, path = "/api/v1/health", tag = "meta",
    extensions(("x-standby-auth" = json!("none"))),
    responses((status = 200, description = "Up; with the version", body = Object)))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `limit` and `offset` of a list without filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Skip this many first.
    pub offset: Option<u32>,
}

/// Sites with their hosts, datastores, active VMs and fence (operators'
/// only: a tenant's user gets an empty list).
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(ListParams),
    responses((status = 200, body = Vec<SiteView>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn sites(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<SiteView> {
    let page = Page::new(q.limit, q.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    let vms = ctl.repo.vms().await?;
    let out = ctl
        .repo
        .sites()
        .await?
        .into_iter()
        .map(|s| SiteView {
            hosts: ctl
                .cfg
                .hosts
                .iter()
                .filter(|(_, h)| h.site == s.name)
                .map(|(n, _)| n.clone())
                .collect(),
            datastores: ctl
                .cfg
                .datastores_at(&s.name)
                .into_iter()
                .map(String::from)
                .collect(),
            vms: vms
                .iter()
                .filter(|v| v.active_site == s.name)
                .map(|v| v.name.clone())
                .collect(),
            fenced: ctl.fence_of(&s.name).is_some(),
            fenced_since: ctl.fence_of(&s.name).map(|f| f.since),
            fence_reason: ctl.fence_of(&s.name).map(|f| f.reason),
            name: s.name,
            description: s.description,
        })
        .collect();
    Ok(page.of(out))
}

/// Fence a site: it runs no VM until unfenced (admin).
#[utoipa::path(post, path = "/api/v1/sites/{name}/fence", tag = "sites",
    params(("name" = String, Path, description = "Site")),
    request_body(content = Option<FenceRequest>, description = "Optional reason"),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The fence", body = Object),
        (status = 404, body = ApiError)))]
async fn site_fence(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<serde_json::Value> {
    operators_only(&who, "site", &name)?;
    let req: FenceRequest = if body.is_empty() {
        FenceRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad fence request: {e}")))?
    };
    Ok(Json(ctl.fence_site(&name, &req.reason).await?))
}

/// Lift a site's fence (admin).
#[utoipa::path(post, path = "/api/v1/sites/{name}/unfence", tag = "sites",
    params(("name" = String, Path, description = "Site")),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The lifted fence", body = Object),
        (status = 404, body = ApiError)))]
async fn site_unfence(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    operators_only(&who, "site", &name)?;
    Ok(Json(ctl.unfence_site(&name).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VmParams {
    /// Only VMs active at this site.
    site: Option<String>,
    /// Only members of this protection group.
    group: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// VMs with their live state, groups and newest point.
#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", params(VmParams),
    responses((status = 200, body = Vec<VmView>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn vms(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<VmParams>,
) -> ListResult<VmView> {
    let page = Page::new(q.limit, q.offset)?;
    let records: Vec<_> = ctl
        .repo
        .vms()
        .await?
        .into_iter()
        .filter(|v| who.sees(ctl.cfg.tenant_of_vm(&v.name)))
        .filter(|v| q.site.as_ref().is_none_or(|s| &v.active_site == s))
        .filter(|v| {
            q.group
                .as_ref()
                .is_none_or(|g| ctl.cfg.groups_of(&v.name).contains(&g.as_str()))
        })
        .collect();
    let listed = page.of(records);
    Ok(Listed {
        items: vms::views(&ctl, listed.items).await?,
        total: listed.total,
    })
}

/// 404 unless the VM exists and the principal sees it.
fn check_vm(ctl: &Controller, who: &Principal, name: &str) -> Result<(), ServerError> {
    who.check(ctl.cfg.tenant_of_vm(name), "vm", name)
}

/// One VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmView), (status = 404, body = ApiError)))]
async fn vm(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<VmView> {
    check_vm(&ctl, &who, &name)?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Start a VM at its active host.
#[utoipa::path(post, path = "/api/v1/vms/{name}/start", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn vm_start(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<VmView> {
    check_vm(&ctl, &who, &name)?;
    vms::start(&ctl, &name).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Shut a VM down gracefully (SIGTERM, then SIGKILL after the timeout).
#[utoipa::path(post, path = "/api/v1/vms/{name}/shutdown", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    request_body(content = Option<ShutdownRequest>),
    responses((status = 200, body = VmView), (status = 404, body = ApiError)))]
async fn vm_shutdown(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: Option<Json<ShutdownRequest>>,
) -> ApiResult<VmView> {
    check_vm(&ctl, &who, &name)?;
    let timeout = body
        .and_then(|b| b.timeout_secs)
        .map(std::time::Duration::from_secs);
    vms::shutdown(&ctl, &name, timeout).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Stop a VM at once.
#[utoipa::path(post, path = "/api/v1/vms/{name}/stop", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmView), (status = 404, body = ApiError)))]
async fn vm_stop(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<VmView> {
    check_vm(&ctl, &who, &name)?;
    vms::stop(&ctl, &name).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Protection groups with their schedule and last run.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", params(ListParams),
    responses((status = 200, body = Vec<GroupRecord>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn groups(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<GroupRecord> {
    let page = Page::new(q.limit, q.offset)?;
    let all: Vec<GroupRecord> = ctl
        .repo
        .groups()
        .await?
        .into_iter()
        .filter(|g| who.sees(ctl.cfg.tenant_of_group(&g.name)))
        .collect();
    Ok(page.of(all))
}

/// Take a point of every member of a group now.
#[utoipa::path(post, path = "/api/v1/groups/{name}/run", tag = "groups",
    params(("name" = String, Path, description = "Protection group")),
    responses((status = 200, description = "The job", body = JobRef),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn group_run(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<JobRef> {
    who.check(ctl.cfg.tenant_of_group(&name), "group", &name)?;
    Ok(Json(JobRef {
        job: start_group_run(&ctl, &name).await?,
    }))
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
    State(ctl): Ctl,
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
        check_vm(&ctl, &who, vm)?;
        ctl.repo.vm(vm).await?;
    }
    // A tenant's user: only the points of their VMs.
    let vms = who.tenant.is_some().then(|| {
        ctl.cfg
            .vms
            .keys()
            .filter(|v| who.sees(ctl.cfg.tenant_of_vm(v)))
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
        items,
        total: total as usize,
    })
}

/// One recovery point.
#[utoipa::path(get, path = "/api/v1/points/{id}", tag = "points",
    params(("id" = String, Path, description = "Point id, `vm@time`")),
    responses((status = 200, body = PointRecord), (status = 404, body = ApiError)))]
async fn point(State(ctl): Ctl, who: Principal, Path(id): Path<String>) -> ApiResult<PointRecord> {
    let p = ctl.repo.point(&id).await?;
    who.check(ctl.cfg.tenant_of_vm(&p.vm), "point", &id)?;
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
    who.check(owner::point(&ctl.cfg, &req.point), "point", &req.point)?;
    restore::check(&ctl, &req).await?;
    let target = req.point.clone();
    let job = spawn_job(&ctl, "restore", &target, move |ctl, p| {
        restore::run(ctl, req, p)
    })
    .await?;
    Ok(Json(JobRef { job }))
}

/// Datastores with their size and contents (operators' only).
#[utoipa::path(get, path = "/api/v1/datastores", tag = "datastores", params(ListParams),
    responses((status = 200, body = Vec<DatastoreView>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn datastores(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<DatastoreView> {
    let page = Page::new(q.limit, q.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    let names: Vec<&String> = ctl.cfg.datastores.keys().collect();
    let listed = page.of(names);
    let mut out = Vec::new();
    for name in listed.items {
        let d = &ctl.cfg.datastores[name];
        let mut view = DatastoreView {
            name: name.clone(),
            site: d.site.clone(),
            path: d.location(),
            points: 0,
            packs: 0,
            chunks: 0,
            bytes: 0,
            error: None,
        };
        let info = match ctl.store(name) {
            Ok(s) => tokio::task::spawn_blocking(move || {
                // Counted from the manifest names: no manifest is read.
                let stats = s.stats()?;
                let points = stats.points;
                Ok::<_, standby_store::StoreError>((stats, points))
            })
            .await
            .map_err(ServerError::from)
            .and_then(|r| r.map_err(ServerError::from)),
            Err(e) => Err(e.into()),
        };
        match info {
            Ok((stats, points)) => {
                view.points = points;
                view.packs = stats.packs as u64;
                view.chunks = stats.chunks;
                view.bytes = stats.bytes_on_disk;
            }
            Err(e) => view.error = Some(crate::error::error_chain(&e)),
        }
        out.push(view);
    }
    Ok(Listed {
        items: out,
        total: listed.total,
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
struct VerifyRequest {
    /// Check this fraction of the chunks (0 < f <= 1), picked at random.
    #[serde(default)]
    sample: Option<f64>,
}

/// Verify a datastore's chunks (all, or a random sample).
#[utoipa::path(post, path = "/api/v1/datastores/{name}/verify", tag = "datastores",
    params(("name" = String, Path, description = "Datastore")),
    request_body(content = Option<VerifyRequest>),
    responses((status = 200, description = "The job", body = JobRef),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn store_verify(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<JobRef> {
    operators_only(&who, "datastore", &name)?;
    let req: VerifyRequest = crate::api_watch::optional_body(&body)?;
    if let Some(f) = req.sample
        && !(f > 0.0 && f <= 1.0)
    {
        return Err(ServerError::BadRequest(format!(
            "sample {f} is not a fraction in (0, 1]"
        )));
    }
    let store = ctl.store(&name)?;
    let job = spawn_job(&ctl, "verify", &name, move |_, p| async move {
        let report = tokio::task::spawn_blocking(move || match req.sample {
            Some(f) => store.verify_sample(f, rand::random(), p.as_ref()),
            None => store.verify(p.as_ref()),
        })
        .await??;
        let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            return Err(ServerError::Conflict(format!(
                "verify found {} problem(s): {}",
                problems.len(),
                problems.join("; ")
            )));
        }
        Ok(json!({
            "sample_fraction": report.sample_fraction,
            "points_checked": report.points_checked,
            "chunks_checked": report.chunks_checked,
            "bytes_checked": report.bytes_checked,
            "problems": problems,
        }))
    })
    .await?;
    Ok(Json(JobRef { job }))
}

/// Remove the points the groups' retention no longer keeps.
#[utoipa::path(post, path = "/api/v1/datastores/{name}/prune", tag = "datastores",
    params(("name" = String, Path, description = "Datastore")),
    request_body(content = Option<PruneRequest>),
    responses((status = 200, description = "The job", body = JobRef),
        (status = 404, body = ApiError)))]
async fn store_prune(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: Option<Json<PruneRequest>>,
) -> ApiResult<JobRef> {
    operators_only(&who, "datastore", &name)?;
    ctl.store(&name)?;
    let dry_run = body.map(|b| b.dry_run).unwrap_or(false);
    // Each VM is pruned by the retention of the groups that write here.
    let policies: Vec<(String, standby_types::Retention)> = ctl
        .cfg
        .groups
        .values()
        .filter(|g| g.datastores.contains(&name) && !g.retention.keeps_all())
        .flat_map(|g| g.members.iter().map(|m| (m.clone(), g.retention)))
        .collect();
    let ds = name.clone();
    let job = spawn_job(&ctl, "prune", &name, move |ctl, _| async move {
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (vm, policy) in policies {
            let report = standby_engine::protect::prune_vm(&ctl, &ds, &vm, policy, dry_run).await?;
            kept.extend(report.kept.iter().map(|p| p.to_string()));
            removed.extend(report.removed.iter().map(|p| p.to_string()));
        }
        Ok::<_, ServerError>(json!({"dry_run": dry_run, "kept": kept, "removed": removed}))
    })
    .await?;
    Ok(Json(JobRef { job }))
}

/// Collect garbage: packs no point refers to.
#[utoipa::path(post, path = "/api/v1/datastores/{name}/gc", tag = "datastores",
    params(("name" = String, Path, description = "Datastore")),
    request_body(content = Option<GcRequest>),
    responses((status = 200, description = "The job", body = JobRef),
        (status = 404, body = ApiError)))]
async fn store_gc(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: Option<Json<GcRequest>>,
) -> ApiResult<JobRef> {
    operators_only(&who, "datastore", &name)?;
    let store = ctl.store(&name)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let job = spawn_job(&ctl, "gc", &name, move |_, p| async move {
        let opts = GcOptions {
            grace: std::time::Duration::from_secs(req.grace_secs.unwrap_or(3600)),
            dry_run: req.dry_run,
            ..GcOptions::default()
        };
        let r = tokio::task::spawn_blocking(move || store.gc(opts, p.as_ref())).await??;
        Ok::<_, ServerError>(json!({
            "packs_deleted": r.packs_deleted,
            "packs_repacked": r.packs_repacked,
            "chunks_removed": r.chunks_removed,
            "bytes_freed": r.bytes_freed,
            "packs_skipped_grace": r.packs_skipped_grace,
        }))
    })
    .await?;
    Ok(Json(JobRef { job }))
}

/// Copy points to another datastore.
#[utoipa::path(post, path = "/api/v1/datastores/{name}/sync", tag = "datastores",
    params(("name" = String, Path, description = "Source datastore")),
    request_body = SyncRequest,
    responses((status = 200, description = "The job", body = JobRef),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn store_sync(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    Json(req): Json<SyncRequest>,
) -> ApiResult<JobRef> {
    operators_only(&who, "datastore", &name)?;
    let src = ctl.store(&name)?;
    let dst = ctl.store(&req.to)?;
    let to = req.to.clone();
    let points: Vec<PointId> = match &req.point {
        Some(p) => vec![
            p.parse()
                .map_err(|e| ServerError::BadRequest(format!("bad point id '{p}': {e}")))?,
        ],
        None => {
            let s = src.clone();
            tokio::task::spawn_blocking(move || s.list_points())
                .await??
                .into_iter()
                .map(|m| m.id)
                .collect()
        }
    };
    let job = spawn_job(&ctl, "sync", &format!("{name} -> {to}"), move |ctl, p| async move {
        let (mut chunks, mut bytes, mut copied) = (0u64, 0u64, Vec::new());
        for id in points {
            p.stage(format!("syncing {id} to {to}"), 0);
            let (s, d, i, pr) = (src.clone(), dst.clone(), id.clone(), p.clone());
            let st = tokio::task::spawn_blocking(move || s.sync_point(&i, &d, pr.as_ref())).await??;
            chunks += st.chunks_copied;
            bytes += st.bytes_copied;
            if ctl.repo.point(&id.to_string()).await.is_ok() {
                ctl.repo.add_point_copy(&id.to_string(), &to).await?;
            }
            copied.push(json!({"point": id.to_string(), "chunks_copied": st.chunks_copied, "bytes_copied": st.bytes_copied, "already_present": st.already_present}));
        }
        Ok::<_, ServerError>(json!({"to": to, "chunks_copied": chunks, "bytes_copied": bytes, "points": copied}))
    })
    .await?;
    Ok(Json(JobRef { job }))
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

/// How many of the newest rows a list with a database limit looks at;
/// `X-Total-Count` counts matches among them.
pub const SCAN_CAP: u32 = 100_000;

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobParams),
    responses((status = 200, body = Vec<Job>,
        headers(("x-total-count" = u64, description = "Number of matches"))),
        (status = 400, body = ApiError)))]
async fn jobs(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<JobParams>,
) -> ListResult<Job> {
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
        if who.tenant.is_some() && !who.sees(owner::job(&ctl, &j).await?.as_deref()) {
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
async fn job(State(ctl): Ctl, who: Principal, Path(id): Path<i64>) -> ApiResult<Job> {
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
    who: Principal,
    Path(id): Path<i64>,
) -> Result<Response, ServerError> {
    let j = ctl.repo.job(id).await?;
    check_job(&ctl, &who, &j).await?;
    Ok(crate::stream::stream(ctl, id))
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;

    use standby_types::config::Config;
    use standby_types::watch::Labels;

    use super::*;

    fn cfg() -> Config {
        Config::parse(
            r#"
[tenants.acme]
[tenants.globex]
[sites.site1]
[hosts.h]
site = "site1"
driver = "process"
disk_dir = "/disks"
[vms.pbx1]
host = "h"
command = "sleep"
tenant = "acme"
[vms.pbx2]
host = "h"
command = "sleep"
tenant = "globex"
[vms.core]
host = "h"
command = "sleep"
[datastores.store1]
site = "site1"
path = "/tmp/standby-api-test-store1"
[groups.acme-gold]
datastores = ["store1"]
members = ["pbx1"]
schedule = "every 1h"
tenant = "acme"
[services.sip]
vm = "pbx1"
listen = "127.0.0.1:0"
backends = { site1 = "127.0.0.1:5060" }
"#,
            FsPath::new("standby.toml"),
        )
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn job(kind: &str, target: &str) -> Job {
        Job {
            id: 1,
            kind: kind.into(),
            target: target.into(),
            status: JobStatus::Running,
            progress_done: 0,
            progress_total: 0,
            message: String::new(),
            error: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            result: serde_json::Value::Null,
        }
    }

    #[test]
    fn labels_belong_to_the_tenant_label_then_vm_service_group() {
        let c = cfg();
        assert_eq!(owner::labels(&c, &labels(&[("vm", "pbx1")])), Some("acme"));
        assert_eq!(
            owner::labels(&c, &labels(&[("vm", "pbx2")])),
            Some("globex")
        );
        assert_eq!(
            owner::labels(&c, &labels(&[("service", "sip")])),
            Some("acme")
        );
        assert_eq!(
            owner::labels(&c, &labels(&[("group", "acme-gold")])),
            Some("acme")
        );
        assert_eq!(
            owner::labels(&c, &labels(&[("tenant", "globex"), ("vm", "pbx1")])),
            Some("globex")
        );
        // The operators' own: no label names a tenant's object.
        assert_eq!(owner::labels(&c, &labels(&[("vm", "core")])), None);
        assert_eq!(owner::labels(&c, &labels(&[("site", "site1")])), None);
        assert_eq!(owner::labels(&c, &labels(&[("vm", "no-such-vm")])), None);
    }

    #[test]
    fn points_and_jobs_belong_to_their_vm_or_group() {
        let c = cfg();
        assert_eq!(owner::point(&c, "pbx1@20261126T101500.000Z"), Some("acme"));
        assert_eq!(owner::point(&c, "core@20261126T101500.000Z"), None);
        assert_eq!(
            owner::job_by_kind(&c, &job("restore", "pbx2@20261126T101500.000Z")),
            Some(Some("globex"))
        );
        assert_eq!(
            owner::job_by_kind(&c, &job("protect", "acme-gold")),
            Some(Some("acme"))
        );
        assert_eq!(owner::job_by_kind(&c, &job("gc", "store1")), Some(None));
        assert_eq!(
            owner::job_by_kind(&c, &job("sync", "store1 -> store2")),
            Some(None)
        );
        // A runbook job needs its run's parameters.
        assert_eq!(owner::job_by_kind(&c, &job("runbook", "move-vm")), None);
        assert_eq!(
            owner::runbook_params(&c, &json!({"vm": "pbx1", "site": "site2"})),
            Some("acme")
        );
        assert_eq!(owner::runbook_params(&c, &json!({"site": "site1"})), None);
    }

    #[test]
    fn a_tenants_user_sees_their_own_and_gets_404_for_the_rest() {
        let c = cfg();
        let acme = Principal {
            name: "alice".into(),
            role: crate::auth::Role::Operator,
            tenant: Some("acme".into()),
        };
        let ops = Principal {
            name: "root".into(),
            role: crate::auth::Role::Admin,
            tenant: None,
        };
        assert!(acme.sees(c.tenant_of_vm("pbx1")));
        assert!(!acme.sees(c.tenant_of_vm("pbx2")));
        assert!(!acme.sees(c.tenant_of_vm("core")));
        assert!(ops.sees(c.tenant_of_vm("pbx2")));
        let e = operators_only(&acme, "datastore", "store1").unwrap_err();
        assert_eq!(e.to_api().code, "not_found");
        assert!(operators_only(&ops, "datastore", "store1").is_ok());
    }

    #[test]
    fn pages_slice_and_count_and_refuse_bad_limits() {
        let p = Page::new(Some(2), Some(1)).unwrap();
        let l = p.of(vec![1, 2, 3, 4]);
        assert_eq!((l.items, l.total), (vec![2, 3], 4));
        let l = p.of_newest(vec![1, 2, 3, 4]);
        assert_eq!((l.items, l.total), (vec![2, 3], 4));
        let l = Page::new(None, Some(10)).unwrap().of(vec![1, 2]);
        assert_eq!((l.items, l.total), (vec![], 2));
        assert_eq!(Page::new(None, None).unwrap().limit, 100);
        for bad in [0, 1001] {
            let e = Page::new(Some(bad), None).unwrap_err();
            assert_eq!(e.to_api().code, "bad_request");
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }
}
