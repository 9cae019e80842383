//! Errors at the HTTP edge: the engine's errors and the API's own
//! (credentials, roles, malformed requests), each mapped to an HTTP
//! status, a stable code and whether retrying can help.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use standby_engine::EngineError;
use standby_types::api::ApiError;

pub use standby_types::error_chain;

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
    /// A body larger than the route reads (413).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
    /// Too many attempts: wait this many seconds (429, `Retry-After`).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// No capacity now (503, `Retry-After: 1`).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Everything the engine's error takes in reaches the API through it.
macro_rules! through_engine {
    ($($t:ty),*) => {$(
        impl From<$t> for ServerError {
            fn from(e: $t) -> Self {
                ServerError::Engine(e.into())
            }
        }
    )*};
}
through_engine!(
    standby_db::DbError,
    standby_store::StoreError,
    standby_hv::HvError,
    standby_frontdoor::FrontDoorError,
    standby_agent::AgentError,
    tokio::task::JoinError
);

impl ServerError {
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        ServerError::NotFound {
            kind,
            name: name.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &str, bool) {
        let (code, retryable) = match self {
            ServerError::NotFound { .. } => ("not_found", false),
            ServerError::Conflict(_) => ("conflict", true),
            ServerError::Unauthorized(_) => ("unauthorized", false),
            ServerError::Forbidden(_) => ("forbidden", false),
            ServerError::BadRequest(_) => ("bad_request", false),
            ServerError::TooLarge(_) => ("too_large", false),
            ServerError::Internal(_) => ("internal", false),
            ServerError::TooManyRequests { .. } => ("too_many_requests", true),
            ServerError::Busy(_) => ("busy", true),
            ServerError::Engine(e) => e.code(),
        };
        (status_of(code), code, retryable)
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

/// The HTTP status of an error code (`docs/api.md`); the agent API
/// answers its codes with the same statuses.
fn status_of(code: &str) -> StatusCode {
    match code {
        "not_found" => StatusCode::NOT_FOUND,
        "conflict" | "stale_session" | "replayed" => StatusCode::CONFLICT,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "bad_request" => StatusCode::BAD_REQUEST,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
        "busy" => StatusCode::SERVICE_UNAVAILABLE,
        "unreachable" => StatusCode::SERVICE_UNAVAILABLE,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "agent" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let retry_after = match &self {
            ServerError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            ServerError::Busy(_) => Some(1),
            _ => None,
        };
        let mut r = (status, axum::Json(self.to_api())).into_response();
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_agent::AgentError;

    /// Status, code and retryable of each kind of error, as the API
    /// answers it (`docs/api.md`).
    #[test]
    fn errors_map_to_status_code_and_retryable() {
        let remote = |code: &str, retryable| AgentError::Remote {
            host: "h1".into(),
            code: code.into(),
            message: "m".into(),
            retryable,
        };
        let cases: Vec<(ServerError, u16, &str, bool)> = vec![
            (
                EngineError::Timeout("timed out after 1s".into()).into(),
                504,
                "timeout",
                true,
            ),
            (
                EngineError::Internal("a bug".into()).into(),
                500,
                "internal",
                false,
            ),
            (
                ServerError::Internal("a bug".into()),
                500,
                "internal",
                false,
            ),
            (
                EngineError::Conflict("lock held".into()).into(),
                409,
                "conflict",
                true,
            ),
            (
                EngineError::not_found("group", "g").into(),
                404,
                "not_found",
                false,
            ),
            (remote("timeout", true).into(), 504, "timeout", true),
            (remote("internal", false).into(), 502, "agent", false),
            (
                AgentError::Io {
                    what: "unable to read a disk".into(),
                    source: std::io::Error::other("EIO"),
                }
                .into(),
                500,
                "io",
                true,
            ),
            (
                AgentError::Internal("a bug".into()).into(),
                500,
                "internal",
                false,
            ),
        ];
        for (e, status, code, retryable) in cases {
            let api = e.to_api();
            assert_eq!((api.code.as_str(), api.retryable), (code, retryable), "{e}");
            assert_eq!(e.into_response().status().as_u16(), status, "{code}");
        }
    }
}
