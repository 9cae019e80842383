//! `standby agent`: a process at a site (or in its own network namespace)
//! that sends heartbeats to the controller, runs the probes assigned to it
//! as vantage point `agent:NAME`, and posts their results back. It also
//! answers `GET /health`, so other vantage points can probe it.
//!
//! With `--data-dir`, it is also the agent of a hypervisor host (declared
//! with `host` and `url` under `[agents.NAME]`): it runs that host's VMs
//! with the host's driver (`[hosts.HOST] driver`: process or qemu) whose
//! state lives in `DATA/run` (so a restarted agent adopts its running VMs
//! and, for QEMU, their dirty bitmaps) and answers the execution API
//! under `/agent/v1` (see [`exec_routes`]): status, start, shutdown, stop,
//! provisioning, points into and restores from a datastore it opens
//! itself, fence and unfence, and drills (a copy booted in its own
//! namespace at this host, probed from inside, torn down verified).
//!
//! Policy: every VM definition from the wire is checked against the
//! agent's own configuration file ([`crate::policy`]): the commands it
//! allows, its host's disk directory, no loader environment; QEMU is its
//! own binary. A host agent without that file does not start.
//!
//! Authentication: each agent has a shared secret (`[agents.NAME] token`
//! or `token_file`). The agent sends it as `Authorization: Bearer` on its
//! heartbeats and results; the controller sends it on every `/agent/v1`
//! call, and [`exec_routes`] refuses calls without it (401), or all calls
//! when the agent has no secret. The secret travels in clear over plain
//! HTTP: use a management network or TLS in front.
//!
//! Fencing: an agent told it is fenced (by `POST /agent/v1/fence` or a
//! heartbeat answer with `fenced: true`) stops all its VMs at once and
//! refuses starts (409) until a heartbeat answer says unfenced. The flag
//! is kept in `DATA/fence.json`, so a restarted agent stays fenced. While
//! the controller cannot be reached the agent leaves its VMs as they are:
//! it cannot know whether its site was fenced.
//!
//! The controller is the source of truth: each heartbeat's answer carries
//! the agent's probe list and heartbeat interval, so configuration lives in
//! one place. While the controller is unreachable the agent keeps probing
//! and keeps only results that are still fresh, so a reconnect delivers
//! evidence, not history.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use chrono::Utc;
use standby_types::watch::{ProbeResult, ProbeSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod grants;
mod guard;
mod host;
mod quorum;
mod routes;
mod stores;

pub use host::HostAgent;
pub use routes::exec_routes;

use std::sync::Arc;

use standby_tls::{Identity, Material};

use crate::creds::Creds;
use crate::error::AgentError;
use crate::wire::{Heartbeat, HeartbeatReply};

/// Results kept while the controller cannot be reached.
const MAX_BUFFERED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Base URL of the controller, e.g. `http://198.18.0.1:7780`; several
    /// replicas comma-separated (the agent follows the one that answers).
    pub controller: String,
    pub name: String,
    /// Where to answer `/health` and, with a data dir, `/agent/v1`
    /// (none: no listener).
    pub listen: Option<SocketAddr>,
    /// Makes this the agent of a hypervisor host: VM state, work files
    /// and the fence flag live here.
    pub data_dir: Option<PathBuf>,
    /// How the agent proves itself and checks its callers.
    pub auth: AgentAuth,
    /// What the host agent agrees to run, from its own configuration
    /// file: required with `data_dir`.
    pub policy: Option<crate::policy::Policy>,
    /// Told once the agent serves (its listener bound, its host open),
    /// before its first heartbeat: a service manager's readiness.
    pub ready: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// An agent's credentials.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// A lab without `[pki]`: plain HTTP, the agent's shared token (sent
    /// on heartbeats, expected on the controller's calls).
    Token(Option<String>),
    /// Mutual TLS (`[pki]`).
    Tls {
        /// `agent-NAME`: the server of this agent's API, the client of its
        /// heartbeats and results.
        agent: Arc<Material>,
        /// `peer-NAME`: the client of copies into other agents (host
        /// agents only).
        peer: Option<Arc<Material>>,
        /// The controllers whose calls it takes.
        controllers: Vec<Identity>,
    },
}

