//! The operations of a host ([`Host`]), the same whoever carries them out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use standby_hv::{
    DiskSpec, MigrationListen, MigrationOptions, MigrationReport, MigrationTarget, VmSpec, VmStatus,
};
use standby_store::{Datastore, Manifest, PointId};
use standby_types::config::DatastoreConfig;
use standby_types::outcome::{DrillProbed, DrillState, DrillStopped};
use standby_types::watch::ProbeCheck;

use crate::error::AgentError;
use crate::progress::Progress;
use crate::wire::DrillRequest;
use crate::wire::{FencedVm, PointStats};

/// A datastore as a point or restore needs it: opened here for a local
/// host, named and described for a remote one (which opens it itself).
/// `store` is `None` when an agent serves the datastore: only that
/// agent's host can write or read it.
pub struct StoreRef<'a> {
    pub name: &'a str,
    pub config: &'a DatastoreConfig,
    pub store: Option<Datastore>,
}

impl StoreRef<'_> {
    /// The store opened here, for an in-process host.
    pub fn opened(&self) -> Result<&Datastore, AgentError> {
        self.store.as_ref().ok_or_else(|| {
            AgentError::Conflict(format!(
                "datastore {} is served by agent {}: only that agent's host reads and writes it",
                self.name,
                self.config.agent.as_deref().unwrap_or("?")
            ))
        })
    }
}

/// What a point needs besides the VM and the store.
pub struct PointRequest {
    /// The site the point is taken at (recorded in its manifest).
    pub site: String,
    pub chunk_size: u32,
    pub labels: BTreeMap<String, String>,
    pub vm_config: serde_json::Value,
}

/// The operations of one host. Both implementations offer all of them
/// with the same meaning; only [`Host::remote_agent`] tells them apart,
/// for messages.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    /// The remote agent running this host, if any.
    fn remote_agent(&self) -> Option<&str>;
    /// The kind of VMs this host runs (`process`, `qemu`).
    fn driver_kind(&self) -> &'static str;
    /// Where a VM's program is found: a bare name is looked up where the
    /// VM runs.
    fn resolve_command(&self, program: &str) -> PathBuf;
    async fn status(&self, vm: &str) -> Result<VmStatus, AgentError>;
    /// Which of `vms` run on this host: one call to a remote agent (its
    /// state lists every VM it runs), however many VMs are asked about.
    async fn running(&self, vms: &[String]) -> Result<Vec<String>, AgentError> {
        let mut out = Vec::new();
        for vm in vms {
            if self.status(vm).await?.is_alive() {
                out.push(vm.clone());
            }
        }
        Ok(out)
    }
    /// The status of each of `vms`, as [`Host::status`] gives it: one call
    /// to a remote agent, however many VMs are asked about. A VM whose
    /// status the host cannot tell is left out.
    async fn statuses(&self, vms: &[String]) -> Result<Vec<(String, VmStatus)>, AgentError> {
        let mut out = Vec::new();
        for vm in vms {
            if let Ok(st) = self.status(vm).await {
                out.push((vm.clone(), st));
            }
        }
        Ok(out)
    }
    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, AgentError>;
    /// Graceful stop: ask, wait up to `timeout`, then force.
    async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, AgentError>;
    /// Forced stop.
    async fn stop(&self, vm: &str) -> Result<VmStatus, AgentError>;
    /// Create missing disk images (sparse raw files, or empty qcow2).
    async fn provision_disks(&self, spec: &VmSpec) -> Result<(), AgentError>;
    /// Which disks of `spec` are missing on this host.
    async fn missing_disks(&self, spec: &VmSpec) -> Result<Vec<DiskSpec>, AgentError>;
    /// Live migration, destination half 1: make `spec`'s disks (none may
    /// exist) and wait for the VM on `listen` ([`standby_hv::Driver::migrate_in_prepare`]).
    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, AgentError>;
    /// Live migration, source half: copy the running VM to `target`; on
    /// success it is paused here, whole ([`standby_hv::Driver::migrate_out`]).
    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, AgentError>;
    /// Live migration, destination half 2: resume the VM here.
    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, AgentError>;
    /// Live migration given up: remove the destination's VM and disks.
    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), AgentError>;
    /// Live migration, source half 2: stop the source (`moved`) or resume it.
    async fn migrate_out_confirm(&self, spec: &VmSpec, moved: bool)
    -> Result<VmStatus, AgentError>;
    /// Take a point of the VM into `store`.
    async fn take_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        req: PointRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<(Manifest, PointStats), AgentError>;
    /// Write every disk of `point` to this host's disk paths for the VM:
    /// all disks or none.
    async fn restore_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        point: &PointId,
        onto: crate::wire::Onto,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError>;
    /// Write every disk of template `template` to this host's disk paths
    /// for the new VM of `spec` (sparse, all disks or none).
    async fn restore_template(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        template: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<crate::wire::RestoreDone, AgentError>;
    /// Stop what runs here for a fenced site. `vms` are the VMs to look
    /// at (an in-process host stops every one of them that runs; a remote
    /// agent fences itself and stops everything it runs), `placed` those
    /// placed on this host (reported even when already stopped).
    async fn fence(
        &self,
        reason: &str,
        vms: &[String],
        placed: &[String],
    ) -> Result<Vec<FencedVm>, AgentError>;
    /// Lift the fence where the host keeps one: `None` when there is
    /// nothing to tell (an in-process host), else the outcome.
    async fn unfence(&self) -> Option<Result<(), AgentError>>;
    /// Restore `req.point` from `store` into a drill directory of this
    /// host and boot the copy in the drill's own namespace
    /// ([`crate::drill`]). Repeatable: a running drill is returned as is.
    async fn drill_start(
        &self,
        req: DrillRequest,
        store: &StoreRef<'_>,
        progress: Arc<dyn Progress>,
    ) -> Result<DrillState, AgentError>;
    /// Probe drill `id`'s copy from inside its namespace until `check`
    /// passes or `timeout` (at least the copy's boot allowance) runs out.
    async fn drill_probe(
        &self,
        id: &str,
        check: ProbeCheck,
        timeout: Duration,
    ) -> Result<DrillProbed, AgentError>;
    /// Tear drill `id` down and verify nothing of it is left.
    async fn drill_stop(&self, id: &str) -> Result<DrillStopped, AgentError>;
}
