use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};
use standby_types::api::JobRef;
use standby_types::model::GroupRecord;
use standby_types::outcome::{GroupProtected, PointsCreated};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum ProtectCmd {
    /// Take a point of every member of GROUP now, sync it and apply retention.
    Run {
        group: String,
        /// Print the job id and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// Protection groups and their schedule.
    List,
}

pub async fn run(ctx: &Ctx, cmd: &ProtectCmd) -> Result<()> {
    match cmd {
        ProtectCmd::Run { group, no_wait } => {
            let job: JobRef = ctx
                .client
                .post(&format!("/api/v1/groups/{group}/run"), &json!({}))
                .await?;
            if *no_wait {
                if ctx.json {
                    output::json(&job);
                } else {
                    println!("job {}", job.job);
                }
                return Ok(());
            }
            let done = ctx.client.wait_job(job, !ctx.json).await?;
            let run = points_of(ctx, group, done.id).await?;
            if ctx.json {
                output::json(&run);
                return Ok(());
            }
            output::table(
                &[
                    "VM",
                    "POINT",
                    "DATASTORE",
                    "READ",
                    "NEW (STORED)",
                    "TIME",
                    "COPIED TO",
                ],
                run.vms
                    .iter()
                    .map(|v| {
                        vec![
                            v.vm.clone(),
                            v.point.clone(),
                            v.datastore.clone(),
                            output::bytes(v.bytes_read),
                            output::bytes(v.bytes_new),
                            format!(
                                "{:.2}s ({}/s)",
                                v.seconds,
                                output::bytes((v.bytes_read as f64 / v.seconds.max(1e-3)) as u64)
                            ),
                            v.synced
                                .iter()
                                .map(|s| s.datastore.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ]
                    })
                    .collect(),
            );
        }
        ProtectCmd::List => {
            let groups: Vec<GroupRecord> = ctx.client.get("/api/v1/groups").await?;
            if ctx.json {
                output::json(&groups);
                return Ok(());
            }
            output::table(
                &[
                    "GROUP",
                    "MEMBERS",
                    "SCHEDULE",
                    "DATASTORES",
                    "LAST RUN",
                    "NEXT RUN",
                ],
                groups
                    .into_iter()
                    .map(|g| {
                        vec![
                            g.name,
                            g.members.join(", "),
                            g.schedule,
                            g.datastores.join(" → "),
                            match (g.last_run, g.last_status) {
                                (Some(t), Some(s)) => format!("{s} {}", output::age(t)),
                                _ => "never".into(),
                            },
                            g.next_run
                                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

/// What protection run `job` did: a run is a job of the `protect`
/// runbook, and its `point.create` steps say which point each member got.
async fn points_of(ctx: &Ctx, group: &str, job: i64) -> Result<GroupProtected> {
    let v: Value = ctx.client.get(&format!("/api/v1/jobs/{job}/steps")).await?;
    let mut vms = Vec::new();
    for s in v["steps"].as_array().into_iter().flatten() {
        if s["state"] != "succeeded" {
            continue;
        }
        // The point steps' outputs; the others are not points.
        if let Ok(created) = serde_json::from_value::<PointsCreated>(s["output"].clone()) {
            vms.extend(created.points);
        }
    }
    Ok(GroupProtected {
        group: group.to_string(),
        vms,
    })
}
