use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use standby_types::api::VmView;

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Every VM with its site, state and newest point.
    List,
    /// One VM in detail.
    Status { name: String },
    /// Start a VM where it is active (blank disks are created on first start at home).
    Start { name: String },
    /// Graceful shutdown: SIGTERM (or ACPI), then a forced stop after the timeout.
    Shutdown {
        name: String,
        /// Seconds before the forced stop (default: the VM's shutdown_timeout).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Forced stop.
    Stop { name: String },
}

pub async fn run(ctx: &Ctx, cmd: &VmCmd) -> Result<()> {
    let c = &ctx.client;
    let one = match cmd {
        VmCmd::List => {
            let vms: Vec<VmView> = c.get("/api/v1/vms").await?;
            if ctx.json {
                output::json(&vms);
            } else {
                print_table(vms);
            }
            return Ok(());
        }
        VmCmd::Status { name } => c.get::<VmView>(&format!("/api/v1/vms/{name}")).await?,
        VmCmd::Start { name } => {
            c.post(&format!("/api/v1/vms/{name}/start"), &json!({}))
                .await?
        }
        VmCmd::Shutdown { name, timeout } => {
            c.post(
                &format!("/api/v1/vms/{name}/shutdown"),
                &json!({"timeout_secs": timeout}),
            )
            .await?
        }
        VmCmd::Stop { name } => {
            c.post(&format!("/api/v1/vms/{name}/stop"), &json!({}))
                .await?
        }
    };
    if ctx.json {
        output::json(&one);
    } else {
        print_table(vec![one]);
    }
    Ok(())
}

fn print_table(vms: Vec<VmView>) {
    output::table(
        &[
            "VM",
            "STATE",
            "ACTIVE SITE",
            "HOST",
            "HOME",
            "DR SITE",
            "GROUPS",
            "NEWEST POINT",
        ],
        vms.into_iter()
            .map(|v| {
                let state = match (&v.pid, &v.exit) {
                    (Some(pid), _) => format!("{} (pid {pid})", v.state),
                    (None, Some(exit)) => format!("{} ({exit})", v.state),
                    _ => v.state.clone(),
                };
                vec![
                    v.record.name,
                    state,
                    v.record.active_site,
                    v.record.active_host,
                    v.record.home_site,
                    v.record.dr_site.unwrap_or_else(|| "-".into()),
                    v.groups.join(", "),
                    v.last_point
                        .map(|p| format!("{} ({})", p.id, output::age(p.time)))
                        .unwrap_or_else(|| "none".into()),
                ]
            })
            .collect(),
    );
}
