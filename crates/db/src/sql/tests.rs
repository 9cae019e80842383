use std::path::Path;

use sqlx::Row;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use standby_types::config::{Config, EXAMPLE};
use standby_types::model::{DiskRecord, HostRecord, JobStatus, PointRecord, SiteRecord};

use super::SqlRepo;
use super::testing::TestDb;
use crate::{CatalogSync, CopyCount, DbError, INTERRUPTED, PointQuery, Repo, VmPoints};

fn config(src: &str) -> Config {
    Config::parse(src, Path::new("standby.toml")).expect("test config is valid")
}

/// The example plus a second VM `pbx2` in group `gold`.
fn two_vm_config() -> Config {
    let src = EXAMPLE.replace("members = [\"pbx1\"]", "members = [\"pbx1\", \"pbx2\"]")
        + r#"
[vms.pbx2]
host = "site1-host1"
command = "standby-vnf"

[[vms.pbx2.disks]]
name = "boot"
size = "1GiB"

[[vms.pbx2.disks]]
name = "data"
size = "64KiB"
"#;
    config(&src)
}

/// `repo` with the example configuration applied.
async fn example(repo: SqlRepo) -> SqlRepo {
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    repo
}

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, nanos).unwrap()
}

fn point(vm: &str, secs: i64, copies: &[&str]) -> PointRecord {
    let time = at(secs, 123_456_789);
    PointRecord {
        id: format!("{vm}@{}", time.format("%Y-%m-%dT%H:%M:%S%.9fZ")),
        vm: vm.into(),
        group: Some("gold".into()),
        site: "site1".into(),
        time,
        consistency: "crash".into(),
        size: 64 << 20,
        bytes_read: 3 << 20,
        bytes_new: 1 << 20,
        copies: copies.iter().map(|c| c.to_string()).collect(),
        damaged: Vec::new(),
    }
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, DbError>, kind: &str, name: &str) {
    match r {
        Err(e @ DbError::NotFound { .. }) => {
            let DbError::NotFound { kind: k, name: n } = &e else {
                unreachable!()
            };
            assert_eq!((*k, n.as_str()), (kind, name));
            assert_eq!(e.to_string(), format!("{kind} '{name}' not found"));
            assert!(!e.is_temporary());
        }
        other => panic!("expected {kind} '{name}' not found, got {other:?}"),
    }
}

/// Callers hold the repository as `Arc<dyn Repo>`.
async fn repo_is_object_safe(repo: SqlRepo) {
    let repo: std::sync::Arc<dyn Repo> = std::sync::Arc::new(example(repo).await);
    assert_eq!(repo.sites().await.unwrap().len(), 2);
}

async fn example_config_fills_the_inventory(repo: SqlRepo) {
    let repo = example(repo).await;

    assert_eq!(
        repo.sites().await.unwrap(),
        vec![
            SiteRecord {
                name: "site1".into(),
                description: "primary datacenter".into()
            },
            SiteRecord {
                name: "site2".into(),
                description: "DR site".into()
            },
        ]
    );
    assert_eq!(
        repo.hosts().await.unwrap(),
        vec![
            HostRecord {
                name: "site1-host1".into(),
                site: "site1".into(),
                driver: "process".into()
            },
            HostRecord {
                name: "site2-host1".into(),
                site: "site2".into(),
                driver: "process".into()
            },
        ]
    );

    let vms = repo.vms().await.unwrap();
    assert_eq!(vms.len(), 1);
    let vm = repo.vm("pbx1").await.unwrap();
    assert_eq!(vms[0], vm);
    assert_eq!(vm.home_site, "site1");
    assert_eq!(vm.home_host, "site1-host1");
    assert_eq!(vm.dr_site.as_deref(), Some("site2"));
    assert_eq!(
        (vm.active_site.as_str(), vm.active_host.as_str()),
        ("site1", "site1-host1"),
        "a new VM starts active at home"
    );

    assert_eq!(
        repo.disks("pbx1").await.unwrap(),
        vec![DiskRecord {
            vm: "pbx1".into(),
            name: "data".into(),
            size: 64 << 20
        }]
    );
    assert!(repo.disks("nope").await.unwrap().is_empty());

    let groups = repo.groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    let gold = repo.group("gold").await.unwrap();
    assert_eq!(groups[0], gold);
    assert_eq!(gold.schedule, "every 30s");
    assert_eq!(gold.members, ["pbx1"]);
    assert_eq!(gold.datastores, ["site1-store", "site2-store"]);
    assert_eq!(
        (gold.next_run, gold.last_run, gold.last_status),
        (None, None, None)
    );
}

