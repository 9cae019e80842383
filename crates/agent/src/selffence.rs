//! Self-fencing (`[ha]`): a host agent that hears neither the controller
//! nor a majority of the quorum's members for `self_fence_after` stops
//! every VM it runs and refuses starts, as if the controller had fenced
//! its site.
//!
//! Why it is safe: the controller counts a host of a fenced site as
//! running nothing only when it has not heard the host's agent for
//! `self_fence_after + fence_margin`, and a majority of the live vantage
//! points cannot reach the site. The agent counts from the moment it sent
//! the last heartbeat the controller answered (before the controller
//! received it), and from the moment it sent the last round of pings a
//! majority answered; each side measures on its own monotonic clock, so
//! no wall clocks are compared.
//!
//! Why it stops no workload needlessly: an agent that still reaches a
//! majority of the quorum (the witness and its own vote, say) keeps its
//! VMs while the controller, PostgreSQL or the other site is away; a
//! failover then waits for a controller that can confirm the fence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use standby_types::config::{Config, Ha};

/// What an agent needs of `[ha]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfFence {
    pub after: Duration,
    /// The other members: (agent name, base URL).
    pub members: Vec<(String, String)>,
    /// Whether this agent is a member itself (its own vote).
    pub counts_self: bool,
    pub majority: usize,
}

impl SelfFence {
    /// The self-fencing of agent `me` under `ha`.
    pub fn from_config(cfg: &Config, ha: &Ha, me: &str) -> SelfFence {
        SelfFence {
            after: ha.self_fence_after,
            members: ha
                .quorum
                .iter()
                .filter(|m| m.as_str() != me)
                .filter_map(|m| {
                    let a = cfg.agents.get(m)?;
                    Some((m.clone(), a.url.clone()?))
                })
                .collect(),
            counts_self: ha.quorum.iter().any(|m| m == me),
            majority: ha.majority(),
        }
    }

    /// Whether `answered` other members, with this agent's own vote, are
    /// a majority.
    pub fn is_majority(&self, answered: usize) -> bool {
        answered + usize::from(self.counts_self) >= self.majority
    }
}

/// When the agent last knew it was not cut off: the send time of the last
/// heartbeat the controller answered, and of the last round of pings a
/// majority answered.
#[derive(Debug)]
pub struct Contact {
    leader: Mutex<Instant>,
    quorum: Mutex<Instant>,
}

impl Default for Contact {
    /// A starting agent has the whole period to make contact.
    fn default() -> Self {
        let now = Instant::now();
        Contact {
            leader: Mutex::new(now),
            quorum: Mutex::new(now),
        }
    }
}

impl Contact {
    /// The controller answered a heartbeat sent at `sent`.
    pub fn leader_answered(&self, sent: Instant) {
        let mut l = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        *l = (*l).max(sent);
    }

    /// A majority answered pings sent at `sent`.
    pub fn quorum_answered(&self, sent: Instant) {
        let mut q = self.quorum.lock().unwrap_or_else(|p| p.into_inner());
        *q = (*q).max(sent);
    }

    /// How long ago the agent last knew it was not cut off.
    pub fn silence(&self) -> Duration {
        let l = *self.leader.lock().unwrap_or_else(|p| p.into_inner());
        let q = *self.quorum.lock().unwrap_or_else(|p| p.into_inner());
        l.max(q).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sf(n: usize, counts_self: bool) -> SelfFence {
        SelfFence {
            after: Duration::from_secs(3),
            members: (0..n).map(|i| (format!("m{i}"), String::new())).collect(),
            counts_self,
            majority: (n + usize::from(counts_self)) / 2 + 1,
        }
    }

    #[test]
    fn a_member_needs_one_other_of_three_and_a_non_member_two() {
        let member = sf(2, true);
        assert!(!member.is_majority(0), "alone is a minority");
        assert!(member.is_majority(1), "itself and the witness");
        let outsider = sf(3, false);
        assert!(!outsider.is_majority(1));
        assert!(outsider.is_majority(2));
    }

    #[test]
    fn silence_counts_from_the_newer_contact() {
        let c = Contact::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.silence() >= Duration::from_millis(30));
        c.leader_answered(Instant::now());
        assert!(c.silence() < Duration::from_millis(30));
        // An older send time never moves the contact back.
        c.leader_answered(Instant::now() - Duration::from_secs(5));
        assert!(c.silence() < Duration::from_millis(30));
    }
}
