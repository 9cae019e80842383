//! [`Repo`] on SQL: SQLite (one file in WAL mode, or memory for tests) or
//! PostgreSQL (shared by controller replicas), through sqlx's `Any` driver
//! so both run the same statements.
//!
//! This file opens the pool, applies the migrations of the backend and
//! begins write transactions; the rest splits by concern:
//! - `repo`: the [`Repo`] trait (inventory reads, placements, groups, the
//!   catalog, jobs, fences), with `inventory` (applying the configuration,
//!   group reads) and `catalog` (point queries, aggregates, copy rows);
//! - `memo`: whole-table reads kept until the next write (SQLite, and
//!   PostgreSQL while this process leads);
//! - `rows`: row and value helpers every repository shares, and the few
//!   spellings that differ between the backends;
//! - `watch`, `services`, `auth`, `runbook`: [`crate::WatchRepo`],
//!   [`crate::ServiceRepo`], [`crate::auth::AuthRepo`] and
//!   [`crate::runbook::RunbookRepo`].
//!
//! # Backends
//!
//! - SQLite: WAL (readers beside the one writer), `synchronous=FULL` (a
//!   committed job result or placement survives power loss), a busy
//!   timeout of 5 s and foreign keys, set on every connection (`Any` takes
//!   a URL, which cannot carry pragmas). A write transaction is `BEGIN
//!   IMMEDIATE`: it takes the write lock up front.
//! - PostgreSQL: a write transaction is `BEGIN` and then a transaction
//!   advisory lock ([`WRITE_LOCK`]), so writers are serialised as SQLite's
//!   single writer serialises them, across processes too. Read committed
//!   (the default): each statement after the lock sees what the previous
//!   holder committed. A lock wait gives up after 5 s, as SQLite's busy
//!   timeout does. Replicas share the database, but only the holder of
//!   the leader lease writes: once this process takes it
//!   ([`crate::LeaseRepo::acquire_lease`]), every write transaction checks,
//!   under the lock, that it still holds the lease (a deposed leader's
//!   write fails with [`DbError::NotLeader`]) and holds the lease row
//!   `FOR KEY SHARE` until it commits, and the memos are on. The lease is
//!   taken and renewed on a connection pool of its own, under the lease
//!   row's lock rather than the writers' advisory lock. The epoch is a
//!   key of the row (a unique index): a renewal keeps it and updates the
//!   row `FOR NO KEY UPDATE`, which waits for no writer, while a takeover
//!   changes it, which takes the row `FOR UPDATE` and so waits for the old
//!   holder's writes under way. Neither a busy API nor a queue of
//!   writers holds up the renewal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};
use standby_types::model::{PointRecord, VmRecord};

use crate::error::query;
use crate::{CopyCount, DbError, VmPoints};
use memo::Memo;

// First: its `on_both!` serves the test modules below.
#[cfg(test)]
#[macro_use]
mod testing;

mod auth;
mod catalog;
mod groups;
mod inventory;
mod lease;
mod managed_vms;
mod memo;
mod repo;
mod rows;
mod runbook;
mod services;
mod watch;

/// Connections of a file database (WAL lets readers run beside the one
/// writer) and of a PostgreSQL pool.
const MAX_CONNECTIONS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Set on every SQLite connection; busy timeout first, so switching to WAL
/// waits for another connection's lock.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
];

/// The key of the PostgreSQL advisory lock every write transaction holds
/// ("standby\0" in ASCII): one writer at a time per database.
pub const WRITE_LOCK: i64 = 0x7374_616e_6462_7900;

/// The newest schema migration applied to the database; `None` for a new
/// database (no migration table yet).
async fn schema_version(pool: &AnyPool, backend: Backend) -> Result<Option<i64>, DbError> {
    let has_table = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let tables: i64 = sqlx::query_scalar(has_table)
        .fetch_one(pool)
        .await
        .map_err(query("read the schema version"))?;
    if tables == 0 {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .map_err(query("read the schema version"))
}

/// The database behind a [`SqlRepo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct SqlRepo {
    pool: AnyPool,
    backend: Backend,
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
    /// API tokens by the hash of their secret (every API request looks its
    /// token up; changed by adding, revoking and using one).
    tokens_memo: Memo<HashMap<String, crate::auth::TokenRecord>>,
    /// Where the lease is taken and renewed: on PostgreSQL a pool of its
    /// own; on SQLite the one pool.
    lease_pool: AnyPool,
    /// PostgreSQL: the lease holder this process writes as, once it has
    /// taken the lease; every write transaction checks it still holds it.
    writer: std::sync::Mutex<Option<String>>,
}

