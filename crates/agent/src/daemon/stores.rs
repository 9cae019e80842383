//! The datastores an agent serves, under `/agent/v1/store/*` (called by
//! the controller with the agent's token): prepare, list points, stats,
//! prune, verify, gc, copy a point to another store, and templates
//! (list, make from a point held here, delete); and the
//! receiving side of an agent-to-agent copy under `/agent/v1/receive/*`
//! (called by the sending agent with a grant for one datastore, see
//! [`super::guard`]).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use standby_store::transfer::{Batch, Begin, Received};
use standby_store::{GcOptions, GcReport, PointId, PruneReport, StoreStats, VerifyReport};

use super::guard::Granted;
use super::host::{Answer, Host, HostAgent};
use crate::access::{
    CopyCall, CopyDone, GcCall, GrantCall, GrantDone, HasPointCall, LatestCall, PointsDone,
    PruneCall, StoreCall, VerifyCall, copy_open, limit_of,
};
use crate::error::AgentError;
use crate::progress::Quiet;
use crate::transfer::{
    ManifestDone, Missing, PeerReceiver, ReceiveBegin, ReceiveManifest, ReceiveMissing,
};

/// The controller's store calls (behind the agent's token, see
/// [`super::exec_routes`]).
pub(super) fn routes() -> Router<Arc<HostAgent>> {
    Router::new()
        .route("/agent/v1/store/prepare", post(prepare))
        .route("/agent/v1/store/grant", post(grant))
        .route("/agent/v1/store/points", post(points))
        .route("/agent/v1/store/has-point", post(has_point))
        .route("/agent/v1/store/latest", post(latest))
        .route("/agent/v1/store/stats", post(stats))
        .route("/agent/v1/store/prune", post(prune))
        .route("/agent/v1/store/verify", post(verify))
        .route("/agent/v1/store/gc", post(gc))
        .route("/agent/v1/store/copy", post(copy))
        .route("/agent/v1/store/templates", post(templates))
        .route("/agent/v1/store/template-create", post(template_create))
        .route("/agent/v1/store/template-delete", post(template_delete))
}

async fn templates(
    State(h): Host,
    Json(c): Json<StoreCall>,
) -> Answer<crate::templates::TemplatesDone> {
    let s = open(&h, &c).await?;
    Ok(Json(crate::templates::scan_open(&s).await?))
}

async fn template_create(
    State(h): Host,
    Json(c): Json<crate::templates::TemplateCall>,
) -> Answer<standby_store::Template> {
    let point = point_id(c.point.as_deref().unwrap_or_default())?;
    let s = open(&h, &c.store).await?;
    Ok(Json(
        crate::templates::create_open(&s, &c.name, &point).await?,
    ))
}

async fn template_delete(
    State(h): Host,
    Json(c): Json<crate::templates::TemplateCall>,
) -> Answer<bool> {
    let s = open(&h, &c.store).await?;
    Ok(Json(crate::templates::delete_open(&s, &c.name).await?))
}

/// Open (creating it if this agent serves it and nothing is there yet).
async fn open(h: &Arc<HostAgent>, c: &StoreCall) -> Result<standby_store::Datastore, AgentError> {
    let (h, name, cfg) = (h.clone(), c.datastore.clone(), c.config.clone());
    tokio::task::spawn_blocking(move || h.store(&name, &cfg)).await?
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, standby_store::StoreError> + Send + 'static,
) -> Result<T, AgentError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

fn point_id(p: &str) -> Result<PointId, AgentError> {
    p.parse()
        .map_err(|e| AgentError::BadRequest(format!("bad point id '{p}': {e}")))
}

async fn prepare(State(h): Host, Json(c): Json<StoreCall>) -> Answer<serde_json::Value> {
    open(&h, &c).await?;
    Ok(Json(serde_json::json!({"datastore": c.datastore})))
}

/// Let another agent copy into a datastore this agent serves (opened
/// first, so the copy finds it ready).
async fn grant(State(h): Host, Json(c): Json<GrantCall>) -> Answer<GrantDone> {
    open(&h, &c.store).await?;
    let grant = h.grants.issue(&c.store.datastore, &c.from);
    tracing::info!(datastore = %c.store.datastore, peer = %c.from, "copy granted");
    Ok(Json(GrantDone { grant }))
}

async fn points(State(h): Host, Json(c): Json<StoreCall>) -> Answer<PointsDone> {
    let s = open(&h, &c).await?;
    let (points, bad) = blocking(move || s.scan_points()).await?;
    for e in &bad {
        tracing::warn!(datastore = %c.datastore, "point left out: {e}");
    }
    Ok(Json(PointsDone {
        points,
        unreadable: bad.iter().map(|e| e.to_string()).collect(),
    }))
}

async fn has_point(State(h): Host, Json(c): Json<HasPointCall>) -> Answer<bool> {
    let s = open(&h, &c.store).await?;
    let p = point_id(&c.point)?;
    Ok(Json(blocking(move || s.has_point(&p)).await?))
}

async fn latest(
    State(h): Host,
    Json(c): Json<LatestCall>,
) -> Answer<Option<standby_store::Manifest>> {
    let s = open(&h, &c.store).await?;
    Ok(Json(blocking(move || s.latest_point(&c.vm)).await?))
}

async fn stats(State(h): Host, Json(c): Json<StoreCall>) -> Answer<StoreStats> {
    let s = open(&h, &c).await?;
    Ok(Json(blocking(move || s.stats()).await?))
}

async fn prune(State(h): Host, Json(c): Json<PruneCall>) -> Answer<PruneReport> {
    let s = open(&h, &c.store).await?;
    let r = blocking(move || s.prune(&c.retention, Some(&c.vm), c.dry_run)).await?;
    Ok(Json(r))
}

