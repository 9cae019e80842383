//! [`RunbookRepo`] on SQL (SQLite or PostgreSQL).

use sqlx::Row;
use sqlx::any::AnyRow;
use standby_types::model::JobStatus;

use super::SqlRepo;
use super::rows::{found, get, not_found, now, opt_time, ts};
use crate::DbError;
use crate::error::query;
use crate::runbook::{NewRun, RunRecord, RunStart, RunbookRepo, StepRecord, StepState};

const RUN_COLUMNS: &str = "job, runbook, file, source, params, trigger, lock_key, incident";
const STEP_COLUMNS: &str = "job, step, item, position, state, attempt, input, output, error, \
     started_at, finished_at";

fn json(r: &AnyRow, col: &str) -> Result<serde_json::Value, DbError> {
    let s: String = get(r, col)?;
    serde_json::from_str(&s).map_err(|e| DbError::Value {
        what: col.into(),
        message: e.to_string(),
    })
}

fn run_row(r: &AnyRow) -> Result<RunRecord, DbError> {
    Ok(RunRecord {
        job: get(r, "job")?,
        run: NewRun {
            runbook: get(r, "runbook")?,
            file: get(r, "file")?,
            source: get(r, "source")?,
            params: json(r, "params")?,
            trigger: json(r, "trigger")?,
            lock_key: get(r, "lock_key")?,
            incident: get(r, "incident")?,
        },
    })
}

fn step_row(r: &AnyRow) -> Result<StepRecord, DbError> {
    let state: String = get(r, "state")?;
    let attempt: i64 = get(r, "attempt")?;
    Ok(StepRecord {
        job: get(r, "job")?,
        step: get(r, "step")?,
        item: get(r, "item")?,
        position: get(r, "position")?,
        state: StepState::parse(&state).ok_or_else(|| DbError::Value {
            what: "runbook_steps.state".into(),
            message: format!("unknown state '{state}'"),
        })?,
        attempt: u32::try_from(attempt).unwrap_or(0),
        input: json(r, "input")?,
        output: json(r, "output")?,
        error: get(r, "error")?,
        started_at: opt_time(r, "started_at")?,
        finished_at: opt_time(r, "finished_at")?,
    })
}

#[async_trait::async_trait]
impl RunbookRepo for SqlRepo {
    async fn create_run(&self, run: &NewRun) -> Result<RunStart, DbError> {
        let what = format!("start runbook {}", run.runbook);
        let mut tx = self.write_tx(&what).await?;
        if let Some(key) = &run.lock_key {
            let held: Option<i64> =
                sqlx::query_scalar("SELECT job FROM runbook_locks WHERE lock_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query(&what))?;
            if let Some(job) = held {
                return Ok(RunStart::Locked(job));
            }
        }
        let now = ts(now());
        let job: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, target, status, progress_done, progress_total, message, \
             created_at, started_at, result) VALUES ('runbook', $1, $2, 0, 0, '', $3, $3, 'null') \
             RETURNING id",
        )
        .bind(&run.runbook)
        .bind(JobStatus::Running.as_str())
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .map_err(query(&what))?;
        sqlx::query(&format!(
            "INSERT INTO runbook_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(job)
        .bind(&run.runbook)
        .bind(&run.file)
        .bind(&run.source)
        .bind(run.params.to_string())
        .bind(run.trigger.to_string())
        .bind(&run.lock_key)
        .bind(run.incident)
        .execute(&mut *tx)
        .await
        .map_err(query(&what))?;
        if let Some(key) = &run.lock_key {
            sqlx::query(
                "INSERT INTO runbook_locks (lock_key, job, acquired_at) VALUES ($1, $2, $3)",
            )
            .bind(key)
            .bind(job)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(query(&what))?;
        }
        tx.commit().await.map_err(query(&what))?;
        Ok(RunStart::Started(job))
    }

    async fn run(&self, job: i64) -> Result<RunRecord, DbError> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runbook_runs WHERE job = $1"
        ))
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(query(format!("read runbook job {job}")))?
        .as_ref()
        .map(run_row)
        .unwrap_or_else(|| Err(not_found("runbook job", &job.to_string())))
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, DbError> {
        let cols = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "SELECT {cols} FROM runbook_runs r JOIN jobs j ON j.id = r.job \
             WHERE j.status IN ($1, $2) ORDER BY r.job"
        ))
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Running.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query("list unfinished runbook jobs"))?
        .iter()
        .map(run_row)
        .collect()
    }

    async fn set_run_incident(&self, job: i64, incident: i64) -> Result<(), DbError> {
        let done = self
            .write_one(
                format!("set the incident of runbook job {job}"),
                sqlx::query("UPDATE runbook_runs SET incident = $1 WHERE job = $2")
                    .bind(incident)
                    .bind(job),
            )
            .await?;
        found(done.rows_affected(), "runbook job", &job.to_string())
    }

    async fn put_step(&self, s: &StepRecord) -> Result<(), DbError> {
        self.write_one(
            format!("record step {} of runbook job {}", s.step, s.job),
            sqlx::query(&format!(
                "INSERT INTO runbook_steps ({STEP_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (job, step, item) DO UPDATE SET position = excluded.position, \
             state = excluded.state, attempt = excluded.attempt, input = excluded.input, \
             output = excluded.output, error = excluded.error, \
             started_at = excluded.started_at, finished_at = excluded.finished_at"
            ))
            .bind(s.job)
            .bind(&s.step)
            .bind(s.item)
            .bind(s.position)
            .bind(s.state.as_str())
            .bind(i64::from(s.attempt))
            .bind(s.input.to_string())
            .bind(s.output.to_string())
            .bind(&s.error)
            .bind(s.started_at.map(ts))
            .bind(s.finished_at.map(ts)),
        )
        .await?;
        Ok(())
    }

    async fn steps(&self, job: i64) -> Result<Vec<StepRecord>, DbError> {
        sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM runbook_steps WHERE job = $1 ORDER BY position, item"
        ))
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(query(format!("list steps of job {job}")))?
        .iter()
        .map(step_row)
        .collect()
    }

    async fn release_lock(&self, job: i64) -> Result<(), DbError> {
        self.write_one(
            format!("release the lock of job {job}"),
            sqlx::query("DELETE FROM runbook_locks WHERE job = $1").bind(job),
        )
        .await?;
        Ok(())
    }

    async fn locks(&self) -> Result<Vec<(String, i64)>, DbError> {
        sqlx::query("SELECT lock_key, job FROM runbook_locks ORDER BY lock_key")
            .fetch_all(&self.pool)
            .await
            .map_err(query("list runbook locks"))?
            .iter()
            .map(|r| Ok((r.try_get(0).map_err(query("read a lock"))?, get(r, "job")?)))
            .collect()
    }
}
