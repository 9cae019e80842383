//! Templates (a VM's point kept under a name in the datastores) and VMs
//! made from them: list, make, read, delete a template; make a VM from
//! one at any site's host. The work is `standby_engine::templates`.

use axum::Json;
use axum::extract::{Path, State};
use standby_engine::groups::Asker;
use standby_engine::templates;
use standby_types::api::{
    ApiError, TemplateCreated, TemplateInfo, TemplateRequest, VmCreateRequest, VmCreated, VmDeleted,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{ApiQuery, ApiResult, Ctl, ListParams, ListResult, Page};
use crate::auth::Principal;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(template_list, template_create))
        .routes(routes!(template_get, template_delete))
        .routes(routes!(vm_create))
        .routes(routes!(vm_delete))
}

fn asker(who: &Principal) -> Asker<'_> {
    Asker {
        name: &who.name,
        tenant: who.tenant.as_deref(),
    }
}

/// Templates, by name, with the datastores holding each (a tenant's
/// user: those made from the tenant's VMs).
#[utoipa::path(get, path = "/api/v1/templates", tag = "templates", params(ListParams),
    responses((status = 200, body = Vec<TemplateInfo>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn template_list(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<TemplateInfo> {
    let page = Page::new(q.limit, q.offset)?;
    Ok(page.of(templates::list(&ctl, &asker(&who)).await))
}

/// Make a template from a VM's point (its newest when `from` names only
/// the VM): kept in every datastore holding the point and every datastore
/// of the VM's protection groups, sharing the point's chunks.
#[utoipa::path(post, path = "/api/v1/templates", tag = "templates",
    request_body = TemplateRequest,
    responses((status = 200, body = TemplateCreated),
        (status = 400, description = "A bad name or point id", body = ApiError),
        (status = 404, description = "No such VM or point", body = ApiError),
        (status = 409, description = "A template of that name exists", body = ApiError)))]
async fn template_create(
    State(ctl): Ctl,
    who: Principal,
    Json(req): Json<TemplateRequest>,
) -> ApiResult<TemplateCreated> {
    Ok(Json(
        templates::create(&ctl, &req.name, &req.from, &asker(&who)).await?,
    ))
}

/// One template.
#[utoipa::path(get, path = "/api/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template")),
    responses((status = 200, body = TemplateInfo), (status = 404, body = ApiError)))]
async fn template_get(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<TemplateInfo> {
    Ok(Json(templates::get(&ctl, &name, &asker(&who)).await?))
}

/// Delete a template from every datastore holding it (the datastores it
/// was deleted from); its chunks go at their next gc unless points name
/// them. VMs made from it keep their disks.
#[utoipa::path(delete, path = "/api/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template")),
    responses((status = 200, body = Vec<String>), (status = 404, body = ApiError)))]
async fn template_delete(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Vec<String>> {
    Ok(Json(templates::delete(&ctl, &name, &asker(&who)).await?))
}

/// Make a VM from a template at a host of any site: its disks written
/// from a datastore the host reads (sparse), kept as a VM made through
/// the API (in the database, beside the file's), started unless asked
/// not to.
#[utoipa::path(post, path = "/api/v1/vms", tag = "vms",
    request_body = VmCreateRequest,
    responses((status = 200, body = VmCreated),
        (status = 400, description = "A bad name or forward", body = ApiError),
        (status = 404, description = "No such template or host", body = ApiError),
        (status = 409, description = "The VM exists, or no datastore the host reads holds the template", body = ApiError)))]
async fn vm_create(
    State(ctl): Ctl,
    who: Principal,
    Json(req): Json<VmCreateRequest>,
) -> ApiResult<VmCreated> {
    Ok(Json(templates::deploy(&ctl, &req, &asker(&who)).await?))
}

/// Delete a VM made from a template (stopped, in no group); its disks
/// stay on its host. A VM of the configuration file is refused (409).
#[utoipa::path(delete, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmDeleted),
        (status = 404, description = "No such VM", body = ApiError),
        (status = 409, description = "A VM of the file, a running one, or one still named by a group, service or plan", body = ApiError)))]
async fn vm_delete(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<VmDeleted> {
    Ok(Json(templates::delete_vm(&ctl, &name, &asker(&who)).await?))
}
