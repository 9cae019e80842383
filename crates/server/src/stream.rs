//! Following a job as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use standby_engine::Controller;
use standby_types::model::Job;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ServerError;

/// How often a followed job is looked at (its progress is flushed to the
/// database every 200 ms).
const STREAM_POLL: Duration = Duration::from_millis(250);

type SseItem = Result<SseEvent, Infallible>;

/// Follow job `id` as server-sent events: `job` at once and whenever it
/// changes, `steps` whenever a runbook job's steps change, and `end` with
/// the finished job, after which the stream closes. It also ends when the
/// client goes away or the controller stops.
pub fn stream(ctl: Arc<Controller>, id: i64) -> axum::response::Response {
    let (tx, rx) = mpsc::channel(16);
    ctl.tasks.spawn(follow(ctl.clone(), id, tx));
    use axum::response::IntoResponse;
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn sse_json(kind: &str, v: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .event(kind)
        .json_data(v)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable"))
}

async fn follow(ctl: Arc<Controller>, id: i64, tx: mpsc::Sender<SseItem>) {
    let mut last_job: Option<Job> = None;
    let mut last_steps: Option<serde_json::Value> = None;
    // Bounded by the job's end, the client's going away and the
    // controller's stop.
    loop {
        let job = match ctl.repo.job(id).await {
            Ok(j) => j,
            Err(e) => {
                let err = ServerError::from(e).to_api();
                let _ = tx.send(Ok(sse_json("error", &err))).await;
                return;
            }
        };
        if job.kind == "runbook"
            && let Ok(steps) = ctl.runbooks.repo().steps(id).await
        {
            let steps = serde_json::to_value(steps).unwrap_or_default();
            if last_steps.as_ref() != Some(&steps) {
                if tx.send(Ok(sse_json("steps", &steps))).await.is_err() {
                    return;
                }
                last_steps = Some(steps);
            }
        }
        if job.status.is_finished() {
            let _ = tx.send(Ok(sse_json("end", &job))).await;
            return;
        }
        if last_job.as_ref() != Some(&job) {
            if tx.send(Ok(sse_json("job", &job))).await.is_err() {
                return;
            }
            last_job = Some(job);
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = ctl.cancel.cancelled() => return,
            _ = tokio::time::sleep(STREAM_POLL) => {}
        }
    }
}
