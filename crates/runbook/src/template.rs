//! Templates in runbook values, evaluated by minijinja. A string that is
//! exactly one `{{ expr }}` evaluates to the expression's typed value
//! (a list, a map, a number); any other string containing `{{` or `{%`
//! renders as text; other strings and non-strings stay as they are
//! (containers are walked).
//!
//! Besides minijinja's builtins, `fail(message)` stops the evaluation
//! with `message` as the whole error: a runbook checks its parameters
//! with it (e.g. in its `lock`, rendered when a job starts, so a bad
//! combination is refused before anything runs).

use std::collections::HashSet;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Names minijinja reports as undeclared that are its own globals.
const BUILTINS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "loop",
    "true",
    "false",
    "none",
    "fail",
];

/// The error `fail(message)` raises; [`describe`] shows its message alone.
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fail() was called")
    }
}

impl std::error::Error for Failed {}

fn fail(message: String) -> Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message).with_source(Failed))
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_function("fail", fail);
        env
    })
}

/// The expression of a string that is exactly one `{{ expr }}`.
pub fn as_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Whether the string is a template at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// A template error at a field path (`with.vm`, `for_each`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub path: String,
    pub message: String,
}

fn describe(e: &minijinja::Error, src: &str) -> String {
    use std::error::Error as _;
    if e.source().is_some_and(|s| s.is::<Failed>()) {
        return e.detail().unwrap_or("fail() was called").to_string();
    }
    let mut msg = e.detail().map(str::to_string).unwrap_or_default();
    let kind = match e.kind() {
        minijinja::ErrorKind::UndefinedError => "undefined value".to_string(),
        k => k.to_string(),
    };
    if msg.is_empty() {
        msg = kind;
    } else {
        msg = format!("{kind}: {msg}");
    }
    format!("{msg} in '{}'", src.trim())
}

/// Evaluate one expression (`item.name`, no braces) against `ctx`.
pub fn eval_expression(expr: &str, ctx: &minijinja::Value) -> Result<Value, String> {
    let compiled = env()
        .compile_expression(expr)
        .map_err(|e| describe(&e, expr))?;
    let v = compiled.eval(ctx).map_err(|e| describe(&e, expr))?;
    if v.is_undefined() {
        return Err(format!("undefined value in '{expr}'"));
    }
    serde_json::to_value(&v).map_err(|e| format!("{e} in '{expr}'"))
}

/// Evaluate a `when`-style condition: an expression, with or without
/// braces, taken for its truth.
pub fn eval_condition(src: &str, ctx: &minijinja::Value) -> Result<bool, String> {
    let expr = as_expression(src).unwrap_or(src.trim());
    let compiled = env()
        .compile_expression(expr)
        .map_err(|e| describe(&e, src))?;
    let v = compiled.eval(ctx).map_err(|e| describe(&e, src))?;
    Ok(v.is_true())
}

/// Render one string.
pub fn render_str(s: &str, ctx: &minijinja::Value) -> Result<Value, String> {
    if let Some(expr) = as_expression(s) {
        return eval_expression(expr, ctx);
    }
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    env()
        .render_str(s, ctx)
        .map(Value::String)
        .map_err(|e| describe(&e, s))
}

/// Render every template in `v`; `path` names `v` in errors.
pub fn render(v: &Value, ctx: &minijinja::Value, path: &str) -> Result<Value, TemplateError> {
    match v {
        Value::String(s) => render_str(s, ctx).map_err(|message| TemplateError {
            path: path.to_string(),
            message,
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| render(x, ctx, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, x) in map {
                out.insert(k.clone(), render(x, ctx, &join(path, k))?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The variables one template string uses, as dotted paths
/// (`steps.vms.output.vms`), without minijinja's own globals; or the
/// syntax error.
pub fn variables(s: &str) -> Result<HashSet<String>, String> {
    let vars = if let Some(expr) = as_expression(s) {
        env()
            .compile_expression(expr)
            .map_err(|e| describe(&e, s))?
            .undeclared_variables(true)
    } else if is_template(s) {
        env()
            .template_from_str(s)
            .map_err(|e| describe(&e, s))?
            .undeclared_variables(true)
    } else {
        HashSet::new()
    };
    Ok(vars
        .into_iter()
        .filter(|v| !BUILTINS.contains(&root(v)))
        .collect())
}

/// Every template string in `v` with its path.
pub fn strings<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((path.to_string(), s)),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                strings(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, x) in map {
                strings(x, &join(path, k), out);
            }
        }
        _ => {}
    }
}

/// First segment of a dotted path.
pub fn root(var: &str) -> &str {
    var.split('.').next().unwrap_or(var)
}

/// A template context from a JSON map.
pub fn context(v: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}