impl SqlRepo {
    /// Open (creating the file and its directory if missing) and migrate
    /// the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<SqlRepo, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => Path::new("."),
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| DbError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        // Absolute and without `..`: a URL would resolve dot segments.
        let dir = tokio::fs::canonicalize(dir)
            .await
            .map_err(|e| open_err(sqlx::Error::Io(e)))?;
        let file = path
            .file_name()
            .ok_or_else(|| open_err(sqlx::Error::Configuration("the path names no file".into())))?;
        let url = rows::sqlite_url(&dir.join(file)).map_err(open_err)?;
        let pool = Self::pool_options(Backend::Sqlite)
            .max_connections(MAX_CONNECTIONS)
            .connect(&url)
            .await
            .map_err(open_err)?;
        Self::migrated(pool, Backend::Sqlite).await
    }

    /// A private SQLite database in memory, for tests. One connection that
    /// never expires, so every query sees the same database.
    pub async fn open_in_memory() -> Result<SqlRepo, DbError> {
        let pool = Self::pool_options(Backend::Sqlite)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await
            .map_err(|source| DbError::Open {
                path: PathBuf::from(":memory:"),
                source,
            })?;
        Self::migrated(pool, Backend::Sqlite).await
    }

    /// Connect to and migrate the PostgreSQL database at `url`
    /// (`postgres://` or `postgresql://`).
    pub async fn connect(url: &str) -> Result<SqlRepo, DbError> {
        let connect_err = |source| DbError::Connect {
            url: standby_types::config::url_redacted(url),
            source,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(connect_err(sqlx::Error::Configuration(
                "not a postgres:// URL".into(),
            )));
        }
        let pool = Self::pool_options(Backend::Postgres)
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await
            .map_err(connect_err)?;
        let lease_pool = Self::pool_options(Backend::Postgres)
            .max_connections(2)
            .connect(url)
            .await
            .map_err(connect_err)?;
        let mut repo = Self::migrated(pool, Backend::Postgres).await?;
        repo.lease_pool = lease_pool;
        Ok(repo)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn pool_options(backend: Backend) -> AnyPoolOptions {
        install_default_drivers();
        AnyPoolOptions::new()
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            for pragma in SQLITE_PRAGMAS {
                                conn.execute(pragma).await?;
                            }
                        }
                        Backend::Postgres => {
                            conn.execute(
                                format!("SET lock_timeout = {}", BUSY_TIMEOUT.as_millis()).as_str(),
                            )
                            .await?;
                        }
                    }
                    Ok(())
                })
            })
    }

    async fn migrated(pool: AnyPool, backend: Backend) -> Result<SqlRepo, DbError> {
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        // A database a newer standby migrated is refused before anything
        // runs: sqlx alone would say a migration is "missing", which reads
        // as damage, not as a version to upgrade to.
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(found) = schema_version(&pool, backend).await?
            && found > known
        {
            return Err(DbError::SchemaTooNew { found, known });
        }
        migrator.run(&pool).await.map_err(DbError::Migrate)?;
        // On PostgreSQL, memos wait until this process leads.
        let memo = backend == Backend::Sqlite;
        Ok(SqlRepo {
            lease_pool: pool.clone(),
            writer: std::sync::Mutex::new(None),
            pool,
            backend,
            vms_memo: Memo::new(memo),
            summary_memo: Memo::new(memo),
            copies_memo: Memo::new(memo),
            latest_memo: Memo::new(memo),
            counts_memo: Memo::new(memo),
            tokens_memo: Memo::new(memo),
        })
    }

    /// Close every connection, waiting for those in use. On SQLite the
    /// WAL is first checkpointed into the database file and truncated, so
    /// a stopped controller leaves a self-contained `state.db` (what a
    /// backup before an upgrade copies): the `-wal` file beside it, if
    /// the last close did not remove it, is empty.
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
        {
            tracing::warn!(
                error = %standby_types::error_chain(&e),
                "unable to checkpoint the database's WAL at close"
            );
        }
        self.pool.close().await;
        self.lease_pool.close().await;
    }

    /// A write transaction that holds the database's write lock from its
    /// start, so a read-then-write transaction waits (up to the busy
    /// timeout) for another writer instead of failing or interleaving.
    async fn write_tx(&self, what: &str) -> Result<sqlx::Transaction<'static, sqlx::Any>, DbError> {
        self.begin_write(&self.pool, what, true).await
    }

    /// A write transaction on `pool`; on PostgreSQL, with `fenced` and once
    /// this process has taken the lease, refused unless it still holds it.
    async fn begin_write(
        &self,
        pool: &AnyPool,
        what: &str,
        fenced: bool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, DbError> {
        match self.backend {
            Backend::Sqlite => pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(query(what)),
            Backend::Postgres => {
                let mut tx = pool.begin().await.map_err(query(what))?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(query(what))?;
                let writer = self
                    .writer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(holder) = writer.filter(|_| fenced) {
                    self.check_lease(&mut tx, holder, what).await?;
                }
                Ok(tx)
            }
        }
    }

    /// In `tx`: refuse unless `holder` still holds the lease, and keep
    /// the lease row `FOR KEY SHARE` until `tx` ends (a takeover, which
    /// writes a new epoch, waits for it; a renewal does not).
    async fn check_lease(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        holder: String,
        what: &str,
    ) -> Result<(), DbError> {
        let holds = sqlx::query(&format!(
            "SELECT holder FROM leader WHERE id = 1 AND holder = $1 AND expires_ms > {} \
             FOR KEY SHARE",
            self.now_ms_sql()
        ))
        .bind(&holder)
        .fetch_optional(&mut **tx)
        .await
        .map_err(query(what))?;
        if holds.is_none() {
            return Err(DbError::NotLeader {
                holder,
                what: what.to_string(),
            });
        }
        Ok(())
    }

    /// One statement that changes the database, which reads nothing
    /// first. On PostgreSQL, once this process leads, it runs in a
    /// transaction that checks the lease first ([`SqlRepo::check_lease`];
    /// without the writers' lock, which orders read-then-write
    /// transactions): a deposed leader changes nothing, a job's step or a
    /// service's site included.
    pub(super) async fn write_one<'q>(
        &self,
        what: impl Into<String>,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<sqlx::any::AnyQueryResult, DbError> {
        let writer = match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => self
                .writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let Some(holder) = writer else {
            return q.execute(&self.pool).await.map_err(query(what));
        };
        let what = what.into();
        let mut tx = self.pool.begin().await.map_err(query(what.as_str()))?;
        self.check_lease(&mut tx, holder, &what).await?;
        let done = q.execute(&mut *tx).await.map_err(query(what.as_str()))?;
        tx.commit().await.map_err(query(what))?;
        Ok(done)
    }

    /// One `INSERT … RETURNING id`, in a write transaction (checked
    /// against the lease like every write, [`SqlRepo::begin_write`]).
    pub(super) async fn write_id<'q>(
        &self,
        what: impl Into<String>,
        q: sqlx::query::QueryScalar<'q, sqlx::Any, i64, sqlx::any::AnyArguments<'q>>,
    ) -> Result<i64, DbError> {
        let what = what.into();
        let mut tx = self.write_tx(&what).await?;
        let id = q.fetch_one(&mut *tx).await.map_err(query(what.as_str()))?;
        tx.commit().await.map_err(query(what))?;
        Ok(id)
    }

    /// This process took the lease as `holder`: on PostgreSQL its writes
    /// are checked against the lease from now on, and its memos are on.
    fn lead_writes(&self, holder: &str) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.as_deref() != Some(holder) {
            *w = Some(holder.to_string());
            self.vms_memo.enable();
            self.summary_memo.enable();
            self.copies_memo.enable();
            self.latest_memo.enable();
            self.counts_memo.enable();
            self.tokens_memo.enable();
        }
    }
}

#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod period_tests;
#[cfg(test)]
mod postgres_tests;
#[cfg(test)]
mod runbook_tests;
#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
