//! The watch logic of standby: probes, rules and the alert evaluator.
//! Pure: no database and no HTTP server; the server feeds it results and
//! events, passes the time in and stores the transitions it returns.
//!
//! Layout:
//! - [`probe`]: runs one network check (tcp, http, udp, sip) within its
//!   time budget and turns the outcome into a `ProbeResult`.
//! - [`rules`]: the YAML rules file (alert rules, inhibit rules,
//!   incident templates), parsed with errors that name file, line, column
//!   and field path.
//! - [`eval`]: the evaluator, a state machine over (rule, group key).

pub mod rules;

pub use rules::{RuleError, RuleSet};
