//! Types of the watch side: probe specs and results, events, alerts,
//! silences, incidents and notifications. Shared by the `monitor` crate
//! (which evaluates them), the server (which stores and serves them) and
//! the CLI (which shows them).
//!
//! Label conventions every probe result carries (rules match on them):
//! `probe` (probe name), `kind` (`tcp`, `http`, `udp`, `sip`, `heartbeat`,
//! `vm`, `point_age`), `vantage` (`controller` or `agent:NAME`), and, where
//! they apply, `site`, `host`, `vm`, `group`, `agent` and `scope`
//! (`site`, `host`, `vm` or `service`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Labels are an ordered map so fingerprints and output are stable.
pub type Labels = BTreeMap<String, String>;

/// The vantage point name of the controller itself.
pub const CONTROLLER_VANTAGE: &str = "controller";

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            "critical" => Ok(Severity::Critical),
            _ => Err(format!(
                "unknown severity '{s}' (expected info, warning, error or critical)"
            )),
        }
    }
}

/// What a network probe checks. Heartbeat, VM state and point-age probes
/// are made by the controller from the inventory and are not written in
/// the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeCheck {
    /// TCP connect to `target` (`host:port`).
    Tcp { target: String },
    /// HTTP GET `url`; ok when the status is `status` (default: any 2xx)
    /// and, if set, the body contains `body_contains`.
    Http {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
    },
    /// Send `send` as one UDP datagram to `target`; ok when an answer
    /// arrives that contains `expect` (any answer if unset).
    Udp {
        target: String,
        send: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// SIP OPTIONS over UDP to `target`; ok on a `200` answer.
    Sip { target: String },
}

impl ProbeCheck {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeCheck::Tcp { .. } => "tcp",
            ProbeCheck::Http { .. } => "http",
            ProbeCheck::Udp { .. } => "udp",
            ProbeCheck::Sip { .. } => "sip",
        }
    }
}

/// One network probe as a vantage point runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeSpec {
    pub name: String,
    #[serde(flatten)]
    pub check: ProbeCheck,
    /// e.g. `10s`.
    #[serde(with = "crate::config::duration_str")]
    #[schema(value_type = String)]
    pub interval: Duration,
    /// Budget of one run, shared by all attempts.
    #[serde(with = "crate::config::duration_str")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    /// A run fails only when every attempt fails.
    pub attempts: u32,
    /// Labels the result carries (besides `probe`, `kind`, `vantage`).
    pub labels: Labels,
}

/// The outcome of one probe run at one vantage point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeResult {
    pub probe: String,
    pub vantage: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Time of the run, in milliseconds.
    pub latency_ms: u64,
    /// What was seen, e.g. `connection refused`, `200 OK`.
    pub detail: String,
    /// All labels, including `probe`, `kind` and `vantage`.
    pub labels: Labels,
    /// How long after a result it counts as unknown (no evidence).
    #[serde(with = "crate::config::duration_str")]
    #[schema(value_type = String)]
    pub stale_after: Duration,
}

/// Everything that happens is an event: probe results, agent reports,
/// alert and incident changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Assigned when stored; 0 before.
    #[serde(default)]
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who produced it: a probe name, `agent:NAME`, `alert`, `incident`.
    pub source: String,
    /// e.g. `probe.result`, `agent.heartbeat`, `agent.report`,
    /// `alert.firing`, `alert.resolved`, `incident.opened`.
    pub kind: String,
    pub severity: Severity,
    pub labels: Labels,
    pub vantage: String,
    pub message: String,
}

/// Lifecycle of an alert. Acknowledging does not stop it resolving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

impl FromStr for AlertState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "firing" => Ok(AlertState::Firing),
            "acknowledged" => Ok(AlertState::Acknowledged),
            "resolved" => Ok(AlertState::Resolved),
            _ => Err(format!("unknown alert state '{s}'")),
        }
    }
}

/// One firing of a rule for one group of labels. A fingerprint that fires
/// again after resolving gets a new alert, so the history is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: i64,
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    pub labels: Labels,
    pub annotations: Labels,
    /// When the condition started to hold (before the rule's `for`).
    pub active_since: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Fingerprint of the alert that mutes this one, if any.
    pub inhibited_by: Option<String>,
    /// Silence that mutes this one, if any.
    pub silenced_by: Option<i64>,
    pub incident: Option<i64>,
}

