//! `vm.restart`: heal a VM in place, where it runs, with bounded attempts
//! and backoff, and say whether it worked and whether its host answered
//! (the `heal-vm` runbook restores it at its DR site only when the host
//! answered that it does not run it: a host that does not answer may still
//! run it, and is left to fencing).

use std::time::{Duration, Instant};

use chrono::Utc;
use standby_hv::VmState;
use standby_runbook::catalog::VmRestart;
use standby_types::outcome::VmRestarted;

use super::Perform;
use super::context::{ActionCtx, answers, check_of};
use crate::error::{EngineError, error_chain};

impl Perform for VmRestart {
    async fn perform(self, ctx: &ActionCtx) -> Result<VmRestarted, EngineError> {
        restart(self, ctx).await
    }
}

/// Why a VM at `site` is not to be touched from here, if it is not: the
/// site is fenced, or down, or its own probes fail (a partition looks like
/// a hung VNF from outside: that is for fencing and `failover-site`).
async fn site_trouble(
    ctx: &ActionCtx,
    site: &str,
    hung: bool,
) -> Result<Option<String>, EngineError> {
    let ctl = &ctx.ctl;
    if ctl.is_fenced(site).await? {
        return Ok(Some(format!("site {site} is fenced")));
    }
    if ctl
        .watch
        .active_alerts()
        .iter()
        .any(|a| a.rule == "site-down" && a.labels.get("site").map(String::as_str) == Some(site))
    {
        return Ok(Some(format!("site {site} is down (site-down)")));
    }
    if hung
        && let Some(p) = ctl
            .watch
            .probe_states_where(|r| {
                !r.ok
                    && r.labels.get("site").map(String::as_str) == Some(site)
                    && r.labels.get("scope").map(String::as_str) == Some("site")
            })
            .first()
    {
        return Ok(Some(format!(
            "site {site}'s own probe {} fails from {} ({}): a partition, not a hung VNF",
            p.probe, p.vantage, p.detail
        )));
    }
    Ok(None)
}

