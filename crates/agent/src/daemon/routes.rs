//! The execution API of a host agent, under `/agent/v1`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use standby_hv::{DiskSpec, MigrationReport, MigrationTarget, VmStatus};
use standby_store::{Datastore, PointId};
use standby_types::config::DatastoreConfig;
use standby_types::outcome::{DrillProbed, DrillState, DrillStopped};

use super::host::{Answer, Host, HostAgent};
use crate::error::AgentError;
use crate::ops::{Host as _, PointRequest, StoreRef};
use crate::policy::check_vm_name;
use crate::progress::Quiet;
use crate::wire::{
    DrillCall, DrillProbeCall, DrillStartCall, FenceCall, FencedVm, Listed, MAX_STATUSES,
    MigrateConfirmCall, MigrateOutCall, MigratePrepareCall, PointCall, PointDone, RestoreCall,
    RestoreDone, ShutdownCall, SpecCall, VmCall, VmStatuses, VmsCall,
};

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
            "conflict" | "stale_session" | "replayed" | "stale_epoch" => StatusCode::CONFLICT,
            "bad_request" => StatusCode::BAD_REQUEST,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
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
/// every call is refused), and each POST this agent's session and a fresh
/// counter ([`super::guard`]).
pub fn exec_routes(host: Arc<HostAgent>, token: Option<&str>) -> Router {
    let expected = Arc::new(token.map(|t| sha256(t.as_bytes())));
    routes(host).layer(axum::middleware::from_fn_with_state(expected, check_token))
}

/// [`exec_routes`] over mutual TLS: the caller must present the
/// certificate of one of `controllers` (an agent's or a peer's is refused,
/// and logged).
pub fn tls_exec_routes(host: Arc<HostAgent>, controllers: Vec<standby_tls::Identity>) -> Router {
    routes(host).layer(axum::middleware::from_fn_with_state(
        Arc::new(controllers),
        super::guard::controllers_only,
    ))
}

fn routes(host: Arc<HostAgent>) -> Router {
    Router::new()
        .route("/agent/v1/session", get(super::guard::session))
        .route("/agent/v1/state", get(state))
        .route("/agent/v1/status", post(status))
        .route("/agent/v1/statuses", post(statuses))
        .route("/agent/v1/start", post(start))
        .route("/agent/v1/shutdown", post(shutdown))
        .route("/agent/v1/stop", post(stop))
        .route("/agent/v1/provision", post(provision))
        .route("/agent/v1/missing-disks", post(missing_disks))
        .route("/agent/v1/migrate/prepare", post(migrate_prepare))
        .route("/agent/v1/migrate/out", post(migrate_out))
        .route("/agent/v1/migrate/finish", post(migrate_finish))
        .route("/agent/v1/migrate/abort", post(migrate_abort))
        .route("/agent/v1/migrate/confirm", post(migrate_confirm))
        .route("/agent/v1/point", post(point))
        .route("/agent/v1/restore", post(restore))
        .route("/agent/v1/restore-template", post(restore_template))
        .route("/agent/v1/fence", post(fence))
        .route("/agent/v1/unfence", post(unfence))
        .merge(super::stores::routes())
        .route("/agent/v1/drill/start", post(drill_start))
        .route("/agent/v1/drill/probe", post(drill_probe))
        .route("/agent/v1/drill/stop", post(drill_stop))
        // Counted once (fresh), then from the current leader (epoch).
        .layer(axum::middleware::from_fn_with_state(
            host.clone(),
            super::guard::current_epoch,
        ))
        .layer(axum::middleware::from_fn_with_state(
            host.clone(),
            super::guard::fresh_calls,
        ))
        .with_state(host)
}

pub(super) async fn check_token(
    State(expected): State<Arc<Option<[u8; 32]>>>,
    mut req: axum::extract::Request,
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
            req.extensions_mut()
                .insert(super::guard::Caller("controller".into()));
            next.run(req).await
        }
        (Some(_), Some(_)) => refuse("wrong agent token"),
    }
}

async fn state(State(h): Host) -> Answer<serde_json::Value> {
    let fence = h.fence.lock().await.clone();
    let vms: Vec<_> = h
        .vms()
        .await
        .into_iter()
        .map(|(vm, st)| serde_json::json!({"vm": vm, "status": st}))
        .collect();
    Ok(Json(serde_json::json!({
        "agent": h.name,
        "host": h.policy.host,
        "driver": h.policy.driver_kind(),
        "fenced": fence.is_some(),
        "fence": fence,
        "epoch": h.epochs.highest(),
        "vms": vms,
    })))
}

async fn status(State(h): Host, Json(c): Json<VmCall>) -> Answer<VmStatus> {
    check_vm_name(&c.vm)?;
    Ok(Json(h.exec.status(&c.vm).await?))
}

