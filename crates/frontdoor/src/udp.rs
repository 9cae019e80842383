//! UDP forwarding: one socket on the listen address; per client address a
//! flow with its own upstream socket connected to the active backend, so
//! the backend's replies are told apart by the socket they arrive on and
//! go back to that client from the listen socket.

use std::hash::RandomState;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Lane, SiteStats, bump};

/// Largest UDP payload.
const BUF: usize = 65_536;

/// Milliseconds since the forwarder started, for `last_seen`.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// One client's flow: the upstream socket and the task relaying replies.
struct Flow {
    upstream: Arc<UdpSocket>,
    stats: Arc<SiteStats>,
    replies: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        // Closes the upstream socket: nothing more from that site reaches
        // the client through this flow.
        self.replies.abort();
    }
}

/// Flows by client address, bounded, with idle expiry, in order of
/// activity: a client's datagram moves its flow to the back, so the front
/// is the least recently active and a new client in a full table evicts it
/// in constant time (a spoofed source per datagram costs a hash insert and
/// a pop, never a scan). Replies from the site refresh `last_seen` without
/// reordering (they come from another task); eviction gives a front flow
/// whose replies are newer than its place a second chance, a bounded
/// number of times. The map hashes with SipHash under a random key
/// (`RandomState`), so chosen source addresses cannot collide on purpose.
pub(super) struct FlowTable<F> {
    cap: usize,
    flows: LinkedHashMap<SocketAddr, Entry<F>, RandomState>,
}

struct Entry<F> {
    generation: u64,
    last_seen: Arc<AtomicU64>,
    /// `last_seen` when the flow took its place in the order.
    placed: u64,
    flow: F,
}

/// How many front flows an eviction may send back for their recent
/// replies before it evicts the front one anyway.
const SECOND_CHANCES: usize = 4;

