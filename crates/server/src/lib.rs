//! standby's HTTP layer: the API under `/api/v1`, authentication, the
//! OpenAPI document, the web portal, metrics and event streams, in front
//! of the engine (`standby_engine`).
//!
//! # Layout
//! - [`api`]: the HTTP/JSON API under `/api/v1`: `api/mod.rs` assembles
//!   the routers; handlers by concern in [`api::meta`], [`api::inventory`]
//!   (sites, VMs, groups), [`api::points`], [`api::stores`] and
//!   [`api::jobs`]; what they share (query, paging, tenant scoping) in the
//!   leaf [`api::common`]. [`api_watch`], [`services`] and [`runbooks`]:
//!   its watch, front-door and runbook routes; [`alertmanager`]:
//!   Alertmanager's webhook receiver.
//! - [`openapi`]: the OpenAPI document, built from the same routes
//!   ([`openapi::routes`]), and the role table read from it
//!   ([`openapi::role_table`]); [`router`] and [`app`] hand that table to
//!   the authentication layer.
//! - [`auth`]: users, API tokens, portal sessions, agent secrets, the
//!   layer that authenticates every request by its [`auth::RoleTable`],
//!   and HTTPS.
//! - [`portal`]: the web portal (server-rendered pages, live over SSE):
//!   `portal/pages/` has a file per page (dashboard, vms, vm, alerts,
//!   incidents, jobs, drills, report, login) over the shared leaf
//!   `portal/pages/common.rs`; `portal/model.rs` computes what they show.
//! - [`metrics`]: `/metrics` in the OpenMetrics format.
//! - [`report`]: the monthly DR report per tenant (RPO compliance, drills,
//!   incidents) as JSON and CSV routes; the portal's `/reports` shows it.
//! - [`stream`]: a job followed as server-sent events.
//! - [`tenancy`]: who owns what, one set of rules for the API and the
//!   portal.
//! - [`state`]: what handlers reach: the engine and the authentication
//!   state (it imports `auth`; `auth` does not import it).
//! - [`follower`]: the reads a replica answers from the database while
//!   another controller leads; [`replica`]: forwarding the rest to it.
//! - [`error`]: [`ServerError`], the engine's errors and the API's own,
//!   as HTTP statuses and stable codes.
//!
//! # Invariants
//! - Every route is behind [`auth::layer`] and documented in the OpenAPI
//!   document, which also gives the role it needs.
//! - Imports go one way: `openapi` → `api` → sub-routers → `api::common`,
//!   `state` → `auth`; no import cycles (`scripts/check-layout`).
//! - Nothing here decides what happens to a VM: handlers check access,
//!   parse, call the engine and render.

pub mod agent_api;
pub mod alertmanager;
pub mod api;
mod api_watch;
pub mod auth;
pub mod error;
pub mod follower;
pub mod metrics;
pub mod nfv;
pub mod openapi;
pub mod portal;
pub mod replica;
pub mod report;
pub mod runbooks;
pub mod services;
pub mod state;
pub mod stream;
pub mod tenancy;

use std::net::SocketAddr;
use std::sync::Arc;

pub use error::ServerError;
pub use standby_engine::Controller;
use standby_types::config::Config;
use tokio::task::JoinHandle;

pub use state::AppState;

/// A controller serving its API.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub ctl: Arc<Controller>,
    /// Whether the API is served over HTTPS.
    pub tls: bool,
    /// Where `/metrics` is served without authentication, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where agents send heartbeats and results over mutual TLS, if
    /// configured.
    pub agent_addr: Option<SocketAddr>,
    serve: JoinHandle<std::io::Result<()>>,
}

/// The API as served: every documented route ([`openapi::routes`]) and
/// the portal, authentication with `table` (the roles the document
/// declares, [`openapi::role_table`]), tracing.
pub fn router(state: AppState, table: Arc<auth::RoleTable>) -> axum::Router {
    let (api, _) = openapi::routes().split_for_parts();
    api.merge(portal::routes())
        .layer(axum::middleware::from_fn_with_state(table, auth::layer))
        .layer(axum::middleware::from_fn(nfv::problem_details))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Every route of the controller, each behind [`auth::layer`], which
/// receives its role table, read from the OpenAPI document, here.
pub fn app(state: AppState) -> axum::Router {
    let table = Arc::new(openapi::role_table());
    router(state.clone(), table.clone())
        .merge(auth::api::session_routes(state.auth.clone(), table))
        .layer(axum::Extension(state.auth.clone()))
        .layer(axum::Extension(state.engine))
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Internal(format!("unable to listen on {addr}: {e}")))
}

