//! The front door: per service, UDP and TCP forwarders on the controller
//! that send client traffic to the site where the service is active, so
//! clients (SIP phones) keep one address through a failover.
//!
//! # Layout
//! - [`FrontDoor`]: the persisted routing (which site each service's
//!   clients go to, in the `services` table) and [`FrontDoor::switch`],
//!   which changes it and tells every [`TrafficTarget`].
//! - [`TrafficTarget`]: the seam between the decision and the mechanism.
//!   The embedded L4 forwarder ([`Forwarder`]) carries every service; the
//!   DNS target ([`DnsTarget`], module `dns`) also points the `dns_name` of
//!   a service at its active site by TSIG-signed RFC 2136 updates, for
//!   clients that reach the site directly (no single forwarder between).
//! - `udp`: one socket on the listen address; per client address a flow
//!   with its own upstream socket connected to the active backend, in a
//!   table of at most `max_flows` ordered by activity (a new client in a
//!   full table evicts the least recently active flow in constant time).
//! - `tcp`: accept, connect to the active backend, copy both ways; at
//!   most `max_connections` at once (beyond: refused), each closed after
//!   `tcp_idle_timeout` without a byte.
//!
//! # Invariants
//! - The database is written before any target is told, so a restarted
//!   controller forwards where the last acknowledged switch said. Every
//!   target is told even when one fails; the switch then reports the
//!   failure. Telling a target is idempotent, so a repeated switch (or
//!   [`FrontDoor::open`], which tells the DNS target the persisted site of
//!   each service) repairs a target that missed one.
//! - After a switch nothing of the old site reaches a client: UDP flows
//!   (and their upstream sockets) are dropped and rebuilt on the client's
//!   next datagram, replies of an older route are discarded, and TCP
//!   connections to the old site are closed (the old site is fenced or
//!   stopped; a half-open stream to it would hang the client).

pub mod dns;
mod error;
mod tcp;
mod udp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use standby_db::{Repo, ServiceRecord, ServiceRepo, SqlRepo};
use standby_types::api::{ServiceCounters, ServiceView, SiteCounters, SwitchResult};
use standby_types::config::{Config, Protocol, ServiceConfig, ServiceProbe};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dns::DnsTarget;
pub use error::FrontDoorError;

/// Where a service's traffic goes: the embedded forwarder, and for a
/// service with a `dns_name` the DNS updater ([`dns`]).
#[async_trait::async_trait]
pub trait TrafficTarget: Send + Sync {
    /// For logs: `embedded` or `dns`.
    fn kind(&self) -> &'static str;
    /// From now on, send `service`'s clients to `site`, where the service
    /// answers at `backend`. Idempotent.
    async fn point(
        &self,
        service: &str,
        site: &str,
        backend: SocketAddr,
    ) -> Result<(), FrontDoorError>;
}

/// The routing of all services and the targets that carry it out.
pub struct FrontDoor {
    repo: Arc<dyn ServiceRepo>,
    forwarder: Arc<Forwarder>,
    targets: Vec<Arc<dyn TrafficTarget>>,
    /// The persisted records, kept in memory for views.
    records: Mutex<BTreeMap<String, ServiceRecord>>,
    /// One switch at a time, so the database and the targets agree.
    switch_lock: tokio::sync::Mutex<()>,
}

