use anyhow::Result;
use clap::Subcommand;
use standby_types::model::Job;

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Recent jobs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One job with its result.
    Show { id: i64 },
}

pub async fn run(ctx: &Ctx, cmd: &JobsCmd) -> Result<()> {
    let jobs: Vec<Job> = match cmd {
        JobsCmd::List { limit } => {
            ctx.client
                .get(&format!("/api/v1/jobs?limit={limit}"))
                .await?
        }
        JobsCmd::Show { id } => {
            let j: Job = ctx.client.get(&format!("/api/v1/jobs/{id}")).await?;
            if !ctx.json {
                output::json(&j);
                return Ok(());
            }
            vec![j]
        }
    };
    if ctx.json {
        output::json(&jobs);
        return Ok(());
    }
    output::table(
        &[
            "JOB",
            "KIND",
            "TARGET",
            "STATUS",
            "PROGRESS",
            "CREATED",
            "MESSAGE / ERROR",
        ],
        jobs.into_iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.kind,
                    j.target,
                    j.status.as_str().to_string(),
                    if j.progress_total > 0 {
                        format!(
                            "{}/{}",
                            output::bytes(j.progress_done),
                            output::bytes(j.progress_total)
                        )
                    } else {
                        "-".into()
                    },
                    output::age(j.created_at),
                    j.error.unwrap_or(j.message),
                ]
            })
            .collect(),
    );
    Ok(())
}
