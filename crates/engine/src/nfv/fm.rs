//! VNF fault management (SOL 002/003 `AlarmNotification`,
//! `AlarmClearedNotification`) as standby events: a VNF manager notifies
//! standby's callback of each alarm about a VNF instance, and each
//! becomes one event that rules with an event condition turn into standby
//! alerts like any other (and those start runbooks by their alert
//! trigger).
//!
//! An event: source `nfv`, kind `nfv.alarm` (raised or changed) or
//! `nfv.alarm_cleared`, labels `vnf_instance`, `alarm_id`,
//! `perceived_severity`, `probable_cause`, `event_type`, `fault_type` (when
//! given), `vms` (the VMs concerned, comma-separated: the alarm's
//! `vnfcInstanceIds` that are VMs of the instance, else all of them) and,
//! when that is one VM, `vm` and `site` (where it is active now: what
//! `heal-vm` takes), plus `tenant` for a tenant's instance. A cleared
//! notification names only the alarm: its labels are those of the alarm's
//! latest `nfv.alarm` event. Severity: CRITICAL critical, MAJOR error,
//! MINOR, WARNING and INDETERMINATE warning, CLEARED info. Its time is
//! when it arrived.

use chrono::{DateTime, Utc};
use standby_db::EventQuery;
use standby_types::nfv::{Alarm, AlarmClearedNotification, FmNotification, PerceivedSeverity};
use standby_types::watch::{CONTROLLER_VANTAGE, Event, Labels, Severity};

use crate::controller::Controller;
use crate::error::EngineError;

/// The events' source.
pub const SOURCE: &str = "nfv";
pub const KIND_ALARM: &str = "nfv.alarm";
pub const KIND_CLEARED: &str = "nfv.alarm_cleared";

fn severity(s: PerceivedSeverity) -> Severity {
    match s {
        PerceivedSeverity::Critical => Severity::Critical,
        PerceivedSeverity::Major => Severity::Error,
        PerceivedSeverity::Minor
        | PerceivedSeverity::Warning
        | PerceivedSeverity::Indeterminate => Severity::Warning,
        PerceivedSeverity::Cleared => Severity::Info,
    }
}

/// The labels of an alarm about instance `a.managedObjectId`, without
/// where its VM runs (`site`, added by [`receive`]).
pub fn alarm_labels(cfg: &standby_types::config::Config, a: &Alarm) -> Labels {
    let id = &a.managed_object_id;
    let mut l = Labels::new();
    l.insert("vnf_instance".into(), id.clone());
    l.insert("alarm_id".into(), a.id.clone());
    l.insert(
        "perceived_severity".into(),
        a.perceived_severity.as_str().into(),
    );
    l.insert("probable_cause".into(), a.probable_cause.clone());
    l.insert("event_type".into(), a.event_type.clone());
    if let Some(f) = &a.fault_type {
        l.insert("fault_type".into(), f.clone());
    }
    if let Some(inst) = cfg.nfv.vnf_instances.get(id) {
        let named: Vec<&String> = a
            .vnfc_instance_ids
            .iter()
            .filter(|v| inst.vms.contains(v))
            .collect();
        let vms: Vec<&String> = if named.is_empty() {
            inst.vms.iter().collect()
        } else {
            named
        };
        l.insert(
            "vms".into(),
            vms.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
        );
        if let [vm] = vms.as_slice() {
            l.insert("vm".into(), (*vm).clone());
        }
        if let Some(name) = &inst.name {
            l.insert("vnf_instance_name".into(), name.clone());
        }
        if let Some(t) = cfg.tenant_of_vnf_instance(id) {
            l.insert("tenant".into(), t.into());
        }
    }
    l
}