async fn disks_and_members_keep_configuration_order(repo: SqlRepo) {
    repo.apply_config(&two_vm_config()).await.unwrap();
    let disks: Vec<_> = repo.disks("pbx2").await.unwrap();
    let names: Vec<_> = disks.iter().map(|d| (d.name.as_str(), d.size)).collect();
    assert_eq!(names, [("boot", 1 << 30), ("data", 64 << 10)]);
    assert_eq!(repo.vm("pbx2").await.unwrap().dr_site, None);
    assert_eq!(repo.group("gold").await.unwrap().members, ["pbx1", "pbx2"]);
}

async fn reapplying_keeps_placement_and_schedule(repo: SqlRepo) {
    let repo = example(repo).await;
    let next = at(30, 5);
    // The inventory is read before and after the move: never an old one.
    assert_eq!(repo.vms().await.unwrap()[0].active_site, "site1");
    repo.set_vm_placement("pbx1", "site2", "site2-host1")
        .await
        .unwrap();
    assert_eq!(repo.vms().await.unwrap()[0].active_site, "site2");
    repo.set_group_schedule("gold", Some(next)).await.unwrap();
    repo.record_group_run("gold", at(0, 7), "succeeded")
        .await
        .unwrap();

    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    let vm = repo.vm("pbx1").await.unwrap();
    assert_eq!(
        (vm.active_site.as_str(), vm.active_host.as_str()),
        ("site2", "site2-host1")
    );
    assert_eq!(vm.home_site, "site1");
    let gold = repo.group("gold").await.unwrap();
    assert_eq!(gold.next_run, Some(next));
    assert_eq!(gold.last_run, Some(at(0, 7)));
    assert_eq!(gold.last_status.as_deref(), Some("succeeded"));

    // A new schedule text drops next_run but keeps the run history.
    let changed = EXAMPLE.replace("schedule = \"every 30s\"", "schedule = \"every 1m\"");
    repo.apply_config(&config(&changed)).await.unwrap();
    let gold = repo.group("gold").await.unwrap();
    assert_eq!(gold.schedule, "every 1m");
    assert_eq!(gold.next_run, None);
    assert_eq!(gold.last_run, Some(at(0, 7)));
    assert_eq!(gold.last_status.as_deref(), Some("succeeded"));

    assert_eq!(repo.vms().await.unwrap().len(), 1);
    repo.apply_config(&two_vm_config()).await.unwrap();
    assert_eq!(repo.vms().await.unwrap().len(), 2);
}

async fn placement_must_name_a_host_at_the_site(repo: SqlRepo) {
    let repo = example(repo).await;
    let err = repo
        .set_vm_placement("pbx1", "site1", "site2-host1")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "host 'site2-host1' is not at site 'site1'");
    assert_not_found(
        repo.set_vm_placement("pbx1", "site2", "nowhere").await,
        "host",
        "nowhere",
    );
    assert_not_found(
        repo.set_vm_placement("pbx1", "site9", "site2-host1").await,
        "site",
        "site9",
    );
    assert_not_found(
        repo.set_vm_placement("pbx9", "site2", "site2-host1").await,
        "vm",
        "pbx9",
    );
    assert_eq!(repo.vm("pbx1").await.unwrap().active_host, "site1-host1");
}

async fn removing_a_vm_keeps_its_points(repo: SqlRepo) {
    repo.apply_config(&two_vm_config()).await.unwrap();
    let p = point("pbx2", 0, &["site1-store"]);
    repo.insert_point(&p).await.unwrap();
    let job = repo.create_job("protect", "gold").await.unwrap();

    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    let names: Vec<_> = repo
        .vms()
        .await
        .unwrap()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(names, ["pbx1"]);
    assert_not_found(repo.vm("pbx2").await, "vm", "pbx2");
    assert!(repo.disks("pbx2").await.unwrap().is_empty());
    assert_eq!(repo.group("gold").await.unwrap().members, ["pbx1"]);
    assert_eq!(repo.points(Some("pbx2")).await.unwrap(), vec![p]);
    assert_eq!(repo.job(job.id).await.unwrap(), job);
}

