//! `http` and `shell`: calls out of the controller.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::context::ActionCtx;
use crate::error::EngineError;

pub(super) async fn http(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let method = ctx.opt_str("method")?.unwrap_or_else(|| "GET".into());
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| EngineError::BadRequest(format!("bad method '{method}'")))?;
    let url = ctx.str("url")?;
    let client = standby_http::builder(standby_http::Reach::External)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| EngineError::Internal(format!("http client: {e}")))?;
    let mut req = client
        .request(method, &url)
        .header("Idempotency-Key", ctx.key());
    if let Value::Object(h) = &ctx.input["headers"] {
        for (k, v) in h {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            req = req.header(k.as_str(), v);
        }
    }
    match &ctx.input["body"] {
        Value::Null => {}
        Value::String(s) => req = req.body(s.clone()),
        other => req = req.json(other),
    }
    let resp = req
        .send()
        .await
        .map_err(|e| EngineError::Conflict(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| EngineError::Conflict(format!("{url}: reading the body: {e}")))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let ok = match ctx.opt_i64("expect_status")? {
        Some(want) => i64::from(status) == want,
        None => (200..300).contains(&status),
    };
    if !ok {
        return Err(EngineError::Conflict(format!(
            "{url} answered {status}: {body}"
        )));
    }
    Ok(json!({ "status": status, "body": body }))
}

pub(super) async fn shell(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let argv: Vec<String> = match &ctx.input["command"] {
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        other => {
            return Err(EngineError::BadRequest(format!(
                "input 'command': {other} is not a non-empty argv list"
            )));
        }
    };
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Value::Object(m) = &ctx.input["env"] {
        for (k, v) in m {
            env.insert(
                k.clone(),
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(&env)
        .env("STANDBY_IDEMPOTENCY_KEY", ctx.key())
        .env("STANDBY_JOB", ctx.job.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            EngineError::Timeout(format!(
                "{} timed out after {}",
                argv[0],
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| EngineError::BadRequest(format!("unable to run {}: {e}", argv[0])))?;
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(EngineError::Conflict(format!(
            "{} exited with {}: {}",
            argv[0],
            out.status,
            stderr.trim()
        )));
    }
    Ok(json!({ "code": code, "stdout": stdout, "stderr": stderr }))
}
