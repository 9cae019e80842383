//! The action catalog: every action a step may name, with its inputs,
//! outputs and how it stays idempotent. It is generated from the typed
//! inputs ([`crate::inputs`]) and outputs (`standby_types::outcome`) the
//! engine runs, listed once in [`actions!`](self): the catalog the API and
//! CLI show, the published schema of a step's `with`, validation and the
//! engine's dispatch ([`Call`]) all come from that one list.

use std::sync::LazyLock;

use schemars::SchemaGenerator;
use serde::Serialize;
use serde_json::{Map, Value, json};

pub use crate::inputs::*;

/// One input or output of an action.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    pub required: bool,
    /// `string`, `bool`, `number`, `duration`, `list`, `map`, `any`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub doc: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub inputs: Vec<Field>,
    pub outputs: Vec<Field>,
    /// Why running it twice (a retry, or a resumed job) does no harm.
    pub idempotency: &'static str,
}

/// A step's input that does not fit its action.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InputError {
    #[error("unknown action '{0}' (see `standby runbook actions`)")]
    Unknown(String),
    #[error("action {action}: {message}")]
    Bad {
        action: &'static str,
        message: String,
    },
}

fn parse_input<A: Action>(input: &Value) -> Result<A, InputError> {
    serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        InputError::Bad {
            action: A::NAME,
            message: if path == "." {
                format!("input: {inner}")
            } else {
                format!("input '{path}': {inner}")
            },
        }
    })
}

macro_rules! actions {
    ($($variant:ident),* $(,)?) => {
        /// One call of an action with its typed input.
        #[derive(Debug, Clone)]
        pub enum Call {
            $($variant($variant),)*
        }

        impl Call {
            /// The typed input of `action` from a step's rendered `with`.
            pub fn parse(action: &str, input: &Value) -> Result<Call, InputError> {
                $(if action == <$variant as Action>::NAME {
                    return parse_input::<$variant>(input).map(Call::$variant);
                })*
                Err(InputError::Unknown(action.to_string()))
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(Call::$variant(_) => <$variant as Action>::NAME,)*
                }
            }
        }

        fn generate() -> Vec<ActionSpec> {
            vec![$(spec::<$variant>(),)*]
        }

        /// Each action's name and the schema of its input, with their
        /// definitions in `g`.
        fn input_schemas(g: &mut SchemaGenerator) -> Vec<(&'static str, Value)> {
            vec![$((
                <$variant as Action>::NAME,
                g.subschema_for::<$variant>().to_value(),
            ),)*]
        }
    };
}

actions!(
    VmList,
    VmStart,
    VmShutdown,
    VmStop,
    VmRestart,
    VmMigrate,
    PointCreate,
    PointLatest,
    PointRestore,
    SiteFence,
    SiteUnfence,
    TrafficSwitch,
    ProbeWait,
    DrillStart,
    DrillProbe,
    DrillStop,
    DrillReportOf,
    IncidentOpen,
    IncidentNote,
    IncidentResolve,
    Notify,
    Http,
    Shell,
    Sleep,
);

static ACTIONS: LazyLock<Vec<ActionSpec>> = LazyLock::new(generate);

/// Every action, in catalog order.
pub fn actions() -> &'static [ActionSpec] {
    &ACTIONS
}

pub fn action(name: &str) -> Option<&'static ActionSpec> {
    ACTIONS.iter().find(|a| a.name == name)
}

fn spec<A: Action>() -> ActionSpec {
    ActionSpec {
        name: A::NAME,
        summary: A::SUMMARY,
        inputs: fields(&schemars::schema_for!(A).to_value()),
        outputs: fields(&schemars::schema_for!(A::Output).to_value()),
        idempotency: A::IDEMPOTENCY,
    }
}

