//! `[services.NAME]`: services clients reach through the front door.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::duration_str;

/// `[services.NAME]`: a service clients reach through the front door.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The VM providing the service.
    pub vm: String,
    /// The front door's address, e.g. `0.0.0.0:5060`.
    pub listen: String,
    /// What is forwarded (default both).
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// The service's address at each site, e.g.
    /// `{ site1 = "198.18.0.2:5060", site2 = "198.18.0.6:5060" }`.
    pub backends: BTreeMap<String, String>,
    /// How runbooks check the service at a site.
    #[serde(default)]
    pub probe: Option<ServiceProbe>,
    /// For `probe = "http"`: the URL to check.
    #[serde(default)]
    pub probe_url: Option<String>,
    /// A UDP flow (one client address) is forgotten after this long
    /// without a datagram either way.
    #[serde(default = "default_idle_timeout", with = "duration_str")]
    pub idle_timeout: Duration,
    /// At most this many UDP flows (client addresses) at once; a new
    /// client beyond it takes the place of the least recently active one.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// At most this many TCP connections open at once; a client beyond it
    /// is refused (closed at once, counted in `connections_refused`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TCP connection is closed after this long without a byte either
    /// way.
    #[serde(default = "default_tcp_idle_timeout", with = "duration_str")]
    pub tcp_idle_timeout: Duration,
    /// The tenant that owns the service (default: its VM's).
    #[serde(default)]
    pub tenant: Option<String>,
    /// A name in the `[dns]` zone (relative to it, or absolute) that is
    /// pointed at the active site's backend IP by dynamic updates.
    #[serde(default)]
    pub dns_name: Option<String>,
}

/// A transport the front door forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

/// How a service is checked at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProbe {
    Sip,
    Tcp,
    Http,
}

impl fmt::Display for ServiceProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceProbe::Sip => "sip",
            ServiceProbe::Tcp => "tcp",
            ServiceProbe::Http => "http",
        })
    }
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Udp, Protocol::Tcp]
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Default of `[services.NAME] max_flows`.
pub const DEFAULT_MAX_FLOWS: usize = 65_536;
/// Default of `[services.NAME] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4_096;

fn default_max_flows() -> usize {
    DEFAULT_MAX_FLOWS
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

impl ServiceConfig {
    /// The listen address (validated by [`Config::parse`](crate::config::Config::parse)).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }

    /// The backend address at `site` (validated by [`Config::parse`](crate::config::Config::parse)).
    pub fn backend(&self, site: &str) -> Option<std::net::SocketAddr> {
        self.backends.get(site)?.parse().ok()
    }

    /// The problem with this service's own settings, as (field path below
    /// the service, message). References are checked by the caller.
    pub(super) fn check(&self) -> Result<(), (Vec<String>, String)> {
        let f = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        if self.listen_addr().is_none() {
            return Err((
                f(&["listen"]),
                format!(
                    "'{}' is not an address like 0.0.0.0:5060 (an IP address and a port)",
                    self.listen
                ),
            ));
        }
        if self.protocols.is_empty() {
            return Err((
                f(&["protocols"]),
                "give at least one of \"udp\" and \"tcp\"".into(),
            ));
        }
        for (i, p) in self.protocols.iter().enumerate() {
            if self.protocols[..i].contains(p) {
                return Err((
                    f(&["protocols", &i.to_string()]),
                    format!("protocol '{p}' is listed twice"),
                ));
            }
        }
        if self.backends.is_empty() {
            return Err((
                f(&["backends"]),
                "a service needs a backend address at one site at least".into(),
            ));
        }
        for (site, addr) in &self.backends {
            match addr.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => {}
                _ => {
                    return Err((
                        f(&["backends", site]),
                        format!(
                            "'{addr}' is not a backend address like 198.18.0.2:5060 (an IP address and a port)"
                        ),
                    ));
                }
            }
        }
        match (self.probe, &self.probe_url) {
            (Some(ServiceProbe::Http), None) => {
                return Err((f(&["probe"]), "an http probe needs 'probe_url'".into()));
            }
            (Some(ServiceProbe::Http), Some(u))
                if !(u.starts_with("http://") || u.starts_with("https://")) =>
            {
                return Err((
                    f(&["probe_url"]),
                    format!("'{u}' is not an http:// or https:// URL"),
                ));
            }
            (_, Some(_)) if self.probe != Some(ServiceProbe::Http) => {
                return Err((
                    f(&["probe_url"]),
                    "'probe_url' applies only to probe = \"http\"".into(),
                ));
            }
            _ => {}
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err((
                f(&["idle_timeout"]),
                "an idle timeout below 1s would cut off flows between two datagrams".into(),
            ));
        }
        if self.tcp_idle_timeout < Duration::from_secs(1) {
            return Err((
                f(&["tcp_idle_timeout"]),
                "an idle timeout below 1s would cut off connections between two writes".into(),
            ));
        }
        if self.max_flows == 0 || self.max_connections == 0 {
            let field = if self.max_flows == 0 {
                "max_flows"
            } else {
                "max_connections"
            };
            return Err((
                f(&[field]),
                "at least 1 (0 would refuse every client)".into(),
            ));
        }
        Ok(())
    }
}
