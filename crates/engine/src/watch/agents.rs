//! Remote agents (`standby agent`): heartbeats in, probe assignments out,
//! probe results in. An agent is known only if `standby.toml` declares it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use standby_types::watch::{Event, Labels, ProbeResult, ProbeSpec, Severity};

pub use standby_agent::{Heartbeat, HeartbeatReply};

use standby_agent::AgentError;
use standby_agent::fresh::Refusal;

use super::state::AgentSeen;
use crate::controller::Controller;
use crate::error::EngineError;

/// The probes a vantage point runs.
pub fn probes_for(ctl: &Controller, vantage: &str) -> Vec<ProbeSpec> {
    ctl.cfg()
        .probes
        .iter()
        .filter(|(_, p)| p.from.iter().any(|f| f == vantage))
        .filter_map(|(name, p)| p.spec(name))
        .collect()
}

pub fn heartbeat(
    ctl: &Arc<Controller>,
    name: &str,
    hb: Heartbeat,
) -> Result<HeartbeatReply, EngineError> {
    let live = ctl.cfg();
    let Some(agent) = live.agents.get(name) else {
        return Err(EngineError::not_found("agent", name));
    };
    // The first word of an agent since this controller started: a fence
    // flag the controller does not know of (its database was lost, or the
    // agent fenced itself) is adopted, never lifted unseen.
    let first_contact = !ctl
        .watch
        .agents
        .lock()
        .expect("agents lock")
        .contains_key(name);
    let adopt = first_contact && hb.flagged && ctl.fence_of(&agent.site).is_none();
    let reply = |session| HeartbeatReply {
        probes: probes_for(ctl, &format!("agent:{name}")),
        heartbeat: agent.heartbeat,
        fenced: adopt || ctl.fence_of(&agent.site).is_some(),
        epoch: ctl.leader.epoch(),
        session,
    };
    // A heartbeat counts once: a recorded one proves nothing of now.
    match fresh(ctl, name, hb.session.as_deref(), hb.seq, "heartbeat") {
        Ok(()) => {}
        Err(Refusal::Missing | Refusal::StaleSession) => {
            return Ok(reply(Some(ctl.watch.fresh.hello(name))));
        }
        Err(r) => return Err(refused(name, "heartbeat", r)),
    }
    ctl.leader.agent_saw(hb.epoch);
    if adopt {
        crate::fence::adopt(ctl, &agent.site, name);
    }
    ctl.proofs.heard(name, hb.fenced);
    let now = Utc::now();
    let (first, upgraded) = {
        let mut agents = ctl.watch.agents.lock().expect("agents lock");
        let first = !agents.contains_key(name);
        let seen = agents.entry(name.to_string()).or_insert_with(|| AgentSeen {
            site: agent.site.clone(),
            first_seen: now,
            last_seen: now,
            version: hb.version.clone(),
        });
        seen.last_seen = now;
        let upgraded = seen.version != hb.version;
        seen.version = hb.version.clone();
        (first, upgraded)
    };
    // The log gets the first heartbeat and a change of version, not
    // every beat (a hundred agents beat a hundred times a second); that
    // the beats go on or stop is the heartbeat probe's, logged when it
    // changes.
    if !first && !upgraded {
        return Ok(reply(None));
    }
    let mut labels = Labels::new();
    labels.insert("agent".into(), name.to_string());
    labels.insert("site".into(), agent.site.clone());
    if let Some(h) = &agent.host {
        labels.insert("host".into(), h.clone());
    }
    ctl.watch.emit(Event {
        id: 0,
        at: now,
        source: format!("agent:{name}"),
        kind: "agent.heartbeat".into(),
        severity: Severity::Info,
        labels,
        vantage: format!("agent:{name}"),
        message: if first {
            "first heartbeat since the controller started".into()
        } else {
            format!("now runs version {}", hb.version)
        },
    });
    Ok(reply(None))
}

fn fresh(
    ctl: &Controller,
    name: &str,
    session: Option<&str>,
    seq: Option<u64>,
    what: &str,
) -> Result<(), Refusal> {
    let (Some(session), Some(seq)) = (session, seq) else {
        return Err(Refusal::Missing);
    };
    let r = ctl.watch.fresh.check(name, session, seq);
    if let Err(e) = &r
        && !matches!(e, Refusal::StaleSession)
    {
        tracing::warn!(agent = %name, "{what} refused: {e}");
    }
    r
}

fn refused(name: &str, what: &str, r: Refusal) -> EngineError {
    EngineError::Agent(AgentError::Refused {
        code: r.code(),
        message: format!("{what} of agent {name} refused: {r}"),
    })
}

/// Results an agent measured. Each must be of a probe assigned to it.
pub fn results(
    ctl: &Arc<Controller>,
    name: &str,
    (session, seq): (Option<&str>, Option<u64>),
    results: Vec<ProbeResult>,
) -> Result<usize, EngineError> {
    if !ctl.cfg().agents.contains_key(name) {
        return Err(EngineError::not_found("agent", name));
    }
    fresh(ctl, name, session, seq, "results").map_err(|r| refused(name, "results", r))?;
    let vantage = format!("agent:{name}");
    let assigned = probes_for(ctl, &vantage);
    let mut n = 0;
    for mut r in results {
        let Some(spec) = assigned.iter().find(|s| s.name == r.probe) else {
            return Err(EngineError::BadRequest(format!(
                "probe '{}' is not assigned to agent {name}",
                r.probe
            )));
        };
        // The controller decides labels and vantage, not the agent.
        let at = r.at.min(Utc::now());
        let outcome = standby_monitor::probe::Outcome {
            ok: r.ok,
            latency: Duration::from_millis(r.latency_ms),
            detail: std::mem::take(&mut r.detail),
        };
        ctl.watch
            .record(standby_monitor::probe::result(spec, &vantage, at, &outcome));
        n += 1;
    }
    Ok(n)
}
