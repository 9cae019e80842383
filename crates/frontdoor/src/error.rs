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
    #[error("service {service}: the {kind} target did not follow the switch to {site}")]
    Target {
        service: String,
        kind: &'static str,
        site: String,
        #[source]
        source: Box<FrontDoorError>,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}
