//! `[ha]`: how a site that is cut off fences itself, so the controller can
//! start a copy elsewhere without a power fence or an operator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::sites::AgentConfig;
use super::units::duration_str;

/// `[ha]`: self-fencing. A host agent that hears neither the controller
/// nor a majority of the `quorum` members for `self_fence_after` stops
/// every VM it runs. The controller counts a host of a fenced site as
/// running nothing once it has not heard the host's agent for
/// `self_fence_after + fence_margin` and the site-down alert of that site
/// fires (a majority of the live vantage points cannot reach it). Each
/// side measures the time on its own monotonic clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ha {
    /// How long a host agent runs its VMs without the controller and
    /// without a majority of the quorum.
    #[serde(with = "duration_str")]
    pub self_fence_after: Duration,
    /// The agents that vote: usually one per site and a witness at a
    /// third place. Each needs a `url`; an odd number, at least three.
    pub quorum: Vec<String>,
    /// Added by the controller to `self_fence_after`: it must cover the
    /// agent's check interval and the time to kill its VMs.
    #[serde(default = "default_margin", with = "duration_str")]
    pub fence_margin: Duration,
}

fn default_margin() -> Duration {
    Duration::from_secs(2)
}

impl Ha {
    /// How many members are a majority.
    pub fn majority(&self) -> usize {
        self.quorum.len() / 2 + 1
    }

    /// How long after a host's agent was last heard the controller may
    /// count the host as fenced by itself.
    pub fn fenced_after(&self) -> Duration {
        self.self_fence_after + self.fence_margin
    }
}

impl Ha {
    /// Checks against the configured agents: the field path and message
    /// of the first problem.
    pub(super) fn validate(
        &self,
        agents: &BTreeMap<String, AgentConfig>,
    ) -> Result<(), (Vec<String>, String)> {
        let ha = self;
        let at = |k: &str| vec!["ha".to_string(), k.to_string()];
        if ha.self_fence_after < Duration::from_secs(1) {
            return Err((
                at("self_fence_after"),
                "must be at least 1s (agents check every 250ms)".into(),
            ));
        }
        if ha.quorum.len() < 3 || ha.quorum.len().is_multiple_of(2) {
            return Err((
                at("quorum"),
                format!(
                    "needs an odd number of agents, at least three (one per site and a witness), not {}",
                    ha.quorum.len()
                ),
            ));
        }
        for (i, name) in ha.quorum.iter().enumerate() {
            let path = vec!["ha".into(), "quorum".into(), i.to_string()];
            let Some(agent) = agents.get(name) else {
                return Err((path, format!("unknown agent '{name}'")));
            };
            if agent.url.is_none() {
                return Err((
                    path,
                    format!("agent '{name}' has no url: the other members could not reach it"),
                ));
            }
            if ha.quorum[..i].contains(name) {
                return Err((path, format!("agent '{name}' is listed twice")));
            }
        }
        Ok(())
    }
}
