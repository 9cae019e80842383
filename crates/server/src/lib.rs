//! The standby controller.
//!
//! # Layout
//! - [`controller`]: shared state (config, database, agents, datastores,
//!   per-VM locks).
//! - [`agent`]: the agent of one host; runs driver actions and moves disk
//!   data to and from datastores, in this process or through a remote
//!   `standby agent` over HTTP (same operations).
//! - [`fence`]: durable site fences and their enforcement.
//! - [`protect`], [`restore`]: the two data-moving operations.
//! - [`scheduler`]: starts a protection run of a group (the API's
//!   `groups/NAME/run`); the schedule itself is the built-in `protect`
//!   runbook's trigger ([`runbooks`]).
//! - [`runbooks`]: the durable runbook engine, its action catalog,
//!   triggers and routes.
//! - [`jobs`]: background work with persisted progress.
//! - [`api`]: the HTTP/JSON API under `/api/v1`; [`openapi`]: its OpenAPI
//!   document, built from the same routes, and the role each one needs.
//! - [`watch`]: probes, events, rules, alerts, incidents, notifications
//!   and `/metrics`.
//! - [`frontdoor`]: per service, UDP and TCP forwarders that send clients
//!   to the site where the service is active.
//! - [`remote_agent`]: the `standby agent` process: heartbeats and probes
//!   from another vantage point and, with a data dir, a host's VMs
//!   (`/agent/v1`).
//!
//! # Invariants
//! - One operation per VM at a time (a point never overlaps a restore).
//! - A VM is never started at a second place while it may run at the first:
//!   start and restore refuse unless every other host it may run at answers
//!   that it is stopped or sits at a fenced site ([`vms`], [`fence`]).
//! - The datastores are the truth about points; the database is a catalog
//!   rebuilt from them at start ([`Controller::open`] rescans).

pub mod agent;
pub mod api;
mod api_watch;
pub mod auth;
pub mod controller;
pub mod drill;
pub mod error;
pub mod fence;
pub mod frontdoor;
pub mod jobs;
pub mod openapi;
pub mod protect;
pub mod remote_agent;
pub mod restore;
pub mod runbooks;
pub mod scheduler;
pub mod stores;
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
    serve: JoinHandle<std::io::Result<()>>,
}

/// Open the controller, start the scheduler and serve the API on the
/// configured address (port 0 picks a free one; see `addr`).
pub async fn start(cfg: Config) -> Result<RunningServer, ServerError> {
    let listen = cfg.controller.listen.clone();
    let ctl = Controller::open(cfg).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| ServerError::Internal(format!("unable to listen on {listen}: {e}")))?;
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
    let app = api::router(ctl.clone());
    let cancel = ctl.cancel.clone();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    });
    tracing::info!(%addr, "standby controller listening");
    Ok(RunningServer { addr, ctl, serve })
}

impl RunningServer {
    /// Stop serving, stop background work and shut down local VMs.
    pub async fn stop(self) {
        self.ctl.shutdown().await;
        let _ = self.serve.await;
    }
}
