use anyhow::Result;
use clap::Args;
use standby_types::api::{JobRef, RestoreRequest};

use super::Ctx;
use crate::output;

#[derive(Args)]
pub struct RestoreArgs {
    /// Point id, e.g. pbx1@20261126T101500.123Z.
    pub point: String,
    /// Site to restore at.
    #[arg(long)]
    pub site: String,
    /// Host at that site (default: the site's first host).
    #[arg(long)]
    pub host: Option<String>,
    /// Datastore to read from (default: the nearest copy).
    #[arg(long)]
    pub from: Option<String>,
    /// Restore the disks but do not start the VM.
    #[arg(long)]
    pub no_start: bool,
}

pub async fn run(ctx: &Ctx, a: &RestoreArgs) -> Result<()> {
    let req = RestoreRequest {
        point: a.point.clone(),
        site: a.site.clone(),
        host: a.host.clone(),
        from: a.from.clone(),
        start: !a.no_start,
    };
    let job: JobRef = ctx.client.post("/api/v1/restore", &req).await?;
    let done = ctx.client.wait_job(job, !ctx.json).await?;
    if ctx.json {
        output::json(&done.result);
        return Ok(());
    }
    let r = &done.result;
    let secs = r["seconds"].as_f64().unwrap_or(0.0);
    println!(
        "restored {} from {} to {} at site {} ({} in {secs:.2}s){}",
        r["point"].as_str().unwrap_or(""),
        r["datastore"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or(""),
        r["site"].as_str().unwrap_or(""),
        output::bytes(r["bytes"].as_u64().unwrap_or(0)),
        if r["started"].as_bool() == Some(true) {
            "; vm started"
        } else {
            ""
        }
    );
    Ok(())
}