async fn removing_hosts_sites_and_groups(repo: SqlRepo) {
    let repo = example(repo).await;
    repo.set_vm_placement("pbx1", "site2", "site2-host1")
        .await
        .unwrap();
    repo.insert_point(&point("pbx1", 0, &["site2-store"]))
        .await
        .unwrap();

    // Without site2's host the VM can't be active there: back home.
    let src = EXAMPLE.replace(
        "[hosts.site2-host1]\nsite = \"site2\"\ndriver = \"process\"\ndisk_dir = \"site2/disks\"\n",
        "",
    );
    assert_ne!(src, EXAMPLE);
    repo.apply_config(&config(&src)).await.unwrap();
    let hosts: Vec<_> = repo
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(hosts, ["site1-host1"]);
    let vm = repo.vm("pbx1").await.unwrap();
    assert_eq!(
        (vm.active_site.as_str(), vm.active_host.as_str()),
        ("site1", "site1-host1")
    );

    // An empty configuration empties the inventory, not the catalog.
    repo.apply_config(&config("")).await.unwrap();
    assert!(repo.sites().await.unwrap().is_empty());
    assert!(repo.hosts().await.unwrap().is_empty());
    assert!(repo.vms().await.unwrap().is_empty());
    assert!(repo.groups().await.unwrap().is_empty());
    assert_not_found(repo.group("gold").await, "group", "gold");
    assert_eq!(repo.points(None).await.unwrap().len(), 1);
}

async fn point_copies_are_ordered_and_the_last_one_takes_the_point(repo: SqlRepo) {
    let repo = example(repo).await;
    let mut p = point("pbx1", 0, &["site1-store"]);
    repo.insert_point(&p).await.unwrap();
    assert_eq!(repo.point(&p.id).await.unwrap(), p);

    repo.add_point_copy(&p.id, "site2-store").await.unwrap();
    repo.add_point_copy(&p.id, "site1-store").await.unwrap();
    repo.add_point_copy(&p.id, "site2-store").await.unwrap();
    assert_eq!(
        repo.point(&p.id).await.unwrap().copies,
        ["site1-store", "site2-store"]
    );

    // Re-inserting updates the fields and never forgets a copy.
    p.bytes_new = 42;
    p.copies = vec!["site1-store".into(), "cloud-store".into()];
    repo.insert_point(&p).await.unwrap();
    let stored = repo.point(&p.id).await.unwrap();
    assert_eq!(stored.bytes_new, 42);
    assert_eq!(stored.copies, ["site1-store", "site2-store", "cloud-store"]);

    repo.remove_point_copy(&p.id, "site1-store").await.unwrap();
    repo.remove_point_copy(&p.id, "site1-store").await.unwrap();
    assert_eq!(
        repo.point(&p.id).await.unwrap().copies,
        ["site2-store", "cloud-store"]
    );
    // A copy added after a removal goes last.
    repo.add_point_copy(&p.id, "site1-store").await.unwrap();
    assert_eq!(
        repo.point(&p.id).await.unwrap().copies,
        ["site2-store", "cloud-store", "site1-store"]
    );

    for ds in ["site2-store", "cloud-store", "site1-store"] {
        repo.remove_point_copy(&p.id, ds).await.unwrap();
    }
    assert_not_found(repo.point(&p.id).await, "point", &p.id);
    assert!(repo.points(None).await.unwrap().is_empty());
    assert_not_found(
        repo.add_point_copy(&p.id, "site1-store").await,
        "point",
        &p.id,
    );
    assert_not_found(
        repo.remove_point_copy(&p.id, "site1-store").await,
        "point",
        &p.id,
    );
}

