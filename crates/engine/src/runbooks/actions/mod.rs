//! The action catalog's implementations (the table itself, with inputs
//! and outputs, is `standby_runbook::catalog`). Every action may run twice
//! for one step execution (a retry, or a job resumed after a crash), so
//! each checks the world first or returns what it recorded while it ran
//! ([`ActionCtx::record`]).
//!
//! # Layout
//! - `context.rs`: [`ActionCtx`] and the configuration lookups the actions
//!   share.
//! - `mod.rs`: [`run`], the dispatch from an action's name to its code
//!   (the small ones are here).
//! - `vm.rs`: `vm.list`; `point.rs`: `point.*`; `probe.rs`: `probe.wait`;
//!   `incident.rs`: `incident.*` and `notify`; `drill.rs`: `drill.*`;
//!   `misc.rs`: `http` and `shell`.

mod context;
mod drill;
mod incident;
mod misc;
mod point;
mod probe;
mod vm;

pub use context::ActionCtx;
pub use point::point_latest;

use serde_json::{Value, json};

use crate::error::EngineError;
use drill::{drill_probe, drill_report, drill_start};
use incident::{incident_note, incident_open, incident_resolve, notify};
use misc::{http, shell};
use point::{point_create, point_restore};
use probe::probe_wait;
use vm::vm_list;

/// Run action `name` with the rendered input of `ctx`.
pub async fn run(ctx: &ActionCtx, name: &str) -> Result<Value, EngineError> {
    match name {
        "vm.list" => vm_list(ctx).await,
        "vm.start" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::start(&ctx.ctl, &vm).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "vm.shutdown" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::shutdown(&ctx.ctl, &vm, ctx.opt_duration("timeout")?).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "vm.stop" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::stop(&ctx.ctl, &vm).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "point.create" => point_create(ctx).await,
        "point.latest" => {
            let vm = ctx.str("vm")?;
            point_latest(&ctx.ctl, &vm, ctx.opt_str("site")?.as_deref()).await
        }
        "point.restore" => point_restore(ctx).await,
        "site.fence" => {
            ctx.ctl
                .fence_site(&ctx.str("site")?, &ctx.str("reason")?)
                .await
        }
        "site.unfence" => ctx.ctl.unfence_site(&ctx.str("site")?).await,
        "traffic.switch" => {
            ctx.ctl
                .switch_traffic(&ctx.str("service")?, &ctx.str("site")?)
                .await
        }
        "probe.wait" => probe_wait(ctx).await,
        "drill.start" => drill_start(ctx).await,
        "drill.probe" => drill_probe(ctx).await,
        "drill.stop" => crate::drill::stop(&ctx.ctl, &ctx.str("id")?).await,
        "drill.report" => drill_report(ctx).await,
        "incident.open" => incident_open(ctx).await,
        "incident.note" => incident_note(ctx).await,
        "incident.resolve" => incident_resolve(ctx).await,
        "notify" => notify(ctx).await,
        "http" => http(ctx).await,
        "shell" => shell(ctx).await,
        "sleep" => {
            let d = ctx
                .opt_duration("duration")?
                .ok_or_else(|| EngineError::BadRequest("input 'duration' is required".into()))?;
            tokio::time::sleep(d).await;
            Ok(json!({ "seconds": d.as_secs_f64() }))
        }
        other => Err(EngineError::BadRequest(format!("unknown action '{other}'"))),
    }
}
