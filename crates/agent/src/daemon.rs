//! `standby agent`: a process at a site (or in its own network namespace)
//! that sends heartbeats to the controller, runs the probes assigned to it
//! as vantage point `agent:NAME`, and posts their results back. It also
//! answers `GET /health`, so other vantage points can probe it.
//!
//! With `--data-dir`, it is also the agent of a hypervisor host (declared
//! with `host` and `url` under `[agents.NAME]`): it runs that host's VMs
//! with a process driver whose state lives in `DATA/run` (so a restarted
//! agent adopts its running VMs) and answers the execution API under
//! `/agent/v1` (see [`exec_routes`]): status, start, shutdown, stop,
//! provisioning, points into and restores from a datastore it opens
//! itself, fence and unfence.
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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_hv::{DiskSpec, Driver, ProcessDriver, VmSpec, VmStatus};
use standby_store::{Datastore, PointId};
use standby_types::config::DatastoreConfig;
use standby_types::watch::{ProbeResult, ProbeSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::ops::PointRequest;
use crate::progress::Quiet;
use crate::wire::{
    FenceCall, FencedVm, Heartbeat, HeartbeatReply, PointCall, PointDone, RestoreCall, RestoreDone,
    ShutdownCall, SpecCall, VmCall,
};

/// Results kept while the controller cannot be reached.
const MAX_BUFFERED: usize = 10_000;

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Base URL of the controller, e.g. `http://198.18.0.1:7780`.
    pub controller: String,
    pub name: String,
    /// Where to answer `/health` and, with a data dir, `/agent/v1`
    /// (none: no listener).
    pub listen: Option<SocketAddr>,
    /// Makes this the agent of a hypervisor host: VM state, work files
    /// and the fence flag live here.
    pub data_dir: Option<PathBuf>,
    /// The agent's secret (`[agents.NAME] token`/`token_file`).
    pub token: Option<String>,
    /// Told once the agent serves (its listener bound, its host open),
    /// before its first heartbeat: a service manager's readiness.
    pub ready: Option<std::sync::Arc<tokio::sync::Notify>>,
}

fn client() -> reqwest::Client {
    standby_http::builder(standby_http::Reach::Internal)
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default()
}

