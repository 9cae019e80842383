use chrono::{TimeZone, Utc};

use super::SqlRepo;
use super::testing::TestDb;
use crate::{FenceRecord, Repo};

async fn a_fence_is_recorded_once_and_lifted_once(repo: SqlRepo) {
    assert!(repo.fences().await.unwrap().is_empty());
    let t1 = Utc.timestamp_opt(1_800_000_000, 5).unwrap();
    let t2 = Utc.timestamp_opt(1_800_000_100, 0).unwrap();
    let f = repo.fence("site1", t1, "flooded").await.unwrap();
    let want = FenceRecord {
        site: "site1".into(),
        since: t1,
        reason: "flooded".into(),
    };
    assert_eq!(f, want);
    // Fencing again keeps the first time and reason.
    assert_eq!(repo.fence("site1", t2, "again").await.unwrap(), want);
    repo.fence("site0", t2, "").await.unwrap();
    let all = repo.fences().await.unwrap();
    assert_eq!(
        all.iter().map(|f| f.site.as_str()).collect::<Vec<_>>(),
        ["site0", "site1"]
    );
    assert_eq!(repo.unfence("site1").await.unwrap(), Some(want));
    assert_eq!(repo.unfence("site1").await.unwrap(), None);
    assert_eq!(repo.fences().await.unwrap().len(), 1);
}

async fn a_fence_survives_reopening_the_database(db: TestDb) {
    let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    {
        let repo = db.open().await;
        repo.fence("site1", t, "power cut").await.unwrap();
    }
    let repo = db.open().await;
    let f = repo.fences().await.unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].since, f[0].reason.as_str()), (t, "power cut"));
}

on_both! {
    repo: [
        a_fence_is_recorded_once_and_lifted_once,
    ],
    db: [
        a_fence_survives_reopening_the_database,
    ],
}
