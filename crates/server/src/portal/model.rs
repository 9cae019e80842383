//! What the pages compute, apart from any I/O: protection status against
//! the RPO target, the owner (tenant) of alerts, incidents and jobs, the
//! figures of drills and failovers, and the scaling of the inline SVG
//! charts. Everything here is a pure function of its arguments.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use standby_types::config::Config;
use standby_types::watch::ProbeResult;

/// A VM's protection against its groups' RPO target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpoStatus {
    /// The newest point is younger than the target.
    Met,
    /// The newest point is older than the target.
    Missed,
    /// No point yet.
    NoPoint,
    /// Points, but no group sets a target.
    NoTarget,
}

impl RpoStatus {
    /// CSS class and word shown.
    pub fn class(self) -> &'static str {
        match self {
            RpoStatus::Met => "ok",
            RpoStatus::Missed | RpoStatus::NoPoint => "bad",
            RpoStatus::NoTarget => "neutral",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            RpoStatus::Met => "within RPO",
            RpoStatus::Missed => "RPO missed",
            RpoStatus::NoPoint => "no point",
            RpoStatus::NoTarget => "no target",
        }
    }
}

/// Status of a VM whose newest point is `newest` against `target`.
pub fn rpo_status(
    newest: Option<DateTime<Utc>>,
    target: Option<Duration>,
    now: DateTime<Utc>,
) -> RpoStatus {
    match (newest, target) {
        (None, _) => RpoStatus::NoPoint,
        (Some(_), None) => RpoStatus::NoTarget,
        (Some(t), Some(target)) => {
            let age = (now - t).to_std().unwrap_or(Duration::ZERO);
            if age <= target {
                RpoStatus::Met
            } else {
                RpoStatus::Missed
            }
        }
    }
}

/// [`rpo_target_of`] for every VM with a target at once (one pass over
/// the groups, for lists of many VMs).
pub fn rpo_targets(cfg: &Config) -> std::collections::HashMap<&str, Duration> {
    let mut out = std::collections::HashMap::new();
    for g in cfg.groups.values() {
        if let Some(t) = g.rpo_target {
            for m in &g.members {
                out.entry(m.as_str())
                    .and_modify(|o: &mut Duration| *o = (*o).min(t))
                    .or_insert(t);
            }
        }
    }
    out
}

/// The tightest RPO target among the groups `vm` is a member of.
pub fn rpo_target_of(cfg: &Config, vm: &str) -> Option<Duration> {
    cfg.groups
        .values()
        .filter(|g| g.members.iter().any(|m| m == vm))
        .filter_map(|g| g.rpo_target)
        .min()
}

/// `93` → `1m 33s`: short ages for tables.
pub fn short_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "–".into();
    }
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Health of a service at its active site from the probes about it
/// (labels `service = NAME` or `vm = VM`; a probe labelled with another
/// site does not count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    Unknown,
}