/// Run until `cancel` fires.
pub async fn run(opts: AgentOptions, cancel: CancellationToken) -> Result<(), AgentError> {
    let base = opts.controller.trim_end_matches('/').to_string();
    let host = match &opts.data_dir {
        Some(dir) => Some(HostAgent::open(&opts.name, dir).await?),
        None => None,
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
        if let Some(h) = &host {
            app = app.merge(exec_routes(h.clone(), opts.token.as_deref()));
        }
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await;
        });
        tracing::info!(%addr, "agent answering /health");
    }
    let (tx, rx) = mpsc::channel::<ProbeResult>(1024);
    let token = opts.token.clone().unwrap_or_default();
    if opts.token.is_none() {
        tracing::warn!("no agent token: the controller will refuse heartbeats and results");
    }
    let sender = tokio::spawn(send_results(
        client(),
        format!("{base}/api/v1/agents/{}/results", opts.name),
        token.clone(),
        rx,
        cancel.clone(),
    ));
    let http = client();
    let url = format!("{base}/api/v1/agents/{}/heartbeat", opts.name);
    if let Some(ready) = &opts.ready {
        ready.notify_one();
    }
    let mut interval = Duration::from_secs(1);
    let mut specs: Vec<ProbeSpec> = Vec::new();
    let mut probes = CancellationToken::new();
    let mut reachable = true;
    loop {
        let hb = Heartbeat {
            version: env!("CARGO_PKG_VERSION").into(),
        };
        match http.post(&url).bearer_auth(&token).json(&hb).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<HeartbeatReply>().await {
                Ok(reply) => {
                    if !reachable {
                        tracing::info!("controller reachable again");
                    }
                    reachable = true;
                    interval = reply.heartbeat;
                    if let Some(h) = &host {
                        h.heartbeat_fenced(reply.fenced).await;
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
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(AgentError::BadRequest(format!(
                        "the controller does not know agent '{}': declare it under [agents] in standby.toml ({body})",
                        opts.name
                    )));
                }
                tracing::warn!(%status, "heartbeat refused: {body}");
            }
            Err(e) => {
                if reachable {
                    tracing::warn!("controller unreachable: {e}");
                }
                reachable = false;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    probes.cancel();
    drop(tx);
    let _ = sender.await;
    Ok(())
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
async fn send_results(
    http: reqwest::Client,
    url: String,
    token: String,
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
        match http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "results": batch }))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => buf.clear(),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                tracing::warn!(%status, "results refused: {body}");
                // A refusal will not change by resending the same batch.
                buf.clear();
            }
            Err(e) => {
                tracing::debug!("results not delivered, kept for later: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

/// The fence as the agent keeps it (`DATA/fence.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FenceState {
    since: DateTime<Utc>,
    reason: String,
}

/// The host side of an agent: its driver, its fence, its open datastores.
pub struct HostAgent {
    name: String,
    dir: PathBuf,
    driver: ProcessDriver,
    /// Held across a start and across fencing, so a start never slips in
    /// between the fence being set and the VMs being stopped.
    fence: tokio::sync::Mutex<Option<FenceState>>,
    stores: Mutex<HashMap<String, (String, Datastore)>>,
}

impl HostAgent {
    /// Open the data dir: adopt the VMs still running from an earlier run
    /// and take up a fence left in force (stopping what runs).
    pub async fn open(name: &str, dir: &Path) -> Result<Arc<HostAgent>, AgentError> {
        for sub in ["run", "vms"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                AgentError::Internal(format!(
                    "unable to create the agent data directory {}: {e}",
                    dir.join(sub).display()
                ))
            })?;
        }
        let fence = match std::fs::read(dir.join("fence.json")) {
            Ok(b) => Some(serde_json::from_slice::<FenceState>(&b).map_err(|e| {
                AgentError::Internal(format!(
                    "unreadable fence flag {}: {e}; remove it only if the site is not fenced",
                    dir.join("fence.json").display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(AgentError::Internal(format!(
                    "unable to read {}: {e}",
                    dir.join("fence.json").display()
                )));
            }
        };
        let host = Arc::new(HostAgent {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            driver: ProcessDriver::with_state_dir(dir.join("run")),
            fence: tokio::sync::Mutex::new(fence),
            stores: Mutex::default(),
        });
        let names = host.adopt_all().await;
        tracing::info!(vms = ?names, dir = %dir.display(), "host agent ready");
        {
            let fence = host.fence.lock().await;
            if let Some(f) = &*fence {
                tracing::warn!(since = %f.since, reason = %f.reason, "site fenced: stopping every vm");
                host.stop_everything().await;
            }
        }
        Ok(host)
    }

    /// Adopt every VM with a pid file (a restart of the agent); their
    /// names.
    async fn adopt_all(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("run")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                {
                    let _ = self.driver.status(stem).await;
                    names.push(stem.to_string());
                }
            }
        }
        names
    }

    /// Force-stop every VM; what happened to each. Caller holds the fence
    /// lock.
    async fn stop_everything(&self) -> Vec<FencedVm> {
        self.adopt_all().await;
        let mut out = Vec::new();
        for (vm, st) in self.driver.list() {
            let result = if st.is_alive() {
                match self.driver.stop(&vm).await {
                    Ok(_) => "stopped".to_string(),
                    Err(e) => format!("failed: {}", standby_types::error_chain(&e)),
                }
            } else {
                "already stopped".to_string()
            };
            if result != "already stopped" {
                tracing::warn!(vm, "fenced: {result}");
            }
            out.push(FencedVm { vm, result });
        }
        out
    }

    fn persist(&self, fence: &Option<FenceState>) -> Result<(), AgentError> {
        let path = self.dir.join("fence.json");
        let io = |e: std::io::Error| {
            AgentError::Internal(format!(
                "unable to record the fence in {}: {e}",
                path.display()
            ))
        };
        match fence {
            Some(f) => {
                let tmp = self.dir.join("fence.json.tmp");
                let mut file = std::fs::File::create(&tmp).map_err(io)?;
                std::io::Write::write_all(&mut file, &serde_json::to_vec(f).unwrap_or_default())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            },
        }
        Ok(())
    }

    /// Fence this host: recorded first, then every VM stopped. Idempotent.
    async fn fence(&self, reason: &str) -> Result<Vec<FencedVm>, AgentError> {
        let mut fence = self.fence.lock().await;
        if fence.is_none() {
            let f = Some(FenceState {
                since: Utc::now(),
                reason: reason.to_string(),
            });
            self.persist(&f)?;
            *fence = f;
            tracing::warn!(reason, "site fenced: stopping every vm, refusing starts");
        }
        Ok(self.stop_everything().await)
    }

    async fn unfence(&self) -> Result<bool, AgentError> {
        let mut fence = self.fence.lock().await;
        if fence.is_none() {
            return Ok(false);
        }
        self.persist(&None)?;
        *fence = None;
        tracing::warn!("site unfenced: starts allowed again");
        Ok(true)
    }

    /// What a heartbeat answer says about the fence.
    async fn heartbeat_fenced(&self, fenced: bool) {
        let result = if fenced {
            self.fence("fenced by the controller").await.map(|_| ())
        } else {
            self.unfence().await.map(|_| ())
        };
        if let Err(e) = result {
            tracing::error!("{e}");
        }
    }

    /// The spec with this agent's own work directory, a bare command name
    /// looked up beside this binary first.
    fn local(&self, mut spec: VmSpec) -> VmSpec {
        spec.workdir = self.dir.join("vms");
        if let Some(bare) = spec.command.to_str().map(String::from) {
            spec.command = crate::local::resolve_command(&bare);
        }
        spec
    }

    fn store(&self, name: &str, cfg: &DatastoreConfig) -> Result<Datastore, AgentError> {
        let key = serde_json::to_string(cfg).unwrap_or_default();
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, s)) = stores.get(name)
            && *k == key
        {
            return Ok(s.clone());
        }
        let s = crate::stores::open(name, cfg)?;
        stores.insert(name.to_string(), (key, s.clone()));
        Ok(s)
    }
}

