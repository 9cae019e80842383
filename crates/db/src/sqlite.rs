//! [`Repo`] on SQLite: one file in WAL mode, or memory for tests.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use standby_types::config::Config;
use standby_types::model::{
    DiskRecord, GroupRecord, HostRecord, Job, JobStatus, PointRecord, SiteRecord, VmRecord,
};

use crate::error::query;
use crate::{
    CatalogSync, CopyCount, DbError, FenceRecord, INTERRUPTED, PointQuery, Repo, VmPoints,
};

mod auth;
mod runbook;
mod services;
mod watch;

/// Connections of a file database: WAL lets readers run beside the one
/// writer.
const MAX_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteRepo {
    pool: SqlitePool,
    /// The VM inventory (changed by `apply_config` and placements only).
    vms_memo: Memo<Vec<VmRecord>>,
    /// Catalog aggregates (changed by point and copy writes only).
    summary_memo: Memo<Vec<VmPoints>>,
    copies_memo: Memo<Vec<CopyCount>>,
    /// The newest point of every VM with points, by VM.
    latest_memo: Memo<HashMap<String, PointRecord>>,
    /// Match counts of point queries by filter (a count scans an index):
    /// a fresh map per catalog generation, filled as filters are asked.
    counts_memo: Memo<std::sync::Mutex<HashMap<String, u64>>>,
}

/// A whole-table read kept until the next write that can change it, so a
/// list or a scrape does not re-read 1,000 VMs or aggregate 100,000
/// points each time. Exact, not a time-based cache: this process is the
/// database's only writer (the controller holds its data directory's
/// lock), and every such write bumps the generation after it commits. A
/// read takes the generation before it queries, so a result that raced a
/// write is stored under the old generation and never served again.
struct Memo<T> {
    generation: std::sync::atomic::AtomicU64,
    value: std::sync::Mutex<Option<(u64, std::sync::Arc<T>)>>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo {
            generation: Default::default(),
            value: Default::default(),
        }
    }
}

