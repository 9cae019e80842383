//! ETSI NFV integration (`docs/nfv.md`): the VNF lifecycle management a
//! VNF manager or NFVO asks of standby (SOL 002/003's heal of a VNF
//! instance and the operation occurrence it creates) and the alarms it
//! sends (fault management, [`fm`]).
//!
//! A VNF instance is configuration (`[nfv.vnf_instances."ID"]`): an id
//! and the standby VMs that are its VNFCs. A heal is a job of the shipped
//! `heal-vnf` runbook ([`RUNBOOK`]) with the instance, the VMs to heal and
//! the action (`restart` in place or `recover` at the DR site); the job
//! is the operation occurrence: its id is the job's, its state the job's
//! status, so an occurrence is as durable as the job (a controller restart
//! resumes it). The runbook's lock `vnf:ID` keeps one heal of an instance
//! at a time; a runbook job holding `vm:NAME` of one of its VMs (heal-vm,
//! move-vm) refuses a heal too.

pub mod fm;

use std::sync::Arc;

use serde_json::{Map, Value, json};
use standby_types::config::VnfInstanceConfig;
use standby_types::model::{Job, JobStatus};
use standby_types::nfv::{
    HealVnfRequest, InstantiatedVnfInfo, LcmOperationState, Link, ProblemDetails, ResourceHandle,
    VnfInstance, VnfInstanceLinks, VnfLcmOpOcc, VnfLcmOpOccLinks, VnfOperationalState,
    VnfcResourceInfo,
};

use crate::controller::Controller;
use crate::error::EngineError;
use crate::runbooks::{StartRequest, start};

/// The runbook a heal runs.
pub const RUNBOOK: &str = "heal-vnf";
/// The trigger kind of a heal a VNF manager asked for.
pub const TRIGGER: &str = "nfv";
/// Where SOL 003's VNF lifecycle management API is rooted.
pub const LCM_ROOT: &str = "/vnflcm/v1";
/// The key of `additionalParams` that picks the heal's action.
pub const ACTION_PARAM: &str = "standby_action";

/// What a heal does to each VM of the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealAction {
    /// Shut down and started again where it runs.
    Restart,
    /// Moved to its DR site from a final point.
    Recover,
}

impl HealAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealAction::Restart => "restart",
            HealAction::Recover => "recover",
        }
    }

    /// The action a request asks for: `additionalParams.standby_action`,
    /// `restart` when absent.
    pub fn of(req: &HealVnfRequest) -> Result<HealAction, EngineError> {
        let Some(v) = req
            .additional_params
            .as_ref()
            .and_then(|p| p.get(ACTION_PARAM))
        else {
            return Ok(HealAction::Restart);
        };
        match v.as_str() {
            Some("restart") => Ok(HealAction::Restart),
            Some("recover") => Ok(HealAction::Recover),
            _ => Err(EngineError::BadRequest(format!(
                "additionalParams.{ACTION_PARAM} must be \"restart\" (in place) or \"recover\" (at the DR site), not {v}"
            ))),
        }
    }
}

/// The configured instance `id`.
pub fn instance(ctl: &Controller, id: &str) -> Result<VnfInstanceConfig, EngineError> {
    ctl.cfg()
        .nfv
        .vnf_instances
        .get(id)
        .cloned()
        .ok_or_else(|| EngineError::not_found("vnf instance", id))
}