async fn points_are_listed_oldest_first_and_by_vm(repo: SqlRepo) {
    repo.apply_config(&two_vm_config()).await.unwrap();
    // 09Z sorts after 09.1Z as loosely formatted text; stored times are
    // fixed width so they sort as times.
    let mut older = point("pbx1", 9, &["site1-store"]);
    older.time = at(9, 0);
    let mut newer = point("pbx1", 9, &["site1-store"]);
    newer.id.push_str("-later");
    newer.time = at(9, 100_000_000);
    let other = point("pbx2", 5, &["site2-store"]);
    let mut no_group = point("pbx1", 100_000, &[]);
    no_group.group = None;
    for p in [&newer, &other, &no_group, &older] {
        repo.insert_point(p).await.unwrap();
    }
    let ids = |v: Vec<PointRecord>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(repo.points(None).await.unwrap()),
        [other.id.as_str(), &older.id, &newer.id, &no_group.id]
    );
    assert_eq!(
        repo.points(Some("pbx1")).await.unwrap(),
        vec![older, newer, no_group]
    );
    assert!(repo.points(Some("pbx9")).await.unwrap().is_empty());
}

/// 3 VMs × 20 points at two sites, in two groups and none, with one,
/// two or no copies.
async fn catalog(repo: SqlRepo) -> (SqlRepo, Vec<PointRecord>) {
    repo.apply_config(&two_vm_config()).await.unwrap();
    let mut all = Vec::new();
    for (n, vm) in ["pbx1", "pbx2", "pbx3"].iter().enumerate() {
        for i in 0..20i64 {
            let copies: &[&str] = match i % 3 {
                0 => &["site1-store"],
                1 => &["site1-store", "site2-store"],
                _ => &["site2-store"],
            };
            let mut p = point(vm, i * 10 + n as i64, copies);
            p.site = if i % 2 == 0 { "site1" } else { "site2" }.into();
            p.group = match i % 4 {
                0 => None,
                1 => Some("silver".into()),
                _ => Some("gold".into()),
            };
            p.size = (i as u64 + 1) << 20;
            p.bytes_new = i as u64;
            repo.insert_point(&p).await.unwrap();
            all.push(p);
        }
    }
    all.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    (repo, all)
}

async fn a_page_of_points_is_what_filtering_the_whole_catalog_gives(repo: SqlRepo) {
    let (repo, all) = catalog(repo).await;
    let since = all[17].time;
    let queries = [
        PointQuery {
            limit: 7,
            ..PointQuery::default()
        },
        PointQuery {
            limit: 7,
            offset: 50,
            ..PointQuery::default()
        },
        PointQuery {
            limit: 100,
            offset: 60,
            ..PointQuery::default()
        },
        PointQuery {
            vm: Some("pbx2".into()),
            limit: 5,
            offset: 3,
            ..PointQuery::default()
        },
        PointQuery {
            vms: Some(vec!["pbx1".into(), "pbx3".into()]),
            limit: 1000,
            ..PointQuery::default()
        },
        PointQuery {
            vms: Some(vec![]),
            limit: 10,
            ..PointQuery::default()
        },
        PointQuery {
            site: Some("site2".into()),
            group: Some("gold".into()),
            limit: 1000,
            ..PointQuery::default()
        },
        PointQuery {
            since: Some(since),
            limit: 4,
            offset: 2,
            newest_first: true,
            ..PointQuery::default()
        },
        PointQuery {
            vm: Some("pbx1".into()),
            vms: Some(vec!["pbx2".into()]),
            limit: 10,
            ..PointQuery::default()
        },
        PointQuery {
            vm: Some("pbx3".into()),
            limit: 0,
            ..PointQuery::default()
        },
    ];
    for q in &queries {
        let mut want: Vec<&PointRecord> = all
            .iter()
            .filter(|p| q.vm.as_ref().is_none_or(|v| &p.vm == v))
            .filter(|p| q.vms.as_ref().is_none_or(|v| v.contains(&p.vm)))
            .filter(|p| q.site.as_ref().is_none_or(|s| &p.site == s))
            .filter(|p| q.group.is_none() || p.group == q.group)
            .filter(|p| q.since.is_none_or(|t| p.time >= t))
            .collect();
        let total = want.len() as u64;
        if q.newest_first {
            want.reverse();
        }
        let want: Vec<PointRecord> = want
            .into_iter()
            .skip(q.offset as usize)
            .take(q.limit as usize)
            .cloned()
            .collect();
        let (got, got_total) = repo.point_page(q).await.unwrap();
        assert_eq!(got_total, total, "{q:?}");
        assert_eq!(got, want, "{q:?}");
    }
}

