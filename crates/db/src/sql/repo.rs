//! [`Repo`] for [`SqlRepo`]: inventory, placements, groups, the point
//! catalog, jobs and fences.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use standby_types::config::Config;
use standby_types::model::{
    DamagedCopy, DiskRecord, GroupRecord, HostRecord, Job, JobStatus, PointRecord, SiteRecord,
    VmRecord,
};

use crate::error::query;
use crate::{
    CatalogSync, CopyCount, DbError, FenceRecord, INTERRUPTED, PointQuery, Repo, VmPoints,
};

use super::SqlRepo;
use super::catalog::{
    POINT_COLUMNS, PointFilter, SYNC_BATCH, add_copy, insert_point_row, point_records, remove_copy,
};
use super::rows::{
    Arg, exists, fence_row, found, get, int, job_row, json_list, not_found, now, time, ts, uint,
    vm_row,
};

const JOB_COLUMNS: &str = "id, kind, target, status, progress_done, progress_total, message, \
     error, created_at, started_at, finished_at, result";

#[async_trait::async_trait]
impl Repo for SqlRepo {
    async fn close(&self) {
        SqlRepo::close(self).await
    }

    async fn apply_config(&self, cfg: &Config) -> Result<(), DbError> {
        self.write_config(cfg).await
    }