type Host = State<Arc<HostAgent>>;
type Answer<T> = Result<Json<T>, AgentError>;

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// The agent API's errors: the controller API's `{code, message,
/// retryable}` with the matching status.
impl axum::response::IntoResponse for AgentError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode;
        let api = self.to_api();
        let status = match api.code.as_str() {
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "bad_request" => StatusCode::BAD_REQUEST,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "unreachable" => StatusCode::SERVICE_UNAVAILABLE,
            "timeout" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(api)).into_response()
    }
}

/// The execution API of a host agent, under `/agent/v1`. Every call is a
/// POST with a JSON body (see the `*Call` types in [`crate::wire`]);
/// errors are the API's `{code, message, retryable}`. Every call must
/// carry `token` as `Authorization: Bearer` (401 otherwise; with no token,
/// every call is refused).
pub fn exec_routes(host: Arc<HostAgent>, token: Option<&str>) -> Router {
    let expected = Arc::new(token.map(|t| sha256(t.as_bytes())));
    Router::new()
        .route("/agent/v1/state", get(state))
        .route("/agent/v1/status", post(status))
        .route("/agent/v1/start", post(start))
        .route("/agent/v1/shutdown", post(shutdown))
        .route("/agent/v1/stop", post(stop))
        .route("/agent/v1/provision", post(provision))
        .route("/agent/v1/missing-disks", post(missing_disks))
        .route("/agent/v1/point", post(point))
        .route("/agent/v1/restore", post(restore))
        .route("/agent/v1/fence", post(fence))
        .route("/agent/v1/unfence", post(unfence))
        .layer(axum::middleware::from_fn_with_state(expected, check_token))
        .with_state(host)
}

async fn check_token(
    State(expected): State<Arc<Option<[u8; 32]>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use subtle::ConstantTimeEq;
    let sent = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refuse = |m: &str| {
        let mut r = AgentError::Unauthorized(m.to_string()).into_response();
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        r
    };
    match (expected.as_ref(), sent) {
        (None, _) => refuse("this agent has no token configured: it takes no calls"),
        (Some(_), None) => refuse("the agent API needs the agent's token"),
        (Some(h), Some(s)) if bool::from(h.ct_eq(&sha256(s.trim().as_bytes()))) => {
            next.run(req).await
        }
        (Some(_), Some(_)) => refuse("wrong agent token"),
    }
}