impl AgentAuth {
    /// The client of heartbeats and results.
    fn controller_client(&self) -> Result<reqwest::Client, AgentError> {
        let b = standby_http::builder(standby_http::Reach::Internal)
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1));
        match self {
            AgentAuth::Token(t) => Creds::Token(t.clone()).client(Vec::new(), b),
            AgentAuth::Tls {
                agent, controllers, ..
            } => Creds::Tls(agent.clone()).client(controllers.clone(), b),
        }
    }

    /// The shared token sent on heartbeats and expected on calls (none
    /// with TLS).
    fn token(&self) -> Option<&str> {
        match self {
            AgentAuth::Token(t) => t.as_deref(),
            AgentAuth::Tls { .. } => None,
        }
    }

    /// What the host side presents when it copies to a peer.
    fn peer_creds(&self) -> Creds {
        match self {
            AgentAuth::Token(_) => Creds::Token(None),
            AgentAuth::Tls { peer: Some(p), .. } => Creds::Tls(p.clone()),
            // Refused by the peer, with a clear error there and here.
            AgentAuth::Tls { peer: None, .. } => Creds::Token(None),
        }
    }
}

/// Run until `cancel` fires.
pub async fn run(opts: AgentOptions, cancel: CancellationToken) -> Result<(), AgentError> {
    // Several controller replicas, comma-separated: the agent reports to
    // the one that answers as leader, and moves on when it does not.
    let controllers = Arc::new(Controllers::new(&opts.controller, &opts.name));
    let host = match (&opts.data_dir, &opts.policy) {
        (Some(dir), Some(policy)) => Some(
            HostAgent::open(
                &opts.name,
                dir,
                policy.clone(),
                opts.auth.peer_creds(),
                matches!(opts.auth, AgentAuth::Tls { .. }),
            )
            .await?,
        ),
        (Some(_), None) => {
            return Err(AgentError::BadRequest(format!(
                "agent {} runs a host (--data-dir) and needs its own configuration file declaring [agents.{}] with 'host' and 'allowed_commands'",
                opts.name, opts.name
            )));
        }
        (None, _) => None,
    };
    if let Some(addr) = opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AgentError::Internal(format!("unable to listen on {addr}: {e}")))?;
        let name = opts.name.clone();
        let mut app = axum::Router::new().route(
            "/health",
            get(move || {
                let name = name.clone();
                async move { Json(serde_json::json!({"status": "ok", "agent": name})) }
            }),
        );
        let c = cancel.clone();
        match (&host, &opts.auth) {
            (
                host,
                AgentAuth::Tls {
                    agent, controllers, ..
                },
            ) => {
                // Everything over mutual TLS; each route checks the
                // caller's role and name (`/health` takes any certificate
                // of the installation: quorum members ping it).
                if let Some(h) = host {
                    app = app
                        .merge(routes::tls_exec_routes(h.clone(), controllers.clone()))
                        .merge(stores::receive_routes(h.clone()));
                }
                let cfg = standby_tls::server_config(agent.clone())
                    .map_err(|e| AgentError::BadRequest(standby_types::error_chain(&e)))?;
                let tls = standby_tls::TlsListener::new(listener, cfg, cancel.clone())
                    .map_err(|e| AgentError::Internal(format!("TLS listener on {addr}: {e}")))?;
                tokio::spawn(async move {
                    let _ = axum::serve(
                        tls,
                        app.into_make_service_with_connect_info::<standby_tls::TlsPeer>(),
                    )
                    .with_graceful_shutdown(async move { c.cancelled().await })
                    .await;
                });
                tracing::info!(%addr, "agent API on mutual TLS");
            }
            (host, auth @ AgentAuth::Token(_)) => {
                if let Some(h) = host {
                    app = app
                        .merge(exec_routes(h.clone(), auth.token()))
                        .merge(stores::receive_routes(h.clone()));
                }
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { c.cancelled().await })
                        .await;
                });
                tracing::info!(%addr, "agent answering /health");
            }
        }
    }
    let (tx, rx) = mpsc::channel::<ProbeResult>(1024);
    let token = opts.auth.token().map(str::to_string);
    if matches!(opts.auth, AgentAuth::Token(None)) {
        tracing::warn!("no agent token: the controller will refuse heartbeats and results");
    }
    // The controller's session and this agent's counters, for heartbeats
    // and results alike (each counted once).
    let seq = std::sync::Arc::new(crate::fresh::Sequencer::default());
    let http = opts.auth.controller_client()?;
    let sender = tokio::spawn(send_results(
        http.clone(),
        controllers.clone(),
        token.clone(),
        seq.clone(),
        rx,
        cancel.clone(),
    ));
    if let Some(ready) = &opts.ready {
        ready.notify_one();
    }
    // Self-fencing: pings of the quorum, and the check.
    let contact = Arc::new(crate::selffence::Contact::default());
    if let (Some(h), Some(sf)) = (
        &host,
        opts.policy.as_ref().and_then(|p| p.self_fence.clone()),
    ) {
        let clients = quorum_clients(&opts.auth, &sf)?;
        tracing::info!(
            after = ?sf.after,
            members = sf.members.len(),
            "self-fencing armed"
        );
        tokio::spawn(quorum::watch(
            h.clone(),
            sf,
            contact.clone(),
            clients,
            cancel.clone(),
        ));
    }
    let mut interval = Duration::from_secs(1);
    let mut specs: Vec<ProbeSpec> = Vec::new();
    let mut probes = CancellationToken::new();
    let mut reachable = true;
    let mut hellos = 0u32;
    loop {
        let (session, n) = seq.next().unzip();
        let (fenced, flagged, epoch) = match &host {
            Some(h) => (
                h.fenced_and_quiet().await,
                h.is_fenced().await,
                h.epochs.highest(),
            ),
            None => (false, false, 0),
        };
        let hb = Heartbeat {
            version: env!("CARGO_PKG_VERSION").into(),
            session,
            seq: n,
            fenced,
            flagged,
            epoch,
        };
        let mut again = false;
        let sent = std::time::Instant::now();
        let url = controllers.url("heartbeat");
        match with_token(http.post(&url), &token).json(&hb).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<HeartbeatReply>().await {
                Ok(reply) => {
                    contact.leader_answered(sent);
                    if !reachable {
                        tracing::info!("controller reachable again");
                    }
                    reachable = true;
                    interval = reply.heartbeat;
                    if let Some(h) = &host {
                        h.heartbeat_answer(reply.epoch, reply.fenced).await;
                    }
                    // Not counted (a first heartbeat, or the controller
                    // restarted): the next one goes at once, with the
                    // session it told (a few times in a row at most).
                    if let Some(s) = reply.session {
                        tracing::debug!("controller session adopted");
                        seq.adopt(s);
                        hellos += 1;
                        again = hellos <= 3;
                    } else {
                        hellos = 0;
                    }
                    if reply.probes != specs {
                        probes.cancel();
                        probes = cancel.child_token();
                        tracing::info!(probes = reply.probes.len(), "probe assignment");
                        for spec in &reply.probes {
                            tokio::spawn(run_probe(
                                spec.clone(),
                                opts.name.clone(),
                                tx.clone(),
                                probes.clone(),
                            ));
                        }
                        specs = reply.probes;
                    }
                }
                Err(e) => tracing::warn!("unreadable heartbeat answer: {e}"),
            },
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status == reqwest::StatusCode::NOT_FOUND && controller_not_found(&body) {
                    return Err(AgentError::BadRequest(format!(
                        "the controller does not know agent '{}': declare it under [agents] in standby.toml ({body})",
                        opts.name
                    )));
                }
                if status == reqwest::StatusCode::NOT_FOUND {
                    // Not a controller's answer (a proxy, or an address
                    // now routed elsewhere): as if the replica were
                    // unreachable, never a reason to stop.
                    tracing::warn!(%url, "heartbeat answered 404 by something other than a standby controller: {body:.200}");
                    reachable = false;
                    again = controllers.next();
                } else {
                    tracing::warn!(%status, "heartbeat refused: {body}");
                }
            }
            Err(e) => {
                if reachable {
                    tracing::warn!("controller unreachable: {}", standby_types::error_chain(&e));
                }
                reachable = false;
                // Another replica may lead now: try it at once.
                again = controllers.next();
            }
        }
        if again {
            continue;
        }
        if !pause(&cancel, interval).await {
            break;
        }
    }
    probes.cancel();
    drop(tx);
    let _ = sender.await;
    Ok(())
}

