//! Sites, VMs and protection groups.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use standby_types::api::{ApiError, FenceRequest, JobRef, ShutdownRequest, SiteView, VmView};
use standby_types::model::GroupRecord;
use standby_types::outcome::{SiteFenced, SiteUnfenced};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{
    ApiQuery, ApiResult, Ctl, ListParams, ListResult, Listed, Page, Rd, check_vm, operators_only,
};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::{AppState, Reads, SitesBuilt, SitesCache};
use standby_engine::runbooks::triggers::protect_group;
use standby_engine::vms;

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sites))
        .routes(routes!(site_fence))
        .routes(routes!(site_unfence))
        .routes(routes!(vms))
        .routes(routes!(vm))
        .routes(routes!(vm_start))
        .routes(routes!(vm_shutdown))
        .routes(routes!(vm_stop))
        .merge(read_routes())
        .routes(routes!(group_run))
}

/// The routes a replica that does not lead answers from the database
/// (see [`crate::follower`]).
pub(crate) fn read_routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    std::sync::Arc<Reads>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(groups))
}

/// Sites with their hosts, datastores, active VMs and fence (operators'
/// only: a tenant's user gets an empty list).
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", params(ListParams),
    responses((status = 200, body = Vec<SiteView>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn sites(
    State(ctl): Ctl,
    State(cache): State<std::sync::Arc<SitesCache>>,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<axum::response::Response, ServerError> {
    use axum::response::IntoResponse;
    let page = Page::new(q.limit, q.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::<SiteView>::new()).into_response());
    }
    let vms = ctl.vms_by_site().await?;
    let records = ctl.repo.sites().await?;
    let fences: Vec<_> = records.iter().map(|s| ctl.fence_of(&s.name)).collect();
    let built = {
        let cached = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|b| {
                std::sync::Arc::ptr_eq(&b.vms, &vms) && b.sites == records && b.fences == fences
            })
            .map(|b| (b.views.clone(), b.json.clone()))
    };
    let (views, json) = match built {
        Some(b) => b,
        None => {
            let views = std::sync::Arc::new(site_views(&ctl.cfg(), &vms, records.clone(), |s| {
                ctl.fence_of(s)
            }));
            let json = axum::body::Bytes::from(
                serde_json::to_vec(&*views)
                    .map_err(|e| ServerError::Internal(format!("sites as JSON: {e}")))?,
            );
            *cache.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(SitesBuilt {
                vms,
                sites: records,
                fences,
                views: views.clone(),
                json: json.clone(),
            });
            (views, json)
        }
    };
    if page.offset == 0 && page.limit >= views.len() {
        let mut r = (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response();
        r.headers_mut().insert(
            super::common::TOTAL_COUNT,
            axum::http::HeaderValue::from(views.len() as u64),
        );
        return Ok(r);
    }
    Ok(page.of(views.to_vec()).into_response())
}

/// The sites as a replica that does not lead answers them: placements
/// and fences as the database has them (see `crate::follower`).
pub(crate) async fn sites_from_db(
    State(r): Rd,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<SiteView> {
    let page = Page::new(q.limit, q.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    let mut vms: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for v in r.repo.vms().await?.iter() {
        vms.entry(v.active_site.clone())
            .or_default()
            .push(v.name.clone());
    }
    let fences: std::collections::BTreeMap<String, standby_db::FenceRecord> = r
        .repo
        .fences()
        .await?
        .into_iter()
        .map(|f| (f.site.clone(), f))
        .collect();
    let records = r.repo.sites().await?;
    Ok(page.of(site_views(&r.cfg(), &vms, records, |s| {
        fences.get(s).cloned()
    })))
}

/// Each site's view: its hosts, datastores, active VMs and fence.
fn site_views(
    cfg: &standby_types::config::Config,
    vms: &std::collections::BTreeMap<String, Vec<String>>,
    records: Vec<standby_types::model::SiteRecord>,
    fence_of: impl Fn(&str) -> Option<standby_db::FenceRecord>,
) -> Vec<SiteView> {
    records
        .into_iter()
        .map(|s| {
            let fence = fence_of(&s.name);
            SiteView {
                hosts: cfg
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.site == s.name)
                    .map(|(n, _)| n.clone())
                    .collect(),
                datastores: cfg
                    .datastores_at(&s.name)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                vms: vms.get(&s.name).cloned().unwrap_or_default(),
                fenced: fence.is_some(),
                fenced_since: fence.as_ref().map(|f| f.since),
                fence_reason: fence.map(|f| f.reason),
                name: s.name,
                description: s.description,
            }
        })
        .collect()
}

/// Fence a site: it runs no VM until unfenced (admin).
#[utoipa::path(post, path = "/api/v1/sites/{name}/fence", tag = "sites",
    params(("name" = String, Path, description = "Site")),
    request_body(content = Option<FenceRequest>, description = "Optional reason"),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The fence", body = SiteFenced),
        (status = 404, body = ApiError)))]