impl Health {
    pub fn class(self) -> &'static str {
        match self {
            Health::Up => "ok",
            Health::Down => "bad",
            Health::Unknown => "neutral",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

pub fn service_health(results: &[ProbeResult], service: &str, vm: &str, site: &str) -> Health {
    let mut seen = false;
    for r in results {
        let about = r.labels.get("service").map(String::as_str) == Some(service)
            || r.labels.get("vm").map(String::as_str) == Some(vm);
        let here = r.labels.get("site").is_none_or(|s| s == site);
        if about && here {
            if !r.ok {
                return Health::Down;
            }
            seen = true;
        }
    }
    if seen { Health::Up } else { Health::Unknown }
}

/// One measured recovery: a drill or a failover.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub job: i64,
    pub at: DateTime<Utc>,
    /// `drill` or `failover`.
    pub kind: &'static str,
    pub site: String,
    /// Seconds until the service answered again.
    pub rto: Option<f64>,
    /// Seconds of data at risk: the drill's data age, the failover's
    /// data-loss window (or restored point age).
    pub rpo: Option<f64>,
    pub ok: bool,
    pub summary: String,
}

/// RTO and data age of a drill report (the `drill.report` step's output),
/// the worst over its VMs, counting only VMs `visible` accepts.
pub fn drill_figures(report: &Value, visible: impl Fn(&str) -> bool) -> (Option<f64>, Option<f64>) {
    let mut rto: Option<f64> = None;
    let mut age: Option<f64> = None;
    for v in report["vms"].as_array().into_iter().flatten() {
        if !visible(v["vm"].as_str().unwrap_or_default()) {
            continue;
        }
        if let Some(r) = v["rto_seconds"].as_f64() {
            rto = Some(rto.map_or(r, |m| m.max(r)));
        }
        if let Some(a) = v["data_age_seconds"].as_f64() {
            age = Some(age.map_or(a, |m| m.max(a)));
        }
    }
    (rto, age)
}

/// RTO and data-loss window from the `failover-site` runbook's resolve
/// note ("… RTO 4.2 s (…); data-loss window at most 1.5 s …" or "…
/// restored points 3.0 s old").
pub fn failover_figures(note: &str) -> (Option<f64>, Option<f64>) {
    let rto = number_after(note, "RTO ");
    let loss = number_after(note, "data-loss window at most ")
        .or_else(|| number_after(note, "restored points "));
    (rto, loss)
}

fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The age of the newest point over `[from, to]` as a sawtooth: 0 at each
/// point, rising by one second per second until the next. Starts at the
/// first instant that has a point at or before it.
pub fn age_series(
    point_times: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, f64)> {
    let mut times: Vec<DateTime<Utc>> = point_times.iter().copied().filter(|t| *t <= to).collect();
    times.sort();
    let secs = |d: chrono::TimeDelta| d.num_milliseconds() as f64 / 1000.0;
    let mut out = Vec::new();
    // The newest point at or before `from` carries into the window.
    let mut last = times.iter().rev().find(|t| **t <= from).copied();
    if let Some(l) = last {
        out.push((from, secs(from - l)));
    }
    for t in times.into_iter().filter(|t| *t > from) {
        if let Some(l) = last {
            out.push((t, secs(t - l)));
        }
        out.push((t, 0.0));
        last = Some(t);
    }
    if let Some(l) = last {
        out.push((to, secs(to - l)));
    }
    out
}

/// A named series of (time, value).
pub type Series = (String, Vec<(DateTime<Utc>, f64)>);

/// A chart scaled into an SVG viewBox of `WIDTH × HEIGHT`.
pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 200.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub series: Vec<ChartSeries>,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    /// What the numbers are, e.g. `seconds`.
    pub unit: String,
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChartSeries {
    pub name: String,
    /// CSS class (the colour): `s0`, `s1`, …
    pub class: String,
    /// `x,y x,y …` for a polyline.
    pub path: String,
    /// Markers for series of sparse measurements.
    pub dots: Vec<Dot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dot {
    pub x: f64,
    pub y: f64,
    pub title: String,
}

/// One decimal is plenty for a 600 px wide view box.
fn px(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Pixel position on its axis.
    pub at: f64,
    pub label: String,
    /// SVG `text-anchor`: the outer time labels stay inside the box.
    pub anchor: &'static str,
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (at least 1).
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v - 1e-9 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Scale series of (time, value) into the viewBox: time left to right
/// over `[from, to]`, values from 0 at the bottom to a round maximum at
/// the top. `dots`: draw a marker at each measurement.
pub fn chart(
    input: &[Series],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    unit: &str,
    dots: bool,
) -> Chart {
    let ymax = nice_max(
        input
            .iter()
            .flat_map(|(_, s)| s.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max),
    );
    let span = ((to - from).num_milliseconds() as f64).max(1.0);
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |t: DateTime<Utc>| {
        let f = ((t - from).num_milliseconds() as f64 / span).clamp(0.0, 1.0);
        LEFT + f * w
    };
    let y = |v: f64| TOP + h - (v / ymax).clamp(0.0, 1.0) * h;
    let series = input
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| ChartSeries {
            name: name.clone(),
            class: format!("s{}", i % 6),
            path: pts
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect::<Vec<_>>()
                .join(" "),
            dots: if dots {
                pts.iter()
                    .map(|(t, v)| Dot {
                        x: px(x(*t)),
                        y: px(y(*v)),
                        title: format!("{name}: {} at {}", short_duration(*v), t.format("%F %T")),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    let y_ticks = (0..=4)
        .map(|i| {
            let v = ymax * f64::from(i) / 4.0;
            Tick {
                at: px(y(v)),
                label: short_duration(v),
                anchor: "end",
            }
        })
        .collect();
    let spans_days = to - from > chrono::TimeDelta::days(1);
    let x_ticks = (0..=4)
        .map(|i| {
            let t = from + chrono::TimeDelta::milliseconds((span * f64::from(i) / 4.0) as i64);
            Tick {
                anchor: match i {
                    0 => "start",
                    4 => "end",
                    _ => "middle",
                },
                at: px(x(t)),
                label: if spans_days {
                    t.format("%m-%d %H:%M").to_string()
                } else {
                    t.format("%H:%M:%S").to_string()
                },
            }
        })
        .collect();
    Chart {
        empty: input.iter().all(|(_, s)| s.is_empty()),
        series,
        y_ticks,
        x_ticks,
        unit: unit.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn cfg(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("test.toml")).unwrap()
    }

    const TENANTS: &str = r#"
[sites.a]
[sites.b]
[hosts.h]
site = "a"
driver = "process"
disk_dir = "/d"
[datastores.s]
site = "a"
path = "s"
[datastores.s2]
site = "a"
path = "s2"
[tenants.acme]
[vms.v1]
host = "h"
command = "true"
tenant = "acme"
[vms.v2]
host = "h"
command = "true"
[groups.g1]
members = ["v1"]
schedule = "every 1m"
datastores = ["s"]
rpo_target = "5m"
tenant = "acme"
[groups.g2]
members = ["v1", "v2"]
schedule = "every 1h"
datastores = ["s2"]
rpo_target = "2h"
"#;

    #[test]
    fn rpo_is_met_up_to_the_target_and_missed_after() {
        let target = Some(Duration::from_secs(300));
        assert_eq!(rpo_status(Some(t(0)), target, t(300)), RpoStatus::Met);
        assert_eq!(rpo_status(Some(t(0)), target, t(301)), RpoStatus::Missed);
        assert_eq!(rpo_status(None, target, t(0)), RpoStatus::NoPoint);
        assert_eq!(rpo_status(Some(t(0)), None, t(9999)), RpoStatus::NoTarget);
        // A point stamped a little in the future (clock skew) is fresh.
        assert_eq!(rpo_status(Some(t(5)), target, t(0)), RpoStatus::Met);
        assert_eq!(RpoStatus::Missed.class(), "bad");
        assert_eq!(RpoStatus::NoPoint.class(), "bad");
    }

    #[test]
    fn a_vm_in_two_groups_is_held_to_the_tighter_target() {
        let c = cfg(TENANTS);
        assert_eq!(rpo_target_of(&c, "v1"), Some(Duration::from_secs(300)));
        assert_eq!(rpo_target_of(&c, "v2"), Some(Duration::from_secs(7200)));
        assert_eq!(rpo_target_of(&c, "nope"), None);
        let all = rpo_targets(&c);
        for vm in c.vms.keys() {
            assert_eq!(all.get(vm.as_str()).copied(), rpo_target_of(&c, vm), "{vm}");
        }
    }

    #[test]
    fn service_health_counts_probes_of_the_active_site_only() {
        let r = |labels: &[(&str, &str)], ok: bool| ProbeResult {
            probe: "p".into(),
            vantage: "controller".into(),
            at: t(0),
            ok,
            latency_ms: 1,
            detail: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stale_after: Duration::from_secs(10),
        };
        let results = vec![
            r(&[("vm", "pbx1"), ("site", "site1")], true),
            r(&[("vm", "pbx1"), ("site", "site2")], false),
        ];
        assert_eq!(service_health(&results, "sip", "pbx1", "site1"), Health::Up);
        assert_eq!(
            service_health(&results, "sip", "pbx1", "site2"),
            Health::Down
        );
        assert_eq!(
            service_health(&results, "sip", "other", "site1"),
            Health::Unknown
        );
    }

    #[test]
    fn failover_and_drill_figures_are_read_from_their_reports() {
        let note = "site site1 failed over. RTO 4.2 s (from the alert at x to the probes passing); \
                    data-loss window at most 1.5 s (from the oldest restored point …). Restored: pbx1";
        assert_eq!(failover_figures(note), (Some(4.2), Some(1.5)));
        let note = "site site1 failed over. RTO 12 s (from the manual …); restored points 30.5 s old. Restored: …";
        assert_eq!(failover_figures(note), (Some(12.0), Some(30.5)));
        assert_eq!(
            failover_figures("site a failed over. Restored: none."),
            (None, None)
        );

        let report = serde_json::json!({"vms": [
            {"vm": "v1", "rto_seconds": 3.5, "data_age_seconds": 20.0},
            {"vm": "v2", "rto_seconds": 7.0, "data_age_seconds": 5.0},
            {"vm": "v3", "rto_seconds": null, "data_age_seconds": 1.0}
        ]});
        assert_eq!(drill_figures(&report, |_| true), (Some(7.0), Some(20.0)));
        assert_eq!(
            drill_figures(&report, |v| v == "v1"),
            (Some(3.5), Some(20.0))
        );
        assert_eq!(drill_figures(&report, |_| false), (None, None));
    }

    #[test]
    fn point_age_is_a_sawtooth_reset_by_each_point() {
        let s = age_series(&[t(100), t(40), t(160)], t(50), t(200));
        assert_eq!(
            s,
            vec![
                (t(50), 10.0),
                (t(100), 60.0),
                (t(100), 0.0),
                (t(160), 60.0),
                (t(160), 0.0),
                (t(200), 40.0),
            ]
        );
        // Before the first point there is no age to draw.
        assert_eq!(
            age_series(&[t(100)], t(0), t(130)),
            vec![(t(100), 0.0), (t(130), 30.0)]
        );
        assert!(age_series(&[], t(0), t(10)).is_empty());
    }

    #[test]
    fn charts_scale_to_a_round_maximum_inside_the_view_box() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(260.0), 500.0);
        assert_eq!(nice_max(3000.0), 5000.0);

        let c = chart(
            &[("pbx1".into(), vec![(t(0), 0.0), (t(100), 80.0)])],
            t(0),
            t(100),
            "seconds",
            false,
        );
        // 80 of a 100 axis: from the bottom left to 80 % up the right.
        let bottom = HEIGHT - BOTTOM;
        let top80 = bottom - 0.8 * (HEIGHT - TOP - BOTTOM);
        assert_eq!(
            c.series[0].path,
            format!("{LEFT:.1},{bottom:.1} {:.1},{top80:.1}", WIDTH - RIGHT)
        );
        assert_eq!(c.y_ticks.last().unwrap().label, "1m 40s");
        assert_eq!(c.y_ticks[0].at, bottom);
        assert!(!c.empty);
        // Out-of-window times are clamped to the edges, never drawn outside.
        let c = chart(
            &[("x".into(), vec![(t(-50), 1.0), (t(500), 1.0)])],
            t(0),
            t(100),
            "s",
            true,
        );
        assert_eq!(c.series[0].dots.len(), 2);
        for d in &c.series[0].dots {
            assert!(
                (LEFT..=WIDTH - RIGHT).contains(&d.x) && (TOP..=HEIGHT - BOTTOM).contains(&d.y)
            );
        }
        assert!(chart(&[], t(0), t(1), "s", false).empty);
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(short_duration(4.25), "4.2s");
        assert_eq!(short_duration(42.0), "42s");
        assert_eq!(short_duration(100.0), "1m 40s");
        assert_eq!(short_duration(7300.0), "2h 1m");
        assert_eq!(short_duration(-1.0), "–");
    }
}
