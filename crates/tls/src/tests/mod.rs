//! Real TLS over loopback: a PKI in a temporary directory, servers on
//! `127.0.0.1:0`, reqwest clients.

mod handshake;
mod pki_files;
mod rotation;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::{Identity, Material, Refusal, TlsListener, TlsPeer, pki, require};

pub(crate) fn controller(name: &str) -> Identity {
    Identity::controller(name).unwrap()
}

pub(crate) fn agent(name: &str) -> Identity {
    Identity::agent(name).unwrap()
}

pub(crate) fn peer(name: &str) -> Identity {
    Identity::peer(name).unwrap()
}

/// A PKI directory with a CA and the given leaves.
pub(crate) fn pki_with(leaves: &[&Identity]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path()).unwrap();
    for who in leaves {
        pki::issue(dir.path(), who, 30).unwrap();
    }
    dir
}

/// A server of the agent API's shape, for as long as it lives.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub material: Arc<Material>,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// Serve, with `material`:
/// - `/whoami`: the client's identity (or "none") and leaf fingerprint;
/// - `/controller`: only for the controller `ctl1`.
pub(crate) async fn serve(material: Arc<Material>) -> Server {
    let cfg = crate::server_config(material.clone()).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    let listener = TlsListener::new(tcp, cfg, cancel.clone()).unwrap();
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/controller", get(controller_only));
    let stop = cancel.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<TlsPeer>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    });
    Server {
        addr,
        material,
        cancel,
    }
}

async fn whoami(ConnectInfo(peer): ConnectInfo<TlsPeer>) -> String {
    let who = peer
        .identity()
        .map_or("none".to_string(), |who| who.dns_name());
    format!("{who} {}", pki::fingerprint(&peer.certs[0]))
}

async fn controller_only(ConnectInfo(peer): ConnectInfo<TlsPeer>) -> Result<String, Refusal> {
    require(&peer, &[controller("ctl1")]).map(|who| who.dns_name())
}

pub(crate) fn material(dir: &Path, who: &Identity) -> Arc<Material> {
    Material::from_dir(dir, who).unwrap()
}

/// A client presenting `material`, expecting `expect`; a new connection
/// for every request, so each one is a handshake.
pub(crate) fn client(material: Arc<Material>, expect: Vec<Identity>) -> reqwest::Client {
    crate::reqwest_client(
        material,
        expect,
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .tls_info(true),
    )
    .unwrap()
}

/// The server's leaf fingerprint and the body of a GET.
pub(crate) async fn get_text(
    client: &reqwest::Client,
    url: &str,
) -> Result<(reqwest::StatusCode, String, String), String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| standby_types::error_chain(&e))?;
    let fp = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(pki::fingerprint)
        .unwrap_or_default();
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, fp, body))
}
