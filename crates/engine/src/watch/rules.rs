//! Rule files: the built-in rules plus `controller.rules`, re-read when a
//! file changes. A broken file at start stops the controller (the operator
//! is there to read the error); a broken file later keeps the rules in
//! force and records the error for `standby rules status` and the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;

use super::state::{RulesStatus, read};
use crate::controller::Controller;

/// Re-read the rule files now. On error the rules in force stay.
pub fn reload(ctl: &Controller) -> RulesStatus {
    let w = &ctl.watch;
    match read(&ctl.cfg()) {
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
    // The files in force: a configuration reload may name others (and
    // reads them itself).
    let mut files = ctl.cfg().controller.rules.clone();
    let mut seen = mtimes(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ctl.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let named = ctl.cfg().controller.rules.clone();
        if named != files {
            files = named;
            seen = mtimes(&files);
            continue;
        }
        let now = mtimes(&files);
        if now != seen {
            seen = now;
            reload(&ctl);
        }
    }
}
