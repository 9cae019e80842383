//! `drill.start`, `drill.probe` and `drill.report`.

use std::time::Duration;

use chrono::Utc;
use standby_runbook::catalog::{DrillProbe, DrillReportOf, DrillStart, Probed, TornDown};
use standby_runbook::scalar::Text;
use standby_types::outcome::{CopyKind, DrillProbed, DrillReport, DrillState, DrilledVm};
use standby_types::watch::{ProbeCheck, Severity};

use super::Perform;
use super::context::{ActionCtx, probe_of, service_check, services_of};
use crate::error::EngineError;

impl Perform for DrillStart {
    async fn perform(self, ctx: &ActionCtx) -> Result<DrillState, EngineError> {
        let progress = std::sync::Arc::new(crate::jobs::JobProgress::default());
        crate::drill::start(
            &ctx.ctl,
            self.id.as_str(),
            self.vm.as_str(),
            self.site.as_str(),
            self.point.as_ref().map(Text::as_str),
            progress,
        )
        .await
    }
}

/// Probe a drill's copy inside its namespace: `kind` and `port` given, or
/// taken from the VM's first front-door service (its probe kind and its
/// backend's port at the drill's site).
impl Perform for DrillProbe {
    async fn perform(self, ctx: &ActionCtx) -> Result<DrillProbed, EngineError> {
        drill_probe(self, ctx).await
    }
}

async fn drill_probe(input: DrillProbe, ctx: &ActionCtx) -> Result<DrillProbed, EngineError> {
    let id = String::from(input.id);
    let timeout = input.timeout.map_or(Duration::from_secs(60), |t| t.0);
    let rec =
        crate::drill::state(&ctx.ctl, &id)?.ok_or_else(|| EngineError::not_found("drill", &id))?;
    let (vm, site) = (rec.vm, rec.site);
    // A process copy binds the addresses its command line names, in its
    // namespace's loopback; a QEMU copy's forwards are moved to 127.0.0.1.
    let keep = rec.kind == CopyKind::Process;
    let check = match (input.kind.map(String::from), input.port.map(|p| p.0)) {
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
        _ => match services_of(&ctx.ctl, &vm).into_iter().next() {
            // The same check as the front door's service, against the
            // copy's loopback.
            Some(service) => on_loopback(service_check(&ctx.ctl, &service, &site)?, keep)?,
            // Else the VM's own probe (labels `vm = NAME`), against the
            // copy's loopback.
            None => {
                let probe = probe_of(&ctx.ctl, &vm).ok_or_else(|| {
                    EngineError::BadRequest(format!(
                        "vm {vm} has no front-door service and no probe (a probe with \
                             labels vm = \"{vm}\"): give the drill probe 'kind' and 'port'"
                    ))
                })?;
                let check = ctx.ctl.cfg.probes[&probe].check().map_err(|(field, e)| {
                    EngineError::BadRequest(format!("probe {probe}: {field}: {e}"))
                })?;
                on_loopback(check, keep)?
            }
        },
    };
    crate::drill::probe(&ctx.ctl, &id, check, timeout).await
}

/// The same check against the copy's loopback (the port kept; with
/// `keep`, an address already in 127.0.0.0/8 too).
fn on_loopback(check: ProbeCheck, keep: bool) -> Result<ProbeCheck, EngineError> {
    let loopback = |t: &str| loopback(t, keep);
    Ok(match check {
        ProbeCheck::Sip { target } => ProbeCheck::Sip {
            target: loopback(&target)?,
        },
        ProbeCheck::Tcp { target } => ProbeCheck::Tcp {
            target: loopback(&target)?,
        },
        ProbeCheck::Udp {
            target,
            send,
            expect,
        } => ProbeCheck::Udp {
            target: loopback(&target)?,
            send,
            expect,
        },
        ProbeCheck::Http {
            url,
            status,
            body_contains,
        } => {
            let mut u = reqwest::Url::parse(&url)
                .map_err(|e| EngineError::BadRequest(format!("probe url '{url}': {e}")))?;
            let on_lo = keep
                && u.host_str()
                    .and_then(|h| h.parse::<std::net::Ipv4Addr>().ok())
                    .is_some_and(|ip| ip.is_loopback());
            if !on_lo {
                u.set_host(Some("127.0.0.1"))
                    .map_err(|e| EngineError::BadRequest(format!("probe url '{url}': {e}")))?;
            }
            ProbeCheck::Http {
                url: u.to_string(),
                status,
                body_contains,
            }
        }
    })
}