async fn point_summary_and_copy_counts_agree_with_the_catalog(repo: SqlRepo) {
    let (repo, all) = catalog(repo).await;
    let summary = repo.point_summary().await.unwrap();
    let mut want = Vec::new();
    for vm in ["pbx1", "pbx2", "pbx3"] {
        let mine: Vec<&PointRecord> = all.iter().filter(|p| p.vm == vm).collect();
        let newest = mine.last().unwrap();
        want.push(VmPoints {
            vm: vm.into(),
            count: mine.len() as u64,
            newest: newest.time,
            newest_size: newest.size,
            new_bytes: mine.iter().map(|p| p.bytes_new).sum(),
        });
    }
    assert_eq!(summary, want);

    let mut counts = repo.copy_counts().await.unwrap();
    counts.sort_by(|a, b| (&a.vm, &a.group, &a.datastore).cmp(&(&b.vm, &b.group, &b.datastore)));
    let mut want: std::collections::BTreeMap<(String, Option<String>, Option<String>), u64> =
        Default::default();
    for p in &all {
        *want
            .entry((p.vm.clone(), p.group.clone(), None))
            .or_default() += 1;
        for c in &p.copies {
            *want
                .entry((p.vm.clone(), p.group.clone(), Some(c.clone())))
                .or_default() += 1;
        }
    }
    let want: Vec<CopyCount> = want
        .into_iter()
        .map(|((vm, group, datastore), count)| CopyCount {
            vm,
            group,
            datastore,
            count,
        })
        .collect();
    assert_eq!(counts, want);

    // Read again after each kind of write: never an old answer.
    let of_pbx2 = PointQuery {
        vm: Some("pbx2".into()),
        ..PointQuery::default()
    };
    assert_eq!(repo.point_page(&of_pbx2).await.unwrap().1, 20);
    let mut newer = point("pbx2", 10_000, &["site9-store"]);
    newer.size = 7;
    repo.insert_point(&newer).await.unwrap();
    assert_eq!(repo.point_page(&of_pbx2).await.unwrap().1, 21);
    assert_eq!(
        repo.latest_points(&["pbx2".into()]).await.unwrap(),
        vec![newer.clone()]
    );
    assert_eq!(
        repo.latest_point("pbx2").await.unwrap(),
        Some(newer.clone())
    );
    assert_eq!(repo.latest_point("pbx9").await.unwrap(), None);
    let pbx2 = |s: Vec<VmPoints>| s.into_iter().find(|s| s.vm == "pbx2").unwrap();
    let after = pbx2(repo.point_summary().await.unwrap());
    assert_eq!(
        (after.count, after.newest, after.newest_size),
        (21, newer.time, 7)
    );
    let held = |c: &[CopyCount]| {
        c.iter()
            .any(|c| c.datastore.as_deref() == Some("site9-store"))
    };
    assert!(held(&repo.copy_counts().await.unwrap()));
    repo.remove_point_copy(&newer.id, "site9-store")
        .await
        .unwrap();
    assert_eq!(pbx2(repo.point_summary().await.unwrap()).count, 20);
    // (Counted from the summary just read, as from the table before.)
    assert_eq!(repo.point_page(&of_pbx2).await.unwrap().1, 20);
    let of_none = PointQuery {
        vm: Some("pbx9".into()),
        ..PointQuery::default()
    };
    assert_eq!(repo.point_page(&of_none).await.unwrap().1, 0);
    assert_ne!(
        repo.newest_point_times(&["pbx2".into()]).await.unwrap()[0].1,
        newer.time
    );
    assert!(!held(&repo.copy_counts().await.unwrap()));
    repo.sync_catalog("site9-store", &[newer.clone()])
        .await
        .unwrap();
    assert_eq!(pbx2(repo.point_summary().await.unwrap()).count, 21);
    repo.add_point_copy(&newer.id, "site8-store").await.unwrap();
    assert!(
        repo.copy_counts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.datastore.as_deref() == Some("site8-store"))
    );

    let since = all[30].time;
    let vms = vec!["pbx1".to_string(), "pbx3".to_string()];
    let times = repo.point_times(&vms, since).await.unwrap();
    let want: Vec<(String, DateTime<Utc>)> = all
        .iter()
        .filter(|p| vms.contains(&p.vm) && p.time >= since)
        .map(|p| (p.vm.clone(), p.time))
        .collect();
    assert_eq!(times, want);

    let ids = vec![
        all[3].id.clone(),
        "pbx1@never".to_string(),
        all[40].id.clone(),
    ];
    let mut want = vec![
        (all[3].id.clone(), all[3].vm.clone()),
        (all[40].id.clone(), all[40].vm.clone()),
    ];
    want.sort();
    assert_eq!(repo.point_vms(&ids).await.unwrap(), want);
}

