//! ETSI NFV-SOL 002/003/013 types, the subset disaster recovery needs
//! (`docs/nfv.md`), in the JSON the standards define and OpenStack Tacker
//! speaks: a VNF instance, the heal request, the operation occurrence a
//! heal creates, the fault management notifications a VNF manager sends
//! and SOL 013's `ProblemDetails`. Attribute names are the standards'
//! (camelCase); attributes standby does not use are read when present
//! and ignored, so a VNF manager's fuller payloads are accepted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// SOL 013 `Link`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Link {
    pub href: String,
}

impl Link {
    pub fn to(href: impl Into<String>) -> Link {
        Link { href: href.into() }
    }
}

/// SOL 013 `ProblemDetails` (RFC 7807), answered as
/// `application/problem+json`, with standby's error code and whether
/// retrying may help as extension members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemDetails {
    /// A short summary of the problem type (the HTTP reason phrase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, on what.
    pub detail: String,
    /// standby's stable error code (`docs/api.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// SOL 003 `HealVnfRequest` (5.5.2.9; SOL 002's is the same).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealVnfRequest {
    /// VNFC instances to heal (standby: VM names of the instance); none:
    /// every VM of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnfc_instance_id: Option<Vec<String>>,
    /// Why, in words (kept with the operation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// `standby_action`: `restart` (default: in place) or `recover` (at
    /// the DR site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub additional_params: Option<Map<String, Value>>,
    /// Not used by standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal_script: Option<String>,
}

/// SOL 003 `LcmOperationStateType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LcmOperationState {
    Starting,
    Processing,
    Completed,
    FailedTemp,
    Failed,
    RollingBack,
    RolledBack,
}

/// The links of an operation occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VnfLcmOpOccLinks {
    #[serde(rename = "self")]
    pub self_: Link,
    pub vnf_instance: Link,
}

/// SOL 003 `VnfLcmOpOcc` (5.5.2.13): a heal, as standby ran it (one
/// runbook job; its id is the job's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VnfLcmOpOcc {
    pub id: String,
    pub operation_state: LcmOperationState,
    pub state_entered_time: DateTime<Utc>,
    pub start_time: DateTime<Utc>,
    pub vnf_instance_id: String,
    /// `HEAL`: the only operation standby runs.
    pub operation: String,
    /// Started by standby itself (not by a request of a VNF manager).
    pub is_automatic_invocation: bool,
    /// The heal request as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub operation_params: Option<Value>,
    pub is_cancel_pending: bool,
    /// Why it failed (`FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProblemDetails>,
    #[serde(rename = "_links")]
    pub links: VnfLcmOpOccLinks,
}

/// SOL 003 `VnfOperationalStateType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VnfOperationalState {
    Started,
    Stopped,
}

/// SOL 003 `ResourceHandle`: a VNFC's VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceHandle {
    /// The VM's name.
    pub resource_id: String,
    /// `standby.vm`.
    pub vim_level_resource_type: String,
}

/// SOL 003 `VnfcResourceInfo`: one VM of the instance, with where it
/// runs now in `metadata` (`site`, `host`, `state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VnfcResourceInfo {
    /// The VM's name (also the `vnfcInstanceId` a heal names).
    pub id: String,
    pub vdu_id: String,
    pub compute_resource: ResourceHandle,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// SOL 003 `VnfInstance.instantiatedVnfInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstantiatedVnfInfo {
    pub flavour_id: String,
    /// `STARTED` when every VM runs.
    pub vnf_state: VnfOperationalState,
    pub vnfc_resource_info: Vec<VnfcResourceInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VnfInstanceLinks {
    #[serde(rename = "self")]
    pub self_: Link,
    pub heal: Link,
}

/// SOL 003 `VnfInstance` (5.5.2.2), as configured in
/// `[nfv.vnf_instances]`: always `INSTANTIATED` (standby does not
/// instantiate; its VMs exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VnfInstance {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnf_instance_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnf_instance_description: Option<String>,
    pub vnfd_id: String,
    pub vnf_provider: String,
    pub vnf_product_name: String,
    pub vnf_software_version: String,
    pub vnfd_version: String,
    /// `INSTANTIATED`.
    pub instantiation_state: String,
    pub instantiated_vnf_info: InstantiatedVnfInfo,
    #[serde(rename = "_links")]
    pub links: VnfInstanceLinks,
}

/// SOL 003 `PerceivedSeverityType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PerceivedSeverity {
    Critical,
    Major,
    Minor,
    Warning,
    Indeterminate,
    Cleared,
}

impl PerceivedSeverity {
    pub fn as_str(&self) -> &'static str {
        match self {
            PerceivedSeverity::Critical => "CRITICAL",
            PerceivedSeverity::Major => "MAJOR",
            PerceivedSeverity::Minor => "MINOR",
            PerceivedSeverity::Warning => "WARNING",
            PerceivedSeverity::Indeterminate => "INDETERMINATE",
            PerceivedSeverity::Cleared => "CLEARED",
        }
    }
}

