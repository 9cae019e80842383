//! Who owns what, for tenant scoping: `Some(tenant)` for a tenant's
//! object, `None` for the operators' own (`docs/api.md`). The one set of
//! rules the API and the portal both apply: a tenant's user sees an
//! object in the portal exactly when the API answers for it.

use standby_types::config::Config;
use standby_types::model::Job;
use standby_types::watch::Labels;

use crate::error::ServerError;

/// The runbooks a tenant's user may run, for a VM of theirs (`vm`
/// parameter).
pub const TENANT_RUNBOOKS: &[&str] = &["drill", "move-vm"];

/// A point belongs to its VM's tenant; so does a point id `vm@time`.
pub fn point<'a>(cfg: &'a Config, point_id: &str) -> Option<&'a str> {
    let vm = point_id.split_once('@').map_or(point_id, |(vm, _)| vm);
    cfg.tenant_of_vm(vm)
}

/// An alert, incident or event: its `tenant` label, else the tenant of
/// its `vm`, `service` or `group` label; none of them: the operators'.
pub fn labels<'a>(cfg: &'a Config, labels: &'a Labels) -> Option<&'a str> {
    cfg.tenant_of_labels(labels)
}

/// A job without a database look-up: a restore is its point's VM's, a
/// `protect` job (a protection run of an earlier version) its group's;
/// maintenance of datastores the operators'. `None` for a runbook job
/// (see [`job`]).
pub fn job_by_kind<'a>(cfg: &'a Config, job: &Job) -> Option<Option<&'a str>> {
    match job.kind.as_str() {
        "restore" => Some(point(cfg, &job.target)),
        "protect" => Some(cfg.tenant_of_group(&job.target)),
        "runbook" => None,
        _ => Some(None),
    }
}

/// A runbook job belongs to the tenant of its `vm` parameter, else of
/// its `group` (a protection run, scheduled or requested through
/// `groups/NAME/run`, is its group's), else of its `service`; none of
/// them: the operators'.
pub fn runbook_params<'a>(cfg: &'a Config, params: &serde_json::Value) -> Option<&'a str> {
    let param = |k: &str| params.get(k).and_then(|v| v.as_str());
    if let Some(vm) = param("vm") {
        return cfg.tenant_of_vm(vm);
    }
    if let Some(g) = param("group") {
        return cfg.tenant_of_group(g);
    }
    param("service").and_then(|s| cfg.tenant_of_service(s))
}

/// The tenant of any job.
pub async fn job(
    cfg: &Config,
    runs: &dyn standby_db::RunbookRepo,
    job: &Job,
) -> Result<Option<String>, ServerError> {
    if let Some(o) = job_by_kind(cfg, job) {
        return Ok(o.map(String::from));
    }
    let run = runs.run(job.id).await?;
    Ok(runbook_params(cfg, &run.run.params).map(String::from))
}
