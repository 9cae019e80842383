//! What a replica answers itself while another controller leads: the
//! reads that come from the shared database alone (recovery points, jobs
//! and their steps, protection groups, sites with their VMs and fences),
//! with the leader's own handlers ([`crate::state::Reads`]; the sites'
//! builds the same view from the database) over a database connection of
//! the replica's.
//! Nothing is kept in memory between requests: each answer is read from
//! PostgreSQL, so it is as current as the leader's last committed write,
//! and it goes on while the leader is lost or paused and no replica has
//! taken over yet. Such an answer carries [`ANSWERED_BY`].
//!
//! Everything else is the leader's ([`crate::replica`] forwards it):
//! writes, and reads of live state the leader keeps (a VM's state, asked
//! of its agent, which answers the leader's epoch only; alerts; the front
//! door). An embedded SQLite controller has no replicas and no follower.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use standby_db::SqlRepo;
use standby_types::config::{Config, Database};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
use crate::error::ServerError;
use crate::state::Reads;

/// Set on an answer a replica gave from the database: its name.
pub const ANSWERED_BY: &str = "x-standby-answered-by";

/// Marks the answer of a request the follower does not serve.
#[derive(Clone, Copy)]
pub(crate) struct NotServed;

/// The follower's router for `cfg`'s replica, or None for SQLite.
pub async fn router(cfg: &Config) -> Result<Option<Router>, ServerError> {
    let Database::Postgres(url) = cfg.controller.database() else {
        return Ok(None);
    };
    let repo = Arc::new(SqlRepo::connect(&url).await?);
    let reads = Arc::new(Reads {
        live: Arc::new(standby_engine::controller::LiveConfig::new(cfg.clone())),
        repo: repo.clone(),
        runs: repo.clone(),
    });
    let auth = Arc::new(Auth::follower(cfg, repo));
    let table = Arc::new(crate::openapi::role_table());
    let (routes, _) = OpenApiRouter::<Arc<Reads>>::new()
        .merge(crate::api::points::read_routes())
        .merge(crate::api::jobs::read_routes())
        .merge(crate::api::inventory::read_routes())
        .merge(crate::runbooks::read_routes())
        .split_for_parts();
    let name = HeaderValue::from_str(&cfg.controller.name)
        .map_err(|e| ServerError::BadRequest(format!("controller name as a header: {e}")))?;
    Ok(Some(
        routes
            .route(
                "/api/v1/sites",
                axum::routing::get(crate::api::inventory::sites_from_db),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                table,
                crate::auth::layer,
            ))
            .route_layer(axum::middleware::map_response(move |mut r: Response| {
                let name = name.clone();
                async move {
                    r.headers_mut().insert(ANSWERED_BY, name);
                    r
                }
            }))
            .fallback(|| async {
                let mut r = StatusCode::NOT_FOUND.into_response();
                r.extensions_mut().insert(NotServed);
                r
            })
            .layer(axum::Extension(auth))
            .with_state(reads),
    ))
}
