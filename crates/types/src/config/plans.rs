//! `[plans.NAME]`: recovery plans. The order in which VMs come back when
//! a site fails over, fails back or is drilled: tiers of VMs (or groups),
//! each started once the tier before it answers its probes (or a delay
//! after it started), and an RTO target for the whole plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{duration_str, opt_duration_str};
use super::vms::Group;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The tiers, in the order they come back.
    pub tiers: Vec<Tier>,
    /// How long the whole plan may take, from the trigger to the last
    /// tier answering: reports say whether it was met.
    #[serde(default, with = "opt_duration_str")]
    pub rto_target: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// VMs of the tier.
    #[serde(default)]
    pub vms: Vec<String>,
    /// Protection groups whose members are in the tier.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When the tier starts (tiers after the first): `probes` (default)
    /// once every VM of the tier before answers its check where it runs
    /// (its front-door service, else its own probe, else running), or a
    /// delay such as `30s` after they all run.
    #[serde(default)]
    pub after: TierStart,
    /// How long the tier waits for the one before; then its VMs are
    /// restored but not started, and the step fails naming what did not
    /// come up.
    #[serde(default = "default_wait", with = "duration_str")]
    pub wait: Duration,
}

fn default_wait() -> Duration {
    Duration::from_secs(300)
}

/// When a tier starts: once the tier before answers, or a delay after it
/// runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TierStart {
    #[default]
    Probes,
    Delay(Duration),
}

impl Serialize for TierStart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TierStart::Probes => s.serialize_str("probes"),
            TierStart::Delay(d) => s.collect_str(&humantime::format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for TierStart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "probes" {
            return Ok(TierStart::Probes);
        }
        humantime::parse_duration(&s)
            .map(TierStart::Delay)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "'{s}' is neither 'probes' nor a delay such as 30s: {e}"
                ))
            })
    }
}

/// Where a VM stands in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanPlace<'a> {
    pub plan: &'a str,
    /// 1-based.
    pub tier: usize,
}

impl Plan {
    /// The VMs of each tier (the members of its `groups` included), in
    /// tier order.
    pub fn tier_vms(&self, groups: &BTreeMap<String, Group>) -> Vec<Vec<String>> {
        self.tiers
            .iter()
            .map(|t| {
                let mut v: BTreeSet<String> = t.vms.iter().cloned().collect();
                for g in &t.groups {
                    if let Some(g) = groups.get(g) {
                        v.extend(g.members.iter().cloned());
                    }
                }
                v.into_iter().collect()
            })
            .collect()
    }
}