async fn state(State(h): Host) -> Answer<serde_json::Value> {
    h.adopt_all().await;
    let fence = h.fence.lock().await.clone();
    let vms: Vec<_> = h
        .driver
        .list()
        .into_iter()
        .map(|(vm, st)| serde_json::json!({"vm": vm, "status": st}))
        .collect();
    Ok(Json(serde_json::json!({
        "agent": h.name,
        "fenced": fence.is_some(),
        "fence": fence,
        "vms": vms,
    })))
}

async fn status(State(h): Host, Json(c): Json<VmCall>) -> Answer<VmStatus> {
    Ok(Json(h.driver.status(&c.vm).await?))
}

async fn start(State(h): Host, Json(c): Json<SpecCall>) -> Answer<VmStatus> {
    let fence = h.fence.lock().await;
    if let Some(f) = &*fence {
        return Err(AgentError::Conflict(format!(
            "agent {} refuses to start vm {}: its site is fenced since {} ({}); the controller must unfence it",
            h.name,
            c.spec.name,
            f.since.to_rfc3339(),
            f.reason
        )));
    }
    let spec = h.local(c.spec);
    Ok(Json(h.driver.start(&spec).await?))
}

async fn shutdown(State(h): Host, Json(c): Json<ShutdownCall>) -> Answer<VmStatus> {
    Ok(Json(
        h.driver
            .shutdown(&c.vm, Duration::from_millis(c.timeout_ms))
            .await?,
    ))
}

async fn stop(State(h): Host, Json(c): Json<VmCall>) -> Answer<VmStatus> {
    Ok(Json(h.driver.stop(&c.vm).await?))
}

async fn provision(State(_h): Host, Json(c): Json<SpecCall>) -> Answer<serde_json::Value> {
    tokio::task::spawn_blocking(move || crate::local::provision_disks(&c.spec)).await??;
    Ok(Json(serde_json::json!({})))
}

async fn missing_disks(Json(c): Json<SpecCall>) -> Answer<Vec<DiskSpec>> {
    Ok(Json(crate::local::missing_disks(&c.spec)))
}

async fn point(State(h): Host, Json(c): Json<PointCall>) -> Answer<PointDone> {
    let store = {
        let h = h.clone();
        let (name, cfg) = (c.datastore.clone(), c.config.clone());
        tokio::task::spawn_blocking(move || h.store(&name, &cfg)).await??
    };
    let spec = h.local(c.spec);
    let req = PointRequest {
        site: c.site,
        chunk_size: c.chunk_size,
        labels: c.labels,
        vm_config: c.vm_config,
    };
    let (manifest, stats) =
        crate::local::take_point(&h.driver, &spec, &store, req, Arc::new(Quiet)).await?;
    tracing::info!(vm = %spec.name, point = %manifest.id, datastore = %c.datastore, "point taken");
    Ok(Json(PointDone { manifest, stats }))
}

async fn restore(State(h): Host, Json(c): Json<RestoreCall>) -> Answer<RestoreDone> {
    let point: PointId = c
        .point
        .parse()
        .map_err(|e| AgentError::BadRequest(format!("bad point id '{}': {e}", c.point)))?;
    let store = {
        let h = h.clone();
        let (name, cfg) = (c.datastore.clone(), c.config.clone());
        tokio::task::spawn_blocking(move || h.store(&name, &cfg)).await??
    };
    let spec = h.local(c.spec);
    let bytes = crate::local::restore_point(&spec, &store, &point, Arc::new(Quiet), None).await?;
    tracing::info!(vm = %spec.name, %point, datastore = %c.datastore, bytes, "point restored");
    Ok(Json(RestoreDone { bytes }))
}

async fn fence(State(h): Host, Json(c): Json<FenceCall>) -> Answer<Vec<FencedVm>> {
    Ok(Json(h.fence(&c.reason).await?))
}

