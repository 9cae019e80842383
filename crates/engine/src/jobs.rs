//! Jobs: long work that runs in the background, persisted with its
//! progress so the CLI can poll (or follow) it and a restart can see what
//! was cut off.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use standby_types::model::JobStatus;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::error::{EngineError, error_chain};

/// Live progress of one job, updated from worker threads and flushed to
/// the database a few times a second.
#[derive(Debug, Default)]
pub struct JobProgress {
    done: AtomicU64,
    total: AtomicU64,
    message: Mutex<String>,
}

impl JobProgress {
    pub fn set_message(&self, msg: impl Into<String>) {
        *self.message.lock().unwrap_or_else(|p| p.into_inner()) = msg.into();
    }

    /// Start a new stage: a message and a fresh byte count.
    pub fn stage(&self, msg: impl Into<String>, total: u64) {
        self.set_message(msg);
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, String) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.message
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl standby_agent::Progress for JobProgress {
    fn stage(&self, message: String, total: u64) {
        JobProgress::stage(self, message, total);
    }
    fn set_message(&self, message: String) {
        JobProgress::set_message(self, message);
    }
}

impl standby_store::Progress for JobProgress {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn inc(&self, delta: u64) {
        self.done.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A job's live progress: written to the job's row every 200 ms while
/// it changes, until [`LiveProgress::stop`] or the guard is dropped.
/// Derefs to the [`JobProgress`] the work updates.
pub struct LiveProgress {
    progress: Arc<JobProgress>,
    stop: CancellationToken,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

impl JobProgress {
    /// Fresh progress of `job`, written to its row as it changes (the
    /// CLI's progress bar and the job's stream read it there).
    pub fn live(ctl: &Arc<Controller>, job: i64) -> LiveProgress {
        let progress = Arc::new(JobProgress::default());
        let stop = CancellationToken::new();
        let flusher = {
            let (ctl, progress, stop) = (ctl.clone(), progress.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let snap = progress.snapshot();
                    if last.as_ref() != Some(&snap) {
                        let (done, total, msg) = &snap;
                        if let Err(e) = ctl.repo.update_job(job, *done, *total, msg).await {
                            tracing::warn!(job, "unable to record job progress: {e}");
                        }
                        last = Some(snap);
                    }
                }
            })
        };
        LiveProgress {
            progress,
            stop,
            flusher: Some(flusher),
        }
    }
}

impl LiveProgress {
    /// Stop writing; an update in flight lands before this returns.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(f) = self.flusher.take() {
            let _ = f.await;
        }
    }
}

impl std::ops::Deref for LiveProgress {
    type Target = Arc<JobProgress>;
    fn deref(&self) -> &Arc<JobProgress> {
        &self.progress
    }
}

impl Drop for LiveProgress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Record a job, run `work` in the background and persist its outcome.
/// Returns the job id at once.
pub async fn spawn_job<F, Fut, T, E>(
    ctl: &Arc<Controller>,
    kind: &str,
    target: &str,
    work: F,
) -> Result<i64, EngineError>
where
    F: FnOnce(Arc<Controller>, Arc<JobProgress>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: serde::Serialize + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let job = ctl.repo.create_job(kind, target).await?;
    let id = job.id;
    ctl.repo.start_job(id).await?;
    let ctl2 = ctl.clone();
    let kind = kind.to_string();
    let target = target.to_string();
    let live = JobProgress::live(ctl, id);
    ctl.tasks.spawn(async move {
        let progress = Arc::clone(&live);
        // A panic in the work fails the job instead of leaving it running.
        let outcome = match tokio::spawn(work(ctl2.clone(), progress.clone())).await {
            Ok(outcome) => outcome.map_err(|e| error_chain(&e)).and_then(|v| {
                serde_json::to_value(v).map_err(|e| format!("unable to record the result: {e}"))
            }),
            Err(e) => Err(format!("the job's task failed: {e}")),
        };
        // Let an update in flight land before the final one.
        live.stop().await;
        if outcome.is_ok() {
            progress.set_message("done");
        }
        let (done, total, msg) = progress.snapshot();
        let _ = ctl2.repo.update_job(id, done, total, &msg).await;
        let res = match &outcome {
            Ok(v) => {
                tracing::info!(job = id, %kind, %target, "job succeeded");
                ctl2.repo
                    .finish_job(id, JobStatus::Succeeded, None, v)
                    .await
            }
            Err(msg) => {
                tracing::error!(job = id, %kind, %target, "job failed: {msg}");
                ctl2.repo
                    .finish_job(id, JobStatus::Failed, Some(msg), &serde_json::Value::Null)
                    .await
            }
        };
        if let Err(e) = res {
            tracing::error!(job = id, "unable to record the end of the job: {e}");
        }
    });
    Ok(id)
}
