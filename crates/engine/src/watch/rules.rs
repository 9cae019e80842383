//! Rule files: the built-in rules plus `controller.rules`, re-read when a
//! file changes. A broken file at start stops the controller (the operator
//! is there to read the error); a broken file later keeps the rules in
//! force and records the error for `standby rules status` and the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use standby_monitor::RuleSet;
use standby_types::config::Config;

use crate::controller::Controller;
use crate::error::EngineError;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RulesStatus {
    #[schema(value_type = Vec<String>)]
    pub files: Vec<PathBuf>,
    /// Names of the rules in force.
    pub rules: Vec<String>,
    pub loaded_at: DateTime<Utc>,
    /// The last reload's error; the previous rules stayed in force.
    pub error: Option<String>,
    pub error_at: Option<DateTime<Utc>>,
}

fn read(cfg: &Config) -> Result<RuleSet, String> {
    let mut set = if cfg.controller.builtin_rules {
        RuleSet::builtin()
    } else {
        RuleSet::default()
    };
    for path in &cfg.controller.rules {
        let src = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: unable to read rule file: {e}", path.display()))?;
        let more = RuleSet::parse(&src, path).map_err(|e| e.to_string())?;
        set = RuleSet::merge(set, more).map_err(|e| e.to_string())?;
    }
    Ok(set)
}

pub(super) fn load(cfg: &Config) -> Result<(RuleSet, RulesStatus), EngineError> {
    let set = read(cfg).map_err(EngineError::BadRequest)?;
    let status = RulesStatus {
        files: cfg.controller.rules.clone(),
        rules: set.names(),
        loaded_at: Utc::now(),
        error: None,
        error_at: None,
    };
    Ok((set, status))
}

/// Re-read the rule files now. On error the rules in force stay.
pub fn reload(ctl: &Controller) -> RulesStatus {
    let w = &ctl.watch;
    match read(&ctl.cfg) {
        Ok(set) => {
            let names = set.names();
            w.evaluator.lock().expect("evaluator lock").set_rules(set);
            let mut st = w.rules.lock().expect("rules lock");
            st.rules = names;
            st.loaded_at = Utc::now();
            st.error = None;
            st.error_at = None;
            tracing::info!(rules = st.rules.len(), "rules reloaded");
            st.clone()
        }
        Err(e) => {
            tracing::error!("rules not reloaded, the previous rules stay in force: {e}");
            let mut st = w.rules.lock().expect("rules lock");
            st.error = Some(e);
            st.error_at = Some(Utc::now());
            st.clone()
        }
    }
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

pub(super) async fn reload_loop(ctl: Arc<Controller>) {
    let files = ctl.cfg.controller.rules.clone();
    if files.is_empty() {
        return;
    }
    let mut seen = mtimes(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = mtimes(&files);
        if now != seen {
            seen = now;
            reload(&ctl);
        }
    }
}
