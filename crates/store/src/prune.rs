//! Retention: which points to keep, like restic's `forget`.
//!
//! Per vm, points are walked newest first. `keep_last` keeps the newest n;
//! each of hourly / daily / weekly / monthly keeps the newest point of each
//! of the n newest buckets (hour, day, ISO week, month, in UTC) that hold a
//! point. A point kept by any rule is kept. A policy of all zeros keeps all.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use standby_types::Retention;

use crate::StoreError;
use crate::datastore::Datastore;
use crate::manifest::PointId;

/// What prune kept and removed (or would, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub kept: Vec<PointId>,
    pub removed: Vec<PointId>,
}

/// Split points of one vm into (kept, removed), both newest first.
pub fn select(
    points: &[(PointId, DateTime<Utc>)],
    policy: &Retention,
) -> (Vec<PointId>, Vec<PointId>) {
    let mut sorted: Vec<&(PointId, DateTime<Utc>)> = points.iter().collect();
    sorted.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    if policy.keeps_all() {
        return (
            sorted.into_iter().map(|p| p.0.clone()).collect(),
            Vec::new(),
        );
    }
    type Bucket = fn(&DateTime<Utc>) -> (i32, u32, u32, u32);
    let rules: [(u32, Bucket); 4] = [
        (policy.keep_hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
        (policy.keep_daily, |t| (t.year(), t.ordinal(), 0, 0)),
        (policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        (policy.keep_monthly, |t| (t.year(), t.month(), 0, 0)),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.0).collect();
    let mut last: Vec<Option<(i32, u32, u32, u32)>> = vec![None; rules.len()];
    let (mut kept, mut removed) = (Vec::new(), Vec::new());
    for (n, (id, time)) in sorted.into_iter().enumerate() {
        let mut keep = (n as u64) < u64::from(policy.keep_last);
        for (r, (_, bucket)) in rules.iter().enumerate() {
            let key = bucket(time);
            if left[r] > 0 && last[r] != Some(key) {
                last[r] = Some(key);
                left[r] -= 1;
                keep = true;
            }
        }
        if keep {
            kept.push(id.clone());
        } else {
            removed.push(id.clone());
        }
    }
    (kept, removed)
}

impl Datastore {
    /// Apply `policy` to the points of `vm` (or of every vm). Removes
    /// manifests only; the data goes at the next gc. Points are taken from
    /// the manifest file names (a point id carries its time), so a damaged
    /// manifest neither stops prune nor hides its point from the policy; a
    /// file whose name is not a point's is left alone and logged.
    pub fn prune(
        &self,
        policy: &Retention,
        vm: Option<&str>,
        dry_run: bool,
    ) -> Result<PruneReport, StoreError> {
        let prefix = match vm {
            Some(vm) if !crate::manifest::valid_vm_name(vm) => {
                return Err(StoreError::InvalidVmName(vm.to_string()));
            }
            Some(vm) => format!("manifests/{vm}"),
            None => "manifests".to_string(),
        };
        let mut by_vm: BTreeMap<String, Vec<(PointId, DateTime<Utc>)>> = BTreeMap::new();
        for o in self.backend().list(&prefix)? {
            if !o.path.ends_with(".json") {
                continue;
            }
            match PointId::from_manifest_path(&o.path) {
                Some(id) if vm.is_none_or(|vm| vm == id.vm()) => {
                    let time = id.time();
                    by_vm
                        .entry(id.vm().to_string())
                        .or_default()
                        .push((id, time));
                }
                Some(_) => {}
                None => tracing::warn!(path = %o.path, "not a manifest name; left alone"),
            }
        }
        let mut report = PruneReport::default();
        for points in by_vm.values() {
            let (kept, removed) = select(points, policy);
            report.kept.extend(kept);
            report.removed.extend(removed);
        }
        if !dry_run {
            for id in &report.removed {
                self.backend().delete(&id.manifest_path())?;
                tracing::info!(point = %id, "point pruned");
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> (PointId, DateTime<Utc>) {
        let t = DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        (PointId::new("vm", t).unwrap(), t)
    }

    fn policy(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> Retention {
        Retention {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
        }
    }

    fn times(ids: &[PointId]) -> Vec<String> {
        ids.iter().map(|i| i.time_str()[..13].to_string()).collect()
    }

    #[test]
    fn keep_all_and_keep_last() {
        let points: Vec<_> = (0..5)
            .map(|h| at(&format!("2026-01-01T0{h}:00:00Z")))
            .collect();
        let (kept, removed) = select(&points, &Retention::default());
        assert_eq!((kept.len(), removed.len()), (5, 0));
        let (kept, removed) = select(&points, &policy(2, 0, 0, 0, 0));
        assert_eq!(times(&kept), ["20260101T0400", "20260101T0300"]);
        assert_eq!(removed.len(), 3);
    }

    #[test]
    fn buckets_keep_newest_per_bucket() {
        let points = vec![
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:30:00Z"),
            at("2026-01-01T11:15:00Z"),
            at("2026-01-02T09:00:00Z"),
            at("2026-01-02T18:00:00Z"),
            at("2026-01-09T08:00:00Z"),
            at("2026-02-03T08:00:00Z"),
        ];
        let (kept, _) = select(&points, &policy(0, 0, 2, 0, 0));
        assert_eq!(times(&kept), ["20260203T0800", "20260109T0800"]);
        let (kept, _) = select(&points, &policy(0, 3, 0, 0, 0));
        assert_eq!(
            times(&kept),
            ["20260203T0800", "20260109T0800", "20260102T1800"]
        );
        let (kept, _) = select(&points, &policy(0, 0, 0, 0, 2));
        assert_eq!(times(&kept), ["20260203T0800", "20260109T0800"]);
        // 2026-01-01 (Thu) and 2026-01-02 (Fri) share ISO week 1.
        let (kept, removed) = select(&points, &policy(1, 0, 0, 3, 0));
        assert_eq!(
            times(&kept),
            ["20260203T0800", "20260109T0800", "20260102T1800"]
        );
        assert_eq!(removed.len(), 4);
        let (kept, _) = select(&points, &policy(0, 0, 10, 0, 0));
        assert_eq!(
            times(&kept),
            [
                "20260203T0800",
                "20260109T0800",
                "20260102T1800",
                "20260101T1115"
            ]
        );
    }
}
