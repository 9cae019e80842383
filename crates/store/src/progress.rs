//! Progress reporting, in bytes of disk data.

/// Receives progress from long operations; called from several threads.
pub trait Progress: Sync {
    fn set_total(&self, total: u64);
    fn inc(&self, delta: u64);
}

/// No progress reporting.
impl Progress for () {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _delta: u64) {}
}

/// Counts progress; handy in tests and for callers that poll.
#[derive(Debug, Default)]
pub struct CountingProgress {
    pub total: std::sync::atomic::AtomicU64,
    pub done: std::sync::atomic::AtomicU64,
}

impl Progress for CountingProgress {
    fn set_total(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }
    fn inc(&self, delta: u64) {
        self.done
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }
}