/// One client per quorum member: with TLS, presenting this agent's peer
/// certificate and expecting that member's agent certificate.
fn quorum_clients(
    auth: &AgentAuth,
    sf: &crate::selffence::SelfFence,
) -> Result<Vec<reqwest::Client>, AgentError> {
    sf.members
        .iter()
        .map(|(name, _)| {
            let b = standby_http::builder(standby_http::Reach::Internal)
                .connect_timeout(Duration::from_secs(1));
            match auth.peer_creds() {
                Creds::Tls(m) => Creds::Tls(m).client(
                    vec![crate::creds::identity(standby_tls::Role::Agent, name)?],
                    b,
                ),
                c => c.client(Vec::new(), b),
            }
        })
        .collect()
}

/// The agent's token on a call, if it has one (none with TLS).
fn with_token(r: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

/// Wait `d`, or less if cancelled: false then.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn run_probe(
    spec: ProbeSpec,
    agent: String,
    tx: mpsc::Sender<ProbeResult>,
    cancel: CancellationToken,
) {
    let vantage = format!("agent:{agent}");
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at = Utc::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = standby_monitor::probe::run(&spec) => o,
        };
        let r = standby_monitor::probe::result(&spec, &vantage, at, &outcome);
        if tx.send(r).await.is_err() {
            return;
        }
    }
}

