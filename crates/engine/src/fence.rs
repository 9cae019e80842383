//! Site fencing: a fenced site runs no VM.
//!
//! The fence is recorded in the database first (so it holds across
//! controller restarts), then enforced: an in-process host's VMs are
//! stopped at once; a remote agent is told to stop all its VMs and refuse
//! starts. A remote agent that cannot be reached learns it from the
//! `fenced` flag of its next heartbeat answer, stops every VM then and
//! keeps refusing starts (persisted in its data dir) until a heartbeat
//! says the site is unfenced. Until then its VMs are reported `pending`.
//!
//! The controller itself never starts a VM at a fenced site. A host of a
//! fenced site counts as running nothing (see [`crate::vms`]) only once
//! that is known ([`Controller::await_fenced`]):
//! - its agent answered the fence call having stopped every VM, or a
//!   heartbeat of its agent reports the fence flag set and no VM alive;
//! - an operator confirmed the site's hosts are off (`fence --confirmed`);
//! - or, with `[ha]`, the agent fenced itself: the controller has not
//!   heard it for `self_fence_after + fence_margin` (on its monotonic
//!   clock, counted from its own start at the latest) and the site-down
//!   alert of the site is firing (a majority of the live vantage points
//!   cannot reach it, none can), so the agent cannot reach a majority of
//!   the quorum either (reachability is assumed symmetric).
//!
//! Otherwise a copy elsewhere is refused, naming what would confirm it.

use std::time::{Duration, Instant};

use chrono::Utc;
use standby_db::FenceRecord;
use standby_types::outcome::{AgentUnfenced, HostFenced, SiteFenced, SiteUnfenced, VmFenced};

use standby_agent::AgentError;

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};

/// Adopt the fence of `site` that agent `agent` reports and this
/// controller does not know: in memory at once (so no answer lifts it),
/// then recorded and enforced like any fence.
pub(crate) fn adopt(ctl: &std::sync::Arc<Controller>, site: &str, agent: &str) {
    let reason = format!(
        "adopted from agent {agent}: its fence flag was set (a lost database, or it fenced itself)"
    );
    tracing::warn!(site, agent, "site fenced: {reason}");
    ctl.fences
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(site.to_string())
        .or_insert_with(|| FenceRecord {
            site: site.to_string(),
            since: Utc::now(),
            reason: reason.clone(),
        });
    let (c, site) = (ctl.clone(), site.to_string());
    ctl.tasks.spawn(async move {
        if let Err(e) = c.fence_site(&site, &reason).await {
            tracing::error!(site, "recording an adopted fence: {e}");
        }
    });
}

/// How long a power-fence command may take.
const POWER_FENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a start waiting for a fence to be confirmed looks again.
const PROOF_POLL: Duration = Duration::from_millis(200);

/// Whether a host of a fenced site is known to run nothing.
enum Proof {
    Known(String),
    /// Known once this instant passes (self-fencing), if nothing changes.
    At(Instant),
    /// Not known, and nothing will tell by itself: why.
    Never(String),
}

impl Controller {
    /// An operator confirms that `site`'s hosts run nothing any more.
    pub fn confirm_fence(&self, site: &str, how: &str) -> Result<(), EngineError> {
        if !self.cfg().sites.contains_key(site) {
            return Err(EngineError::not_found("site", site));
        }
        for (host, _) in self.cfg().hosts.iter().filter(|(_, h)| h.site == site) {
            self.proofs.confirm(host, how);
        }
        tracing::warn!(site, how, "fence confirmed by an operator");
        Ok(())
    }

    /// Wait until `host` of fenced `site` is known to run nothing: at
    /// once when its agent or an operator confirmed it; with `[ha]`,
    /// until the agent has fenced itself for certain. Refused when
    /// nothing can tell.
    pub(crate) async fn await_fenced(&self, site: &str, host: &str) -> Result<(), EngineError> {
        loop {
            match self.proof(site, host) {
                Proof::Known(how) => {
                    tracing::debug!(site, host, how, "fence confirmed");
                    return Ok(());
                }
                Proof::Never(why) => {
                    return Err(EngineError::Conflict(format!(
                        "site {site} is fenced, but it is not known that host {host} runs nothing: {why}; \
                         once its VMs are off for certain, confirm it: standby site fence {site} --confirmed"
                    )));
                }
                Proof::At(at) => {
                    if self.cancel.is_cancelled() {
                        return Err(EngineError::Internal("the controller is stopping".into()));
                    }
                    let wait = at.saturating_duration_since(Instant::now());
                    tokio::time::sleep(wait.clamp(Duration::from_millis(1), PROOF_POLL)).await;
                }
            }
        }
    }

