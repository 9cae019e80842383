//! What only PostgreSQL has: several controllers (here two repositories,
//! each with its own pool) sharing one database.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use standby_types::config::{Config, EXAMPLE};
use standby_types::model::{JobStatus, PointRecord};

use super::testing::TestDb;
use super::{Backend, SqlRepo};
use crate::{DbError, Repo};

fn point(vm: &str, secs: i64, copies: &[&str]) -> PointRecord {
    PointRecord {
        id: format!("{vm}@{secs}"),
        vm: vm.into(),
        group: Some("gold".into()),
        site: "site1".into(),
        time: Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap(),
        consistency: "crash".into(),
        size: 64 << 20,
        bytes_read: 3 << 20,
        bytes_new: 1 << 20,
        copies: copies.iter().map(|c| c.to_string()).collect(),
        damaged: Vec::new(),
    }
}

async fn replicas() -> (SqlRepo, SqlRepo) {
    let db = TestDb::postgres();
    let (a, b) = (db.open().await, db.open().await);
    assert_eq!(a.backend(), Backend::Postgres);
    let cfg = Config::parse(EXAMPLE, Path::new("standby.toml")).unwrap();
    a.apply_config(&cfg).await.unwrap();
    (a, b)
}

/// What SQLite memoises (the VMs, the catalog's aggregates, the newest
/// points, page counts) is read from the database on PostgreSQL: a
/// replica sees the other's writes at once.
#[tokio::test]
async fn replicas_see_each_others_writes_through_what_sqlite_memoises() {
    let (a, b) = replicas().await;
    // Read everything once on b, as a list or a scrape would.
    assert_eq!(b.vm("pbx1").await.unwrap().active_site, "site1");
    assert_eq!(b.vms().await.unwrap()[0].active_site, "site1");
    assert!(b.point_summary().await.unwrap().is_empty());
    assert!(b.copy_counts().await.unwrap().is_empty());
    assert!(b.latest_point("pbx1").await.unwrap().is_none());
    let q = crate::PointQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(b.point_page(&q).await.unwrap().1, 0);

    a.set_vm_placement("pbx1", "site2", "site2-host1")
        .await
        .unwrap();
    let p = point("pbx1", 1, &["site1-store"]);
    a.insert_point(&p).await.unwrap();

    let vms = b.vms().await.unwrap();
    assert_eq!(
        (vms[0].active_site.as_str(), vms[0].active_host.as_str()),
        ("site2", "site2-host1")
    );
    assert_eq!(b.point_summary().await.unwrap()[0].count, 1);
    assert_eq!(b.copy_counts().await.unwrap().len(), 2);
    assert_eq!(b.latest_point("pbx1").await.unwrap(), Some(p.clone()));
    let (page, total) = b.point_page(&q).await.unwrap();
    assert_eq!((page, total), (vec![p], 1));
}

