//! What the controller knows of fences beyond the database (see
//! [`crate::fence`]): which hosts are confirmed to run nothing, and when
//! each agent was last heard. A leaf: it knows no controller.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What the controller knows of fences beyond the database: kept in
/// memory only, so a restarted controller learns it again (from the
/// agents' heartbeats, or by waiting out the self-fencing time).
#[derive(Debug)]
pub(crate) struct Proofs {
    started: Instant,
    /// Per agent: when its last heartbeat arrived, and whether it
    /// reported its fence flag set and no VM alive.
    heard: Mutex<HashMap<String, (Instant, bool)>>,
    /// Hosts known to run nothing, and how; cleared when their site is
    /// unfenced.
    confirmed: Mutex<HashMap<String, String>>,
}

impl Default for Proofs {
    fn default() -> Self {
        Proofs {
            started: Instant::now(),
            heard: Mutex::default(),
            confirmed: Mutex::default(),
        }
    }
}

impl Proofs {
    /// A heartbeat of `agent` arrived now.
    pub(crate) fn heard(&self, agent: &str, fenced_and_quiet: bool) {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_string(), (Instant::now(), fenced_and_quiet));
    }

    pub(crate) fn confirm(&self, host: &str, how: &str) {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| how.to_string());
    }

    pub(crate) fn forget(&self, host: &str) {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
    }

    pub(crate) fn confirmed(&self, host: &str) -> Option<String> {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// If `agent` has not been heard since this controller started: how
    /// long ago it started (a new leader waits a few heartbeats for what
    /// the agent reports before it calls a fence unconfirmed).
    pub(crate) fn unheard_for(&self, agent: &str) -> Option<std::time::Duration> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        (!heard.contains_key(agent)).then(|| self.started.elapsed())
    }

    /// When `agent` was last heard (this controller's start at the
    /// latest: an agent heard by a previous controller may have been
    /// alive until then), and whether it reported itself fenced.
    pub(crate) fn last_heard(&self, agent: &str) -> (Instant, bool) {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .copied()
            .unwrap_or((self.started, false))
    }
}