/// `ADDR:PORT` → `127.0.0.1:PORT`.
/// With `keep`, a loopback address (`127.0.2.1:PORT`) is kept: the drill's
/// namespace has all of 127.0.0.0/8 on its loopback, where a process copy
/// binds it.
pub(super) fn loopback(target: &str, keep: bool) -> Result<String, EngineError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| EngineError::BadRequest(format!("'{target}' has no port")))?;
    if keep
        && host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return Ok(target.to_string());
    }
    Ok(format!("127.0.0.1:{port}"))
}

/// The drill's report from its steps' outputs: per VM the point, its data
/// age, the restore time, the RTO (restore + boot + first passing probe)
/// and whether teardown was verified. Fails (after recording the report as
/// this step's output) when a copy did not boot or answer, or teardown was
/// not verified.
impl Perform for DrillReportOf {
    async fn perform(self, ctx: &ActionCtx) -> Result<DrillReport, EngineError> {
        drill_report(self, ctx).await
    }
}

async fn drill_report(input: DrillReportOf, ctx: &ActionCtx) -> Result<DrillReport, EngineError> {
    let probes: Vec<Probed> = input.probe.0.into_iter().flatten().collect();
    let teardowns: Vec<Option<TornDown>> = input.teardown.0;
    let mut vms = Vec::new();
    let mut failed = Vec::new();
    for b in input.boot.0.into_iter().flatten() {
        let probe = probes.iter().find(|p| p.vm == b.vm);
        let verified = teardowns
            .iter()
            .flatten()
            .any(|t| t.vm.as_deref() == Some(b.vm.as_str()) && t.verified);
        if probe.is_none() {
            failed.push(format!("{}: the copy did not answer its probe", b.vm));
        }
        if !verified {
            failed.push(format!("{}: teardown not verified", b.vm));
        }
        vms.push(DrilledVm {
            rto_seconds: probe.map(|p| p.rto_seconds),
            vm: b.vm,
            site: b.site,
            point: b.point,
            point_time: b.point_time,
            data_age_seconds: b.data_age_seconds,
            restore_seconds: b.restore_seconds,
            verified,
            skipped: b.skipped,
        });
    }
    let site = input.site.map(String::from).unwrap_or_default();
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
                let skipped = if v.skipped.is_empty() {
                    String::new()
                } else {
                    let each: Vec<String> = v.skipped.iter().map(ToString::to_string).collect();
                    format!(
                        " after skipping {} newer point(s) that did not restore: {}",
                        each.len(),
                        each.join(", ")
                    )
                };
                format!(
                    "{} from point {}{skipped} (data age {:.1} s): RTO {}, teardown {}",
                    v.vm,
                    v.point,
                    v.data_age_seconds,
                    v.rto_seconds
                        .map(|r| format!("{r:.1} s"))
                        .unwrap_or_else(|| "not reached".into()),
                    if v.verified {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                )
            })
            .collect();
        format!("drill of site {site}: {}", parts.join("; "))
    };
    let ok = failed.is_empty();
    // Drill reports are events too, so they are found with the rest.
    ctx.ctl.watch.emit(standby_types::watch::Event {
        id: 0,
        at: Utc::now(),
        source: format!("runbook:{}", ctx.runbook),
        kind: "drill.report".into(),
        severity: if ok { Severity::Info } else { Severity::Error },
        labels: [
            ("site".to_string(), site.clone()),
            ("job".to_string(), ctx.job.to_string()),
            ("ok".to_string(), ok.to_string()),
        ]
        .into_iter()
        .collect(),
        vantage: "controller".into(),
        message: summary.clone(),
    });
    if !ok {
        return Err(EngineError::Conflict(format!(
            "drill failed: {} ({summary})",
            failed.join("; ")
        )));
    }
    Ok(DrillReport {
        site,
        vms,
        ok,
        failures: failed,
        summary,
    })
}
