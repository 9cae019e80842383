//! Runbooks: the file format, its JSON Schema, validation, templates and
//! the plan of a dry run. The durable executor lives in the engine
//! (`standby-engine`'s `runbooks` module); this crate is pure.
//!
//! # Layout
//! - [`format`]: the YAML shape (serde + schemars).
//! - [`catalog`]: every action a step may name, generated from the typed
//!   inputs in [`inputs`] (their scalars in [`scalar`]) and the outputs in
//!   `standby_types::outcome`; [`Call`] is one parsed call.
//! - [`validate`]: parse + every check serde cannot make; errors name the
//!   file, the field path and (from serde_norway) line and column.
//! - [`template`]: minijinja rendering; a string that is exactly one
//!   `{{ expr }}` keeps the expression's type.
//! - [`plan`]: parameters and the dry-run plan.
//!
//! # Template context
//! `params`, `trigger` (`trigger.kind` = alert | schedule | manual |
//! webhook, plus `trigger.alert`, `trigger.group`, `trigger.body`),
//! `job` (`id`, `runbook`), `incident` (the job's incident id or none),
//! `steps.ID.output` (a `for_each` step's output is the list of its items'
//! outputs, `null` for skipped ones) and, in a `for_each` step, `item` and
//! `index`.

pub mod catalog;
pub mod format;
pub mod inputs;
pub mod plan;
pub mod scalar;
pub mod template;
pub mod validate;

pub use catalog::{ActionSpec, Call, InputError, action, actions};
pub use format::{OnFailure, Resource, Runbook, Step, schema};
pub use inputs::Action;
pub use plan::{Plan, context, plan, resolve_params};
pub use validate::{Invalid, RunbookError, duration, parse};

#[cfg(test)]
mod tests;