/// The status of each VM asked about, as `status` gives it (a VM whose
/// status the driver cannot tell is left out).
async fn statuses(State(h): Host, Json(c): Json<VmsCall>) -> Answer<VmStatuses> {
    if c.vms.len() > MAX_STATUSES {
        return Err(AgentError::BadRequest(format!(
            "{} VMs asked about in one statuses call; at most {MAX_STATUSES}",
            c.vms.len()
        )));
    }
    let mut statuses = Vec::with_capacity(c.vms.len());
    for vm in c.vms {
        check_vm_name(&vm)?;
        if let Ok(status) = h.exec.status(&vm).await {
            statuses.push(Listed { vm, status });
        }
    }
    Ok(Json(VmStatuses { statuses }))
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
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.start(&spec).await?))
}

/// A fenced agent takes no VM in: neither a start nor a migration.
async fn refuse_fenced(h: &HostAgent, what: &str, vm: &str) -> Result<(), AgentError> {
    if let Some(f) = &*h.fence.lock().await {
        return Err(AgentError::Conflict(format!(
            "agent {} refuses to {what} vm {vm}: its site is fenced since {} ({}); the controller must unfence it",
            h.name,
            f.since.to_rfc3339(),
            f.reason
        )));
    }
    Ok(())
}

async fn migrate_prepare(
    State(h): Host,
    Json(c): Json<MigratePrepareCall>,
) -> Answer<MigrationTarget> {
    refuse_fenced(&h, "take a live migration of", &c.spec.name).await?;
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.migrate_in_prepare(&spec, c.listen).await?))
}

async fn migrate_out(State(h): Host, Json(c): Json<MigrateOutCall>) -> Answer<MigrationReport> {
    // A fenced agent has stopped its VMs: there is nothing to send.
    refuse_fenced(&h, "live-migrate", &c.spec.name).await?;
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.migrate_out(&spec, &c.target, c.options).await?))
}

async fn migrate_finish(State(h): Host, Json(c): Json<SpecCall>) -> Answer<VmStatus> {
    refuse_fenced(&h, "resume the migrated", &c.spec.name).await?;
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.migrate_in_finish(&spec).await?))
}

async fn migrate_abort(State(h): Host, Json(c): Json<SpecCall>) -> Answer<serde_json::Value> {
    let spec = h.local(c.spec)?;
    h.exec.migrate_in_abort(&spec).await?;
    Ok(Json(serde_json::json!({ "aborted": spec.name })))
}

async fn migrate_confirm(State(h): Host, Json(c): Json<MigrateConfirmCall>) -> Answer<VmStatus> {
    if !c.moved {
        // Resuming the source is a start of sorts.
        refuse_fenced(&h, "resume", &c.spec.name).await?;
    }
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.migrate_out_confirm(&spec, c.moved).await?))
}

async fn shutdown(State(h): Host, Json(c): Json<ShutdownCall>) -> Answer<VmStatus> {
    check_vm_name(&c.vm)?;
    Ok(Json(
        h.exec
            .shutdown(&c.vm, Duration::from_millis(c.timeout_ms))
            .await?,
    ))
}

async fn stop(State(h): Host, Json(c): Json<VmCall>) -> Answer<VmStatus> {
    check_vm_name(&c.vm)?;
    Ok(Json(h.exec.stop(&c.vm).await?))
}

async fn provision(State(h): Host, Json(c): Json<SpecCall>) -> Answer<serde_json::Value> {
    let spec = h.local(c.spec)?;
    h.exec.provision_disks(&spec).await?;
    Ok(Json(serde_json::json!({})))
}

async fn missing_disks(State(h): Host, Json(c): Json<SpecCall>) -> Answer<Vec<DiskSpec>> {
    let spec = h.local(c.spec)?;
    Ok(Json(h.exec.missing_disks(&spec).await?))
}

/// The datastore `name` as the controller describes it, opened here.
async fn open_store(
    h: &Arc<HostAgent>,
    name: &str,
    cfg: &DatastoreConfig,
) -> Result<Datastore, AgentError> {
    let h = h.clone();
    let (name, cfg) = (name.to_string(), cfg.clone());
    tokio::task::spawn_blocking(move || h.store(&name, &cfg)).await?
}

async fn point(State(h): Host, Json(c): Json<PointCall>) -> Answer<PointDone> {
    let spec = h.local(c.spec)?;
    let store = StoreRef {
        name: &c.datastore,
        config: &c.config,
        store: Some(open_store(&h, &c.datastore, &c.config).await?),
    };
    let req = PointRequest {
        site: c.site,
        chunk_size: c.chunk_size,
        labels: c.labels,
        vm_config: c.vm_config,
    };
    let (manifest, stats) = h
        .exec
        .take_point(&spec, &store, req, Arc::new(Quiet))
        .await?;
    tracing::info!(vm = %spec.name, point = %manifest.id, datastore = %c.datastore, bytes_read = stats.bytes_read, "point taken");
    Ok(Json(PointDone { manifest, stats }))
}

