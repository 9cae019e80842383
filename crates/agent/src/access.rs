//! A datastore as the controller reaches it ([`StoreHandle`]): open in
//! the controller (the embedded default, object stores), or served by the
//! agent of its site (`[datastores.NAME] agent`), whose `/agent/v1/store/*`
//! does the work where the data is. The controller never reads or writes
//! a served store itself.
//!
//! Copies ([`copy_point`]) are made where the data is:
//! - from a served store, by its agent: into a store it serves or can
//!   open itself (an object store), or to another agent's store over
//!   `/agent/v1/receive/*` with a grant the destination issued at the
//!   controller's call;
//! - from a store the controller opens into a served store, by the
//!   destination's agent, which opens the source itself (an object store);
//! - between stores the controller opens, in the controller.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use standby_store::{
    Datastore, GcOptions, GcReport, Manifest, PointId, PruneReport, StoreStats, SyncStats,
    VerifyReport,
};
use standby_types::Retention;
use standby_types::config::{BandwidthSchedule, DatastoreConfig, DatastoreKind};

use crate::error::AgentError;
use crate::limit::RateLimit;
use crate::progress::Progress;
use crate::remote::RemoteHost;
use crate::transfer::{Peer, Sent, StoreReceiver};

/// Data calls may move whole stores.
const DATA: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
const QUICK: std::time::Duration = std::time::Duration::from_secs(60);

/// The agent serving a datastore, as the controller calls it.
#[derive(Clone)]
pub struct Server {
    pub client: Arc<RemoteHost>,
    /// Where other agents reach it for copies (`peer_url`, else `url`).
    pub url: String,
}

/// A configured datastore and how the controller reaches it.
#[derive(Clone)]
pub enum StoreHandle {
    /// Open in the controller.
    Here {
        name: String,
        config: DatastoreConfig,
        store: Datastore,
    },
    /// Served by an agent.
    Agent {
        name: String,
        config: DatastoreConfig,
        server: Server,
    },
}

/// `/agent/v1/store/*`: which datastore, as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreCall {
    pub datastore: String,
    pub config: DatastoreConfig,
}

