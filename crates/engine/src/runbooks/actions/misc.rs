//! `http` and `shell`: calls out of the controller.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use standby_runbook::catalog::{Http, Shell};
use standby_types::outcome::{CommandRan, HttpAnswered};

use super::Perform;
use super::context::ActionCtx;
use crate::error::EngineError;

impl Perform for Http {
    async fn perform(self, ctx: &ActionCtx) -> Result<HttpAnswered, EngineError> {
        let method = self
            .method
            .map(String::from)
            .unwrap_or_else(|| "GET".into());
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
            .map_err(|_| EngineError::BadRequest(format!("bad method '{method}'")))?;
        let url = String::from(self.url);
        let client = standby_http::builder(standby_http::Reach::External)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| EngineError::Internal(format!("http client: {e}")))?;
        let mut req = client
            .request(method, &url)
            .header("Idempotency-Key", ctx.key());
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match self.body {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => req = req.body(s),
            Some(other) => req = req.json(&other),
        }
        let resp = req
            .send()
            .await
            .map_err(|e| EngineError::Conflict(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = standby_http::body_limited(resp, standby_http::MAX_BODY)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| EngineError::Conflict(format!("{url}: reading the body: {e}")))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let ok = match self.expect_status {
            Some(want) => i64::from(status) == want.0,
            None => (200..300).contains(&status),
        };
        if !ok {
            return Err(EngineError::Conflict(format!(
                "{url} answered {status}: {body}"
            )));
        }
        Ok(HttpAnswered { status, body })
    }
}

impl Perform for Shell {
    async fn perform(self, ctx: &ActionCtx) -> Result<CommandRan, EngineError> {
        let argv: Vec<String> = self.command.into_iter().map(String::from).collect();
        if argv.is_empty() {
            return Err(EngineError::BadRequest(
                "input 'command': an empty argv list".into(),
            ));
        }
        let timeout = self.timeout.map_or(Duration::from_secs(60), |t| t.0);
        let env: BTreeMap<String, String> = self
            .env
            .into_iter()
            .map(|(k, v)| (k, String::from(v)))
            .collect();
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
        Ok(CommandRan {
            code,
            stdout,
            stderr,
        })
    }
}
