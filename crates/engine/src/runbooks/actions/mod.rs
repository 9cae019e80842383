//! The action catalog's implementations: [`Perform`] for each typed input
//! of `standby_runbook::catalog` (which generates the table of inputs and
//! outputs from the same types). Every action may run twice
//! for one step execution (a retry, or a job resumed after a crash), so
//! each checks the world first or returns what it recorded while it ran
//! ([`ActionCtx::record`]).
//!
//! # Layout
//! - `context.rs`: [`ActionCtx`] and the configuration lookups the actions
//!   share.
//! - `mod.rs`: [`run`], the dispatch from an action's name to its code
//!   (the small ones are here).
//! - `vm.rs`: `vm.list`; `restart.rs`: `vm.restart`; `migrate.rs`: `vm.migrate`; `point.rs`: `point.*`; `probe.rs`: `probe.wait`;
//!   `incident.rs`: `incident.*` and `notify`; `drill.rs`: `drill.*`;
//!   `misc.rs`: `http` and `shell`.

mod context;
mod drill;
mod incident;
mod migrate;
mod misc;
mod point;
mod probe;
mod restart;
mod tiers;
mod vm;

pub use context::ActionCtx;
pub use point::point_latest;

use serde::Serialize;
use serde_json::Value;
use standby_runbook::catalog::*;
use standby_types::outcome::{Slept, VmChanged};

use crate::error::EngineError;

/// What an action does with its typed input. Each action's output type is
/// its catalog's ([`Action::Output`]).
pub(crate) trait Perform: Action {
    async fn perform(self, ctx: &ActionCtx) -> Result<Self::Output, EngineError>;
}

/// Run action `name` with the rendered input of `ctx`: its input parsed
/// into the action's type (a bad one is a clear error naming the field),
/// its output recorded as JSON.
pub async fn run(ctx: &ActionCtx, name: &str) -> Result<Value, EngineError> {
    let call = Call::parse(name, &ctx.input).map_err(|e| EngineError::BadRequest(e.to_string()))?;
    // One arm per action of the catalog: the compiler sees that none is
    // missing.
    match call {
        Call::VmList(a) => output(a.perform(ctx).await?),
        Call::VmStart(a) => output(a.perform(ctx).await?),
        Call::VmShutdown(a) => output(a.perform(ctx).await?),
        Call::VmStop(a) => output(a.perform(ctx).await?),
        Call::VmRestart(a) => output(a.perform(ctx).await?),
        Call::VmMigrate(a) => output(a.perform(ctx).await?),
        Call::PointCreate(a) => output(a.perform(ctx).await?),
        Call::PointLatest(a) => output(a.perform(ctx).await?),
        Call::PointRestore(a) => output(a.perform(ctx).await?),
        Call::SiteFence(a) => output(a.perform(ctx).await?),
        Call::SiteUnfence(a) => output(a.perform(ctx).await?),
        Call::TrafficSwitch(a) => output(a.perform(ctx).await?),
        Call::ProbeWait(a) => output(a.perform(ctx).await?),
        Call::DrillStart(a) => output(a.perform(ctx).await?),
        Call::DrillProbe(a) => output(a.perform(ctx).await?),
        Call::DrillStop(a) => output(a.perform(ctx).await?),
        Call::DrillReportOf(a) => output(a.perform(ctx).await?),
        Call::IncidentOpen(a) => output(a.perform(ctx).await?),
        Call::IncidentNote(a) => output(a.perform(ctx).await?),
        Call::IncidentResolve(a) => output(a.perform(ctx).await?),
        Call::Notify(a) => output(a.perform(ctx).await?),
        Call::Http(a) => output(a.perform(ctx).await?),
        Call::Shell(a) => output(a.perform(ctx).await?),
        Call::Sleep(a) => output(a.perform(ctx).await?),
    }
}

fn output<T: Serialize>(out: T) -> Result<Value, EngineError> {
    serde_json::to_value(out)
        .map_err(|e| EngineError::Internal(format!("unable to record the output: {e}")))
}

impl Perform for VmStart {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmChanged, EngineError> {
        let st = crate::vms::start(&ctx.ctl, self.vm.as_str()).await?;
        Ok(VmChanged {
            vm: self.vm.into(),
            state: st.state.to_string(),
        })
    }
}

impl Perform for VmShutdown {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmChanged, EngineError> {
        let st =
            crate::vms::shutdown(&ctx.ctl, self.vm.as_str(), self.timeout.map(|t| t.0)).await?;
        Ok(VmChanged {
            vm: self.vm.into(),
            state: st.state.to_string(),
        })
    }
}

impl Perform for VmStop {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmChanged, EngineError> {
        let st = crate::vms::stop(&ctx.ctl, self.vm.as_str()).await?;
        Ok(VmChanged {
            vm: self.vm.into(),
            state: st.state.to_string(),
        })
    }
}

impl Perform for SiteFence {
    async fn perform(self, ctx: &ActionCtx) -> Result<Self::Output, EngineError> {
        ctx.ctl
            .fence_site(self.site.as_str(), self.reason.as_str())
            .await
    }
}

impl Perform for SiteUnfence {
    async fn perform(self, ctx: &ActionCtx) -> Result<Self::Output, EngineError> {
        ctx.ctl.unfence_site(self.site.as_str()).await
    }
}

impl Perform for TrafficSwitch {
    async fn perform(self, ctx: &ActionCtx) -> Result<Self::Output, EngineError> {
        ctx.ctl
            .switch_traffic(self.service.as_str(), self.site.as_str())
            .await
    }
}

impl Perform for DrillStop {
    async fn perform(self, ctx: &ActionCtx) -> Result<Self::Output, EngineError> {
        crate::drill::stop(&ctx.ctl, self.id.as_str()).await
    }
}

impl Perform for Sleep {
    async fn perform(self, _: &ActionCtx) -> Result<Slept, EngineError> {
        tokio::time::sleep(self.duration.0).await;
        Ok(Slept {
            seconds: self.duration.0.as_secs_f64(),
        })
    }
}