/// `/agent/v1/store/grant`: let agent `from` copy into a datastore the
/// called agent serves.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub from: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GrantDone {
    pub grant: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PointsDone {
    pub points: Vec<Manifest>,
    /// Manifests that do not read, each with why (their points are left
    /// out; the rest are listed).
    #[serde(default)]
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HasPointCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub point: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LatestCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub vm: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PruneCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub vm: String,
    pub retention: Retention,
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub sample: Option<f64>,
    pub seed: u64,
    /// Slice `part` of `parts` instead ([`Datastore::verify_slice`]).
    #[serde(default)]
    pub slice: Option<(u32, u32)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GcCall {
    #[serde(flatten)]
    pub store: StoreCall,
    pub grace_secs: u64,
    pub dry_run: bool,
}

/// `/agent/v1/store/copy`: copy `point` from `from` (served by the called
/// agent, or one it can open) to `to`, through `peer` when another agent
/// serves `to`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CopyCall {
    pub from: StoreCall,
    pub to: StoreCall,
    pub point: String,
    pub peer: Option<Peer>,
    /// The bandwidth schedule of the site the copy leaves, applied by
    /// the sender before each batch; none: unlimited (also when the copy
    /// stays at its site, see [`leaves_site`]).
    #[serde(default)]
    pub schedule: Option<BandwidthSchedule>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CopyDone {
    pub stats: SyncStats,
    pub sent: Sent,
}

impl StoreHandle {
    pub fn name(&self) -> &str {
        match self {
            StoreHandle::Here { name, .. } | StoreHandle::Agent { name, .. } => name,
        }
    }

    pub fn config(&self) -> &DatastoreConfig {
        match self {
            StoreHandle::Here { config, .. } | StoreHandle::Agent { config, .. } => config,
        }
    }

    /// The agent serving it, if any.
    pub fn agent(&self) -> Option<&str> {
        match self {
            StoreHandle::Here { .. } => None,
            StoreHandle::Agent { server, .. } => Some(&server.client.agent),
        }
    }

    /// The store itself when it is open here.
    pub fn here(&self) -> Option<&Datastore> {
        match self {
            StoreHandle::Here { store, .. } => Some(store),
            StoreHandle::Agent { .. } => None,
        }
    }

    fn call(&self) -> StoreCall {
        StoreCall {
            datastore: self.name().to_string(),
            config: self.config().clone(),
        }
    }

    /// Run `f` on the open store on a blocking thread.
    async fn blocking<T: Send + 'static>(
        store: &Datastore,
        f: impl FnOnce(Datastore) -> Result<T, standby_store::StoreError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let s = store.clone();
        Ok(tokio::task::spawn_blocking(move || f(s)).await??)
    }

    /// Every point whose manifest reads, oldest first (every manifest is
    /// read: a rescan); an unreadable manifest is logged and left out.
    pub async fn points(&self) -> Result<Vec<Manifest>, AgentError> {
        let done = match self {
            StoreHandle::Here { store, .. } => {
                let (points, bad) = Self::blocking(store, |s| s.scan_points()).await?;
                PointsDone {
                    points,
                    unreadable: bad.iter().map(|e| e.to_string()).collect(),
                }
            }
            StoreHandle::Agent { server, .. } => {
                server
                    .client
                    .call("store/points", &self.call(), DATA)
                    .await?
            }
        };
        for e in &done.unreadable {
            tracing::warn!(datastore = %self.name(), "point left out: {e}");
        }
        Ok(done.points)
    }

    pub async fn has_point(&self, point: &PointId) -> Result<bool, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => {
                let p = point.clone();
                Self::blocking(store, move |s| s.has_point(&p)).await
            }
            StoreHandle::Agent { server, .. } => {
                let call = HasPointCall {
                    store: self.call(),
                    point: point.to_string(),
                };
                server.client.call("store/has-point", &call, QUICK).await
            }
        }
    }

    /// The newest point of `vm` whose manifest reads.
    pub async fn latest_point(&self, vm: &str) -> Result<Option<Manifest>, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => {
                let v = vm.to_string();
                Self::blocking(store, move |s| s.latest_point(&v)).await
            }
            StoreHandle::Agent { server, .. } => {
                let call = LatestCall {
                    store: self.call(),
                    vm: vm.to_string(),
                };
                server.client.call("store/latest", &call, QUICK).await
            }
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => Self::blocking(store, |s| s.stats()).await,
            StoreHandle::Agent { server, .. } => {
                server.client.call("store/stats", &self.call(), QUICK).await
            }
        }
    }

    pub async fn prune(
        &self,
        vm: &str,
        retention: Retention,
        dry_run: bool,
    ) -> Result<PruneReport, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => {
                let v = vm.to_string();
                Self::blocking(store, move |s| s.prune(&retention, Some(&v), dry_run)).await
            }
            StoreHandle::Agent { server, .. } => {
                let call = PruneCall {
                    store: self.call(),
                    vm: vm.to_string(),
                    retention,
                    dry_run,
                };
                server.client.call("store/prune", &call, DATA).await
            }
        }
    }

    /// Verify all chunks, or a sample picked by `seed`.
    pub async fn verify(
        &self,
        sample: Option<f64>,
        seed: u64,
        progress: Arc<dyn Progress>,
    ) -> Result<VerifyReport, AgentError> {
        self.verify_how(sample, seed, None, progress).await
    }

    /// Re-read slice `part` of `parts` of the chunks (a scheduled verify:
    /// the slices in turn read every chunk once).
    pub async fn verify_slice(
        &self,
        part: u32,
        parts: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<VerifyReport, AgentError> {
        self.verify_how(None, 0, Some((part, parts)), progress)
            .await
    }

    async fn verify_how(
        &self,
        sample: Option<f64>,
        seed: u64,
        slice: Option<(u32, u32)>,
        progress: Arc<dyn Progress>,
    ) -> Result<VerifyReport, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => {
                Self::blocking(store, move |s| match (slice, sample) {
                    (Some((part, parts)), _) => s.verify_slice(part, parts, progress.as_ref()),
                    (None, Some(f)) => s.verify_sample(f, seed, progress.as_ref()),
                    (None, None) => s.verify(progress.as_ref()),
                })
                .await
            }
            StoreHandle::Agent { server, .. } => {
                progress.stage(format!("verify by agent {}", server.client.agent), 0);
                let call = VerifyCall {
                    store: self.call(),
                    sample,
                    seed,
                    slice,
                };
                server.client.call("store/verify", &call, DATA).await
            }
        }
    }

    pub async fn gc(
        &self,
        opts: GcOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<GcReport, AgentError> {
        match self {
            StoreHandle::Here { store, .. } => {
                Self::blocking(store, move |s| s.gc(opts, progress.as_ref())).await
            }
            StoreHandle::Agent { server, .. } => {
                progress.stage(format!("gc by agent {}", server.client.agent), 0);
                let call = GcCall {
                    store: self.call(),
                    grace_secs: opts.grace.as_secs(),
                    dry_run: opts.dry_run,
                };
                server.client.call("store/gc", &call, DATA).await
            }
        }
    }
}