    async fn sites(&self) -> Result<Vec<SiteRecord>, DbError> {
        sqlx::query("SELECT name, description FROM sites ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list sites"))?
            .iter()
            .map(|r| {
                Ok(SiteRecord {
                    name: get(r, "name")?,
                    description: get(r, "description")?,
                })
            })
            .collect()
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, DbError> {
        sqlx::query("SELECT name, site, driver FROM hosts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list hosts"))?
            .iter()
            .map(|r| {
                Ok(HostRecord {
                    name: get(r, "name")?,
                    site: get(r, "site")?,
                    driver: get(r, "driver")?,
                })
            })
            .collect()
    }

    async fn vms(&self) -> Result<std::sync::Arc<Vec<VmRecord>>, DbError> {
        self.vms_memo
            .get(|| async {
                sqlx::query(
                    "SELECT name, home_site, home_host, dr_site, active_site, active_host \
                     FROM vms ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(query("list vms"))?
                .iter()
                .map(vm_row)
                .collect()
            })
            .await
    }

    async fn vm(&self, name: &str) -> Result<VmRecord, DbError> {
        // Kept in memory (the list is sorted by name): no query per VM.
        if self.vms_memo.is_enabled() {
            let vms = self.vms().await?;
            return vms
                .binary_search_by(|v| v.name.as_str().cmp(name))
                .map(|i| vms[i].clone())
                .map_err(|_| not_found("vm", name));
        }
        sqlx::query(
            "SELECT name, home_site, home_host, dr_site, active_site, active_host \
             FROM vms WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(format!("read vm '{name}'")))?
        .as_ref()
        .map(vm_row)
        .unwrap_or_else(|| Err(not_found("vm", name)))
    }

    async fn disks(&self, vm: &str) -> Result<Vec<DiskRecord>, DbError> {
        sqlx::query("SELECT vm, name, size FROM disks WHERE vm = $1 ORDER BY position")
            .bind(vm)
            .fetch_all(&self.pool)
            .await
            .map_err(query(format!("list disks of vm '{vm}'")))?
            .iter()
            .map(|r| {
                Ok(DiskRecord {
                    vm: get(r, "vm")?,
                    name: get(r, "name")?,
                    size: uint(r, "size")?,
                })
            })
            .collect()
    }

    async fn set_vm_placement(&self, vm: &str, site: &str, host: &str) -> Result<(), DbError> {
        let what = format!("place vm '{vm}' on host '{host}'");
        let mut tx = self.write_tx(&what).await?;
        exists(&mut tx, "SELECT name FROM vms WHERE name = $1", vm, "vm").await?;
        exists(
            &mut tx,
            "SELECT name FROM sites WHERE name = $1",
            site,
            "site",
        )
        .await?;
        let host_site: Option<String> =
            sqlx::query_scalar("SELECT site FROM hosts WHERE name = $1")
                .bind(host)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query(&what))?;
        match host_site {
            None => return Err(not_found("host", host)),
            Some(s) if s != site => {
                return Err(DbError::HostNotAtSite {
                    host: host.into(),
                    site: site.into(),
                });
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE vms SET active_site = $1, active_host = $2 WHERE name = $3")
            .bind(site)
            .bind(host)
            .bind(vm)
            .execute(&mut *tx)
            .await
            .map_err(query(&what))?;
        tx.commit().await.map_err(query(what))?;
        self.vms_memo.invalidate();
        Ok(())
    }

    async fn groups(&self) -> Result<Vec<GroupRecord>, DbError> {
        self.load_groups(None).await
    }

    async fn group(&self, name: &str) -> Result<GroupRecord, DbError> {
        self.load_groups(Some(name))
            .await?
            .pop()
            .ok_or_else(|| not_found("group", name))
    }

    async fn set_group_schedule(
        &self,
        group: &str,
        next_run: Option<DateTime<Utc>>,
    ) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("schedule group '{group}'"),
                sqlx::query("UPDATE groups SET next_run = $1 WHERE name = $2")
                    .bind(next_run.map(ts))
                    .bind(group),
            )
            .await?;
        found(done.rows_affected(), "group", group)
    }

    async fn record_group_run(
        &self,
        group: &str,
        at: DateTime<Utc>,
        status: &str,
    ) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("record a run of group '{group}'"),
                sqlx::query("UPDATE groups SET last_run = $1, last_status = $2 WHERE name = $3")
                    .bind(ts(at))
                    .bind(status)
                    .bind(group),
            )
            .await?;
        found(done.rows_affected(), "group", group)
    }

    async fn insert_point(&self, p: &PointRecord) -> Result<(), DbError> {
        let what = format!("store point '{}'", p.id);
        let mut tx = self.write_tx(&what).await?;
        insert_point_row(&mut tx, p).await?;
        for ds in &p.copies {
            add_copy(&mut tx, &p.id, ds).await?;
        }
        tx.commit().await.map_err(query(what))?;
        self.points_changed();
        Ok(())
    }

    async fn sync_catalog(
        &self,
        datastore: &str,
        found: &[PointRecord],
    ) -> Result<CatalogSync, DbError> {
        // Every known point, and whether `datastore` holds a copy (1 or 0:
        // a comparison is an integer in SQLite, a boolean in PostgreSQL).
        let rows = sqlx::query(
            "SELECT p.id, CASE WHEN EXISTS (SELECT 1 FROM point_copies c \
             WHERE c.point_id = p.id AND c.datastore = $1) THEN 1 ELSE 0 END AS held \
             FROM points p",
        )
        .bind(datastore)
        .fetch_all(&self.pool)
        .await
        .map_err(query(format!("read the catalog of '{datastore}'")))?;
        let mut known: HashMap<String, bool> = HashMap::with_capacity(rows.len());
        for r in &rows {
            known.insert(get(r, "id")?, get::<i64>(r, "held")? != 0);
        }
        enum Change<'a> {
            Insert(&'a PointRecord),
            Add(&'a str),
            Remove(String),
        }
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for p in found {
            seen.insert(p.id.as_str());
            match known.get(&p.id) {
                None => changes.push(Change::Insert(p)),
                Some(false) => changes.push(Change::Add(&p.id)),
                Some(true) => {}
            }
        }
        for (id, held) in known {
            if held && !seen.contains(id.as_str()) {
                changes.push(Change::Remove(id));
            }
        }
        let mut out = CatalogSync::default();
        let what = format!("update the catalog of '{datastore}'");
        for batch in changes.chunks(SYNC_BATCH) {
            let mut tx = self.write_tx(&what).await?;
            for c in batch {
                match c {
                    Change::Insert(p) => {
                        insert_point_row(&mut tx, p).await?;
                        add_copy(&mut tx, &p.id, datastore).await?;
                        out.points_added += 1;
                    }
                    Change::Add(id) => {
                        add_copy(&mut tx, id, datastore).await?;
                        out.copies_added += 1;
                    }
                    Change::Remove(id) => {
                        remove_copy(&mut tx, id, datastore).await?;
                        out.copies_removed += 1;
                    }
                }
            }
            tx.commit().await.map_err(query(&what))?;
            self.points_changed();
        }
        Ok(out)
    }

    async fn add_point_copy(&self, id: &str, datastore: &str) -> Result<(), DbError> {
        let what = format!("add copy '{datastore}' of point '{id}'");
        let mut tx = self.write_tx(&what).await?;
        exists(&mut tx, "SELECT id FROM points WHERE id = $1", id, "point").await?;
        add_copy(&mut tx, id, datastore).await?;
        tx.commit().await.map_err(query(what))?;
        self.points_changed();
        Ok(())
    }

    async fn remove_point_copy(&self, id: &str, datastore: &str) -> Result<(), DbError> {
        let what = format!("remove copy '{datastore}' of point '{id}'");
        let mut tx = self.write_tx(&what).await?;
        exists(&mut tx, "SELECT id FROM points WHERE id = $1", id, "point").await?;
        remove_copy(&mut tx, id, datastore).await?;
        tx.commit().await.map_err(query(what))?;
        self.points_changed();
        Ok(())
    }

    async fn set_damaged(
        &self,
        datastore: &str,
        found: &[(String, String)],
        full: bool,
    ) -> Result<(), DbError> {
        let what = format!("record the damaged copies in datastore '{datastore}'");
        let mut tx = self.write_tx(&what).await?;
        if full {
            sqlx::query("DELETE FROM damaged_copies WHERE datastore = $1")
                .bind(datastore)
                .execute(&mut *tx)
                .await
                .map_err(query(what.clone()))?;
        }
        let since = ts(now());
        for (point, reason) in found {
            // Only a copy the catalog has; the first finding's time kept.
            sqlx::query(
                "INSERT INTO damaged_copies (point_id, datastore, since, reason) \
                 SELECT point_id, datastore, $3, $4 FROM point_copies \
                 WHERE point_id = $1 AND datastore = $2 \
                 ON CONFLICT (point_id, datastore) DO UPDATE SET reason = excluded.reason",
            )
            .bind(point)
            .bind(datastore)
            .bind(&since)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(query(what.clone()))?;
        }
        tx.commit().await.map_err(query(what))?;
        Ok(())
    }

    async fn clear_damaged(&self, datastore: &str, points: &[String]) -> Result<(), DbError> {
        let what = format!("clear repaired copies in datastore '{datastore}'");
        let mut tx = self.write_tx(&what).await?;
        for point in points {
            sqlx::query("DELETE FROM damaged_copies WHERE point_id = $1 AND datastore = $2")
                .bind(point)
                .bind(datastore)
                .execute(&mut *tx)
                .await
                .map_err(query(what.clone()))?;
        }
        tx.commit().await.map_err(query(what))?;
        Ok(())
    }

    async fn damaged_copies(&self) -> Result<Vec<DamagedCopy>, DbError> {
        // Only copies the catalog still has (a pruned copy's row is stale).
        sqlx::query(
            "SELECT d.point_id, d.datastore, d.since, d.reason FROM damaged_copies d \
             JOIN point_copies c ON c.point_id = d.point_id AND c.datastore = d.datastore \
             ORDER BY d.point_id, d.datastore",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("list damaged copies"))?
        .iter()
        .map(|r| {
            Ok(DamagedCopy {
                point: get(r, "point_id")?,
                datastore: get(r, "datastore")?,
                since: time(r, "since")?,
                reason: get(r, "reason")?,
            })
        })
        .collect()
    }

    async fn verify_ran(
        &self,
        datastore: &str,
        at: DateTime<Utc>,
        slice: u32,
        slices: u32,
        problems: u64,
    ) -> Result<(), DbError> {
        self.write_one(
            &format!("record the scheduled verify of datastore '{datastore}'"),
            sqlx::query(
                "INSERT INTO verify_runs (datastore, at, slice, slices, problems) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (datastore) DO UPDATE SET \
                 at = excluded.at, slice = excluded.slice, slices = excluded.slices, \
                 problems = excluded.problems",
            )
            .bind(datastore)
            .bind(ts(at))
            .bind(slice as i64)
            .bind(slices as i64)
            .bind(int(problems, "problems")?),
        )
        .await?;
        Ok(())
    }

    async fn verify_runs(&self) -> Result<Vec<(String, DateTime<Utc>)>, DbError> {
        sqlx::query("SELECT datastore, at FROM verify_runs ORDER BY datastore")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list the scheduled verifies"))?
            .iter()
            .map(|r| Ok((get(r, "datastore")?, time(r, "at")?)))
            .collect()
    }

    async fn points(&self, vm: Option<&str>) -> Result<Vec<PointRecord>, DbError> {
        self.load_points(vm.map_or(PointFilter::All, PointFilter::Vm))
            .await
    }

    async fn point(&self, id: &str) -> Result<PointRecord, DbError> {
        self.load_points(PointFilter::Id(id))
            .await?
            .pop()
            .ok_or_else(|| not_found("point", id))
    }

    async fn latest_points(&self, vms: &[String]) -> Result<Vec<PointRecord>, DbError> {
        let latest = self.latest_memo.get(|| self.load_latest()).await?;
        let mut out: Vec<PointRecord> = vms.iter().filter_map(|v| latest.get(v).cloned()).collect();
        out.sort_by(|a, b| a.vm.cmp(&b.vm));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    async fn newest_point_times(
        &self,
        vms: &[String],
    ) -> Result<Vec<(String, DateTime<Utc>)>, DbError> {
        Ok(self
            .latest_points(vms)
            .await?
            .into_iter()
            .map(|p| (p.vm, p.time))
            .collect())
    }

    async fn point_page(&self, q: &PointQuery) -> Result<(Vec<PointRecord>, u64), DbError> {
        let total = self.count_points(q).await?;
        if q.limit == 0 || u64::from(q.offset) >= total {
            return Ok((Vec::new(), total));
        }
        let mut f = self.point_filter(q)?;
        let order = if q.newest_first {
            "p.time DESC, p.id DESC"
        } else {
            "p.time, p.id"
        };
        let sql = format!(
            "SELECT {POINT_COLUMNS} FROM points p {} ORDER BY {order} LIMIT {} OFFSET {}",
            f.where_clause(),
            f.arg(Arg::Int(i64::from(q.limit))),
            f.arg(Arg::Int(i64::from(q.offset))),
        );
        let rows = f
            .query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list points"))?;
        let ids = rows
            .iter()
            .map(|r| get::<String>(r, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        let copies = self.copies_of(&ids).await?;
        Ok((point_records(&rows, copies)?, total))
    }

    async fn point_summary(&self) -> Result<Vec<VmPoints>, DbError> {
        let summary = self.summary_memo.get(|| self.load_point_summary()).await?;
        Ok(Vec::clone(&summary))
    }

    async fn copy_counts(&self) -> Result<Vec<CopyCount>, DbError> {
        let counts = self.copies_memo.get(|| self.load_copy_counts()).await?;
        Ok(Vec::clone(&counts))
    }

    async fn point_times(
        &self,
        vms: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, DbError> {
        let sql = format!(
            "SELECT vm, time FROM points WHERE vm IN ({}) AND time >= $2 ORDER BY time, id",
            self.json_values("$1")
        );
        let rows = sqlx::query(&sql)
            .bind(json_list(vms)?)
            .bind(ts(since))
            .fetch_all(&self.pool)
            .await
            .map_err(query("list point times"))?;
        rows.iter()
            .map(|r| Ok((get(r, "vm")?, time(r, "time")?)))
            .collect()
    }

    async fn point_times_in(
        &self,
        vm: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Option<DateTime<Utc>>, Vec<DateTime<Utc>>), DbError> {
        let before = sqlx::query(
            "SELECT time FROM points WHERE vm = $1 AND time < $2 ORDER BY time DESC LIMIT 1",
        )
        .bind(vm)
        .bind(ts(from))
        .fetch_optional(&self.pool)
        .await
        .map_err(query("find the point before a period"))?
        .map(|r| time(&r, "time"))
        .transpose()?;
        let rows = sqlx::query(
            "SELECT time FROM points WHERE vm = $1 AND time >= $2 AND time < $3 ORDER BY time, id",
        )
        .bind(vm)
        .bind(ts(from))
        .bind(ts(to))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list the point times of a period"))?;
        let times = rows
            .iter()
            .map(|r| time(r, "time"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((before, times))
    }

    async fn point_vms(&self, ids: &[String]) -> Result<Vec<(String, String)>, DbError> {
        let sql = format!(
            "SELECT id, vm FROM points WHERE id IN ({}) ORDER BY id",
            self.json_values("$1")
        );
        let rows = sqlx::query(&sql)
            .bind(json_list(ids)?)
            .fetch_all(&self.pool)
            .await
            .map_err(query("look up points"))?;
        rows.iter()
            .map(|r| Ok((get(r, "id")?, get(r, "vm")?)))
            .collect()
    }

    async fn create_job(&self, kind: &str, target: &str) -> Result<Job, DbError> {
        let now = now();
        let id: i64 = self.write_id(format!("create {kind} job for '{target}'"), sqlx::query_scalar(
            "INSERT INTO jobs (kind, target, status, progress_done, progress_total, message, \
             created_at, result) VALUES ($1, $2, $3, 0, 0, '', $4, 'null') RETURNING id",
        )
        .bind(kind)
        .bind(target)
        .bind(JobStatus::Queued.as_str())
        .bind(ts(now)))
            .await?;
        Ok(Job {
            id,
            kind: kind.into(),
            target: target.into(),
            status: JobStatus::Queued,
            progress_done: 0,
            progress_total: 0,
            message: String::new(),
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            result: serde_json::Value::Null,
        })
    }

    async fn start_job(&self, id: i64) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("start job {id}"),
                sqlx::query("UPDATE jobs SET status = $1, started_at = $2 WHERE id = $3")
                    .bind(JobStatus::Running.as_str())
                    .bind(ts(now()))
                    .bind(id),
            )
            .await?;
        found(done.rows_affected(), "job", &id.to_string())
    }

    async fn update_job(
        &self,
        id: i64,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), DbError> {
        let res = self.write_one(format!("update job {id}"), sqlx::query(
            "UPDATE jobs SET progress_done = $1, progress_total = $2, message = $3 WHERE id = $4",
        )
        .bind(int(done, "job progress")?)
        .bind(int(total, "job progress total")?)
        .bind(message)
        .bind(id))
            .await?;
        found(res.rows_affected(), "job", &id.to_string())
    }

    async fn finish_job(
        &self,
        id: i64,
        status: JobStatus,
        error: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), DbError> {
        let done = self.write_one(format!("finish job {id}"), sqlx::query(
            "UPDATE jobs SET status = $1, error = $2, result = $3, finished_at = $4 WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(result.to_string())
        .bind(status.is_finished().then(|| ts(now())))
        .bind(id))
            .await?;
        found(done.rows_affected(), "job", &id.to_string())
    }

    async fn job(&self, id: i64) -> Result<Job, DbError> {
        sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(format!("read job {id}")))?
            .as_ref()
            .map(job_row)
            .unwrap_or_else(|| Err(not_found("job", &id.to_string())))
    }

    async fn prune_jobs(&self, before: DateTime<Utc>) -> Result<u64, DbError> {
        // Runs and steps go with their job (ON DELETE CASCADE).
        let done = self
            .write_one(
                format!("prune jobs finished before {}", ts(before)),
                sqlx::query(
                    "DELETE FROM jobs WHERE status IN ($1, $2) \
                     AND finished_at IS NOT NULL AND finished_at < $3",
                )
                .bind(JobStatus::Succeeded.as_str())
                .bind(JobStatus::Failed.as_str())
                .bind(ts(before)),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn jobs(&self, limit: u32) -> Result<Vec<Job>, DbError> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list jobs"))?
        .iter()
        .map(job_row)
        .collect()
    }

    async fn job_counts(&self) -> Result<Vec<(String, JobStatus, u64)>, DbError> {
        sqlx::query(
            "SELECT kind, status, COUNT(*) AS n FROM jobs GROUP BY kind, status \
             ORDER BY kind, status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query("count jobs"))?
        .iter()
        .map(|r| {
            let status: String = get(r, "status")?;
            let status = status.parse().map_err(|message| DbError::Value {
                what: "jobs.status".into(),
                message,
            })?;
            Ok((get(r, "kind")?, status, uint(r, "n")?))
        })
        .collect()
    }

    async fn fail_interrupted_jobs(&self) -> Result<u64, DbError> {
        let done = self
            .write_one(
                "fail interrupted jobs",
                sqlx::query(
                    "UPDATE jobs SET status = $1, error = $2, finished_at = $3 \
             WHERE status IN ($4, $5) AND kind <> 'runbook'",
                )
                .bind(JobStatus::Failed.as_str())
                .bind(INTERRUPTED)
                .bind(ts(now()))
                .bind(JobStatus::Queued.as_str())
                .bind(JobStatus::Running.as_str()),
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn fence(
        &self,
        site: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<FenceRecord, DbError> {
        let what = format!("fence site '{site}'");
        let mut tx = self.write_tx(&what).await?;
        sqlx::query(
            "INSERT INTO fences (site, since, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (site) DO NOTHING",
        )
        .bind(site)
        .bind(ts(at))
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(query(what.clone()))?;
        let row = sqlx::query("SELECT site, since, reason FROM fences WHERE site = $1")
            .bind(site)
            .fetch_one(&mut *tx)
            .await
            .map_err(query(what.clone()))?;
        let fence = fence_row(&row)?;
        tx.commit().await.map_err(query(what))?;
        Ok(fence)
    }

    async fn unfence(&self, site: &str) -> Result<Option<FenceRecord>, DbError> {
        let what = format!("unfence site '{site}'");
        let mut tx = self.write_tx(&what).await?;
        let row = sqlx::query("DELETE FROM fences WHERE site = $1 RETURNING site, since, reason")
            .bind(site)
            .fetch_optional(&mut *tx)
            .await
            .map_err(query(what.as_str()))?;
        let fence = row.as_ref().map(fence_row).transpose()?;
        tx.commit().await.map_err(query(what))?;
        Ok(fence)
    }

    async fn fences(&self) -> Result<Vec<FenceRecord>, DbError> {
        sqlx::query("SELECT site, since, reason FROM fences ORDER BY site")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list fences"))?
            .iter()
            .map(fence_row)
            .collect()
    }
}