async fn restart(input: VmRestart, ctx: &ActionCtx) -> Result<VmRestarted, EngineError> {
    let ctl = &ctx.ctl;
    let vm = String::from(input.vm);
    let attempts = input.attempts.map_or(3, |a| a.0.clamp(1, 20)) as u32;
    let backoff = input.backoff.map_or(Duration::from_secs(2), |b| b.0);
    let timeout = input.timeout.map_or(Duration::from_secs(30), |t| t.0);
    let began = Instant::now();
    let rec = ctl.repo.vm(&vm).await?;
    let seen_at = input.site.map(String::from).filter(|s| !s.is_empty());
    let agent = ctl.agent(&rec.active_host)?;
    let check = check_of(ctl, &vm, &rec.active_site);
    let mut out = VmRestarted {
        vm: vm.clone(),
        host: rec.active_host.clone(),
        site: rec.active_site.clone(),
        healed: false,
        host_answers: true,
        attempts: 0,
        seconds: 0.0,
        checked: None,
        failures: Vec::new(),
        left_alone: None,
        at_epoch: 0.0,
    };
    let done = |mut out: VmRestarted| {
        out.seconds = began.elapsed().as_secs_f64();
        out.at_epoch = crate::runbooks::epoch(Utc::now());
        Ok(out)
    };
    let probe_name = format!("runbook:{}", ctx.key());
    // The trouble was seen where the VM no longer runs (a probe of its
    // home after a failover): nothing to heal here.
    if let Some(at) = seen_at.filter(|at| *at != rec.active_site) {
        out.left_alone = Some(format!(
            "the trouble was seen at site {at}, but vm {vm} runs at {} now",
            rec.active_site
        ));
        return done(out);
    }
    for n in 1..=attempts {
        // Only where it ran when the step began: moved since (a failover),
        // it is not this step's to touch.
        let now = ctl.repo.vm(&vm).await?;
        if now.active_host != rec.active_host {
            out.left_alone = Some(format!(
                "vm {vm} now runs at {} (moved since): not touched",
                now.active_host
            ));
            return done(out);
        }
        let state = match agent.status(&vm).await {
            Ok(st) => st.state,
            Err(e) => {
                out.host_answers = false;
                out.left_alone = Some(format!(
                    "host {} does not answer ({}): the VM may still run there; left to fencing and failover-site",
                    rec.active_host,
                    error_chain(&e)
                ));
                return done(out);
            }
        };
        // Stopped on request (an operator's `vm stop`, a job's): not a
        // crash, and not this runbook's to undo. Only before the first
        // attempt: later, a stop is this step's own (a hung VM).
        if n == 1 && state == VmState::Stopped {
            out.left_alone = Some(format!(
                "vm {vm} was stopped on request at {}, it did not crash: not restarted",
                rec.active_host
            ));
            return done(out);
        }
        // Never while its site is fenced, down or cut off.
        if let Some(why) = site_trouble(ctx, &rec.active_site, state == VmState::Running).await? {
            out.left_alone = Some(format!("{why}: left to fencing and failover-site"));
            return done(out);
        }
        // Running and answering: healed already (by itself or by someone).
        if state == VmState::Running {
            match &check {
                Some((what, c)) if answers(c, probe_name.clone()).await.is_ok() => {
                    out.healed = true;
                    out.checked = Some(what.clone());
                    return done(out);
                }
                None => {
                    out.healed = true;
                    out.checked = Some("running".into());
                    return done(out);
                }
                // Running but not answering: hung, stopped first.
                Some(_) => {
                    if let Err(e) = agent.stop(&vm).await {
                        out.failures
                            .push(format!("attempt {n}: stop: {}", error_chain(&e)));
                    }
                }
            }
        }
        out.attempts = n;
        tracing::warn!(vm, attempt = n, host = %rec.active_host, "vm.restart: restarting in place");
        if let Err(e) = crate::vms::start(ctl, &vm).await {
            out.failures
                .push(format!("attempt {n}: start: {}", error_chain(&e)));
            // Refused (fenced, a disk lost, running elsewhere): the same
            // start is refused again; an unreachable host is left alone.
            match &e {
                EngineError::Conflict(_) => break,
                EngineError::Agent(standby_agent::AgentError::Unreachable { .. }) => {
                    out.host_answers = false;
                    out.left_alone = Some(format!(
                        "host {} stopped answering: left to fencing and failover-site",
                        rec.active_host
                    ));
                    return done(out);
                }
                _ => {}
            }
        } else {
            // It must stay up and answer within the timeout.
            let deadline = Instant::now() + timeout;
            let mut last = String::from("no answer yet");
            let ok = loop {
                match agent.status(&vm).await.map(|s| (s.state, s.exit)) {
                    Ok((VmState::Running, _)) => {}
                    Ok((state, exit)) => {
                        last = format!(
                            "{state} again ({})",
                            exit.as_deref().unwrap_or("no exit status")
                        );
                        break false;
                    }
                    Err(e) => last = error_chain(&e),
                }
                match &check {
                    None => break true,
                    Some((_, c)) => match answers(c, probe_name.clone()).await {
                        Ok(()) => break true,
                        Err(d) => last = d,
                    },
                }
                if Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if ok {
                out.healed = true;
                out.checked = Some(
                    check
                        .as_ref()
                        .map_or_else(|| "running".to_string(), |(w, _)| w.clone()),
                );
                return done(out);
            }
            out.failures.push(format!("attempt {n}: {last}"));
        }
        if n < attempts {
            tokio::time::sleep(backoff.saturating_mul(2u32.saturating_pow(n - 1))).await;
        }
    }
    // Not healed: leave it stopped, so that a copy may start elsewhere
    // (never two copies; a stopped VM is known not to run).
    if ctl.repo.vm(&vm).await?.active_host == rec.active_host
        && let Err(e) = agent.stop(&vm).await
    {
        out.failures
            .push(format!("stop after the last attempt: {}", error_chain(&e)));
    }
    done(out)
}
