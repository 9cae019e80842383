//! Parsing and validation: serde reads the shape (with serde_norway's
//! line and column), then every check serde cannot make: ids, actions and
//! their inputs, template syntax and the names templates use, references
//! to steps, durations and cron expressions. All problems are reported,
//! not only the first.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use crate::catalog;
use crate::format::{Runbook, Step};
use crate::template;

/// One problem in a runbook file. Displays as
/// `FILE[:LINE:COLUMN]: PATH: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RunbookError {
    pub file: String,
    pub at: Option<(usize, usize)>,
    /// Field path such as `steps[2].with.vm`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl RunbookError {
    fn render(&self) -> String {
        let mut s = self.file.clone();
        if let Some((l, c)) = self.at {
            s.push_str(&format!(":{l}:{c}"));
        }
        if !self.path.is_empty() {
            s.push_str(": ");
            s.push_str(&self.path);
        }
        s.push_str(": ");
        s.push_str(&self.message);
        s
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<RunbookError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// Parse a duration such as `2s`, `10m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    standby_types::config::parse_duration(s)
}

/// Parse and validate the runbook text of `file` (a file name such as
/// `failover-site.yaml`; its stem must be the runbook's name).
pub fn parse(file: &str, text: &str) -> Result<Runbook, Invalid> {
    let rb: Runbook = serde_norway::from_str(text).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        let msg = e.to_string();
        // serde_norway appends " at line L column C"; the mark is shown
        // in front already.
        let msg = match msg.find(" at line ") {
            Some(i) if at.is_some() => msg[..i].to_string(),
            _ => msg,
        };
        Invalid(vec![RunbookError {
            file: file.to_string(),
            at,
            path: String::new(),
            message: msg,
        }])
    })?;
    let errors = check(file, &rb);
    if errors.is_empty() {
        Ok(rb)
    } else {
        Err(Invalid(errors))
    }
}