    fn proof(&self, site: &str, host: &str) -> Proof {
        if let Some(how) = self.proofs.confirmed(host) {
            return Proof::Known(how);
        }
        let Ok(agent) = self.agent(host) else {
            return Proof::Known("the host is not configured".into());
        };
        let Some(name) = agent.remote_name().map(str::to_string) else {
            // In-process: fencing stopped its VMs at once.
            return Proof::Known("in-process host".into());
        };
        let (heard, reported) = self.proofs.last_heard(&name);
        if reported {
            return Proof::Known(format!("agent {name} reported every VM stopped"));
        }
        // A controller that just started (a new leader) has not heard
        // the agent yet: its first heartbeats tell whether it is fenced.
        let beat = self
            .cfg()
            .agents
            .get(&name)
            .map(|a| a.heartbeat)
            .unwrap_or(Duration::from_secs(1));
        let grace = beat * 3 + Duration::from_secs(1);
        if let Some(since) = self.proofs.unheard_for(&name)
            && since < grace
        {
            return Proof::At(Instant::now() + (grace - since).min(PROOF_POLL));
        }
        let Some(ha) = &self.cfg().ha else {
            return Proof::Never(format!(
                "agent {name} has not confirmed the fence, and self-fencing is off ([ha])"
            ));
        };
        // The agent has fenced itself for certain once it was not heard
        // for self_fence_after + margin, if it could not reach a majority
        // either, which site-down tells. Detection may end after that
        // moment: it is waited for as long again before giving up.
        let at = heard + ha.fenced_after();
        let now = Instant::now();
        if now < at {
            return Proof::At(at);
        }
        if self.site_down_firing(site) {
            return Proof::Known(format!(
                "agent {name} fenced itself: not heard for {:.1}s with site {site} down",
                heard.elapsed().as_secs_f64()
            ));
        }
        if now < at + ha.self_fence_after {
            return Proof::At(now + PROOF_POLL);
        }
        Proof::Never(format!(
            "agent {name} has not confirmed the fence, and the site-down alert of site {site} \
             is not firing (a vantage point still reaches it, so its agent may not have fenced itself)"
        ))
    }