/// Whether a copy from `from` to `to` leaves the source's site (and so
/// obeys its bandwidth schedule): a store at another site, or an object
/// store (an upload, wherever it is said to be).
pub fn leaves_site(from: &DatastoreConfig, to: &DatastoreConfig) -> bool {
    from.site != to.site || to.kind != DatastoreKind::Local
}

/// Copy `point` between two stores open here: as stored and paced by
/// `limit` when there is one and both share the scheme, else with
/// `sync_point` (which re-encodes between schemes, unpaced).
pub fn copy_open(
    src: &Datastore,
    dst: &Datastore,
    point: &PointId,
    limit: Option<Arc<RateLimit>>,
    progress: &dyn standby_store::Progress,
) -> Result<SyncStats, standby_store::StoreError> {
    match limit {
        Some(limit) if src.scheme() == dst.scheme() => {
            let rx = StoreReceiver {
                dst: dst.clone(),
                limit,
            };
            src.send_point(point, &rx, progress)
        }
        _ => src.sync_point(point, dst, progress),
    }
}

/// The limit of a copy from `from` to `to` under the source site's
/// `schedule`: none when the copy stays at the site or nothing limits it.
pub(crate) fn limit_of(
    from: &DatastoreConfig,
    to: &DatastoreConfig,
    schedule: Option<BandwidthSchedule>,
) -> Option<Arc<RateLimit>> {
    schedule
        .filter(|s| !s.is_empty() && leaves_site(from, to))
        .map(|s| Arc::new(RateLimit::new(s)))
}

