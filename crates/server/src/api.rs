//! The HTTP/JSON API under `/api/v1`, used by the CLI (and later the
//! portal). Long operations answer with a job id to poll.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use standby_store::{GcOptions, PointId};
use standby_types::api::{
    DatastoreView, FenceRequest, GcRequest, JobRef, PruneRequest, RestoreRequest, ShutdownRequest,
    SiteView, SyncRequest, VmView,
};
use standby_types::model::{GroupRecord, Job, PointRecord};

use crate::controller::Controller;
use crate::error::ServerError;
use crate::jobs::spawn_job;
use crate::restore;
use crate::scheduler::start_group_run;
use crate::vms;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

pub fn router(ctl: Arc<Controller>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/sites/{name}/fence", post(site_fence))
        .route("/api/v1/sites/{name}/unfence", post(site_unfence))
        .route("/api/v1/vms", get(vms))
        .route("/api/v1/vms/{name}", get(vm))
        .route("/api/v1/vms/{name}/start", post(vm_start))
        .route("/api/v1/vms/{name}/shutdown", post(vm_shutdown))
        .route("/api/v1/vms/{name}/stop", post(vm_stop))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/groups/{name}/run", post(group_run))
        .route("/api/v1/points", get(points))
        .route("/api/v1/points/{id}", get(point))
        .route("/api/v1/restore", post(restore_point))
        .route("/api/v1/datastores", get(datastores))
        .route("/api/v1/datastores/{name}/verify", post(store_verify))
        .route("/api/v1/datastores/{name}/prune", post(store_prune))
        .route("/api/v1/datastores/{name}/gc", post(store_gc))
        .route("/api/v1/datastores/{name}/sync", post(store_sync))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .merge(crate::api_watch::routes())
        .merge(crate::frontdoor::routes())
        .merge(crate::runbooks::api::routes())
        .merge(crate::portal::routes())
        .layer(axum::middleware::from_fn(crate::auth::layer))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctl)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn sites(State(ctl): Ctl) -> ApiResult<Vec<SiteView>> {
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
    Ok(Json(out))
}

async fn site_fence(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<serde_json::Value> {
    let req: FenceRequest = if body.is_empty() {
        FenceRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad fence request: {e}")))?
    };
    Ok(Json(ctl.fence_site(&name, &req.reason).await?))
}

async fn site_unfence(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<serde_json::Value> {
    Ok(Json(ctl.unfence_site(&name).await?))
}

async fn vms(State(ctl): Ctl) -> ApiResult<Vec<VmView>> {
    let mut out = Vec::new();
    for v in ctl.repo.vms().await? {
        out.push(vms::view(&ctl, &v.name).await?);
    }
    Ok(Json(out))
}

async fn vm(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<VmView> {
    Ok(Json(vms::view(&ctl, &name).await?))
}

async fn vm_start(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<VmView> {
    vms::start(&ctl, &name).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

async fn vm_shutdown(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: Option<Json<ShutdownRequest>>,
) -> ApiResult<VmView> {
    let timeout = body
        .and_then(|b| b.timeout_secs)
        .map(std::time::Duration::from_secs);
    vms::shutdown(&ctl, &name, timeout).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

async fn vm_stop(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<VmView> {
    vms::stop(&ctl, &name).await?;
    Ok(Json(vms::view(&ctl, &name).await?))
}

async fn groups(State(ctl): Ctl) -> ApiResult<Vec<GroupRecord>> {
    Ok(Json(ctl.repo.groups().await?))
}

async fn group_run(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<JobRef> {
    Ok(Json(JobRef {
        job: start_group_run(&ctl, &name).await?,
    }))
}

#[derive(Deserialize)]
struct PointsQuery {
    vm: Option<String>,
}

async fn points(State(ctl): Ctl, Query(q): Query<PointsQuery>) -> ApiResult<Vec<PointRecord>> {
    if let Some(vm) = &q.vm {
        ctl.repo.vm(vm).await?;
    }
    Ok(Json(ctl.repo.points(q.vm.as_deref()).await?))
}

async fn point(State(ctl): Ctl, Path(id): Path<String>) -> ApiResult<PointRecord> {
    Ok(Json(ctl.repo.point(&id).await?))
}

async fn restore_point(State(ctl): Ctl, Json(req): Json<RestoreRequest>) -> ApiResult<JobRef> {
    restore::check(&ctl, &req).await?;
    let target = req.point.clone();
    let job = spawn_job(&ctl, "restore", &target, move |ctl, p| {
        restore::run(ctl, req, p)
    })
    .await?;
    Ok(Json(JobRef { job }))
}

async fn datastores(State(ctl): Ctl) -> ApiResult<Vec<DatastoreView>> {
    let mut out = Vec::new();
    for (name, d) in &ctl.cfg.datastores {
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
                let stats = s.stats()?;
                let points = s.list_points()?.len();
                Ok::<_, standby_store::StoreError>((stats, points))
            })
            .await
            .map_err(ServerError::from)
            .and_then(|r| r.map_err(ServerError::from)),
            Err(e) => Err(e),
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
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
struct VerifyRequest {
    /// Check this fraction of the chunks (0 < f <= 1), picked at random.
    #[serde(default)]
    sample: Option<f64>,
}

async fn store_verify(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<JobRef> {
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

async fn store_prune(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: Option<Json<PruneRequest>>,
) -> ApiResult<JobRef> {
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
            let report = crate::protect::prune_vm(&ctl, &ds, &vm, policy, dry_run).await?;
            kept.extend(report.kept.iter().map(|p| p.to_string()));
            removed.extend(report.removed.iter().map(|p| p.to_string()));
        }
        Ok(json!({"dry_run": dry_run, "kept": kept, "removed": removed}))
    })
    .await?;
    Ok(Json(JobRef { job }))
}

async fn store_gc(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: Option<Json<GcRequest>>,
) -> ApiResult<JobRef> {
    let store = ctl.store(&name)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let job = spawn_job(&ctl, "gc", &name, move |_, p| async move {
        let opts = GcOptions {
            grace: std::time::Duration::from_secs(req.grace_secs.unwrap_or(3600)),
            dry_run: req.dry_run,
            ..GcOptions::default()
        };
        let r = tokio::task::spawn_blocking(move || store.gc(opts, p.as_ref())).await??;
        Ok(json!({
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

async fn store_sync(
    State(ctl): Ctl,
    Path(name): Path<String>,
    Json(req): Json<SyncRequest>,
) -> ApiResult<JobRef> {
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
        Ok(json!({"to": to, "chunks_copied": chunks, "bytes_copied": bytes, "points": copied}))
    })
    .await?;
    Ok(Json(JobRef { job }))
}

#[derive(Deserialize)]
struct JobsQuery {
    limit: Option<u32>,
}

async fn jobs(State(ctl): Ctl, Query(q): Query<JobsQuery>) -> ApiResult<Vec<Job>> {
    Ok(Json(ctl.repo.jobs(q.limit.unwrap_or(50)).await?))
}

async fn job(State(ctl): Ctl, Path(id): Path<i64>) -> ApiResult<Job> {
    Ok(Json(ctl.repo.job(id).await?))
}
