//! [`Repo`] on SQLite: one file in WAL mode, or memory for tests.
//!
//! This file opens the pool and applies the migrations; the rest splits by
//! concern:
//! - `repo`: the [`Repo`] trait (inventory reads, placements, groups, the
//!   catalog, jobs, fences), with `inventory` (applying the configuration,
//!   group reads) and `catalog` (point queries, aggregates, copy rows);
//! - `memo`: whole-table reads kept until the next write;
//! - `rows`: row and value helpers every repository shares;
//! - `watch`, `services`, `auth`, `runbook`: [`crate::WatchRepo`],
//!   [`crate::ServiceRepo`], [`crate::auth::AuthRepo`] and
//!   [`crate::runbook::RunbookRepo`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use standby_types::model::{PointRecord, VmRecord};

use crate::error::query;
use crate::{CopyCount, DbError, VmPoints};
use memo::Memo;

mod auth;
mod catalog;
mod inventory;
mod memo;
mod repo;
mod rows;
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
    async fn write_tx(
        &self,
        what: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query(what))
    }
}

#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod runbook_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