async fn the_catalog_of_a_datastore_becomes_what_it_holds(repo: SqlRepo) {
    let repo = example(repo).await;
    let a = point("pbx1", 1, &["site1-store"]);
    let b = point("pbx1", 2, &["site1-store", "site2-store"]);
    let c = point("pbx1", 3, &["site2-store"]);
    for p in [&a, &b, &c] {
        repo.insert_point(p).await.unwrap();
    }
    // site2-store now holds a (new copy) and d (new point); b's copy
    // vanished, and c (only there) goes with it.
    let d = point("pbx1", 4, &["site2-store"]);
    let mut a2 = a.clone();
    a2.copies = vec!["site2-store".into()];
    a2.bytes_new = 999; // a known point keeps its fields
    let changed = repo
        .sync_catalog("site2-store", &[a2.clone(), d.clone()])
        .await
        .unwrap();
    assert_eq!(
        changed,
        CatalogSync {
            points_added: 1,
            copies_added: 1,
            copies_removed: 2
        }
    );
    let all = repo.points(None).await.unwrap();
    let copies: Vec<(&str, Vec<&str>)> = all
        .iter()
        .map(|p| (p.id.as_str(), p.copies.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        copies,
        vec![
            (a.id.as_str(), vec!["site1-store", "site2-store"]),
            (b.id.as_str(), vec!["site1-store"]),
            (d.id.as_str(), vec!["site2-store"]),
        ]
    );
    assert_eq!(all[0].bytes_new, a.bytes_new);
    // Again: nothing to do.
    assert_eq!(
        repo.sync_catalog("site2-store", &[a2, d]).await.unwrap(),
        CatalogSync::default()
    );
    // An empty store forgets its copies only.
    repo.sync_catalog("site2-store", &[]).await.unwrap();
    let ids: Vec<String> = repo
        .points(None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![a.id, b.id]);
}

async fn job_lifecycle_and_progress(repo: SqlRepo) {
    let before = Utc::now();
    let job = repo.create_job("protect", "gold").await.unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.result, serde_json::Value::Null);
    assert_eq!((job.progress_done, job.progress_total), (0, 0));
    assert!(job.created_at >= before);
    assert_eq!(repo.job(job.id).await.unwrap(), job);

    repo.start_job(job.id).await.unwrap();
    let running = repo.job(job.id).await.unwrap();
    assert_eq!(running.status, JobStatus::Running);
    assert!(running.started_at.unwrap() >= job.created_at);
    assert_eq!(running.finished_at, None);

    repo.update_job(job.id, 1 << 20, 64 << 20, "pbx1: reading disk data")
        .await
        .unwrap();
    let j = repo.job(job.id).await.unwrap();
    assert_eq!((j.progress_done, j.progress_total), (1 << 20, 64 << 20));
    assert_eq!(j.message, "pbx1: reading disk data");

    let result = json!({"points": ["pbx1@2026-01-01T00:00:00Z"], "bytes_new": 4096});
    repo.finish_job(job.id, JobStatus::Succeeded, None, &result)
        .await
        .unwrap();
    let done = repo.job(job.id).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, result);
    assert_eq!(done.error, None);
    assert!(done.finished_at.unwrap() >= done.started_at.unwrap());
    assert_eq!(done.message, "pbx1: reading disk data");

    let failed = repo.create_job("restore", "pbx1@x").await.unwrap();
    repo.finish_job(
        failed.id,
        JobStatus::Failed,
        Some("datastore site2-store is unreachable"),
        &serde_json::Value::Null,
    )
    .await
    .unwrap();
    let failed = repo.job(failed.id).await.unwrap();
    assert_eq!(
        failed.error.as_deref(),
        Some("datastore site2-store is unreachable")
    );
    assert!(failed.id > job.id);

    let third = repo.create_job("gc", "site1-store").await.unwrap();
    let kinds =
        |v: Vec<standby_types::model::Job>| v.into_iter().map(|j| j.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(repo.jobs(10).await.unwrap()),
        ["gc", "restore", "protect"]
    );
    assert_eq!(repo.jobs(1).await.unwrap(), vec![third]);
    assert!(repo.jobs(0).await.unwrap().is_empty());

    assert_not_found(repo.job(999).await, "job", "999");
    assert_not_found(repo.start_job(999).await, "job", "999");
    assert_not_found(repo.update_job(999, 1, 2, "x").await, "job", "999");
    assert_not_found(
        repo.finish_job(999, JobStatus::Failed, None, &json!(null))
            .await,
        "job",
        "999",
    );
}

