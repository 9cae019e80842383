use anyhow::Result;
use clap::Subcommand;
use standby_types::model::PointRecord;

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum PointsCmd {
    /// Recovery points, oldest first, optionally of one VM.
    List { vm: Option<String> },
}

pub async fn run(ctx: &Ctx, cmd: &PointsCmd) -> Result<()> {
    match cmd {
        PointsCmd::List { vm } => {
            let path = match vm {
                Some(vm) => format!("/api/v1/points?vm={vm}"),
                None => "/api/v1/points".to_string(),
            };
            let points: Vec<PointRecord> = ctx.client.get(&path).await?;
            if ctx.json {
                output::json(&points);
                return Ok(());
            }
            output::table(
                &[
                    "POINT",
                    "VM",
                    "SITE",
                    "TIME",
                    "CONSISTENCY",
                    "SIZE",
                    "NEW",
                    "COPIES",
                ],
                points
                    .into_iter()
                    .map(|p| {
                        vec![
                            p.id,
                            p.vm,
                            p.site,
                            format!(
                                "{} ({})",
                                p.time.format("%Y-%m-%d %H:%M:%S%.3f"),
                                output::age(p.time)
                            ),
                            p.consistency,
                            output::bytes(p.size),
                            output::bytes(p.bytes_new),
                            // A copy a verify found damaged is marked.
                            p.copies
                                .iter()
                                .map(|c| match p.damaged.iter().any(|d| d.datastore == *c) {
                                    true => format!("{c} (DAMAGED)"),
                                    false => c.clone(),
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
