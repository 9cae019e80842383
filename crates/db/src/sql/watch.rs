//! [`WatchRepo`] on SQL, in the same portable SQL as the rest: labels are
//! JSON text and filtered here after reading, not with JSON operators.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use standby_types::watch::{
    Alert, AlertState, Delivery, Event, Incident, IncidentState, Severity, Silence, TimelineEntry,
};

use super::SqlRepo;
use super::rows::{Arg, Filter, found, get, not_found, now, opt_time, time, ts};
use crate::error::query;
use crate::{AlertQuery, DbError, EventQuery, WatchRepo};

/// What a list query returns when asked for `limit` 0.
const DEFAULT_LIMIT: u32 = 100;

/// Rows read per round while filtering events on labels.
const EVENT_PAGE: usize = 500;

const EVENT_COLUMNS: &str = "id, at, source, kind, severity, labels, vantage, message";

const ALERT_COLUMNS: &str = "id, fingerprint, rule, severity, state, labels, annotations, \
     active_since, fired_at, acknowledged_at, acknowledged_by, resolved_at, inhibited_by, \
     silenced_by, incident";

const SILENCE_COLUMNS: &str = "id, matchers, comment, created_by, starts_at, ends_at";

const INCIDENT_COLUMNS: &str = "id, title, severity, description, grp, state, template, key, \
     labels, opened_at, resolved_at, closed_at";

const TIMELINE_COLUMNS: &str = "id, incident, at, kind, author, text, alert";

const DELIVERY_COLUMNS: &str = "id, receiver, status, alerts, state, attempts, last_error, \
     created_at, next_attempt_at, delivered_at";

fn limit_or_default(limit: u32) -> u32 {
    if limit == 0 { DEFAULT_LIMIT } else { limit }
}

/// Orders severities in SQL: `severity_rank >= rank(min)`.
fn severity_rank(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
        Severity::Critical => 3,
    }
}