/// The fields of an object schema, with `$ref`s resolved in its `$defs`.
fn fields(root: &Value) -> Vec<Field> {
    let required: Vec<&str> = root["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root["properties"].as_object() else {
        return Vec::new();
    };
    let mut out: Vec<Field> = props
        .iter()
        .map(|(name, prop)| {
            let doc = prop["description"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end_matches('.')
                .to_string();
            let kind = kind_of(prop, root);
            let shape = if kind == "list" {
                item_fields(prop, root)
            } else {
                None
            };
            Field {
                name: name.clone(),
                required: required.contains(&name.as_str()),
                kind,
                doc: match shape {
                    Some(s) if doc.is_empty() => s,
                    Some(s) => format!("{doc}: {s}"),
                    None => doc,
                },
            }
        })
        .collect();
    // Required first, each part by name.
    out.sort_by_key(|f| !f.required);
    out
}

fn resolve<'a>(s: &'a Value, root: &'a Value) -> &'a Value {
    match s["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &root["$defs"][name],
        None => s,
    }
}

/// The catalog's word for a schema's type.
fn kind_of(prop: &Value, root: &Value) -> &'static str {
    let s = resolve(prop, root);
    if s["format"] == "duration" {
        return "duration";
    }
    if s["const"].is_string()
        || s["enum"]
            .as_array()
            .is_some_and(|e| e.iter().all(Value::is_string))
    {
        return "string";
    }
    // `Option<T>`: T's type, or the one branch of an `anyOf` not null; an
    // enum: the one kind of its variants.
    if let Some(any) = s["anyOf"].as_array().or(s["oneOf"].as_array()) {
        let kinds: Vec<&str> = any
            .iter()
            .map(|b| kind_of(b, root))
            .filter(|k| *k != "null")
            .collect();
        return match kinds.as_slice() {
            [k] => k,
            [k, ..] if kinds.iter().all(|x| x == k) => k,
            ["list", ..] => "list",
            _ => "any",
        };
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    match types.iter().find(|t| **t != "null").copied() {
        Some("string") => "string",
        Some("boolean") => "bool",
        Some("integer" | "number") => "number",
        Some("array") => "list",
        Some("object") => "map",
        None if types.contains(&"null") => "null",
        _ => "any",
    }
}

/// `[{a, b, c}]` for a list of objects.
fn item_fields(prop: &Value, root: &Value) -> Option<String> {
    let s = resolve(prop, root);
    let arr = match s["anyOf"].as_array() {
        Some(any) => any
            .iter()
            .map(|b| resolve(b, root))
            .find(|b| b["type"] == "array")?,
        None => s,
    };
    let item = resolve(&arr["items"], root);
    let item = match item["anyOf"].as_array() {
        Some(any) => any
            .iter()
            .map(|b| resolve(b, root))
            .find(|b| b["properties"].is_object())?,
        None => item,
    };
    let names: Vec<&str> = item["properties"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .collect();
    Some(format!("[{{{}}}]", names.join(", ")))
}

/// The JSON Schema of a step, one branch per action: `action` names one
/// of the catalog, and `with` holds that action's inputs, each either of
/// its type or a template (a string with `{{`) rendered at run time.
/// Definitions the inputs use go into `defs`.
pub(crate) fn step_schema(step: &mut Value, defs: &mut Map<String, Value>) {
    let mut g = SchemaGenerator::default();
    let inputs = input_schemas(&mut g);
    for (name, def) in g.take_definitions(true) {
        defs.insert(name, def);
    }
    defs.insert(
        "Template".into(),
        json!({
            "description": "A template: rendered when the step runs",
            "type": "string",
            "pattern": "\\{\\{",
        }),
    );
    let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
    step["properties"]["action"] = json!({
        "description": "Action name from the catalog (`standby runbook actions`).",
        "enum": names,
    });
    let branches: Vec<Value> = inputs
        .iter()
        .map(|(name, reference)| {
            let input = match reference["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
            {
                Some(d) => defs.get(d).cloned().unwrap_or_default(),
                None => reference.clone(),
            };
            let props: Map<String, Value> = input["properties"]
                .as_object()
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| {
                            let mut either = json!({
                                "anyOf": [v, {"$ref": "#/$defs/Template"}],
                            });
                            if let Some(d) = v.get("description") {
                                either["description"] = d.clone();
                            }
                            (k.clone(), either)
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "if": { "properties": { "action": { "const": name } }, "required": ["action"] },
                "then": { "properties": { "with": {
                    "type": "object",
                    "properties": props,
                    "required": input.get("required").cloned().unwrap_or(json!([])),
                    "additionalProperties": false,
                } } },
            })
        })
        .collect();
    step["allOf"] = Value::Array(branches);
}

/// The catalog as text, as `standby runbook actions` prints it.
pub fn describe() -> String {
    let mut s = String::new();
    for a in actions() {
        s.push_str(&format!("{}\n  {}\n", a.name, a.summary));
        if !a.inputs.is_empty() {
            s.push_str("  inputs:\n");
            for f in &a.inputs {
                s.push_str(&format!(
                    "    {}{} ({}): {}\n",
                    f.name,
                    if f.required { "" } else { "?" },
                    f.kind,
                    f.doc
                ));
            }
        }
        if !a.outputs.is_empty() {
            s.push_str("  outputs:\n");
            for f in &a.outputs {
                s.push_str(&format!("    {} ({})", f.name, f.kind));
                if !f.doc.is_empty() {
                    s.push_str(&format!(": {}", f.doc));
                }
                s.push('\n');
            }
        }
        s.push_str(&format!("  idempotency: {}\n\n", a.idempotency));
    }
    s
}
