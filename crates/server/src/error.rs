use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use standby_agent::AgentError;
use standby_db::DbError;
use standby_frontdoor::FrontDoorError;
use standby_hv::HvError;
use standby_store::StoreError;
use standby_types::api::ApiError;

/// Errors of the controller. Each maps to an HTTP status, a stable code
/// and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// No or bad credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role is too low (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error(transparent)]
    FrontDoor(#[from] FrontDoorError),
    #[error("{0}")]
    Internal(String),
    /// A host operation, here or at a remote agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl ServerError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        ServerError::NotFound {
            kind,
            name: name.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, bool) {
        match self {
            ServerError::NotFound { .. } | ServerError::Db(DbError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found", false)
            }
            ServerError::Conflict(_) => (StatusCode::CONFLICT, "conflict", true),
            ServerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", false),
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", false),
            ServerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", false),
            ServerError::Db(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "database",
                e.is_temporary(),
            ),
            ServerError::Store(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "datastore",
                e.is_temporary(),
            ),
            ServerError::Hv(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "hypervisor",
                e.is_temporary(),
            ),
            ServerError::FrontDoor(e) => match e {
                FrontDoorError::UnknownService(_) => (StatusCode::NOT_FOUND, "not_found", false),
                FrontDoorError::UnknownSite(_)
                | FrontDoorError::NoBackend { .. }
                | FrontDoorError::BadListen(_) => (StatusCode::BAD_REQUEST, "bad_request", false),
                FrontDoorError::Listen { .. } => (StatusCode::CONFLICT, "conflict", true),
                FrontDoorError::Db(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "database",
                    e.is_temporary(),
                ),
                FrontDoorError::BadBackend(_) | FrontDoorError::Target { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal", true)
                }
            },
            ServerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", true),
            ServerError::Agent(e) => {
                let (code, retryable) = e.code();
                match (code, e) {
                    (_, AgentError::Unreachable { .. }) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "unreachable", true)
                    }
                    ("not_found", _) => (StatusCode::NOT_FOUND, "not_found", retryable),
                    ("conflict", _) => (StatusCode::CONFLICT, "conflict", retryable),
                    ("bad_request", _) => (StatusCode::BAD_REQUEST, "bad_request", retryable),
                    ("datastore", _) => (StatusCode::INTERNAL_SERVER_ERROR, "datastore", retryable),
                    ("hypervisor", _) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "hypervisor", retryable)
                    }
                    ("internal", AgentError::Io { .. } | AgentError::Internal(_)) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "internal", retryable)
                    }
                    _ => (StatusCode::BAD_GATEWAY, "agent", retryable),
                }
            }
        }
    }

    /// A failure of the datastore read or written (here or at a remote
    /// agent): another copy may do.
    pub fn is_datastore(&self) -> bool {
        match self {
            ServerError::Store(_) => true,
            ServerError::Agent(e) => e.is_datastore(),
            _ => false,
        }
    }

    pub fn to_api(&self) -> ApiError {
        let (_, code, retryable) = self.parts();
        ApiError {
            code: code.to_string(),
            message: error_chain(self),
            retryable,
        }
    }
}

pub use standby_types::error_chain;

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        (status, axum::Json(self.to_api())).into_response()
    }
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(e: tokio::task::JoinError) -> Self {
        ServerError::Internal(format!("background task failed: {e}"))
    }
}