/// SOL 003 `Alarm` (7.5.2.4), the attributes standby reads typed; the
/// rest are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    pub id: String,
    /// The VNF instance the alarm is about.
    pub managed_object_id: String,
    /// The VNFCs concerned (standby: VM names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vnfc_instance_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_raised_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_state: Option<String>,
    pub perceived_severity: PerceivedSeverity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<DateTime<Utc>>,
    /// `COMMUNICATIONS_ALARM`, `PROCESSING_ERROR_ALARM`,
    /// `ENVIRONMENTAL_ALARM`, `QOS_ALARM`, `EQUIPMENT_ALARM`.
    #[serde(default)]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_type: Option<String>,
    #[serde(default)]
    pub probable_cause: String,
    #[serde(default)]
    pub is_root_cause: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fault_details: Vec<String>,
}

/// SOL 003 `AlarmNotification` (7.5.2.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmNotification {
    pub id: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_stamp: Option<DateTime<Utc>>,
    pub alarm: Alarm,
}

/// SOL 003 `AlarmClearedNotification` (7.5.2.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmClearedNotification {
    pub id: String,
    #[serde(default)]
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_stamp: Option<DateTime<Utc>>,
    pub alarm_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_cleared_time: Option<DateTime<Utc>>,
    /// Not in SOL 003's `AlarmClearedNotification` (its `_links.alarm`
    /// names the alarm), but sent by some VNF managers: the VNF instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_object_id: Option<String>,
}

/// A fault management notification, by its `notificationType`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "notificationType")]
pub enum FmNotification {
    AlarmNotification(AlarmNotification),
    AlarmClearedNotification(AlarmClearedNotification),
    /// Accepted; it records nothing (standby keeps no alarm list).
    AlarmListRebuiltNotification(AlarmListRebuiltNotification),
}

/// SOL 003 `AlarmListRebuiltNotification` (7.5.2.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmListRebuiltNotification {
    pub id: String,
    #[serde(default)]
    pub subscription_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `AlarmNotification` as SOL 003 shows it (all attributes).
    const ALARM: &str = r#"{
      "id": "n-1", "notificationType": "AlarmNotification",
      "subscriptionId": "s-1", "timeStamp": "2026-12-06T08:00:00Z",
      "alarm": {
        "id": "a-1", "managedObjectId": "vnf-1", "vnfcInstanceIds": ["pbx1"],
        "rootCauseFaultyResource": {"faultyResource": {"resourceId": "r", "vimLevelResourceType": "OS::Nova::Server"}, "faultyResourceType": "COMPUTE"},
        "alarmRaisedTime": "2026-12-06T07:59:59Z", "ackState": "UNACKNOWLEDGED",
        "perceivedSeverity": "MAJOR", "eventTime": "2026-12-06T07:59:58Z",
        "eventType": "PROCESSING_ERROR_ALARM", "faultType": "sip", "probableCause": "registrar-unresponsive",
        "isRootCause": true, "correlatedAlarmIds": [], "faultDetails": ["503 on REGISTER"],
        "_links": {"self": {"href": "http://vnfm/vnffm/v1/alarms/a-1"}}
      },
      "_links": {"subscription": {"href": "http://vnfm/vnffm/v1/subscriptions/s-1"}}
    }"#;

    #[test]
    fn fault_notifications_read_by_their_type() {
        let n: FmNotification = serde_json::from_str(ALARM).unwrap();
        let FmNotification::AlarmNotification(a) = n else {
            panic!("{n:?}")
        };
        assert_eq!(a.alarm.managed_object_id, "vnf-1");
        assert_eq!(a.alarm.perceived_severity, PerceivedSeverity::Major);
        assert_eq!(a.alarm.vnfc_instance_ids, ["pbx1"]);
        assert_eq!(a.alarm.probable_cause, "registrar-unresponsive");
        let cleared: FmNotification = serde_json::from_str(
            r#"{"id": "n-2", "notificationType": "AlarmClearedNotification", "subscriptionId": "s-1",
               "timeStamp": "2026-12-06T08:01:00Z", "alarmId": "a-1", "alarmClearedTime": "2026-12-06T08:01:00Z",
               "_links": {"subscription": {"href": "x"}, "alarm": {"href": "y"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(&cleared, FmNotification::AlarmClearedNotification(c) if c.alarm_id == "a-1")
        );
        assert!(
            serde_json::from_str::<FmNotification>(r#"{"notificationType": "Other"}"#).is_err()
        );
    }

    #[test]
    fn an_op_occ_writes_sol003s_names() {
        let t = DateTime::parse_from_rfc3339("2026-12-06T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let o = VnfLcmOpOcc {
            id: "7".into(),
            operation_state: LcmOperationState::FailedTemp,
            state_entered_time: t,
            start_time: t,
            vnf_instance_id: "vnf-1".into(),
            operation: "HEAL".into(),
            is_automatic_invocation: false,
            operation_params: None,
            is_cancel_pending: false,
            error: None,
            links: VnfLcmOpOccLinks {
                self_: Link::to("/vnflcm/v1/vnf_lcm_op_occs/7"),
                vnf_instance: Link::to("/vnflcm/v1/vnf_instances/vnf-1"),
            },
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["operationState"], "FAILED_TEMP");
        assert_eq!(v["isAutomaticInvocation"], false);
        assert_eq!(v["_links"]["self"]["href"], "/vnflcm/v1/vnf_lcm_op_occs/7");
        assert_eq!(
            v["_links"]["vnfInstance"]["href"],
            "/vnflcm/v1/vnf_instances/vnf-1"
        );
        assert!(v.get("error").is_none());
    }
}
