//! HTTPS for the controller: rustls with the ring provider (no other
//! crypto provider is linked; `cargo tree -i aws-lc-sys` stays empty).
//!
//! [`TlsListener`] is an `axum::serve` listener: a task accepts TCP
//! connections and runs each handshake in its own task (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client holds up no one;
//! finished handshakes are handed to the server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server configuration of a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let bad = |what: &str, p: &Path, e: String| {
        ServerError::BadRequest(format!(
            "unable to read the TLS {what} {}: {e}",
            p.display()
        ))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("certificate", cert, "no CERTIFICATE in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Internal(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::BadRequest(format!("TLS certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepted and handshaken TLS connections.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Serve TLS on `tcp` until `cancel` fires.
    pub fn new(
        tcp: TcpListener,
        cfg: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: wait.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // Cancelled: nothing more comes (the server is shutting down).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
