//! `drill.start`, `drill.probe` and `drill.report`.

use std::time::Duration;

use chrono::Utc;
use standby_runbook::catalog::{Booted, DrillProbe, DrillReportOf, DrillStart, Probed, TornDown};
use standby_runbook::scalar::Text;
use standby_types::outcome::{
    CopyKind, DrillProbed, DrillReport, DrillState, DrilledVm, TierTime, TierWait,
};
use standby_types::watch::{ProbeCheck, Severity};

use super::Perform;
use super::context::{ActionCtx, probe_of, service_check, services_of};
use crate::error::{EngineError, error_chain};

impl Perform for DrillStart {
    async fn perform(self, ctx: &ActionCtx) -> Result<DrillState, EngineError> {
        let progress = std::sync::Arc::new(crate::jobs::JobProgress::default());
        // A tier of a recovery plan boots once the copies of the tier
        // before answer (or a delay after they booted).
        let waited = match &self.after {
            Some(w) => Some(wait_copies(ctx, w, self.id.as_str(), self.vm.as_str()).await?),
            None => None,
        };
        // The copy's default check, for a copy that must expose its port
        // (none when the VM has no service and no probe: the drill's
        // probe then names its own).
        let probed = default_copy_check(&ctx.ctl, self.vm.as_str(), self.site.as_str(), false).ok();
        let mut st = crate::drill::start(
            &ctx.ctl,
            self.id.as_str(),
            self.vm.as_str(),
            self.site.as_str(),
            self.point.as_ref().map(Text::as_str),
            probed.as_ref(),
            progress,
        )
        .await?;
        if let (Some(w), Some(after)) = (waited, &self.after) {
            st.tier = Some(after.tier);
            st.waited_seconds = w.seconds;
        }
        Ok(st)
    }
}

/// Wait until the drill copy of every VM of `wait` answers: the copies of
/// drill `id` (of `vm`) share its id with the VM's name replaced.
async fn wait_copies(
    ctx: &ActionCtx,
    wait: &TierWait,
    id: &str,
    vm: &str,
) -> Result<super::tiers::Waited, EngineError> {
    let prefix = id.strip_suffix(&format!("-{vm}")).ok_or_else(|| {
        EngineError::BadRequest(format!(
            "drill id {id} does not end with -{vm}: with 'after', each copy's id is PREFIX-VM"
        ))
    })?;
    super::tiers::wait_each(wait, |dep, probe| async move {
        let id = format!("{prefix}-{dep}");
        let st = crate::drill::state(&ctx.ctl, &id)
            .map_err(|e| error_chain(&e))?
            .ok_or_else(|| format!("its copy (drill {id}) has not booted"))?;
        if !probe {
            return Ok(format!("{dep}: copy {id} booted"));
        }
        let check = copy_check(ctx, &st, None).map_err(|e| error_chain(&e))?;
        crate::drill::probe(&ctx.ctl, &id, check, Duration::from_millis(500))
            .await
            .map(|p| format!("{dep}: copy {id} answered ({})", p.detail))
            .map_err(|e| error_chain(&e))
    })
    .await
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
    let given = input.kind.map(String::from).zip(input.port.map(|p| p.0));
    let check = copy_check(ctx, &rec, given)?;
    crate::drill::probe(&ctx.ctl, &id, check, timeout).await
}

