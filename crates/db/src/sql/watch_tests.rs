use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use standby_types::watch::{
    Alert, AlertState, Event, Incident, IncidentState, Labels, Severity, Silence, TimelineEntry,
};

use super::SqlRepo;
use super::testing::TestDb;
use crate::{AlertQuery, DbError, EventQuery, Repo, WatchRepo};

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, nanos).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn event(secs: i64, kind: &str, source: &str, severity: Severity, l: &[(&str, &str)]) -> Event {
    Event {
        id: 0,
        at: at(secs, 123_456_789),
        source: source.into(),
        kind: kind.into(),
        severity,
        labels: labels(l),
        vantage: "controller".into(),
        message: format!("{kind} from {source} at {secs}"),
    }
}

fn alert(fingerprint: &str, rule: &str, secs: i64) -> Alert {
    Alert {
        id: 0,
        fingerprint: fingerprint.into(),
        rule: rule.into(),
        severity: Severity::Error,
        state: AlertState::Firing,
        labels: labels(&[("probe", "sip1"), ("site", "site1"), ("vm", "pbx1")]),
        annotations: labels(&[("summary", "sip down"), ("runbook", "failover")]),
        active_since: at(secs, 1),
        fired_at: at(secs + 30, 999_999_999),
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        inhibited_by: None,
        silenced_by: None,
        incident: None,
    }
}

fn incident(key: Option<&str>, state: IncidentState) -> Incident {
    Incident {
        id: 0,
        title: "site1 down".into(),
        severity: Severity::Critical,
        description: "every probe of site1 fails".into(),
        group: "noc".into(),
        state,
        template: Some("site-down".into()),
        key: key.map(Into::into),
        labels: labels(&[("site", "site1"), ("scope", "site")]),
        opened_at: at(100, 5),
        resolved_at: None,
        closed_at: None,
    }
}

fn silence(starts: i64, ends: i64) -> Silence {
    Silence {
        id: 0,
        matchers: labels(&[("site", "site2"), ("probe", "http1")]),
        comment: "maintenance".into(),
        created_by: "alice".into(),
        starts_at: at(starts, 0),
        ends_at: at(ends, 500),
    }
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, DbError>, kind: &str, name: &str) {
    match r {
        Err(DbError::NotFound { kind: k, name: n }) => assert_eq!((k, n.as_str()), (kind, name)),
        other => panic!("expected {kind} '{name}' not found, got {other:?}"),
    }
}

