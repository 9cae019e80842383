//! Agent-to-agent copies: the sending agent's [`PeerReceiver`] (the
//! destination agent's `/agent/v1/receive/*` as a
//! [`standby_store::transfer::PointReceiver`]) and the capability that
//! lets it write there.
//!
//! # The capability
//! The controller never hands one agent another's secret. To let agent A
//! copy into datastore D served by agent B, it mints a capability for D
//! with B's secret ([`mint`]): `cap1:EXPIRES:MAC:D`, an HMAC-SHA256 over
//! the datastore and the expiry. B checks it ([`check`]) on every
//! `receive` call and takes nothing else with it: it opens no other
//! datastore, starts nothing, and expires (after [`CAPABILITY_LIFETIME`]).
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

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use standby_store::transfer::{Batch, Begin, PointReceiver, Received};
use standby_store::{ChunkId, Manifest, PointId, StoreError};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::limit::RateLimit;

/// Batches on their way at once.
pub const IN_FLIGHT: usize = 4;
/// How long a batch is retried across a cut before the copy fails.
pub const RESUME_WITHIN: Duration = Duration::from_secs(60);
/// How long a minted capability is good for: a copy that takes longer
/// gets a fresh one when the controller runs it again.
pub const CAPABILITY_LIFETIME: Duration = Duration::from_secs(6 * 3600);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, datastore: &str, expires: i64) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.trim().as_bytes())
        .unwrap_or_else(|_| HmacSha256::new_from_slice(&[0]).expect("a one-byte key is valid"));
    m.update(b"standby-receive\0");
    m.update(datastore.as_bytes());
    m.update(b"\0");
    m.update(expires.to_string().as_bytes());
    m
}

/// A capability to write copied points into `datastore` at the agent
/// whose secret is `secret`, good until `expires` (Unix seconds).
pub fn mint(secret: &str, datastore: &str, expires: i64) -> String {
    let tag = hex::encode(mac(secret, datastore, expires).finalize().into_bytes());
    format!("cap1:{expires}:{tag}:{datastore}")
}

/// Check a capability presented for `datastore` against this agent's
/// `secret` at time `now` (Unix seconds); the reason when refused.
pub fn check(secret: &str, presented: &str, datastore: &str, now: i64) -> Result<(), String> {
    let mut parts = presented.splitn(4, ':');
    let (Some("cap1"), Some(expires), Some(tag), Some(ds)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a receive capability".into());
    };
    if ds != datastore {
        return Err(format!(
            "the capability is for datastore {ds}, not {datastore}"
        ));
    }
    let expires: i64 = expires
        .parse()
        .map_err(|_| "the capability's expiry is not a number".to_string())?;
    let tag = hex::decode(tag).map_err(|_| "the capability's MAC is not hex".to_string())?;
    mac(secret, datastore, expires)
        .verify_slice(&tag)
        .map_err(|_| "the capability was not issued for this agent".to_string())?;
    if now > expires {
        return Err("the capability has expired".into());
    }
    Ok(())
}

/// Where and how to reach the destination agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub agent: String,
    pub url: String,
    pub capability: String,
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
    ) -> PeerReceiver {
        let http = standby_http::builder(standby_http::Reach::Internal)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(600))
            .tcp_keepalive(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        PeerReceiver {
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
        }
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
            format!("{}/{op}", self.base),
            &self.peer.capability,
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
    url: String,
    capability: &str,
    content_type: &str,
    body: Vec<u8>,
    what: &str,
    counts: Option<&Mutex<Sent>>,
) -> Result<Vec<u8>, StoreError> {
    let first_failure = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut pause = Duration::from_millis(250);
    loop {
        if let Some(s) = counts {
            s.lock().unwrap_or_else(|p| p.into_inner()).wire_bytes += body.len() as u64;
        }
        let attempt = http
            .post(&url)
            .bearer_auth(capability)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.clone())
            .send()
            .await;
        let reason = match attempt {
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(b) => return Ok(b.to_vec()),
                Err(e) => format!("answer cut off: {}", standby_types::error_chain(&e)),
            },
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let msg = serde_json::from_str::<standby_types::api::ApiError>(&text)
                    .map(|e| e.message)
                    .unwrap_or(text);
                return Err(remote_err(
                    what,
                    format!("refused ({status}): {msg}"),
                    false,
                ));
            }
            Ok(resp) => format!("answered {}", resp.status()),
            Err(e) => standby_types::error_chain(&e),
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
        let (http, url, cap, what) = (
            self.http.clone(),
            format!("{}/batch?datastore={}", self.base, self.datastore),
            self.peer.capability.clone(),
            self.what(),
        );
        let (failed, sent, limit) = (self.failed.clone(), self.sent.clone(), self.limit.clone());
        let task = self.rt.spawn(async move {
            let _permit = permit;
            if let Some(l) = &limit {
                l.take(body.len() as u64).await;
            }
            let r = post(
                &http,
                url,
                &cap,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_opens_one_datastore_at_one_agent_until_it_expires() {
        let cap = mint("agent-b-secret", "site2", 1_000);
        assert_eq!(check("agent-b-secret", &cap, "site2", 999), Ok(()));
        let refused = |r: Result<(), String>, what: &str| {
            let e = r.unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        refused(check("agent-b-secret", &cap, "site2", 1_001), "expired");
        refused(
            check("agent-b-secret", &cap, "site1", 999),
            "for datastore site2",
        );
        refused(check("agent-c-secret", &cap, "site2", 999), "not issued");
        // Moving the expiry breaks the MAC.
        let later = cap.replacen("1000", "9000", 1);
        refused(check("agent-b-secret", &later, "site2", 999), "not issued");
        refused(
            check("agent-b-secret", "agent-b-secret", "site2", 0),
            "not a receive",
        );
    }
}
