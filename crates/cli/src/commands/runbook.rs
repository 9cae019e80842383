//! `standby runbook`: list, show, validate, schema, actions, run, steps.
//! `validate`, `schema` and `actions` work without a controller.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum RunbookCmd {
    /// Loaded runbooks (built-in and configured), broken files and held locks.
    List,
    /// One runbook: its file and text.
    Show { name: String },
    /// Check a runbook file: shape, actions and inputs, templates, references.
    Validate { file: PathBuf },
    /// Print the JSON Schema of the runbook format.
    Schema,
    /// The action catalog with inputs, outputs and idempotency.
    Actions,
    /// Run a runbook by hand.
    Run {
        name: String,
        /// A parameter, `key=value` (repeatable); JSON values for lists,
        /// maps and numbers.
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        /// Print the plan and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Show step progress until the job ends; fail if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// The steps of a runbook job.
    Steps { job: i64 },
}

pub async fn run(ctx: &Ctx, cmd: &RunbookCmd) -> Result<()> {
    match cmd {
        RunbookCmd::Validate { file } => validate(ctx, file),
        RunbookCmd::Schema => {
            output::json(&standby_runbook::schema());
            Ok(())
        }
        RunbookCmd::Actions => {
            if ctx.json {
                output::json(&standby_runbook::actions());
            } else {
                print!("{}", standby_runbook::catalog::describe());
            }
            Ok(())
        }
        RunbookCmd::List => {
            let v: Value = ctx.client.get("/api/v1/runbooks").await?;
            if ctx.json {
                output::json(&v);
                return Ok(());
            }
            let rows = v["runbooks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        r["name"].as_str().unwrap_or("").to_string(),
                        triggers(&r["trigger"]),
                        r["steps"].to_string(),
                        r["file"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            output::table(&["RUNBOOK", "TRIGGERS", "STEPS", "FILE"], rows);
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("error: {}", e.as_str().unwrap_or_default());
            }
            Ok(())
        }
        RunbookCmd::Show { name } => {
            let v: Value = ctx.client.get(&format!("/api/v1/runbooks/{name}")).await?;
            if ctx.json {
                output::json(&v);
            } else {
                println!("# {}", v["file"].as_str().unwrap_or_default());
                print!("{}", v["source"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        RunbookCmd::Run {
            name,
            params,
            dry_run,
            wait,
        } => {
            let mut p = Map::new();
            for kv in params {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--param '{kv}' is not key=value"))?;
                p.insert(k.to_string(), Value::String(v.to_string()));
            }
            let body = json!({ "params": p, "dry_run": dry_run });
            let v: Value = ctx
                .client
                .post(&format!("/api/v1/runbooks/{name}/run"), &body)
                .await?;
            if *dry_run {
                if ctx.json {
                    output::json(&v["plan"]);
                } else {
                    print!("{}", v["text"].as_str().unwrap_or_default());
                }
                return Ok(());
            }
            let job = v["job"]
                .as_i64()
                .ok_or_else(|| anyhow!("the controller answered no job: {v}"))?;
            if !*wait {
                if ctx.json {
                    output::json(&v);
                } else {
                    println!("job {job} started");
                }
                return Ok(());
            }
            wait_steps(ctx, job).await
        }
        RunbookCmd::Steps { job } => {
            let v: Value = ctx.client.get(&format!("/api/v1/jobs/{job}/steps")).await?;
            if ctx.json {
                output::json(&v);
            } else {
                print_steps(&v);
            }
            Ok(())
        }
    }
}

fn triggers(t: &Value) -> String {
    let mut v = Vec::new();
    if t["alert"].is_object() {
        v.push(format!(
            "alert {}",
            t["alert"]["alertname"].as_str().unwrap_or("*")
        ));
    }
    if t["schedule"]["groups"] == true {
        v.push("schedule (groups)".to_string());
    } else if let Some(c) = t["schedule"]["cron"].as_str() {
        v.push(format!("cron {c}"));
    }
    if t["manual"] == true {
        v.push("manual".into());
    }
    if t["webhook"].is_object() {
        v.push("webhook".into());
    }
    v.join(", ")
}

fn validate(ctx: &Ctx, file: &PathBuf) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("unable to read {}", file.display()))?;
    match standby_runbook::parse(&file.display().to_string(), &text) {
        Ok(rb) => {
            if ctx.json {
                output::json(&json!({ "valid": true, "name": rb.name, "steps": rb.steps.len() }));
            } else {
                println!("{}: ok ({} steps)", file.display(), rb.steps.len());
            }
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}

fn print_steps(v: &Value) {
    let rows = v["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let item = s["item"].as_i64().unwrap_or(-1);
            vec![
                if item >= 0 {
                    format!("{}[{item}]", s["step"].as_str().unwrap_or(""))
                } else {
                    s["step"].as_str().unwrap_or("").to_string()
                },
                s["state"].as_str().unwrap_or("").to_string(),
                s["attempt"].to_string(),
                s["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| short(&s["output"])),
            ]
        })
        .collect();
    output::table(&["STEP", "STATE", "ATTEMPT", "OUTPUT / ERROR"], rows);
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 100 {
        format!("{}…", &s[..s.floor_char_boundary(100)])
    } else {
        s
    }
}

/// Print each step as it changes until the job ends.
async fn wait_steps(ctx: &Ctx, job: i64) -> Result<()> {
    let mut seen: std::collections::BTreeMap<(String, i64), String> = Default::default();
    loop {
        let v: Value = ctx.client.get(&format!("/api/v1/jobs/{job}/steps")).await?;
        for s in v["steps"].as_array().into_iter().flatten() {
            let key = (
                s["step"].as_str().unwrap_or("").to_string(),
                s["item"].as_i64().unwrap_or(-1),
            );
            let state = s["state"].as_str().unwrap_or("").to_string();
            if seen.get(&key) != Some(&state) {
                if !ctx.json {
                    let which = if key.1 >= 0 {
                        format!("{}[{}]", key.0, key.1)
                    } else {
                        key.0.clone()
                    };
                    match s["error"].as_str() {
                        Some(e) => eprintln!("{which}: {state}: {e}"),
                        None => eprintln!("{which}: {state}"),
                    }
                }
                seen.insert(key, state);
            }
        }
        let status = v["job"]["status"].as_str().unwrap_or("");
        if matches!(status, "succeeded" | "failed") {
            if ctx.json {
                output::json(&v);
            }
            if status == "failed" {
                bail!(
                    "runbook job {job} failed: {}",
                    v["job"]["error"].as_str().unwrap_or_default()
                );
            }
            if !ctx.json {
                println!("job {job} succeeded");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
