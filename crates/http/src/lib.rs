//! The one way standby builds an HTTP client.
//!
//! Every client (the CLI, probes, webhooks, the `http` runbook action,
//! agents and object stores) is reqwest over rustls with the ring provider
//! only (see the workspace `Cargo.toml`): reqwest brings no provider of
//! its own and panics without a process default, so [`builder`] installs
//! ring once per process before anything is built.
//!
//! Proxies: traffic between standby's own parts (controller, agents,
//! probes of the sites) never goes through a proxy from the environment
//! ([`Reach::Internal`]); traffic to the outside (webhook receivers, the
//! `http` action, the CLI to its controller) honours the environment's
//! proxy settings ([`Reach::External`]).

/// Where a client's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// standby's own parts: never through a proxy.
    Internal,
    /// Elsewhere: the environment's proxies apply.
    External,
}

/// Install ring as rustls's process-wide provider (idempotent).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder for `reach`, with the TLS provider installed; callers
/// add their timeouts and pool settings.
pub fn builder(reach: Reach) -> reqwest::ClientBuilder {
    install_tls_provider();
    let b = reqwest::Client::builder();
    match reach {
        Reach::Internal => b.no_proxy(),
        Reach::External => b,
    }
}

/// The certificates of the PEM file at `path` (a CA, or a self-signed
/// server certificate), to trust with `add_root_certificate`; why not,
/// when the file cannot be read or holds no valid certificate.
pub fn pem_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", path.display()))
}