/// Copy `point` from `from` to `to` where the data is (see the module
/// documentation); `schedule` is the bandwidth schedule of the source's
/// site, obeyed by whoever sends when the copy leaves the site.
pub async fn copy_point(
    from: &StoreHandle,
    to: &StoreHandle,
    point: &PointId,
    schedule: Option<BandwidthSchedule>,
    progress: Arc<dyn Progress>,
) -> Result<CopyDone, AgentError> {
    let schedule = schedule.filter(|_| leaves_site(from.config(), to.config()));
    match (from, to) {
        (StoreHandle::Here { store: src, .. }, StoreHandle::Here { store: dst, .. }) => {
            let limit = limit_of(from.config(), to.config(), schedule);
            let (src, dst, p) = (src.clone(), dst.clone(), point.clone());
            let stats = tokio::task::spawn_blocking(move || {
                copy_open(&src, &dst, &p, limit, progress.as_ref())
            })
            .await??;
            Ok(CopyDone {
                stats,
                sent: Sent::default(),
            })
        }
        (StoreHandle::Agent { server, .. }, _) => {
            // A store at another agent gets the point over the agent API.
            let peer = match to {
                StoreHandle::Agent { server: dst, .. }
                    if dst.client.agent != server.client.agent =>
                {
                    // The destination opens its store and lets the source
                    // agent, and only it, copy into it.
                    let g: GrantDone = dst
                        .client
                        .call(
                            "store/grant",
                            &GrantCall {
                                store: to.call(),
                                from: server.client.agent.clone(),
                            },
                            QUICK,
                        )
                        .await?;
                    Some(Peer {
                        agent: dst.client.agent.clone(),
                        url: dst.url.clone(),
                        grant: g.grant,
                    })
                }
                _ => None,
            };
            progress.stage(
                format!(
                    "{point}: copied to {} by agent {}",
                    to.name(),
                    server.client.agent
                ),
                0,
            );
            let call = CopyCall {
                from: from.call(),
                to: to.call(),
                point: point.to_string(),
                peer,
                schedule,
            };
            server.client.call("store/copy", &call, DATA).await
        }
        (StoreHandle::Here { .. }, StoreHandle::Agent { server, .. }) => {
            // The destination's agent fetches from a store it can open.
            progress.stage(
                format!(
                    "{point}: fetched into {} by agent {}",
                    to.name(),
                    server.client.agent
                ),
                0,
            );
            let call = CopyCall {
                from: from.call(),
                to: to.call(),
                point: point.to_string(),
                peer: None,
                schedule,
            };
            server.client.call("store/copy", &call, DATA).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use standby_types::config::{BandwidthWindow, ByteSize, Day, TimeOfDay};

    fn config(site: &str, kind: DatastoreKind) -> DatastoreConfig {
        let mut c: DatastoreConfig =
            serde_json::from_value(serde_json::json!({"site": site, "path": "/x"})).unwrap();
        c.kind = kind;
        c
    }

    #[test]
    fn copies_leave_a_site_for_another_site_or_an_object_store() {
        let here = config("site1", DatastoreKind::Local);
        assert!(!leaves_site(&here, &config("site1", DatastoreKind::Local)));
        assert!(leaves_site(&here, &config("site2", DatastoreKind::Local)));
        assert!(leaves_site(&here, &config("site1", DatastoreKind::S3)));
        assert!(leaves_site(&here, &config("cloud", DatastoreKind::Azure)));
    }

    /// A store open here, paced by an all-day window: the copy through
    /// [`copy_open`] is complete and takes the time its bytes are owed.
    #[test]
    fn a_paced_copy_between_open_stores_averages_the_limit_and_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let src = Datastore::open_or_create(&dir.path().join("src")).unwrap();
        let dst = Datastore::open_or_create(&dir.path().join("dst")).unwrap();
        let image = dir.path().join("disk.img");
        // 3 MiB that neither compresses nor deduplicates.
        let mut bytes = vec![0u8; 3 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&image, &bytes).unwrap();
        let mut w = src
            .begin_point(standby_store::PointMeta {
                vm: "vm".into(),
                site: "site1".into(),
                consistency: standby_store::Consistency::Crash,
                config: serde_json::json!({}),
                labels: Default::default(),
            })
            .unwrap();
        w.write_disk("a", &image, Default::default(), &()).unwrap();
        let point = w.commit().unwrap();
        let schedule = BandwidthSchedule {
            timezone: "UTC".into(),
            windows: vec![BandwidthWindow {
                limit: ByteSize(2 << 20),
                days: Day::ALL.to_vec(),
                from: TimeOfDay(0),
                to: TimeOfDay(24 * 60),
            }],
        };
        let limit = limit_of(
            &config("site1", DatastoreKind::Local),
            &config("site2", DatastoreKind::Local),
            Some(schedule),
        );
        assert!(limit.is_some());
        let t0 = std::time::Instant::now();
        let stats = copy_open(&src, &dst, &point.id, limit, &()).unwrap();
        let took = t0.elapsed();
        assert!(stats.bytes_copied >= 3 << 20, "{stats:?}");
        // 3 MiB at 2 MiB/s: 1.5 s, whatever the disk's speed.
        assert!(took >= std::time::Duration::from_millis(1400), "{took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        assert_eq!(dst.load_manifest(&point.id).unwrap(), point);
        let out = dir.path().join("out.img");
        dst.restore_disk(&point.id, "a", &out, &()).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
    }
}