async fn verify(State(h): Host, Json(c): Json<VerifyCall>) -> Answer<VerifyReport> {
    let s = open(&h, &c.store).await?;
    let r = blocking(move || match (c.slice, c.sample) {
        (Some((part, parts)), _) => s.verify_slice(part, parts, &Quiet),
        (None, Some(f)) => s.verify_sample(f, c.seed, &Quiet),
        (None, None) => s.verify(&Quiet),
    })
    .await?;
    Ok(Json(r))
}

async fn gc(State(h): Host, Json(c): Json<GcCall>) -> Answer<GcReport> {
    let s = open(&h, &c.store).await?;
    let opts = GcOptions {
        grace: std::time::Duration::from_secs(c.grace_secs),
        dry_run: c.dry_run,
        ..GcOptions::default()
    };
    Ok(Json(blocking(move || s.gc(opts, &Quiet)).await?))
}

/// Copy a point from a store this agent opens: to another agent through
/// `peer`, or into a store it opens as well.
async fn copy(State(h): Host, Json(c): Json<CopyCall>) -> Answer<CopyDone> {
    let src = open(&h, &c.from).await?;
    let point = point_id(&c.point)?;
    let limit = limit_of(&c.from.config, &c.to.config, c.schedule.clone());
    let done = match c.peer {
        Some(peer) => {
            let rx = PeerReceiver::new(
                tokio::runtime::Handle::current(),
                peer,
                &c.to.datastore,
                limit,
                &h.peer_creds,
            )?;
            tokio::task::spawn_blocking(move || {
                let stats = src.send_point(&point, &rx, &Quiet)?;
                Ok::<_, standby_store::StoreError>(CopyDone {
                    stats,
                    sent: rx.sent(),
                })
            })
            .await??
        }
        None => {
            let dst = open(&h, &c.to).await?;
            let stats = blocking(move || copy_open(&src, &dst, &point, limit, &Quiet)).await?;
            CopyDone {
                stats,
                sent: Default::default(),
            }
        }
    };
    tracing::info!(point = %c.point, from = %c.from.datastore, to = %c.to.datastore, chunks = done.stats.chunks_copied, bytes = done.stats.bytes_copied, "point copied");
    Ok(Json(done))
}

/// The receiving side: each call with a grant for the datastore it names
/// ([`super::guard`]), each POST with a fresh counter.
pub(super) fn receive_routes(host: Arc<HostAgent>) -> Router {
    Router::new()
        .route("/agent/v1/receive/session", get(super::guard::session))
        .route("/agent/v1/receive/begin", post(receive_begin))
        .route("/agent/v1/receive/missing", post(receive_missing))
        .route("/agent/v1/receive/batch", post(receive_batch))
        .route("/agent/v1/receive/manifest", post(receive_manifest))
        // A batch is about one pack.
        .layer(axum::extract::DefaultBodyLimit::max(
            standby_store::transfer::MAX_BATCH_BYTES + 4096,
        ))
        .layer(axum::middleware::from_fn_with_state(
            host.clone(),
            super::guard::fresh_calls,
        ))
        .layer(axum::middleware::from_fn_with_state(
            host.clone(),
            super::guard::granted_peers,
        ))
        .with_state(host)
}

/// The datastore a grant lets the caller write to, if it is the one named.
fn granted_store(
    h: &HostAgent,
    g: &Granted,
    datastore: &str,
) -> Result<standby_store::Datastore, AgentError> {
    if g.datastore != datastore {
        tracing::warn!(peer = %g.from, granted = %g.datastore, named = %datastore, "copy call refused: another datastore");
        return Err(AgentError::Unauthorized(format!(
            "the grant is for datastore {}, not {datastore}",
            g.datastore
        )));
    }
    h.opened(datastore)
}

type Recv = State<Arc<HostAgent>>;
type Grant = axum::Extension<Granted>;

async fn receive_begin(
    State(h): Recv,
    axum::Extension(g): Grant,
    Json(c): Json<ReceiveBegin>,
) -> Answer<Begin> {
    let s = granted_store(&h, &g, &c.datastore)?;
    let p = point_id(&c.point)?;
    Ok(Json(blocking(move || s.receive_begin(&p)).await?))
}

async fn receive_missing(
    State(h): Recv,
    axum::Extension(g): Grant,
    Json(c): Json<ReceiveMissing>,
) -> Answer<Missing> {
    let s = granted_store(&h, &g, &c.datastore)?;
    Ok(Json(Missing {
        missing: s.receive_missing(&c.ids),
    }))
}

#[derive(Deserialize)]
struct BatchQuery {
    datastore: String,
}

async fn receive_batch(
    State(h): Recv,
    axum::Extension(g): Grant,
    Query(q): Query<BatchQuery>,
    body: axum::body::Bytes,
) -> Answer<Received> {
    let s = granted_store(&h, &g, &q.datastore)?;
    let batch = Batch::decode(&body)
        .map_err(|e| AgentError::BadRequest(format!("batch for datastore {}: {e}", q.datastore)))?;
    Ok(Json(blocking(move || s.receive_batch(&batch)).await?))
}

async fn receive_manifest(
    State(h): Recv,
    axum::Extension(g): Grant,
    Json(c): Json<ReceiveManifest>,
) -> Answer<ManifestDone> {
    let s = granted_store(&h, &g, &c.datastore)?;
    let m = c.manifest;
    let p = m.id.clone();
    let id = p.to_string();
    let already_present = blocking(move || s.receive_manifest(&p, &m)).await?;
    tracing::info!(point = %id, datastore = %c.datastore, "copied point received");
    Ok(Json(ManifestDone { already_present }))
}