/// The event of an `AlarmNotification`, at `at`.
pub fn alarm_event(cfg: &standby_types::config::Config, a: &Alarm, at: DateTime<Utc>) -> Event {
    let labels = alarm_labels(cfg, a);
    let cleared = a.perceived_severity == PerceivedSeverity::Cleared;
    let known = if cfg.nfv.vnf_instances.contains_key(&a.managed_object_id) {
        ""
    } else {
        " (not a configured VNF instance)"
    };
    Event {
        id: 0,
        at,
        source: SOURCE.into(),
        kind: if cleared { KIND_CLEARED } else { KIND_ALARM }.into(),
        severity: severity(a.perceived_severity),
        message: format!(
            "VNF instance {}{known}: alarm {} {} {}{}",
            a.managed_object_id,
            a.id,
            a.perceived_severity.as_str(),
            a.probable_cause,
            labels
                .get("vms")
                .map(|v| format!(" (vm {v})"))
                .unwrap_or_default(),
        ),
        labels,
        vantage: CONTROLLER_VANTAGE.into(),
    }
}

/// The event of an `AlarmClearedNotification`: the labels of the alarm's
/// latest event (`known`), else of its `managedObjectId` when the VNF
/// manager sent one.
pub fn cleared_event(
    cfg: &standby_types::config::Config,
    c: &AlarmClearedNotification,
    known: Option<Labels>,
    at: DateTime<Utc>,
) -> Event {
    let mut labels = known.unwrap_or_else(|| {
        let mut l = Labels::new();
        if let Some(id) = &c.managed_object_id {
            l.insert("vnf_instance".into(), id.clone());
            if let Some(inst) = cfg.nfv.vnf_instances.get(id) {
                l.insert("vms".into(), inst.vms.join(","));
                if let [vm] = inst.vms.as_slice() {
                    l.insert("vm".into(), vm.clone());
                }
            }
            if let Some(t) = cfg.tenant_of_vnf_instance(id) {
                l.insert("tenant".into(), t.into());
            }
        }
        l
    });
    labels.insert("alarm_id".into(), c.alarm_id.clone());
    labels.insert("perceived_severity".into(), "CLEARED".into());
    let what = labels
        .get("vnf_instance")
        .map(|i| format!("VNF instance {i}: "))
        .unwrap_or_default();
    Event {
        id: 0,
        at,
        source: SOURCE.into(),
        kind: KIND_CLEARED.into(),
        severity: Severity::Info,
        message: format!("{what}alarm {} cleared", c.alarm_id),
        labels,
        vantage: CONTROLLER_VANTAGE.into(),
    }
}