/// Writers on two replicas queue on the advisory lock: read-then-write
/// transactions (a copy appended after the existing ones) never interleave.
#[tokio::test]
async fn writers_on_two_replicas_are_serialised() {
    let (a, b) = replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    a.insert_point(&point("pbx1", 1, &[])).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let repo = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { repo.add_point_copy("pbx1@1", &format!("ds{i:02}")).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let copies = b.point("pbx1@1").await.unwrap().copies;
    assert_eq!(copies.len(), 24);
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM point_copies ORDER BY position")
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(
        positions,
        (0..24).collect::<Vec<i64>>(),
        "no position twice"
    );
}

/// A connection error names the database without its password. (A
/// database that does not exist, not a server that does not answer: the
/// pool retries that one for its acquire timeout, 30 s.)
#[tokio::test]
async fn a_connection_error_hides_the_password() {
    let port = standby_testkit::postgres::cluster().port;
    let url = format!("postgres://postgres:s3cret@127.0.0.1:{port}/no_such_db");
    let err = SqlRepo::connect(&url).await.err().unwrap();
    assert!(matches!(err, DbError::Connect { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains(&format!("127.0.0.1:{port}/no_such_db")),
        "{shown}"
    );
    assert!(!err.is_temporary(), "a missing database stays missing");
    let err = SqlRepo::connect("mysql://u:s3cret@h/d")
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// Once a replica takes the lease, its writes are checked against it:
/// after another replica takes it over, the deposed one's write is
/// refused and changes nothing, and the new leader's memos (on now that it
/// is the only writer) see what it writes.
#[tokio::test]
async fn a_deposed_leader_cannot_write() {
    use crate::LeaseRepo;
    use std::time::Duration;

    let (a, b) = replicas().await;
    let lease = a
        .acquire_lease("a", "http://a", Duration::from_millis(300), 0, false)
        .await
        .unwrap();
    assert!(lease.held);
    a.set_vm_placement("pbx1", "site2", "site2-host1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lease = b
        .acquire_lease("b", "http://b", Duration::from_secs(30), 0, false)
        .await
        .unwrap();
    assert!(lease.held);
    assert_eq!(b.vm("pbx1").await.unwrap().active_site, "site2");
    let err = a
        .set_vm_placement("pbx1", "site1", "site1-host1")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    assert!(
        err.to_string().contains("no longer holds the leader lease"),
        "{err}"
    );
    let err = a.insert_point(&point("pbx1", 7, &[])).await.unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    // Single statements too: a job's state, a service's site.
    let job = b.create_job("runbook", "failover-site").await.unwrap();
    let err = a.start_job(job.id).await.unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    assert_eq!(b.job(job.id).await.unwrap().status, JobStatus::Queued);
    let err = crate::ServiceRepo::init_service(&a, "sip", "site1")
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    assert!(crate::ServiceRepo::service(&b, "sip").await.is_err());
    // And writes that return what they wrote: a new job, a lifted fence.
    let err = a.create_job("restore", "pbx1").await.unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    b.fence("site1", Utc::now(), "test").await.unwrap();
    let err = a.unfence("site1").await.unwrap_err();
    assert!(matches!(err, DbError::NotLeader { .. }), "{err}");
    assert_eq!(b.fences().await.unwrap().len(), 1);
    b.start_job(job.id).await.unwrap();
    assert_eq!(b.job(job.id).await.unwrap().status, JobStatus::Running);
    assert_eq!(b.vm("pbx1").await.unwrap().active_site, "site2");
    assert!(b.point_summary().await.unwrap().is_empty());
    b.set_vm_placement("pbx1", "site1", "site1-host1")
        .await
        .unwrap();
    b.insert_point(&point("pbx1", 8, &[])).await.unwrap();
    assert_eq!(b.vm("pbx1").await.unwrap().active_site, "site1");
    assert_eq!(b.point_summary().await.unwrap()[0].count, 1);
}

/// While the leader's write is under way (its transaction open), its
/// lease renews without waiting for it, and another replica's takeover,
/// once the lease lapsed, waits until the write is done: a write the
/// old leader began under its lease never lands after the new leader
/// took over.
#[tokio::test]
async fn a_renewal_does_not_wait_for_writes_and_a_takeover_does() {
    use crate::LeaseRepo;
    use std::time::{Duration, Instant};

    let (a, b) = replicas().await;
    let ttl = Duration::from_millis(600);
    assert!(
        a.acquire_lease("a", "http://a", ttl, 0, false)
            .await
            .unwrap()
            .held
    );
    let tx = a.begin_write(&a.pool, "a long write", true).await.unwrap();
    let t = Instant::now();
    let renewed = tokio::time::timeout(
        Duration::from_secs(2),
        a.acquire_lease("a", "http://a", ttl, 0, false),
    )
    .await
    .expect("the renewal waited for the write")
    .unwrap();
    assert!(renewed.held && renewed.epoch == 1, "{renewed:?}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // a stops renewing; b tries to take over while a's write is open.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let takeover = tokio::spawn(async move {
        let t = Instant::now();
        let l = b
            .acquire_lease("b", "http://b", Duration::from_secs(30), 0, false)
            .await
            .unwrap();
        (l, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover did not wait for the write"
    );
    tx.commit().await.unwrap();
    let (lease, waited) = takeover.await.unwrap();
    assert!(lease.held && lease.epoch == 2, "{lease:?}");
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
}
