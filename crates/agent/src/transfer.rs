//! Agent-to-agent copies: the sending agent's [`PeerReceiver`] (the
//! destination agent's `/agent/v1/receive/*` as a
//! [`standby_store::transfer::PointReceiver`]).
//!
//! # The grant
//! The controller never hands one agent another's credential. To let
//! agent A copy into datastore D served by agent B, it asks B for a grant
//! (`/agent/v1/store/grant`: D, from A) and hands A the grant's id. B
//! takes it on `receive` calls for D only: it opens no other datastore,
//! starts nothing, and forgets a grant left unused (on its own monotonic
//! clock, no wall clocks compared). Each call also carries B's session
//! and A's next counter ([`crate::fresh`]), so none is taken twice.
//!
//! # Flow control and cuts
//! Up to [`IN_FLIGHT`] batches (about a pack each) are on their way at
//! once, so a long round trip does not idle the link. A batch that fails
//! on the way (a cut link, a restarted agent) is sent again, with growing
//! pauses, for up to [`RESUME_WITHIN`]; a cut that lasts longer fails the
//! copy, and the next copy resumes at the batch it was in, since every
//! batch the destination answered is a durable pack there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use standby_store::transfer::{Batch, Begin, PointReceiver, Received};
use standby_store::{ChunkId, Manifest, PointId, StoreError};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::fresh::{Sequencer, Session};
use crate::limit::RateLimit;

/// Batches on their way at once.
pub const IN_FLIGHT: usize = 4;
/// How long a batch is retried across a cut before the copy fails.
pub const RESUME_WITHIN: Duration = Duration::from_secs(60);
/// Where and how to reach the destination agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub agent: String,
    pub url: String,
    /// The grant B issued for this copy.
    pub grant: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReceiveBegin {
    pub datastore: String,
    pub point: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReceiveMissing {
    pub datastore: String,
    pub ids: Vec<ChunkId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Missing {
    pub missing: Vec<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReceiveManifest {
    pub datastore: String,
    pub manifest: Manifest,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestDone {
    pub already_present: bool,
}

/// Counters of one copy, for its report.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// Batch bytes put on the wire: every attempt of every batch counted
    /// whole, so a copy that started over would show it.
    pub wire_bytes: u64,
    /// Batches sent again after a failure on the way.
    pub resent: u64,
}

/// The destination agent's `/agent/v1/receive/*`, for
/// [`standby_store::Datastore::send_point`] on a blocking thread.
pub struct PeerReceiver {
    rt: Handle,
    http: reqwest::Client,
    base: String,
    peer: Peer,
    datastore: String,
    slots: Arc<Semaphore>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    failed: Arc<Mutex<Option<String>>>,
    sent: Arc<Mutex<Sent>>,
    limit: Option<Arc<RateLimit>>,
    /// B's session and this copy's counters.
    seq: Arc<Sequencer>,
}

fn remote_err(what: &str, reason: String, temporary: bool) -> StoreError {
    StoreError::Remote {
        action: "copy to",
        path: what.into(),
        temporary,
        source: reason.into(),
    }
}

impl PeerReceiver {
    pub fn new(
        rt: Handle,
        peer: Peer,
        datastore: &str,
        limit: Option<Arc<RateLimit>>,
        creds: &crate::creds::Creds,
    ) -> Result<PeerReceiver, crate::AgentError> {
        let builder = standby_http::builder(standby_http::Reach::Internal)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(600))
            .tcp_keepalive(Duration::from_secs(5));
        // With TLS: the destination must present agent `peer.agent`'s
        // certificate, and this agent presents its peer certificate.
        let expect = vec![crate::creds::identity(
            standby_tls::Role::Agent,
            &peer.agent,
        )?];
        let http = creds.client(expect, builder)?;
        Ok(PeerReceiver {
            rt,
            http,
            base: format!("{}/agent/v1/receive", peer.url.trim_end_matches('/')),
            datastore: datastore.to_string(),
            peer,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            tasks: Mutex::default(),
            failed: Arc::default(),
            sent: Arc::default(),
            limit,
            seq: Arc::default(),
        })
    }

    /// What was sent so far.
    pub fn sent(&self) -> Sent {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn what(&self) -> String {
        format!("datastore {} at agent {}", self.datastore, self.peer.agent)
    }

    /// A JSON call, retried across a cut for up to [`RESUME_WITHIN`].
    fn json<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        body: &B,
    ) -> Result<T, StoreError> {
        let body = serde_json::to_vec(body).map_err(|e| StoreError::Json {
            what: format!("the {op} call"),
            source: e,
        })?;
        let bytes = self.rt.block_on(post(
            &self.http,
            (&self.base, &self.peer.grant, &self.seq),
            op,
            "application/json",
            body,
            &self.what(),
            None,
        ))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            remote_err(
                &self.what(),
                format!("unreadable answer to {op}: {e}"),
                false,
            )
        })
    }

    fn failure(&self) -> Option<StoreError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|reason| remote_err(&self.what(), reason, true))
    }
}

