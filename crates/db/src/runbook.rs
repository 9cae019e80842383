//! State of runbook jobs: the run (what a restart needs to resume it),
//! one row per step execution, and the locks that keep one job per key.
//!
//! # Invariants
//!
//! - A run, its job row and its lock are created in one transaction; a
//!   held lock creates nothing ([`RunStart::Locked`]).
//! - A step row is written `running` (with its rendered input) before the
//!   action runs and `succeeded` (with its output) after: a resumed job
//!   skips succeeded rows and re-runs running ones.
//! - A lock lives until [`RunbookRepo::release_lock`]; a controller restart
//!   keeps it for the resumed job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DbError;

/// What a new run records besides its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    pub runbook: String,
    /// File the runbook came from (`builtin:NAME.yaml` or a path).
    pub file: String,
    /// The runbook text, as it was at the start.
    pub source: String,
    pub params: serde_json::Value,
    pub trigger: serde_json::Value,
    pub lock_key: Option<String>,
    pub incident: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: i64,
    #[serde(flatten)]
    pub run: NewRun,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    Started(i64),
    /// The lock key is held by this job.
    Locked(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepState {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepState::Queued => "queued",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<StepState> {
        Some(match s {
            "queued" => StepState::Queued,
            "running" => StepState::Running,
            "succeeded" => StepState::Succeeded,
            "failed" => StepState::Failed,
            "skipped" => StepState::Skipped,
            _ => return None,
        })
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Skipped
        )
    }
}

/// One step execution: the step itself (`item` -1) or one item of a
/// `for_each` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub job: i64,
    pub step: String,
    pub item: i64,
    /// Index of the step in the runbook.
    pub position: i64,
    pub state: StepState,
    /// 1 for the first attempt; 0 before any.
    pub attempt: u32,
    pub input: serde_json::Value,
    pub output: serde_json::Value,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
pub trait RunbookRepo: Send + Sync {
    /// Take the lock (if any), create the job (running, kind `runbook`,
    /// target = runbook name) and the run, all at once.
    async fn create_run(&self, run: &NewRun) -> Result<RunStart, DbError>;
    async fn run(&self, job: i64) -> Result<RunRecord, DbError>;
    /// Runs whose job is queued or running, oldest first.
    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, DbError>;
    async fn set_run_incident(&self, job: i64, incident: i64) -> Result<(), DbError>;
    /// Insert or overwrite the row of (job, step, item).
    async fn put_step(&self, s: &StepRecord) -> Result<(), DbError>;
    /// Steps of a job by position, then item.
    async fn steps(&self, job: i64) -> Result<Vec<StepRecord>, DbError>;
    /// Drop the lock held by `job`, if any.
    async fn release_lock(&self, job: i64) -> Result<(), DbError>;
    /// Held locks: (key, job).
    async fn locks(&self) -> Result<Vec<(String, i64)>, DbError>;
}
