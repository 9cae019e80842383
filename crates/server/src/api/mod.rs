//! The HTTP/JSON API under `/api/v1`, used by the CLI and the portal.
//! Long operations answer with a job id to poll or stream
//! (`jobs/{id}/stream`).
//!
//! Every route is registered through `OpenApiRouter` with `routes!`, so
//! registering a route documents it: the OpenAPI document
//! (`crate::openapi::openapi`) is built from the same `#[utoipa::path]`
//! annotations, and the role each operation needs is read from it.
//!
//! Lists take `limit` (default 100, at most 1000) and `offset`, answer
//! the page as a JSON array and the number of matches in `X-Total-Count`
//! ([`Page`]). Every handler narrows what it shows to the caller's tenant
//! ([`owner`]; the rule is in `docs/api.md`).
//!
//! This module only assembles the routers: the handlers are in files by
//! concern ([`meta`], [`inventory`], [`points`], [`stores`], [`templates`],
//! [`jobs`], and
//! the sub-routers `api_watch`, `alertmanager`, `nfv`, `services`, `runbooks`,
//! `report`, `auth::api`); what they share is in the leaf [`common`].

pub mod common;
pub mod groups;
pub mod inventory;
pub mod jobs;
pub mod meta;
pub mod points;
pub mod stores;
pub mod templates;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub use common::{DEFAULT_LIMIT, Listed, MAX_LIMIT, Page, SCAN_CAP, TOTAL_COUNT};

/// Every route of the API's handlers with its documentation (the
/// document's frame and its own `openapi.json` route are added by
/// `crate::openapi::routes`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(meta::routes())
        .merge(inventory::routes())
        .merge(groups::routes())
        .merge(points::routes())
        .merge(stores::routes())
        .merge(templates::routes())
        .merge(jobs::routes())
        .merge(crate::api_watch::routes())
        .merge(crate::alertmanager::routes())
        .merge(crate::nfv::routes())
        .merge(crate::services::routes())
        .merge(crate::runbooks::routes())
        .merge(crate::report::routes())
        .merge(crate::auth::api::routes())
}
