use anyhow::Result;
use clap::Subcommand;
use standby_types::api::SiteView;

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Sites with their hosts, datastores and active VMs.
    List,
}

pub async fn run(ctx: &Ctx, cmd: &SiteCmd) -> Result<()> {
    match cmd {
        SiteCmd::List => {
            let sites: Vec<SiteView> = ctx.client.get("/api/v1/sites").await?;
            if ctx.json {
                output::json(&sites);
                return Ok(());
            }
            output::table(
                &["SITE", "DESCRIPTION", "HOSTS", "DATASTORES", "ACTIVE VMS"],
                sites
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.name,
                            s.description,
                            s.hosts.join(", "),
                            s.datastores.join(", "),
                            s.vms.join(", "),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
