//! Parameters and the plan of a dry run.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::format::{ParamType, Runbook};
use crate::template;

/// The template context of a job: `params`, `trigger`, `job`, `incident`
/// and the outputs of the steps done so far (`steps.ID.output`).
pub fn context(
    params: &Map<String, Value>,
    trigger: &Value,
    job: &Value,
    incident: Option<i64>,
    steps: &Map<String, Value>,
) -> Value {
    json!({
        "params": params,
        "trigger": trigger,
        "job": job,
        "incident": incident,
        "steps": steps,
    })
}

/// The parameters of a run: given values (strings from the command line
/// are converted to the declared type), else defaults (templates over
/// `trigger` and `job`; one that cannot be rendered counts as absent).
pub fn resolve_params(
    rb: &Runbook,
    given: &Map<String, Value>,
    trigger: &Value,
    job: &Value,
) -> Result<Map<String, Value>, String> {
    for k in given.keys() {
        if !rb.params.contains_key(k) {
            let known: Vec<&str> = rb.params.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown parameter '{k}' of runbook {} (parameters: {})",
                rb.name,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let ctx = template::context(&json!({ "trigger": trigger, "job": job }));
    let mut out = Map::new();
    for (name, p) in &rb.params {
        let v = match given.get(name) {
            Some(v) => Some(coerce(p.kind, v).map_err(|e| format!("parameter '{name}': {e}"))?),
            None => match &p.default {
                Some(d) => template::render(d, &ctx, name)
                    .ok()
                    .filter(|v| !matches!(v, Value::Null))
                    .filter(|v| v.as_str() != Some("")),
                None => None,
            },
        };
        match v {
            Some(v) => {
                out.insert(name.clone(), v);
            }
            None if p.required => {
                return Err(format!(
                    "missing parameter '{name}' of runbook {}{}",
                    rb.name,
                    if p.description.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.description)
                    }
                ));
            }
            None => {
                out.insert(name.clone(), Value::Null);
            }
        }
    }
    Ok(out)
}

fn coerce(kind: ParamType, v: &Value) -> Result<Value, String> {
    let bad = || format!("{v} is not a {}", kind.as_str());
    match (kind, v) {
        (ParamType::Any, v) => Ok(v.clone()),
        (ParamType::String, Value::String(_)) => Ok(v.clone()),
        (ParamType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (ParamType::Number, Value::Number(_)) => Ok(v.clone()),
        (ParamType::Bool, Value::Bool(_)) => Ok(v.clone()),
        (ParamType::List, Value::Array(_)) => Ok(v.clone()),
        (ParamType::Map, Value::Object(_)) => Ok(v.clone()),
        (ParamType::Bool, Value::String(s)) => match s.as_str() {
            "true" | "yes" => Ok(Value::Bool(true)),
            "false" | "no" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        (ParamType::Number | ParamType::List | ParamType::Map, Value::String(s)) => {
            let parsed: Value = serde_json::from_str(s).map_err(|_| bad())?;
            coerce(kind, &parsed).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    pub id: String,
    pub action: String,
    /// Inputs, rendered where they depend only on params and the trigger.
    pub with: Value,
    /// Inputs that depend on earlier steps: rendered at run time.
    pub deferred: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Value>,
    pub parallel: u32,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub on_failure: crate::format::OnFailure,
}

/// What a run would do, acting on nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runbook: String,
    pub params: Map<String, Value>,
    pub lock: Option<String>,
    pub steps: Vec<PlanStep>,
}

pub fn plan(rb: &Runbook, given: &Map<String, Value>, trigger: &Value) -> Result<Plan, String> {
    let job = json!({ "id": null, "runbook": rb.name });
    let params = resolve_params(rb, given, trigger, &job)?;
    let ctx = template::context(&context(&params, trigger, &job, None, &Map::new()));
    let lock = match &rb.lock {
        Some(l) => Some(
            template::render_str(l, &ctx)
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .map_err(|e| format!("lock: {e}"))?,
        ),
        None => None,
    };
    let steps = rb
        .steps
        .iter()
        .map(|s| {
            let mut with = Map::new();
            let mut deferred = Vec::new();
            for (k, v) in &s.with {
                match template::render(v, &ctx, k) {
                    Ok(r) => {
                        with.insert(k.clone(), r);
                    }
                    Err(_) => {
                        deferred.push(k.clone());
                        with.insert(k.clone(), v.clone());
                    }
                }
            }
            PlanStep {
                id: s.id.clone(),
                action: s.action.clone(),
                with: Value::Object(with),
                deferred,
                when: s.when.clone(),
                for_each: s.for_each.clone(),
                parallel: s.parallel.unwrap_or(1),
                attempts: s.retry.as_ref().map_or(1, |r| r.attempts),
                timeout: s.timeout.clone(),
                on_failure: s.on_failure,
            }
        })
        .collect();
    Ok(Plan {
        runbook: rb.name.clone(),
        params,
        lock,
        steps,
    })
}

impl Plan {
    /// The plan as text for the CLI.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "plan of runbook {} (dry run: nothing is done)\n",
            self.runbook
        );
        s.push_str(&format!("params: {}\n", Value::Object(self.params.clone())));
        if let Some(l) = &self.lock {
            s.push_str(&format!("lock: {l}\n"));
        }
        for (i, st) in self.steps.iter().enumerate() {
            s.push_str(&format!("{}. {} ({})", i + 1, st.id, st.action));
            if let Some(f) = &st.for_each {
                s.push_str(&format!(" for each {f} (parallel {})", st.parallel));
            }
            if let Some(w) = &st.when {
                s.push_str(&format!(" when {w}"));
            }
            if st.attempts > 1 {
                s.push_str(&format!(", {} attempts", st.attempts));
            }
            if let Some(t) = &st.timeout {
                s.push_str(&format!(", timeout {t}"));
            }
            if st.on_failure == crate::format::OnFailure::Continue {
                s.push_str(", continues on failure");
            }
            s.push('\n');
            if let Value::Object(m) = &st.with {
                for (k, v) in m {
                    let later = if st.deferred.contains(k) {
                        "  (at run time)"
                    } else {
                        ""
                    };
                    s.push_str(&format!("     {k}: {v}{later}\n"));
                }
            }
        }
        s
    }
}
