//! TCP forwarding: accept, connect to the active backend, copy both ways
//! until either side closes, the service is switched, the connection is
//! idle for `tcp_idle_timeout` or the controller stops. At most
//! `max_connections` per service are open; a client beyond is closed at
//! accept and counted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
                // The cap counts from accept, so a flood of connects to a
                // slow site cannot exceed it either.
                let open = lane.connections_open.fetch_add(1, Ordering::Relaxed);
                if open >= lane.max_connections as u64 {
                    lane.connections_open.fetch_sub(1, Ordering::Relaxed);
                    bump(&lane.connections_refused, 1);
                    tracing::debug!(service = %lane.name, %peer, max = lane.max_connections, "tcp connection refused: max_connections open");
                    // Dropped: closed at once.
                    drop(client);
                    continue;
                }
                let held = Held(lane.clone());
                let (lane, cancel) = (lane.clone(), cancel.clone());
                tasks.spawn(async move {
                    let _held = held;
                    forward(lane, client, peer, cancel).await
                });
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

/// Gives back a place under `max_connections` when the connection ends.
struct Held(Arc<Lane>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
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
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        inner: client,
        stats: stats.clone(),
        count: |s| &s.bytes_to_site,
        last: last.clone(),
        start,
    };
    let mut upstream = Counted {
        inner: upstream,
        stats: stats.clone(),
        count: |s| &s.bytes_to_clients,
        last: last.clone(),
        start,
    };
    let generation = route.generation;
    let idle = lane.tcp_idle_timeout;
    let idle_ms = idle.as_millis() as u64;
    let silent = async {
        let mut tick = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        );
        loop {
            tick.tick().await;
            let now = start.elapsed().as_millis() as u64;
            if now.saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                return;
            }
        }
    };
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
        _ = silent => {
            bump(&lane.connections_idle_closed, 1);
            tracing::debug!(service = %lane.name, %peer, "tcp connection closed: idle for {idle:?}");
        }
        _ = cancel.cancelled() => {}
    }
}

/// A stream that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    stats: Arc<SiteStats>,
    count: fn(&SiteStats) -> &AtomicU64,
    /// Milliseconds after `start` of the last byte either way.
    last: Arc<AtomicU64>,
    start: Instant,
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
            if n > 0 {
                let now = self.start.elapsed().as_millis() as u64;
                self.last.store(now, Ordering::Relaxed);
            }
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
