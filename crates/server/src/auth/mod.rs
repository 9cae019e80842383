//! Who is calling, and what they may see and do.
//!
//! Every request under `/api/v1` (but health) and every portal page runs
//! as a [`Principal`]: a user or API token with a [`Role`] and, for a
//! customer, a tenant. Handlers take the principal as an extractor and
//! narrow what they return with [`Principal::sees`]; an object of another
//! tenant is answered as not found (404), never as forbidden, so its
//! existence does not leak.
//!
//! The layer that authenticates requests (tokens, portal sessions, CSRF)
//! is [`layer`].

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// What a principal may do, each role including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in its scope.
    Viewer,
    /// Also acts: points, restores, drills, moves, failovers, acks.
    Operator,
    /// Also manages users, tokens and fences.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected viewer, operator or admin)"
            )),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// User name, or `token:<id>` for an API token.
    pub name: String,
    pub role: Role,
    /// `Some(t)`: a tenant's user, who sees tenant `t`'s objects only.
    /// `None`: the operators' side, who see everything.
    pub tenant: Option<String>,
}

impl Principal {
    /// Whether an object owned by `owner` (None: not a tenant's) is
    /// visible to this principal.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match &self.tenant {
            None => true,
            Some(t) => owner == Some(t.as_str()),
        }
    }

    /// 403 unless the principal has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ServerError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ServerError::Forbidden(format!(
                "{} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// An object of another tenant: reported as not found.
    pub fn check(
        &self,
        owner: Option<&str>,
        kind: &'static str,
        name: &str,
    ) -> Result<(), ServerError> {
        if self.sees(owner) {
            Ok(())
        } else {
            Err(ServerError::not_found(kind, name))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ServerError::Unauthorized("authentication required".into()))
    }
}

/// Authenticates every request and puts its [`Principal`] in the
/// request's extensions.
///
/// PLACEHOLDER until authentication lands: every caller is an admin.
pub async fn layer(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut().insert(Principal {
        name: "anonymous".into(),
        role: Role::Admin,
        tenant: None,
    });
    next.run(req).await
}
