//! The host agent's side of self-fencing ([`crate::selffence`]): it pings
//! the quorum's members and fences its host once it was cut off for
//! `self_fence_after`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::HostAgent;
use crate::selffence::{Contact, SelfFence};

/// How often the agent checks whether it must fence itself.
const CHECK: Duration = Duration::from_millis(250);
/// How often, and how patiently, it pings the quorum's members.
const PING_EVERY: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Ping the members and fence `host` once the agent was cut off for
/// `sf.after`; until `cancel`. `clients` holds one client per member (its
/// expected identity differs with TLS).
pub(super) async fn watch(
    host: Arc<HostAgent>,
    sf: SelfFence,
    contact: Arc<Contact>,
    clients: Vec<reqwest::Client>,
    cancel: CancellationToken,
) {
    let pinger = {
        let (sf, contact, cancel) = (sf.clone(), contact.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let sent = Instant::now();
                let pings = sf.members.iter().zip(&clients).map(|((_, url), c)| {
                    let url = format!("{}/health", url.trim_end_matches('/'));
                    async move {
                        matches!(
                            c.get(&url).timeout(PING_TIMEOUT).send().await,
                            Ok(r) if r.status().is_success()
                        )
                    }
                });
                let answered = futures::future::join_all(pings)
                    .await
                    .into_iter()
                    .filter(|ok| *ok)
                    .count();
                if sf.is_majority(answered) {
                    contact.quorum_answered(sent);
                }
            }
        })
    };
    let mut tick = tokio::time::interval(CHECK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let silence = contact.silence();
        if silence >= sf.after && !host.is_fenced().await {
            let reason = format!(
                "self-fenced: heard neither the controller nor a majority of the quorum for {:.1}s",
                silence.as_secs_f64()
            );
            tracing::error!("{reason}: stopping every vm");
            if let Err(e) = host.fence(&reason).await {
                tracing::error!("self-fencing: {e}");
            }
        }
    }
    pinger.abort();
}
