use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use standby_types::report::{
    MonthlyReport, ReportDrill, ReportDrillVm, ReportIncident, ReportTotals, VmCompliance,
};

use super::csv::{self, Part};
use super::{Measured, Month, measure};

/// 2026-11-01T00:00:00Z plus `s` seconds.
fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(s)
}

fn ts(secs: &[i64]) -> Vec<DateTime<Utc>> {
    secs.iter().map(|s| t(*s)).collect()
}

#[test]
fn no_point_measures_nothing() {
    let m = measure(None, &[], t(0), t(1000), Some(10.0));
    assert_eq!(m, Measured::default());
    assert_eq!(m.worst_age, None);
}

#[test]
fn points_every_two_seconds_within_ten_are_always_within_since_the_first() {
    // First point 100 s into the period: measured from there, not before.
    let times: Vec<i64> = (0..50).map(|i| 100 + 2 * i).collect();
    let m = measure(None, &ts(&times), t(0), t(200), Some(10.0));
    assert_eq!(m.measured, 100.0);
    assert_eq!(m.missed, 0.0);
    // The last point at 198; the period ends at 200.
    assert_eq!(m.worst_age, Some(2.0));
    assert_eq!(m.last_point, Some(t(198)));
}

#[test]
fn the_point_before_the_period_counts_from_the_periods_start() {
    // A point 5 s before the start, target 10 s: within until 5 s in,
    // then past the target until the next point at 50 s (45 s missed).
    let m = measure(Some(t(-5)), &ts(&[50]), t(0), t(100), Some(10.0));
    assert_eq!(m.measured, 100.0);
    assert_eq!(m.missed, 45.0 + 40.0);
    assert_eq!(m.worst_age, Some(55.0));
    // Already past the target at the start: missed from the start.
    let m = measure(Some(t(-100)), &ts(&[]), t(0), t(100), Some(10.0));
    assert_eq!((m.measured, m.missed), (100.0, 100.0));
    assert_eq!(m.worst_age, Some(200.0));
    assert_eq!(m.last_point, Some(t(-100)));
}

#[test]
fn a_gap_is_missed_for_its_time_past_the_target() {
    // Points at 0, 5, 40 (a 35 s gap), 45; period [0, 50), target 10.
    let m = measure(None, &ts(&[0, 5, 40, 45]), t(0), t(50), Some(10.0));
    assert_eq!(m.measured, 50.0);
    assert_eq!(m.missed, 25.0);
    assert_eq!(m.worst_age, Some(35.0));
    // An age of exactly the target is within.
    let m = measure(None, &ts(&[0, 10, 20]), t(0), t(30), Some(10.0));
    assert_eq!(m.missed, 0.0);
    assert_eq!(m.worst_age, Some(10.0));
}

#[test]
fn without_a_target_nothing_is_missed_but_the_age_is_measured() {
    let m = measure(None, &ts(&[0, 60]), t(0), t(100), None);
    assert_eq!(
        (m.measured, m.missed, m.worst_age),
        (100.0, 0.0, Some(60.0))
    );
}

#[test]
fn a_period_that_ends_before_it_begins_measures_nothing() {
    let m = measure(Some(t(-5)), &[], t(0), t(0), Some(10.0));
    assert_eq!(m.measured, 0.0);
    assert_eq!(m.worst_age, None);
}