    /// Run `host`'s power-fence command, if it has one: the program's name
    /// on success, why not otherwise.
    async fn power_fence(&self, host: &str, site: &str) -> Option<Result<String, String>> {
        let live = self.cfg();
        let (prog, args) = live.hosts.get(host)?.power_fence.split_first()?;
        tracing::warn!(site, host, prog, "running the host's power fence");
        let run = tokio::process::Command::new(prog)
            .args(args)
            .env("STANDBY_HOST", host)
            .env("STANDBY_SITE", site)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        Some(match tokio::time::timeout(POWER_FENCE_TIMEOUT, run).await {
            Ok(Ok(out)) if out.status.success() => Ok(prog.clone()),
            Ok(Ok(out)) => Err(format!(
                "{prog} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("{prog}: {e}")),
            Err(_) => Err(format!(
                "{prog} did not finish within {POWER_FENCE_TIMEOUT:?}"
            )),
        })
    }

    /// Whether the built-in site-down alert fires for `site`.
    fn site_down_firing(&self, site: &str) -> bool {
        self.watch.active_alerts().iter().any(|a| {
            a.rule == "site-down" && a.labels.get("site").map(String::as_str) == Some(site)
        })
    }

    /// Whether `site` is fenced (no VM may start there).
    pub async fn is_fenced(&self, site: &str) -> Result<bool, EngineError> {
        Ok(self.fence_of(site).is_some())
    }

    /// The fence of `site`, if it is fenced.
    pub fn fence_of(&self, site: &str) -> Option<FenceRecord> {
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .cloned()
    }

    /// Fence `site`: record it durably and have its agents stop every VM
    /// there and refuse to start any. Idempotent. The answer lists, per
    /// VM, `stopped`, `already stopped`, `pending` (its agent is
    /// unreachable and will stop it when it reconnects) or `failed: ...`.
    pub async fn fence_site(&self, site: &str, reason: &str) -> Result<SiteFenced, EngineError> {
        if !self.cfg().sites.contains_key(site) {
            return Err(EngineError::not_found("site", site));
        }
        let fence = self.repo.fence(site, Utc::now(), reason).await?;
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.to_string(), fence.clone());
        tracing::warn!(site, reason = %fence.reason, "site fenced");
        let records = self.repo.vms().await?;
        let placed_at = |host: &str| -> Vec<String> {
            records
                .iter()
                .filter(|v| v.active_host == host || v.home_host == host)
                .map(|v| v.name.clone())
                .collect()
        };
        let mut vms = Vec::new();
        let mut hosts = Vec::new();
        // Every configured VM: a stale copy of a VM active elsewhere must
        // stop too.
        let vm_names: Vec<String> = self.cfg().vms.keys().cloned().collect();
        for (name, _) in self.cfg().hosts.iter().filter(|(_, h)| h.site == site) {
            let agent = self.agent(name)?;
            let placed = placed_at(name);
            match agent.fence(&fence.reason, &vm_names, &placed).await {
                Ok(done) => {
                    let stopped_all = done.iter().all(|v| !v.result.starts_with("failed"));
                    if stopped_all {
                        self.proofs.confirm(name, "its agent stopped every VM");
                    }
                    for v in done {
                        vms.push(VmFenced {
                            vm: v.vm,
                            host: name.clone(),
                            result: v.result,
                        });
                    }
                    hosts.push(HostFenced {
                        host: name.clone(),
                        agent: agent.remote_name().map(str::to_string),
                        result: "done".into(),
                        error: None,
                        confirmed: self.proofs.confirmed(name),
                    });
                }
                Err(e) => {
                    let who = agent.remote_name().unwrap_or("in-process");
                    let why = match &e {
                        AgentError::Unreachable { .. } => "unreachable".to_string(),
                        other => format!("failed ({})", error_chain(other)),
                    };
                    let mut msg = format!(
                        "pending: agent {who} {why}, it will stop its VMs when it reconnects"
                    );
                    match self.power_fence(name, site).await {
                        Some(Ok(prog)) => {
                            self.proofs
                                .confirm(name, &format!("its power fence ({prog}) succeeded"));
                            msg.push_str("; powered off by its power fence");
                        }
                        Some(Err(e)) => {
                            tracing::error!(site, host = %name, "power fence failed: {e}");
                            msg.push_str(&format!("; its power fence failed: {e}"));
                        }
                        None => {}
                    }
                    tracing::warn!(site, host = %name, "{msg}: {}", error_chain(&e));
                    for vm in placed {
                        vms.push(VmFenced {
                            vm,
                            host: name.clone(),
                            result: "pending".into(),
                        });
                    }
                    hosts.push(HostFenced {
                        host: name.clone(),
                        agent: Some(who.to_string()),
                        result: msg,
                        error: Some(error_chain(&e)),
                        confirmed: self.proofs.confirmed(name),
                    });
                }
            }
        }
        let pending = vms.iter().any(|v| v.result == "pending");
        Ok(SiteFenced {
            site: site.to_string(),
            fenced: true,
            since: fence.since,
            reason: fence.reason,
            pending,
            hosts,
            vms,
        })
    }

    /// Lift the fence of `site`. Idempotent. Remote agents at the site are
    /// told at once when reachable, otherwise by their next heartbeat.
    pub async fn unfence_site(&self, site: &str) -> Result<SiteUnfenced, EngineError> {
        if !self.cfg().sites.contains_key(site) {
            return Err(EngineError::not_found("site", site));
        }
        let lifted = self.repo.unfence(site).await?;
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(site);
        if lifted.is_some() {
            tracing::warn!(site, "site unfenced");
        }
        for (host, _) in self.cfg().hosts.iter().filter(|(_, h)| h.site == site) {
            self.proofs.forget(host);
        }
        let mut agents = Vec::new();
        for (name, _) in self.cfg().hosts.iter().filter(|(_, h)| h.site == site) {
            if let Ok(agent) = self.agent(name)
                && let Some(res) = agent.unfence().await
            {
                agents.push(AgentUnfenced {
                    agent: agent.remote_name().unwrap_or_default().to_string(),
                    result: match res {
                        Ok(_) => "unfenced".to_string(),
                        Err(e) => format!("will learn at its next heartbeat ({})", error_chain(&e)),
                    },
                });
            }
        }
        Ok(SiteUnfenced {
            site: site.to_string(),
            fenced: false,
            was_fenced: lifted.is_some(),
            lifted,
            agents,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use standby_types::api::RestoreRequest;
    use standby_types::config::Config;
    use standby_types::model::PointRecord;

    use crate::controller::Controller;
    use crate::error::EngineError;

    /// Site 1 has an in-process host (`local1`, VM `a`) and a host run by
    /// an agent at `agent_url` (`remote1`, VM `b`); site 2 one in-process
    /// host. VMs are real processes (`sleep`).
    async fn controller(dir: &Path, agent_url: &str) -> Arc<Controller> {
        controller_with(dir, agent_url, "").await
    }

    /// [`controller`] with `remote1_extra` added under `[hosts.remote1]`.
    async fn controller_with(dir: &Path, agent_url: &str, remote1_extra: &str) -> Arc<Controller> {
        let text = format!(
            r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "data"
builtin_rules = false
[sites.site1]
[sites.site2]
[hosts.local1]
site = "site1"
driver = "process"
disk_dir = "disks1"
[hosts.remote1]
site = "site1"
driver = "process"
disk_dir = "disksr"
{remote1_extra}
[hosts.local2]
site = "site2"
driver = "process"
disk_dir = "disks2"
[agents.remote1-agent]
site = "site1"
host = "remote1"
url = "{agent_url}"
[datastores.store2]
site = "site2"
path = "store2"
[vms.a]
host = "local1"
command = "sleep"
args = ["30"]
[[vms.a.disks]]
name = "data"
size = "64KiB"
[vms.b]
host = "remote1"
command = "sleep"
args = ["30"]
[[vms.b.disks]]
name = "data"
size = "64KiB"
"#
        );
        std::fs::write(dir.join("standby.toml"), text).unwrap();
        let cfg = Config::load(&dir.join("standby.toml")).unwrap();
        Controller::open(cfg).await.unwrap()
    }

    async fn add_point(ctl: &Controller, vm: &str) -> String {
        let id = format!("{vm}@20261126T101500.000Z");
        ctl.repo
            .insert_point(&PointRecord {
                id: id.clone(),
                vm: vm.into(),
                group: None,
                site: "site1".into(),
                time: chrono::Utc::now(),
                consistency: "crash".into(),
                size: 65536,
                bytes_read: 0,
                bytes_new: 0,
                copies: vec!["store2".into()],
                damaged: Vec::new(),
            })
            .await
            .unwrap();
        id
    }

    fn at_site2(point: &str) -> RestoreRequest {
        RestoreRequest {
            point: point.into(),
            site: "site2".into(),
            host: None,
            from: None,
            start: true,
        }
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_running_vm_blocks_failover_until_its_site_is_fenced_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path(), &format!("http://127.0.0.1:{}", closed_port())).await;
        // remote1, at a's site, has never said what it runs: a may be
        // running there, so it does not start.
        let e = crate::vms::start(&ctl, "a").await.unwrap_err();
        assert!(
            e.to_string().contains("may be running at remote1")
                && e.to_string()
                    .contains("has not answered since this controller started"),
            "{e}"
        );
        // It did say, at the start-up reconciliation (nothing), and is
        // unreachable since.
        ctl.answered.lock().unwrap().insert("remote1".into());
        let st = crate::vms::start(&ctl, "a").await.unwrap();
        assert!(st.is_alive());
        let pid = st.pid.unwrap();
        let point = add_point(&ctl, "a").await;

        let e = crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap_err();
        assert!(matches!(e, EngineError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("running at local1"), "{e}");

        let r = ctl.fence_site("site1", "drill").await.unwrap();
        assert!(r.pending, "the remote host is pending: {r:?}");
        let a = r.vms.iter().find(|v| v.vm == "a").unwrap();
        assert_eq!(a.result, "stopped", "{r:?}");
        assert!(
            !ctl.agent("local1")
                .unwrap()
                .status("a")
                .await
                .unwrap()
                .is_alive()
        );
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
                // Reaped by now, or a zombie on its way out.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
            }
        );
        crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap();

        // Fencing again is harmless and keeps the first reason.
        let again = ctl.fence_site("site1", "other").await.unwrap();
        assert_eq!(again.reason, "drill");
        // No VM starts at a fenced site.
        let e = crate::vms::start(&ctl, "a").await.unwrap_err();
        assert!(e.to_string().contains("site site1 is fenced"), "{e}");
        ctl.shutdown().await;
    }

    #[tokio::test]
    async fn an_unreachable_agent_blocks_failover_until_its_site_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = controller(dir.path(), &format!("http://127.0.0.1:{}", closed_port())).await;
        let point = add_point(&ctl, "b").await;
        let t0 = std::time::Instant::now();
        let e = crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        let msg = e.to_string();
        assert!(
            msg.contains("site site1") && msg.contains("standby site fence site1"),
            "{msg}"
        );
        assert!(!ctl.is_fenced("site1").await.unwrap());

        let r = ctl.fence_site("site1", "lost").await.unwrap();
        assert!(r.pending);
        let host = r.hosts.iter().find(|h| h.host == "remote1").unwrap();
        assert!(
            host.result
                .starts_with("pending: agent remote1-agent unreachable"),
            "{r:?}"
        );
        let b = r.vms.iter().find(|v| v.vm == "b").unwrap();
        assert_eq!(b.result, "pending");
        assert_eq!(host.confirmed, None);
        // Fenced but unconfirmed (the agent never answered, no [ha]):
        // b may still run at remote1, so the copy is still refused.
        let e = crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("not known that host remote1 runs nothing")
                && msg.contains("self-fencing is off")
                && msg.contains("standby site fence site1 --confirmed"),
            "{msg}"
        );
        // An operator confirms the site is off: the copy may start.
        ctl.confirm_fence("site1", "confirmed by the test").unwrap();
        crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap();

        // The fence is durable: a new controller on the same data dir
        // still treats site 1 as fenced; the confirmation is not (it is
        // learnt again, from the agent or an operator).
        ctl.shutdown().await;
        drop(ctl);
        let ctl = controller(dir.path(), &format!("http://127.0.0.1:{}", closed_port())).await;
        assert!(ctl.is_fenced("site1").await.unwrap());
        // (The rescan dropped the made-up point: the store never held it.)
        let point = add_point(&ctl, "b").await;
        assert!(
            crate::restore::check(&ctl, &at_site2(&point))
                .await
                .is_err()
        );
        ctl.confirm_fence("site1", "confirmed by the test").unwrap();
        crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap();

        // Unfenced, the unreachable agent blocks the failover again.
        let u = ctl.unfence_site("site1").await.unwrap();
        assert!(u.was_fenced);
        assert!(!ctl.unfence_site("site1").await.unwrap().was_fenced);
        assert!(
            crate::restore::check(&ctl, &at_site2(&point))
                .await
                .is_err()
        );
        assert!(matches!(
            ctl.fence_site("site9", "").await,
            Err(EngineError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_power_fence_that_succeeds_confirms_the_fence_and_one_that_fails_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("power.log");
        let ok = format!(
            "power_fence = [\"sh\", \"-c\", \"echo $STANDBY_SITE $STANDBY_HOST >> {}\"]",
            log.display()
        );
        let ctl = controller_with(
            dir.path(),
            &format!("http://127.0.0.1:{}", closed_port()),
            &ok,
        )
        .await;
        let point = add_point(&ctl, "b").await;
        let r = ctl.fence_site("site1", "lost").await.unwrap();
        let host = r.hosts.iter().find(|h| h.host == "remote1").unwrap();
        assert!(
            host.result.contains("powered off by its power fence"),
            "{r:?}"
        );
        assert_eq!(
            host.confirmed.as_deref(),
            Some("its power fence (sh) succeeded")
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "site1 remote1\n");
        crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap();
        ctl.shutdown().await;
        drop(ctl);

        let dir = tempfile::tempdir().unwrap();
        let failing = "power_fence = [\"sh\", \"-c\", \"echo no BMC >&2; exit 3\"]";
        let ctl = controller_with(
            dir.path(),
            &format!("http://127.0.0.1:{}", closed_port()),
            failing,
        )
        .await;
        let point = add_point(&ctl, "b").await;
        let r = ctl.fence_site("site1", "lost").await.unwrap();
        let host = r.hosts.iter().find(|h| h.host == "remote1").unwrap();
        assert!(
            host.result
                .contains("its power fence failed: sh exited with exit status: 3: no BMC"),
            "{r:?}"
        );
        assert_eq!(host.confirmed, None);
        let e = crate::restore::check(&ctl, &at_site2(&point))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("not known that host remote1 runs nothing"),
            "{e}"
        );
        ctl.shutdown().await;
    }
}
