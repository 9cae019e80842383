//! How long host work reports its progress.

/// Progress of a point or restore: byte counts (the datastore's
/// [`standby_store::Progress`]) in named stages. The controller's jobs
/// implement it to show and persist progress; the agent daemon reports to
/// nobody ([`Quiet`]).
pub trait Progress: standby_store::Progress + Send {
    /// Start a new stage: a message and a fresh byte count.
    fn stage(&self, message: String, total: u64);
    /// Say what happens now, keeping the count.
    fn set_message(&self, message: String);
}

/// Progress nobody follows.
#[derive(Debug, Default)]
pub struct Quiet;

impl standby_store::Progress for Quiet {
    fn set_total(&self, _total: u64) {}
    fn inc(&self, _delta: u64) {}
}

impl Progress for Quiet {
    fn stage(&self, _message: String, _total: u64) {}
    fn set_message(&self, _message: String) {}
}
