//! The jobs page and one job with its steps, and the job rows other pages share.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde_json::Value;
use standby_types::model::{Job, JobStatus};

use crate::auth::Principal;
use crate::error::ServerError;
use crate::portal::model::{self};
use crate::portal::{PageError, PageResult, Viewer, principal};
use standby_engine::Controller;

use super::common::{Ctl, ago, fragment_principal, html, page, render, when};

pub(super) struct JobRow {
    pub(super) id: i64,
    pub(super) kind: String,
    pub(super) target: String,
    pub(super) status: String,
    pub(super) class: &'static str,
    pub(super) progress: String,
    pub(super) message: String,
    pub(super) created: String,
    pub(super) ago: String,
}

pub(super) fn status_class(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Succeeded => "ok",
        JobStatus::Failed => "bad",
        JobStatus::Running | JobStatus::Queued => "busy",
        #[allow(unreachable_patterns)]
        _ => "neutral",
    }
}

pub(super) fn job_row(j: Job, now: DateTime<Utc>) -> JobRow {
    JobRow {
        id: j.id,
        class: status_class(j.status),
        status: j.status.as_str().to_string(),
        progress: (j.progress_done * 100)
            .checked_div(j.progress_total)
            .map(|p| format!("{}%", p.min(100)))
            .unwrap_or_default(),
        message: j.error.clone().unwrap_or_else(|| j.message.clone()),
        created: when(j.created_at),
        ago: ago(j.created_at, now),
        kind: j.kind,
        target: j.target,
    }
}

/// The newest jobs the principal sees.
pub(super) async fn job_rows(
    ctl: &Arc<Controller>,
    p: &Principal,
    limit: usize,
) -> Result<Vec<JobRow>, PageError> {
    let now = Utc::now();
    let jobs = ctl
        .repo
        .jobs(if p.tenant.is_some() {
            500
        } else {
            limit as u32
        })
        .await?;
    let mut out = Vec::new();
    for j in jobs {
        if out.len() >= limit {
            break;
        }
        if !job_visible(ctl, p, &j).await? {
            continue;
        }
        out.push(job_row(j, now));
    }
    Ok(out)
}

pub(super) async fn job_visible(
    ctl: &Arc<Controller>,
    p: &Principal,
    j: &Job,
) -> Result<bool, PageError> {
    if p.tenant.is_none() {
        return Ok(true);
    }
    Ok(p.sees(
        crate::tenancy::job(&ctl.cfg(), &**ctl.runbooks.repo(), j)
            .await?
            .as_deref(),
    ))
}

#[derive(Template)]
#[template(path = "fragments/jobs.html")]
pub(super) struct Jobs {
    pub(super) jobs: Vec<JobRow>,
}

pub(crate) async fn jobs(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = principal(&v)?;
    let body = render(&Jobs {
        jobs: job_rows(&ctl, p, 100).await?,
    })?;
    page(&v, "Jobs", "jobs", "/portal/fragments/jobs", &body)
}

pub(crate) async fn jobs_fragment(State(ctl): Ctl, v: Viewer) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&Jobs {
        jobs: job_rows(&ctl, p, 100).await?,
    })?))
}

pub(super) struct StepRow {
    pub(super) name: String,
    pub(super) state: String,
    pub(super) class: &'static str,
    pub(super) attempt: u32,
    pub(super) took: String,
    pub(super) detail: String,
}

#[derive(Template)]
#[template(path = "fragments/job.html")]
pub(super) struct JobPage {
    pub(super) job: JobRow,
    pub(super) running: bool,
    pub(super) runbook: String,
    pub(super) params: String,
    pub(super) incident: Option<i64>,
    pub(super) percent: u64,
    pub(super) steps: Vec<StepRow>,
    pub(super) result: String,
    pub(super) finished: String,
}

pub(super) fn short_json(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if s.chars().count() > max {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    } else {
        s
    }
}

pub(super) async fn job_data(
    ctl: &Arc<Controller>,
    p: &Principal,
    id: i64,
) -> Result<JobPage, PageError> {
    let j = ctl.repo.job(id).await?;
    if !job_visible(ctl, p, &j).await? {
        return Err(ServerError::not_found("job", id.to_string()).into());
    }
    let now = Utc::now();
    let running = !j.status.is_finished();
    let finished = j.finished_at.map(when).unwrap_or_default();
    let result = short_json(&j.result, 2000);
    let (mut runbook, mut params, mut incident, mut steps) =
        (String::new(), String::new(), None, Vec::new());
    let mut percent = (j.progress_done * 100)
        .checked_div(j.progress_total)
        .unwrap_or(0)
        .min(100);
    if j.kind == "runbook"
        && let Ok(run) = ctl.runbooks.repo().run(id).await
    {
        runbook = run.run.runbook.clone();
        params = short_json(&run.run.params, 500);
        incident = run.run.incident;
        let rows = ctl.runbooks.repo().steps(id).await?;
        let declared = ctl
            .runbooks
            .get(&run.run.runbook)
            .map(|l| l.runbook.steps.len())
            .unwrap_or(0);
        let done = rows
            .iter()
            .filter(|s| s.item == -1 && s.state.is_final())
            .count();
        if let Some(p) = (done * 100).checked_div(declared) {
            percent = p.min(100) as u64;
        }
        steps = rows
            .into_iter()
            .map(|s| {
                let state = s.state.as_str().to_string();
                StepRow {
                    name: if s.item >= 0 {
                        format!("{} [{}]", s.step, s.item)
                    } else {
                        s.step
                    },
                    class: match state.as_str() {
                        "succeeded" => "ok",
                        "failed" => "bad",
                        "running" | "pending" => "busy",
                        _ => "neutral",
                    },
                    state,
                    attempt: s.attempt,
                    took: match (s.started_at, s.finished_at) {
                        (Some(a), Some(b)) => {
                            model::short_duration((b - a).num_milliseconds() as f64 / 1000.0)
                        }
                        (Some(a), None) => format!("{}…", ago(a, now)),
                        _ => String::new(),
                    },
                    detail: s
                        .error
                        .clone()
                        .unwrap_or_else(|| short_json(&s.output, 300)),
                }
            })
            .collect();
    }
    if !running {
        percent = 100;
    }
    Ok(JobPage {
        job: job_row(j, now),
        running,
        runbook,
        params,
        incident,
        percent,
        steps,
        result,
        finished,
    })
}

pub(crate) async fn job(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = principal(&v)?;
    let body = render(&job_data(&ctl, p, id).await?)?;
    page(
        &v,
        &format!("Job {id}"),
        "jobs",
        &format!("/portal/fragments/jobs/{id}"),
        &body,
    )
}

pub(crate) async fn job_fragment(State(ctl): Ctl, v: Viewer, Path(id): Path<i64>) -> PageResult {
    let p = fragment_principal(&v)?;
    Ok(html(render(&job_data(&ctl, p, id).await?)?))
}