#[async_trait::async_trait]
impl WatchRepo for SqlRepo {
    async fn insert_events(&self, events: &[Event]) -> Result<Vec<i64>, DbError> {
        let what = format!("store {} events", events.len());
        let mut tx = self.write_tx(&what).await?;
        let mut ids = Vec::with_capacity(events.len());
        for e in events {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO events (at, source, kind, severity, severity_rank, labels, \
                 vantage, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(ts(e.at))
            .bind(&e.source)
            .bind(&e.kind)
            .bind(e.severity.as_str())
            .bind(severity_rank(e.severity))
            .bind(to_json(&e.labels, "events.labels")?)
            .bind(&e.vantage)
            .bind(&e.message)
            .fetch_one(&mut *tx)
            .await
            .map_err(query(format!("store {} event from '{}'", e.kind, e.source)))?;
            ids.push(id);
        }
        tx.commit().await.map_err(query(what))?;
        Ok(ids)
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, DbError> {
        let limit = limit_or_default(q.limit) as usize;
        // Tailing reads forward from the cursor; otherwise read backwards
        // from the newest and turn the result round at the end.
        let forward = q.after_id.is_some();
        // Labels are matched here, so read in pages until enough match.
        let page = if q.labels.is_empty() {
            limit
        } else {
            limit.max(EVENT_PAGE)
        };
        let mut cursor = q.after_id;
        let mut out = Vec::new();
        loop {
            let mut f = Filter::default();
            if let Some(c) = cursor {
                f.cond(if forward { "id > {}" } else { "id < {}" }, [Arg::Int(c)]);
            }
            if let Some(since) = q.since {
                f.cond("at >= {}", [Arg::Text(ts(since))]);
            }
            if let Some(kind) = &q.kind {
                f.cond("kind = {}", [Arg::Text(kind.clone())]);
            }
            if let Some(source) = &q.source {
                f.cond("source = {}", [Arg::Text(source.clone())]);
            }
            if let Some(min) = q.min_severity {
                f.cond("severity_rank >= {}", [Arg::Int(severity_rank(min))]);
            }
            let lim = f.arg(Arg::Int(page as i64));
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events {} ORDER BY id {} LIMIT {lim}",
                f.where_clause(),
                if forward { "ASC" } else { "DESC" },
            );
            let rows = f
                .query(&sql)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list events"))?;
            for r in &rows {
                let e = event_row(r)?;
                cursor = Some(e.id);
                if q.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)) {
                    out.push(e);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if out.len() == limit || rows.len() < page {
                break;
            }
        }
        if !forward {
            out.reverse();
        }
        Ok(out)
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = self
            .write_one(
                format!("prune events before {}", ts(before)),
                sqlx::query("DELETE FROM events WHERE at < $1").bind(ts(before)),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert_alert(&self, a: &Alert) -> Result<i64, DbError> {
        self.write_id(
            format!("store alert of rule '{}' ({})", a.rule, a.fingerprint),
            sqlx::query_scalar(
                "INSERT INTO alerts (fingerprint, rule, severity, state, labels, annotations, \
             active_since, fired_at, acknowledged_at, acknowledged_by, resolved_at, \
             inhibited_by, silenced_by, incident) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
            )
            .bind(&a.fingerprint)
            .bind(&a.rule)
            .bind(a.severity.as_str())
            .bind(a.state.as_str())
            .bind(to_json(&a.labels, "alerts.labels")?)
            .bind(to_json(&a.annotations, "alerts.annotations")?)
            .bind(ts(a.active_since))
            .bind(ts(a.fired_at))
            .bind(a.acknowledged_at.map(ts))
            .bind(&a.acknowledged_by)
            .bind(a.resolved_at.map(ts))
            .bind(&a.inhibited_by)
            .bind(a.silenced_by)
            .bind(a.incident),
        )
        .await
    }

    async fn update_alert(&self, a: &Alert) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("update alert {}", a.id),
                sqlx::query(
                    "UPDATE alerts SET state = $1, severity = $2, annotations = $3, \
             acknowledged_at = $4, acknowledged_by = $5, resolved_at = $6, inhibited_by = $7, \
             silenced_by = $8, incident = $9 WHERE id = $10",
                )
                .bind(a.state.as_str())
                .bind(a.severity.as_str())
                .bind(to_json(&a.annotations, "alerts.annotations")?)
                .bind(a.acknowledged_at.map(ts))
                .bind(&a.acknowledged_by)
                .bind(a.resolved_at.map(ts))
                .bind(&a.inhibited_by)
                .bind(a.silenced_by)
                .bind(a.incident)
                .bind(a.id),
            )
            .await?;
        found(done.rows_affected(), "alert", &a.id.to_string())
    }

    async fn alert(&self, id: i64) -> Result<Alert, DbError> {
        sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(format!("read alert {id}")))?
            .as_ref()
            .map(alert_row)
            .unwrap_or_else(|| Err(not_found("alert", &id.to_string())))
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>, DbError> {
        let mut f = Filter::default();
        f.any_of("state", q.states.iter().map(AlertState::as_str));
        if let Some(rule) = &q.rule {
            f.cond("rule = {}", [Arg::Text(rule.clone())]);
        }
        let lim = f.arg(Arg::Int(limit_or_default(q.limit).into()));
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts {} ORDER BY id DESC LIMIT {lim}",
            f.where_clause()
        );
        f.query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list alerts"))?
            .iter()
            .map(alert_row)
            .collect()
    }

