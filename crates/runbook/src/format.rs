//! The runbook file format: what serde reads. Everything serde cannot
//! check (templates, references, actions, durations) is checked by
//! [`crate::parse`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One runbook: a trigger, parameters and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// Name of the runbook; must match the file stem.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// What starts the runbook besides a manual run.
    #[serde(default)]
    pub trigger: Trigger,
    /// Parameters, by name.
    #[serde(default)]
    pub params: BTreeMap<String, Param>,
    /// Lock key template: one running job per rendered key; a trigger
    /// while it is held is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Incident id template: the incident whose timeline gets every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

/// Triggers; any combination, all optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Start when a matching alert fires (after it settles, unless muted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertTrigger>,
    /// Start on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleTrigger>,
    /// Whether the CLI and API may start it (default true).
    #[serde(default = "yes")]
    pub manual: bool,
    /// Start on `POST /api/v1/runbooks/NAME/webhook`, signed with HMAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger {
            alert: None,
            schedule: None,
            manual: true,
            webhook: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Which alerts start the runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertTrigger {
    /// The rule name (the alert's `alertname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertname: Option<String>,
    /// Only `firing` is supported.
    #[serde(default = "firing")]
    pub state: String,
    /// Labels the alert must carry with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn firing() -> String {
    "firing".into()
}

/// A cron schedule, or once per protection group when its own schedule
/// is due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Cron expression (seconds optional) or `every DURATION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Run once per protection group when its schedule is due, with
    /// `params.group` set to the group.
    #[serde(default)]
    pub groups: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// Environment variable holding the HMAC-SHA256 secret.
    pub secret_env: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Number,
    Bool,
    List,
    Map,
    Any,
}

impl ParamType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Number => "number",
            ParamType::Bool => "bool",
            ParamType::List => "list",
            ParamType::Map => "map",
            ParamType::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub required: bool,
    /// Default value; a template may use `trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: String,
    /// The kind of object the value names (`vm`, `service`, `group`,
    /// `site`), checked against a tenant's user before the job starts;
    /// a parameter named `vm`, `service`, `group` or `site` names one of
    /// those without saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
}

impl Param {
    /// The kind of object parameter `name` names, if any.
    pub fn resource_of(&self, name: &str) -> Option<Resource> {
        self.resource.or(match name {
            "vm" => Some(Resource::Vm),
            "service" => Some(Resource::Service),
            "group" => Some(Resource::Group),
            "site" => Some(Resource::Site),
            _ => None,
        })
    }
}

/// An object a runbook parameter may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Vm,
    Service,
    Group,
    Site,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The job fails at this step (default).
    #[default]
    Abort,
    /// The step is recorded failed and the job goes on.
    Continue,
}

/// One step: an action from the catalog with templated inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique, `[a-z0-9_-]`.
    pub id: String,
    /// Action name from the catalog (`standby runbook actions`).
    pub action: String,
    /// Inputs of the action; strings are templates.
    #[serde(default)]
    pub with: BTreeMap<String, serde_json::Value>,
    /// Skip the step (or the item) unless this expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Run once per element: an expression giving a list, or a list.
    /// `item` and `index` are in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<serde_json::Value>,
    /// How many items run at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Time limit of one attempt, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt, doubling after each (e.g. `2s`).
    #[serde(default = "default_backoff")]
    pub backoff: String,
}

fn default_backoff() -> String {
    "1s".into()
}

/// The JSON Schema of the runbook format, with each step's `with` checked
/// against its action's inputs (`catalog::step_schema`).
pub fn schema() -> serde_json::Value {
    let mut s = schemars::schema_for!(Runbook).to_value();
    let mut defs = s["$defs"].as_object().cloned().unwrap_or_default();
    let mut step = defs.remove("Step").unwrap_or_default();
    crate::catalog::step_schema(&mut step, &mut defs);
    defs.insert("Step".into(), step);
    s["$defs"] = serde_json::Value::Object(defs);
    s
}
