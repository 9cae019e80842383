//! State of the watch side: events, alerts, silences, incidents with their
//! timelines, and the notification outbox (delivery log).
//!
//! # Invariants
//!
//! - Alerts are never updated into a new firing: a fingerprint that fires
//!   again after resolving gets a new row, so the history is complete.
//! - A delivery is `pending` until it is `delivered` or `failed` (gave up);
//!   its payload is stored with it, so a restart resumes retries.
//! - Events are pruned by age only.

use chrono::{DateTime, Utc};
use standby_types::watch::{
    Alert, AlertState, Delivery, Event, Incident, IncidentState, Labels, Severity, Silence,
    TimelineEntry,
};

use crate::DbError;

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events with a larger id (for tailing), oldest first.
    pub after_id: Option<i64>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub kind: Option<String>,
    pub source: Option<String>,
    pub min_severity: Option<Severity>,
    /// Every label must be present with this value.
    pub labels: Labels,
    /// At most this many (the newest ones unless `after_id` is set), always
    /// returned oldest first.
    pub limit: u32,
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Only these states (all when empty).
    pub states: Vec<AlertState>,
    pub rule: Option<String>,
    pub limit: u32,
}

#[async_trait::async_trait]
pub trait WatchRepo: Send + Sync {
    /// Store events in one transaction; returns their new ids in order.
    async fn insert_events(&self, events: &[Event]) -> Result<Vec<i64>, DbError>;
    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, DbError>;
    /// Delete events older than `before`; returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, DbError>;

    /// Store a new alert (its `id` is ignored); returns the id.
    async fn insert_alert(&self, a: &Alert) -> Result<i64, DbError>;
    /// Overwrite the mutable fields of alert `a.id`: state, severity,
    /// annotations, acknowledged_at/by, resolved_at, inhibited_by,
    /// silenced_by, incident.
    async fn update_alert(&self, a: &Alert) -> Result<(), DbError>;
    async fn alert(&self, id: i64) -> Result<Alert, DbError>;
    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>, DbError>;

    /// Store a new silence; returns the id.
    async fn insert_silence(&self, s: &Silence) -> Result<i64, DbError>;
    /// Silences whose end is after `now` (all when `now` is None), newest
    /// first.
    async fn silences(&self, now: Option<DateTime<Utc>>) -> Result<Vec<Silence>, DbError>;
    /// End a silence now (sets ends_at).
    async fn expire_silence(&self, id: i64, now: DateTime<Utc>) -> Result<(), DbError>;

    /// Store a new incident; returns the id.
    async fn insert_incident(&self, i: &Incident) -> Result<i64, DbError>;
    /// Overwrite title, severity, description, group, state, labels,
    /// resolved_at and closed_at of incident `i.id`.
    async fn update_incident(&self, i: &Incident) -> Result<(), DbError>;
    async fn incident(&self, id: i64) -> Result<Incident, DbError>;
    /// Newest first; only these states when not empty.
    async fn incidents(
        &self,
        states: &[IncidentState],
        limit: u32,
    ) -> Result<Vec<Incident>, DbError>;
    /// The newest incident with this key that is `new` or `active`.
    async fn open_incident_by_key(&self, key: &str) -> Result<Option<Incident>, DbError>;
    /// Append to an incident's timeline; returns the entry id.
    async fn add_timeline(&self, e: &TimelineEntry) -> Result<i64, DbError>;
    /// Oldest first.
    async fn timeline(&self, incident: i64) -> Result<Vec<TimelineEntry>, DbError>;
    /// Alerts linked to an incident, oldest first.
    async fn incident_alerts(&self, incident: i64) -> Result<Vec<Alert>, DbError>;

    /// Queue a delivery (state `pending`, 0 attempts) with its payload.
    async fn insert_delivery(
        &self,
        receiver: &str,
        status: &str,
        alerts: &[i64],
        payload: &serde_json::Value,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<Delivery, DbError>;
    /// Pending deliveries due at `now`, oldest first, with their payloads.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Delivery, serde_json::Value)>, DbError>;
    /// Overwrite state, attempts, last_error, next_attempt_at, delivered_at.
    async fn update_delivery(&self, d: &Delivery) -> Result<(), DbError>;
    /// Newest first.
    async fn deliveries(&self, limit: u32) -> Result<Vec<Delivery>, DbError>;
    /// Delete deliveries done (delivered, or failed for good) created
    /// before `before`; returns how many. Pending ones are kept.
    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, DbError>;
}
