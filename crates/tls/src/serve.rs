//! Serving TLS with axum, and who is calling.
//!
//! [`TlsListener`] is an `axum::serve` listener: a task accepts TCP
//! connections and runs each handshake in its own task (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or silent client holds up no one;
//! finished handshakes are handed to the server. Served with
//! `into_make_service_with_connect_info::<TlsPeer>()`, each request has
//! the client's certificates as `ConnectInfo<TlsPeer>`; [`require`] tells
//! whether they present an identity the route allows.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::identity::{Identity, Role, identity_of, presents};

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
                // An answer is several TLS records: without this, Nagle's
                // algorithm and the client's delayed ACK hold the last one
                // back for 40 ms.
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake refused: {e}"),
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

/// The client of a connection: its address and the certificates it
/// presented (leaf first; empty if it presented none).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

impl TlsPeer {
    /// The identity the client's certificate claims, for logs.
    pub fn identity(&self) -> Option<Identity> {
        identity_of(&self.certs)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> TlsPeer {
        let certs = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        TlsPeer {
            addr: *stream.remote_addr(),
            certs: Arc::new(certs),
        }
    }
}

/// Why a client's certificate does not do for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client presented no certificate (a listener of
    /// [`crate::server_config`] refuses those in the handshake).
    NoCertificate,
    /// The certificate presents none of the allowed identities.
    NotAllowed {
        /// Who it is, if it is a standby identity.
        presented: Option<Identity>,
        allowed: Vec<Identity>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (presented, allowed) = match self {
            Refusal::NoCertificate => return f.write_str("no client certificate"),
            Refusal::NotAllowed { presented, allowed } => (presented, allowed),
        };
        let mut roles: Vec<Role> = allowed.iter().map(|a| a.role).collect();
        roles.sort();
        roles.dedup();
        match presented {
            Some(p) if !roles.contains(&p.role) => {
                let needed: Vec<&str> = roles.iter().map(|r| r.a_certificate()).collect();
                write!(
                    f,
                    "client certificate is {}, this route needs {}",
                    p.describe(),
                    needed.join(" or ")
                )
            }
            _ => {
                if let Some(p) = presented {
                    write!(f, "client certificate is {}, it ", p.describe())?;
                } else {
                    f.write_str("client certificate ")?;
                }
                let names: Vec<String> = allowed.iter().map(Identity::dns_name).collect();
                write!(f, "is not valid for any of: {}", names.join(", "))
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// 403, the refusal as the body.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.to_string()).into_response()
    }
}

/// The identity among `allowed` the client presents. The chain was
/// checked by the handshake; this checks the name and role only.
pub fn require(peer: &TlsPeer, allowed: &[Identity]) -> Result<Identity, Refusal> {
    if peer.certs.is_empty() {
        return Err(Refusal::NoCertificate);
    }
    match allowed.iter().find(|who| presents(&peer.certs, who)) {
        Some(who) => Ok(who.clone()),
        None => Err(Refusal::NotAllowed {
            presented: peer.identity(),
            allowed: allowed.to_vec(),
        }),
    }
}
