//! What can go wrong at a host, here or at a remote agent.

use standby_hv::HvError;
use standby_store::StoreError;
use standby_types::api::ApiError;

/// Errors of host operations. Each has a stable code (the agent API's and
/// the controller API's) and says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    /// The request does not fit the host's state (a fenced site, a VM of
    /// another kind, a point without the VM's disk).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The agent's own policy refuses the request (a command not allowed,
    /// a disk outside its disk directory): the same request fails again.
    #[error("{0}")]
    Forbidden(String),
    /// A wait that ran out of time (a drill copy that never answered).
    #[error("{0}")]
    Timeout(String),
    /// No or bad credentials on the agent API.
    #[error("{0}")]
    Unauthorized(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hv(#[from] HvError),
    /// Local I/O of the host (disk files, the fence flag).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// A call that names a stale session (`stale_session`: ask for the
    /// session again) or a counter used before (`replayed`).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The agent that runs `host` cannot be reached (or did not answer in
    /// time). Retryable: the link may come back.
    #[error("agent of host {host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    /// The agent that runs `host` answered with an error.
    #[error("host {host}: {message}")]
    Remote {
        host: String,
        code: String,
        message: String,
        retryable: bool,
    },
}

impl AgentError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        AgentError::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Io { what, source }
    }

    /// The stable code and whether retrying can help.
    pub fn code(&self) -> (&str, bool) {
        match self {
            AgentError::NotFound { .. } => ("not_found", false),
            AgentError::Conflict(_) => ("conflict", true),
            AgentError::BadRequest(_) => ("bad_request", false),
            AgentError::Forbidden(_) => ("forbidden", false),
            AgentError::Timeout(_) => ("timeout", true),
            AgentError::Unauthorized(_) => ("unauthorized", false),
            AgentError::Store(e) => ("datastore", e.is_temporary()),
            AgentError::Hv(e) => ("hypervisor", e.is_temporary()),
            // The host's disk or files: may pass (space freed, a mount back).
            AgentError::Io { .. } => ("io", true),
            AgentError::Internal(_) => ("internal", false),
            AgentError::Refused { code, .. } => (code, *code == "stale_session"),
            AgentError::Unreachable { .. } => ("unreachable", true),
            AgentError::Remote {
                code, retryable, ..
            } => (code.as_str(), *retryable),
        }
    }

    /// A failure of the datastore read or written (here or at a remote
    /// agent): another copy may do.
    pub fn is_datastore(&self) -> bool {
        self.code().0 == "datastore"
    }

    pub fn to_api(&self) -> ApiError {
        let (code, retryable) = self.code();
        ApiError {
            code: code.to_string(),
            message: standby_types::error_chain(self),
            retryable,
        }
    }
}

impl From<tokio::task::JoinError> for AgentError {
    fn from(e: tokio::task::JoinError) -> Self {
        AgentError::Internal(format!("background task failed: {e}"))
    }
}