async fn site_fence(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<SiteFenced> {
    operators_only(&who, "site", &name)?;
    let req: FenceRequest = if body.is_empty() {
        FenceRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad fence request: {e}")))?
    };
    if req.confirmed {
        ctl.confirm_fence(&name, &format!("confirmed by {}", who.name))?;
    }
    Ok(Json(ctl.fence_site(&name, &req.reason).await?))
}

/// Lift a site's fence (admin).
#[utoipa::path(post, path = "/api/v1/sites/{name}/unfence", tag = "sites",
    params(("name" = String, Path, description = "Site")),
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, description = "The lifted fence", body = SiteUnfenced),
        (status = 404, body = ApiError)))]
async fn site_unfence(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<SiteUnfenced> {
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
        .iter()
        .filter(|v| who.sees(ctl.cfg().tenant_of_vm(&v.name)))
        .filter(|v| q.site.as_ref().is_none_or(|s| &v.active_site == s))
        .filter(|v| {
            q.group
                .as_ref()
                .is_none_or(|g| ctl.cfg().groups_of(&v.name).contains(&g.as_str()))
        })
        .cloned()
        .collect();
    let listed = page.of(records);
    Ok(Listed {
        items: vms::views(&ctl, listed.items).await?,
        total: listed.total,
    })
}

/// One VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmView), (status = 404, body = ApiError)))]
async fn vm(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<VmView> {
    check_vm(&ctl.cfg(), &who, &name)?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Start a VM at its active host.
#[utoipa::path(post, path = "/api/v1/vms/{name}/start", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn vm_start(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<VmView> {
    check_vm(&ctl.cfg(), &who, &name)?;
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
    check_vm(&ctl.cfg(), &who, &name)?;
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
    check_vm(&ctl.cfg(), &who, &name)?;
    vms::stop(&ctl, &name).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

/// Protection groups with their schedule and last run.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", params(ListParams),
    responses((status = 200, body = Vec<GroupRecord>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn groups(
    State(ctl): Rd,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<GroupRecord> {
    let page = Page::new(q.limit, q.offset)?;
    let cfg = ctl.cfg();
    let all: Vec<GroupRecord> = ctl
        .repo
        .groups()
        .await?
        .into_iter()
        .filter(|g| who.sees(cfg.tenant_of_group(&g.name)))
        .map(|mut g| {
            g.managed = cfg.groups.get(&g.name).is_some_and(|c| c.managed);
            g
        })
        .collect();
    Ok(page.of(all))
}

/// Take a point of every member of a group now: a job of the `protect`
/// runbook, under the group's lock as on its schedule.
#[utoipa::path(post, path = "/api/v1/groups/{name}/run", tag = "groups",
    params(("name" = String, Path, description = "Protection group")),
    responses((status = 200, description = "The job (a `protect` runbook job)", body = JobRef),
        (status = 404, body = ApiError),
        (status = 409, description = "A run of the group holds its lock", body = ApiError)))]
async fn group_run(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<JobRef> {
    who.check(ctl.cfg().tenant_of_group(&name), "group", &name)?;
    Ok(Json(JobRef {
        job: protect_group(&ctl, &name).await?,
    }))
}
