//! Mutual TLS between standby's own processes: the controller and its
//! agents, and agents copying data to each other.
//!
//! # Identities
//! Every certificate carries exactly one DNS subjectAltName,
//! `<name>.<role>.standby` ([`Identity::dns_name`]), the name being a
//! config name (letters, digits, '-', '_'; compared case-insensitively,
//! as DNS names are). Three roles, three certificates, so a credential is
//! refused in any role but its own:
//!
//! | role                | presented by   | as                                              |
//! |---------------------|----------------|-------------------------------------------------|
//! | [`Role::Controller`]| the controller | client of its calls to agents; server of its agent-facing listener |
//! | [`Role::Agent`]     | an agent       | server of its API; client of its heartbeats     |
//! | [`Role::Peer`]      | an agent       | client when it copies data into another agent's datastore |
//!
//! Whether a certificate is good for an identity is webpki's answer
//! ([`presents`]); there is no X.509 parser here (`der` reads two fields
//! for messages only).
//!
//! # Trust
//! One private CA, files in a directory ([`pki`]): `ca.pem`, the trust
//! bundle (several CAs during a CA rotation), `ca.key`, and
//! `ROLE-NAME.pem`/`.key` per identity. A handshake requires a
//! certificate chaining to the bundle at both ends ([`server_config`],
//! [`client_config`]): a server asks every client for one, and a client
//! checks the server against the identities it expects, never against
//! the URL's host (agents are reached by address). The server then
//! decides per route which client identities it accepts ([`require`]
//! with the [`TlsPeer`] of the connection).
//!
//! # Rotation without restarts
//! A process holds a [`Material`]: bundle, chain and key, looked at (file
//! metadata only) at most once a second from the handshake path and
//! re-read when one changed. New connections use the new material;
//! established ones are left alone. A file that does not load keeps the
//! previous material (with a warning): a bad file never leaves a process
//! without TLS. Sessions are never resumed, since a resumed session
//! skips the checks a rotation changes.
//!
//! # Invariants
//! - Files are replaced atomically (temporary file, rename); keys are
//!   created 0600 before anything is written to them.
//! - rustls with the ring provider only; nothing links aws-lc.

mod config;
mod der;
mod error;
mod files;
mod identity;
mod material;
pub mod pki;
mod serve;

pub use config::{client_config, reqwest_client, server_config};
pub use error::{Error, Result};
pub use identity::{
    DOMAIN, Identity, MAX_NAME, Role, identity_of, presents, role_of, validate_name,
};
pub use material::{CHECK_INTERVAL, Material};
pub use serve::{HANDSHAKE_TIMEOUT, Refusal, TlsListener, TlsPeer, require};

#[cfg(test)]
mod tests;
