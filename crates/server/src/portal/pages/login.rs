//! The login form.

use askama::Template;
use axum::extract::Query;
use serde::Deserialize;

use crate::portal::PageResult;

use super::common::{html, render};

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "login.html")]
pub(super) struct Login<'a> {
    pub(super) next: &'a str,
    pub(super) error: bool,
}

#[derive(Deserialize)]
pub(crate) struct LoginParams {
    pub(super) next: Option<String>,
    pub(super) error: Option<String>,
}

pub(crate) async fn login(Query(q): Query<LoginParams>) -> PageResult {
    // Only a local path is a place to come back to (no open redirect).
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    Ok(html(render(&Login {
        next: &next,
        error: q.error.is_some(),
    })?))
}
