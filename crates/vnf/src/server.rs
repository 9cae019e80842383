//! The running VNF: UDP SIP loop, HTTP state endpoint, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registrar::{self, Action, Registrar};
use crate::{VnfError, VnfState};

/// Default size of a disk image created because it was missing: 64 MiB.
pub const DEFAULT_DISK_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    /// Raw disk image; created sparse with `disk_size` bytes if missing.
    pub disk: PathBuf,
    pub disk_size: u64,
    /// UDP address for SIP (port 0 = ephemeral).
    pub sip: SocketAddr,
    /// TCP address for HTTP (port 0 = ephemeral).
    pub http: SocketAddr,
}

type Shared = Arc<Mutex<Registrar>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Registrar> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A started VNF. Drop without [`Vnf::shutdown`] only at process exit.
pub struct Vnf {
    sip_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Shared,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Vnf {
    /// Open and replay the disk, bind both sockets, start serving.
    pub async fn start(config: &Config) -> Result<Vnf, VnfError> {
        let (name, disk, size) = (config.name.clone(), config.disk.clone(), config.disk_size);
        let registrar = tokio::task::spawn_blocking(move || Registrar::open(&name, &disk, size))
            .await
            .map_err(|e| VnfError::Task(e.to_string()))??;
        let shared: Shared = Arc::new(Mutex::new(registrar));

        let udp = UdpSocket::bind(config.sip)
            .await
            .map_err(|source| VnfError::Bind {
                what: "SIP",
                addr: config.sip,
                source,
            })?;
        let tcp = TcpListener::bind(config.http)
            .await
            .map_err(|source| VnfError::Bind {
                what: "HTTP",
                addr: config.http,
                source,
            })?;
        let sip_addr = udp.local_addr().map_err(|source| VnfError::Bind {
            what: "SIP",
            addr: config.sip,
            source,
        })?;
        let http_addr = tcp.local_addr().map_err(|source| VnfError::Bind {
            what: "HTTP",
            addr: config.http,
            source,
        })?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(sip_loop(
            Arc::new(udp),
            shared.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        let app = Router::new()
            .route("/state", get(get_state))
            .route("/health", get(|| async { "ok" }))
            .with_state(shared.clone());
        let stop = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = axum::serve(tcp, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "http server failed");
            }
        });
        tracing::info!(name = %config.name, sip = %sip_addr, http = %http_addr, "vnf serving");
        Ok(Vnf {
            sip_addr,
            http_addr,
            shared,
            cancel,
            tracker,
        })
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn state(&self) -> VnfState {
        lock(&self.shared).state()
    }

    /// Stop taking requests, finish in-flight writes and their answers.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("vnf stopped");
    }
}

async fn get_state(State(shared): State<Shared>) -> axum::Json<VnfState> {
    // The lock may be held across an fdatasync; do not block the runtime.
    let state = tokio::task::spawn_blocking(move || lock(&shared).state()).await;
    axum::Json(state.unwrap_or_else(|_| VnfState {
        name: String::new(),
        bindings: vec![],
        writes: 0,
        records: 0,
        last_seq: 0,
    }))
}

async fn sip_loop(
    udp: Arc<UdpSocket>,
    shared: Shared,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = udp.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match registrar::plan(&buf[..n], from) {
            Action::Ignore => {}
            Action::Reply(text) => send(&udp, &text, from).await,
            Action::Register { req, aor, changes } => {
                let shared = shared.clone();
                let udp = udp.clone();
                tracker.spawn(async move {
                    let n = changes.len();
                    let answer = tokio::task::spawn_blocking(move || {
                        let mut reg = lock(&shared);
                        match reg.commit(changes) {
                            Ok(()) => registrar::register_reply(&reg, &req, &aor),
                            Err(e) => {
                                tracing::error!(error = %e, %aor, "registration not persisted");
                                registrar::failure_reply(&req, &e)
                            }
                        }
                    })
                    .await;
                    match answer {
                        Ok(text) => {
                            tracing::debug!(%from, changes = n, "register answered");
                            send(&udp, &text, from).await;
                        }
                        Err(e) => tracing::error!(error = %e, "register task failed"),
                    }
                });
            }
        }
    }
}

async fn send(udp: &UdpSocket, text: &str, to: SocketAddr) {
    if let Err(e) = udp.send_to(text.as_bytes(), to).await {
        tracing::warn!(error = %e, %to, "unable to send SIP response");
    }
}
