//! The recovery-point catalog: point queries and aggregates behind the
//! memos, and the point and copy rows written by [`Repo`](crate::Repo)'s catalog calls.

use std::collections::HashMap;

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use standby_types::model::PointRecord;

use crate::error::query;
use crate::{CopyCount, DbError, PointQuery, VmPoints};

use super::SqlRepo;
use super::rows::{Arg, Filter, get, int, json_list, lists, time, ts, uint, with_key};

/// Every VM with points, by a loose index scan of `points (vm, time)`:
/// one seek per VM rather than a scan of every point (a million points of
/// ten thousand VMs: ten thousand seeks). Same text on SQLite and
/// PostgreSQL.
const DISTINCT_VMS: &str = "WITH RECURSIVE d(vm) AS ( \
     SELECT MIN(vm) FROM points \
     UNION ALL \
     SELECT (SELECT MIN(p.vm) FROM points p WHERE p.vm > d.vm) FROM d WHERE d.vm IS NOT NULL) \
     SELECT vm FROM d WHERE vm IS NOT NULL";

impl SqlRepo {
    pub(super) async fn load_point_summary(&self) -> Result<Vec<VmPoints>, DbError> {
        // The newest point's size by an index seek per VM; SUM of a
        // BIGINT is NUMERIC in PostgreSQL, hence the cast.
        let rows = sqlx::query(
            "SELECT s.vm, s.n, s.newest, s.added, \
             (SELECT l.size FROM points l WHERE l.vm = s.vm \
              ORDER BY l.time DESC, l.id DESC LIMIT 1) AS size \
             FROM (SELECT vm, COUNT(*) AS n, MAX(time) AS newest, \
             CAST(SUM(bytes_new) AS BIGINT) AS added FROM points GROUP BY vm) s \
             ORDER BY s.vm",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("summarize points"))?;
        rows.iter()
            .map(|r| {
                Ok(VmPoints {
                    vm: get(r, "vm")?,
                    count: uint(r, "n")?,
                    newest: time(r, "newest")?,
                    newest_size: uint(r, "size")?,
                    new_bytes: uint(r, "added")?,
                })
            })
            .collect()
    }

    pub(super) async fn load_copy_counts(&self) -> Result<Vec<CopyCount>, DbError> {
        let rows = sqlx::query(
            "SELECT vm, group_name, NULL AS datastore, COUNT(*) AS n FROM points \
             GROUP BY vm, group_name \
             UNION ALL \
             SELECT p.vm, p.group_name, c.datastore, COUNT(*) AS n \
             FROM point_copies c JOIN points p ON p.id = c.point_id \
             GROUP BY p.vm, p.group_name, c.datastore",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("count point copies"))?;
        rows.iter()
            .map(|r| {
                Ok(CopyCount {
                    vm: get(r, "vm")?,
                    group: get(r, "group_name")?,
                    datastore: get(r, "datastore")?,
                    count: uint(r, "n")?,
                })
            })
            .collect()
    }

    /// The newest point of every VM with points: an index seek per VM
    /// (the VMs themselves found by seeks too, [`DISTINCT_VMS`]).
    pub(super) async fn load_latest(&self) -> Result<HashMap<String, PointRecord>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {POINT_COLUMNS} FROM points p WHERE p.id IN \
             (SELECT (SELECT id FROM points WHERE vm = v.vm ORDER BY time DESC, id DESC LIMIT 1) \
              FROM ({DISTINCT_VMS}) v)"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list the newest points"))?;
        let ids = rows
            .iter()
            .map(|r| get::<String>(r, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        let copies = self.copies_of(&ids).await?;
        Ok(point_records(&rows, copies)?
            .into_iter()
            .map(|p| (p.vm.clone(), p))
            .collect())
    }

    /// After a committed write of points or copies.
    pub(super) fn points_changed(&self) {
        self.summary_memo.invalidate();
        self.copies_memo.invalidate();
        self.latest_memo.invalidate();
        self.counts_memo.invalidate();
    }

    /// How many points match `q`'s filters (its page aside); counted once
    /// per filter and catalog generation.
    pub(super) async fn count_points(&self, q: &PointQuery) -> Result<u64, DbError> {
        let key = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            q.vm, q.vms, q.site, q.group, q.since
        );
        // A count that raced a write lands in the old generation's map,
        // which is never served again.
        let counts = self
            .counts_memo
            .get(|| async { Ok(std::sync::Mutex::default()) })
            .await?;
        let known = counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if let Some(n) = known {
            return Ok(n);
        }
        // One VM's points, unfiltered: the per-VM summary has the count
        // when it is current (it is not loaded for this: after a write a
        // count of one VM is cheaper than a summary of all).
        if let (Some(vm), None, None, None, None) = (&q.vm, &q.vms, &q.site, &q.group, &q.since)
            && let Some(summary) = self.summary_memo.peek()
        {
            return Ok(summary.iter().find(|s| &s.vm == vm).map_or(0, |s| s.count));
        }
        let f = self.point_filter(q)?;
        let sql = format!("SELECT COUNT(*) FROM points p {}", f.where_clause());
        let total: i64 = f
            .scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(query("count points"))?;
        let total = u64::try_from(total).unwrap_or_default();
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: `since` filters are many and short-lived.
        if counts.len() >= 1024 {
            counts.clear();
        }
        counts.insert(key, total);
        Ok(total)
    }

    pub(super) async fn load_points(
        &self,
        filter: PointFilter<'_>,
    ) -> Result<Vec<PointRecord>, DbError> {
        let (cond, value) = match filter {
            PointFilter::All => ("", None),
            PointFilter::Vm(vm) => ("WHERE p.vm = $1", Some(vm)),
            PointFilter::Id(id) => ("WHERE p.id = $1", Some(id)),
        };
        let sql = format!("SELECT {POINT_COLUMNS} FROM points p {cond} ORDER BY p.time, p.id");
        let rows = with_key(&sql, value)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list points"))?;
        let sql = format!(
            "SELECT c.point_id, c.datastore FROM point_copies c \
             JOIN points p ON p.id = c.point_id {cond} \
             ORDER BY c.point_id, c.position"
        );
        let copies = lists(
            with_key(&sql, value)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list point copies"))?,
        )?;
        point_records(&rows, copies)
    }

    /// The copies of these points, in their order, by point id.
    pub(super) async fn copies_of(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<String>>, DbError> {
        let ids = json_list(ids)?;
        let sql = format!(
            "SELECT point_id, datastore FROM point_copies \
             WHERE point_id IN ({}) ORDER BY point_id, position",
            self.json_values("$1")
        );
        lists(
            sqlx::query(&sql)
                .bind(ids)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list point copies"))?,
        )
    }

    /// The filters of a point query (its page aside) as `WHERE` conditions
    /// on `points p`.
    pub(super) fn point_filter(&self, q: &PointQuery) -> Result<Filter, DbError> {
        let mut f = Filter::default();
        if let Some(vm) = &q.vm {
            f.cond("p.vm = {}", [Arg::Text(vm.clone())]);
        }
        if let Some(vms) = &q.vms {
            let list = f.arg(Arg::Text(json_list(vms)?));
            f.cond(&format!("p.vm IN ({})", self.json_values(&list)), []);
        }
        if let Some(site) = &q.site {
            f.cond("p.site = {}", [Arg::Text(site.clone())]);
        }
        if let Some(group) = &q.group {
            f.cond("p.group_name = {}", [Arg::Text(group.clone())]);
        }
        if let Some(since) = q.since {
            f.cond("p.time >= {}", [Arg::Text(ts(since))]);
        }
        Ok(f)
    }
}

