//! Who calls a host agent, and that each call counts once.
//!
//! Two APIs, two kinds of callers:
//! - `/agent/v1/*` (execution and stores): the controller only;
//! - `/agent/v1/receive/*` (copies into a datastore this agent serves):
//!   another agent, with a **grant** the controller asked this agent for
//!   (`POST /agent/v1/store/grant`): one datastore, one sending agent, in
//!   force while the copy keeps using it ([`GRANT_IDLE`], measured on this
//!   agent's monotonic clock), good for nothing else.
//!
//! Authentication names the [`Caller`]; then every state-changing call
//! (each POST) must name this agent's session and a counter of that caller
//! not used before ([`crate::fresh`]), or it is refused (409
//! `stale_session` or `replayed`) and logged. A caller learns the session
//! and its next counter from `GET /agent/v1/session` (the controller) or
//! `GET /agent/v1/receive/session` (a peer).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub(super) use super::grants::Granted;
use super::host::HostAgent;
use crate::error::AgentError;
use crate::fresh::Session;

/// Who is calling, once authenticated: `controller NAME` or `peer NAME`.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// Refuse a state-changing call whose session or counter is not fresh.
pub(super) async fn fresh_calls(
    State(h): State<Arc<HostAgent>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    let Some(Caller(caller)) = req.extensions().get::<Caller>().cloned() else {
        return AgentError::Internal("call not authenticated before its counter".into())
            .into_response();
    };
    match h.fresh.check_headers(&caller, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            tracing::warn!(%caller, path = %req.uri().path(), "call refused: {r}");
            AgentError::Refused {
                code: r.code(),
                message: format!("{} refused: {r}", req.uri().path()),
            }
            .into_response()
        }
    }
}

/// Refuse a command of a leader older than the newest seen (a deposed
/// controller): the epoch header, absent meaning 0.
pub(super) async fn current_epoch(
    State(h): State<Arc<HostAgent>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    let epoch = req
        .headers()
        .get(crate::epoch::EPOCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    match h.epochs.admit(epoch) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(path = %req.uri().path(), "call refused: {e}");
            e.into_response()
        }
    }
}

/// This agent's session and the caller's next counter.
pub(super) async fn session(
    State(h): State<Arc<HostAgent>>,
    axum::Extension(Caller(caller)): axum::Extension<Caller>,
) -> Json<Session> {
    Json(h.fresh.hello(&caller))
}

/// The execution API over mutual TLS: a controller's certificate only.
pub(super) async fn controllers_only(
    State(allowed): State<Arc<Vec<standby_tls::Identity>>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(peer) = tls_peer(&req) else {
        return AgentError::Unauthorized("no client certificate".into()).into_response();
    };
    match standby_tls::require(&peer, &allowed) {
        Ok(who) => {
            req.extensions_mut()
                .insert(Caller(format!("controller {}", who.name)));
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(client = %peer.addr, path = %req.uri().path(), "call refused: {e}");
            AgentError::Forbidden(format!("{} refused: {e}", req.uri().path())).into_response()
        }
    }
}

fn tls_peer(req: &Request) -> Option<standby_tls::TlsPeer> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<standby_tls::TlsPeer>>()
        .map(|c| c.0.clone())
}

/// The receive API: a peer with a grant (and over mutual TLS, the
/// certificate of the peer the grant names).
pub(super) async fn granted_peers(
    State(h): State<Arc<HostAgent>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refuse = |m: String| {
        tracing::warn!(path = %req.uri().path(), "copy call refused: {m}");
        AgentError::Unauthorized(m).into_response()
    };
    let granted = match presented {
        None => return refuse("a copy into this agent needs a grant".into()),
        Some(id) => match h.grants.check(id) {
            Ok(g) => g,
            Err(e) => return refuse(e),
        },
    };
    if h.mtls {
        let who = match crate::creds::identity(standby_tls::Role::Peer, &granted.from) {
            Ok(w) => w,
            Err(e) => return refuse(e.to_string()),
        };
        let checked = match tls_peer(&req) {
            Some(peer) => {
                standby_tls::require(&peer, std::slice::from_ref(&who)).map_err(|e| e.to_string())
            }
            None => Err("no client certificate".into()),
        };
        if let Err(e) = checked {
            tracing::warn!(path = %req.uri().path(), "copy call refused: {e}");
            return AgentError::Forbidden(format!("copy refused: {e}")).into_response();
        }
    }
    req.extensions_mut()
        .insert(Caller(format!("peer {}", granted.from)));
    req.extensions_mut().insert(granted);
    next.run(req).await
}
