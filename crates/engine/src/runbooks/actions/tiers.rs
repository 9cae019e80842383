//! Recovery plans at run time: a VM of a plan's tier waits, restored but
//! not started, until the VMs of the tier before it are up: each answers
//! its check where it runs (its front-door service, else its own probe,
//! else running), or, with a delay, runs since that long.
//!
//! A restore step runs its items in list order (`vm.list` orders them by
//! tier, then priority), each taking its slot of `parallel` before the
//! next, so an item only ever waits for items that hold a slot already:
//! no deadlock, whatever `parallel` is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use standby_hv::VmState;
use standby_types::outcome::TierWait;

use super::context::{ActionCtx, answers, check_of};
use crate::error::{EngineError, error_chain};

/// How long between two looks at the tier before.
const POLL: Duration = Duration::from_millis(250);

/// What a wait found: how long it took and how each VM showed it was up.
pub(crate) struct Waited {
    pub seconds: f64,
    pub how: Vec<String>,
}

fn budget(wait: &TierWait) -> Duration {
    Duration::try_from_secs_f64(wait.timeout_seconds).unwrap_or(Duration::from_secs(300))
}

fn delay(wait: &TierWait) -> Option<Duration> {
    wait.delay_seconds
        .and_then(|d| Duration::try_from_secs_f64(d).ok())
}

fn timed_out(wait: &TierWait, why: &BTreeMap<String, String>) -> EngineError {
    let each: Vec<String> = why.iter().map(|(vm, w)| format!("{vm}: {w}")).collect();
    EngineError::Timeout(format!(
        "plan {}: tier {} waited {} for tier {} and it is not up: {}",
        wait.plan,
        wait.tier,
        humantime::format_duration(Duration::from_secs(budget(wait).as_secs())),
        wait.tier.saturating_sub(1),
        each.join("; ")
    ))
}

/// Whether `vm` is up where it runs now: running at its host, its site
/// not fenced, and (`probe`) answering its check there.
async fn up(ctx: &ActionCtx, vm: &str, probe: bool) -> Result<String, String> {
    let ctl = &ctx.ctl;
    let rec = ctl.repo.vm(vm).await.map_err(|e| error_chain(&e))?;
    if ctl
        .is_fenced(&rec.active_site)
        .await
        .map_err(|e| error_chain(&e))?
    {
        return Err(format!(
            "not yet back (its site {} is fenced)",
            rec.active_site
        ));
    }
    let agent = ctl.agent(&rec.active_host).map_err(|e| error_chain(&e))?;
    let st = agent.status(vm).await.map_err(|e| error_chain(&e))?;
    if st.state != VmState::Running {
        return Err(format!("{} at {}", st.state, rec.active_host));
    }
    if !probe {
        return Ok(format!("{vm} runs at {}", rec.active_host));
    }
    match check_of(ctl, vm, &rec.active_site) {
        None => Ok(format!(
            "{vm} runs at {} (it has no check)",
            rec.active_host
        )),
        Some((what, c)) => answers(&c, format!("runbook:{}", ctx.key()))
            .await
            .map(|()| format!("{vm}: {what} answered at {}", rec.active_site))
            .map_err(|d| format!("{what} at {}: {d}", rec.active_site)),
    }
}

/// Wait until every VM of `wait` is up where it runs (see the module).
pub(super) async fn wait_vms(ctx: &ActionCtx, wait: &TierWait) -> Result<Waited, EngineError> {
    wait_each(wait, |vm, probe| async move { up(ctx, &vm, probe).await }).await
}

/// Poll `up(vm, probe)` for each VM of `wait` until all are up (with a
/// delay: until all run, then the delay), or the wait's budget ends.
pub(super) async fn wait_each<F, Fut>(wait: &TierWait, up: F) -> Result<Waited, EngineError>
where
    F: Fn(String, bool) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let began = Instant::now();
    let deadline = began + budget(wait);
    let delay = delay(wait);
    let mut pending: BTreeSet<String> = wait.vms.iter().cloned().collect();
    let mut why: BTreeMap<String, String> = BTreeMap::new();
    let mut how = Vec::new();
    while !pending.is_empty() {
        for vm in pending.clone() {
            match up(vm.clone(), delay.is_none()).await {
                Ok(h) => {
                    pending.remove(&vm);
                    why.remove(&vm);
                    how.push(h);
                }
                Err(w) => {
                    why.insert(vm, w);
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(timed_out(wait, &why));
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(d) = delay {
        // They run: the delay, during which each is still looked at (a
        // drill copy records when it first answers, for the report).
        let end = Instant::now() + d.min(deadline.saturating_duration_since(Instant::now()));
        while Instant::now() < end {
            for vm in &wait.vms {
                let left = end.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, up(vm.clone(), true)).await;
            }
            tokio::time::sleep(POLL.min(end.saturating_duration_since(Instant::now()))).await;
        }
        how.push(format!("then {}", humantime::format_duration(d)));
    }
    Ok(Waited {
        seconds: began.elapsed().as_secs_f64(),
        how,
    })
}