/// How to probe a drill's copy: `kind` and `port` when given, else the
/// VM's first front-door service's check, else its own probe's, moved to
/// the copy's loopback.
pub(super) fn copy_check(
    ctx: &ActionCtx,
    rec: &DrillState,
    given: Option<(String, i64)>,
) -> Result<ProbeCheck, EngineError> {
    let (vm, site) = (&rec.vm, &rec.site);
    // A process copy binds the addresses its command line names, in its
    // namespace's loopback; a QEMU copy's forwards are moved to 127.0.0.1.
    let keep = rec.kind == CopyKind::Process;
    Ok(match given {
        Some((kind, port)) => {
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
        None => default_copy_check(&ctx.ctl, vm, site, keep)?,
    })
}

/// How to probe the drill copy of `vm` at `site` when no check is given:
/// the VM's first front-door service's check, else its own probe's, moved
/// to the copy's loopback (with `keep`, an address already in
/// 127.0.0.0/8 stays).
pub(crate) fn default_copy_check(
    ctl: &crate::controller::Controller,
    vm: &str,
    site: &str,
    keep: bool,
) -> Result<ProbeCheck, EngineError> {
    match services_of(ctl, vm).into_iter().next() {
        // The same check as the front door's service, against the
        // copy's loopback.
        Some(service) => on_loopback(service_check(ctl, &service, site)?, keep),
        // Else the VM's own probe (labels `vm = NAME`), against the
        // copy's loopback.
        None => {
            let probe = probe_of(ctl, vm).ok_or_else(|| {
                EngineError::BadRequest(format!(
                    "vm {vm} has no front-door service and no probe (a probe with \
                         labels vm = \"{vm}\"): give the drill probe 'kind' and 'port'"
                ))
            })?;
            let check = ctl.cfg().probes[&probe].check().map_err(|(field, e)| {
                EngineError::BadRequest(format!("probe {probe}: {field}: {e}"))
            })?;
            on_loopback(check, keep)
        }
    }
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
    let boots: Vec<Booted> = input.boot.0.into_iter().flatten().collect();
    // The drill began with its first copy's restore.
    let began = boots
        .iter()
        .filter_map(|b| b.started_at.map(crate::runbooks::epoch))
        .reduce(f64::min);
    for b in boots {
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
            ready_epoch: probe
                .zip(b.started_at)
                .map(|(p, at)| crate::runbooks::epoch(at) + p.rto_seconds),
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
    let (tiers, plans) = tier_times(&ctx.ctl.cfg(), &vms, began);
    for (plan, _, missed) in &plans {
        if *missed {
            failed.push(format!("plan {plan} missed its RTO target"));
        }
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
        let plans: Vec<&str> = plans.iter().map(|(_, l, _)| l.as_str()).collect();
        format!(
            "drill of site {site}: {}{}",
            parts.join("; "),
            if plans.is_empty() {
                String::new()
            } else {
                format!(". {}", plans.join(". "))
            }
        )
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
        tiers,
    })
}

/// Each tier of the recovery plans of the drilled VMs: the time from the
/// drill's start (`began`) to the last of its copies answering; and per
/// plan one line for people, with its RTO against its target, and
/// whether it missed it (over it, or a copy of its last tier never
/// answered).
fn tier_times(
    cfg: &standby_types::config::Config,
    vms: &[DrilledVm],
    began: Option<f64>,
) -> (Vec<TierTime>, Vec<(String, String, bool)>) {
    let mut tiers: Vec<TierTime> = Vec::new();
    let mut lines = Vec::new();
    for (name, plan) in &cfg.plans {
        let mut parts = Vec::new();
        // The plan's RTO: its slowest tier, none while one is not up.
        let mut last: Option<Option<f64>> = None;
        for (i, members) in plan.tier_vms(&cfg.groups).into_iter().enumerate() {
            let drilled: Vec<&DrilledVm> = vms.iter().filter(|v| members.contains(&v.vm)).collect();
            if drilled.is_empty() {
                continue;
            }
            let seconds = drilled
                .iter()
                .map(|v| v.ready_epoch)
                .collect::<Option<Vec<f64>>>()
                .and_then(|r| Some(r.into_iter().reduce(f64::max)? - began?));
            let names: Vec<String> = drilled.iter().map(|v| v.vm.clone()).collect();
            parts.push(format!(
                "tier {} ({}) {}",
                i + 1,
                names.join(", "),
                seconds.map_or_else(|| "not up".to_string(), |s| format!("up at {s:.1} s"))
            ));
            last = Some(match (last, seconds) {
                (None, s) => s,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (Some(_), _) => None,
            });
            tiers.push(TierTime {
                plan: name.clone(),
                tier: i as u32 + 1,
                vms: names,
                seconds,
            });
        }
        let Some(rto) = last else { continue };
        let (target, missed) = match (plan.rto_target, rto) {
            (None, _) => (String::new(), false),
            (Some(t), Some(r)) if r <= t.as_secs_f64() => (
                format!(" against target {}: met", humantime::format_duration(t)),
                false,
            ),
            (Some(t), _) => (
                format!(" against target {}: MISSED", humantime::format_duration(t)),
                true,
            ),
        };
        lines.push((
            name.clone(),
            format!(
                "plan {name}: {}; RTO {}{target}",
                parts.join(", "),
                rto.map_or_else(|| "not reached".to_string(), |r| format!("{r:.1} s"))
            ),
            missed,
        ));
    }
    (tiers, lines)
}
