//! Datastores: listed, verified, pruned, garbage-collected and synced.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::json;
use standby_store::{GcOptions, PointId};
use standby_types::api::{ApiError, DatastoreView, GcRequest, JobRef, PruneRequest, SyncRequest};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::{
    ApiQuery, ApiResult, Ctl, ListParams, ListResult, Listed, Page, operators_only,
};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;
use standby_engine::jobs::spawn_job;

/// The routes of this module, each documented.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(datastores))
        .routes(routes!(store_verify))
        .routes(routes!(store_prune))
        .routes(routes!(store_gc))
        .routes(routes!(store_sync))
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
    let live = ctl.cfg();
    let names: Vec<&String> = live.datastores.keys().collect();
    let listed = page.of(names);
    let mut out = Vec::new();
    for name in listed.items {
        let d = &ctl.cfg().datastores[name];
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
        // Counted from the manifest names: no manifest is read.
        let info = match ctl.store_handle(name) {
            Ok(h) => h
                .stats()
                .await
                .map(|stats| {
                    let points = stats.points;
                    (stats, points)
                })
                .map_err(|e| standby_engine::EngineError::from(e).into()),
            Err(e) => Err(ServerError::from(e)),
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
    ctl.store_handle(&name)?;
    let ds = name.clone();
    let job = spawn_job(&ctl, "verify", &name, move |ctl, p| async move {
        // What it finds is recorded: damaged copies in the catalog.
        let report =
            standby_engine::integrity::verify(&ctl, &ds, req.sample, rand::random(), p).await?;
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
    ctl.store_handle(&name)?;
    let dry_run = body.map(|b| b.dry_run).unwrap_or(false);
    // Each VM is pruned by the retention of the groups that write here.
    let policies: Vec<(String, standby_types::Retention)> = ctl
        .cfg()
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
    let store = ctl.store_handle(&name)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let job = spawn_job(&ctl, "gc", &name, move |_, p| async move {
        let opts = GcOptions {
            grace: std::time::Duration::from_secs(req.grace_secs.unwrap_or(3600)),
            dry_run: req.dry_run,
            ..GcOptions::default()
        };
        let r = store
            .gc(opts, p)
            .await
            .map_err(standby_engine::EngineError::from)?;
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
    let src = ctl.store_handle(&name)?;
    let dst = ctl.store_handle(&req.to)?;
    let to = req.to.clone();
    let points: Vec<PointId> = match &req.point {
        Some(p) => vec![
            p.parse()
                .map_err(|e| ServerError::BadRequest(format!("bad point id '{p}': {e}")))?,
        ],
        None => src
            .points()
            .await
            .map_err(standby_engine::EngineError::from)?
            .into_iter()
            .map(|m| m.id)
            .collect(),
    };
    let job = spawn_job(&ctl, "sync", &format!("{name} -> {to}"), move |ctl, p| async move {
        let (mut chunks, mut bytes, mut copied) = (0u64, 0u64, Vec::new());
        for id in points {
            p.stage(format!("syncing {id} to {to}"), 0);
            let schedule = ctl.cfg().bandwidth_of(&src.config().site);
            let st = standby_agent::copy_point(&src, &dst, &id, schedule, p.clone())
                .await
                .map_err(standby_engine::EngineError::from)?
                .stats;
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