struct Checker<'a> {
    file: &'a str,
    errors: Vec<RunbookError>,
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(RunbookError {
            file: self.file.to_string(),
            at: None,
            path: path.into(),
            message: message.into(),
        });
    }

    /// Check the template strings in `v` (at `path`): syntax, roots in
    /// `roots`, params declared, steps earlier than this one.
    fn templates(
        &mut self,
        v: &Value,
        path: &str,
        roots: &[&str],
        params: &BTreeSet<String>,
        earlier: &[String],
        all_steps: &[String],
    ) {
        let mut strings = Vec::new();
        template::strings(v, path, &mut strings);
        for (p, s) in strings {
            let vars = match template::variables(s) {
                Ok(v) => v,
                Err(e) => {
                    self.err(p, e);
                    continue;
                }
            };
            let mut vars: Vec<String> = vars.into_iter().collect();
            vars.sort();
            for var in vars {
                let mut parts = var.split('.');
                let root = parts.next().unwrap_or("");
                if !roots.contains(&root) {
                    self.err(&p, format!("undefined value '{root}'"));
                    continue;
                }
                match root {
                    "params" => {
                        if let Some(name) = parts.next()
                            && !params.contains(name)
                        {
                            self.err(&p, format!("unknown parameter '{name}'"));
                        }
                    }
                    "steps" => {
                        if let Some(id) = parts.next()
                            && !earlier.iter().any(|e| e == id)
                        {
                            if all_steps.iter().any(|e| e == id) {
                                self.err(
                                    &p,
                                    format!("step '{id}' has not run yet here (only earlier steps' outputs can be used)"),
                                );
                            } else {
                                self.err(&p, format!("unknown step '{id}'"));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Names in scope everywhere in steps.
const STEP_ROOTS: &[&str] = &["params", "trigger", "steps", "job", "incident"];
const ITEM_ROOTS: &[&str] = &[
    "params", "trigger", "steps", "job", "incident", "item", "index",
];

fn check(file: &str, rb: &Runbook) -> Vec<RunbookError> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    let stem = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file);
    if rb.name != stem {
        c.err(
            "name",
            format!("name '{}' does not match the file name '{stem}'", rb.name),
        );
    }
    if !valid_id(&rb.name) {
        c.err("name", format!("'{}' is not [a-z0-9_-]+", rb.name));
    }
    if rb.steps.is_empty() {
        c.err("steps", "a runbook needs at least one step");
    }
    // Trigger.
    if let Some(a) = &rb.trigger.alert
        && a.state != "firing"
    {
        c.err(
            "trigger.alert.state",
            format!("state '{}' is not supported (only 'firing')", a.state),
        );
    }
    if let Some(s) = &rb.trigger.schedule {
        match (&s.cron, s.groups) {
            (Some(_), true) | (None, false) => c.err(
                "trigger.schedule",
                "give exactly one of 'cron' and 'groups: true'",
            ),
            (Some(cron), false) => {
                if let Err(e) = standby_types::config::Schedule::from_str(cron) {
                    c.err("trigger.schedule.cron", e);
                }
            }
            (None, true) => {
                if !rb.params.contains_key("group") {
                    c.err(
                        "trigger.schedule.groups",
                        "a per-group schedule sets params.group: declare a 'group' parameter",
                    );
                }
            }
        }
    }
    if let Some(w) = &rb.trigger.webhook
        && w.secret_env.trim().is_empty()
    {
        c.err(
            "trigger.webhook.secret_env",
            "must name an environment variable",
        );
    }
    let params: BTreeSet<String> = rb.params.keys().cloned().collect();
    let ids: Vec<String> = rb.steps.iter().map(|s| s.id.clone()).collect();
    for (name, p) in &rb.params {
        if !valid_id(name) {
            c.err(format!("params.{name}"), "a parameter name is [a-z0-9_-]+");
        }
        if let Some(d) = &p.default {
            c.templates(
                d,
                &format!("params.{name}.default"),
                &["trigger", "job"],
                &params,
                &[],
                &ids,
            );
        }
    }
    for (field, v) in [("lock", &rb.lock), ("incident", &rb.incident)] {
        if let Some(s) = v {
            c.templates(
                &Value::String(s.clone()),
                field,
                &["params", "trigger", "job"],
                &params,
                &[],
                &ids,
            );
        }
    }
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, step) in rb.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        if !valid_id(&step.id) {
            c.err(
                format!("{at}.id"),
                format!("'{}' is not [a-z0-9_-]+", step.id),
            );
        }
        if !seen.insert(&step.id) {
            c.err(
                format!("{at}.id"),
                format!("duplicate step id '{}'", step.id),
            );
        }
        check_step(&mut c, &at, step, &params, &ids[..i], &ids);
    }
    c.errors
}

fn check_step(
    c: &mut Checker,
    at: &str,
    step: &Step,
    params: &BTreeSet<String>,
    earlier: &[String],
    all: &[String],
) {
    match catalog::action(&step.action) {
        None => c.err(
            format!("{at}.action"),
            format!(
                "unknown action '{}' (see `standby runbook actions`)",
                step.action
            ),
        ),
        Some(spec) => {
            for key in step.with.keys() {
                if !spec.inputs.iter().any(|f| f.name == *key) {
                    let known: Vec<&str> = spec.inputs.iter().map(|f| f.name.as_str()).collect();
                    c.err(
                        format!("{at}.with.{key}"),
                        format!(
                            "unknown input '{key}' of action {} (inputs: {})",
                            spec.name,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
            for f in spec.inputs.iter().filter(|f| f.required) {
                if !step.with.contains_key(&f.name) {
                    c.err(
                        format!("{at}.with"),
                        format!("missing input '{}' of action {}", f.name, spec.name),
                    );
                }
            }
            // Literal durations can be checked now.
            for f in spec.inputs.iter().filter(|f| f.kind == "duration") {
                if let Some(Value::String(s)) = step.with.get(&f.name)
                    && !template::is_template(s)
                    && let Err(e) = duration(s)
                {
                    c.err(format!("{at}.with.{}", f.name), e);
                }
            }
        }
    }
    let roots = if step.for_each.is_some() {
        ITEM_ROOTS
    } else {
        STEP_ROOTS
    };
    let with = Value::Object(step.with.clone().into_iter().collect());
    c.templates(&with, &format!("{at}.with"), roots, params, earlier, all);
    if let Some(w) = &step.when {
        c.templates(
            &Value::String(w.clone()),
            &format!("{at}.when"),
            roots,
            params,
            earlier,
            all,
        );
        if template::as_expression(w).is_none() {
            c.err(
                format!("{at}.when"),
                "a condition is one expression: '{{ ... }}'",
            );
        }
    }
    match &step.for_each {
        None => {
            if step.parallel.is_some() {
                c.err(format!("{at}.parallel"), "'parallel' needs 'for_each'");
            }
        }
        Some(Value::String(s)) => {
            if template::as_expression(s).is_none() {
                c.err(
                    format!("{at}.for_each"),
                    "for_each is one expression giving a list ('{{ ... }}') or a list",
                );
            }
            c.templates(
                &Value::String(s.clone()),
                &format!("{at}.for_each"),
                STEP_ROOTS,
                params,
                earlier,
                all,
            );
        }
        Some(v @ Value::Array(_)) => c.templates(
            v,
            &format!("{at}.for_each"),
            STEP_ROOTS,
            params,
            earlier,
            all,
        ),
        Some(_) => c.err(
            format!("{at}.for_each"),
            "for_each is one expression giving a list ('{{ ... }}') or a list",
        ),
    }
    if step.parallel == Some(0) {
        c.err(format!("{at}.parallel"), "parallel must be at least 1");
    }
    if let Some(r) = &step.retry {
        if r.attempts == 0 {
            c.err(
                format!("{at}.retry.attempts"),
                "attempts must be at least 1",
            );
        }
        if let Err(e) = duration(&r.backoff) {
            c.err(format!("{at}.retry.backoff"), e);
        }
    }
    if let Some(t) = &step.timeout {
        match duration(t) {
            Ok(d) if d.is_zero() => c.err(format!("{at}.timeout"), "timeout must be above 0"),
            Ok(_) => {}
            Err(e) => c.err(format!("{at}.timeout"), e),
        }
    }
}

pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
}
