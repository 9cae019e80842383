//! What the API's handlers share: query parsing ([`ApiQuery`]), paging
//! ([`Page`], [`Listed`]), tenant scoping ([`owner`], [`check_job`],
//! [`check_vm`], [`operators_only`]). A leaf: the sub-routers import it,
//! it imports none of them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use standby_types::model::Job;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::Reads;
use standby_engine::Controller;
use standby_types::config::Config;

pub(crate) type Ctl = State<Arc<Controller>>;
/// The state of a read-only handler, which a replica serves too.
pub(crate) type Rd = State<Arc<Reads>>;
pub(crate) type ApiResult<T> = Result<Json<T>, ServerError>;

/// Query parameters, with a JSON 400 naming the parameter when one is bad
/// (axum's own `Query` answers in plain text).
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(ApiQuery)
            .map_err(|e| ServerError::BadRequest(format!("bad query string '{q}': {e}")))
    }
}

/// Default page size of a list.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of a list.
pub const MAX_LIMIT: u32 = 1000;

/// One page of a list: `offset` matches skipped, at most `limit` shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub offset: usize,
}

impl Page {
    /// The page asked for; 400 for a limit of 0 or above [`MAX_LIMIT`].
    pub fn new(limit: Option<u32>, offset: Option<u32>) -> Result<Page, ServerError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ServerError::BadRequest(format!(
                "limit {limit} is out of range (1 to {MAX_LIMIT})"
            )));
        }
        Ok(Page {
            limit: limit as usize,
            offset: offset.unwrap_or(0) as usize,
        })
    }

    /// The page of `all` (in list order) and the number of matches.
    pub fn of<T>(self, all: Vec<T>) -> Listed<T> {
        let total = all.len();
        let items = all.into_iter().skip(self.offset).take(self.limit).collect();
        Listed { items, total }
    }

    /// For a list shown oldest first whose `offset` counts from the newest
    /// end (events): the page nearest the end, still oldest first.
    pub fn of_newest<T>(self, all: Vec<T>) -> Listed<T> {
        let total = all.len();
        let end = total.saturating_sub(self.offset);
        let start = end.saturating_sub(self.limit);
        let items = all.into_iter().take(end).skip(start).collect();
        Listed { items, total }
    }
}

/// A page of a list: the JSON array of the page, the number of matches in
/// `X-Total-Count`.
pub struct Listed<T> {
    pub items: Vec<T>,
    pub total: usize,
}

pub const TOTAL_COUNT: &str = "x-total-count";

impl<T: Serialize> IntoResponse for Listed<T> {
    fn into_response(self) -> Response {
        let mut r = Json(self.items).into_response();
        r.headers_mut()
            .insert(TOTAL_COUNT, HeaderValue::from(self.total as u64));
        r
    }
}

pub(crate) type ListResult<T> = Result<Listed<T>, ServerError>;

/// 404 unless the principal sees the job.
pub(crate) async fn check_job(
    reads: &Reads,
    who: &Principal,
    job: &Job,
) -> Result<(), ServerError> {
    if who.tenant.is_none() {
        return Ok(());
    }
    let o = crate::tenancy::job(&reads.cfg(), &*reads.runs, job).await?;
    who.check(o.as_deref(), "job", &job.id.to_string())
}

/// 404 for a tenant's user: sites, hosts, datastores and the like are the
/// operators'.
pub(crate) fn operators_only(
    who: &Principal,
    kind: &'static str,
    name: &str,
) -> Result<(), ServerError> {
    who.check(None, kind, name)
}

/// `limit` and `offset` of a list without filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Skip this many first.
    pub offset: Option<u32>,
}

/// How many of the newest rows a list with a database limit looks at;
/// `X-Total-Count` counts matches among them.
pub const SCAN_CAP: u32 = 100_000;

