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
    /// How long finished jobs (with their runbook runs and steps) are kept
    /// after they finish; queued and running ones are always kept.
    #[serde(default = "default_jobs_retention", with = "duration_str")]
    pub jobs_retention: Duration,
    /// How long the notification log (deliveries done or given up) is
    /// kept; pending deliveries are always kept.
    #[serde(default = "default_notifications_retention", with = "duration_str")]
    pub notifications_retention: Duration,
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
    /// This controller's name: its certificate is `controller-NAME` in
    /// `[pki] dir`, and agents accept it if `[pki] controllers` names it.
    #[serde(default = "default_name")]
    pub name: String,
    /// With `[pki]`: where agents send heartbeats and results, mutual TLS
    /// only (this controller's `controller` certificate; each agent's
    /// `agent` certificate), apart from the operators' API on `listen`.
    #[serde(default)]
    pub agent_listen: Option<String>,
    /// Where the controller keeps its state: absent for the SQLite file
    /// `state.db` in `data_dir`, or a `postgres://` (`postgresql://`) URL
    /// of a PostgreSQL database that controller replicas share. The URL
    /// may hold a password; the API shows it redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The URL other replicas and clients reach this controller's API at
    /// (default: `http://LISTEN`, `https://` with `tls_cert`). With
    /// replicas, the leader's lease names it and the others forward their
    /// requests to it: set it when `listen` is a wildcard address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where the controller keeps its state (`[controller] database`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The SQLite file in the data directory (the default).
    Sqlite(PathBuf),
    /// The URL of a PostgreSQL database.
    Postgres(String),
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Controller {
    /// Where this controller's API is reached (`url`, or from `listen`).
    pub fn url(&self) -> String {
        match &self.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", self.listen)
            }
        }
    }

    /// The database this configuration selects (validation refuses a
    /// `database` that is not a PostgreSQL URL).
    pub fn database(&self) -> Database {
        match &self.database {
            Some(url) if is_postgres_url(url) => Database::Postgres(url.clone()),
            _ => Database::Sqlite(self.data_dir.join("state.db")),
        }
    }
}

/// `[pki]`: mutual TLS between standby's own processes (see `docs/pki.md`):
/// the controller's calls to agents, agents' heartbeats and results, and
/// copies between agents. Without it, remote agents speak plain HTTP with
/// a shared token: for a lab on one machine only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pki {
    /// Holds `ca.pem` (the trusted CAs) and each process's
    /// `ROLE-NAME.pem`/`ROLE-NAME.key` (`standby pki issue`).
    pub dir: PathBuf,
    /// The controllers whose certificates agents take calls from (default:
    /// `[controller] name`).
    #[serde(default)]
    pub controllers: Vec<String>,
}

impl Pki {
    /// The trust bundle.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate and key of `role` (`controller`, `agent`, `peer`)
    /// `name`.
    pub fn identity(&self, role: &str, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{role}-{name}.pem")),
            self.dir.join(format!("{role}-{name}.key")),
        )
    }
}

fn default_name() -> String {
    "controller".to_string()
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            listen: default_listen(),
            data_dir: default_data_dir(),
            rules: Vec::new(),
            builtin_rules: true,
            events_retention: default_events_retention(),
            jobs_retention: default_jobs_retention(),
            notifications_retention: default_notifications_retention(),
            runbooks: Vec::new(),
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
            name: default_name(),
            agent_listen: None,
            database: None,
            url: None,
        }
    }
}

fn default_events_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_jobs_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_notifications_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("standby-data")
}
