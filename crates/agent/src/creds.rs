//! How a process proves who it is to the others, and knows whom it talks
//! to ([`Creds`]).
//!
//! With `[pki]` (see `docs/pki.md`) every connection between standby's
//! processes is mutual TLS ([`standby_tls`]), one certificate per role:
//! the controller presents `controller-NAME` to agents; an agent presents
//! `agent-NAME` as the server of its API and to the controller for
//! heartbeats and results, and `peer-NAME` when it copies into another
//! agent's datastore. Each side checks the other's role and name, so a
//! credential is refused in every role but its own. Without `[pki]`, a
//! remote agent is reached over plain HTTP with its shared token: a lab on
//! one machine, nothing more.

use std::sync::Arc;

pub use standby_tls::{Identity, Material, Role};
use standby_types::config::{Config, Pki};

use crate::error::AgentError;

/// This process's credentials toward other standby processes.
#[derive(Clone)]
pub enum Creds {
    /// Plain HTTP with an agent's shared token (None: no token).
    Token(Option<String>),
    /// Mutual TLS with this material (one identity).
    Tls(Arc<Material>),
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Creds::Token(t) => write!(f, "Token({})", if t.is_some() { "set" } else { "none" }),
            Creds::Tls(m) => write!(f, "Tls({})", m.fingerprint()),
        }
    }
}

fn bad(e: standby_tls::Error) -> AgentError {
    AgentError::BadRequest(standby_types::error_chain(&e))
}

/// The identity of `role` `name`, or a clear error for a name that cannot
/// be one.
pub fn identity(role: standby_tls::Role, name: &str) -> Result<Identity, AgentError> {
    Identity::new(role, name).map_err(bad)
}

/// The material of `who` in `[pki] dir`.
pub fn material(pki: &Pki, who: &Identity) -> Result<Arc<Material>, AgentError> {
    Material::from_dir(&pki.dir, who).map_err(bad)
}

/// The controllers whose calls agents take (`[pki] controllers`, default
/// this configuration's controller).
pub fn controllers(cfg: &Config) -> Result<Vec<Identity>, AgentError> {
    let names = match &cfg.pki {
        Some(p) if !p.controllers.is_empty() => p.controllers.clone(),
        _ => vec![cfg.controller.name.clone()],
    };
    names
        .iter()
        .map(|n| identity(standby_tls::Role::Controller, n))
        .collect()
}

impl Creds {
    /// An HTTP client that reaches a server that must be `expect` (with
    /// TLS; with a token, any server at the URL).
    pub fn client(
        &self,
        expect: Vec<Identity>,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, AgentError> {
        match self {
            Creds::Token(_) => builder
                .build()
                .map_err(|e| AgentError::Internal(format!("HTTP client: {e}"))),
            Creds::Tls(m) => standby_tls::reqwest_client(m.clone(), expect, builder).map_err(bad),
        }
    }

    /// The bearer token to send, if any.
    pub fn token(&self) -> Option<&str> {
        match self {
            Creds::Token(t) => t.as_deref(),
            Creds::Tls(_) => None,
        }
    }
}
