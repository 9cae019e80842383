//! The controller's agent-facing listener (`[controller] agent_listen`,
//! with `[pki]`): mutual TLS only, this controller presenting its
//! `controller-NAME` certificate. It takes heartbeats and results, each
//! only from the agent whose `agent` certificate names it: a peer's
//! certificate, another agent's, or the controller's own role is refused
//! (403) and logged. The answers travel back on the same authenticated
//! connection, so a forged answer (a fence, an unfence) cannot reach an
//! agent: it checks this listener's certificate before reading anything.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use standby_engine::Controller;
use standby_tls::{Identity, Role, TlsPeer};

use crate::error::ServerError;

/// Serve the agent-facing API on `addr` until the controller stops; the
/// address it listens on.
pub async fn serve(ctl: Arc<Controller>, addr: &str) -> Result<SocketAddr, ServerError> {
    let Some(pki) = ctl.cfg().pki.clone() else {
        return Err(ServerError::BadRequest(
            "[controller] agent_listen needs [pki]: the agent-facing listener is mutual TLS only"
                .into(),
        ));
    };
    let bad = |e: standby_tls::Error| ServerError::BadRequest(standby_types::error_chain(&e));
    let me = Identity::new(Role::Controller, ctl.cfg().controller.name.clone()).map_err(bad)?;
    let material = standby_tls::Material::from_dir(&pki.dir, &me).map_err(bad)?;
    let cfg = standby_tls::server_config(material).map_err(bad)?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Internal(format!("unable to listen on {addr}: {e}")))?;
    let local = tcp
        .local_addr()
        .map_err(|e| ServerError::Internal(format!("unable to read listen address: {e}")))?;
    let listener = standby_tls::TlsListener::new(tcp, cfg, ctl.cancel.clone())
        .map_err(|e| ServerError::Internal(format!("TLS listener on {addr}: {e}")))?;
    let app = axum::Router::new()
        .route(
            "/api/v1/agents/{name}/heartbeat",
            post(crate::api_watch::agent_heartbeat),
        )
        .route(
            "/api/v1/agents/{name}/results",
            post(crate::api_watch::agent_results),
        )
        .layer(axum::middleware::from_fn(the_named_agent))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctl.clone());
    let cancel = ctl.cancel.clone();
    ctl.tasks.spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    });
    tracing::info!(addr = %local, "agent-facing API on mutual TLS");
    Ok(local)
}

/// Only the agent the route names, by its `agent` certificate.
async fn the_named_agent(
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    req: Request,
    next: Next,
) -> Response {
    let name = req.uri().path().split('/').nth(4).unwrap_or_default();
    let refuse = |m: String| {
        tracing::warn!(client = %peer.addr, path = %req.uri().path(), "agent call refused: {m}");
        ServerError::Forbidden(m).into_response()
    };
    let who = match Identity::new(Role::Agent, name) {
        Ok(w) => w,
        Err(e) => return refuse(e.to_string()),
    };
    match standby_tls::require(&peer, std::slice::from_ref(&who)) {
        Ok(_) => next.run(req).await,
        Err(e) => refuse(e.to_string()),
    }
}
