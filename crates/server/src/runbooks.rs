//! Runbook routes under `/api/v1`.
//!
//! Runbooks are the operators'; a tenant's user sees and runs only the
//! [`TENANT_RUNBOOKS`], each for a VM of theirs (its `vm` parameter).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use standby_types::api::ApiError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::common::{Rd, check_job};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::{AppState, Reads};
use crate::tenancy::TENANT_RUNBOOKS;
use standby_engine::Controller;
use standby_engine::runbooks::{StartRequest, start, triggers};

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(schema))
        .routes(routes!(actions))
        .routes(routes!(show))
        .routes(routes!(run))
        .routes(routes!(webhook))
        .merge(read_routes())
}

/// The routes a replica that does not lead answers from the database
/// (see [`crate::follower`]).
pub(crate) fn read_routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    std::sync::Arc<Reads>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new().routes(routes!(steps))
}

/// 404 for a runbook the principal may not see.
fn check_runbook(who: &Principal, name: &str) -> Result<(), ServerError> {
    if who.tenant.is_some() && !TENANT_RUNBOOKS.contains(&name) {
        return Err(ServerError::not_found("runbook", name));
    }
    Ok(())
}

/// Runbooks with their triggers, load errors and held locks (a tenant's
/// user: the runbooks they may run, no errors, no locks).
#[utoipa::path(get, path = "/api/v1/runbooks", operation_id = "runbooks", tag = "runbooks",
    responses((status = 200, description = "`{runbooks: [{name, description, file, trigger, steps}], errors, locks}`",
        body = Object)))]
async fn list(State(ctl): Ctl, who: Principal) -> ApiResult<Value> {
    let runbooks: Vec<Value> = ctl
        .runbooks
        .all()
        .filter(|l| check_runbook(&who, &l.runbook.name).is_ok())
        .map(|l| {
            json!({
                "name": l.runbook.name,
                "description": l.runbook.description,
                "file": l.file,
                "trigger": l.runbook.trigger,
                "steps": l.runbook.steps.len(),
            })
        })
        .collect();
    if who.tenant.is_some() {
        return Ok(Json(
            json!({ "runbooks": runbooks, "errors": [], "locks": [] }),
        ));
    }
    Ok(Json(json!({
        "runbooks": runbooks,
        "errors": ctl.runbooks.errors(),
        "locks": ctl.runbooks.repo().locks().await?,
    })))
}

/// The JSON Schema of the runbook format.
#[utoipa::path(get, path = "/api/v1/runbooks/schema", operation_id = "runbook_schema", tag = "runbooks",
    responses((status = 200, description = "A JSON Schema", body = Object)))]
async fn schema(_who: Principal) -> Json<Value> {
    Json(standby_runbook::schema())
}

/// The catalog of actions a runbook step may use.
#[utoipa::path(get, path = "/api/v1/runbooks/actions", operation_id = "runbook_actions", tag = "runbooks",
    responses((status = 200, description = "The action catalog", body = Vec<Object>)))]
async fn actions(_who: Principal) -> Json<Value> {
    Json(serde_json::to_value(standby_runbook::actions()).unwrap_or_default())
}

/// One runbook: its file, parsed form and source.
#[utoipa::path(get, path = "/api/v1/runbooks/{name}", operation_id = "runbook", tag = "runbooks",
    params(("name" = String, Path, description = "Runbook")),
    responses((status = 200, description = "`{file, runbook, source}`", body = Object),
        (status = 404, body = ApiError)))]
async fn show(State(ctl): Ctl, who: Principal, Path(name): Path<String>) -> ApiResult<Value> {
    check_runbook(&who, &name)?;
    let l = ctl.runbooks.get(&name)?;
    Ok(Json(json!({
        "file": l.file,
        "runbook": l.runbook,
        "source": l.source,
    })))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
struct RunRequest {
    /// The runbook's parameters.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Map<String, Value>,
    /// Only plan: answer the steps it would run.
    #[serde(default)]
    dry_run: bool,
}

/// Run a runbook by hand (or plan it: `dry_run`). A tenant's user runs
/// `drill` and `move-vm` only, with `vm` naming a VM of theirs.
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/run", operation_id = "runbook_run", tag = "runbooks",
    params(("name" = String, Path, description = "Runbook")),
    request_body(content = Option<RunRequest>),
    responses((status = 200, description = "`{job}`, or with dry_run `{plan, text}`", body = Object),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "Its lock is held", body = ApiError)))]
