//! `[controller]` and `[tenants.NAME]`: the controller process, its API,
//! users and tenants.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{duration_str, yes};

/// Default TCP address of the controller's HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7780";

/// `[tenants.NAME]`: a customer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Shown in the portal.
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    /// Address the API listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the controller keeps its database, logs and VM work files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Rule files (YAML) read in addition to the built-in rules; they are
    /// re-read when they change, and a broken file keeps the previous rules.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Load the rules shipped with standby (VNF, VM, host and site down,
    /// RPO missed).
    #[serde(default = "yes")]
    pub builtin_rules: bool,
    /// How long events are kept.
    #[serde(default = "default_events_retention", with = "duration_str")]
    pub events_retention: Duration,
    /// Runbook files, or directories of `*.yaml` runbooks, read in
    /// addition to the built-in runbooks; a runbook with a built-in's name
    /// replaces it.
    #[serde(default)]
    pub runbooks: Vec<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Also serve `/metrics` here, without authentication (plain HTTP,
    /// e.g. on a monitoring network). On `listen` it needs a viewer token.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            listen: default_listen(),
            data_dir: default_data_dir(),
            rules: Vec::new(),
            builtin_rules: true,
            events_retention: default_events_retention(),
            runbooks: Vec::new(),
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
        }
    }
}

fn default_events_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("standby-data")
}