/// 404 unless the VM exists and the principal sees it.
pub(crate) fn check_vm(cfg: &Config, who: &Principal, name: &str) -> Result<(), ServerError> {
    who.check(cfg.tenant_of_vm(name), "vm", name)
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;

    use standby_types::config::Config;
    use standby_types::watch::Labels;

    use serde_json::json;
    use standby_types::model::JobStatus;

    use super::*;

    fn cfg() -> Config {
        Config::parse(
            r#"
[tenants.acme]
[tenants.globex]
[sites.site1]
[hosts.h]
site = "site1"
driver = "process"
disk_dir = "/disks"
[vms.pbx1]
host = "h"
command = "sleep"
tenant = "acme"
[vms.pbx2]
host = "h"
command = "sleep"
tenant = "globex"
[vms.core]
host = "h"
command = "sleep"
[datastores.store1]
site = "site1"
path = "/tmp/standby-api-test-store1"
[groups.acme-gold]
datastores = ["store1"]
members = ["pbx1"]
schedule = "every 1h"
tenant = "acme"
[services.sip]
vm = "pbx1"
listen = "127.0.0.1:0"
backends = { site1 = "127.0.0.1:5060" }
"#,
            FsPath::new("standby.toml"),
        )
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn job(kind: &str, target: &str) -> Job {
        Job {
            id: 1,
            kind: kind.into(),
            target: target.into(),
            status: JobStatus::Running,
            progress_done: 0,
            progress_total: 0,
            message: String::new(),
            error: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            result: serde_json::Value::Null,
        }
    }

    #[test]
    fn labels_belong_to_the_tenant_label_then_vm_service_group() {
        let c = cfg();
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("vm", "pbx1")])),
            Some("acme")
        );
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("vm", "pbx2")])),
            Some("globex")
        );
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("service", "sip")])),
            Some("acme")
        );
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("group", "acme-gold")])),
            Some("acme")
        );
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("tenant", "globex"), ("vm", "pbx1")])),
            Some("globex")
        );
        // The operators' own: no label names a tenant's object.
        assert_eq!(crate::tenancy::labels(&c, &labels(&[("vm", "core")])), None);
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("site", "site1")])),
            None
        );
        assert_eq!(
            crate::tenancy::labels(&c, &labels(&[("vm", "no-such-vm")])),
            None
        );
    }

    #[test]
    fn points_and_jobs_belong_to_their_vm_or_group() {
        let c = cfg();
        assert_eq!(
            crate::tenancy::point(&c, "pbx1@20261126T101500.000Z"),
            Some("acme")
        );
        assert_eq!(crate::tenancy::point(&c, "core@20261126T101500.000Z"), None);
        assert_eq!(
            crate::tenancy::job_by_kind(&c, &job("restore", "pbx2@20261126T101500.000Z")),
            Some(Some("globex"))
        );
        assert_eq!(
            crate::tenancy::job_by_kind(&c, &job("protect", "acme-gold")),
            Some(Some("acme"))
        );
        assert_eq!(
            crate::tenancy::job_by_kind(&c, &job("gc", "store1")),
            Some(None)
        );
        assert_eq!(
            crate::tenancy::job_by_kind(&c, &job("sync", "store1 -> store2")),
            Some(None)
        );
        // A runbook job needs its run's parameters.
        assert_eq!(
            crate::tenancy::job_by_kind(&c, &job("runbook", "move-vm")),
            None
        );
        assert_eq!(
            crate::tenancy::runbook_params(&c, &json!({"vm": "pbx1", "site": "site2"})),
            Some("acme")
        );
        assert_eq!(
            crate::tenancy::runbook_params(&c, &json!({"site": "site1"})),
            None
        );
        // A scheduled protection run is its group's, as the portal shows it.
        assert_eq!(
            crate::tenancy::runbook_params(&c, &json!({"group": "acme-gold"})),
            Some("acme")
        );
        assert_eq!(
            crate::tenancy::runbook_params(&c, &json!({"service": "sip"})),
            Some("acme")
        );
    }

    #[test]
    fn a_tenants_user_sees_their_own_and_gets_404_for_the_rest() {
        let c = cfg();
        let acme = Principal {
            name: "alice".into(),
            role: crate::auth::Role::Operator,
            tenant: Some("acme".into()),
        };
        let ops = Principal {
            name: "root".into(),
            role: crate::auth::Role::Admin,
            tenant: None,
        };
        assert!(acme.sees(c.tenant_of_vm("pbx1")));
        assert!(!acme.sees(c.tenant_of_vm("pbx2")));
        assert!(!acme.sees(c.tenant_of_vm("core")));
        assert!(ops.sees(c.tenant_of_vm("pbx2")));
        let e = operators_only(&acme, "datastore", "store1").unwrap_err();
        assert_eq!(e.to_api().code, "not_found");
        assert!(operators_only(&ops, "datastore", "store1").is_ok());
    }

    #[test]
    fn pages_slice_and_count_and_refuse_bad_limits() {
        let p = Page::new(Some(2), Some(1)).unwrap();
        let l = p.of(vec![1, 2, 3, 4]);
        assert_eq!((l.items, l.total), (vec![2, 3], 4));
        let l = p.of_newest(vec![1, 2, 3, 4]);
        assert_eq!((l.items, l.total), (vec![2, 3], 4));
        let l = Page::new(None, Some(10)).unwrap().of(vec![1, 2]);
        assert_eq!((l.items, l.total), (vec![], 2));
        assert_eq!(Page::new(None, None).unwrap().limit, 100);
        for bad in [0, 1001] {
            let e = Page::new(Some(bad), None).unwrap_err();
            assert_eq!(e.to_api().code, "bad_request");
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }
}
