//! `[probes.NAME]`: network checks and their vantage points.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::duration_str;
use crate::watch::{CONTROLLER_VANTAGE, Labels, ProbeCheck, ProbeSpec};

/// `[probes.NAME]`: a network check, run from one or more vantage points.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// `tcp`, `http`, `udp` or `sip`.
    pub kind: String,
    /// `host:port` for tcp, udp and sip.
    #[serde(default)]
    pub target: Option<String>,
    /// For http.
    #[serde(default)]
    pub url: Option<String>,
    /// For http: the expected status (default any 2xx).
    #[serde(default)]
    pub status: Option<u16>,
    /// For http: text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// For udp: the datagram sent.
    #[serde(default)]
    pub send: Option<String>,
    /// For udp: text the answer must contain.
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default = "default_probe_interval", with = "duration_str")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// A run fails only when every attempt fails.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Vantage points: `controller` or `agent:NAME`.
    #[serde(default = "default_from")]
    pub from: Vec<String>,
    /// What the probe is about: `site`, `host`, `vm`, `scope`, ...
    #[serde(default)]
    pub labels: Labels,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_attempts() -> u32 {
    1
}

fn default_from() -> Vec<String> {
    vec![CONTROLLER_VANTAGE.to_string()]
}

impl ProbeConfig {
    /// The check this probe makes, or what is missing.
    pub fn check(&self) -> Result<ProbeCheck, (&'static str, String)> {
        let need = |v: &Option<String>, f: &'static str| {
            v.clone()
                .ok_or((f, format!("a {} probe needs '{f}'", self.kind)))
        };
        match self.kind.as_str() {
            "tcp" => Ok(ProbeCheck::Tcp {
                target: need(&self.target, "target")?,
            }),
            "http" => Ok(ProbeCheck::Http {
                url: need(&self.url, "url")?,
                status: self.status,
                body_contains: self.body_contains.clone(),
            }),
            "udp" => Ok(ProbeCheck::Udp {
                target: need(&self.target, "target")?,
                send: need(&self.send, "send")?,
                expect: self.expect.clone(),
            }),
            "sip" => Ok(ProbeCheck::Sip {
                target: need(&self.target, "target")?,
            }),
            other => Err((
                "kind",
                format!("unknown probe kind '{other}' (expected tcp, http, udp or sip)"),
            )),
        }
    }

    /// The spec a vantage point runs.
    pub fn spec(&self, name: &str) -> Option<ProbeSpec> {
        Some(ProbeSpec {
            name: name.to_string(),
            check: self.check().ok()?,
            interval: self.interval,
            timeout: self.timeout,
            attempts: self.attempts.max(1),
            labels: self.labels.clone(),
        })
    }
}
