//! `drill.start`, `drill.probe` and `drill.report`.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use standby_types::watch::{ProbeCheck, Severity};

use super::context::{ActionCtx, service_check, services_of};
use crate::error::EngineError;

pub(super) async fn drill_start(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let progress = std::sync::Arc::new(crate::jobs::JobProgress::default());
    let st = crate::drill::start(
        &ctx.ctl,
        &ctx.str("id")?,
        &ctx.str("vm")?,
        &ctx.str("site")?,
        ctx.opt_str("point")?.as_deref(),
        progress,
    )
    .await?;
    serde_json::to_value(&st).map_err(|e| EngineError::Internal(e.to_string()))
}

/// Probe a drill's copy inside its namespace: `kind` and `port` given, or
/// taken from the VM's first front-door service (its probe kind and its
/// backend's port at the drill's site).
pub(super) async fn drill_probe(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.str("id")?;
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let (vm, site) = match (ctx.opt_str("vm")?, ctx.opt_str("site")?) {
        (Some(vm), Some(site)) => (vm, site),
        _ => {
            let rec = crate::drill::state(&ctx.ctl, &id)?
                .ok_or_else(|| EngineError::not_found("drill", &id))?;
            (rec.vm, rec.site)
        }
    };
    let check =
        match (ctx.opt_str("kind")?, ctx.opt_i64("port")?) {
            (Some(kind), Some(port)) => {
                let target = format!("127.0.0.1:{port}");
                match kind.as_str() {
                    "sip" => ProbeCheck::Sip { target },
                    "tcp" => ProbeCheck::Tcp { target },
                    "http" => ProbeCheck::Http {
                        url: format!("http://{target}/"),
                        status: None,
                        body_contains: None,
                    },
                    other => {
                        return Err(EngineError::BadRequest(format!(
                            "kind '{other}' is not sip, tcp or http"
                        )));
                    }
                }
            }
            _ => {
                let service = services_of(&ctx.ctl, &vm).into_iter().next().ok_or_else(|| {
                EngineError::BadRequest(format!(
                    "vm {vm} has no front-door service: give the drill probe 'kind' and 'port'"
                ))
            })?;
                // The same check, against the copy's loopback.
                match service_check(&ctx.ctl, &service, &site)? {
                    ProbeCheck::Sip { target } => ProbeCheck::Sip {
                        target: loopback(&target)?,
                    },
                    ProbeCheck::Tcp { target } => ProbeCheck::Tcp {
                        target: loopback(&target)?,
                    },
                    other => other,
                }
            }
        };
    let mut out = crate::drill::probe(&ctx.ctl, &id, check, timeout).await?;
    out["vm"] = json!(vm);
    Ok(out)
}

/// `ADDR:PORT` → `127.0.0.1:PORT`.
pub(super) fn loopback(target: &str) -> Result<String, EngineError> {
    let port = target
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or_else(|| EngineError::BadRequest(format!("'{target}' has no port")))?;
    Ok(format!("127.0.0.1:{port}"))
}

/// The drill's report from its steps' outputs: per VM the point, its data
/// age, the restore time, the RTO (restore + boot + first passing probe)
/// and whether teardown was verified. Fails (after recording the report as
/// this step's output) when a copy did not boot or answer, or teardown was
/// not verified.
pub(super) async fn drill_report(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let list = |name: &str| -> Vec<Value> {
        match &ctx.input[name] {
            Value::Array(a) => a.clone(),
            Value::Null => Vec::new(),
            v => vec![v.clone()],
        }
    };
    let (boots, probes, teardowns) = (list("boot"), list("probe"), list("teardown"));
    let mut vms = Vec::new();
    let mut failed = Vec::new();
    for b in boots.iter().filter(|b| !b.is_null()) {
        let vm = b["vm"].as_str().unwrap_or_default().to_string();
        let probe = probes.iter().find(|p| p["vm"] == vm.as_str());
        let teardown = teardowns.iter().find(|t| t["vm"] == vm.as_str());
        let answered = probe.is_some_and(|p| p["rto_seconds"].is_number());
        let verified = teardown.is_some_and(|t| t["verified"] == true);
        if !answered {
            failed.push(format!("{vm}: the copy did not answer its probe"));
        }
        if !verified {
            failed.push(format!("{vm}: teardown not verified"));
        }
        vms.push(json!({
            "vm": vm,
            "site": b["site"],
            "point": b["point"],
            "point_time": b["point_time"],
            "data_age_seconds": b["data_age_seconds"],
            "restore_seconds": b["restore_seconds"],
            "rto_seconds": probe.map(|p| p["rto_seconds"].clone()).unwrap_or(Value::Null),
            "verified": verified,
        }));
    }
    let site = ctx.opt_str("site")?.unwrap_or_default();
    let booted = vms.len();
    let wanted = teardowns.len().max(booted);
    if booted < wanted {
        failed.push(format!(
            "{} of {wanted} copies did not boot",
            wanted - booted
        ));
    }
    let summary = if vms.is_empty() {
        format!("drill of site {site}: nothing was drilled")
    } else {
        let parts: Vec<String> = vms
            .iter()
            .map(|v| {
                format!(
                    "{} from point {} (data age {:.1} s): RTO {}, teardown {}",
                    v["vm"].as_str().unwrap_or_default(),
                    v["point"].as_str().unwrap_or_default(),
                    v["data_age_seconds"].as_f64().unwrap_or_default(),
                    v["rto_seconds"]
                        .as_f64()
                        .map(|r| format!("{r:.1} s"))
                        .unwrap_or_else(|| "not reached".into()),
                    if v["verified"] == true {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                )
            })
            .collect();
        format!("drill of site {site}: {}", parts.join("; "))
    };
    let report = json!({
        "site": site,
        "vms": vms,
        "ok": failed.is_empty(),
        "failures": failed,
        "summary": summary,
    });
    // Drill reports are events too, so they are found with the rest.
    ctx.ctl.watch.emit(standby_types::watch::Event {
        id: 0,
        at: Utc::now(),
        source: format!("runbook:{}", ctx.runbook),
        kind: "drill.report".into(),
        severity: if failed.is_empty() {
            Severity::Info
        } else {
            Severity::Error
        },
        labels: [
            ("site".to_string(), site.clone()),
            ("job".to_string(), ctx.job.to_string()),
            ("ok".to_string(), failed.is_empty().to_string()),
        ]
        .into_iter()
        .collect(),
        vantage: "controller".into(),
        message: summary.clone(),
    });
    if !failed.is_empty() {
        return Err(EngineError::Conflict(format!(
            "drill failed: {} ({summary})",
            failed.join("; ")
        )));
    }
    Ok(report)
}
