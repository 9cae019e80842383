//! [`Memo`]: whole-table reads kept until the next write that can change
//! them: on SQLite always, on PostgreSQL once this process leads (the
//! lease makes it the database's only writer, see `SqlRepo`).

use crate::DbError;

/// A whole-table read kept until the next write that can change it, so a
/// list or a scrape does not re-read 1,000 VMs or aggregate 100,000
/// points each time. Exact, not a time-based cache: this process is the
/// database's only writer (the controller holds its data directory's
/// lock), and every such write bumps the generation after it commits. A
/// read takes the generation before it queries, so a result that raced a
/// write is stored under the old generation and never served again.
///
/// On a PostgreSQL database shared by controller replicas, that holds
/// once this process holds the leader lease: every write transaction then
/// checks the lease first, so no other replica writes and a deposed one
/// cannot. Until then a memo is disabled and every read loads.
pub(super) struct Memo<T> {
    enabled: std::sync::atomic::AtomicBool,
    /// Held while a value loads: callers that miss together wait for one
    /// load instead of each running the same (possibly long) query.
    loading: tokio::sync::Mutex<()>,
    generation: std::sync::atomic::AtomicU64,
    value: std::sync::Mutex<Option<(u64, std::sync::Arc<T>)>>,
}

impl<T> Memo<T> {
    /// A memo that keeps values, or with `enabled` false one that loads
    /// on every read.
    pub(super) fn new(enabled: bool) -> Self {
        Memo {
            enabled: std::sync::atomic::AtomicBool::new(enabled),
            loading: tokio::sync::Mutex::new(()),
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
        if !self.enabled.load(Ordering::Acquire) {
            return Ok(std::sync::Arc::new(load().await?));
        }
        let fresh = |generation: u64| self.kept(generation);
        if let Some(v) = fresh(self.generation.load(Ordering::Acquire)) {
            return Ok(v);
        }
        let _one = self.loading.lock().await;
        // Another caller may have loaded it meanwhile.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(v) = fresh(generation) {
            return Ok(v);
        }
        let v = std::sync::Arc::new(load().await?);
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, v.clone()));
        Ok(v)
    }

    /// Whether values are kept (a read may be served from memory).
    pub(super) fn is_enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The value kept, if one is and it is current; nothing is loaded.
    pub(super) fn peek(&self) -> Option<std::sync::Arc<T>> {
        use std::sync::atomic::Ordering;
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        self.kept(self.generation.load(Ordering::Acquire))
    }

    /// The value kept for `generation`, if any.
    fn kept(&self, generation: u64) -> Option<std::sync::Arc<T>> {
        self.value
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v.clone())
    }

    /// Keep values from now on (this process became the only writer).
    pub(super) fn enable(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// After a committed write that may change the value.
    pub(super) fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}
