//! A period's point times ([`Repo::point_times_in`]): the point in force
//! when it begins and the points inside, nothing else.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use standby_types::config::{Config, EXAMPLE};
use standby_types::model::PointRecord;

use super::SqlRepo;
use crate::Repo;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 250_000_000)
        .unwrap()
}

fn point(secs: i64) -> PointRecord {
    let time = at(secs);
    PointRecord {
        id: format!("pbx1@{}", time.format("%Y-%m-%dT%H:%M:%S%.9fZ")),
        vm: "pbx1".into(),
        group: Some("gold".into()),
        site: "site1".into(),
        time,
        consistency: "crash".into(),
        size: 1 << 20,
        bytes_read: 0,
        bytes_new: 0,
        copies: vec!["site1-store".into()],
        damaged: Vec::new(),
    }
}

async fn a_period_reads_the_point_before_it_and_its_own(repo: SqlRepo) {
    let cfg = Config::parse(EXAMPLE, Path::new("standby.toml")).unwrap();
    repo.apply_config(&cfg).await.unwrap();
    // Nothing yet.
    assert_eq!(
        repo.point_times_in("pbx1", at(100), at(200)).await.unwrap(),
        (None, vec![])
    );
    for s in [10, 50, 99, 100, 150, 199, 200, 300] {
        repo.insert_point(&point(s)).await.unwrap();
    }
    // [from, to): 100 and 150 and 199 in; 99 is the one before; 200 out.
    let (before, times) = repo.point_times_in("pbx1", at(100), at(200)).await.unwrap();
    assert_eq!(before, Some(at(99)));
    assert_eq!(times, vec![at(100), at(150), at(199)]);
    // Before every point: no point before, the first ones inside.
    let (before, times) = repo.point_times_in("pbx1", at(0), at(60)).await.unwrap();
    assert_eq!((before, times), (None, vec![at(10), at(50)]));
    // After every point: only the one before.
    let (before, times) = repo
        .point_times_in("pbx1", at(1000), at(2000))
        .await
        .unwrap();
    assert_eq!((before, times), (Some(at(300)), vec![]));
    // Another VM's points are not this one's.
    assert_eq!(
        repo.point_times_in("nosuch", at(0), at(2000))
            .await
            .unwrap(),
        (None, vec![])
    );
}

on_both! {
    repo: [
        a_period_reads_the_point_before_it_and_its_own,
    ],
}
