//! Row and value helpers shared by every repository: columns to records,
//! timestamps, integer ranges, `NotFound`.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use standby_types::model::{Job, VmRecord};

use crate::error::query;
use crate::{DbError, FenceRecord};

/// `sql` with its one `?` bound to `key`, or without binds for `None`.
pub(super) fn with_key<'q>(
    sql: &'q str,
    key: Option<&'q str>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let q = sqlx::query(sql);
    match key {
        Some(k) => q.bind(k),
        None => q,
    }
}

/// `NotFound` unless `sql` (selecting by one key) finds a row.
pub(super) async fn exists(
    conn: &mut SqliteConnection,
    sql: &'static str,
    key: &str,
    kind: &'static str,
) -> Result<(), DbError> {
    let row = sqlx::query(sql)
        .bind(key)
        .fetch_optional(conn)
        .await
        .map_err(query(format!("look up {kind} '{key}'")))?;
    match row {
        Some(_) => Ok(()),
        None => Err(not_found(kind, key)),
    }
}

pub(super) fn not_found(kind: &'static str, name: &str) -> DbError {
    DbError::NotFound {
        kind,
        name: name.to_string(),
    }
}

pub(super) fn found(rows: u64, kind: &'static str, name: &str) -> Result<(), DbError> {
    if rows == 0 {
        Err(not_found(kind, name))
    } else {
        Ok(())
    }
}

pub(super) fn vm_row(r: &SqliteRow) -> Result<VmRecord, DbError> {
    Ok(VmRecord {
        name: get(r, "name")?,
        home_site: get(r, "home_site")?,
        home_host: get(r, "home_host")?,
        dr_site: get(r, "dr_site")?,
        active_site: get(r, "active_site")?,
        active_host: get(r, "active_host")?,
    })
}

pub(super) fn fence_row(r: &SqliteRow) -> Result<FenceRecord, DbError> {
    Ok(FenceRecord {
        site: get(r, "site")?,
        since: time(r, "since")?,
        reason: get(r, "reason")?,
    })
}

pub(super) fn job_row(r: &SqliteRow) -> Result<Job, DbError> {
    let status: String = get(r, "status")?;
    let result: String = get(r, "result")?;
    Ok(Job {
        id: get(r, "id")?,
        kind: get(r, "kind")?,
        target: get(r, "target")?,
        status: status.parse().map_err(|message| DbError::Value {
            what: "jobs.status".into(),
            message,
        })?,
        progress_done: uint(r, "progress_done")?,
        progress_total: uint(r, "progress_total")?,
        message: get(r, "message")?,
        error: get(r, "error")?,
        created_at: time(r, "created_at")?,
        started_at: opt_time(r, "started_at")?,
        finished_at: opt_time(r, "finished_at")?,
        result: serde_json::from_str(&result).map_err(|e| DbError::Value {
            what: "jobs.result".into(),
            message: e.to_string(),
        })?,
    })
}

/// Rows of (owner, item), already in order, grouped by owner.
pub(super) fn lists(rows: Vec<SqliteRow>) -> Result<HashMap<String, Vec<String>>, DbError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rows {
        let owner: String = r.try_get(0).map_err(query("read a list row"))?;
        let item: String = r.try_get(1).map_err(query("read a list row"))?;
        out.entry(owner).or_default().push(item);
    }
    Ok(out)
}

pub(super) fn get<'r, T>(r: &'r SqliteRow, col: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    r.try_get(col).map_err(query(format!("read column {col}")))
}

pub(super) fn uint(r: &SqliteRow, col: &str) -> Result<u64, DbError> {
    let v: i64 = get(r, col)?;
    u64::try_from(v).map_err(|_| DbError::Value {
        what: col.into(),
        message: format!("{v} is negative"),
    })
}

pub(super) fn int(v: u64, what: &str) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::Value {
        what: what.into(),
        message: format!("{v} is larger than {}", i64::MAX),
    })
}

pub(super) fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Fixed width (nine fractional digits, `Z`), so text order is time order.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(super) fn time(r: &SqliteRow, col: &str) -> Result<DateTime<Utc>, DbError> {
    let s: String = get(r, col)?;
    parse_ts(&s, col)
}

pub(super) fn opt_time(r: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let s: Option<String> = get(r, col)?;
    s.map(|s| parse_ts(&s, col)).transpose()
}

pub(super) fn parse_ts(s: &str, col: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| DbError::Value {
            what: col.into(),
            message: format!("'{s}' is not an RFC 3339 time: {e}"),
        })
}
