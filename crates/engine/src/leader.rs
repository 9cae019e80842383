//! Leadership: a controller acts only while it holds the leader lease
//! ([`standby_db::LeaseRepo`]), and every command it sends an agent
//! carries the lease's epoch (a fencing token the agents check).
//!
//! - [`take`] runs in [`crate::Controller::open`] before anything is
//!   written: a replica whose lease another holds waits there (a hot
//!   standby) until the lease lapses, then takes it with a new epoch and
//!   resumes the runbook jobs from their persisted steps.
//! - [`renew`] keeps it: every [`RENEW_EVERY`] (or at once when an agent
//!   reports a higher epoch than ours, as after the database was lost),
//!   with the epoch raised above what the agents saw. A leader that loses
//!   the lease, or cannot renew it before its own deadline (the send time
//!   of its last successful renewal plus the lease time minus a margin,
//!   on its monotonic clock), steps down at once: it cancels everything
//!   and its process exits, to come back as a replica.
//! - A single controller on its own SQLite file (the embedded default)
//!   takes the lease over at start (no other replica can share the file)
//!   and never steps down for a failed renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use standby_db::{Lease, LeaseRepo};
use tokio::sync::{Notify, watch};

use crate::error::EngineError;

/// How long a lease holds without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often the leader renews it.
pub const RENEW_EVERY: Duration = Duration::from_millis(750);
/// Before its lease lapses on the database's clock, the leader stops on
/// its own clock: this much earlier.
const MARGIN: Duration = Duration::from_millis(500);
/// How often a waiting replica looks at the lease.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// What a waiting replica last read of the lease: who leads, where it
/// serves and with which epoch (none before any controller led, or
/// while the database does not answer). A replica's API forwards to
/// `url`.
pub type LeaderSeen = watch::Sender<Option<Lease>>;

/// This controller's leadership.
#[derive(Debug)]
pub struct Leadership {
    /// `[controller] name`.
    pub name: String,
    url: String,
    /// Whether the database is this controller's own (SQLite).
    single: bool,
    /// The epoch every command carries; shared with every remote host.
    pub(crate) epoch: Arc<AtomicU64>,
    /// The lowest epoch acceptable to the agents (above what they saw).
    floor: AtomicU64,
    wake: Notify,
    deposed: AtomicBool,
    /// The lease as the last look at it found it.
    seen: LeaderSeen,
}

impl Leadership {
    pub(crate) fn new(name: &str, url: &str, single: bool, seen: LeaderSeen) -> Leadership {
        Leadership {
            name: name.to_string(),
            url: url.to_string(),
            single,
            epoch: Arc::new(AtomicU64::new(0)),
            floor: AtomicU64::new(0),
            wake: Notify::new(),
            deposed: AtomicBool::new(false),
            seen,
        }
    }

    /// The epoch in force.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Where this controller serves its API (the lease names it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this controller stepped down (it must stop).
    pub fn deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst)
    }

    /// An agent has seen epoch `seen`: ours must be above it for the
    /// agent to take our commands.
    pub(crate) fn agent_saw(&self, seen: u64) {
        if seen > self.epoch() && self.floor.fetch_max(seen + 1, Ordering::SeqCst) <= seen {
            tracing::warn!(
                seen,
                ours = self.epoch(),
                "an agent has seen a newer epoch than ours (a lost database?): raising it"
            );
            self.wake.notify_one();
        }
    }

    fn ttl(&self) -> Duration {
        if self.single {
            // Nobody waits for a lone controller's lease.
            Duration::from_secs(3600)
        } else {
            LEASE_TTL
        }
    }
}

/// Wait until this controller holds the lease; the deadline by which it
/// must renew it.
pub(crate) async fn take(repo: &dyn LeaseRepo, lead: &Leadership) -> Result<Instant, EngineError> {
    let mut told = None;
    loop {
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            LEASE_TTL,
            repo.acquire_lease(&lead.name, &lead.url, lead.ttl(), 0, lead.single),
        )
        .await
        .map_err(|_| "the database did not answer in time".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match answer {
            Ok(l) if l.held && Instant::now() >= sent + lead.ttl().saturating_sub(MARGIN) => {
                // The answer came too late to count on the lease it
                // granted (a slow connection): ask again at once.
                tracing::warn!(name = %lead.name, "replica: the lease came too late to count on; taking it again");
            }
            Ok(l) if l.held => {
                lead.epoch.store(l.epoch, Ordering::SeqCst);
                tracing::warn!(name = %lead.name, epoch = l.epoch, "leader: this controller leads");
                lead.seen.send_replace(Some(l));
                return Ok(sent + lead.ttl().saturating_sub(MARGIN));
            }
            Ok(l) => {
                lead.seen
                    .send_replace((l.remaining > Duration::ZERO).then(|| l.clone()));
                if told.as_ref() != Some(&(l.holder.clone(), l.epoch)) {
                    tracing::warn!(
                        name = %lead.name,
                        leader = %l.holder,
                        url = %l.url,
                        epoch = l.epoch,
                        "replica: waiting for the leader's lease to lapse"
                    );
                    told = Some((l.holder.clone(), l.epoch));
                }
                tokio::time::sleep(l.remaining.clamp(Duration::from_millis(10), WAIT_POLL)).await;
            }
            Err(e) if lead.single => return Err(EngineError::Internal(e)),
            Err(e) => {
                lead.seen.send_replace(None);
                tracing::warn!("replica: the database does not answer ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keep the lease until `cancel`; step down (deposed, cancel) when it is
/// lost or could not be renewed in time.
pub(crate) async fn renew(
    repo: Arc<dyn LeaseRepo>,
    lead: Arc<Leadership>,
    mut deadline: Instant,
    cancel: tokio_util::sync::CancellationToken,
) {
    let step_down = |why: String| {
        lead.deposed.store(true, Ordering::SeqCst);
        tracing::error!(name = %lead.name, epoch = lead.epoch(), "stepping down: {why}");
        cancel.cancel();
    };
    loop {
        let wait = if lead.single {
            // Nobody else can hold it: renewed when the epoch must rise.
            Duration::from_secs(600)
        } else {
            RENEW_EVERY.min(deadline.saturating_duration_since(Instant::now()))
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = lead.wake.notified() => {}
        }
        if !lead.single && Instant::now() >= deadline {
            return step_down("the lease was not renewed in time".into());
        }
        let floor = lead.floor.load(Ordering::SeqCst);
        let sent = Instant::now();
        // A database that does not answer must not hold the leader past
        // its deadline (a pool waits long for a connection).
        let left = if lead.single {
            Duration::from_secs(30)
        } else {
            deadline.saturating_duration_since(sent)
        };
        let renewed = tokio::time::timeout(
            left,
            repo.acquire_lease(&lead.name, &lead.url, lead.ttl(), floor, false),
        )
        .await
        .map_err(|_| "the database did not answer in time".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match renewed {
            Ok(l) if l.held => {
                deadline = sent + lead.ttl().saturating_sub(MARGIN);
                let old = lead.epoch.swap(l.epoch, Ordering::SeqCst);
                if old != l.epoch {
                    tracing::warn!(from = old, to = l.epoch, "leader: epoch raised");
                }
            }
            Ok(l) => {
                return step_down(format!(
                    "replica {} at {} holds the lease (epoch {})",
                    l.holder, l.url, l.epoch
                ));
            }
            Err(e) => tracing::warn!("leader: lease not renewed ({e})"),
        }
    }
    // A clean stop: the next replica need not wait for the lease to lapse.
    if !lead.deposed() {
        let _ = repo.release_lease(&lead.name).await;
    }
}
