//! A host run by a remote `standby agent`, reached over JSON/HTTP under
//! `/agent/v1` (served by [`crate::daemon`]).
//!
//! A remote agent that cannot be reached is [`AgentError::Unreachable`]
//! within the connect timeout (1 s); each operation has a timeout sized to
//! its work, and TCP keepalive notices a link that dies mid-operation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use standby_hv::{
    DiskSpec, MigrationListen, MigrationOptions, MigrationReport, MigrationTarget, VmSpec, VmStatus,
};
use standby_store::{Manifest, PointId};
use standby_types::api::ApiError;
use standby_types::error_chain;
use standby_types::outcome::{DrillProbed, DrillState, DrillStopped};
use standby_types::watch::ProbeCheck;

use crate::error::AgentError;
use crate::ops::{Host, PointRequest, StoreRef};
use crate::progress::Progress;
use crate::wire::DrillRequest;
use crate::wire::{
    DrillCall, DrillProbeCall, DrillStartCall, FenceCall, FencedVm, MigrateConfirmCall,
    MigrateOutCall, MigratePrepareCall, PointCall, PointDone, PointStats, RestoreCall, RestoreDone,
    ShutdownCall, SpecCall, VmCall,
};

/// Connecting to a remote agent: a live agent on a working link answers
/// far sooner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Status and forced stops: quick operations (a forced stop waits up to
/// 10 s for the kernel to reap the process).
const QUICK: Duration = Duration::from_secs(15);
/// Starting a VM (its disks are checked, its process spawned).
const START: Duration = Duration::from_secs(60);
/// Points and restores move whole disks.
const DATA: Duration = Duration::from_secs(4 * 3600);
/// A remote agent stops every VM it runs before answering a fence; an
/// agent that does not answer in time is fenced by its next heartbeat.
const FENCE: Duration = Duration::from_secs(15);
const UNFENCE: Duration = Duration::from_secs(3);

/// The HTTP client of one remote agent; clones share its connections'
/// settings and its counters.
#[derive(Clone)]
pub struct RemoteHost {
    pub host: String,
    pub agent: String,
    base: String,
    http: reqwest::Client,
    /// The agent's shared token, sent on every call (without `[pki]`).
    token: Option<String>,
    /// The host's driver (`process`, `qemu`), from the configuration.
    kind: &'static str,
    /// The agent's session and this process's next counter there, shared
    /// by every clone (the agent keeps one window per caller).
    seq: Arc<crate::fresh::Sequencer>,
    /// The leader epoch every command carries ([`crate::epoch`]).
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl RemoteHost {
    /// The agent `agent` at `url` running `host`, whose driver is `kind`,
    /// called with `creds` (with TLS, its certificate must be agent
    /// `agent`'s).
    pub fn new(
        host: &str,
        agent: &str,
        url: &str,
        creds: &crate::creds::Creds,
        kind: &'static str,
    ) -> Result<RemoteHost, AgentError> {
        let builder = standby_http::builder(standby_http::Reach::Internal)
            .connect_timeout(CONNECT_TIMEOUT)
            // A fresh connection per call: a pooled one on a link that
            // died would only fail at the call's timeout, while a new one
            // fails within the connect timeout.
            .pool_max_idle_per_host(0)
            // A link that dies during a long point is noticed in seconds.
            .tcp_keepalive(Duration::from_secs(5))
            .tcp_keepalive_interval(Duration::from_secs(2))
            .tcp_keepalive_retries(3u32);
        let expect = vec![crate::creds::identity(standby_tls::Role::Agent, agent)?];
        let http = creds.client(expect, builder)?;
        let base = format!("{}/agent/v1", url.trim_end_matches('/'));
        Ok(RemoteHost {
            host: host.to_string(),
            agent: agent.to_string(),
            seq: Arc::default(),
            epoch: Arc::default(),
            base,
            http,
            token: creds.token().map(str::to_string),
            kind,
        })
    }

    /// Commands carry `epoch` (the controller's, as it changes).
    pub fn with_epoch(mut self, epoch: Arc<std::sync::atomic::AtomicU64>) -> RemoteHost {
        self.epoch = epoch;
        self
    }

    fn unreachable(&self, reason: String) -> AgentError {
        AgentError::Unreachable {
            host: self.host.clone(),
            reason: format!("agent {}: {reason}", self.agent),
        }
    }

    /// POST `body` to `/agent/v1/<op>` with the agent's credential, its
    /// session and the next counter, and read the answer. A stale session
    /// (the agent restarted) is asked for again and the call sent again
    /// once: the agent refused it without acting on it.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        op: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| AgentError::Internal(format!("the {op} call: {e}")))?;
        let mut asked = false;
        loop {
            let (session, headers) = match self.seq.headers() {
                Some(h) => h,
                None => {
                    let s: crate::fresh::Session = self.get("session", QUICK).await?;
                    self.seq.adopt(s);
                    self.seq
                        .headers()
                        .ok_or_else(|| AgentError::Internal("no session adopted".into()))?
                }
            };
            match self.send(op, &body, &headers, timeout).await {
                Err(AgentError::Remote { code, .. }) if code == "stale_session" && !asked => {
                    asked = true;
                    self.seq.forget(&session);
                }
                r => return r,
            }
        }
    }