    async fn insert_silence(&self, s: &Silence) -> Result<i64, DbError> {
        self.write_id(
            format!("store silence by '{}'", s.created_by),
            sqlx::query_scalar(
                "INSERT INTO silences (matchers, comment, created_by, starts_at, ends_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(to_json(&s.matchers, "silences.matchers")?)
            .bind(&s.comment)
            .bind(&s.created_by)
            .bind(ts(s.starts_at))
            .bind(ts(s.ends_at)),
        )
        .await
    }

    async fn silences(&self, now: Option<DateTime<Utc>>) -> Result<Vec<Silence>, DbError> {
        let mut f = Filter::default();
        if let Some(now) = now {
            f.cond("ends_at > {}", [Arg::Text(ts(now))]);
        }
        let sql = format!(
            "SELECT {SILENCE_COLUMNS} FROM silences {} ORDER BY id DESC",
            f.where_clause()
        );
        f.query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list silences"))?
            .iter()
            .map(silence_row)
            .collect()
    }

    async fn expire_silence(&self, id: i64, now: DateTime<Utc>) -> Result<(), DbError> {
        // A silence that already ended keeps its end: expiring it again
        // must not move the end later.
        let done = self
            .write_one(
                format!("expire silence {id}"),
                sqlx::query(
                    "UPDATE silences SET ends_at = CASE WHEN ends_at > $1 THEN $1 ELSE ends_at END \
             WHERE id = $2",
                )
                .bind(ts(now))
                .bind(id),
            )
            .await?;
        found(done.rows_affected(), "silence", &id.to_string())
    }

    async fn insert_incident(&self, i: &Incident) -> Result<i64, DbError> {
        self.write_id(
            format!("store incident '{}'", i.title),
            sqlx::query_scalar(
                "INSERT INTO incidents (title, severity, description, grp, state, template, key, \
             labels, opened_at, resolved_at, closed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            )
            .bind(&i.title)
            .bind(i.severity.as_str())
            .bind(&i.description)
            .bind(&i.group)
            .bind(i.state.as_str())
            .bind(&i.template)
            .bind(&i.key)
            .bind(to_json(&i.labels, "incidents.labels")?)
            .bind(ts(i.opened_at))
            .bind(i.resolved_at.map(ts))
            .bind(i.closed_at.map(ts)),
        )
        .await
    }

    async fn update_incident(&self, i: &Incident) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("update incident {}", i.id),
                sqlx::query(
                    "UPDATE incidents SET title = $1, severity = $2, description = $3, grp = $4, \
             state = $5, labels = $6, resolved_at = $7, closed_at = $8 WHERE id = $9",
                )
                .bind(&i.title)
                .bind(i.severity.as_str())
                .bind(&i.description)
                .bind(&i.group)
                .bind(i.state.as_str())
                .bind(to_json(&i.labels, "incidents.labels")?)
                .bind(i.resolved_at.map(ts))
                .bind(i.closed_at.map(ts))
                .bind(i.id),
            )
            .await?;
        found(done.rows_affected(), "incident", &i.id.to_string())
    }

