//! The loaded runbooks ([`Runbooks`]): the built-in ones and the
//! configured files, the repository of the durable engine's state and the
//! runbook steps' crash points (the hook itself is [`crate::crash`]). A leaf: it knows nothing of the controller, which holds
//! a [`Runbooks`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use standby_db::RunbookRepo;
use standby_runbook::Runbook;
use standby_types::config::Config;

use crate::error::EngineError;

const BUILTIN: &[(&str, &str)] = &[
    (
        "protect.yaml",
        include_str!("../../../../runbooks/protect.yaml"),
    ),
    (
        "failover-site.yaml",
        include_str!("../../../../runbooks/failover-site.yaml"),
    ),
    (
        "move-vm.yaml",
        include_str!("../../../../runbooks/move-vm.yaml"),
    ),
    (
        "failback.yaml",
        include_str!("../../../../runbooks/failback.yaml"),
    ),
    (
        "drill.yaml",
        include_str!("../../../../runbooks/drill.yaml"),
    ),
    (
        "heal-vm.yaml",
        include_str!("../../../../runbooks/heal-vm.yaml"),
    ),
    (
        "heal-vnf.yaml",
        include_str!("../../../../runbooks/heal-vnf.yaml"),
    ),
];

/// A runbook as loaded: where from, its text and its parsed form.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub file: String,
    #[serde(skip)]
    pub source: String,
    pub runbook: Runbook,
}

/// The loaded runbooks and the engine's state.
pub struct Runbooks {
    pub(super) repo: Arc<dyn RunbookRepo>,
    loaded: BTreeMap<String, Loaded>,
    /// Files that could not be used, one message each.
    errors: Vec<String>,
    /// Next due time of each cron-scheduled runbook.
    pub(crate) cron_next: std::sync::Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl Runbooks {
    /// Load the built-in runbooks and the configured files. A broken user
    /// file is reported (log and API) and skipped.
    pub fn open(cfg: &Config, repo: Arc<dyn RunbookRepo>) -> Runbooks {
        let mut loaded = BTreeMap::new();
        let mut errors = Vec::new();
        for (file, text) in BUILTIN {
            match standby_runbook::parse(file, text) {
                Ok(rb) => {
                    loaded.insert(
                        rb.name.clone(),
                        Loaded {
                            file: format!("builtin:{file}"),
                            source: text.to_string(),
                            runbook: rb,
                        },
                    );
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        for path in &cfg.controller.runbooks {
            for file in runbook_files(path, &mut errors) {
                match read_runbook(&file) {
                    Ok(l) => {
                        tracing::info!(runbook = %l.runbook.name, file = %file.display(), "runbook loaded");
                        loaded.insert(l.runbook.name.clone(), l);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        for e in &errors {
            tracing::error!("runbook not loaded: {e}");
        }
        crate::crash::announce();
        Runbooks {
            repo,
            loaded,
            errors,
            cron_next: Default::default(),
        }
    }

    pub fn repo(&self) -> &Arc<dyn RunbookRepo> {
        &self.repo
    }

    pub fn get(&self, name: &str) -> Result<&Loaded, EngineError> {
        self.loaded
            .get(name)
            .ok_or_else(|| EngineError::not_found("runbook", name))
    }

    pub fn all(&self) -> impl Iterator<Item = &Loaded> {
        self.loaded.values()
    }

    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The crash hook at a step (`RUNBOOK:STEP:before|after`, see
    /// [`crate::crash`]; nothing unless built with `crash-hook`).
    pub(super) fn crash(&self, runbook: &str, step: &str, after: bool) {
        crate::crash::at(|| {
            format!(
                "{runbook}:{step}:{}",
                if after { "after" } else { "before" }
            )
        });
    }
}

/// What would keep the configured runbook files from loading: one
/// message per problem (file, field, line), none when all load.
pub fn check_files(cfg: &Config) -> (usize, Vec<String>) {
    let mut errors = Vec::new();
    let mut loaded = 0;
    for path in &cfg.controller.runbooks {
        for file in runbook_files(path, &mut errors) {
            match read_runbook(&file) {
                Ok(_) => loaded += 1,
                Err(e) => errors.push(e),
            }
        }
    }
    (loaded, errors)
}

fn runbook_files(path: &Path, errors: &mut Vec<String>) -> Vec<PathBuf> {
    if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                v.sort();
                v
            }
            Err(e) => {
                errors.push(format!("{}: unable to read directory: {e}", path.display()));
                Vec::new()
            }
        }
    } else {
        vec![path.to_path_buf()]
    }
}

fn read_runbook(file: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: unable to read: {e}", file.display()))?;
    let name = file.display().to_string();
    let rb = standby_runbook::parse(&name, &text).map_err(|e| e.to_string())?;
    Ok(Loaded {
        file: name,
        source: text,
        runbook: rb,
    })
}
