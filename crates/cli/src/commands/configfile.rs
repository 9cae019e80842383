//! `standby config check [FILE]`: a configuration checked as the controller
//! would load it (the file, then the rule and runbook files it names), each
//! error with its file, line and field; then what it changes against the
//! running controller (`GET /api/v1/config`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use standby_types::api::ConfigReloaded;
use standby_types::config::{self, Config, diff};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file offline (default: --config), then show
    /// what would change against the running controller.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
    /// Have the controller read its configuration file again and apply
    /// it without a restart (as SIGHUP does); refused whole, with the
    /// reason, when a change needs a restart or would strand a VM.
    Reload,
    /// Print the protection groups made through the API and the portal
    /// as standby.toml tables (to keep in version control, or move into
    /// the file).
    Export,
}

pub async fn run(ctx: &Ctx, cmd: &ConfigCmd, default: &Path) -> Result<()> {
    match cmd {
        ConfigCmd::Check { file } => check(ctx, file.as_deref().unwrap_or(default)).await,
        ConfigCmd::Reload => reload(ctx).await,
        ConfigCmd::Export => {
            print!("{}", ctx.client.get_text("/api/v1/config/export").await?);
            Ok(())
        }
    }
}

async fn check(ctx: &Ctx, file: &Path) -> Result<()> {
    let cfg = Config::load(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let checked = standby_engine::check(&cfg);
    if !checked.problems.is_empty() {
        for p in &checked.problems {
            eprintln!("{p}");
        }
        bail!(
            "{}: {} problem(s) in the files it names",
            file.display(),
            checked.problems.len()
        );
    }
    let counts = format!(
        "{} sites, {} hosts, {} VMs, {} groups, {} datastores, {} rules, {} runbook files",
        cfg.sites.len(),
        cfg.hosts.len(),
        cfg.vms.len(),
        cfg.groups.len(),
        cfg.datastores.len(),
        checked.rules,
        checked.runbooks
    );
    // The running controller's, when it answers.
    let running: Result<Value> = ctx.client.get("/api/v1/config").await;
    let new = config::redacted(&cfg);
    let changes: Option<Vec<String>> = running.as_ref().ok().map(|r| {
        diff::changes(r, &new)
            .iter()
            .map(|c| match diff::restart_reason(c, r, &new) {
                None => format!("{} (reload applies it)", c.text),
                Some(why) => format!("{} (needs a restart: {why})", c.text),
            })
            .collect()
    });
    if ctx.json {
        output::json(&json!({
            "file": file,
            "ok": true,
            "counts": counts,
            "controller": ctx.client.base(),
            "changes": changes,
            "unreachable": running.as_ref().err().map(|e| format!("{e:#}")),
        }));
        return Ok(());
    }
    println!("ok: {}: {counts}", file.display());
    match (changes, running) {
        (Some(c), _) if c.is_empty() => println!(
            "no change against the running controller ({})",
            ctx.client.base()
        ),
        (Some(c), _) => {
            println!("against the running controller ({}):", ctx.client.base());
            for line in &c {
                println!("  {line}");
            }
            if c.iter().any(|l| l.contains("needs a restart")) {
                println!(
                    "restart the controller to apply (VMs keep running across a restart); `standby config reload` refuses this file"
                );
            } else {
                println!("apply with `standby config reload` (or SIGHUP), no restart needed");
            }
        }
        (None, Err(e)) => println!("checked offline only: {e:#}"),
        (None, Ok(_)) => {}
    }
    Ok(())
}

/// `standby config reload`.
async fn reload(ctx: &Ctx) -> Result<()> {
    let r: ConfigReloaded = ctx.client.post("/api/v1/config/reload", &json!({})).await?;
    if ctx.json {
        output::json(&r);
        return Ok(());
    }
    if r.changes.is_empty() {
        println!("reloaded: no change ({} ms)", r.took_ms);
    } else {
        println!("reloaded in {} ms:", r.took_ms);
        for line in &r.changes {
            println!("  {line}");
        }
    }
    Ok(())
}