    async fn incident(&self, id: i64) -> Result<Incident, DbError> {
        sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(format!("read incident {id}")))?
        .as_ref()
        .map(incident_row)
        .unwrap_or_else(|| Err(not_found("incident", &id.to_string())))
    }

    async fn incidents(
        &self,
        states: &[IncidentState],
        limit: u32,
    ) -> Result<Vec<Incident>, DbError> {
        let mut f = Filter::default();
        f.any_of("state", states.iter().map(IncidentState::as_str));
        let lim = f.arg(Arg::Int(limit_or_default(limit).into()));
        let sql = format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents {} ORDER BY id DESC LIMIT {lim}",
            f.where_clause()
        );
        f.query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list incidents"))?
            .iter()
            .map(incident_row)
            .collect()
    }

    async fn open_incident_by_key(&self, key: &str) -> Result<Option<Incident>, DbError> {
        sqlx::query(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE key = $1 AND state IN ($2, $3) \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(key)
        .bind(IncidentState::New.as_str())
        .bind(IncidentState::Active.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query(format!("look up open incident with key '{key}'")))?
        .as_ref()
        .map(incident_row)
        .transpose()
    }

    async fn add_timeline(&self, e: &TimelineEntry) -> Result<i64, DbError> {
        let what = format!("add {} to the timeline of incident {}", e.kind, e.incident);
        let mut tx = self.write_tx(&what).await?;
        let incident: Option<i64> = sqlx::query_scalar("SELECT id FROM incidents WHERE id = $1")
            .bind(e.incident)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query(&what))?;
        if incident.is_none() {
            return Err(not_found("incident", &e.incident.to_string()));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO incident_timeline (incident, at, kind, author, text, alert) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(e.incident)
        .bind(ts(e.at))
        .bind(&e.kind)
        .bind(&e.author)
        .bind(&e.text)
        .bind(e.alert)
        .fetch_one(&mut *tx)
        .await
        .map_err(query(&what))?;
        tx.commit().await.map_err(query(what))?;
        Ok(id)
    }

    async fn timeline(&self, incident: i64) -> Result<Vec<TimelineEntry>, DbError> {
        sqlx::query(&format!(
            "SELECT {TIMELINE_COLUMNS} FROM incident_timeline WHERE incident = $1 \
             ORDER BY at, id"
        ))
        .bind(incident)
        .fetch_all(&self.pool)
        .await
        .map_err(query(format!("read the timeline of incident {incident}")))?
        .iter()
        .map(|r| {
            Ok(TimelineEntry {
                id: get(r, "id")?,
                incident: get(r, "incident")?,
                at: time(r, "at")?,
                kind: get(r, "kind")?,
                author: get(r, "author")?,
                text: get(r, "text")?,
                alert: get(r, "alert")?,
            })
        })
        .collect()
    }

    async fn incident_alerts(&self, incident: i64) -> Result<Vec<Alert>, DbError> {
        sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE incident = $1 ORDER BY id"
        ))
        .bind(incident)
        .fetch_all(&self.pool)
        .await
        .map_err(query(format!("list alerts of incident {incident}")))?
        .iter()
        .map(alert_row)
        .collect()
    }

    async fn insert_delivery(
        &self,
        receiver: &str,
        status: &str,
        alerts: &[i64],
        payload: &serde_json::Value,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<Delivery, DbError> {
        let created_at = now();
        let id: i64 = self
            .write_id(
                format!("queue a {status} delivery to '{receiver}'"),
                sqlx::query_scalar(
                    "INSERT INTO deliveries (receiver, status, alerts, payload, state, attempts, \
             created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7) RETURNING id",
                )
                .bind(receiver)
                .bind(status)
                .bind(to_json(alerts, "deliveries.alerts")?)
                .bind(payload.to_string())
                .bind(PENDING)
                .bind(ts(created_at))
                .bind(ts(next_attempt_at)),
            )
            .await?;
        Ok(Delivery {
            id,
            receiver: receiver.into(),
            status: status.into(),
            alerts: alerts.to_vec(),
            state: PENDING.into(),
            attempts: 0,
            last_error: None,
            created_at,
            next_attempt_at: Some(next_attempt_at),
            delivered_at: None,
        })
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(Delivery, serde_json::Value)>, DbError> {
        sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS}, payload FROM deliveries \
             WHERE state = $1 AND next_attempt_at <= $2 ORDER BY id LIMIT $3"
        ))
        .bind(PENDING)
        .bind(ts(now))
        .bind(i64::from(limit_or_default(limit)))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list due deliveries"))?
        .iter()
        .map(|r| Ok((delivery_row(r)?, from_json(r, "payload")?)))
        .collect()
    }

    async fn update_delivery(&self, d: &Delivery) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("update delivery {}", d.id),
                sqlx::query(
                    "UPDATE deliveries SET state = $1, attempts = $2, last_error = $3, \
             next_attempt_at = $4, delivered_at = $5 WHERE id = $6",
                )
                .bind(&d.state)
                .bind(i64::from(d.attempts))
                .bind(&d.last_error)
                .bind(d.next_attempt_at.map(ts))
                .bind(d.delivered_at.map(ts))
                .bind(d.id),
            )
            .await?;
        found(done.rows_affected(), "delivery", &d.id.to_string())
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = self
            .write_one(
                format!("prune deliveries before {}", ts(before)),
                sqlx::query("DELETE FROM deliveries WHERE state <> $1 AND created_at < $2")
                    .bind(PENDING)
                    .bind(ts(before)),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn deliveries(&self, limit: u32) -> Result<Vec<Delivery>, DbError> {
        sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit_or_default(limit)))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list deliveries"))?
        .iter()
        .map(delivery_row)
        .collect()
    }
}