/// The VMs a heal of `id` acts on: those `vnfcInstanceId` names, each a
/// VM of the instance, else all of them.
pub fn vms_to_heal(
    ctl: &Controller,
    id: &str,
    req: &HealVnfRequest,
) -> Result<Vec<String>, EngineError> {
    let inst = instance(ctl, id)?;
    let Some(named) = &req.vnfc_instance_id else {
        return Ok(inst.vms.clone());
    };
    if named.is_empty() {
        return Err(EngineError::BadRequest(
            "vnfcInstanceId is empty: name VNFC instances (VMs) of the VNF instance, or leave it out for all"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for v in named {
        if !inst.vms.contains(v) {
            return Err(EngineError::BadRequest(format!(
                "vnfcInstanceId '{v}' is not a VNFC of VNF instance '{id}' (its VMs: {})",
                inst.vms.join(", ")
            )));
        }
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    Ok(out)
}

/// Start a heal of instance `id`: the operation occurrence's id (its
/// job's). An unknown instance is not found; a bad request, a bad
/// request; a heal of it, or a runbook on one of its VMs, already running
/// is a conflict.
pub async fn heal(
    ctl: &Arc<Controller>,
    id: &str,
    req: &HealVnfRequest,
) -> Result<i64, EngineError> {
    let vms = vms_to_heal(ctl, id, req)?;
    let action = HealAction::of(req)?;
    for (key, job) in ctl.runbooks.repo().locks().await? {
        let busy = key == format!("vnf:{id}") || vms.iter().any(|vm| key == format!("vm:{vm}"));
        if busy {
            return Err(EngineError::Conflict(format!(
                "VNF instance '{id}' is busy: job {job} holds '{key}' (an operation on it is in progress)"
            )));
        }
    }
    let mut params = Map::new();
    params.insert("vnf_instance".into(), json!(id));
    params.insert("vms".into(), json!(vms));
    params.insert("action".into(), json!(action.as_str()));
    let trigger = json!({
        "kind": TRIGGER,
        "vnf_instance": id,
        "operation": "HEAL",
        "cause": req.cause,
        "request": req,
    });
    let job = start(ctl, RUNBOOK, StartRequest { params, trigger }).await?;
    tracing::info!(job, vnf_instance = id, action = action.as_str(), vms = ?vms, "NFV heal started");
    Ok(job)
}

/// The link base: the controller's URL (`[controller] url`, else its
/// listen address) and the LCM root.
fn lcm(ctl: &Controller) -> String {
    format!("{}{LCM_ROOT}", ctl.cfg().controller.url())
}

/// The operation occurrence of job `job` (a `heal-vnf` job; any other is
/// not found).
pub async fn op_occ(ctl: &Controller, job: i64) -> Result<VnfLcmOpOcc, EngineError> {
    let not_found = || EngineError::not_found("vnf lcm op occ", job.to_string());
    let j = match ctl.repo.job(job).await {
        Ok(j) => j,
        Err(standby_db::DbError::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if j.kind != "runbook" || j.target != RUNBOOK {
        return Err(not_found());
    }
    let run = ctl.runbooks.repo().run(job).await?;
    Ok(op_occ_of(ctl, &j, &run.run.params, &run.run.trigger))
}

fn op_occ_of(ctl: &Controller, j: &Job, params: &Value, trigger: &Value) -> VnfLcmOpOcc {
    let base = lcm(ctl);
    let instance = params["vnf_instance"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let state = match j.status {
        JobStatus::Queued => LcmOperationState::Starting,
        JobStatus::Running => LcmOperationState::Processing,
        JobStatus::Succeeded => LcmOperationState::Completed,
        // No retry, rollback or cancel: a failed heal is final.
        JobStatus::Failed => LcmOperationState::Failed,
    };
    let start_time = j.started_at.unwrap_or(j.created_at);
    let entered = j.finished_at.unwrap_or(start_time);
    let error = (j.status == JobStatus::Failed).then(|| ProblemDetails {
        title: Some("heal failed".into()),
        status: 500,
        detail: j
            .error
            .clone()
            .unwrap_or_else(|| "the heal failed".to_string()),
        code: None,
        retryable: None,
    });
    let kind = trigger["kind"].as_str().unwrap_or_default();
    VnfLcmOpOcc {
        id: j.id.to_string(),
        operation_state: state,
        state_entered_time: entered,
        start_time,
        vnf_instance_id: instance.clone(),
        operation: "HEAL".into(),
        // Started by standby itself (an alert, a schedule), not asked for.
        is_automatic_invocation: matches!(kind, "alert" | "schedule"),
        operation_params: trigger.get("request").filter(|r| !r.is_null()).cloned(),
        is_cancel_pending: false,
        error,
        links: VnfLcmOpOccLinks {
            self_: Link::to(format!("{base}/vnf_lcm_op_occs/{}", j.id)),
            vnf_instance: Link::to(format!("{base}/vnf_instances/{instance}")),
        },
    }
}

/// Every operation occurrence among the newest `scan` jobs, newest first.
pub async fn op_occs(ctl: &Controller, scan: u32) -> Result<Vec<VnfLcmOpOcc>, EngineError> {
    let mut out = Vec::new();
    for j in ctl.repo.jobs(scan).await? {
        if j.kind != "runbook" || j.target != RUNBOOK {
            continue;
        }
        let run = ctl.runbooks.repo().run(j.id).await?;
        out.push(op_occ_of(ctl, &j, &run.run.params, &run.run.trigger));
    }
    Ok(out)
}

/// Instance `id` as SOL 003's `VnfInstance`, with where and how each VM
/// runs now (`STARTED` when each runs, or is frozen for a point).
pub async fn vnf_instance(ctl: &Controller, id: &str) -> Result<VnfInstance, EngineError> {
    let inst = instance(ctl, id)?;
    let base = lcm(ctl);
    let mut vnfcs = Vec::new();
    let mut all_run = true;
    for vm in &inst.vms {
        let v = crate::vms::view(ctl, vm).await?;
        // Frozen for a moment while a point is taken: still started.
        all_run &= v.state == "running" || v.state == "frozen";
        let mut metadata = Map::new();
        metadata.insert("site".into(), json!(v.record.active_site));
        metadata.insert("host".into(), json!(v.record.active_host));
        metadata.insert("state".into(), json!(v.state));
        metadata.insert("home_site".into(), json!(v.record.home_site));
        metadata.insert("dr_site".into(), json!(v.record.dr_site));
        vnfcs.push(VnfcResourceInfo {
            id: vm.clone(),
            vdu_id: vm.clone(),
            compute_resource: ResourceHandle {
                resource_id: vm.clone(),
                vim_level_resource_type: "standby.vm".into(),
            },
            metadata,
        });
    }
    Ok(VnfInstance {
        id: id.to_string(),
        vnf_instance_name: inst.name.clone(),
        vnf_instance_description: inst.description.clone(),
        vnfd_id: inst.vnfd_id.clone(),
        vnf_provider: inst.vnf_provider.clone(),
        vnf_product_name: inst.vnf_product_name.clone(),
        vnf_software_version: inst.vnf_software_version.clone(),
        vnfd_version: inst.vnfd_version.clone(),
        instantiation_state: "INSTANTIATED".into(),
        instantiated_vnf_info: InstantiatedVnfInfo {
            flavour_id: "default".into(),
            vnf_state: if all_run {
                VnfOperationalState::Started
            } else {
                VnfOperationalState::Stopped
            },
            vnfc_resource_info: vnfcs,
        },
        links: VnfInstanceLinks {
            self_: Link::to(format!("{base}/vnf_instances/{id}")),
            heal: Link::to(format!("{base}/vnf_instances/{id}/heal")),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> HealVnfRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_action_is_additional_params_standby_action() {
        assert_eq!(
            HealAction::of(&req(json!({}))).unwrap(),
            HealAction::Restart
        );
        assert_eq!(
            HealAction::of(&req(
                json!({"additionalParams": {"standby_action": "recover"}})
            ))
            .unwrap(),
            HealAction::Recover
        );
        let e = HealAction::of(&req(
            json!({"additionalParams": {"standby_action": "reboot"}}),
        ))
        .unwrap_err();
        assert!(matches!(e, EngineError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("not \"reboot\""), "{e}");
    }
}