impl<T> Memo<T> {
    async fn get<F, Fut>(&self, load: F) -> Result<std::sync::Arc<T>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, v)) = self
            .value
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *g == generation
        {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(load().await?);
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, v.clone()));
        Ok(v)
    }

    /// After a committed write that may change the value.
    fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl SqliteRepo {
    /// Open (creating the file and its directory if missing) and migrate
    /// the database at `path`.
    pub async fn open(path: &Path) -> Result<SqliteRepo, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| DbError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed job result or placement survives power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(opts)
            .await
            .map_err(|source| DbError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::migrated(pool).await
    }

    /// A private database in memory, for tests. One connection that never
    /// expires, so every query sees the same database.
    pub async fn open_in_memory() -> Result<SqliteRepo, DbError> {
        let open_err = |source| DbError::Open {
            path: PathBuf::from(":memory:"),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(open_err)?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        Self::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<SqliteRepo, DbError> {
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(DbError::Migrate)?;
        Ok(SqliteRepo {
            pool,
            vms_memo: Memo::default(),
            summary_memo: Memo::default(),
            copies_memo: Memo::default(),
            latest_memo: Memo::default(),
            counts_memo: Memo::default(),
        })
    }

    /// A write transaction that takes the write lock up front, so a
    /// read-then-write transaction waits for the busy timeout instead of
    /// failing when another writer got in between.
    async fn load_point_summary(&self) -> Result<Vec<VmPoints>, DbError> {
        // SQLite: the bare column `size` comes from the row holding MAX(time).
        let rows = sqlx::query(
            "SELECT vm, COUNT(*) AS n, MAX(time) AS newest, size, \
             SUM(bytes_new) AS added FROM points GROUP BY vm ORDER BY vm",
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

    async fn load_copy_counts(&self) -> Result<Vec<CopyCount>, DbError> {
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

    /// The newest point of every VM with points: an index seek per VM.
    async fn load_latest(&self) -> Result<HashMap<String, PointRecord>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {POINT_COLUMNS} FROM points p WHERE p.id IN \
             (SELECT (SELECT id FROM points WHERE vm = v.vm ORDER BY time DESC, id DESC LIMIT 1) \
              FROM (SELECT DISTINCT vm FROM points) v)"
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
    fn points_changed(&self) {
        self.summary_memo.invalidate();
        self.copies_memo.invalidate();
        self.latest_memo.invalidate();
        self.counts_memo.invalidate();
    }

    /// How many points match `q`'s filters (its page aside); counted once
    /// per filter and catalog generation.
    async fn count_points(&self, q: &PointQuery) -> Result<u64, DbError> {
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
        let mut qb = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM points p");
        push_point_filter(&mut qb, q)?;
        let total: i64 = qb
            .build_query_scalar()
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

    async fn write_tx(
        &self,
        what: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query(what))
    }

    async fn load_groups(&self, name: Option<&str>) -> Result<Vec<GroupRecord>, DbError> {
        let filter = if name.is_some() {
            "WHERE g.name = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT g.name, g.schedule, g.next_run, g.last_run, g.last_status \
             FROM groups g {filter} ORDER BY g.name"
        );
        let rows = with_key(&sql, name)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list groups"))?;
        let sql = format!(
            "SELECT m.group_name, m.vm FROM group_members m \
             JOIN groups g ON g.name = m.group_name {filter} \
             ORDER BY m.group_name, m.position"
        );
        let mut members = lists(
            with_key(&sql, name)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list group members"))?,
        )?;
        let sql = format!(
            "SELECT d.group_name, d.datastore FROM group_datastores d \
             JOIN groups g ON g.name = d.group_name {filter} \
             ORDER BY d.group_name, d.position"
        );
        let mut datastores = lists(
            with_key(&sql, name)
                .fetch_all(&self.pool)
                .await
                .map_err(query("list group datastores"))?,
        )?;
        rows.iter()
            .map(|r| {
                let name: String = get(r, "name")?;
                Ok(GroupRecord {
                    schedule: get(r, "schedule")?,
                    members: members.remove(&name).unwrap_or_default(),
                    datastores: datastores.remove(&name).unwrap_or_default(),
                    next_run: opt_time(r, "next_run")?,
                    last_run: opt_time(r, "last_run")?,
                    last_status: get(r, "last_status")?,
                    name,
                })
            })
            .collect()
    }

    async fn load_points(&self, filter: PointFilter<'_>) -> Result<Vec<PointRecord>, DbError> {
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
    async fn copies_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<String>>, DbError> {
        let ids = json_list(ids)?;
        lists(
            sqlx::query(
                "SELECT point_id, datastore FROM point_copies \
                 WHERE point_id IN (SELECT value FROM json_each($1)) \
                 ORDER BY point_id, position",
            )
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(query("list point copies"))?,
        )
    }
}

/// `WHERE ...` for the filters of a point query (none: nothing).
fn push_point_filter(
    qb: &mut sqlx::QueryBuilder<'_, sqlx::Sqlite>,
    q: &PointQuery,
) -> Result<(), DbError> {
    let mut sep = " WHERE ";
    if let Some(vm) = &q.vm {
        qb.push(sep).push("p.vm = ").push_bind(vm.clone());
        sep = " AND ";
    }
    if let Some(vms) = &q.vms {
        qb.push(sep)
            .push("p.vm IN (SELECT value FROM json_each(")
            .push_bind(json_list(vms)?)
            .push("))");
        sep = " AND ";
    }
    if let Some(site) = &q.site {
        qb.push(sep).push("p.site = ").push_bind(site.clone());
        sep = " AND ";
    }
    if let Some(group) = &q.group {
        qb.push(sep)
            .push("p.group_name = ")
            .push_bind(group.clone());
        sep = " AND ";
    }
    if let Some(since) = q.since {
        qb.push(sep).push("p.time >= ").push_bind(ts(since));
    }
    Ok(())
}

/// A list of names as a JSON array, for `IN (SELECT value FROM json_each($n))`.
fn json_list(items: &[String]) -> Result<String, DbError> {
    serde_json::to_string(items).map_err(|e| DbError::Value {
        what: "name list".into(),
        message: e.to_string(),
    })
}

const POINT_COLUMNS: &str = "p.id, p.vm, p.group_name, p.site, p.time, p.consistency, \
     p.size, p.bytes_read, p.bytes_new";

fn point_records(
    rows: &[SqliteRow],
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
                id,
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
enum PointFilter<'a> {
    All,
    Vm(&'a str),
    Id(&'a str),
}

const JOB_COLUMNS: &str = "id, kind, target, status, progress_done, progress_total, message, \
     error, created_at, started_at, finished_at, result";

#[async_trait::async_trait]
impl Repo for SqliteRepo {
    async fn apply_config(&self, cfg: &Config) -> Result<(), DbError> {
        let mut tx = self.write_tx("begin applying the configuration").await?;

        for (name, site) in &cfg.sites {
            sqlx::query(
                "INSERT INTO sites (name, description) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description",
            )
            .bind(name)
            .bind(&site.description)
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store site '{name}'")))?;
        }

        for (name, host) in &cfg.hosts {
            sqlx::query(
                "INSERT INTO hosts (name, site, driver) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET site = excluded.site, driver = excluded.driver",
            )
            .bind(name)
            .bind(&host.site)
            .bind(host.driver.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store host '{name}'")))?;
        }

        let active: HashMap<String, String> = sqlx::query("SELECT name, active_host FROM vms")
            .fetch_all(&mut *tx)
            .await
            .map_err(query("list vms"))?
            .iter()
            .map(|r| Ok((get(r, "name")?, get(r, "active_host")?)))
            .collect::<Result<_, DbError>>()?;
        for (name, vm) in &cfg.vms {
            let home_site = cfg
                .site_of_host(&vm.host)
                .ok_or_else(|| DbError::NotFound {
                    kind: "host",
                    name: vm.host.clone(),
                })?;
            // Keep the VM where it runs unless that host is gone from the
            // configuration; the host's site may have been edited.
            let (active_site, active_host) = match active.get(name) {
                Some(h) if cfg.hosts.contains_key(h) => (cfg.hosts[h].site.as_str(), h.as_str()),
                _ => (home_site, vm.host.as_str()),
            };
            sqlx::query(
                "INSERT INTO vms (name, home_site, home_host, dr_site, active_site, active_host) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO UPDATE SET home_site = excluded.home_site, \
                 home_host = excluded.home_host, dr_site = excluded.dr_site, \
                 active_site = excluded.active_site, active_host = excluded.active_host",
            )
            .bind(name)
            .bind(home_site)
            .bind(&vm.host)
            .bind(&vm.dr_site)
            .bind(active_site)
            .bind(active_host)
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store vm '{name}'")))?;

            sqlx::query("DELETE FROM disks WHERE vm = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("replace disks of vm '{name}'")))?;
            for (pos, disk) in vm.disks.iter().enumerate() {
                sqlx::query("INSERT INTO disks (vm, name, position, size) VALUES ($1, $2, $3, $4)")
                    .bind(name)
                    .bind(&disk.name)
                    .bind(pos as i64)
                    .bind(int(disk.size.0, "disk size")?)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("store disk '{}' of vm '{name}'", disk.name)))?;
            }
        }

        for (name, group) in &cfg.groups {
            // Right-hand sides see the old row: next_run survives only an
            // unchanged schedule.
            sqlx::query(
                "INSERT INTO groups (name, schedule) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule, \
                 next_run = CASE WHEN groups.schedule = excluded.schedule \
                 THEN groups.next_run ELSE NULL END",
            )
            .bind(name)
            .bind(group.schedule.to_string())
            .execute(&mut *tx)
            .await
            .map_err(query(format!("store group '{name}'")))?;
            for table in ["group_members", "group_datastores"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE group_name = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("replace {table} of group '{name}'")))?;
            }
            for (pos, vm) in group.members.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO group_members (group_name, position, vm) VALUES ($1, $2, $3)",
                )
                .bind(name)
                .bind(pos as i64)
                .bind(vm)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("store member '{vm}' of group '{name}'")))?;
            }
            for (pos, ds) in group.datastores.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO group_datastores (group_name, position, datastore) \
                     VALUES ($1, $2, $3)",
                )
                .bind(name)
                .bind(pos as i64)
                .bind(ds)
                .execute(&mut *tx)
                .await
                .map_err(query(format!("store datastore '{ds}' of group '{name}'")))?;
            }
        }

        // Delete what is no longer configured, dependents first. Points and
        // jobs have no foreign keys and stay.
        let keep: [(&str, &str, BTreeSet<&str>); 4] = [
            (
                "groups",
                "group",
                cfg.groups.keys().map(String::as_str).collect(),
            ),
            ("vms", "vm", cfg.vms.keys().map(String::as_str).collect()),
            (
                "hosts",
                "host",
                cfg.hosts.keys().map(String::as_str).collect(),
            ),
            (
                "sites",
                "site",
                cfg.sites.keys().map(String::as_str).collect(),
            ),
        ];
        for (table, kind, keep) in keep {
            let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {table}"))
                .fetch_all(&mut *tx)
                .await
                .map_err(query(format!("list {table}")))?;
            for name in names.iter().filter(|n| !keep.contains(n.as_str())) {
                sqlx::query(&format!("DELETE FROM {table} WHERE name = $1"))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(format!("delete {kind} '{name}'")))?;
                tracing::info!("{kind} '{name}' is no longer configured; removed it");
            }
        }

        tx.commit()
            .await
            .map_err(query("commit the configuration"))?;
        self.vms_memo.invalidate();
        Ok(())
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

    async fn vms(&self) -> Result<Vec<VmRecord>, DbError> {
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
            .map(|v| Vec::clone(&v))
    }

    async fn vm(&self, name: &str) -> Result<VmRecord, DbError> {
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
        let done = sqlx::query("UPDATE groups SET next_run = $1 WHERE name = $2")
            .bind(next_run.map(ts))
            .bind(group)
            .execute(&self.pool)
            .await
            .map_err(query(format!("schedule group '{group}'")))?;
        found(done.rows_affected(), "group", group)
    }

    async fn record_group_run(
        &self,
        group: &str,
        at: DateTime<Utc>,
        status: &str,
    ) -> Result<(), DbError> {
        let done = sqlx::query("UPDATE groups SET last_run = $1, last_status = $2 WHERE name = $3")
            .bind(ts(at))
            .bind(status)
            .bind(group)
            .execute(&self.pool)
            .await
            .map_err(query(format!("record a run of group '{group}'")))?;
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
        // Every known point, and whether `datastore` holds a copy.
        let rows = sqlx::query(
            "SELECT p.id, EXISTS (SELECT 1 FROM point_copies c \
             WHERE c.point_id = p.id AND c.datastore = $1) AS held FROM points p",
        )
        .bind(datastore)
        .fetch_all(&self.pool)
        .await
        .map_err(query(format!("read the catalog of '{datastore}'")))?;
        let mut known: HashMap<String, bool> = HashMap::with_capacity(rows.len());
        for r in &rows {
            known.insert(get(r, "id")?, get::<bool>(r, "held")?);
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
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {POINT_COLUMNS} FROM points p"));
        push_point_filter(&mut qb, q)?;
        qb.push(if q.newest_first {
            " ORDER BY p.time DESC, p.id DESC"
        } else {
            " ORDER BY p.time, p.id"
        });
        qb.push(" LIMIT ")
            .push_bind(i64::from(q.limit))
            .push(" OFFSET ")
            .push_bind(i64::from(q.offset));
        let rows = qb
            .build()
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
        let rows = sqlx::query(
            "SELECT vm, time FROM points \
             WHERE vm IN (SELECT value FROM json_each($1)) AND time >= $2 ORDER BY time, id",
        )
        .bind(json_list(vms)?)
        .bind(ts(since))
        .fetch_all(&self.pool)
        .await
        .map_err(query("list point times"))?;
        rows.iter()
            .map(|r| Ok((get(r, "vm")?, time(r, "time")?)))
            .collect()
    }

    async fn point_vms(&self, ids: &[String]) -> Result<Vec<(String, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT id, vm FROM points WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id",
        )
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, target, status, progress_done, progress_total, message, \
             created_at, result) VALUES ($1, $2, $3, 0, 0, '', $4, 'null') RETURNING id",
        )
        .bind(kind)
        .bind(target)
        .bind(JobStatus::Queued.as_str())
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await
        .map_err(query(format!("create {kind} job for '{target}'")))?;
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
        let done = sqlx::query("UPDATE jobs SET status = $1, started_at = $2 WHERE id = $3")
            .bind(JobStatus::Running.as_str())
            .bind(ts(now()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query(format!("start job {id}")))?;
        found(done.rows_affected(), "job", &id.to_string())
    }

    async fn update_job(
        &self,
        id: i64,
        done: u64,
        total: u64,
        message: &str,
    ) -> Result<(), DbError> {
        let res = sqlx::query(
            "UPDATE jobs SET progress_done = $1, progress_total = $2, message = $3 WHERE id = $4",
        )
        .bind(int(done, "job progress")?)
        .bind(int(total, "job progress total")?)
        .bind(message)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query(format!("update job {id}")))?;
        found(res.rows_affected(), "job", &id.to_string())
    }

    async fn finish_job(
        &self,
        id: i64,
        status: JobStatus,
        error: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), DbError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = $1, error = $2, result = $3, finished_at = $4 WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(result.to_string())
        .bind(status.is_finished().then(|| ts(now())))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query(format!("finish job {id}")))?;
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
        let done = sqlx::query(
            "UPDATE jobs SET status = $1, error = $2, finished_at = $3 \
             WHERE status IN ($4, $5) AND kind <> 'runbook'",
        )
        .bind(JobStatus::Failed.as_str())
        .bind(INTERRUPTED)
        .bind(ts(now()))
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Running.as_str())
        .execute(&self.pool)
        .await
        .map_err(query("fail interrupted jobs"))?;
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
        let row = sqlx::query("DELETE FROM fences WHERE site = $1 RETURNING site, since, reason")
            .bind(site)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(format!("unfence site '{site}'")))?;
        row.as_ref().map(fence_row).transpose()
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

