//! Runbook routes under `/api/v1`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{StartRequest, start, triggers};
use crate::controller::Controller;
use crate::error::ServerError;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

pub fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/api/v1/runbooks", get(list))
        .route("/api/v1/runbooks/schema", get(schema))
        .route("/api/v1/runbooks/actions", get(actions))
        .route("/api/v1/runbooks/{name}", get(show))
        .route("/api/v1/runbooks/{name}/run", post(run))
        .route("/api/v1/runbooks/{name}/webhook", post(webhook))
        .route("/api/v1/jobs/{id}/steps", get(steps))
}

async fn list(State(ctl): Ctl) -> ApiResult<Value> {
    let runbooks: Vec<Value> = ctl
        .runbooks
        .all()
        .map(|l| {
            json!({
                "name": l.runbook.name,
                "description": l.runbook.description,
                "file": l.file,
                "trigger": l.runbook.trigger,
                "steps": l.runbook.steps.len(),
            })
        })
        .collect();
    Ok(Json(json!({
        "runbooks": runbooks,
        "errors": ctl.runbooks.errors(),
        "locks": ctl.runbooks.repo().locks().await?,
    })))
}

async fn schema() -> Json<Value> {
    Json(standby_runbook::schema())
}

async fn actions() -> Json<Value> {
    Json(serde_json::to_value(standby_runbook::ACTIONS).unwrap_or_default())
}

async fn show(State(ctl): Ctl, Path(name): Path<String>) -> ApiResult<Value> {
    let l = ctl.runbooks.get(&name)?;
    Ok(Json(json!({
        "file": l.file,
        "runbook": l.runbook,
        "source": l.source,
    })))
}

#[derive(Debug, Default, Deserialize)]
struct RunRequest {
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    dry_run: bool,
}

async fn run(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: Option<Json<RunRequest>>,
) -> ApiResult<Value> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let l = ctl.runbooks.get(&name)?;
    if req.dry_run {
        let plan = standby_runbook::plan(&l.runbook, &req.params, &json!({"kind": "manual"}))
            .map_err(ServerError::BadRequest)?;
        return Ok(Json(json!({ "plan": plan, "text": plan.describe() })));
    }
    if !l.runbook.trigger.manual {
        return Err(ServerError::BadRequest(format!(
            "runbook {name} cannot be run by hand (trigger.manual is false)"
        )));
    }
    let job = start(
        &ctl,
        &name,
        StartRequest {
            params: req.params,
            trigger: json!({ "kind": "manual" }),
        },
    )
    .await?;
    Ok(Json(json!({ "job": job })))
}

async fn webhook(
    State(ctl): Ctl,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Value> {
    let sig = headers
        .get(standby_notify::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let job = triggers::on_webhook(&ctl, &name, sig, &body).await?;
    Ok(Json(json!({ "job": job })))
}

async fn steps(State(ctl): Ctl, Path(id): Path<i64>) -> ApiResult<Value> {
    let job = ctl.repo.job(id).await?;
    let run = ctl.runbooks.repo().run(id).await?;
    let steps = ctl.runbooks.repo().steps(id).await?;
    Ok(Json(json!({
        "job": job,
        "runbook": run.run.runbook,
        "params": run.run.params,
        "trigger": run.run.trigger,
        "lock": run.run.lock_key,
        "incident": run.run.incident,
        "steps": steps,
    })))
}