/// Record a notification's event; how many were recorded (0 for an
/// `AlarmListRebuiltNotification`).
pub async fn receive(ctl: &Controller, n: &FmNotification) -> Result<usize, EngineError> {
    let now = Utc::now();
    let mut event = match n {
        FmNotification::AlarmNotification(a) => alarm_event(&ctl.cfg(), &a.alarm, now),
        FmNotification::AlarmClearedNotification(c) => {
            let mut q = EventQuery {
                kind: Some(KIND_ALARM.into()),
                source: Some(SOURCE.into()),
                limit: 1,
                ..EventQuery::default()
            };
            q.labels.insert("alarm_id".into(), c.alarm_id.clone());
            let known = ctl.watch.repo().events(&q).await?.pop().map(|e| e.labels);
            cleared_event(&ctl.cfg(), c, known, now)
        }
        FmNotification::AlarmListRebuiltNotification(_) => return Ok(0),
    };
    // Where its one VM is active now (an alarm from the DR site after a
    // failover is about the copy there).
    if let Some(vm) = event.labels.get("vm").cloned() {
        match ctl.repo.vm(&vm).await {
            Ok(r) => {
                event.labels.insert("site".into(), r.active_site);
            }
            Err(e) => tracing::warn!(vm, "NFV alarm: unable to read the VM's site: {e}"),
        }
    }
    tracing::info!(kind = %event.kind, message = %event.message, "NFV fault notification");
    ctl.watch.emit(event);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg() -> standby_types::config::Config {
        let text = r#"
[controller]
listen = "127.0.0.1:0"
data_dir = "data"
[tenants.acme]
[sites.site1]
[hosts.h1]
site = "site1"
driver = "process"
disk_dir = "disks"
[vms.a]
host = "h1"
command = "sleep"
tenant = "acme"
[vms.b]
host = "h1"
command = "sleep"
tenant = "acme"
[nfv.vnf_instances.vnf-1]
vms = ["a", "b"]
name = "pbx"
"#;
        standby_types::config::Config::parse(text, Path::new("standby.toml")).unwrap()
    }

    fn alarm(v: serde_json::Value) -> Alarm {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_alarm_is_an_event_labelled_with_its_instance_and_vms() {
        let c = cfg();
        let at = Utc::now();
        let e = alarm_event(
            &c,
            &alarm(serde_json::json!({
                "id": "a-1", "managedObjectId": "vnf-1", "vnfcInstanceIds": ["b", "zz"],
                "perceivedSeverity": "CRITICAL", "eventType": "PROCESSING_ERROR_ALARM",
                "probableCause": "registrar-unresponsive", "faultType": "sip"
            })),
            at,
        );
        assert_eq!(e.kind, "nfv.alarm");
        assert_eq!(e.source, "nfv");
        assert_eq!(e.at, at);
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.labels["vnf_instance"], "vnf-1");
        assert_eq!(e.labels["vnf_instance_name"], "pbx");
        // Only the named VNFCs that are VMs of the instance.
        assert_eq!(e.labels["vms"], "b");
        assert_eq!(e.labels["vm"], "b");
        assert_eq!(e.labels["tenant"], "acme");
        assert_eq!(e.labels["probable_cause"], "registrar-unresponsive");
        assert_eq!(e.labels["perceived_severity"], "CRITICAL");
        assert_eq!(e.labels["fault_type"], "sip");
        assert_eq!(
            e.message,
            "VNF instance vnf-1: alarm a-1 CRITICAL registrar-unresponsive (vm b)"
        );
        // None named: every VM, and no single `vm`.
        let e = alarm_event(
            &c,
            &alarm(
                serde_json::json!({"id": "a-2", "managedObjectId": "vnf-1", "perceivedSeverity": "MAJOR"}),
            ),
            at,
        );
        assert_eq!(e.labels["vms"], "a,b");
        assert!(!e.labels.contains_key("vm"));
        assert_eq!(e.severity, Severity::Error);
        // An instance standby does not know: recorded, and said so.
        let e = alarm_event(
            &c,
            &alarm(
                serde_json::json!({"id": "a-3", "managedObjectId": "other", "perceivedSeverity": "CLEARED"}),
            ),
            at,
        );
        assert_eq!(e.kind, "nfv.alarm_cleared");
        assert_eq!(e.severity, Severity::Info);
        assert!(!e.labels.contains_key("vms"));
        assert!(
            e.message.contains("not a configured VNF instance"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_cleared_alarm_takes_the_labels_of_its_alarm() {
        let c = cfg();
        let cleared: AlarmClearedNotification = serde_json::from_value(serde_json::json!({
            "id": "n-2", "subscriptionId": "s", "alarmId": "a-1"
        }))
        .unwrap();
        let known: Labels = [("vnf_instance", "vnf-1"), ("vm", "b"), ("alarm_id", "a-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = cleared_event(&c, &cleared, Some(known), Utc::now());
        assert_eq!(e.kind, "nfv.alarm_cleared");
        assert_eq!(e.labels["vm"], "b");
        assert_eq!(e.labels["perceived_severity"], "CLEARED");
        assert_eq!(e.message, "VNF instance vnf-1: alarm a-1 cleared");
        let e = cleared_event(&c, &cleared, None, Utc::now());
        assert_eq!(e.labels.get("vnf_instance"), None);
        assert_eq!(e.message, "alarm a-1 cleared");
    }
}
