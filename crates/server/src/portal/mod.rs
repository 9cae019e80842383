//! The web portal: server-rendered pages for people, served by the
//! controller next to the JSON API.
//!
//! # Layout
//! - Pages (`/`, `/alerts`, `/incidents[/ID]`, `/jobs[/ID]`, `/drills`, `/groups`,
//!   `/vms/NAME`, `/reports`, `/login`) are one layout (`templates/layout.html`) around
//!   a *fragment*: the live part of the page, rendered by its own template
//!   under `templates/fragments/`. The same fragment is served alone under
//!   `/portal/fragments/...`, which is what the page's script re-fetches.
//!   `/reports` (the monthly DR report) is the exception: too costly to
//!   redo on every event, it has no fragment and is not live.
//! - Everything is read from the controller's state directly (config,
//!   database, watch, front door), narrowed to what the caller's
//!   [`Principal`] sees: a tenant's user sees their VMs, services, points,
//!   alerts, incidents and jobs only (the API's rules: [`crate::tenancy`]);
//!   an object of another tenant is "not found".
//! - Actions (take a point, drill, planned move, failover, ack, silence)
//!   are buttons that call the JSON API with `fetch` (cookie session plus
//!   the `X-CSRF-Token` header from `<meta name="csrf-token">`). The
//!   buttons are left out for viewers; the API enforces roles anyway.
//! - `static/portal.js` (our own, no third-party code) subscribes to
//!   `/api/v1/events/stream` (SSE) and re-fetches every `[data-fragment]`
//!   on the page when an event arrives, reconnecting with a bounded
//!   backoff; while a job shown on the page runs it also polls its
//!   fragment. `static/portal.css`: one responsive stylesheet.
//! - Charts are inline SVG computed here ([`model::chart`]): age of the
//!   newest point over time per VM, and measured RTO / data at risk per
//!   drill and failover.

mod model;
mod pages;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::auth::{Principal, Role};
use crate::error::ServerError;
use crate::state::AppState;

const CSS: &str = include_str!("../../static/portal.css");
const JS: &str = include_str!("../../static/portal.js");

/// The portal's routes, merged into the API router (so they run behind
/// the same authentication layer).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login))
        .route("/alerts", get(pages::alerts))
        .route("/incidents", get(pages::incidents))
        .route("/incidents/{id}", get(pages::incident))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/drills", get(pages::drills))
        .route("/vms", get(pages::vms))
        .route("/groups", get(pages::groups))
        .route("/templates", get(pages::templates))
        .route("/vms/{name}", get(pages::vm))
        .route("/reports", get(pages::reports))
        .route(
            "/portal/fragments/dashboard",
            get(pages::dashboard_fragment),
        )
        .route("/portal/fragments/alerts", get(pages::alerts_fragment))
        .route(
            "/portal/fragments/incidents",
            get(pages::incidents_fragment),
        )
        .route(
            "/portal/fragments/incidents/{id}",
            get(pages::incident_fragment),
        )
        .route("/portal/fragments/jobs", get(pages::jobs_fragment))
        .route("/portal/fragments/jobs/{id}", get(pages::job_fragment))
        .route("/portal/fragments/drills", get(pages::drills_fragment))
        .route("/portal/fragments/vms", get(pages::vms_fragment))
        .route("/portal/fragments/groups", get(pages::groups_fragment))
        .route(
            "/portal/fragments/templates",
            get(pages::templates_fragment),
        )
        .route("/portal/fragments/vms/{name}", get(pages::vm_fragment))
        .route("/static/portal.css", get(css))
        .route("/static/portal.js", get(js))
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Who is looking, for pages: the principal (if authenticated), the CSRF
/// token of a cookie session (empty when there is none) and the path asked
/// for (to come back to after logging in).
pub(crate) struct Viewer {
    principal: Option<Principal>,
    csrf: String,
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Viewer {
            principal: parts.extensions.get::<Principal>().cloned(),
            csrf: csrf_token(parts),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        })
    }
}

/// The session's CSRF token, put in the request's extensions by the
/// authentication layer for cookie sessions.
/// Empty for a bearer-token caller (no cookie, no CSRF to guard against).
fn csrf_token(parts: &Parts) -> String {
    parts
        .extensions
        .get::<crate::auth::Csrf>()
        .map(|c| c.0.clone())
        .unwrap_or_default()
}

impl Viewer {
    fn can_act(&self) -> bool {
        self.principal
            .as_ref()
            .is_some_and(|p| p.role >= Role::Operator)
    }
}

/// What a page handler answers: HTML, or a redirect to the login form.
pub(crate) enum PageError {
    Login(String),
    Server(ServerError),
}

impl From<ServerError> for PageError {
    fn from(e: ServerError) -> Self {
        PageError::Server(e)
    }
}

impl From<standby_db::DbError> for PageError {
    fn from(e: standby_db::DbError) -> Self {
        PageError::Server(e.into())
    }
}

impl From<standby_frontdoor::FrontDoorError> for PageError {
    fn from(e: standby_frontdoor::FrontDoorError) -> Self {
        PageError::Server(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Login(next) => {
                let q = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
                Redirect::to(&format!("/login?{q}")).into_response()
            }
            PageError::Server(e) => {
                let message = crate::error::error_chain(&e);
                // The API's own status, so a page says 404 where the API does.
                let status = e.into_response().status();
                (status, Html(pages::error_page(status, &message))).into_response()
            }
        }
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// The principal of a page request, or a redirect to the login form.
fn principal(v: &Viewer) -> Result<&Principal, PageError> {
    v.principal
        .as_ref()
        .ok_or_else(|| PageError::Login(v.path.clone()))
}