async fn unfence(State(h): Host) -> Answer<serde_json::Value> {
    let was = h.unfence().await?;
    Ok(Json(serde_json::json!({"unfenced": was})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> VmSpec {
        VmSpec {
            name: "v".into(),
            command: "sleep".into(),
            args: vec!["30".into()],
            env: Default::default(),
            disks: Vec::new(),
            workdir: dir.join("elsewhere"),
            qemu: None,
        }
    }

    /// The agent API answers each code with the controller API's status;
    /// an internal error is not retryable, a host's I/O is.
    #[test]
    fn errors_answer_the_controller_apis_codes_and_statuses() {
        use axum::response::IntoResponse;
        let remote = |code: &str, retryable| AgentError::Remote {
            host: "h".into(),
            code: code.into(),
            message: "m".into(),
            retryable,
        };
        for (e, status, code, retryable) in [
            (AgentError::not_found("vm", "v"), 404, "not_found", false),
            (AgentError::Conflict("fenced".into()), 409, "conflict", true),
            (AgentError::Internal("a bug".into()), 500, "internal", false),
            (
                AgentError::Io {
                    what: "unable to write fence.json".into(),
                    source: std::io::Error::other("disk full"),
                },
                500,
                "io",
                true,
            ),
            (remote("timeout", true), 504, "timeout", true),
        ] {
            let api = e.to_api();
            assert_eq!((api.code.as_str(), api.retryable), (code, retryable), "{e}");
            assert_eq!(e.into_response().status().as_u16(), status, "{code}");
        }
    }

    #[tokio::test]
    async fn the_agent_api_answers_only_calls_with_the_agents_token() {
        let dir = tempfile::tempdir().unwrap();
        let h = HostAgent::open("a", dir.path()).await.unwrap();
        let serve = |token: Option<&str>| {
            let app = exec_routes(h.clone(), token);
            async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(l, app).await });
                format!("http://{addr}/agent/v1/state")
            }
        };
        let http = client();
        let status = |url: String, bearer: Option<&'static str>| {
            let http = http.clone();
            async move {
                let mut r = http.get(url);
                if let Some(b) = bearer {
                    r = r.bearer_auth(b);
                }
                r.send().await.unwrap().status().as_u16()
            }
        };
        let url = serve(Some("the-agents-secret-123")).await;
        assert_eq!(status(url.clone(), None).await, 401);
        assert_eq!(status(url.clone(), Some("not-the-secret-1234")).await, 401);
        assert_eq!(status(url, Some("the-agents-secret-123")).await, 200);
        // An agent without a secret takes no calls at all.
        let url = serve(None).await;
        assert_eq!(status(url.clone(), None).await, 401);
        assert_eq!(status(url, Some("anything-at-all-123")).await, 401);
    }

    #[tokio::test]
    async fn a_fenced_agent_stops_its_vms_and_stays_fenced_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let h = HostAgent::open("a", dir.path()).await.unwrap();
        let Json(st) = start(
            State(h.clone()),
            Json(SpecCall {
                spec: sleeper(dir.path()),
            }),
        )
        .await
        .unwrap();
        assert!(st.is_alive());
        // The agent's own work directory, not the controller's.
        assert!(dir.path().join("vms/v.log").exists());

        let done = h.fence("drill").await.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].vm.as_str(), done[0].result.as_str()),
            ("v", "stopped")
        );
        assert!(!h.driver.status("v").await.unwrap().is_alive());
        drop(h);

        // A restarted agent is still fenced and refuses starts.
        let h = HostAgent::open("a", dir.path()).await.unwrap();
        let e = start(
            State(h.clone()),
            Json(SpecCall {
                spec: sleeper(dir.path()),
            }),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AgentError::Conflict(_)), "{e}");
        assert!(e.to_string().contains("fenced"), "{e}");
        assert!(!h.driver.status("v").await.unwrap().is_alive());

        // A heartbeat answer without the fence lifts it.
        h.heartbeat_fenced(false).await;
        assert!(!dir.path().join("fence.json").exists());
        let Json(st) = start(
            State(h.clone()),
            Json(SpecCall {
                spec: sleeper(dir.path()),
            }),
        )
        .await
        .unwrap();
        assert!(st.is_alive());
        h.driver.stop("v").await.unwrap();
    }
}
