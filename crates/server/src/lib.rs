//! The standby controller.
//!
//! # Layout
//! - [`controller`]: shared state (config, database, agents, datastores,
//!   per-VM locks).
//! - hosts (`standby_agent`): the agent of each host runs driver actions
//!   and moves disk data to and from datastores, in this process or as a
//!   remote `standby agent` over HTTP (same operations).
//! - [`fence`]: durable site fences and their enforcement.
//! - [`protect`], [`restore`]: the two data-moving operations.
//! - [`scheduler`]: starts a protection run of a group (the API's
//!   `groups/NAME/run`); the schedule itself is the built-in `protect`
//!   runbook's trigger ([`runbooks`]).
//! - [`runbooks`]: the durable runbook engine, its action catalog,
//!   triggers and routes.
//! - [`jobs`]: background work with persisted progress.
//! - [`api`]: the HTTP/JSON API under `/api/v1`.
//! - [`auth`]: users, API tokens, portal sessions, agent secrets, the
//!   layer that authenticates every request, and HTTPS.
//! - [`portal`]: the web portal (server-rendered pages, live over SSE).
//! - [`api`]: the HTTP/JSON API under `/api/v1`; [`openapi`]: its OpenAPI
//!   document, built from the same routes, and the role each one needs.
//! - [`watch`]: probes, events, rules, alerts, incidents, notifications
//!   and `/metrics`.
//! - [`services`]: the routes of the front door (`standby_frontdoor`:
//!   per service, UDP and TCP forwarders that send clients to the site
//!   where the service is active).
//!
//! # Invariants
//! - One operation per VM at a time (a point never overlaps a restore).
//! - A VM is never started at a second place while it may run at the first:
//!   start and restore refuse unless every other host it may run at answers
//!   that it is stopped or sits at a fenced site ([`vms`], [`fence`]).
//! - The datastores are the truth about points; the database is a catalog
//!   rebuilt from them at start ([`Controller::open`] rescans).

pub mod api;
mod api_watch;
pub mod auth;
pub mod controller;
pub mod drill;
pub mod error;
pub mod fence;
pub mod jobs;
pub mod openapi;
pub mod portal;
pub mod protect;
pub mod restore;
pub mod runbooks;
pub mod scheduler;
pub mod services;
pub mod vms;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

pub use controller::Controller;
pub use error::ServerError;
use standby_types::config::Config;
use tokio::task::JoinHandle;

/// A controller serving its API.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub ctl: Arc<Controller>,
    /// Whether the API is served over HTTPS.
    pub tls: bool,
    /// Where `/metrics` is served without authentication, if configured.
    pub metrics_addr: Option<SocketAddr>,
    serve: JoinHandle<std::io::Result<()>>,
}

/// Every route of the controller, each behind [`auth::layer`].
pub fn app(ctl: Arc<Controller>) -> axum::Router {
    api::router(ctl.clone())
        .merge(auth::api::session_routes(ctl.clone()))
        .layer(axum::Extension(ctl))
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
    let ctl = Controller::open(cfg).await?;
    let listener = bind(&listen).await?;
    let metrics_addr = match ctl.cfg.controller.metrics_listen.clone() {
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
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("unable to read listen address: {e}")))?;
    ctl.frontdoor
        .start(&ctl.cfg, &ctl.tasks, &ctl.cancel)
        .await?;
    watch::spawn(&ctl);
    ctl.tasks
        .spawn(runbooks::triggers::run_schedules(ctl.clone()));
    runbooks::resume_all(&ctl).await?;
    let app = app(ctl.clone());
    let cancel = ctl.cancel.clone();
    let is_tls = tls.is_some();
    let serve = match tls {
        Some(cfg) => {
            let l = auth::tls::TlsListener::new(listener, cfg, cancel.clone()).map_err(|e| {
                ServerError::Internal(format!("unable to read listen address: {e}"))
            })?;
            tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { cancel.cancelled().await })
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        }),
    };
    tracing::info!(%addr, tls = is_tls, "standby controller listening");
    Ok(RunningServer {
        addr,
        ctl,
        tls: is_tls,
        metrics_addr,
        serve,
    })
}

async fn metrics_open(
    axum::extract::State(ctl): axum::extract::State<Arc<Controller>>,
) -> Result<axum::response::Response, ServerError> {
    use axum::response::IntoResponse;
    let body = watch::metrics::render(&ctl).await?;
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
    }
}