impl FrontDoor {
    /// Load (or, for services seen the first time, create) the active site
    /// of every configured service. A new service starts at the site where
    /// its VM is active; a stored site the service no longer has a backend
    /// at is replaced the same way.
    pub async fn open(cfg: &Config, repo: Arc<SqlRepo>) -> Result<FrontDoor, FrontDoorError> {
        let mut records = BTreeMap::new();
        let mut lanes = BTreeMap::new();
        for (name, svc) in &cfg.services {
            let vm_site = repo.vm(&svc.vm).await?.active_site;
            let initial = if svc.backends.contains_key(&vm_site) {
                vm_site
            } else {
                let home = cfg.home_site(&svc.vm).unwrap_or_default().to_string();
                tracing::warn!(service = %name, vm = %svc.vm, site = %vm_site, "the vm is active at a site without a backend; sending clients to its home site {home}");
                home
            };
            let mut rec = repo.init_service(name, &initial).await?;
            if !svc.backends.contains_key(&rec.active_site) {
                tracing::warn!(service = %name, site = %rec.active_site, "the service has no backend at its stored site any more; sending clients to {initial}");
                repo.switch_service(name, &initial, Utc::now()).await?;
                rec = repo.service(name).await?;
            }
            let backend = svc
                .backend(&rec.active_site)
                .ok_or_else(|| FrontDoorError::BadBackend(name.clone()))?;
            lanes.insert(
                name.clone(),
                Arc::new(Lane::new(name, svc, &rec.active_site, backend)),
            );
            records.insert(name.clone(), rec);
        }
        let forwarder = Arc::new(Forwarder { lanes });
        let mut targets: Vec<Arc<dyn TrafficTarget>> = vec![forwarder.clone()];
        if let Some(dns) = DnsTarget::from_config(cfg)? {
            repair_dns(cfg, &dns, &records).await;
            targets.push(Arc::new(dns));
        }
        Ok(FrontDoor {
            repo,
            targets,
            forwarder,
            records: Mutex::new(records),
            switch_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Bind every service's listen sockets, then start forwarding until
    /// `cancel`. Nothing runs unless every address could be bound.
    pub async fn start(
        &self,
        cfg: &Config,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<(), FrontDoorError> {
        self.forwarder.start(cfg, None, tasks, cancel).await
    }

    /// Send `service`'s clients to `site`. Idempotent: switching to the
    /// active site changes nothing (and tells the targets again).
    pub async fn switch(
        &self,
        cfg: &Config,
        service: &str,
        site: &str,
    ) -> Result<SwitchResult, FrontDoorError> {
        let svc = cfg
            .services
            .get(service)
            .ok_or_else(|| FrontDoorError::UnknownService(service.to_string()))?;
        if !cfg.sites.contains_key(site) {
            return Err(FrontDoorError::UnknownSite(site.to_string()));
        }
        let backend = svc.backend(site).ok_or_else(|| FrontDoorError::NoBackend {
            service: service.to_string(),
            site: site.to_string(),
            backends: svc.backends.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let _one = self.switch_lock.lock().await;
        let current = self.record(service)?;
        let result = if current.active_site == site {
            SwitchResult {
                service: service.to_string(),
                site: site.to_string(),
                previous: current.active_site,
                switched_at: current.switched_at,
            }
        } else {
            let at = Utc::now();
            self.repo.switch_service(service, site, at).await?;
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    service.to_string(),
                    ServiceRecord {
                        name: service.to_string(),
                        active_site: site.to_string(),
                        switched_at: Some(at),
                    },
                );
            tracing::info!(service, from = %current.active_site, to = site, %backend, "front door switched");
            SwitchResult {
                service: service.to_string(),
                site: site.to_string(),
                previous: current.active_site,
                switched_at: Some(at),
            }
        };
        // Every target is told, whatever another answered.
        let mut failed = None;
        for t in &self.targets {
            if let Err(e) = t.point(service, site, backend).await {
                tracing::warn!(service, site, target = t.kind(), error = %standby_types::error_chain(&e), "a traffic target did not follow the switch");
                failed.get_or_insert(FrontDoorError::Target {
                    service: service.to_string(),
                    kind: t.kind(),
                    site: site.to_string(),
                    source: Box::new(e),
                });
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// The persisted routing of `service`.
    pub fn record(&self, service: &str) -> Result<ServiceRecord, FrontDoorError> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
            .ok_or_else(|| FrontDoorError::UnknownService(service.to_string()))
    }

    /// The API view of one service.
    pub fn view(&self, cfg: &Config, name: &str) -> Result<ServiceView, FrontDoorError> {
        let svc = cfg
            .services
            .get(name)
            .ok_or_else(|| FrontDoorError::UnknownService(name.to_string()))?;
        let rec = self.record(name)?;
        let lane = self.forwarder.lane(name)?;
        Ok(ServiceView {
            name: name.to_string(),
            vm: svc.vm.clone(),
            listen: svc.listen.clone(),
            protocols: svc.protocols.iter().map(|p| p.to_string()).collect(),
            active_site: rec.active_site,
            backends: svc.backends.clone(),
            probe: svc.probe.map(|p| probe_name(p).to_string()),
            probe_url: svc.probe_url.clone(),
            switched_at: rec.switched_at,
            counters: lane.counters(),
        })
    }

    /// Views of every configured service, by name.
    pub fn views(&self, cfg: &Config) -> Result<Vec<ServiceView>, FrontDoorError> {
        cfg.services.keys().map(|n| self.view(cfg, n)).collect()
    }
}

/// Point every DNS service's name at its persisted site: an update lost
/// before a restart (the server was down, the controller stopped between
/// the database write and the update) is sent again. All at once, so an
/// unreachable server delays the start by one timeout; failures are
/// logged, not fatal: the forwarder works without DNS.
async fn repair_dns(cfg: &Config, dns: &DnsTarget, records: &BTreeMap<String, ServiceRecord>) {
    let updates = dns.names().filter_map(|(service, name)| {
        let site = &records.get(service)?.active_site;
        let backend = cfg.services.get(service)?.backend(site)?;
        Some(async move {
            if let Err(e) = dns.point(service, site, backend).await {
                tracing::warn!(service, site, name, error = %standby_types::error_chain(&e), "unable to bring the service's dns record in line with its site; the next switch retries");
            }
        })
    });
    futures::future::join_all(updates).await;
}

fn probe_name(p: ServiceProbe) -> &'static str {
    match p {
        ServiceProbe::Sip => "sip",
        ServiceProbe::Tcp => "tcp",
        ServiceProbe::Http => "http",
    }
}

/// Where one service's traffic goes now. `generation` grows with every
/// change, so a flow or connection knows when it is stale.
#[derive(Debug, Clone)]
struct Route {
    site: String,
    backend: SocketAddr,
    generation: u64,
}

/// Traffic of one service to one site.
#[derive(Default)]
struct SiteStats {
    packets_to_site: AtomicU64,
    packets_to_clients: AtomicU64,
    bytes_to_site: AtomicU64,
    bytes_to_clients: AtomicU64,
    flows: AtomicU64,
    connections: AtomicU64,
    connections_active: AtomicU64,
    errors: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The forwarding state of one service, shared by its UDP and TCP tasks.
struct Lane {
    name: String,
    route: watch::Sender<Route>,
    idle_timeout: Duration,
    tcp_idle_timeout: Duration,
    max_flows: usize,
    max_connections: usize,
    sites: BTreeMap<String, Arc<SiteStats>>,
    flows_active: AtomicU64,
    flows_evicted: AtomicU64,
    flows_expired: AtomicU64,
    /// TCP connections open now, to any site (the cap counts these).
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    connections_idle_closed: AtomicU64,
}

impl Lane {
    fn new(name: &str, svc: &ServiceConfig, site: &str, backend: SocketAddr) -> Lane {
        Lane {
            name: name.to_string(),
            route: watch::Sender::new(Route {
                site: site.to_string(),
                backend,
                generation: 0,
            }),
            idle_timeout: svc.idle_timeout,
            tcp_idle_timeout: svc.tcp_idle_timeout,
            max_flows: svc.max_flows,
            max_connections: svc.max_connections,
            sites: svc
                .backends
                .keys()
                .map(|s| (s.clone(), Arc::default()))
                .collect(),
            flows_active: AtomicU64::new(0),
            flows_evicted: AtomicU64::new(0),
            flows_expired: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_idle_closed: AtomicU64::new(0),
        }
    }

    /// The counters of `site` (a backend site; others count nowhere).
    fn stats(&self, site: &str) -> Arc<SiteStats> {
        self.sites.get(site).cloned().unwrap_or_default()
    }

    fn counters(&self) -> ServiceCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServiceCounters {
            flows_active: get(&self.flows_active),
            flows_evicted: get(&self.flows_evicted),
            sites: self
                .sites
                .iter()
                .map(|(site, s)| {
                    let c = SiteCounters {
                        packets_to_site: get(&s.packets_to_site),
                        packets_to_clients: get(&s.packets_to_clients),
                        bytes_to_site: get(&s.bytes_to_site),
                        bytes_to_clients: get(&s.bytes_to_clients),
                        flows: get(&s.flows),
                        connections: get(&s.connections),
                        connections_active: get(&s.connections_active),
                        errors: get(&s.errors),
                    };
                    (site.clone(), c)
                })
                .collect(),
            flows_expired: get(&self.flows_expired),
            connections_refused: get(&self.connections_refused),
            connections_idle_closed: get(&self.connections_idle_closed),
        }
    }
}

/// The embedded L4 forwarder: the controller itself relays each service's
/// UDP datagrams and TCP streams to the active site.
pub struct Forwarder {
    lanes: BTreeMap<String, Arc<Lane>>,
}

impl Forwarder {
    /// A forwarder of its own for every configured service, each sent to
    /// the site `sites` names: a front door at another place that follows
    /// the leader's decisions (`standby frontdoor`).
    pub fn following(
        cfg: &Config,
        sites: &BTreeMap<String, String>,
    ) -> Result<Forwarder, FrontDoorError> {
        let mut lanes = BTreeMap::new();
        for (name, svc) in &cfg.services {
            let site = sites
                .get(name)
                .ok_or_else(|| FrontDoorError::UnknownService(name.clone()))?;
            let backend = svc.backend(site).ok_or_else(|| FrontDoorError::NoBackend {
                service: name.clone(),
                site: site.clone(),
                backends: svc.backends.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
            lanes.insert(name.clone(), Arc::new(Lane::new(name, svc, site, backend)));
        }
        Ok(Forwarder { lanes })
    }

    /// The site `service`'s clients go to now.
    pub fn site_of(&self, service: &str) -> Option<String> {
        Some(self.lanes.get(service)?.route.borrow().site.clone())
    }

    /// Bind every service's listen sockets (on `host` instead of the
    /// configured address's, if given), then forward until `cancel`.
    /// Nothing runs unless every address could be bound.
    pub async fn start(
        &self,
        cfg: &Config,
        host: Option<std::net::IpAddr>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<(), FrontDoorError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for (name, svc) in &cfg.services {
            let lane = self.lane(name)?;
            let mut addr = svc
                .listen_addr()
                .ok_or_else(|| FrontDoorError::BadListen(name.clone()))?;
            if let Some(h) = host {
                addr.set_ip(h);
            }
            let in_use = |proto: &'static str, source: std::io::Error| FrontDoorError::Listen {
                service: name.clone(),
                proto,
                addr,
                source,
            };
            if svc.protocols.contains(&Protocol::Udp) {
                let s = tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|e| in_use("udp", e))?;
                udp.push((lane.clone(), s));
            }
            if svc.protocols.contains(&Protocol::Tcp) {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| in_use("tcp", e))?;
                tcp.push((lane.clone(), l));
            }
        }
        for (lane, sock) in udp {
            tracing::info!(service = %lane.name, addr = ?sock.local_addr().ok(), "front door forwarding udp");
            tasks.spawn(udp::run(lane, sock, cancel.clone()));
        }
        for (lane, listener) in tcp {
            tracing::info!(service = %lane.name, addr = ?listener.local_addr().ok(), "front door forwarding tcp");
            tasks.spawn(tcp::run(lane, listener, tasks.clone(), cancel.clone()));
        }
        Ok(())
    }

    fn lane(&self, service: &str) -> Result<&Arc<Lane>, FrontDoorError> {
        self.lanes
            .get(service)
            .ok_or_else(|| FrontDoorError::UnknownService(service.to_string()))
    }
}

#[async_trait::async_trait]
impl TrafficTarget for Forwarder {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn point(
        &self,
        service: &str,
        site: &str,
        backend: SocketAddr,
    ) -> Result<(), FrontDoorError> {
        self.lane(service)?.route.send_if_modified(|r| {
            if r.site == site && r.backend == backend {
                return false;
            }
            r.site = site.to_string();
            r.backend = backend;
            r.generation += 1;
            true
        });
        Ok(())
    }
}

/// `standby_frontdoor_*` series for `/metrics`.
pub fn register_metrics(reg: &mut Registry, fd: &FrontDoor) {
    type L = Vec<(String, String)>;
    let labels = |pairs: &[(&str, &str)]| -> L {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let active = Family::<L, Gauge>::default();
    let packets = Family::<L, Counter>::default();
    let bytes = Family::<L, Counter>::default();
    let flows = Family::<L, Counter>::default();
    let conns = Family::<L, Counter>::default();
    let conns_active = Family::<L, Gauge>::default();
    let errors = Family::<L, Counter>::default();
    let flows_active = Family::<L, Gauge>::default();
    let evicted = Family::<L, Counter>::default();
    let expired = Family::<L, Counter>::default();
    let refused = Family::<L, Counter>::default();
    let idle_closed = Family::<L, Counter>::default();
    for (name, lane) in &fd.forwarder.lanes {
        let now = lane.route.borrow().site.clone();
        let c = lane.counters();
        let svc = [("service", name.as_str())];
        flows_active
            .get_or_create(&labels(&svc))
            .set(c.flows_active as i64);
        evicted.get_or_create(&labels(&svc)).inc_by(c.flows_evicted);
        expired.get_or_create(&labels(&svc)).inc_by(c.flows_expired);
        refused
            .get_or_create(&labels(&svc))
            .inc_by(c.connections_refused);
        idle_closed
            .get_or_create(&labels(&svc))
            .inc_by(c.connections_idle_closed);
        for (site, s) in &c.sites {
            let l = labels(&[("service", name), ("site", site)]);
            active.get_or_create(&l).set(i64::from(*site == now));
            for (dir, p, b) in [
                ("to_site", s.packets_to_site, s.bytes_to_site),
                ("to_clients", s.packets_to_clients, s.bytes_to_clients),
            ] {
                let ld = labels(&[("service", name), ("site", site), ("direction", dir)]);
                packets.get_or_create(&ld).inc_by(p);
                bytes.get_or_create(&ld).inc_by(b);
            }
            flows.get_or_create(&l).inc_by(s.flows);
            conns.get_or_create(&l).inc_by(s.connections);
            conns_active
                .get_or_create(&l)
                .set(s.connections_active as i64);
            errors.get_or_create(&l).inc_by(s.errors);
        }
    }
    reg.register(
        "standby_frontdoor_active_site",
        "1 for the site each service's clients are sent to, 0 for its other sites",
        active,
    );
    reg.register(
        "standby_frontdoor_packets",
        "UDP datagrams forwarded, by direction",
        packets,
    );
    reg.register(
        "standby_frontdoor_bytes",
        "Payload bytes forwarded (UDP and TCP), by direction",
        bytes,
    );
    reg.register("standby_frontdoor_flows", "UDP flows opened", flows);
    reg.register(
        "standby_frontdoor_flows_active",
        "UDP flows being forwarded now",
        flows_active,
    );
    reg.register(
        "standby_frontdoor_flows_evicted",
        "UDP flows dropped because the flow table was full",
        evicted,
    );
    reg.register(
        "standby_frontdoor_flows_expired",
        "UDP flows dropped after the idle timeout",
        expired,
    );
    reg.register(
        "standby_frontdoor_connections_refused",
        "TCP connections refused because max_connections were open",
        refused,
    );
    reg.register(
        "standby_frontdoor_connections_idle_closed",
        "TCP connections closed after the TCP idle timeout",
        idle_closed,
    );
    reg.register(
        "standby_frontdoor_connections",
        "TCP connections opened to a site",
        conns,
    );
    reg.register(
        "standby_frontdoor_connections_active",
        "TCP connections open now",
        conns_active,
    );
    reg.register(
        "standby_frontdoor_errors",
        "Failed connects, sends and receives",
        errors,
    );
}
