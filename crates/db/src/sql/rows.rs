//! Row and value helpers shared by every repository: columns to records,
//! timestamps, integer ranges, `NotFound`, statements built at run time,
//! and the few spellings that differ between SQLite and PostgreSQL.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::{AnyArguments, AnyRow};
use standby_types::model::{Job, VmRecord};

use super::{Backend, SqlRepo};
use crate::error::query;
use crate::{DbError, FenceRecord};

/// `sql` with its one `$1` bound to `key`, or without binds for `None`.
pub(super) fn with_key<'q>(
    sql: &'q str,
    key: Option<&'q str>,
) -> sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>> {
    let q = sqlx::query(sql);
    match key {
        Some(k) => q.bind(k),
        None => q,
    }
}

/// `NotFound` unless `sql` (selecting by one key) finds a row.
pub(super) async fn exists(
    conn: &mut AnyConnection,
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

pub(super) fn vm_row(r: &AnyRow) -> Result<VmRecord, DbError> {
    Ok(VmRecord {
        name: get(r, "name")?,
        home_site: get(r, "home_site")?,
        home_host: get(r, "home_host")?,
        dr_site: get(r, "dr_site")?,
        active_site: get(r, "active_site")?,
        active_host: get(r, "active_host")?,
    })
}

pub(super) fn fence_row(r: &AnyRow) -> Result<FenceRecord, DbError> {
    Ok(FenceRecord {
        site: get(r, "site")?,
        since: time(r, "since")?,
        reason: get(r, "reason")?,
    })
}

pub(super) fn job_row(r: &AnyRow) -> Result<Job, DbError> {
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
pub(super) fn lists(rows: Vec<AnyRow>) -> Result<HashMap<String, Vec<String>>, DbError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rows {
        let owner: String = r.try_get(0).map_err(query("read a list row"))?;
        let item: String = r.try_get(1).map_err(query("read a list row"))?;
        out.entry(owner).or_default().push(item);
    }
    Ok(out)
}

pub(super) fn get<'r, T>(r: &'r AnyRow, col: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    r.try_get(col).map_err(query(format!("read column {col}")))
}

pub(super) fn uint(r: &AnyRow, col: &str) -> Result<u64, DbError> {
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

pub(super) fn time(r: &AnyRow, col: &str) -> Result<DateTime<Utc>, DbError> {
    let s: String = get(r, col)?;
    parse_ts(&s, col)
}

pub(super) fn opt_time(r: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>, DbError> {
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

/// The `sqlite://` URL of the file at `path` (absolute, without `..`):
/// every byte but unreserved ones and `/` percent-encoded.
pub(super) fn sqlite_url(path: &Path) -> Result<String, sqlx::Error> {
    let text = path
        .to_str()
        .ok_or_else(|| sqlx::Error::Configuration("the path is not UTF-8".into()))?;
    let mut url = String::from("sqlite://");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

impl SqlRepo {
    /// The values of the JSON array of text bound at `param` as a
    /// one-column subquery (`col IN (...)`): one parameter however long
    /// the list.
    pub(super) fn json_values(&self, param: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("SELECT value FROM json_each({param})"),
            Backend::Postgres => {
                format!("SELECT value FROM json_array_elements_text(CAST({param} AS json))")
            }
        }
    }
}

/// A list of names as a JSON array, for [`SqlRepo::json_values`].
pub(super) fn json_list(items: &[String]) -> Result<String, DbError> {
    serde_json::to_string(items).map_err(|e| DbError::Value {
        what: "name list".into(),
        message: e.to_string(),
    })
}

/// A bind value of a statement built at run time.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// `WHERE` conditions with `$N` parameters numbered as they are added
/// (sqlx's `QueryBuilder` writes `?` for `Any`, which PostgreSQL refuses).
#[derive(Default)]
pub(super) struct Filter {
    conds: Vec<String>,
    args: Vec<Arg>,
}

impl Filter {
    /// Add `arg` and return its placeholder.
    pub(super) fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    /// Add `cond`, with each `{}` replaced by a placeholder of one of
    /// `args` in turn.
    pub(super) fn cond(&mut self, cond: &str, args: impl IntoIterator<Item = Arg>) {
        let mut out = String::new();
        let mut parts = cond.split("{}");
        let mut args = args.into_iter();
        out.push_str(parts.next().unwrap_or_default());
        for part in parts {
            let arg = args.next().expect("one argument per placeholder");
            out.push_str(&self.arg(arg));
            out.push_str(part);
        }
        self.conds.push(out);
    }

    /// `col IN (...)` of `values`; nothing when `values` is empty.
    pub(super) fn any_of(&mut self, col: &str, values: impl IntoIterator<Item = &'static str>) {
        let marks: Vec<String> = values
            .into_iter()
            .map(|v| self.arg(Arg::Text(v.into())))
            .collect();
        if !marks.is_empty() {
            self.conds.push(format!("{col} IN ({})", marks.join(", ")));
        }
    }

    pub(super) fn where_clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }

    pub(super) fn query(self, sql: &str) -> sqlx::query::Query<'_, sqlx::Any, AnyArguments<'_>> {
        self.args
            .into_iter()
            .fold(sqlx::query(sql), |q, a| match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            })
    }

    /// `query` of a statement yielding one value.
    pub(super) fn scalar<'q, T>(
        self,
        sql: &'q str,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Any, T, AnyArguments<'q>>
    where
        (T,): for<'r> sqlx::FromRow<'r, AnyRow>,
    {
        self.args
            .into_iter()
            .fold(sqlx::query_scalar(sql), |q, a| match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            })
    }
}