async fn interrupted_jobs_fail_at_start(repo: SqlRepo) {
    let queued = repo.create_job("sync", "site2-store").await.unwrap();
    let running = repo.create_job("protect", "gold").await.unwrap();
    repo.start_job(running.id).await.unwrap();
    let done = repo.create_job("verify", "site1-store").await.unwrap();
    repo.finish_job(done.id, JobStatus::Succeeded, None, &json!({"ok": true}))
        .await
        .unwrap();

    assert_eq!(repo.fail_interrupted_jobs().await.unwrap(), 2);
    for id in [queued.id, running.id] {
        let j = repo.job(id).await.unwrap();
        assert_eq!(j.status, JobStatus::Failed);
        assert_eq!(j.error.as_deref(), Some(INTERRUPTED));
        assert!(j.finished_at.is_some());
    }
    let j = repo.job(done.id).await.unwrap();
    assert_eq!((j.status, j.error), (JobStatus::Succeeded, None));
    assert_eq!(repo.fail_interrupted_jobs().await.unwrap(), 0);
}

async fn not_found_names_kind_and_name(repo: SqlRepo) {
    let repo = example(repo).await;
    assert_not_found(repo.vm("pbx9").await, "vm", "pbx9");
    assert_not_found(repo.group("silver").await, "group", "silver");
    assert_not_found(
        repo.set_group_schedule("silver", None).await,
        "group",
        "silver",
    );
    assert_not_found(
        repo.record_group_run("silver", Utc::now(), "failed").await,
        "group",
        "silver",
    );
    assert_not_found(repo.point("pbx1@never").await, "point", "pbx1@never");
}

async fn state_survives_reopening_the_file(db: TestDb) {
    let next = at(30, 999_999_999);
    let p = point("pbx1", 0, &["site1-store", "site2-store"]);

    let repo = db.open().await;
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    repo.set_group_schedule("gold", Some(next)).await.unwrap();
    repo.set_vm_placement("pbx1", "site2", "site2-host1")
        .await
        .unwrap();
    repo.insert_point(&p).await.unwrap();
    let job = repo.create_job("protect", "gold").await.unwrap();
    repo.start_job(job.id).await.unwrap();
    repo.pool.close().await;
    drop(repo);

    // A restart: open, apply the same configuration, sweep jobs.
    let repo = db.open().await;
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    assert_eq!(repo.group("gold").await.unwrap().next_run, Some(next));
    assert_eq!(repo.vm("pbx1").await.unwrap().active_host, "site2-host1");
    assert_eq!(repo.points(None).await.unwrap(), vec![p]);
    assert_eq!(repo.fail_interrupted_jobs().await.unwrap(), 1);
    let j = repo.job(job.id).await.unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    // Ids are not reused after a restart.
    assert!(repo.create_job("gc", "x").await.unwrap().id > job.id);
}

/// The pragmas `Any` cannot take from the URL are set on every
/// connection of a file database.
#[tokio::test]
async fn a_sqlite_file_is_in_wal_mode_with_full_sync_and_foreign_keys() {
    let db = TestDb::sqlite_file();
    let repo = db.open().await;
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut c = repo.pool.acquire().await.unwrap();
        for (pragma, want) in [
            ("journal_mode", "wal"),
            ("synchronous", "2"),
            ("foreign_keys", "1"),
            ("busy_timeout", "5000"),
        ] {
            let row = sqlx::query(&format!("PRAGMA {pragma}"))
                .fetch_one(&mut *c)
                .await
                .unwrap();
            let got = match row.try_get::<String, _>(0) {
                Ok(s) => s,
                Err(_) => row.try_get::<i64, _>(0).unwrap().to_string(),
            };
            assert_eq!(got, want, "PRAGMA {pragma}");
        }
        conns.push(c);
    }
}