/// Post results as they come, in batches; keep unsent fresh ones.
/// The controller replicas an agent reports to, and the one it uses now.
struct Controllers {
    bases: Vec<String>,
    agent: String,
    current: std::sync::atomic::AtomicUsize,
}

impl Controllers {
    fn new(list: &str, agent: &str) -> Controllers {
        Controllers {
            bases: list
                .split(',')
                .map(|b| b.trim().trim_end_matches('/').to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            agent: agent.to_string(),
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// `/api/v1/agents/NAME/<op>` at the replica in use.
    fn url(&self, op: &str) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let base = self.bases.get(i).map(String::as_str).unwrap_or_default();
        format!("{base}/api/v1/agents/{}/{op}", self.agent)
    }

    /// Move to the next replica; false when there is only one (nothing to
    /// try at once) or the round is complete.
    fn next(&self) -> bool {
        let n = self.bases.len();
        if n < 2 {
            return false;
        }
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let to = (i + 1) % n;
        self.current.store(to, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(controller = %self.bases[to], "trying the next controller replica");
        to != 0
    }
}

/// Whether a 404 is a standby controller's own (its JSON error with code
/// `not_found`: this agent is not declared), not a proxy's or another
/// server's, which must not make the agent stop.
fn controller_not_found(body: &str) -> bool {
    serde_json::from_str::<standby_types::api::ApiError>(body).is_ok_and(|e| e.code == "not_found")
}

async fn send_results(
    http: reqwest::Client,
    controllers: Arc<Controllers>,
    token: Option<String>,
    seq: std::sync::Arc<crate::fresh::Sequencer>,
    mut rx: mpsc::Receiver<ProbeResult>,
    cancel: CancellationToken,
) {
    let mut buf: VecDeque<ProbeResult> = VecDeque::new();
    loop {
        if buf.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.recv() => match r {
                    Some(r) => buf.push_back(r),
                    None => return,
                },
            }
        }
        while let Ok(r) = rx.try_recv() {
            buf.push_back(r);
        }
        let now = Utc::now();
        buf.retain(|r| chrono::Duration::from_std(r.stale_after).is_ok_and(|s| now - r.at <= s));
        while buf.len() > MAX_BUFFERED {
            buf.pop_front();
        }
        if buf.is_empty() {
            continue;
        }
        let batch: Vec<&ProbeResult> = buf.iter().collect();
        let Some((session, n)) = seq.next() else {
            // No session yet: the next heartbeat's answer brings it.
            if !pause(&cancel, Duration::from_millis(250)).await {
                return;
            }
            continue;
        };
        match with_token(http.post(controllers.url("results")), &token)
            .json(&serde_json::json!({ "results": batch, "session": session, "seq": n }))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => buf.clear(),
            Ok(resp) if resp.status() == reqwest::StatusCode::CONFLICT => {
                // A stale session (the controller restarted): kept until
                // the next heartbeat's answer brings the new one.
                let body = resp.text().await.unwrap_or_default();
                tracing::debug!("results not taken yet: {body}");
                seq.forget(&session);
                if !pause(&cancel, Duration::from_millis(250)).await {
                    return;
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                tracing::warn!(%status, "results refused: {body}");
                // A refusal will not change by resending the same batch.
                buf.clear();
            }
            Err(e) => {
                tracing::debug!("results not delivered, kept for later: {e}");
                if !pause(&cancel, Duration::from_millis(250)).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod not_found_tests {
    use super::controller_not_found;

    #[test]
    fn only_the_controllers_own_404_stops_the_agent() {
        let ours = serde_json::to_string(&standby_types::api::ApiError {
            code: "not_found".into(),
            message: "agent 'witness' not found".into(),
            retryable: false,
        })
        .unwrap();
        assert!(controller_not_found(&ours));
        // A gateway's empty 404, a web server's page, another error.
        assert!(!controller_not_found(""));
        assert!(!controller_not_found("<html><body>Not Found</body></html>"));
        assert!(!controller_not_found(
            r#"{"code":"conflict","message":"x","retryable":false}"#
        ));
    }
}