const PENDING: &str = "pending";

fn event_row(r: &AnyRow) -> Result<Event, DbError> {
    Ok(Event {
        id: get(r, "id")?,
        at: time(r, "at")?,
        source: get(r, "source")?,
        kind: get(r, "kind")?,
        severity: parsed(r, "severity")?,
        labels: from_json(r, "labels")?,
        vantage: get(r, "vantage")?,
        message: get(r, "message")?,
    })
}

fn alert_row(r: &AnyRow) -> Result<Alert, DbError> {
    Ok(Alert {
        id: get(r, "id")?,
        fingerprint: get(r, "fingerprint")?,
        rule: get(r, "rule")?,
        severity: parsed(r, "severity")?,
        state: parsed(r, "state")?,
        labels: from_json(r, "labels")?,
        annotations: from_json(r, "annotations")?,
        active_since: time(r, "active_since")?,
        fired_at: time(r, "fired_at")?,
        acknowledged_at: opt_time(r, "acknowledged_at")?,
        acknowledged_by: get(r, "acknowledged_by")?,
        resolved_at: opt_time(r, "resolved_at")?,
        inhibited_by: get(r, "inhibited_by")?,
        silenced_by: get(r, "silenced_by")?,
        incident: get(r, "incident")?,
    })
}

fn silence_row(r: &AnyRow) -> Result<Silence, DbError> {
    Ok(Silence {
        id: get(r, "id")?,
        matchers: from_json(r, "matchers")?,
        comment: get(r, "comment")?,
        created_by: get(r, "created_by")?,
        starts_at: time(r, "starts_at")?,
        ends_at: time(r, "ends_at")?,
    })
}

fn incident_row(r: &AnyRow) -> Result<Incident, DbError> {
    Ok(Incident {
        id: get(r, "id")?,
        title: get(r, "title")?,
        severity: parsed(r, "severity")?,
        description: get(r, "description")?,
        group: get(r, "grp")?,
        state: parsed(r, "state")?,
        template: get(r, "template")?,
        key: get(r, "key")?,
        labels: from_json(r, "labels")?,
        opened_at: time(r, "opened_at")?,
        resolved_at: opt_time(r, "resolved_at")?,
        closed_at: opt_time(r, "closed_at")?,
    })
}

fn delivery_row(r: &AnyRow) -> Result<Delivery, DbError> {
    let attempts: i64 = get(r, "attempts")?;
    Ok(Delivery {
        id: get(r, "id")?,
        receiver: get(r, "receiver")?,
        status: get(r, "status")?,
        alerts: from_json(r, "alerts")?,
        state: get(r, "state")?,
        attempts: u32::try_from(attempts).map_err(|_| DbError::Value {
            what: "deliveries.attempts".into(),
            message: format!("{attempts} is not a count of attempts"),
        })?,
        last_error: get(r, "last_error")?,
        created_at: time(r, "created_at")?,
        next_attempt_at: opt_time(r, "next_attempt_at")?,
        delivered_at: opt_time(r, "delivered_at")?,
    })
}

/// A column holding a name parsed by `FromStr` (severity, state).
fn parsed<T>(r: &AnyRow, col: &str) -> Result<T, DbError>
where
    T: std::str::FromStr<Err = String>,
{
    let s: String = get(r, col)?;
    s.parse().map_err(|message| DbError::Value {
        what: col.into(),
        message,
    })
}

fn from_json<T: DeserializeOwned>(r: &AnyRow, col: &str) -> Result<T, DbError> {
    let s: String = get(r, col)?;
    serde_json::from_str(&s).map_err(|e| DbError::Value {
        what: col.into(),
        message: format!("'{s}' is not the expected JSON: {e}"),
    })
}

fn to_json<T: Serialize + ?Sized>(v: &T, what: &str) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Value {
        what: what.into(),
        message: e.to_string(),
    })
}
