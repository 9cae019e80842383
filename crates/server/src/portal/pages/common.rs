//! Shared by the pages: rendering, the layout around a page, the error page, a fragment's principal.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::error::ServerError;
use crate::portal::model::{self};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

pub(super) type Ctl = State<Arc<Controller>>;

pub(super) fn render(t: &impl Template) -> Result<String, PageError> {
    t.render()
        .map_err(|e| PageError::Server(ServerError::Internal(format!("portal template: {e}"))))
}

pub(super) fn html(body: String) -> Response {
    Html(body).into_response()
}

pub(super) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub(super) fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    model::short_duration((now - t).num_milliseconds() as f64 / 1000.0)
}

// ---------------------------------------------------------------- layout

#[derive(Template)]
#[template(path = "layout.html")]
pub(super) struct Layout<'a> {
    pub(super) title: &'a str,
    pub(super) nav: &'a str,
    pub(super) user: &'a str,
    pub(super) role: &'a str,
    pub(super) tenant: &'a str,
    pub(super) csrf: &'a str,
    pub(super) fragment: &'a str,
    pub(super) body: &'a str,
}

/// A whole page: the layout around the fragment `body`, which the page's
/// script re-fetches from `fragment` (empty: a page that is not live).
pub(super) fn page(v: &Viewer, title: &str, nav: &str, fragment: &str, body: &str) -> PageResult {
    let p = principal(v)?;
    let tenant = p.tenant.clone().unwrap_or_default();
    Ok(html(render(&Layout {
        title,
        nav,
        user: &p.name,
        role: p.role.as_str(),
        tenant: &tenant,
        csrf: &v.csrf,
        fragment,
        body,
    })?))
}

#[derive(Template)]
#[template(path = "error.html")]
pub(super) struct ErrorPage<'a> {
    pub(super) status: u16,
    pub(super) reason: &'a str,
    pub(super) message: &'a str,
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> String {
    ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error"),
        message,
    }
    .render()
    .unwrap_or_else(|_| message.to_string())
}

/// A fragment's principal: a fragment is fetched by script, so an expired
/// session answers 401 (the script then goes to the login form).
pub(super) fn fragment_principal(v: &Viewer) -> Result<&Principal, PageError> {
    v.principal.as_ref().ok_or_else(|| {
        PageError::Server(ServerError::Unauthorized("authentication required".into()))
    })
}
