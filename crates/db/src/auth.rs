//! Users, API tokens and portal sessions.
//!
//! # Invariants
//!
//! - No secret is stored: a password as its Argon2id PHC string, a token or
//!   session secret as the hex SHA-256 of it. Hashing is the caller's (the
//!   controller's `auth` module); this layer only keeps and finds rows.
//! - Roles are kept as text (`viewer`, `operator`, `admin`; the schema
//!   checks them); the controller owns their meaning.
//! - A token is never deleted, only revoked, so the list shows who had
//!   access; a session is deleted at logout, expiry, or with its user.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DbError;

/// A portal or CLI user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id PHC string. Not serialized: it never leaves the controller.
    #[serde(skip_serializing, default)]
    pub password_hash: String,
    pub role: String,
    pub tenant: Option<String>,
    pub created: DateTime<Utc>,
}

/// An API token (its secret is not here, only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    #[serde(skip_serializing, default)]
    pub secret_hash: String,
    pub name: String,
    pub role: String,
    pub tenant: Option<String>,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub revoked: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Neither revoked nor expired at `now`.
    pub fn is_valid(&self, now: DateTime<Utc>) -> bool {
        self.revoked.is_none() && self.expires.is_none_or(|e| e > now)
    }
}

/// A portal login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_hash: String,
    pub user: String,
    pub csrf: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

#[async_trait::async_trait]
pub trait AuthRepo: Send + Sync {
    /// Add a user; false if one of that name exists (nothing changed).
    async fn add_user(&self, user: &UserRecord) -> Result<bool, DbError>;
    async fn user(&self, name: &str) -> Result<UserRecord, DbError>;
    /// Users by name.
    async fn users(&self) -> Result<Vec<UserRecord>, DbError>;
    /// Remove a user and end its sessions.
    async fn remove_user(&self, name: &str) -> Result<(), DbError>;

    async fn add_token(&self, token: &TokenRecord) -> Result<(), DbError>;
    async fn token(&self, id: &str) -> Result<TokenRecord, DbError>;
    /// The token whose secret hashes to `secret_hash`, valid or not.
    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRecord>, DbError>;
    /// Tokens by creation time.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, DbError>;
    /// Revoke a token (a second revoke keeps the first time).
    async fn revoke_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), DbError>;
    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), DbError>;

    /// Whether an operators'-side admin can log in or call: an admin user
    /// without tenant, or such a token valid at `now`.
    async fn has_admin(&self, now: DateTime<Utc>) -> Result<bool, DbError>;

    async fn add_session(&self, s: &SessionRecord) -> Result<(), DbError>;
    /// The session with this id hash if it has not expired at `now`.
    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>, DbError>;
    async fn remove_session(&self, id_hash: &str) -> Result<(), DbError>;
    /// Delete sessions expired at `now`; how many.
    async fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64, DbError>;
}
