use serde::{Deserialize, Serialize};

/// How many recovery points to keep, in the manner of restic's `forget`:
/// the newest `keep_last` points, plus the newest point of each of the last
/// `keep_hourly` hours, `keep_daily` days, `keep_weekly` ISO weeks and
/// `keep_monthly` months that have a point. A point kept by any rule stays.
/// All zero means "keep everything" (a policy never deletes by accident).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Retention {
    /// True when the policy keeps every point.
    pub fn keeps_all(&self) -> bool {
        *self == Retention::default()
    }
}
