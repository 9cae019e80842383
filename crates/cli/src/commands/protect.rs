use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};
use standby_types::api::JobRef;
use standby_types::model::GroupRecord;

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
            let vms = run["vms"].as_array().cloned().unwrap_or_default();
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
                vms.iter()
                    .map(|v| {
                        let secs = v["seconds"].as_f64().unwrap_or(0.0);
                        let read = v["bytes_read"].as_u64().unwrap_or(0);
                        vec![
                            v["vm"].as_str().unwrap_or("").to_string(),
                            v["point"].as_str().unwrap_or("").to_string(),
                            v["datastore"].as_str().unwrap_or("").to_string(),
                            output::bytes(read),
                            output::bytes(v["bytes_new"].as_u64().unwrap_or(0)),
                            format!(
                                "{secs:.2}s ({}/s)",
                                output::bytes((read as f64 / secs.max(1e-3)) as u64)
                            ),
                            v["synced"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|s| s["datastore"].as_str().unwrap_or("").to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                })
                                .unwrap_or_default(),
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

/// What protection run `job` did, `{group, vms}`: a run is a job of the
/// `protect` runbook, and its `point.create` steps say which point each
/// member got (`vms`: their `points`).
async fn points_of(ctx: &Ctx, group: &str, job: i64) -> Result<Value> {
    let v: Value = ctx.client.get(&format!("/api/v1/jobs/{job}/steps")).await?;
    let vms: Vec<Value> = v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "succeeded")
        .filter_map(|s| s["output"]["points"].as_array())
        .flatten()
        .cloned()
        .collect();
    Ok(json!({ "group": group, "vms": vms }))
}
