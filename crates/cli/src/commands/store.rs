use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use standby_types::api::{DatastoreView, JobRef};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Datastores with their size.
    List,
    /// Re-read and re-hash every chunk, index and manifest (or a random
    /// sample of the chunks: --sample 0.05).
    Verify {
        name: String,
        #[arg(long)]
        sample: Option<f64>,
    },
    /// Write a new random key file for an encrypted datastore (mode 0600).
    /// Keep a copy away from the datastore: without it the data is lost.
    Keygen { file: std::path::PathBuf },
    /// Apply the retention of the groups that write to the datastore.
    Prune {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove chunks no point uses; repack mostly-garbage packs.
    Gc {
        name: String,
        /// Leave packs younger than this alone (e.g. 1h, 0s).
        #[arg(long, default_value = "1h")]
        grace: humantime::Duration,
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a datastore made by an older standby to the current format,
    /// in place, on this host (reads --config, opens the store itself):
    /// an unencrypted store of format 1 gets its store key file and a MAC
    /// on every manifest and pack index it holds, after each is checked.
    /// Idempotent; run it again if it was interrupted. Run it once, right
    /// after installing the new release (see docs/upgrade.md).
    Upgrade { name: String },
    /// Copy points to another datastore; only missing chunks move.
    Sync {
        name: String,
        #[arg(long)]
        to: String,
        /// One point (default: every point).
        #[arg(long)]
        point: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: &StoreCmd, config_file: &std::path::Path) -> Result<()> {
    let c = &ctx.client;
    let (path, body) = match cmd {
        StoreCmd::Upgrade { name } => return upgrade(ctx, name, config_file).await,
        StoreCmd::List => {
            let stores: Vec<DatastoreView> = c.get("/api/v1/datastores").await?;
            if ctx.json {
                output::json(&stores);
                return Ok(());
            }
            output::table(
                &[
                    "DATASTORE",
                    "SITE",
                    "POINTS",
                    "PACKS",
                    "CHUNKS",
                    "SIZE",
                    "PATH",
                ],
                stores
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.name,
                            s.site,
                            s.points.to_string(),
                            s.packs.to_string(),
                            s.chunks.to_string(),
                            s.error.unwrap_or_else(|| output::bytes(s.bytes)),
                            s.path,
                        ]
                    })
                    .collect(),
            );
            return Ok(());
        }
        StoreCmd::Verify { name, sample } => (
            format!("/api/v1/datastores/{name}/verify"),
            json!({ "sample": sample }),
        ),
        StoreCmd::Keygen { file } => {
            standby_store::generate_key_file(file)?;
            println!(
                "wrote {}; keep a copy somewhere safe: without it the datastore cannot be read",
                file.display()
            );
            return Ok(());
        }
        StoreCmd::Prune { name, dry_run } => (
            format!("/api/v1/datastores/{name}/prune"),
            json!({"dry_run": dry_run}),
        ),
        StoreCmd::Gc {
            name,
            grace,
            dry_run,
        } => (
            format!("/api/v1/datastores/{name}/gc"),
            json!({"grace_secs": grace.as_secs(), "dry_run": dry_run}),
        ),
        StoreCmd::Sync { name, to, point } => (
            format!("/api/v1/datastores/{name}/sync"),
            json!({"to": to, "point": point}),
        ),
    };
    let job: JobRef = c.post(&path, &body).await?;
    let done = c.wait_job(job, !ctx.json).await?;
    if ctx.json {
        output::json(&done.result);
        return Ok(());
    }
    let r = &done.result;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let list = |k: &str| r[k].as_array().map(|a| a.len()).unwrap_or(0);
    match cmd {
        StoreCmd::Verify { name, .. } => println!(
            "{name}: ok: {} point(s), {} chunk(s), {} checked{}",
            n("points_checked"),
            n("chunks_checked"),
            output::bytes(n("bytes_checked")),
            match r["sample_fraction"].as_f64() {
                Some(f) => format!(" (a random {:.1} % of the chunks)", f * 100.0),
                None => String::new(),
            }
        ),
        StoreCmd::Prune { name, dry_run } => println!(
            "{name}: {} {} point(s), kept {}",
            if *dry_run { "would remove" } else { "removed" },
            list("removed"),
            list("kept")
        ),
        StoreCmd::Gc { name, .. } => println!(
            "{name}: {} pack(s) deleted, {} repacked, {} chunk(s) removed, {} freed, {} pack(s) in grace",
            n("packs_deleted"),
            n("packs_repacked"),
            n("chunks_removed"),
            output::bytes(n("bytes_freed")),
            n("packs_skipped_grace")
        ),
        StoreCmd::Sync { name, to, .. } => println!(
            "{name} → {to}: {} point(s), {} chunk(s) copied ({})",
            list("points"),
            n("chunks_copied"),
            output::bytes(n("bytes_copied"))
        ),
        StoreCmd::List | StoreCmd::Keygen { .. } | StoreCmd::Upgrade { .. } => {}
    }
    Ok(())
}

/// `standby store upgrade NAME`: offline, on the host that reaches the
/// store, with the keys its configuration names.
async fn upgrade(ctx: &Ctx, name: &str, config_file: &std::path::Path) -> Result<()> {
    let cfg =
        standby_types::config::Config::load(config_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = cfg
        .datastores
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("no datastore {name} in {}", config_file.display()))?
        .clone();
    let location = store.location();
    let (n, s) = (name.to_string(), store);
    let report = tokio::task::spawn_blocking(move || standby_agent::stores::upgrade(&n, &s))
        .await?
        .map_err(|e| anyhow::anyhow!(standby_types::error_chain(&e)))
        .with_context(|| format!("unable to upgrade datastore {name} at {location}"))?;
    if ctx.json {
        output::json(&report);
        return Ok(());
    }
    if report.already_upgraded {
        println!("{name}: already of the current format; nothing to do");
        return Ok(());
    }
    println!(
        "{name}: upgraded: {} manifest(s) and {} pack index(es) signed ({} and {} were already)",
        report.manifests_signed, report.indexes_signed, report.manifests_kept, report.indexes_kept
    );
    if let Some(key) = &report.store_key_file {
        println!(
            "store key: {key}; keep a copy away from the datastore: without it no point of {name} is trusted"
        );
    }
    for (object, reason) in &report.skipped {
        eprintln!("{name}: left unsigned (refused from now on): {object}: {reason}");
    }
    Ok(())
}
