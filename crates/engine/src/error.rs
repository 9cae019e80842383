//! Errors of the engine. Each says what failed on what, and
//! [`EngineError::code`] gives its stable code and whether retrying can
//! help; the HTTP edge (`standby-server`) turns them into API errors.

use standby_agent::AgentError;
use standby_db::DbError;
use standby_frontdoor::FrontDoorError;
use standby_hv::HvError;
use standby_store::StoreError;

pub use standby_types::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// No reachable copy of a point could be restored (each copy missing
    /// it, unreachable or damaged): an older point may do.
    #[error("no datastore could restore point {point} ({})", tried.join("; "))]
    PointUnreadable { point: String, tried: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    /// A wait that ran out of time (a step's or a command's timeout, a
    /// check that never passed): the same request may succeed later.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error(transparent)]
    FrontDoor(#[from] FrontDoorError),
    /// A host operation, here or at a remote agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        EngineError::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// The stable code and whether retrying can help.
    pub fn code(&self) -> (&str, bool) {
        match self {
            EngineError::NotFound { .. } | EngineError::Db(DbError::NotFound { .. }) => {
                ("not_found", false)
            }
            EngineError::Conflict(_) | EngineError::PointUnreadable { .. } => ("conflict", true),
            EngineError::BadRequest(_) => ("bad_request", false),
            EngineError::Timeout(_) => ("timeout", true),
            EngineError::Db(e) => ("database", e.is_temporary()),
            EngineError::Store(e) => ("datastore", e.is_temporary()),
            EngineError::Hv(e) => ("hypervisor", e.is_temporary()),
            EngineError::FrontDoor(e) => match e {
                FrontDoorError::UnknownService(_) => ("not_found", false),
                FrontDoorError::UnknownSite(_)
                | FrontDoorError::NoBackend { .. }
                | FrontDoorError::BadListen(_) => ("bad_request", false),
                FrontDoorError::Listen { .. } => ("conflict", true),
                FrontDoorError::Db(e) => ("database", e.is_temporary()),
                // A DNS server that did not answer may answer a retry.
                FrontDoorError::Target { .. } | FrontDoorError::Dns { .. } if e.is_temporary() => {
                    ("unreachable", true)
                }
                // A service the forwarder does not know, or a DNS server
                // refusing the key or the policy: the same fails again.
                FrontDoorError::BadBackend(_)
                | FrontDoorError::Target { .. }
                | FrontDoorError::Dns { .. }
                | FrontDoorError::DnsConfig { .. } => ("internal", false),
            },
            EngineError::Agent(e) => match e {
                AgentError::Unreachable { .. } => ("unreachable", true),
                AgentError::Remote {
                    code, retryable, ..
                } => match code.as_str() {
                    "not_found" | "conflict" | "bad_request" | "forbidden" | "timeout"
                    | "datastore" | "hypervisor" | "io" => (code.as_str(), *retryable),
                    _ => ("agent", *retryable),
                },
                other => other.code(),
            },
            // A bug or a broken invariant: the same request fails again.
            EngineError::Internal(_) => ("internal", false),
        }
    }

    /// A failure of the datastore read or written (here or at a remote
    /// agent): another copy may do.
    pub fn is_datastore(&self) -> bool {
        match self {
            EngineError::Store(_) => true,
            EngineError::Agent(e) => e.is_datastore(),
            _ => false,
        }
    }
}

impl From<tokio::task::JoinError> for EngineError {
    fn from(e: tokio::task::JoinError) -> Self {
        EngineError::Internal(format!("background task failed: {e}"))
    }
}
