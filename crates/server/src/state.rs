//! What every handler can reach: the engine, the authentication state,
//! the reads a replica serves too ([`Reads`]) and the built sites list
//! ([`SitesCache`]).

use std::sync::Arc;

use axum::extract::FromRef;
use standby_db::{Repo, RunbookRepo};
use standby_engine::Controller;

use crate::auth::Auth;

/// What the read-only handlers (points, jobs, groups) need: the
/// configuration and the database. A leader's come from its controller; a
/// replica that does not lead reads the shared database with its own
/// ([`crate::follower`]), so the same handlers answer there.
pub struct Reads {
    pub live: Arc<standby_engine::controller::LiveConfig>,
    pub repo: Arc<dyn Repo>,
    pub runs: Arc<dyn RunbookRepo>,
}

impl Reads {
    /// The configuration in force now.
    pub fn cfg(&self) -> Arc<standby_types::config::Config> {
        self.live.get()
    }

    /// The reads of a leading controller.
    pub fn of(ctl: &Controller) -> Reads {
        Reads {
            live: ctl.live_config().clone(),
            repo: ctl.repo.clone(),
            runs: ctl.runbooks.repo().clone(),
        }
    }
}

/// The server's state. Handlers take the part they need
/// (`State<Arc<Controller>>` or `State<Arc<Auth>>`).
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Controller>,
    pub auth: Arc<Auth>,
    pub reads: Arc<Reads>,
    pub sites: Arc<SitesCache>,
}

/// The operators' list of sites as last built and serialized, with what
/// it was built from: the shared VM list (by identity), the sites and
/// their fences. It names every VM of each site, so with 10,000 VMs it is
/// built once per change rather than per request.
#[derive(Default)]
pub struct SitesCache(pub std::sync::Mutex<Option<SitesBuilt>>);

pub struct SitesBuilt {
    pub vms: Arc<std::collections::BTreeMap<String, Vec<String>>>,
    pub sites: Vec<standby_types::model::SiteRecord>,
    pub fences: Vec<Option<standby_db::FenceRecord>>,
    pub views: Arc<Vec<standby_types::api::SiteView>>,
    pub json: axum::body::Bytes,
}

impl FromRef<AppState> for Arc<SitesCache> {
    fn from_ref(s: &AppState) -> Self {
        s.sites.clone()
    }
}

impl AppState {
    /// The state of a leading controller.
    pub fn new(engine: Arc<Controller>, auth: Arc<Auth>) -> AppState {
        AppState {
            reads: Arc::new(Reads::of(&engine)),
            sites: Arc::default(),
            engine,
            auth,
        }
    }
}

impl FromRef<AppState> for Arc<Reads> {
    fn from_ref(s: &AppState) -> Self {
        s.reads.clone()
    }
}

impl FromRef<AppState> for Arc<Controller> {
    fn from_ref(s: &AppState) -> Self {
        s.engine.clone()
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}
