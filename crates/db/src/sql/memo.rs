//! [`Memo`]: whole-table reads kept until the next write that can change
//! them, on SQLite; on PostgreSQL every read goes to the database.

use crate::DbError;

/// A whole-table read kept until the next write that can change it, so a
/// list or a scrape does not re-read 1,000 VMs or aggregate 100,000
/// points each time. Exact, not a time-based cache: this process is the
/// database's only writer (the controller holds its data directory's
/// lock), and every such write bumps the generation after it commits. A
/// read takes the generation before it queries, so a result that raced a
/// write is stored under the old generation and never served again.
///
/// That holds for a SQLite file only. A PostgreSQL database is shared by
/// controller replicas, whose writes this process never sees: there a
/// memo is disabled and every read loads.
pub(super) struct Memo<T> {
    enabled: bool,
    generation: std::sync::atomic::AtomicU64,
    value: std::sync::Mutex<Option<(u64, std::sync::Arc<T>)>>,
}

impl<T> Memo<T> {
    /// A memo that keeps values, or with `enabled` false one that loads
    /// on every read.
    pub(super) fn new(enabled: bool) -> Self {
        Memo {
            enabled,
            generation: Default::default(),
            value: Default::default(),
        }
    }

    pub(super) async fn get<F, Fut>(&self, load: F) -> Result<std::sync::Arc<T>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        use std::sync::atomic::Ordering;
        if !self.enabled {
            return Ok(std::sync::Arc::new(load().await?));
        }
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
    pub(super) fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}