#[test]
fn months_parse_strictly_and_step() {
    let m = Month::parse("2026-12").unwrap();
    assert_eq!(m.to_string(), "2026-12");
    assert_eq!(m.next().to_string(), "2027-01");
    assert_eq!(m.prev().to_string(), "2026-11");
    assert_eq!(
        Month::parse("2026-01").unwrap().prev().to_string(),
        "2025-12"
    );
    assert_eq!(
        m.start(),
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(Month::of(t(0)).to_string(), "2026-11");
    for bad in [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-12",
        "2026/12",
        "2026-12-01",
        "",
        "abcd-ef",
        "+026-12",
    ] {
        let e = Month::parse(bad).unwrap_err();
        assert_eq!(e.to_api().code, "bad_request", "{bad}");
        assert!(e.to_string().contains("expected YYYY-MM"), "{bad}: {e}");
    }
}

fn report() -> MonthlyReport {
    MonthlyReport {
        month: "2026-11".into(),
        tenant: Some("acme".into()),
        from: t(0),
        to: t(100),
        generated_at: t(100),
        totals: ReportTotals::default(),
        vms: vec![VmCompliance {
            vm: "pbx1".into(),
            groups: vec!["gold".into(), "silver".into()],
            rpo_target_seconds: Some(10.0),
            compliance_percent: Some(99.5),
            measured_seconds: 100.0,
            missed_seconds: 0.5,
            worst_age_seconds: Some(10.5),
            points: 42,
            last_point: Some(t(99)),
        }],
        drills: vec![
            ReportDrill {
                job: 7,
                started_at: t(10),
                finished_at: Some(t(20)),
                scope: "site1".into(),
                result: "passed".into(),
                rto_seconds: Some(3.25),
                vms: vec![ReportDrillVm {
                    vm: "pbx1".into(),
                    site: "site2".into(),
                    rto_seconds: Some(3.25),
                    data_age_seconds: 1.5,
                }],
                plans: vec![],
            },
            ReportDrill {
                job: 8,
                started_at: t(30),
                finished_at: None,
                scope: "pbx1".into(),
                result: "running".into(),
                rto_seconds: None,
                vms: vec![],
                plans: vec![],
            },
        ],
        incidents: vec![ReportIncident {
            id: 3,
            title: "=pbx1 down, \"again\"".into(),
            severity: "critical".into(),
            state: "resolved".into(),
            opened_at: t(40),
            resolved_at: Some(t(70)),
            duration_seconds: Some(30.0),
        }],
        truncated: None,
    }
}

#[test]
fn csv_tables_have_their_header_and_a_row_each() {
    let r = report();
    let vms = csv::render(&r, Part::Vms);
    assert_eq!(
        vms,
        "month,tenant,vm,groups,rpo_target_seconds,compliance_percent,measured_seconds,\
         missed_seconds,worst_age_seconds,points,last_point\r\n\
         2026-11,acme,pbx1,gold silver,10,99.5,100,0.5,10.5,42,2026-11-01T00:01:39.000Z\r\n"
    );
    let drills = csv::render(&r, Part::Drills);
    let lines: Vec<&str> = drills.split("\r\n").collect();
    assert_eq!(lines.len(), 4, "{drills}");
    assert_eq!(
        lines[1],
        "2026-11,acme,7,2026-11-01T00:00:10.000Z,2026-11-01T00:00:20.000Z,site1,passed,3.25,pbx1,site2,3.25,1.5"
    );
    // A drill without VMs (still running): one row, its VM cells empty.
    assert_eq!(
        lines[2],
        "2026-11,acme,8,2026-11-01T00:00:30.000Z,,pbx1,running,,,,,"
    );
    assert_eq!(lines[3], "");
    let incidents = csv::render(&r, Part::Incidents);
    assert!(
        incidents.ends_with(
            "2026-11,acme,3,\"'=pbx1 down, \"\"again\"\"\",critical,resolved,\
             2026-11-01T00:00:40.000Z,2026-11-01T00:01:10.000Z,30\r\n"
        ),
        "{incidents}"
    );
    // Every row has as many cells as the header (no cell holds a comma
    // outside quotes here but the title).
    for part in Part::ALL {
        assert_eq!(
            csv::render(&r, part)
                .lines()
                .next()
                .unwrap()
                .split(',')
                .count(),
            part.columns().len()
        );
    }
}

#[test]
fn csv_parts_parse_by_name() {
    for p in Part::ALL {
        assert_eq!(p.as_str().parse::<Part>().unwrap(), p);
    }
    let e = "points".parse::<Part>().unwrap_err();
    assert_eq!(e.to_api().code, "bad_request");
    assert!(e.to_string().contains("vms, drills or incidents"), "{e}");
    assert_eq!(csv::text("plain"), "plain");
    assert_eq!(csv::text("a\nb"), "\"a\nb\"");
    assert_eq!(csv::text("-1"), "'-1");
}
