//! What can go wrong at the front door.

use std::net::SocketAddr;

use standby_db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    #[error("service '{0}' not found")]
    UnknownService(String),
    #[error("unknown site '{0}'")]
    UnknownSite(String),
    #[error("service '{service}' has no backend at site '{site}' (it has {backends})")]
    NoBackend {
        service: String,
        site: String,
        backends: String,
    },
    #[error("service {0}: bad listen address")]
    BadListen(String),
    #[error("service {0}: bad backend address")]
    BadBackend(String),
    /// The address is taken (or not ours): retrying later may help.
    #[error("service {service}: unable to listen on {proto} {addr}")]
    Listen {
        service: String,
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The switch is recorded and the other targets follow it; this one
    /// may still send clients to the old site. Switching to the same site
    /// again (or restarting the controller) tells it again.
    #[error(
        "service {service}: the switch to {site} is recorded, but the {kind} target did not follow it and may still send clients to the old site (switch to {site} again to retry)"
    )]
    Target {
        service: String,
        kind: &'static str,
        site: String,
        #[source]
        source: Box<FrontDoorError>,
    },
    #[error("dns update of {name} in zone {zone} at {server} failed")]
    Dns {
        server: SocketAddr,
        zone: String,
        name: String,
        #[source]
        source: Box<crate::dns::DnsFailure>,
    },
    #[error("{what}: {reason}")]
    DnsConfig { what: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl FrontDoorError {
    /// Whether the same request may succeed later.
    pub fn is_temporary(&self) -> bool {
        match self {
            FrontDoorError::Listen { .. } => true,
            FrontDoorError::Db(e) => e.is_temporary(),
            FrontDoorError::Dns { source, .. } => source.is_temporary(),
            FrontDoorError::Target { source, .. } => source.is_temporary(),
            _ => false,
        }
    }
}
