use serde_json::json;
use standby_types::model::JobStatus;

use super::SqlRepo;
use crate::{NewRun, Repo, RunStart, RunbookRepo, StepRecord, StepState};

fn new_run(lock: Option<&str>) -> NewRun {
    NewRun {
        runbook: "failover-site".into(),
        file: "builtin:failover-site.yaml".into(),
        source: "name: failover-site\n".into(),
        params: json!({"site": "site1"}),
        trigger: json!({"kind": "manual"}),
        lock_key: lock.map(str::to_string),
        incident: None,
    }
}

fn step(job: i64, id: &str, item: i64, state: StepState) -> StepRecord {
    StepRecord {
        job,
        step: id.into(),
        item,
        position: 1,
        state,
        attempt: 1,
        input: json!({"vm": "pbx"}),
        output: serde_json::Value::Null,
        error: None,
        started_at: Some(chrono::Utc::now()),
        finished_at: None,
    }
}

async fn a_run_creates_its_job_and_holds_its_lock_until_released(repo: SqlRepo) {
    let RunStart::Started(job) = repo.create_run(&new_run(Some("site:site1"))).await.unwrap()
    else {
        panic!("not started");
    };
    let j = repo.job(job).await.unwrap();
    assert_eq!(
        (j.kind.as_str(), j.target.as_str()),
        ("runbook", "failover-site")
    );
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(
        repo.run(job).await.unwrap().run,
        new_run(Some("site:site1"))
    );
    // The same key is refused and creates no job; another key is fine.
    assert_eq!(
        repo.create_run(&new_run(Some("site:site1"))).await.unwrap(),
        RunStart::Locked(job)
    );
    assert_eq!(repo.jobs(10).await.unwrap().len(), 1);
    let RunStart::Started(other) = repo.create_run(&new_run(Some("site:site2"))).await.unwrap()
    else {
        panic!("not started");
    };
    assert_eq!(
        repo.locks().await.unwrap(),
        vec![
            ("site:site1".to_string(), job),
            ("site:site2".to_string(), other)
        ]
    );
    repo.release_lock(job).await.unwrap();
    assert!(matches!(
        repo.create_run(&new_run(Some("site:site1"))).await.unwrap(),
        RunStart::Started(_)
    ));
}

async fn runbook_jobs_survive_the_interrupted_sweep_and_are_listed_unfinished(repo: SqlRepo) {
    let RunStart::Started(job) = repo.create_run(&new_run(None)).await.unwrap() else {
        panic!()
    };
    let other = repo.create_job("protect", "g").await.unwrap();
    repo.start_job(other.id).await.unwrap();
    assert_eq!(repo.fail_interrupted_jobs().await.unwrap(), 1);
    assert_eq!(repo.job(other.id).await.unwrap().status, JobStatus::Failed);
    assert_eq!(repo.job(job).await.unwrap().status, JobStatus::Running);
    let runs = repo.unfinished_runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].job, job);
    repo.set_run_incident(job, 7).await.unwrap();
    assert_eq!(repo.run(job).await.unwrap().run.incident, Some(7));
    repo.finish_job(job, JobStatus::Succeeded, None, &json!({}))
        .await
        .unwrap();
    assert!(repo.unfinished_runs().await.unwrap().is_empty());
}

async fn step_rows_are_overwritten_by_key_and_listed_in_order(repo: SqlRepo) {
    let RunStart::Started(job) = repo.create_run(&new_run(None)).await.unwrap() else {
        panic!()
    };
    let mut a = step(job, "restore", 1, StepState::Running);
    repo.put_step(&a).await.unwrap();
    let mut first = step(job, "fence", -1, StepState::Succeeded);
    first.position = 0;
    repo.put_step(&first).await.unwrap();
    repo.put_step(&step(job, "restore", 0, StepState::Skipped))
        .await
        .unwrap();
    a.state = StepState::Succeeded;
    a.output = json!({"point": "p1"});
    a.attempt = 2;
    a.finished_at = Some(chrono::Utc::now());
    repo.put_step(&a).await.unwrap();
    let steps = repo.steps(job).await.unwrap();
    let keys: Vec<(&str, i64, StepState)> = steps
        .iter()
        .map(|s| (s.step.as_str(), s.item, s.state))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("fence", -1, StepState::Succeeded),
            ("restore", 0, StepState::Skipped),
            ("restore", 1, StepState::Succeeded),
        ]
    );
    assert_eq!(steps[2].output, json!({"point": "p1"}));
    assert_eq!(steps[2].attempt, 2);
    assert!(steps[2].finished_at.is_some());
}

on_both! {
    repo: [
        a_run_creates_its_job_and_holds_its_lock_until_released,
        runbook_jobs_survive_the_interrupted_sweep_and_are_listed_unfinished,
        step_rows_are_overwritten_by_key_and_listed_in_order,
    ],
}