/// Open the controller, start the scheduler and serve the API on the
/// configured address (port 0 picks a free one; see `addr`).
pub async fn start(cfg: Config) -> Result<RunningServer, ServerError> {
    let listen = cfg.controller.listen.clone();
    // Bad TLS files fail the start before anything else happens.
    let tls = match (&cfg.controller.tls_cert, &cfg.controller.tls_key) {
        (Some(c), Some(k)) => Some(auth::tls::server_config(c, k)?),
        _ => None,
    };
    // The API listens from the start: while another replica leads, this
    // one forwards to it (`replica`), and serves its own API once it leads.
    let listener = bind(&listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("unable to read listen address: {e}")))?;
    let url = match &cfg.controller.url {
        Some(_) => cfg.controller.url(),
        None => format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
    };
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(None);
    let front = Arc::new(replica::Front::new(&cfg, seen_rx));
    let stop = tokio_util::sync::CancellationToken::new();
    let is_tls = tls.is_some();
    let serve = {
        let app = front.router();
        let stop = stop.clone();
        match tls {
            Some(cfg) => {
                let l = auth::tls::TlsListener::new(listener, cfg, stop.clone()).map_err(|e| {
                    ServerError::Internal(format!("unable to read listen address: {e}"))
                })?;
                tokio::spawn(async move {
                    axum::serve(
                        l,
                        app.into_make_service_with_connect_info::<standby_tls::TlsPeer>(),
                    )
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            }),
        }
    };
    // Until it leads, a replica answers the database's reads itself (the
    // listener serves meanwhile: health, and 503 until a leader is known).
    match follower::router(&cfg).await {
        Ok(Some(reads)) => front.follow(reads),
        Ok(None) => {}
        Err(e) => {
            stop.cancel();
            let _ = serve.await;
            return Err(e);
        }
    }
    let ctl = match Controller::open_replica(cfg, &url, seen_tx).await {
        Ok(ctl) => ctl,
        Err(e) => {
            stop.cancel();
            let _ = serve.await;
            return Err(e.into());
        }
    };
    {
        let (cancel, stop) = (ctl.cancel.clone(), stop.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.cancel();
        });
    }
    let metrics_addr = match ctl.cfg().controller.metrics_listen.clone() {
        Some(m) => {
            let l = bind(&m).await?;
            let addr = l.local_addr().ok();
            let app = axum::Router::new()
                .route("/metrics", axum::routing::get(metrics_open))
                .with_state(ctl.clone());
            let cancel = ctl.cancel.clone();
            ctl.tasks.spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move { cancel.cancelled().await })
                    .await;
            });
            tracing::info!(addr = ?addr, "serving /metrics without authentication");
            addr
        }
        None => None,
    };
    let agent_addr = match ctl.cfg().controller.agent_listen.clone() {
        Some(a) => Some(agent_api::serve(ctl.clone(), &a).await?),
        None => None,
    };
    let auth = Arc::new(auth::Auth::open(&ctl.cfg(), ctl.auth_repo.clone()).await?);
    standby_engine::start(&ctl).await?;
    front.lead(app(AppState::new(ctl.clone(), auth)));
    tracing::info!(%addr, tls = is_tls, "standby controller listening");
    Ok(RunningServer {
        addr,
        ctl,
        tls: is_tls,
        metrics_addr,
        agent_addr,
        serve,
    })
}

/// Read the controller's configuration file again and apply it
/// ([`standby_engine::reload`]): `POST /api/v1/config/reload` and SIGHUP.
pub async fn reload_from_file(
    ctl: &Arc<Controller>,
) -> Result<standby_types::api::ConfigReloaded, ServerError> {
    let Some(path) = ctl.config_file() else {
        return Err(ServerError::BadRequest(
            "this controller was not started from a configuration file: there is nothing to reload"
                .into(),
        ));
    };
    let path2 = path.clone();
    let cfg = tokio::task::spawn_blocking(move || Config::load(&path2))
        .await
        .map_err(|e| ServerError::Internal(format!("reading the configuration panicked: {e}")))?
        .map_err(|e| ServerError::BadRequest(format!("configuration not reloaded: {e}")))?;
    let checked = standby_engine::check(&cfg);
    if !checked.problems.is_empty() {
        return Err(ServerError::BadRequest(format!(
            "configuration not reloaded: {}: {}",
            path.display(),
            checked.problems.join("; ")
        )));
    }
    Ok(standby_engine::reload::reload(ctl, cfg).await?)
}

async fn metrics_open(
    axum::extract::State(ctl): axum::extract::State<Arc<Controller>>,
) -> Result<axum::response::Response, ServerError> {
    use axum::response::IntoResponse;
    let body = metrics::render(&ctl).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

impl RunningServer {
    /// The API's base URL.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Stop serving, stop background work and shut down local VMs.
    pub async fn stop(self) {
        self.ctl.shutdown().await;
        let _ = self.serve.await;
        // Last: nothing serves or works any more (a task that outlived
        // the wait above does not hold the exit up).
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.ctl.repo.close()).await;
    }
}