async fn run(
    State(ctl): Ctl,
    who: Principal,
    Path(name): Path<String>,
    body: Option<Json<RunRequest>>,
) -> ApiResult<Value> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    check_runbook(&who, &name)?;
    if who.tenant.is_some() {
        let vm = req
            .params
            .get("vm")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "a tenant's user runs {name} for a VM of theirs: give params.vm"
                ))
            })?;
        who.check(ctl.cfg().tenant_of_vm(vm), "vm", vm)?;
    }
    let l = ctl.runbooks.get(&name)?;
    if who.tenant.is_some() {
        check_params(&ctl.cfg(), &who, &l.runbook, &req.params)?;
    }
    if req.dry_run {
        let plan = standby_runbook::plan(&l.runbook, &req.params, &json!({"kind": "manual"}))
            .map_err(ServerError::BadRequest)?;
        return Ok(Json(json!({ "plan": plan, "text": plan.describe() })));
    }
    if !l.runbook.trigger.manual {
        return Err(ServerError::BadRequest(format!(
            "runbook {name} cannot be run by hand (trigger.manual is false)"
        )));
    }
    let job = start(
        &ctl,
        &name,
        StartRequest {
            params: req.params,
            trigger: json!({ "kind": "manual" }),
        },
    )
    .await?;
    Ok(Json(json!({ "job": job })))
}

/// A tenant's user names only their own objects: every parameter that
/// names a VM, a service or a group must name one of theirs, and a site
/// one that exists (sites are shared), before the job starts.
fn check_params(
    cfg: &standby_types::config::Config,
    who: &Principal,
    rb: &standby_runbook::Runbook,
    params: &Map<String, Value>,
) -> Result<(), ServerError> {
    use standby_runbook::Resource;
    for (name, value) in params {
        let kind = match rb.params.get(name) {
            Some(p) => p.resource_of(name),
            None => standby_runbook::format::Param::default().resource_of(name),
        };
        let (Some(kind), Some(v)) = (kind, value.as_str()) else {
            continue;
        };
        match kind {
            Resource::Vm => who.check(cfg.tenant_of_vm(v), "vm", v)?,
            Resource::Service => who.check(cfg.tenant_of_service(v), "service", v)?,
            Resource::Group => who.check(cfg.tenant_of_group(v), "group", v)?,
            Resource::Site if !cfg.sites.contains_key(v) => {
                return Err(ServerError::not_found("site", v));
            }
            Resource::Site => {}
        }
    }
    Ok(())
}

/// Start a runbook from a webhook: signed with the runbook's secret
/// (HMAC-SHA256 of timestamp, nonce and body), no token; a stale
/// timestamp or a nonce seen already is refused (400).
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/webhook", operation_id = "runbook_webhook", tag = "runbooks",
    params(("name" = String, Path, description = "Runbook")),
    request_body(content = Object, description = "Any JSON; the trigger's payload"),
    extensions(("x-standby-auth" = json!("signature"))),
    responses((status = 200, description = "`{job}`", body = Object),
        (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn webhook(
    State(ctl): Ctl,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Value> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let signed = standby_notify::Signed {
        timestamp: h(standby_notify::TIMESTAMP_HEADER),
        nonce: h(standby_notify::NONCE_HEADER),
        signature: h(standby_notify::SIGNATURE_HEADER),
    };
    let job = triggers::on_webhook(&ctl, &name, signed, &body).await?;
    Ok(Json(json!({ "job": job })))
}

/// A runbook job with its run and the state of each step.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/steps", operation_id = "job_steps", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "`{job, runbook, params, trigger, lock, incident, steps}`", body = Object),
        (status = 404, body = ApiError)))]
async fn steps(State(r): Rd, who: Principal, Path(id): Path<i64>) -> ApiResult<Value> {
    let job = r.repo.job(id).await?;
    check_job(&r, &who, &job).await?;
    let run = r.runs.run(id).await?;
    let steps = r.runs.steps(id).await?;
    Ok(Json(json!({
        "job": job,
        "runbook": run.run.runbook,
        "params": run.run.params,
        "trigger": run.run.trigger,
        "lock": run.run.lock_key,
        "incident": run.run.incident,
        "steps": steps,
    })))
}