/// POST `body`; a refusal (4xx) fails at once, anything else is retried
/// with growing pauses for up to [`RESUME_WITHIN`].
async fn post(
    http: &reqwest::Client,
    (base, grant, seq): (&str, &str, &Sequencer),
    op: &str,
    content_type: &str,
    body: Vec<u8>,
    what: &str,
    counts: Option<&Mutex<Sent>>,
) -> Result<Vec<u8>, StoreError> {
    let url = format!("{base}/{op}");
    let first_failure = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut pause = Duration::from_millis(250);
    let mut stale_sessions = 0;
    loop {
        let fresh = match session_of(http, base, grant, seq).await {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err("no session adopted".to_string()),
            Err((reason, true)) => return Err(remote_err(what, reason, false)),
            Err((reason, false)) => Err(reason),
        };
        let reason = match fresh {
            Ok((session, headers)) => {
                match attempt(http, &url, grant, content_type, headers, &body, counts).await {
                    Attempt::Done(b) => return Ok(b),
                    Attempt::Refused(api, _)
                        if api.code == "stale_session" && stale_sessions < 3 =>
                    {
                        // B restarted during the copy: ask for its session again.
                        stale_sessions += 1;
                        seq.forget(&session);
                        continue;
                    }
                    Attempt::Refused(api, status) => {
                        return Err(remote_err(
                            what,
                            format!("refused ({status}): {}", api.message),
                            false,
                        ));
                    }
                    Attempt::Failed(reason) => reason,
                }
            }
            Err(reason) => reason,
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RESUME_WITHIN {
            return Err(remote_err(
                what,
                format!("{reason} (retried for {:.0?})", first_failure.elapsed()),
                true,
            ));
        }
        tracing::warn!(%url, "copy interrupted, trying again in {pause:?}: {reason}");
        if let Some(s) = counts {
            s.lock().unwrap_or_else(|p| p.into_inner()).resent += 1;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// How one attempt of a call ended.
enum Attempt {
    Done(Vec<u8>),
    /// A refusal (4xx, or a 5xx the destination marks not retryable):
    /// sending it again changes nothing (but a stale session, asked for
    /// again).
    Refused(standby_types::api::ApiError, reqwest::StatusCode),
    /// On the way: worth another attempt.
    Failed(String),
}

async fn attempt(
    http: &reqwest::Client,
    url: &str,
    grant: &str,
    content_type: &str,
    headers: [(&'static str, String); 2],
    body: &[u8],
    counts: Option<&Mutex<Sent>>,
) -> Attempt {
    if let Some(s) = counts {
        s.lock().unwrap_or_else(|p| p.into_inner()).wire_bytes += body.len() as u64;
    }
    let mut req = http
        .post(url)
        .bearer_auth(grant)
        .header(reqwest::header::CONTENT_TYPE, content_type);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.body(body.to_vec()).send().await {
        Ok(resp) if resp.status().is_success() => match resp.bytes().await {
            Ok(b) => Attempt::Done(b.to_vec()),
            Err(e) => Attempt::Failed(format!(
                "answer cut off: {}",
                standby_types::error_chain(&e)
            )),
        },
        Ok(resp) if resp.status().is_client_error() => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let api =
                serde_json::from_str::<standby_types::api::ApiError>(&text).unwrap_or_else(|_| {
                    standby_types::api::ApiError {
                        code: "refused".into(),
                        message: text,
                        retryable: false,
                    }
                });
            Attempt::Refused(api, status)
        }
        Ok(resp) => {
            // What went wrong there (a full disk, say), not only the
            // status; an error the destination says retrying cannot help
            // with ends the copy now instead of after a minute of retries.
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let why = match serde_json::from_str::<standby_types::api::ApiError>(&text) {
                Ok(api) if !api.retryable => return Attempt::Refused(api, status),
                Ok(api) => api.message,
                Err(_) => text,
            };
            match why.trim() {
                "" => Attempt::Failed(format!("answered {status}")),
                why => Attempt::Failed(format!(
                    "answered {status}: {}",
                    why.chars().take(500).collect::<String>()
                )),
            }
        }
        Err(e) => Attempt::Failed(standby_types::error_chain(&e)),
    }
}

/// B's session and this copy's next counter, asking B first if need be
/// (None only if B's answer could not be adopted).
/// Err((reason, refused)): refused (4xx) fails the copy, anything else is
/// tried again.
async fn session_of(
    http: &reqwest::Client,
    base: &str,
    grant: &str,
    seq: &Sequencer,
) -> Result<Option<(String, [(&'static str, String); 2])>, (String, bool)> {
    if let Some(h) = seq.headers() {
        return Ok(Some(h));
    }
    let resp = http
        .get(format!("{base}/session"))
        .bearer_auth(grant)
        .send()
        .await
        .map_err(|e| {
            (
                format!("asking for the session: {}", standby_types::error_chain(&e)),
                false,
            )
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<standby_types::api::ApiError>(&text)
            .map(|e| e.message)
            .unwrap_or(text);
        return Err((
            format!("session refused ({status}): {msg}"),
            status.is_client_error(),
        ));
    }
    let s: Session = resp
        .json()
        .await
        .map_err(|e| (format!("unreadable session: {e}"), false))?;
    seq.adopt(s);
    Ok(seq.headers())
}

impl PointReceiver for PeerReceiver {
    fn begin(&self, point: &PointId) -> Result<Begin, StoreError> {
        self.json(
            "begin",
            &ReceiveBegin {
                datastore: self.datastore.clone(),
                point: point.to_string(),
            },
        )
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        let m: Missing = self.json(
            "missing",
            &ReceiveMissing {
                datastore: self.datastore.clone(),
                ids: ids.to_vec(),
            },
        )?;
        if m.missing.len() != ids.len() {
            return Err(remote_err(
                &self.what(),
                format!("answered {} of {} ids", m.missing.len(), ids.len()),
                false,
            ));
        }
        Ok(m.missing)
    }

    fn send(&self, batch: Batch) -> Result<(), StoreError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let permit = self
            .rt
            .block_on(self.slots.clone().acquire_owned())
            .map_err(|_| remote_err(&self.what(), "copy stopped".into(), false))?;
        let body = batch.encode();
        let (http, base, grant, what, seq) = (
            self.http.clone(),
            self.base.clone(),
            self.peer.grant.clone(),
            self.what(),
            self.seq.clone(),
        );
        let op = format!("batch?datastore={}", self.datastore);
        let (failed, sent, limit) = (self.failed.clone(), self.sent.clone(), self.limit.clone());
        let task = self.rt.spawn(async move {
            let _permit = permit;
            if let Some(l) = &limit {
                l.take(body.len() as u64).await;
            }
            let r = post(
                &http,
                (&base, &grant, &seq),
                &op,
                "application/octet-stream",
                body,
                &what,
                Some(&sent),
            )
            .await
            .and_then(|b| {
                serde_json::from_slice::<Received>(&b)
                    .map_err(|e| remote_err(&what, format!("unreadable answer: {e}"), false))
            });
            if let Err(e) = r {
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert_with(|| standby_types::error_chain(&e));
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        Ok(())
    }

    fn finish(&self, point: &PointId, manifest: &Manifest) -> Result<bool, StoreError> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = self.rt.block_on(t);
        }
        if let Some(e) = self.failure() {
            return Err(e);
        }
        // The last batches had their time: the copy averaged the rate.
        if let Some(l) = &self.limit {
            self.rt.block_on(l.drained());
        }
        let done: ManifestDone = self.json(
            "manifest",
            &ReceiveManifest {
                datastore: self.datastore.clone(),
                manifest: manifest.clone(),
            },
        )?;
        tracing::debug!(%point, peer = %self.peer.agent, "manifest delivered");
        Ok(done.already_present)
    }
}

/// A store open here as the destination of [`Datastore::send_point`],
/// batches paced by a site's schedule: a copy leaving the site for a
/// store its sender opens itself (an object store, say).
///
/// [`Datastore::send_point`]: standby_store::Datastore::send_point
pub struct StoreReceiver {
    pub dst: standby_store::Datastore,
    pub limit: Arc<RateLimit>,
}

impl PointReceiver for StoreReceiver {
    fn begin(&self, point: &PointId) -> Result<Begin, StoreError> {
        self.dst.receive_begin(point)
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        Ok(self.dst.receive_missing(ids))
    }

    fn send(&self, batch: Batch) -> Result<(), StoreError> {
        self.limit.take_blocking(batch.bytes() as u64);
        self.dst.receive_batch(&batch).map(|_| ())
    }

    fn finish(&self, point: &PointId, manifest: &Manifest) -> Result<bool, StoreError> {
        let free_at = self.limit.free_at();
        std::thread::sleep(free_at.saturating_duration_since(tokio::time::Instant::now()));
        self.dst.receive_manifest(point, manifest)
    }
}

impl Drop for PeerReceiver {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}
