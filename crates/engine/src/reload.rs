//! A changed configuration applied to the running controller
//! (`standby config reload`, `POST /api/v1/config/reload`, SIGHUP): VMs,
//! jobs and the front door carry on. What a reload cannot apply (a new
//! host, a moved listen address, see
//! [`standby_types::config::diff::needs_restart`]) refuses it whole,
//! with the reason; so does a change that would strand a VM (one dropped
//! from the configuration while it runs).
//!
//! Applying: the database takes the inventory (as at a start), the new
//! configuration replaces the old one for every reader from then on
//! (each operation keeps the version it started with), the rules are
//! read again and the controller's own probes restart. The reload is
//! recorded as a `config.reloaded` event.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use standby_types::api::ConfigReloaded;
use standby_types::config::diff::{self, Change};
use standby_types::config::{Config, redacted};
use standby_types::watch::{Event, Labels, Severity};

use crate::controller::Controller;
use crate::error::EngineError;

/// Apply `new` (loaded and validated by the caller) in place of the
/// configuration in force, or refuse it with every reason.
pub async fn reload(ctl: &Arc<Controller>, new: Config) -> Result<ConfigReloaded, EngineError> {
    let started = Instant::now();
    let _one = ctl.reloading.lock().await;
    // The groups made through the API stay: joined to the new file's as
    // at a start; one the new file would leave out refuses the reload.
    let (new, vms_left_out) = standby_db::join_managed_vms(new, &*ctl.repo).await?;
    let (new, mut left_out) = standby_db::join_managed_groups(new, &*ctl.repo).await?;
    left_out.extend(vms_left_out);
    let old = ctl.cfg();
    let (a, b) = (redacted(&old), redacted(&new));
    let changes = diff::changes(&a, &b);
    let mut refused: Vec<String> = changes
        .iter()
        .filter_map(|c| {
            diff::restart_reason(c, &a, &b)
                .map(|why| format!("{}: needs a controller restart ({why})", c.text))
        })
        .collect();
    refused.extend(left_out);
    refused.extend(stranded(ctl, &old, &new).await);
    if !refused.is_empty() {
        return Err(EngineError::Conflict(format!(
            "configuration not reloaded, nothing changed: {}",
            refused.join("; ")
        )));
    }
    let lines: Vec<String> = changes.iter().map(|c| c.text.clone()).collect();
    if changes.is_empty() {
        return Ok(ConfigReloaded {
            changes: lines,
            took_ms: started.elapsed().as_millis() as u64,
        });
    }
    if ctl.leader.deposed() {
        return Err(EngineError::Conflict(
            "configuration not reloaded: this controller no longer leads".into(),
        ));
    }
    ctl.repo.apply_config(&new).await?;
    let probes_changed = changes.iter().any(|c| c.section == "probes");
    let rules_changed = changes.iter().any(|c| c.section == "controller");
    ctl.live_config().set(Arc::new(new));
    if rules_changed {
        crate::watch::reload_rules(ctl);
    }
    if probes_changed {
        crate::watch::restart_controller_probes(ctl);
    }
    record(ctl, &changes);
    tracing::info!(
        changes = lines.len(),
        "configuration reloaded: {}",
        lines.join("; ")
    );
    Ok(ConfigReloaded {
        changes: lines,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// VMs the new configuration drops while they run: a VM without its
/// configuration could be neither stopped nor fenced by standby.
async fn stranded(ctl: &Controller, old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for name in old.vms.keys().filter(|v| !new.vms.contains_key(*v)) {
        let Ok(rec) = ctl.repo.vm(name).await else {
            continue;
        };
        let Ok(agent) = ctl.agent(&rec.active_host) else {
            continue;
        };
        match agent.status(name).await {
            Ok(st) if !st.is_alive() => {}
            Ok(_) => out.push(format!(
                "vm {name}: removed while it runs at host {}; stop it first (standby vm stop {name})",
                rec.active_host
            )),
            Err(e) => out.push(format!(
                "vm {name}: removed, and host {} does not say whether it runs ({e}); stop it first",
                rec.active_host
            )),
        }
    }
    out
}

fn record(ctl: &Controller, changes: &[Change]) {
    let mut labels = Labels::new();
    let mut sections: Vec<&str> = changes.iter().map(|c| c.section.as_str()).collect();
    sections.dedup();
    labels.insert("sections".into(), sections.join(","));
    ctl.watch.emit(Event {
        id: 0,
        at: Utc::now(),
        source: "controller".into(),
        kind: "config.reloaded".into(),
        severity: Severity::Info,
        labels,
        vantage: "controller".into(),
        message: format!(
            "configuration reloaded: {}",
            changes
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    });
}
