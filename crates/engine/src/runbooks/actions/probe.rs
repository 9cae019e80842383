//! `probe.wait`: wait until a probe passes (or fails) where asked.

use std::time::{Duration, Instant};

use chrono::Utc;
use standby_runbook::catalog::ProbeWait;
use standby_runbook::scalar::Text;
use standby_types::outcome::ProbePassed;
use standby_types::watch::{ProbeCheck, ProbeSpec};

use super::Perform;
use super::context::{ActionCtx, service_check};
use crate::error::EngineError;

impl Perform for ProbeWait {
    async fn perform(self, ctx: &ActionCtx) -> Result<ProbePassed, EngineError> {
        probe_wait(self, ctx).await
    }
}

async fn probe_wait(input: ProbeWait, ctx: &ActionCtx) -> Result<ProbePassed, EngineError> {
    let ctl = &ctx.ctl;
    let timeout = input.timeout.map_or(Duration::from_secs(60), |t| t.0);
    let interval = input.interval.map_or(Duration::from_millis(500), |t| t.0);
    let began = Instant::now();
    let since = Utc::now();
    let deadline = began + timeout;
    if let Some(name) = input.probe.map(String::from) {
        if !ctl.cfg().probes.contains_key(&name) {
            return Err(EngineError::not_found("probe", name));
        }
        loop {
            let fresh = ctl
                .watch
                .probe_states()
                .into_iter()
                .find(|r| r.probe == name && r.ok && r.at >= since);
            if let Some(r) = fresh {
                return Ok(ProbePassed {
                    probe: Some(name),
                    seconds: began.elapsed().as_secs_f64(),
                    latency_ms: r.latency_ms,
                    at: r.at,
                    at_epoch: crate::runbooks::epoch(r.at),
                });
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Timeout(format!(
                    "probe {name} did not pass within {}",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }
    let required = |v: Option<Text>, name: &str| {
        v.map(String::from)
            .ok_or_else(|| EngineError::BadRequest(format!("input '{name}' is required")))
    };
    let check = match input.service {
        Some(service) => Some(service_check(
            ctl,
            service.as_str(),
            &required(input.site, "site")?,
        )?),
        None => None,
    };
    let kind = match &check {
        Some(c) => c.kind().to_string(),
        None => required(input.kind, "kind")?,
    };
    let target = input.target.map(String::from);
    let need_target = || {
        target
            .clone()
            .ok_or_else(|| EngineError::BadRequest(format!("a {kind} check needs 'target'")))
    };
    let check = match (check, kind.as_str()) {
        (Some(c), _) => c,
        (None, "tcp") => ProbeCheck::Tcp {
            target: need_target()?,
        },
        (None, "udp") => ProbeCheck::Udp {
            target: need_target()?,
            send: "ping".into(),
            expect: None,
        },
        (None, "sip") => ProbeCheck::Sip {
            target: need_target()?,
        },
        (None, "http") => ProbeCheck::Http {
            url: required(input.url, "url")?,
            status: None,
            body_contains: None,
        },
        (None, other) => {
            return Err(EngineError::BadRequest(format!(
                "kind '{other}' is not tcp, http, udp or sip"
            )));
        }
    };
    let spec = ProbeSpec {
        name: format!("runbook:{}", ctx.key()),
        check,
        interval,
        timeout: interval.max(Duration::from_millis(500)),
        attempts: 1,
        labels: Default::default(),
    };
    loop {
        let o = standby_monitor::probe::run(&spec).await;
        if o.ok {
            let now = Utc::now();
            return Ok(ProbePassed {
                probe: None,
                seconds: began.elapsed().as_secs_f64(),
                latency_ms: o.latency.as_millis() as u64,
                at: now,
                at_epoch: crate::runbooks::epoch(now),
            });
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Timeout(format!(
                "{kind} check did not pass within {}: {}",
                humantime::format_duration(timeout),
                o.detail
            )));
        }
        tokio::time::sleep(interval).await;
    }
}