/// Mutes notifications of alerts whose labels match every matcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Silence {
    pub id: i64,
    pub matchers: Labels,
    pub comment: String,
    pub created_by: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    New,
    Active,
    Resolved,
    Closed,
}

impl IncidentState {
    pub fn as_str(&self) -> &'static str {
        match self {
            IncidentState::New => "new",
            IncidentState::Active => "active",
            IncidentState::Resolved => "resolved",
            IncidentState::Closed => "closed",
        }
    }
}

impl FromStr for IncidentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(IncidentState::New),
            "active" => Ok(IncidentState::Active),
            "resolved" => Ok(IncidentState::Resolved),
            "closed" => Ok(IncidentState::Closed),
            _ => Err(format!("unknown incident state '{s}'")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: i64,
    pub title: String,
    pub severity: Severity,
    pub description: String,
    /// Who handles it, e.g. `noc`.
    pub group: String,
    pub state: IncidentState,
    /// Template it came from, if any.
    pub template: Option<String>,
    /// Incidents are deduplicated by this key while open.
    pub key: Option<String>,
    pub labels: Labels,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub id: i64,
    pub incident: i64,
    pub at: DateTime<Utc>,
    /// `opened`, `alert`, `note`, `state`, `step`, `notification`.
    pub kind: String,
    pub author: String,
    pub text: String,
    pub alert: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    pub alerts: Vec<Alert>,
    pub timeline: Vec<TimelineEntry>,
}

/// One message to one receiver, kept as a delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub receiver: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub alerts: Vec<i64>,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// What a receiver is sent: alerts of one route group that fired or
/// resolved together, and the incident they belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Delivery id; receivers can use it to drop duplicates.
    pub delivery: i64,
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels shared by the group (the route's `group_by`).
    pub group_labels: Labels,
    pub alerts: Vec<Alert>,
    pub incident: Option<Incident>,
}

/// `[receivers.NAME]` in standby.toml: where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReceiverConfig {
    /// POST the [`Notification`] as JSON. With a secret, the request is
    /// signed: `X-Standby-Timestamp: <Unix seconds>`, `X-Standby-Nonce:
    /// <hex>`, `X-Standby-Signature: sha256=<hex HMAC-SHA256(secret,
    /// "<timestamp>.<nonce>.<body>")>`.
    Webhook {
        url: String,
        /// Environment variable holding the HMAC secret.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        /// File holding the HMAC secret (trailing newline ignored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<std::path::PathBuf>,
        #[serde(
            default = "default_receiver_timeout",
            with = "crate::config::duration_str"
        )]
        timeout: Duration,
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
    },
    /// Mail through an SMTP server.
    Smtp {
        /// `host:port`.
        server: String,
        #[serde(default)]
        tls: SmtpTls,
        from: String,
        to: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Environment variable holding the password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<std::path::PathBuf>,
        #[serde(
            default = "default_receiver_timeout",
            with = "crate::config::duration_str"
        )]
        timeout: Duration,
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
    },
}

impl ReceiverConfig {
    pub fn max_attempts(&self) -> u32 {
        match self {
            ReceiverConfig::Webhook { max_attempts, .. }
            | ReceiverConfig::Smtp { max_attempts, .. } => *max_attempts,
        }
    }
}

fn default_receiver_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_attempts() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on loopback or a trusted network).
    #[default]
    None,
    /// STARTTLS on the plain port.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// `[[routes]]` in standby.toml: which alerts go to which receivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Labels an alert must carry (every one, exact values).
    #[serde(default, rename = "match")]
    pub matchers: Labels,
    /// Lowest severity routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub receivers: Vec<String>,
    /// Alerts with the same values of these labels go in one message.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// How long a new group waits for more alerts before it is sent.
    #[serde(default = "default_group_wait", with = "crate::config::duration_str")]
    pub group_wait: Duration,
    /// Keep trying later routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

fn default_group_wait() -> Duration {
    Duration::from_secs(1)
}