#[tokio::test]
async fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // A directory is not a database file.
    let err = SqlRepo::open(dir.path()).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        format!("unable to open database {}", dir.path().display())
    );
    // The parent is a file, so it can't become a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = SqlRepo::open(&file.join("state.db")).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        format!("unable to create database directory {}", file.display())
    );
}

/// Writers on several connections queue on the write lock instead of
/// failing with "database is locked".
#[tokio::test]
async fn concurrent_writers_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::sync::Arc::new(SqlRepo::open(&dir.path().join("state.db")).await.unwrap());
    repo.apply_config(&config(EXAMPLE)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let repo = repo.clone();
        tasks.spawn(async move {
            let job = repo.create_job("protect", "gold").await?;
            repo.start_job(job.id).await?;
            let p = point("pbx1", i, &["site1-store"]);
            repo.insert_point(&p).await?;
            repo.add_point_copy(&p.id, "site2-store").await?;
            repo.apply_config(&config(EXAMPLE)).await?;
            repo.finish_job(job.id, JobStatus::Succeeded, None, &json!(i))
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(repo.points(Some("pbx1")).await.unwrap().len(), 16);
    assert_eq!(repo.fail_interrupted_jobs().await.unwrap(), 0);
}

async fn damaged_copies_follow_the_verifies_and_the_copies(repo: SqlRepo) {
    let repo = example(repo).await;
    let a = point("pbx1", 1, &["site1-store", "site2-store"]);
    let b = point("pbx1", 2, &["site1-store", "site2-store"]);
    for p in [&a, &b] {
        repo.insert_point(p).await.unwrap();
    }
    let found = |ids: &[&PointRecord]| -> Vec<(String, String)> {
        ids.iter()
            .map(|p| (p.id.clone(), "corrupt chunk".to_string()))
            .collect()
    };
    // A sample adds; a copy the catalog does not have is ignored.
    repo.set_damaged("site2-store", &found(&[&a]), false)
        .await
        .unwrap();
    repo.set_damaged("site3-store", &found(&[&b]), false)
        .await
        .unwrap();
    repo.set_damaged("site2-store", &found(&[&b]), false)
        .await
        .unwrap();
    let d = repo.damaged_copies().await.unwrap();
    let pairs: Vec<(&str, &str)> = d
        .iter()
        .map(|d| (d.point.as_str(), d.datastore.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            (a.id.as_str(), "site2-store"),
            (b.id.as_str(), "site2-store")
        ]
    );
    // A full verify makes the datastore's rows what it found.
    repo.set_damaged("site2-store", &found(&[&b]), true)
        .await
        .unwrap();
    let d = repo.damaged_copies().await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].point, b.id);
    // A repair clears the copies it made whole; others stay.
    repo.clear_damaged("site2-store", std::slice::from_ref(&a.id))
        .await
        .unwrap();
    assert_eq!(repo.damaged_copies().await.unwrap().len(), 1);
    // A copy that goes takes its damage with it.
    repo.remove_point_copy(&b.id, "site2-store").await.unwrap();
    assert!(repo.damaged_copies().await.unwrap().is_empty());
}

on_both! {
    repo: [
        damaged_copies_follow_the_verifies_and_the_copies,
        repo_is_object_safe,
        example_config_fills_the_inventory,
        disks_and_members_keep_configuration_order,
        reapplying_keeps_placement_and_schedule,
        placement_must_name_a_host_at_the_site,
        removing_a_vm_keeps_its_points,
        removing_hosts_sites_and_groups,
        point_copies_are_ordered_and_the_last_one_takes_the_point,
        points_are_listed_oldest_first_and_by_vm,
        a_page_of_points_is_what_filtering_the_whole_catalog_gives,
        point_summary_and_copy_counts_agree_with_the_catalog,
        the_catalog_of_a_datastore_becomes_what_it_holds,
        job_lifecycle_and_progress,
        interrupted_jobs_fail_at_start,
        not_found_names_kind_and_name,
    ],
    db: [
        state_survives_reopening_the_file,
    ],
}
