//! A replica's API while another controller leads: `GET /api/v1/health`
//! it answers itself with its role and the leader it follows; the reads
//! that come from the database alone it answers from the database
//! ([`crate::follower`], on PostgreSQL); every other request is forwarded
//! to the leader the lease names (writes, and reads of the leader's live
//! state). Once this controller leads, the same listener serves its own
//! API ([`Front::lead`]).
//!
//! A request already forwarded once is not forwarded again (two replicas
//! that each believe the other leads answer 503 rather than loop), and
//! with no leader known (none yet, the database unreachable) the answer is
//! 503 `no_leader`, which clients treat as "try another replica".

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use standby_db::Lease;
use standby_types::config::Config;
use tokio::sync::watch;
use tower::ServiceExt;

/// Set on a forwarded request: the forwarding replica's name.
pub const FORWARDED_BY: &str = "x-standby-forwarded-by";

/// The listener's two lives: forwarding to the leader, then leading.
pub struct Front {
    name: String,
    seen: watch::Receiver<Option<Lease>>,
    http: reqwest::Client,
    app: OnceLock<Router>,
    /// The reads answered here until this controller leads.
    reads: RwLock<Option<Router>>,
}

impl Front {
    /// A replica named in `cfg` that forwards to the leader `seen` names;
    /// it trusts the certificates of `[controller] tls_cert` and `[pki]`'s
    /// CA besides the system's, for a leader serving HTTPS.
    pub fn new(cfg: &Config, seen: watch::Receiver<Option<Lease>>) -> Front {
        let mut b = standby_http::builder(standby_http::Reach::Internal)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30));
        let pems = [
            cfg.controller.tls_cert.clone(),
            cfg.pki.as_ref().map(|p| p.ca()),
        ];
        for path in pems.into_iter().flatten() {
            match standby_http::pem_certificates(&path) {
                Ok(certs) => {
                    for c in certs {
                        b = b.add_root_certificate(c);
                    }
                }
                Err(e) => tracing::warn!("not trusted for forwarding: {e}"),
            }
        }
        Front {
            name: cfg.controller.name.clone(),
            seen,
            http: b
                .build()
                .expect("http client with the ring provider builds"),
            app: OnceLock::new(),
            reads: RwLock::new(None),
        }
    }

    /// Answer the reads `reads` serves here until this controller leads.
    pub fn follow(&self, reads: Router) {
        *self.reads.write().unwrap_or_else(|p| p.into_inner()) = Some(reads);
    }

    /// This controller leads: serve `app` from now on (and close the
    /// follower's database connections).
    pub fn lead(&self, app: Router) {
        let _ = self.app.set(app);
        self.reads.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The router a listener serves: the leader's app once set, the
    /// forwarding replica until then.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(serve).with_state(self.clone())
    }
}

async fn serve(State(front): State<Arc<Front>>, req: Request) -> Response {
    if let Some(app) = front.app.get() {
        return match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let leader = front.seen.borrow().clone();
    if req.uri().path() == "/api/v1/health" {
        return axum::Json(serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "role": "replica",
            "name": front.name,
            "leader": leader.as_ref().map(|l| serde_json::json!({
                "name": l.holder, "url": l.url, "epoch": l.epoch,
            })),
        }))
        .into_response();
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD)
        .then(|| {
            front
                .reads
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
        .flatten();
    let req = match reads {
        Some(reads) => {
            // A GET has no body to keep: the router gets a copy, and the
            // request goes on to the leader if it does not serve it.
            let (parts, body) = req.into_parts();
            let copy = Request::from_parts(parts.clone(), Body::empty());
            let answer = match reads.oneshot(copy).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if answer
                .extensions()
                .get::<crate::follower::NotServed>()
                .is_none()
            {
                return answer;
            }
            Request::from_parts(parts, body)
        }
        None => req,
    };
    let Some(leader) = leader else {
        return unavailable(
            "no controller leads now (none has the lease, or the database does not answer); try again",
        );
    };
    if req.headers().contains_key(FORWARDED_BY) {
        return unavailable(&format!(
            "replica {} does not lead and the request was forwarded already",
            front.name
        ));
    }
    forward(&front, &leader, req).await
}

fn unavailable(message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        axum::Json(serde_json::json!({"code": "no_leader", "message": message})),
    )
        .into_response()
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(front: &Front, leader: &Lease, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", leader.url.trim_end_matches('/'));
    let mut out = front.http.request(parts.method.clone(), &url);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    out = out
        .header(FORWARDED_BY, front.name.as_str())
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    match out.send().await {
        Ok(resp) => {
            let mut answer = Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                if !hop_by_hop(k) {
                    answer = answer.header(k, v);
                }
            }
            answer
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| unavailable(&format!("bad answer from the leader: {e}")))
        }
        Err(e) => {
            // Every call fails alike while a leader is lost: not a warning each.
            tracing::debug!(leader = %leader.holder, %url, "forwarding to the leader failed: {e}");
            unavailable(&format!(
                "the leader {} at {} does not answer ({e}); try again",
                leader.holder, leader.url
            ))
        }
    }
}
