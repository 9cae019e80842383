//! `standby config check [FILE]`: a configuration checked as the controller
//! would load it (the file, then the rule and runbook files it names), each
//! error with its file, line and field; then what it changes against the
//! running controller (`GET /api/v1/config`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use standby_types::config::{self, Config};

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
}

pub async fn run(ctx: &Ctx, cmd: &ConfigCmd, default: &Path) -> Result<()> {
    match cmd {
        ConfigCmd::Check { file } => check(ctx, file.as_deref().unwrap_or(default)).await,
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
    let changes = running
        .as_ref()
        .ok()
        .map(|r| diff(r, &config::redacted(&cfg)));
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
            println!("the controller reads its configuration at start: restart it to apply");
        }
        (None, Err(e)) => println!("checked offline only: {e:#}"),
        (None, Ok(_)) => {}
    }
    Ok(())
}

/// One line per change from `running` to `new`: sections of named entries
/// (sites, hosts, VMs, ...) entry by entry, other sections field by field.
fn diff(running: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let (r, n) = (
        running.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = r.keys().chain(n.keys()).collect();
    for k in keys {
        let (a, b) = (
            r.get(k).unwrap_or(&Value::Null),
            n.get(k).unwrap_or(&Value::Null),
        );
        if a == b {
            continue;
        }
        if is_entries(a) && is_entries(b) {
            let (ea, eb) = (
                a.as_object().unwrap_or(&empty),
                b.as_object().unwrap_or(&empty),
            );
            let names: BTreeSet<&String> = ea.keys().chain(eb.keys()).collect();
            let kind = k.trim_end_matches('s');
            for name in names {
                match (ea.get(name), eb.get(name)) {
                    (None, Some(_)) => out.push(format!("{kind} {name}: added")),
                    (Some(_), None) => out.push(format!("{kind} {name}: removed")),
                    (Some(x), Some(y)) if x != y => {
                        out.push(format!("{kind} {name}: changed ({})", fields(x, y)))
                    }
                    _ => {}
                }
            }
        } else {
            out.push(format!("{k}: changed ({})", fields(a, b)));
        }
    }
    out
}

/// A table of named entries: an object whose values are all objects.
fn is_entries(v: &Value) -> bool {
    v.is_null()
        || v.as_object()
            .is_some_and(|m| m.values().all(Value::is_object))
}

/// The names of the fields that differ, or `value`.
fn fields(a: &Value, b: &Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        }
        _ => "value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_entry_and_field() {
        let running = json!({
            "controller": {"listen": "a", "data_dir": "d"},
            "vms": {"pbx1": {"host": "h1", "args": ["x"]}},
            "groups": {"gold": {"schedule": "every 1h", "members": ["pbx1"]}},
            "sites": {"s1": {}},
        });
        let new = json!({
            "controller": {"listen": "b", "data_dir": "d"},
            "vms": {"pbx1": {"host": "h1", "args": ["y"]}, "pbx2": {"host": "h1"}},
            "groups": {},
            "sites": {"s1": {}},
        });
        assert_eq!(
            diff(&running, &new),
            vec![
                "controller: changed (listen)",
                "group gold: removed",
                "vm pbx1: changed (args)",
                "vm pbx2: added",
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