    /// GET `/agent/v1/<op>`.
    async fn get<T: DeserializeOwned>(&self, op: &str, timeout: Duration) -> Result<T, AgentError> {
        let mut req = self
            .http
            .get(format!("{}/{op}", self.base))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.answer(op, req.send().await, timeout).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        op: &str,
        body: &[u8],
        headers: &[(&'static str, String); 2],
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let url = format!("{}/{op}", self.base);
        let mut req = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req = req.header(
            crate::epoch::EPOCH_HEADER,
            self.epoch
                .load(std::sync::atomic::Ordering::SeqCst)
                .to_string(),
        );
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.answer(op, req.send().await, timeout).await
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        op: &str,
        sent: Result<reqwest::Response, reqwest::Error>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let resp = sent.map_err(|e| {
            self.unreachable(if e.is_timeout() {
                format!("no answer to {op} within {timeout:?}")
            } else {
                error_chain(&e)
            })
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            self.unreachable(format!("answer to {op} cut off: {}", error_chain(&e)))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| AgentError::Remote {
                host: self.host.clone(),
                code: "agent".into(),
                message: format!("unreadable answer of agent {} to {op}: {e}", self.agent),
                retryable: false,
            });
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(api) => Err(AgentError::Remote {
                host: self.host.clone(),
                code: api.code,
                message: api.message,
                retryable: api.retryable,
            }),
            Err(_) => Err(AgentError::Remote {
                host: self.host.clone(),
                code: "agent".into(),
                message: format!(
                    "agent {} answered {op} with {status}: {}",
                    self.agent,
                    String::from_utf8_lossy(&bytes)
                ),
                retryable: status.is_server_error(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Host for RemoteHost {
    fn remote_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }

    /// The host's driver as configured; the agent runs the same one.
    fn driver_kind(&self) -> &'static str {
        self.kind
    }

    /// The remote agent looks a bare name up itself.
    fn resolve_command(&self, program: &str) -> PathBuf {
        PathBuf::from(program)
    }

    async fn status(&self, vm: &str) -> Result<VmStatus, AgentError> {
        self.call("status", &VmCall { vm: vm.into() }, QUICK).await
    }

    async fn statuses(&self, vms: &[String]) -> Result<Vec<(String, VmStatus)>, AgentError> {
        let mut out = Vec::with_capacity(vms.len());
        for chunk in vms.chunks(crate::wire::MAX_STATUSES) {
            let answer: crate::wire::VmStatuses = self
                .call(
                    "statuses",
                    &crate::wire::VmsCall {
                        vms: chunk.to_vec(),
                    },
                    QUICK,
                )
                .await?;
            out.extend(answer.statuses.into_iter().map(|l| (l.vm, l.status)));
        }
        Ok(out)
    }

    async fn running(&self, vms: &[String]) -> Result<Vec<String>, AgentError> {
        #[derive(serde::Deserialize)]
        struct Listed {
            vm: String,
            status: VmStatus,
        }
        #[derive(serde::Deserialize)]
        struct State {
            vms: Vec<Listed>,
        }
        let state: State = self.get("state", QUICK).await?;
        Ok(state
            .vms
            .into_iter()
            .filter(|l| l.status.is_alive() && vms.contains(&l.vm))
            .map(|l| l.vm)
            .collect())
    }

    async fn start(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        self.call("start", &SpecCall { spec: spec.clone() }, START)
            .await
    }

    async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<VmStatus, AgentError> {
        let call = ShutdownCall {
            vm: vm.into(),
            timeout_ms: timeout.as_millis() as u64,
        };
        self.call("shutdown", &call, timeout + QUICK).await
    }

    async fn stop(&self, vm: &str) -> Result<VmStatus, AgentError> {
        self.call("stop", &VmCall { vm: vm.into() }, QUICK).await
    }

    async fn provision_disks(&self, spec: &VmSpec) -> Result<(), AgentError> {
        self.call::<_, serde_json::Value>("provision", &SpecCall { spec: spec.clone() }, START)
            .await?;
        Ok(())
    }

    async fn missing_disks(&self, spec: &VmSpec) -> Result<Vec<DiskSpec>, AgentError> {
        self.call("missing-disks", &SpecCall { spec: spec.clone() }, QUICK)
            .await
    }

    async fn migrate_in_prepare(
        &self,
        spec: &VmSpec,
        listen: MigrationListen,
    ) -> Result<MigrationTarget, AgentError> {
        let call = MigratePrepareCall {
            spec: spec.clone(),
            listen,
        };
        self.call("migrate/prepare", &call, START).await
    }

    async fn migrate_out(
        &self,
        spec: &VmSpec,
        target: &MigrationTarget,
        options: MigrationOptions,
    ) -> Result<MigrationReport, AgentError> {
        let call = MigrateOutCall {
            spec: spec.clone(),
            target: target.clone(),
            options,
        };
        // The agent gives up at the options' timeout and rolls back.
        self.call("migrate/out", &call, options.timeout + START)
            .await
    }

    async fn migrate_in_finish(&self, spec: &VmSpec) -> Result<VmStatus, AgentError> {
        self.call("migrate/finish", &SpecCall { spec: spec.clone() }, QUICK)
            .await
    }

    async fn migrate_in_abort(&self, spec: &VmSpec) -> Result<(), AgentError> {
        self.call::<_, serde_json::Value>("migrate/abort", &SpecCall { spec: spec.clone() }, START)
            .await?;
        Ok(())
    }

    async fn migrate_out_confirm(
        &self,
        spec: &VmSpec,
        moved: bool,
    ) -> Result<VmStatus, AgentError> {
        let call = MigrateConfirmCall {
            spec: spec.clone(),
            moved,
        };
        self.call("migrate/confirm", &call, START).await
    }

    async fn take_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        req: PointRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<(Manifest, PointStats), AgentError> {
        let total = spec.disks.iter().map(|d| d.size).sum();
        progress.stage(
            format!("{}: point taken by agent {}", spec.name, self.agent),
            total,
        );
        let call = PointCall {
            spec: spec.clone(),
            site: req.site,
            datastore: store.name.to_string(),
            config: store.config.clone(),
            chunk_size: req.chunk_size,
            labels: req.labels,
            vm_config: req.vm_config,
        };
        let done: PointDone = self.call("point", &call, DATA).await?;
        Ok((done.manifest, done.stats))
    }

    async fn restore_point(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        point: &PointId,
        onto: crate::wire::Onto,
        progress: Arc<dyn Progress>,
    ) -> Result<RestoreDone, AgentError> {
        progress.stage(format!("{}: restore by agent {}", spec.name, self.agent), 0);
        let call = RestoreCall {
            spec: spec.clone(),
            datastore: store.name.to_string(),
            config: store.config.clone(),
            point: point.to_string(),
            onto,
        };
        self.call("restore", &call, DATA).await
    }

    async fn restore_template(
        &self,
        spec: &VmSpec,
        store: &StoreRef<'_>,
        template: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<RestoreDone, AgentError> {
        progress.stage(
            format!(
                "{}: template {template} written by agent {}",
                spec.name, self.agent
            ),
            0,
        );
        let call = crate::wire::RestoreTemplateCall {
            spec: spec.clone(),
            datastore: store.name.to_string(),
            config: store.config.clone(),
            template: template.to_string(),
        };
        self.call("restore-template", &call, DATA).await
    }

    async fn fence(
        &self,
        reason: &str,
        _vms: &[String],
        _placed: &[String],
    ) -> Result<Vec<FencedVm>, AgentError> {
        let call = FenceCall {
            reason: reason.to_string(),
        };
        self.call("fence", &call, FENCE).await
    }

    async fn unfence(&self) -> Option<Result<(), AgentError>> {
        Some(
            self.call::<_, serde_json::Value>("unfence", &serde_json::json!({}), UNFENCE)
                .await
                .map(|_| ()),
        )
    }

    async fn drill_start(
        &self,
        req: DrillRequest,
        store: &StoreRef<'_>,
        progress: Arc<dyn Progress>,
    ) -> Result<DrillState, AgentError> {
        progress.stage(
            format!(
                "{}: drill copy restored and booted by agent {}",
                req.vm, self.agent
            ),
            0,
        );
        let call = DrillStartCall {
            drill: req,
            config: store.config.clone(),
        };
        self.call("drill/start", &call, DATA).await
    }

    async fn drill_probe(
        &self,
        id: &str,
        check: ProbeCheck,
        timeout: Duration,
    ) -> Result<DrillProbed, AgentError> {
        let call = DrillProbeCall {
            id: id.to_string(),
            check,
            timeout_ms: timeout.as_millis() as u64,
        };
        self.call(
            "drill/probe",
            &call,
            crate::drill::probe_bound(timeout) + QUICK,
        )
        .await
    }

    async fn drill_stop(&self, id: &str) -> Result<DrillStopped, AgentError> {
        // A QEMU copy's stop may wait for `quit`, then SIGKILL, then the
        // namespace to empty.
        let call = DrillCall { id: id.to_string() };
        self.call("drill/stop", &call, START).await
    }
}