fn ids(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

/// Callers hold the repository as `Arc<dyn WatchRepo>`.
async fn watch_repo_is_object_safe(repo: SqlRepo) {
    let repo: std::sync::Arc<dyn WatchRepo> = std::sync::Arc::new(repo);
    assert!(
        repo.alerts(&AlertQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_round_trip_with_ids_in_order(repo: SqlRepo) {
    let mut a = event(1, "probe.result", "sip1", Severity::Warning, &[]);
    a.labels = labels(&[("probe", "sip1"), ("site", "site1"), ("vantage", "agent:a")]);
    a.vantage = "agent:a".into();
    let b = event(2, "agent.heartbeat", "agent:a", Severity::Info, &[]);
    let got = repo.insert_events(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0] < got[1]);
    assert!(repo.insert_events(&[]).await.unwrap().is_empty());

    let listed = repo.events(&EventQuery::default()).await.unwrap();
    a.id = got[0];
    let mut b = b;
    b.id = got[1];
    assert_eq!(listed, vec![a, b]);
}

async fn events_tail_after_id_and_newest_limit(repo: SqlRepo) {
    let evs: Vec<Event> = (0..10)
        .map(|i| event(i, "probe.result", "sip1", Severity::Info, &[]))
        .collect();
    let all = repo.insert_events(&evs).await.unwrap();

    // Without a cursor: the newest 3, oldest first.
    let q = EventQuery {
        limit: 3,
        ..Default::default()
    };
    assert_eq!(ids(&repo.events(&q).await.unwrap()), all[7..].to_vec());

    // Tailing: the next 4 after the cursor, oldest first.
    let q = EventQuery {
        after_id: Some(all[2]),
        limit: 4,
        ..Default::default()
    };
    assert_eq!(ids(&repo.events(&q).await.unwrap()), all[3..7].to_vec());
    let q = EventQuery {
        after_id: Some(all[9]),
        ..Default::default()
    };
    assert!(repo.events(&q).await.unwrap().is_empty());

    // Limit 0 is the default of 100.
    let many: Vec<Event> = (0..150)
        .map(|i| event(100 + i, "probe.result", "sip1", Severity::Info, &[]))
        .collect();
    let more = repo.insert_events(&many).await.unwrap();
    let got = repo.events(&EventQuery::default()).await.unwrap();
    assert_eq!(ids(&got), more[50..].to_vec());
    let q = EventQuery {
        after_id: Some(0),
        ..Default::default()
    };
    let got = ids(&repo.events(&q).await.unwrap());
    assert_eq!(got.len(), 100);
    assert_eq!(got[..10], all[..]);
}

async fn events_filter_kind_source_severity_since(repo: SqlRepo) {
    let got = repo
        .insert_events(&[
            event(1, "probe.result", "sip1", Severity::Info, &[]),
            event(2, "probe.result", "http1", Severity::Error, &[]),
            event(3, "alert.firing", "alert", Severity::Critical, &[]),
            event(4, "probe.result", "sip1", Severity::Warning, &[]),
        ])
        .await
        .unwrap();
    let list = |q: EventQuery| {
        let repo = &repo;
        async move { ids(&repo.events(&q).await.unwrap()) }
    };
    assert_eq!(
        list(EventQuery {
            kind: Some("probe.result".into()),
            ..Default::default()
        })
        .await,
        vec![got[0], got[1], got[3]]
    );
    assert_eq!(
        list(EventQuery {
            source: Some("sip1".into()),
            ..Default::default()
        })
        .await,
        vec![got[0], got[3]]
    );
    assert_eq!(
        list(EventQuery {
            min_severity: Some(Severity::Warning),
            ..Default::default()
        })
        .await,
        vec![got[1], got[2], got[3]]
    );
    assert_eq!(
        list(EventQuery {
            min_severity: Some(Severity::Error),
            kind: Some("probe.result".into()),
            ..Default::default()
        })
        .await,
        vec![got[1]]
    );
    // `since` is inclusive.
    assert_eq!(
        list(EventQuery {
            since: Some(at(3, 123_456_789)),
            ..Default::default()
        })
        .await,
        vec![got[2], got[3]]
    );
}

/// Labels are matched after reading; `limit` still counts matching events
/// even when they are far apart.
async fn events_filter_labels_across_pages(repo: SqlRepo) {
    let mut evs = Vec::new();
    for i in 0..1_200 {
        let site = if i % 300 == 7 { "site2" } else { "site1" };
        evs.push(event(
            i,
            "probe.result",
            "sip1",
            Severity::Info,
            &[("site", site), ("probe", "sip1")],
        ));
    }
    let all = repo.insert_events(&evs).await.unwrap();
    let site2: Vec<i64> = (0..1_200)
        .filter(|i| i % 300 == 7)
        .map(|i| all[i])
        .collect();
    assert_eq!(site2.len(), 4);

    let q = |after_id, limit, l: &[(&str, &str)]| EventQuery {
        after_id,
        limit,
        labels: labels(l),
        ..Default::default()
    };
    // Newest 3 matching, oldest first.
    let got = repo
        .events(&q(None, 3, &[("site", "site2")]))
        .await
        .unwrap();
    assert_eq!(ids(&got), site2[1..].to_vec());
    // Tailing: the first 2 matching after the cursor.
    let got = repo
        .events(&q(Some(all[10]), 2, &[("site", "site2")]))
        .await
        .unwrap();
    assert_eq!(ids(&got), site2[1..3].to_vec());
    // Every label must match.
    let got = repo
        .events(&q(None, 0, &[("site", "site2"), ("probe", "sip1")]))
        .await
        .unwrap();
    assert_eq!(ids(&got), site2);
    let got = repo
        .events(&q(None, 0, &[("site", "site2"), ("probe", "http1")]))
        .await
        .unwrap();
    assert!(got.is_empty());
    let got = repo.events(&q(None, 0, &[("vm", "pbx1")])).await.unwrap();
    assert!(got.is_empty());
}

async fn prune_events_by_age(repo: SqlRepo) {
    let got = repo
        .insert_events(&[
            event(1, "k", "s", Severity::Info, &[]),
            event(2, "k", "s", Severity::Info, &[]),
            event(3, "k", "s", Severity::Info, &[]),
        ])
        .await
        .unwrap();
    // Strictly older than `before`.
    assert_eq!(repo.prune_events(at(2, 123_456_789)).await.unwrap(), 1);
    assert_eq!(
        ids(&repo.events(&EventQuery::default()).await.unwrap()),
        got[1..].to_vec()
    );
    assert_eq!(repo.prune_events(at(1_000, 0)).await.unwrap(), 2);
    assert!(
        repo.events(&EventQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Ids are not reused after pruning.
    let next = repo
        .insert_events(&[event(4, "k", "s", Severity::Info, &[])])
        .await
        .unwrap();
    assert!(next[0] > got[2]);
}

async fn alerts_round_trip_and_keep_history(repo: SqlRepo) {
    let inc = repo
        .insert_incident(&incident(Some("site1"), IncidentState::New))
        .await
        .unwrap();
    let sil = repo.insert_silence(&silence(0, 1_000)).await.unwrap();

    let mut first = alert("fp1", "sip-down", 10);
    first.id = 12345; // ignored
    let id1 = repo.insert_alert(&first).await.unwrap();
    first.id = id1;
    assert_eq!(repo.alert(id1).await.unwrap(), first);

    // Every optional field set.
    let mut full = alert("fp2", "http-down", 20);
    full.state = AlertState::Acknowledged;
    full.acknowledged_at = Some(at(60, 7));
    full.acknowledged_by = Some("bob".into());
    full.resolved_at = Some(at(90, 8));
    full.inhibited_by = Some("fp1".into());
    full.silenced_by = Some(sil);
    full.incident = Some(inc);
    full.id = repo.insert_alert(&full).await.unwrap();
    assert_eq!(repo.alert(full.id).await.unwrap(), full);

    // The same fingerprint fires again after resolving: a second row.
    first.state = AlertState::Resolved;
    first.resolved_at = Some(at(40, 0));
    repo.update_alert(&first).await.unwrap();
    let mut again = alert("fp1", "sip-down", 50);
    again.id = repo.insert_alert(&again).await.unwrap();
    assert_ne!(again.id, first.id);
    assert_eq!(repo.alert(first.id).await.unwrap(), first);
    assert_eq!(repo.alert(again.id).await.unwrap(), again);

    // Newest first; empty states = all.
    let all = repo.alerts(&AlertQuery::default()).await.unwrap();
    assert_eq!(all, vec![again.clone(), full.clone(), first.clone()]);
    let q = |states: &[AlertState], rule: Option<&str>, limit| AlertQuery {
        states: states.to_vec(),
        rule: rule.map(Into::into),
        limit,
    };
    let list = |q: AlertQuery| {
        let repo = &repo;
        async move {
            repo.alerts(&q)
                .await
                .unwrap()
                .iter()
                .map(|a| a.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(q(&[AlertState::Firing], None, 0)).await,
        vec![again.id]
    );
    assert_eq!(
        list(q(&[AlertState::Firing, AlertState::Acknowledged], None, 0)).await,
        vec![again.id, full.id]
    );
    assert_eq!(
        list(q(&[], Some("sip-down"), 0)).await,
        vec![again.id, first.id]
    );
    assert_eq!(
        list(q(&[AlertState::Resolved], Some("sip-down"), 0)).await,
        vec![first.id]
    );
    assert_eq!(list(q(&[], None, 1)).await, vec![again.id]);
}

async fn update_alert_overwrites_only_mutable_fields(repo: SqlRepo) {
    let inc = repo
        .insert_incident(&incident(None, IncidentState::Active))
        .await
        .unwrap();
    let mut a = alert("fp1", "sip-down", 10);
    a.id = repo.insert_alert(&a).await.unwrap();

    let mut changed = a.clone();
    changed.state = AlertState::Acknowledged;
    changed.severity = Severity::Critical;
    changed.annotations = labels(&[("summary", "still down")]);
    changed.acknowledged_at = Some(at(70, 1));
    changed.acknowledged_by = Some("carol".into());
    changed.resolved_at = Some(at(80, 2));
    changed.inhibited_by = Some("fp0".into());
    changed.silenced_by = Some(3);
    changed.incident = Some(inc);
    // Not mutable: these stay as stored.
    changed.fingerprint = "other".into();
    changed.rule = "other".into();
    changed.labels = Labels::new();
    changed.active_since = at(0, 0);
    changed.fired_at = at(0, 0);
    repo.update_alert(&changed).await.unwrap();

    let got = repo.alert(a.id).await.unwrap();
    let mut want = changed.clone();
    want.fingerprint = a.fingerprint.clone();
    want.rule = a.rule.clone();
    want.labels = a.labels.clone();
    want.active_since = a.active_since;
    want.fired_at = a.fired_at;
    assert_eq!(got, want);

    // And back to None.
    repo.update_alert(&a).await.unwrap();
    assert_eq!(repo.alert(a.id).await.unwrap(), a);
}

async fn silences_active_expired_and_expire(repo: SqlRepo) {
    let mut old = silence(0, 100);
    old.id = repo.insert_silence(&old).await.unwrap();
    let mut live = silence(50, 1_000);
    live.matchers = labels(&[("vm", "pbx1")]);
    live.id = repo.insert_silence(&live).await.unwrap();
    let mut future = silence(2_000, 3_000);
    future.id = repo.insert_silence(&future).await.unwrap();

    // Newest first.
    assert_eq!(
        repo.silences(None).await.unwrap(),
        vec![future.clone(), live.clone(), old.clone()]
    );
    assert_eq!(
        repo.silences(Some(at(500, 0))).await.unwrap(),
        vec![future.clone(), live.clone()]
    );
    // Ends exactly now: no longer active.
    assert_eq!(
        repo.silences(Some(live.ends_at)).await.unwrap(),
        vec![future.clone()]
    );

    repo.expire_silence(live.id, at(600, 0)).await.unwrap();
    live.ends_at = at(600, 0);
    assert_eq!(
        repo.silences(Some(at(600, 0))).await.unwrap(),
        vec![future.clone()]
    );
    assert_eq!(
        repo.silences(None).await.unwrap(),
        vec![future.clone(), live.clone(), old.clone()]
    );
    // Expiring an ended silence keeps its end.
    repo.expire_silence(old.id, at(700, 0)).await.unwrap();
    assert_eq!(repo.silences(None).await.unwrap()[2], old);

    assert_not_found(repo.expire_silence(999, at(0, 0)).await, "silence", "999");
}

async fn incidents_round_trip_update_and_list(repo: SqlRepo) {
    let mut bare = incident(None, IncidentState::New);
    bare.template = None;
    bare.labels = Labels::new();
    bare.id = repo.insert_incident(&bare).await.unwrap();
    assert_eq!(repo.incident(bare.id).await.unwrap(), bare);

    let mut full = incident(Some("site1"), IncidentState::Active);
    full.resolved_at = Some(at(200, 3));
    full.closed_at = Some(at(300, 4));
    full.id = repo.insert_incident(&full).await.unwrap();
    assert_eq!(repo.incident(full.id).await.unwrap(), full);

    let mut changed = full.clone();
    changed.title = "site1 degraded".into();
    changed.severity = Severity::Warning;
    changed.description = "half the probes fail".into();
    changed.group = "ops".into();
    changed.state = IncidentState::Resolved;
    changed.labels = labels(&[("site", "site1")]);
    changed.resolved_at = Some(at(250, 9));
    changed.closed_at = None;
    // Not mutable.
    changed.template = None;
    changed.key = Some("other".into());
    changed.opened_at = at(0, 0);
    repo.update_incident(&changed).await.unwrap();
    let mut want = changed.clone();
    want.template = full.template.clone();
    want.key = full.key.clone();
    want.opened_at = full.opened_at;
    assert_eq!(repo.incident(full.id).await.unwrap(), want);

    // Newest first; states filter; limit.
    assert_eq!(
        repo.incidents(&[], 0).await.unwrap(),
        vec![want.clone(), bare.clone()]
    );
    assert_eq!(
        repo.incidents(&[IncidentState::New, IncidentState::Active], 0)
            .await
            .unwrap(),
        vec![bare.clone()]
    );
    assert_eq!(
        repo.incidents(&[IncidentState::Resolved], 0).await.unwrap(),
        vec![want.clone()]
    );
    assert_eq!(repo.incidents(&[], 1).await.unwrap(), vec![want.clone()]);

    let mut missing = want.clone();
    missing.id = 999;
    assert_not_found(repo.update_incident(&missing).await, "incident", "999");
}

async fn open_incident_by_key_sees_only_open_ones(repo: SqlRepo) {
    assert_eq!(repo.open_incident_by_key("site1").await.unwrap(), None);

    let mut closed = incident(Some("site1"), IncidentState::Closed);
    closed.id = repo.insert_incident(&closed).await.unwrap();
    let mut resolved = incident(Some("site1"), IncidentState::Resolved);
    resolved.id = repo.insert_incident(&resolved).await.unwrap();
    assert_eq!(repo.open_incident_by_key("site1").await.unwrap(), None);

    let mut new = incident(Some("site1"), IncidentState::New);
    new.id = repo.insert_incident(&new).await.unwrap();
    let mut other = incident(Some("site2"), IncidentState::Active);
    other.id = repo.insert_incident(&other).await.unwrap();
    assert_eq!(
        repo.open_incident_by_key("site1").await.unwrap(),
        Some(new.clone())
    );
    assert_eq!(
        repo.open_incident_by_key("site2").await.unwrap(),
        Some(other.clone())
    );

    // The newest open one wins.
    let mut active = incident(Some("site1"), IncidentState::Active);
    active.id = repo.insert_incident(&active).await.unwrap();
    assert_eq!(
        repo.open_incident_by_key("site1").await.unwrap(),
        Some(active.clone())
    );

    // Once resolved, it no longer deduplicates.
    active.state = IncidentState::Resolved;
    repo.update_incident(&active).await.unwrap();
    new.state = IncidentState::Closed;
    repo.update_incident(&new).await.unwrap();
    assert_eq!(repo.open_incident_by_key("site1").await.unwrap(), None);
}

async fn timeline_and_incident_alerts(repo: SqlRepo) {
    let inc = repo
        .insert_incident(&incident(Some("site1"), IncidentState::New))
        .await
        .unwrap();
    let other = repo
        .insert_incident(&incident(Some("site2"), IncidentState::New))
        .await
        .unwrap();

    let mut a1 = alert("fp1", "sip-down", 10);
    a1.incident = Some(inc);
    a1.id = repo.insert_alert(&a1).await.unwrap();
    let mut unlinked = alert("fp2", "sip-down", 11);
    unlinked.id = repo.insert_alert(&unlinked).await.unwrap();
    let mut elsewhere = alert("fp3", "sip-down", 12);
    elsewhere.incident = Some(other);
    elsewhere.id = repo.insert_alert(&elsewhere).await.unwrap();
    // Linked later through update_alert.
    unlinked.incident = Some(inc);
    repo.update_alert(&unlinked).await.unwrap();

    assert_eq!(
        repo.incident_alerts(inc).await.unwrap(),
        vec![a1.clone(), unlinked.clone()]
    );
    assert_eq!(repo.incident_alerts(other).await.unwrap(), vec![elsewhere]);
    assert!(repo.incident_alerts(999).await.unwrap().is_empty());

    let entry = |secs, kind: &str, alert| TimelineEntry {
        id: 0,
        incident: inc,
        at: at(secs, 42),
        kind: kind.into(),
        author: "standby".into(),
        text: format!("{kind} at {secs}"),
        alert,
    };
    let mut want = Vec::new();
    for e in [
        entry(1, "opened", None),
        entry(2, "alert", Some(a1.id)),
        entry(3, "note", None),
    ] {
        let mut e = e;
        e.id = repo.add_timeline(&e).await.unwrap();
        want.push(e);
    }
    // Oldest first by time, even when added late.
    let mut late = entry(0, "notification", None);
    late.id = repo.add_timeline(&late).await.unwrap();
    want.insert(0, late);
    assert_eq!(repo.timeline(inc).await.unwrap(), want);
    assert!(repo.timeline(other).await.unwrap().is_empty());

    let mut orphan = entry(5, "note", None);
    orphan.incident = 999;
    assert_not_found(repo.add_timeline(&orphan).await, "incident", "999");
}

async fn deliveries_due_update_and_payload(repo: SqlRepo) {
    let payload = json!({
        "delivery": 0,
        "status": "firing",
        "group_labels": {"site": "site1"},
        "alerts": [{"id": 1, "labels": {"probe": "sip1"}}],
        "incident": null,
        "n": 1.5,
    });
    let before = Utc::now();
    let d1 = repo
        .insert_delivery("ops-webhook", "firing", &[1, 2], &payload, at(100, 0))
        .await
        .unwrap();
    let after = Utc::now();
    assert_eq!(d1.receiver, "ops-webhook");
    assert_eq!(d1.status, "firing");
    assert_eq!(d1.alerts, vec![1, 2]);
    assert_eq!(d1.state, "pending");
    assert_eq!(d1.attempts, 0);
    assert_eq!(d1.last_error, None);
    assert_eq!(d1.next_attempt_at, Some(at(100, 0)));
    assert_eq!(d1.delivered_at, None);
    assert!(before <= d1.created_at && d1.created_at <= after);

    let d2 = repo
        .insert_delivery("mail", "resolved", &[], &json!("plain"), at(50, 0))
        .await
        .unwrap();
    let d3 = repo
        .insert_delivery("mail", "firing", &[3], &json!([]), at(200, 0))
        .await
        .unwrap();

    // Not due before its time; due exactly at it; oldest first.
    assert!(repo.due_deliveries(at(49, 0), 0).await.unwrap().is_empty());
    assert_eq!(
        repo.due_deliveries(at(100, 0), 0).await.unwrap(),
        vec![(d1.clone(), payload.clone()), (d2.clone(), json!("plain"))]
    );
    assert_eq!(
        repo.due_deliveries(at(1_000, 0), 1).await.unwrap(),
        vec![(d1.clone(), payload.clone())]
    );

    // A failed attempt moves it later; a delivered one is no longer due.
    let mut retry = d1.clone();
    retry.attempts = 1;
    retry.last_error = Some("connection refused".into());
    retry.next_attempt_at = Some(at(300, 0));
    repo.update_delivery(&retry).await.unwrap();
    let mut done = d2.clone();
    done.state = "delivered".into();
    done.attempts = 1;
    done.next_attempt_at = None;
    done.delivered_at = Some(at(60, 5));
    repo.update_delivery(&done).await.unwrap();
    assert_eq!(
        repo.due_deliveries(at(250, 0), 0).await.unwrap(),
        vec![(d3.clone(), json!([]))]
    );
    assert_eq!(
        repo.due_deliveries(at(300, 0), 0).await.unwrap(),
        vec![(retry.clone(), payload.clone()), (d3.clone(), json!([]))]
    );
    let mut failed = d3.clone();
    failed.state = "failed".into();
    failed.attempts = 10;
    failed.last_error = Some("gave up".into());
    repo.update_delivery(&failed).await.unwrap();
    assert_eq!(
        repo.due_deliveries(at(10_000, 0), 0).await.unwrap(),
        vec![(retry.clone(), payload.clone())]
    );

    // Newest first; status, receiver and alerts are not overwritten.
    let mut sneaky = done.clone();
    sneaky.receiver = "other".into();
    sneaky.status = "firing".into();
    sneaky.alerts = vec![9];
    repo.update_delivery(&sneaky).await.unwrap();
    assert_eq!(
        repo.deliveries(0).await.unwrap(),
        vec![failed.clone(), done.clone(), retry.clone()]
    );
    assert_eq!(repo.deliveries(1).await.unwrap(), vec![failed]);

    let mut missing = retry.clone();
    missing.id = 999;
    assert_not_found(repo.update_delivery(&missing).await, "delivery", "999");
}

async fn missing_ids_are_not_found(repo: SqlRepo) {
    assert_not_found(repo.alert(7).await, "alert", "7");
    let mut a = alert("fp", "r", 0);
    a.id = 7;
    assert_not_found(repo.update_alert(&a).await, "alert", "7");
    assert_not_found(repo.incident(8).await, "incident", "8");
    let mut i = incident(None, IncidentState::New);
    i.id = 8;
    assert_not_found(repo.update_incident(&i).await, "incident", "8");
    assert_not_found(repo.expire_silence(9, at(0, 0)).await, "silence", "9");
    let err = repo.alert(7).await.unwrap_err();
    assert_eq!(err.to_string(), "alert '7' not found");
    assert!(!err.is_temporary());
}

async fn watch_state_survives_reopen(db: TestDb) {
    let ev = event(
        1,
        "probe.result",
        "sip1",
        Severity::Error,
        &[("site", "site1")],
    );
    let (ev_id, alert_id, inc_id, sil_id, delivery) = {
        let repo = db.open().await;
        let ev_id = repo.insert_events(std::slice::from_ref(&ev)).await.unwrap()[0];
        let inc_id = repo
            .insert_incident(&incident(Some("site1"), IncidentState::Active))
            .await
            .unwrap();
        let mut a = alert("fp1", "sip-down", 10);
        a.incident = Some(inc_id);
        let alert_id = repo.insert_alert(&a).await.unwrap();
        let sil_id = repo.insert_silence(&silence(0, 1_000)).await.unwrap();
        repo.add_timeline(&TimelineEntry {
            id: 0,
            incident: inc_id,
            at: at(11, 0),
            kind: "alert".into(),
            author: "standby".into(),
            text: "sip-down fired".into(),
            alert: Some(alert_id),
        })
        .await
        .unwrap();
        let d = repo
            .insert_delivery("ops", "firing", &[alert_id], &json!({"a": 1}), at(5, 0))
            .await
            .unwrap();
        (ev_id, alert_id, inc_id, sil_id, d)
    };

    let repo = db.open().await;
    let mut want_ev = ev;
    want_ev.id = ev_id;
    assert_eq!(
        repo.events(&EventQuery::default()).await.unwrap(),
        vec![want_ev]
    );
    let mut want_alert = alert("fp1", "sip-down", 10);
    want_alert.id = alert_id;
    want_alert.incident = Some(inc_id);
    assert_eq!(repo.alert(alert_id).await.unwrap(), want_alert);
    assert_eq!(
        repo.open_incident_by_key("site1")
            .await
            .unwrap()
            .map(|i| i.id),
        Some(inc_id)
    );
    assert_eq!(repo.timeline(inc_id).await.unwrap().len(), 1);
    assert_eq!(repo.silences(None).await.unwrap()[0].id, sil_id);
    assert_eq!(
        repo.due_deliveries(at(5, 0), 0).await.unwrap(),
        vec![(delivery, json!({"a": 1}))]
    );
}

/// Retention: finished jobs (with their runs) and done deliveries older
/// than the cut are deleted; running jobs and pending deliveries are kept
/// however old.
async fn hardening_old_jobs_and_notifications_are_purged(repo: SqlRepo) {
    use standby_types::model::JobStatus;
    let ok = repo.create_job("protect", "gold").await.unwrap();
    let bad = repo.create_job("restore", "pbx1").await.unwrap();
    let running = repo.create_job("sync", "site2").await.unwrap();
    repo.finish_job(ok.id, JobStatus::Succeeded, None, &json!(null))
        .await
        .unwrap();
    repo.finish_job(bad.id, JobStatus::Failed, Some("no"), &json!(null))
        .await
        .unwrap();
    repo.start_job(running.id).await.unwrap();
    let soon = Utc::now() + chrono::Duration::seconds(5);
    // Nothing finished a day ago.
    let day_ago = Utc::now() - chrono::Duration::days(1);
    assert_eq!(repo.prune_jobs(day_ago).await.unwrap(), 0);
    assert_eq!(repo.prune_jobs(soon).await.unwrap(), 2);
    let left: Vec<i64> = repo.jobs(100).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(left, vec![running.id]);

    let pending = repo
        .insert_delivery("hook", "firing", &[], &json!({}), at(1, 0))
        .await
        .unwrap();
    let mut done = repo
        .insert_delivery("hook", "firing", &[], &json!({}), at(1, 0))
        .await
        .unwrap();
    done.state = "delivered".into();
    done.delivered_at = Some(Utc::now());
    repo.update_delivery(&done).await.unwrap();
    let mut gave_up = repo
        .insert_delivery("mail", "resolved", &[], &json!({}), at(1, 0))
        .await
        .unwrap();
    gave_up.state = "failed".into();
    repo.update_delivery(&gave_up).await.unwrap();
    assert_eq!(repo.prune_deliveries(day_ago).await.unwrap(), 0);
    assert_eq!(repo.prune_deliveries(soon).await.unwrap(), 2);
    let left: Vec<i64> = repo
        .deliveries(100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, vec![pending.id]);
}

on_both! {
    repo: [
        watch_repo_is_object_safe,
        events_round_trip_with_ids_in_order,
        events_tail_after_id_and_newest_limit,
        events_filter_kind_source_severity_since,
        events_filter_labels_across_pages,
        prune_events_by_age,
        alerts_round_trip_and_keep_history,
        update_alert_overwrites_only_mutable_fields,
        silences_active_expired_and_expire,
        incidents_round_trip_update_and_list,
        open_incident_by_key_sees_only_open_ones,
        timeline_and_incident_alerts,
        deliveries_due_update_and_payload,
        hardening_old_jobs_and_notifications_are_purged,
        missing_ids_are_not_found,
    ],
    db: [
        watch_state_survives_reopen,
    ],
}
