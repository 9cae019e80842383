use anyhow::Result;
use clap::Subcommand;
use standby_types::api::{FenceRequest, SiteView};
use standby_types::outcome::{SiteFenced, SiteUnfenced};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Sites with their hosts, datastores, active VMs and fence.
    List,
    /// Fence a site: its agents stop every VM there and start none until
    /// it is unfenced. Lets a VM be restored elsewhere while the site is
    /// unreachable.
    Fence {
        name: String,
        /// Why (kept with the fence).
        #[arg(long, default_value = "")]
        reason: String,
        /// Confirm that the site's hosts run nothing any more (powered
        /// off, or cut off for good): a copy may then start elsewhere
        /// without their agents' answer. Say it only when it is certain.
        #[arg(long)]
        confirmed: bool,
    },
    /// Lift a site's fence: VMs may start there again.
    Unfence { name: String },
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
                &[
                    "SITE",
                    "DESCRIPTION",
                    "HOSTS",
                    "DATASTORES",
                    "ACTIVE VMS",
                    "FENCE",
                ],
                sites
                    .into_iter()
                    .map(|s| {
                        let fence = match (s.fenced, s.fenced_since) {
                            (false, _) => "-".to_string(),
                            (true, since) => format!(
                                "fenced since {}{}",
                                since
                                    .map(|t| t.format("%F %T UTC").to_string())
                                    .unwrap_or_default(),
                                s.fence_reason
                                    .filter(|r| !r.is_empty())
                                    .map(|r| format!(": {r}"))
                                    .unwrap_or_default()
                            ),
                        };
                        vec![
                            s.name,
                            s.description,
                            s.hosts.join(", "),
                            s.datastores.join(", "),
                            s.vms.join(", "),
                            fence,
                        ]
                    })
                    .collect(),
            );
        }
        SiteCmd::Fence {
            name,
            reason,
            confirmed,
        } => {
            let r: SiteFenced = ctx
                .client
                .post(
                    &format!("/api/v1/sites/{name}/fence"),
                    &FenceRequest {
                        reason: reason.clone(),
                        confirmed: *confirmed,
                    },
                )
                .await?;
            if ctx.json {
                output::json(&r);
                return Ok(());
            }
            println!("site {name} fenced");
            for h in &r.hosts {
                match (&h.confirmed, h.result.as_str()) {
                    (Some(how), "done") => println!("  {}: runs nothing ({how})", h.host),
                    (Some(how), res) => println!("  {}: {res}; runs nothing ({how})", h.host),
                    (None, res) => println!(
                        "  {}: {res}; not confirmed yet: no copy starts elsewhere until its agent \
                         answers or an operator confirms (--confirmed)",
                        h.host
                    ),
                }
            }
            for v in &r.vms {
                println!("  {} at {}: {}", v.vm, v.host, v.result);
            }
        }
        SiteCmd::Unfence { name } => {
            let r: SiteUnfenced = ctx
                .client
                .post(
                    &format!("/api/v1/sites/{name}/unfence"),
                    &serde_json::json!({}),
                )
                .await?;
            if ctx.json {
                output::json(&r);
                return Ok(());
            }
            if r.was_fenced {
                println!("site {name} unfenced");
            } else {
                println!("site {name} was not fenced");
            }
        }
    }
    Ok(())
}