pub(super) const POINT_COLUMNS: &str = "p.id, p.vm, p.group_name, p.site, p.time, p.consistency, \
     p.size, p.bytes_read, p.bytes_new";

pub(super) fn point_records(
    rows: &[AnyRow],
    mut copies: HashMap<String, Vec<String>>,
) -> Result<Vec<PointRecord>, DbError> {
    rows.iter()
        .map(|r| {
            let id: String = get(r, "id")?;
            Ok(PointRecord {
                vm: get(r, "vm")?,
                group: get(r, "group_name")?,
                site: get(r, "site")?,
                time: time(r, "time")?,
                consistency: get(r, "consistency")?,
                size: uint(r, "size")?,
                bytes_read: uint(r, "bytes_read")?,
                bytes_new: uint(r, "bytes_new")?,
                copies: copies.remove(&id).unwrap_or_default(),
                damaged: Vec::new(),
                id,
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
pub(super) enum PointFilter<'a> {
    All,
    Vm(&'a str),
    Id(&'a str),
}

/// Append a copy unless the point has it already.
/// Forget the copy in `datastore`; the point goes with its last copy.
pub(super) async fn remove_copy(
    conn: &mut AnyConnection,
    id: &str,
    datastore: &str,
) -> Result<(), DbError> {
    let what = format!("remove copy '{datastore}' of point '{id}'");
    sqlx::query("DELETE FROM point_copies WHERE point_id = $1 AND datastore = $2")
        .bind(id)
        .bind(datastore)
        .execute(&mut *conn)
        .await
        .map_err(query(&what))?;
    // Its damage goes with it (a copy made again later is a new one).
    sqlx::query("DELETE FROM damaged_copies WHERE point_id = $1 AND datastore = $2")
        .bind(id)
        .bind(datastore)
        .execute(&mut *conn)
        .await
        .map_err(query(&what))?;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM point_copies WHERE point_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .map_err(query(&what))?;
    if left == 0 {
        sqlx::query("DELETE FROM points WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(query(format!("delete point '{id}'")))?;
    }
    Ok(())
}

/// Changes of the catalog per write transaction in [`Repo::sync_catalog`].
pub(super) const SYNC_BATCH: usize = 5000;

/// Insert or update a point's row (not its copies).
pub(super) async fn insert_point_row(
    conn: &mut AnyConnection,
    p: &PointRecord,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO points (id, vm, group_name, site, time, consistency, size, \
         bytes_read, bytes_new) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET vm = excluded.vm, group_name = excluded.group_name, \
         site = excluded.site, time = excluded.time, consistency = excluded.consistency, \
         size = excluded.size, bytes_read = excluded.bytes_read, \
         bytes_new = excluded.bytes_new",
    )
    .bind(&p.id)
    .bind(&p.vm)
    .bind(&p.group)
    .bind(&p.site)
    .bind(ts(p.time))
    .bind(&p.consistency)
    .bind(int(p.size, "point size")?)
    .bind(int(p.bytes_read, "bytes read")?)
    .bind(int(p.bytes_new, "new bytes")?)
    .execute(conn)
    .await
    .map_err(query(format!("store point '{}'", p.id)))?;
    Ok(())
}

pub(super) async fn add_copy(
    conn: &mut AnyConnection,
    id: &str,
    datastore: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO point_copies (point_id, datastore, position) \
         SELECT $1, $2, COALESCE(MAX(position) + 1, 0) FROM point_copies WHERE point_id = $1 \
         ON CONFLICT (point_id, datastore) DO NOTHING",
    )
    .bind(id)
    .bind(datastore)
    .execute(conn)
    .await
    .map_err(query(format!("add copy '{datastore}' of point '{id}'")))?;
    Ok(())
}