impl<F> FlowTable<F> {
    pub(super) fn new(cap: usize) -> Self {
        FlowTable {
            cap: cap.max(1),
            flows: LinkedHashMap::with_hasher(RandomState::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    /// The flow of `client` if it was made for route `generation`, marked
    /// active at `now` (moved to the back); a flow of an older route is
    /// dropped.
    fn touch(&mut self, client: &SocketAddr, generation: u64, now: u64) -> Option<&Entry<F>> {
        if self
            .flows
            .get(client)
            .is_some_and(|e| e.generation != generation)
        {
            self.flows.remove(client);
            return None;
        }
        let e = self.flows.to_back(client)?;
        e.last_seen.store(now, Ordering::Relaxed);
        e.placed = now;
        Some(e)
    }

    /// Add a flow; when full, the least recently active one goes first.
    /// Returns whether one was evicted. Constant time.
    pub(super) fn insert(
        &mut self,
        client: SocketAddr,
        generation: u64,
        last_seen: Arc<AtomicU64>,
        flow: F,
    ) -> bool {
        let mut evicted = false;
        if self.flows.len() >= self.cap && !self.flows.contains_key(&client) {
            for _ in 0..SECOND_CHANCES {
                let Some((_, front)) = self.flows.front() else {
                    break;
                };
                let last = front.last_seen.load(Ordering::Relaxed);
                if last <= front.placed {
                    break;
                }
                // Replies since it was placed: not the least active.
                if let Some((a, mut e)) = self.flows.pop_front() {
                    e.placed = last;
                    self.flows.insert(a, e);
                }
            }
            evicted = self.flows.pop_front().is_some();
        }
        let placed = last_seen.load(Ordering::Relaxed);
        self.flows.insert(
            client,
            Entry {
                generation,
                last_seen,
                placed,
                flow,
            },
        );
        evicted
    }

    /// Drop flows silent for `idle` ms at `now`; returns how many. A scan,
    /// but once per sweep interval, not per datagram.
    pub(super) fn expire(&mut self, now: u64, idle: u64) -> usize {
        let before = self.flows.len();
        self.flows
            .retain(|_, e| now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < idle);
        before - self.flows.len()
    }

    /// Drop flows made for another route; returns how many.
    pub(super) fn keep_generation(&mut self, generation: u64) -> usize {
        let before = self.flows.len();
        self.flows.retain(|_, e| e.generation == generation);
        before - self.flows.len()
    }
}

/// Forward until `cancel`.
pub(super) async fn run(lane: Arc<Lane>, sock: UdpSocket, cancel: CancellationToken) {
    let sock = Arc::new(sock);
    let clock = Clock(Instant::now());
    let idle = lane.idle_timeout.as_millis() as u64;
    let mut table: FlowTable<Flow> = FlowTable::new(lane.max_flows);
    let mut routes = lane.route.subscribe();
    let mut sweep = tokio::time::interval(
        (lane.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; BUF];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = routes.changed() => {
                if changed.is_err() {
                    break;
                }
                let generation = routes.borrow_and_update().generation;
                let n = table.keep_generation(generation);
                tracing::debug!(service = %lane.name, flows = n, "service switched; udp flows closed");
            }
            _ = sweep.tick() => {
                let n = table.expire(clock.now(), idle);
                bump(&lane.flows_expired, n as u64);
            }
            r = sock.recv_from(&mut buf) => {
                let (n, client) = match r {
                    Ok(v) => v,
                    Err(e) => {
                        let site = lane.route.borrow().site.clone();
                        bump(&lane.stats(&site).errors, 1);
                        tracing::debug!(service = %lane.name, error = %e, "udp receive failed");
                        continue;
                    }
                };
                let route = lane.route.borrow().clone();
                let now = clock.now();
                if table.touch(&client, route.generation, now).is_none() {
                    let stats = lane.stats(&route.site);
                    let upstream = match connect(route.backend).await {
                        Ok(u) => Arc::new(u),
                        Err(e) => {
                            bump(&stats.errors, 1);
                            tracing::warn!(service = %lane.name, backend = %route.backend, error = %e, "unable to open a udp flow");
                            continue;
                        }
                    };
                    let last_seen = Arc::new(AtomicU64::new(now));
                    let replies = tokio::spawn(relay_replies(
                        lane.clone(),
                        upstream.clone(),
                        sock.clone(),
                        client,
                        route.generation,
                        stats.clone(),
                        last_seen.clone(),
                        clock,
                    ));
                    bump(&stats.flows, 1);
                    let flow = Flow { upstream, stats, replies };
                    if table.insert(client, route.generation, last_seen, flow) {
                        bump(&lane.flows_evicted, 1);
                    }
                }
                let Some(entry) = table.touch(&client, route.generation, now) else {
                    continue;
                };
                let flow = &entry.flow;
                match flow.upstream.send(&buf[..n]).await {
                    Ok(_) => {
                        bump(&flow.stats.packets_to_site, 1);
                        bump(&flow.stats.bytes_to_site, n as u64);
                    }
                    Err(e) => {
                        bump(&flow.stats.errors, 1);
                        tracing::debug!(service = %lane.name, %client, error = %e, "udp send to site failed");
                    }
                }
            }
        }
        lane.flows_active
            .store(table.len() as u64, Ordering::Relaxed);
    }
    lane.flows_active.store(0, Ordering::Relaxed);
}

/// An ephemeral socket connected to `backend`.
async fn connect(backend: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(backend).await?;
    Ok(s)
}

/// Send the site's replies on this flow back to `client`, as long as the
/// route is the one the flow was made for.
#[allow(clippy::too_many_arguments)]
async fn relay_replies(
    lane: Arc<Lane>,
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    generation: u64,
    stats: Arc<SiteStats>,
    last_seen: Arc<AtomicU64>,
    clock: Clock,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match upstream.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                // ICMP port unreachable from the site: the datagram is
                // lost, the flow stays.
                bump(&stats.errors, 1);
                tracing::debug!(service = %lane.name, %client, error = %e, "udp receive from site failed");
                continue;
            }
        };
        if lane.route.borrow().generation != generation {
            return;
        }
        last_seen.store(clock.now(), Ordering::Relaxed);
        match listen.send_to(&buf[..n], client).await {
            Ok(_) => {
                bump(&stats.packets_to_clients, 1);
                bump(&stats.bytes_to_clients, n as u64);
            }
            Err(e) => {
                bump(&stats.errors, 1);
                tracing::debug!(service = %lane.name, %client, error = %e, "udp send to client failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    fn seen(t: u64) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(t))
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_active_flow() {
        let mut t = FlowTable::new(2);
        assert!(!t.insert(addr(1), 0, seen(10), "a"));
        let b = seen(5);
        assert!(!t.insert(addr(2), 0, b.clone(), "b"));
        // b was active after a.
        b.store(20, Ordering::Relaxed);
        assert!(t.insert(addr(3), 0, seen(30), "c"));
        assert_eq!(t.len(), 2);
        assert!(t.touch(&addr(1), 0, 40).is_none());
        assert_eq!(t.touch(&addr(2), 0, 40).map(|e| e.flow), Some("b"));
        assert_eq!(t.touch(&addr(3), 0, 40).map(|e| e.flow), Some("c"));
        // c was touched last: b is the least recently active now.
        assert!(t.insert(addr(4), 0, seen(50), "d"));
        assert!(t.touch(&addr(2), 0, 60).is_none());
        assert!(t.touch(&addr(3), 0, 60).is_some());
    }

    #[test]
    fn idle_flows_expire_and_stale_routes_are_dropped() {
        let mut t = FlowTable::new(10);
        t.insert(addr(1), 0, seen(0), ());
        t.insert(addr(2), 0, seen(900), ());
        assert_eq!(t.expire(1000, 500), 1);
        assert!(t.touch(&addr(2), 0, 1000).is_some());
        // A flow of an older route is not returned for the new one.
        assert!(t.touch(&addr(2), 1, 1000).is_none());
        assert_eq!(t.len(), 0);
        t.insert(addr(1), 1, seen(0), ());
        t.insert(addr(2), 2, seen(0), ());
        assert_eq!(t.keep_generation(2), 1);
        assert_eq!(t.len(), 1);
    }

    /// The flow table's cost per new client when it is full (each insert
    /// evicts one flow): `scripts/bench-frontdoor` runs it in release.
    #[test]
    #[ignore = "a benchmark: scripts/bench-frontdoor"]
    fn bench_flow_table_insert_when_full() {
        let cap: usize = std::env::var("STANDBY_BENCH_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(standby_types::config::DEFAULT_MAX_FLOWS);
        let inserts: u32 = std::env::var("STANDBY_BENCH_INSERTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000);
        let client = |i: u32| -> SocketAddr {
            (Ipv4Addr::from(0x0a00_0000 + i), (i % 60_000) as u16 + 1024).into()
        };
        let mut t = FlowTable::new(cap);
        for i in 0..cap as u32 {
            t.insert(client(i), 0, seen(u64::from(i)), ());
        }
        assert_eq!(t.len(), cap);
        let start = Instant::now();
        let mut evicted = 0;
        for i in 0..inserts {
            let n = cap as u32 + i;
            evicted += u32::from(t.insert(client(n), 0, seen(u64::from(n)), ()));
        }
        let took = start.elapsed();
        assert_eq!(evicted, inserts);
        println!(
            "flow table (ordered, now): {cap} flows, {inserts} new clients when full: {:.0} ns per insert with eviction",
            took.as_nanos() as f64 / f64::from(inserts)
        );
        // The table before: a hash map scanned for the least recently
        // active flow on every insert into a full table.
        let mut old: std::collections::HashMap<SocketAddr, Arc<AtomicU64>> = (0..cap as u32)
            .map(|i| (client(i), seen(u64::from(i))))
            .collect();
        let scans = inserts.min(2_000);
        let start = Instant::now();
        for i in 0..scans {
            let n = cap as u32 + i;
            let oldest = old
                .iter()
                .min_by_key(|(_, s)| s.load(Ordering::Relaxed))
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                old.remove(&a);
            }
            old.insert(client(n), seen(u64::from(n)));
        }
        println!(
            "flow table (scanned, before): {cap} flows, {scans} new clients when full: {:.0} ns per insert with eviction",
            start.elapsed().as_nanos() as f64 / f64::from(scans)
        );
    }
}
