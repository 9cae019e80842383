//! `probe.wait`: wait until a probe passes (or fails) where asked.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use standby_types::watch::{ProbeCheck, ProbeSpec};

use super::context::{ActionCtx, service_check};
use crate::error::EngineError;

pub(super) async fn probe_wait(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let interval = ctx
        .opt_duration("interval")?
        .unwrap_or(Duration::from_millis(500));
    let began = Instant::now();
    let since = Utc::now();
    let deadline = began + timeout;
    if let Some(name) = ctx.opt_str("probe")? {
        if !ctl.cfg.probes.contains_key(&name) {
            return Err(EngineError::not_found("probe", name));
        }
        loop {
            let fresh = ctl
                .watch
                .probe_states()
                .into_iter()
                .find(|r| r.probe == name && r.ok && r.at >= since);
            if let Some(r) = fresh {
                return Ok(json!({
                    "probe": name,
                    "seconds": began.elapsed().as_secs_f64(),
                    "latency_ms": r.latency_ms,
                    "at": r.at,
                    "at_epoch": crate::runbooks::epoch(r.at),
                }));
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
    let check = match ctx.opt_str("service")? {
        Some(service) => Some(service_check(ctl, &service, &ctx.str("site")?)?),
        None => None,
    };
    let kind = match &check {
        Some(c) => c.kind().to_string(),
        None => ctx.str("kind")?,
    };
    let target = ctx.opt_str("target")?;
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
            url: ctx.str("url")?,
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
            return Ok(json!({
                "seconds": began.elapsed().as_secs_f64(),
                "latency_ms": o.latency.as_millis() as u64,
                "at": now,
                "at_epoch": crate::runbooks::epoch(now),
            }));
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