/// `sql` with its one `?` bound to `key`, or without binds for `None`.
fn with_key<'q>(
    sql: &'q str,
    key: Option<&'q str>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let q = sqlx::query(sql);
    match key {
        Some(k) => q.bind(k),
        None => q,
    }
}

/// Append a copy unless the point has it already.
/// Forget the copy in `datastore`; the point goes with its last copy.
async fn remove_copy(
    conn: &mut SqliteConnection,
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
const SYNC_BATCH: usize = 5000;

/// Insert or update a point's row (not its copies).
async fn insert_point_row(conn: &mut SqliteConnection, p: &PointRecord) -> Result<(), DbError> {
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

async fn add_copy(conn: &mut SqliteConnection, id: &str, datastore: &str) -> Result<(), DbError> {
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

/// `NotFound` unless `sql` (selecting by one key) finds a row.
async fn exists(
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

fn not_found(kind: &'static str, name: &str) -> DbError {
    DbError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn found(rows: u64, kind: &'static str, name: &str) -> Result<(), DbError> {
    if rows == 0 {
        Err(not_found(kind, name))
    } else {
        Ok(())
    }
}

fn vm_row(r: &SqliteRow) -> Result<VmRecord, DbError> {
    Ok(VmRecord {
        name: get(r, "name")?,
        home_site: get(r, "home_site")?,
        home_host: get(r, "home_host")?,
        dr_site: get(r, "dr_site")?,
        active_site: get(r, "active_site")?,
        active_host: get(r, "active_host")?,
    })
}

fn fence_row(r: &SqliteRow) -> Result<FenceRecord, DbError> {
    Ok(FenceRecord {
        site: get(r, "site")?,
        since: time(r, "since")?,
        reason: get(r, "reason")?,
    })
}

fn job_row(r: &SqliteRow) -> Result<Job, DbError> {
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
fn lists(rows: Vec<SqliteRow>) -> Result<HashMap<String, Vec<String>>, DbError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in &rows {
        let owner: String = r.try_get(0).map_err(query("read a list row"))?;
        let item: String = r.try_get(1).map_err(query("read a list row"))?;
        out.entry(owner).or_default().push(item);
    }
    Ok(out)
}

fn get<'r, T>(r: &'r SqliteRow, col: &str) -> Result<T, DbError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    r.try_get(col).map_err(query(format!("read column {col}")))
}

fn uint(r: &SqliteRow, col: &str) -> Result<u64, DbError> {
    let v: i64 = get(r, col)?;
    u64::try_from(v).map_err(|_| DbError::Value {
        what: col.into(),
        message: format!("{v} is negative"),
    })
}

fn int(v: u64, what: &str) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::Value {
        what: what.into(),
        message: format!("{v} is larger than {}", i64::MAX),
    })
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Fixed width (nine fractional digits, `Z`), so text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn time(r: &SqliteRow, col: &str) -> Result<DateTime<Utc>, DbError> {
    let s: String = get(r, col)?;
    parse_ts(&s, col)
}

fn opt_time(r: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    let s: Option<String> = get(r, col)?;
    s.map(|s| parse_ts(&s, col)).transpose()
}

fn parse_ts(s: &str, col: &str) -> Result<DateTime<Utc>, DbError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .map_err(|e| DbError::Value {
            what: col.into(),
            message: format!("'{s}' is not an RFC 3339 time: {e}"),
        })
}

#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod runbook_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
