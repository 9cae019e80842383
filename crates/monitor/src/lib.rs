//! The watch logic of standby: probes, rules and the alert evaluator.
//! Pure: no database and no HTTP server. The server feeds the evaluator
//! probe results and events, passes the time in, and stores the
//! transitions it returns.
//!
//! # Layout
//! - [`probe`]: runs one network check (tcp, http, udp, sip) within its
//!   time budget and turns the outcome into a `ProbeResult`.
//! - [`rules`]: the YAML rules file (alert rules, inhibit rules, incident
//!   templates); errors read `FILE:LINE:COLUMN: FIELD.PATH: message`.
//!   `rules/builtin.yaml` is shipped and parsed by [`RuleSet::builtin`].
//! - [`eval`]: the evaluator, a state machine per (rule, group key).
//!
//! # Evaluation semantics
//! - A probe result is fresh while `now - at <= stale_after`. Stale
//!   results are no evidence either way: they neither start nor resolve
//!   an alert, and a pending group without fresh evidence lapses. An
//!   alert restored after a restart keeps firing until fresh results say
//!   otherwise; one whose probe was forgotten can resolve.
//! - Probe condition, per group key (the `group_by` label values; a
//!   missing label counts as ""): a vantage point *agrees* when it has at
//!   least one fresh matching result and all of them fail. One good
//!   result from a vantage point means it still sees the target. The
//!   condition holds when at least `min_vantage_points` agree.
//! - Event condition: holds when at least `count` matching events of the
//!   group happened within `within` of now; only the newest `count`
//!   times are kept per group.
//! - State per (rule, group key): inactive → pending (since the condition
//!   first held) → firing once it held for `for` (the Firing transition,
//!   `active_since` = pending start). A pending condition that lapses
//!   emits nothing. A firing alert resolves only after the condition was
//!   false for `clear_for` without a break, so a flapping probe gives one
//!   alert, not a storm.
//! - Alert labels: rule labels, the group_by labels, `alertname` (rule
//!   name) and `severity`. Fingerprint: the first 16 hex digits of blake3
//!   over the alert name and the sorted labels.
//! - Annotations are minijinja templates rendered at firing time with
//!   `labels` in context; a template that fails renders as its source
//!   plus an error note.
//! - Inhibition: an alert matching an inhibit rule's `target` is muted by
//!   a firing alert matching its `source` with equal `equal` labels.

pub mod eval;
pub mod probe;
pub mod rules;

pub use eval::{Evaluator, RenderedIncident, Transition, TransitionKind, fingerprint};
pub use rules::{RuleError, RuleSet};
