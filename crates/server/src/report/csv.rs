//! The report as CSV: three tables, each its own RFC 4180 file (a header
//! row, comma-separated, CRLF line ends, fields quoted when they hold a
//! comma, a quote or a line break), so a spreadsheet opens each as one
//! rectangular sheet. Empty cells stand for "none"; times are RFC 3339
//! UTC; durations are seconds. A text cell that a spreadsheet would take
//! for a formula (`=`, `+`, `-`, `@` first) is prefixed with `'`.

use std::fmt::Write;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use standby_types::report::MonthlyReport;

use crate::error::ServerError;

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A row per VM: its RPO compliance.
    Vms,
    /// A row per VM of each drill (a drill without any: one row, VM empty).
    Drills,
    /// A row per incident.
    Incidents,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Vms, Part::Drills, Part::Incidents];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Vms => "vms",
            Part::Drills => "drills",
            Part::Incidents => "incidents",
        }
    }

    /// The header row's columns.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Part::Vms => &[
                "month",
                "tenant",
                "vm",
                "groups",
                "rpo_target_seconds",
                "compliance_percent",
                "measured_seconds",
                "missed_seconds",
                "worst_age_seconds",
                "points",
                "last_point",
            ],
            Part::Drills => &[
                "month",
                "tenant",
                "job",
                "started_at",
                "finished_at",
                "scope",
                "result",
                "drill_rto_seconds",
                "vm",
                "site",
                "rto_seconds",
                "data_age_seconds",
            ],
            Part::Incidents => &[
                "month",
                "tenant",
                "id",
                "title",
                "severity",
                "state",
                "opened_at",
                "resolved_at",
                "duration_seconds",
            ],
        }
    }
}

impl FromStr for Part {
    type Err = ServerError;

    fn from_str(s: &str) -> Result<Part, ServerError> {
        Part::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "bad part '{s}': expected vms, drills or incidents"
                ))
            })
    }
}

/// A text cell: quoted when needed, formula-looking text defused.
pub fn text(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn num(x: Option<f64>) -> String {
    x.map(|x| x.to_string()).unwrap_or_default()
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One table of the report.
pub fn render(r: &MonthlyReport, part: Part) -> String {
    let mut out = String::new();
    let mut row = |cells: Vec<String>| {
        let _ = write!(out, "{}\r\n", cells.join(","));
    };
    row(part.columns().iter().map(|c| c.to_string()).collect());
    let month = text(&r.month);
    let tenant = text(r.tenant.as_deref().unwrap_or(""));
    match part {
        Part::Vms => {
            for v in &r.vms {
                row(vec![
                    month.clone(),
                    tenant.clone(),
                    text(&v.vm),
                    text(&v.groups.join(" ")),
                    num(v.rpo_target_seconds),
                    num(v.compliance_percent),
                    num(Some(v.measured_seconds)),
                    num(Some(v.missed_seconds)),
                    num(v.worst_age_seconds),
                    v.points.to_string(),
                    time(v.last_point),
                ]);
            }
        }
        Part::Drills => {
            for d in &r.drills {
                let head = vec![
                    month.clone(),
                    tenant.clone(),
                    d.job.to_string(),
                    time(Some(d.started_at)),
                    time(d.finished_at),
                    text(&d.scope),
                    text(&d.result),
                    num(d.rto_seconds),
                ];
                if d.vms.is_empty() {
                    row([head.clone(), vec![String::new(); 4]].concat());
                }
                for v in &d.vms {
                    let vm = vec![
                        text(&v.vm),
                        text(&v.site),
                        num(v.rto_seconds),
                        num(Some(v.data_age_seconds)),
                    ];
                    row([head.clone(), vm].concat());
                }
            }
        }
        Part::Incidents => {
            for i in &r.incidents {
                row(vec![
                    month.clone(),
                    tenant.clone(),
                    i.id.to_string(),
                    text(&i.title),
                    text(&i.severity),
                    text(&i.state),
                    time(Some(i.opened_at)),
                    time(i.resolved_at),
                    num(i.duration_seconds),
                ]);
            }
        }
    }
    out
}
