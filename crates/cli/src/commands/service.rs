//! `standby service`: the front door's services and where their clients go.

use anyhow::Result;
use clap::Subcommand;
use standby_types::api::{ServiceView, SwitchRequest, SwitchResult};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Every service with its front-door address, active site and traffic.
    List,
    /// Send a service's clients to another site (idempotent).
    Switch {
        /// The service, as under [services] in standby.toml.
        name: String,
        /// The site to send its clients to.
        site: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: &ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::List => {
            let list: Vec<ServiceView> = ctx.client.get("/api/v1/services").await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &[
                    "SERVICE", "VM", "LISTEN", "ACTIVE", "BACKEND", "SWITCHED", "FLOWS", "CONNS",
                    "TRAFFIC",
                ],
                list.into_iter().map(row).collect(),
            );
        }
        ServiceCmd::Switch { name, site } => {
            let r: SwitchResult = ctx
                .client
                .post(
                    &format!("/api/v1/services/{name}/switch"),
                    &SwitchRequest { site: site.clone() },
                )
                .await?;
            if ctx.json {
                output::json(&r);
            } else if r.previous == r.site {
                println!(
                    "service {} already sends its clients to {}",
                    r.service, r.site
                );
            } else {
                println!(
                    "service {} now sends its clients to {} (was {})",
                    r.service, r.site, r.previous
                );
            }
        }
    }
    Ok(())
}

fn row(s: ServiceView) -> Vec<String> {
    let c = &s.counters;
    let open: u64 = c.sites.values().map(|x| x.connections_active).sum();
    let bytes: u64 = c
        .sites
        .values()
        .map(|x| x.bytes_to_site + x.bytes_to_clients)
        .sum();
    vec![
        s.name,
        s.vm,
        format!("{} ({})", s.listen, s.protocols.join("+")),
        s.active_site.clone(),
        s.backends.get(&s.active_site).cloned().unwrap_or_default(),
        s.switched_at.map(output::age).unwrap_or_else(|| "-".into()),
        c.flows_active.to_string(),
        open.to_string(),
        output::bytes(bytes),
    ]
}