async fn restore(State(h): Host, Json(c): Json<RestoreCall>) -> Answer<RestoreDone> {
    let point: PointId = c
        .point
        .parse()
        .map_err(|e| AgentError::BadRequest(format!("bad point id '{}': {e}", c.point)))?;
    let spec = h.local(c.spec)?;
    let store = StoreRef {
        name: &c.datastore,
        config: &c.config,
        store: Some(open_store(&h, &c.datastore, &c.config).await?),
    };
    let done = h
        .exec
        .restore_point(&spec, &store, &point, c.onto, Arc::new(Quiet))
        .await?;
    tracing::info!(vm = %spec.name, %point, datastore = %c.datastore, bytes = done.bytes, written = done.written, mode = %done.mode, "point restored");
    Ok(Json(done))
}

async fn restore_template(
    State(h): Host,
    Json(c): Json<crate::wire::RestoreTemplateCall>,
) -> Answer<RestoreDone> {
    let spec = h.local(c.spec)?;
    let store = StoreRef {
        name: &c.datastore,
        config: &c.config,
        store: Some(open_store(&h, &c.datastore, &c.config).await?),
    };
    let done = h
        .exec
        .restore_template(&spec, &store, &c.template, Arc::new(Quiet))
        .await?;
    tracing::info!(vm = %spec.name, template = %c.template, datastore = %c.datastore, bytes = done.bytes, written = done.written, "template written");
    Ok(Json(done))
}

async fn fence(State(h): Host, Json(c): Json<FenceCall>) -> Answer<Vec<FencedVm>> {
    Ok(Json(h.fence(&c.reason).await?))
}

async fn unfence(State(h): Host) -> Answer<serde_json::Value> {
    let was = h.unfence().await?;
    Ok(Json(serde_json::json!({"unfenced": was})))
}

async fn drill_start(State(h): Host, Json(c): Json<DrillStartCall>) -> Answer<DrillState> {
    let mut req = c.drill;
    // The copy runs what production would run here: the same policy.
    req.spec = h.local(req.spec)?;
    let name = req.datastore.clone();
    let store = StoreRef {
        name: &name,
        config: &c.config,
        store: Some(open_store(&h, &name, &c.config).await?),
    };
    Ok(Json(
        h.exec.drill_start(req, &store, Arc::new(Quiet)).await?,
    ))
}

async fn drill_probe(State(h): Host, Json(c): Json<DrillProbeCall>) -> Answer<DrillProbed> {
    let timeout = Duration::from_millis(c.timeout_ms);
    Ok(Json(h.exec.drill_probe(&c.id, c.check, timeout).await?))
}

async fn drill_stop(State(h): Host, Json(c): Json<DrillCall>) -> Answer<DrillStopped> {
    Ok(Json(h.exec.drill_stop(&c.id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_hv::VmSpec;
    use std::path::Path;

    fn policy(dir: &Path) -> crate::policy::Policy {
        let cfg = standby_types::config::Config::parse(
            &format!(
                "[sites.s]\n[hosts.h]\nsite = \"s\"\ndriver = \"process\"\ndisk_dir = \"{}/disks\"\n\
                 [agents.a]\nsite = \"s\"\nhost = \"h\"\nurl = \"http://127.0.0.1:1\"\n\
                 allowed_commands = [\"sleep\"]\n",
                dir.display()
            ),
            Path::new("standby.toml"),
        )
        .unwrap();
        crate::policy::Policy::from_config(&cfg, "a").unwrap()
    }

    /// A host agent of a lab without TLS in `dir`.
    async fn open(dir: &Path) -> Arc<HostAgent> {
        HostAgent::open(
            "a",
            dir,
            policy(dir),
            crate::creds::Creds::Token(None),
            false,
        )
        .await
        .unwrap()
    }

    fn sleeper(dir: &Path) -> VmSpec {
        VmSpec {
            name: "v".into(),
            command: "sleep".into(),
            args: vec!["30".into()],
            env: Default::default(),
            disks: Vec::new(),
            workdir: dir.join("elsewhere"),
            qemu: None,
            libvirt: None,
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
            (
                AgentError::Refused {
                    code: "stale_epoch",
                    message: "a deposed controller".into(),
                },
                409,
                "stale_epoch",
                false,
            ),
        ] {
            let api = e.to_api();
            assert_eq!((api.code.as_str(), api.retryable), (code, retryable), "{e}");
            assert_eq!(e.into_response().status().as_u16(), status, "{code}");
        }
    }

    #[tokio::test]
    async fn the_agent_api_answers_only_calls_with_the_agents_token() {
        let dir = tempfile::tempdir().unwrap();
        let h = open(dir.path()).await;
        let serve = |token: Option<&str>| {
            let app = exec_routes(h.clone(), token);
            async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(l, app).await });
                format!("http://{addr}/agent/v1/state")
            }
        };
        let http = standby_http::builder(standby_http::Reach::Internal)
            .build()
            .unwrap();
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
        let h = open(dir.path()).await;
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
        assert!(!h.driver().status("v").await.unwrap().is_alive());
        drop(h);

        // A restarted agent is still fenced and refuses starts.
        let h = open(dir.path()).await;
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
        assert!(!h.driver().status("v").await.unwrap().is_alive());

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
        h.driver().stop("v").await.unwrap();
    }
}
