//! TCP forwarding: accept, connect to the active backend, copy both ways
//! until either side closes, the service is switched or the controller
//! stops.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Lane, SiteStats, bump};

/// How long a connect to the site may take before the client is dropped.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Accept until `cancel`; each connection runs in its own task.
pub(super) async fn run(
    lane: Arc<Lane>,
    listener: TcpListener,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, peer)) => {
                tasks.spawn(forward(lane.clone(), client, peer, cancel.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, not spin.
                let site = lane.route.borrow().site.clone();
                bump(&lane.stats(&site).errors, 1);
                tracing::warn!(service = %lane.name, error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Decrements `connections_active` when the connection ends.
struct Open(Arc<SiteStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    lane: Arc<Lane>,
    client: TcpStream,
    peer: std::net::SocketAddr,
    cancel: CancellationToken,
) {
    let mut routes = lane.route.subscribe();
    let route = routes.borrow_and_update().clone();
    let stats = lane.stats(&route.site);
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.backend))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            bump(&stats.errors, 1);
            tracing::warn!(service = %lane.name, %peer, backend = %route.backend, error = %e, "unable to connect to the site");
            return;
        }
        Err(_) => {
            bump(&stats.errors, 1);
            tracing::warn!(service = %lane.name, %peer, backend = %route.backend, "connect to the site timed out after {CONNECT_TIMEOUT:?}");
            return;
        }
    };
    bump(&stats.connections, 1);
    bump(&stats.connections_active, 1);
    let _open = Open(stats.clone());
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut client = Counted {
        inner: client,
        stats: stats.clone(),
        count: |s| &s.bytes_to_site,
    };
    let mut upstream = Counted {
        inner: upstream,
        stats: stats.clone(),
        count: |s| &s.bytes_to_clients,
    };
    let generation = route.generation;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                bump(&stats.errors, 1);
                tracing::debug!(service = %lane.name, %peer, error = %e, "tcp connection failed");
            }
        }
        _ = routes.wait_for(|r| r.generation != generation) => {
            tracing::debug!(service = %lane.name, %peer, site = %route.site, "service switched; tcp connection closed");
        }
        _ = cancel.cancelled() => {}
    }
}

/// A stream that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    stats: Arc<SiteStats>,
    count: fn(&SiteStats) -> &AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = (buf.filled().len() - before) as u64;
            bump((self.count)(&self.stats), n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
