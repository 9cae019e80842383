//! `standby alerts|silences|incidents|events|probes|rules|agent`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;
use standby_types::watch::{
    Alert, Delivery, Event, Incident, IncidentDetail, ProbeResult, Silence,
};

use super::Ctx;
use crate::output;

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}

#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Active alerts (or all, newest first).
    List {
        /// Show resolved ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One alert.
    Show { id: i64 },
    /// Acknowledge an alert: someone is on it.
    Ack {
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
    /// Mute notifications of alerts matching every KEY=VALUE.
    Silence {
        #[arg(long = "match", value_parser = parse_kv, required = true)]
        matchers: Vec<(String, String)>,
        /// How long, e.g. 30m, 2h.
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Silences in force (`--all` for expired ones too).
    Silences {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Unsilence { id: i64 },
    /// The notification delivery log, newest first.
    Deliveries {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn labels_text(l: &standby_types::watch::Labels) -> String {
    l.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn alerts(ctx: &Ctx, cmd: &AlertsCmd) -> Result<()> {
    match cmd {
        AlertsCmd::List { all, rule, limit } => {
            let mut path = format!(
                "/api/v1/alerts?state={}&limit={limit}",
                if *all { "all" } else { "active" }
            );
            if let Some(r) = rule {
                path.push_str(&format!("&rule={r}"));
            }
            let list: Vec<Alert> = ctx.client.get(&path).await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &[
                    "ALERT", "RULE", "SEVERITY", "STATE", "LABELS", "FIRED", "NOTE",
                ],
                list.into_iter()
                    .map(|a| {
                        let note = match (&a.inhibited_by, a.silenced_by, a.incident) {
                            (Some(fp), _, _) => format!("muted by {fp}"),
                            (_, Some(s), _) => format!("silenced ({s})"),
                            (_, _, Some(i)) => format!("incident {i}"),
                            _ => a.annotations.get("summary").cloned().unwrap_or_default(),
                        };
                        vec![
                            a.id.to_string(),
                            a.rule,
                            a.severity.to_string(),
                            a.state.as_str().to_string(),
                            labels_text(&a.labels),
                            output::age(a.fired_at),
                            note,
                        ]
                    })
                    .collect(),
            );
        }
        AlertsCmd::Show { id } => {
            let a: Alert = ctx.client.get(&format!("/api/v1/alerts/{id}")).await?;
            output::json(&a);
        }
        AlertsCmd::Ack { id, by } => {
            let by = by.clone().unwrap_or_else(who);
            let a: Alert = ctx
                .client
                .post(&format!("/api/v1/alerts/{id}/ack"), &json!({ "by": by }))
                .await?;
            if ctx.json {
                output::json(&a);
            } else {
                println!("alert {} ({}) acknowledged by {by}", a.id, a.rule);
            }
        }
        AlertsCmd::Silence {
            matchers,
            duration,
            comment,
        } => {
            let m: std::collections::BTreeMap<_, _> = matchers.iter().cloned().collect();
            let s: Silence = ctx
                .client
                .post(
                    "/api/v1/silences",
                    &json!({"matchers": m, "duration": duration, "comment": comment, "created_by": who()}),
                )
                .await?;
            if ctx.json {
                output::json(&s);
            } else {
                println!(
                    "silence {} until {} for {}",
                    s.id,
                    s.ends_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    labels_text(&s.matchers)
                );
            }
        }
        AlertsCmd::Silences { all } => {
            let list: Vec<Silence> = ctx
                .client
                .get(&format!("/api/v1/silences?all={all}"))
                .await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &["SILENCE", "MATCHERS", "UNTIL", "BY", "COMMENT"],
                list.into_iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            labels_text(&s.matchers),
                            s.ends_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            s.created_by,
                            s.comment,
                        ]
                    })
                    .collect(),
            );
        }
        AlertsCmd::Unsilence { id } => {
            let _: serde_json::Value = ctx.client.delete(&format!("/api/v1/silences/{id}")).await?;
            println!("silence {id} expired");
        }
        AlertsCmd::Deliveries { limit } => {
            let list: Vec<Delivery> = ctx
                .client
                .get(&format!("/api/v1/deliveries?limit={limit}"))
                .await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            output::table(
                &[
                    "DELIVERY",
                    "RECEIVER",
                    "STATUS",
                    "ALERTS",
                    "STATE",
                    "ATTEMPTS",
                    "LAST ERROR",
                ],
                list.into_iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.receiver,
                            d.status,
                            d.alerts
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            d.state,
                            d.attempts.to_string(),
                            d.last_error.unwrap_or_default(),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum IncidentsCmd {
    /// Open incidents (or all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// An incident with its alerts and timeline.
    Show { id: i64 },
    /// Open an incident by hand.
    Open {
        title: String,
        #[arg(long, default_value = "error")]
        severity: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Add a note to the timeline.
    Note { id: i64, text: String },
    /// Mark resolved (the service is back).
    Resolve {
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
    /// Close (post-mortem done).
    Close {
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
}

fn print_incidents(list: Vec<Incident>) {
    output::table(
        &["INCIDENT", "STATE", "SEVERITY", "TITLE", "GROUP", "OPENED"],
        list.into_iter()
            .map(|i| {
                vec![
                    i.id.to_string(),
                    i.state.as_str().to_string(),
                    i.severity.to_string(),
                    i.title,
                    i.group,
                    output::age(i.opened_at),
                ]
            })
            .collect(),
    );
}

pub async fn incidents(ctx: &Ctx, cmd: &IncidentsCmd) -> Result<()> {
    let single: Incident = match cmd {
        IncidentsCmd::List { all, limit } => {
            let list: Vec<Incident> = ctx
                .client
                .get(&format!(
                    "/api/v1/incidents?state={}&limit={limit}",
                    if *all { "all" } else { "open" }
                ))
                .await?;
            if ctx.json {
                output::json(&list);
            } else {
                print_incidents(list);
            }
            return Ok(());
        }
        IncidentsCmd::Show { id } => {
            let d: IncidentDetail = ctx.client.get(&format!("/api/v1/incidents/{id}")).await?;
            if ctx.json {
                output::json(&d);
                return Ok(());
            }
            let i = &d.incident;
            println!("incident {}: {}", i.id, i.title);
            println!("  state {}  severity {}  group {}", i.state.as_str(), i.severity, i.group);
            if !i.description.is_empty() {
                println!("  {}", i.description);
            }
            println!("alerts:");
            for a in &d.alerts {
                println!(
                    "  {} {} {} [{}]",
                    a.id,
                    a.rule,
                    labels_text(&a.labels),
                    a.state.as_str()
                );
            }
            println!("timeline:");
            for e in &d.timeline {
                println!(
                    "  {}  {:<6} {:<14} {}",
                    e.at.format("%H:%M:%S%.3f"),
                    e.kind,
                    e.author,
                    e.text
                );
            }
            return Ok(());
        }
        IncidentsCmd::Open {
            title,
            severity,
            description,
            group,
        } => {
            ctx.client
                .post(
                    "/api/v1/incidents",
                    &json!({"title": title, "severity": severity, "description": description, "group": group, "author": who()}),
                )
                .await?
        }
        IncidentsCmd::Note { id, text } => {
            ctx.client
                .post(
                    &format!("/api/v1/incidents/{id}/notes"),
                    &json!({"text": text, "author": who()}),
                )
                .await?
        }
        IncidentsCmd::Resolve { id, note } | IncidentsCmd::Close { id, note } => {
            let verb = if matches!(cmd, IncidentsCmd::Resolve { .. }) {
                "resolve"
            } else {
                "close"
            };
            ctx.client
                .post(
                    &format!("/api/v1/incidents/{id}/{verb}"),
                    &json!({"note": note, "author": who()}),
                )
                .await?
        }
    };
    if ctx.json {
        output::json(&single);
    } else {
        println!(
            "incident {} is {}: {}",
            single.id,
            single.state.as_str(),
            single.title
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum EventsCmd {
    /// Follow events as they happen.
    Tail {
        /// Start with events from this long ago (e.g. 5m).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Lowest severity shown.
        #[arg(long)]
        severity: Option<String>,
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Hide probe results (only alerts, incidents, notifications...).
        #[arg(long)]
        no_probes: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Stored events, oldest first.
    List {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        severity: Option<String>,
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn query(
    since: &Option<String>,
    kind: &Option<String>,
    severity: &Option<String>,
    labels: &[(String, String)],
) -> String {
    let mut q: Vec<(String, String)> = Vec::new();
    if let Some(s) = since {
        q.push(("since".into(), s.clone()));
    }
    if let Some(k) = kind {
        q.push(("kind".into(), k.clone()));
    }
    if let Some(s) = severity {
        q.push(("severity".into(), s.clone()));
    }
    for (k, v) in labels {
        q.push(("label".into(), format!("{k}={v}")));
    }
    q.iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_event(e: &Event) {
    println!(
        "{} {:<8} {:<20} {:<24} {:<18} {}",
        e.at.format("%H:%M:%S%.3f"),
        e.severity,
        e.kind,
        e.source,
        e.vantage,
        e.message
    );
}

pub async fn events(ctx: &Ctx, cmd: &EventsCmd) -> Result<()> {
    match cmd {
        EventsCmd::Tail {
            since,
            kind,
            severity,
            labels,
            no_probes,
            count,
        } => {
            let q = query(since, kind, severity, labels);
            let mut seen = 0usize;
            let json_out = ctx.json;
            ctx.client
                .stream(&format!("/api/v1/events/stream?{q}"), |kind, data| {
                    if kind == "lagged" {
                        eprintln!("(fell behind: {data} event(s) skipped)");
                        return true;
                    }
                    let Ok(e) = serde_json::from_str::<Event>(data) else {
                        return true;
                    };
                    if *no_probes && e.kind == "probe.result" {
                        return true;
                    }
                    if json_out {
                        println!("{data}");
                    } else {
                        print_event(&e);
                    }
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                })
                .await?;
        }
        EventsCmd::List {
            since,
            kind,
            severity,
            labels,
            limit,
        } => {
            let q = query(since, kind, severity, labels);
            let list: Vec<Event> = ctx
                .client
                .get(&format!("/api/v1/events?{q}&limit={limit}"))
                .await?;
            if ctx.json {
                output::json(&list);
            } else {
                list.iter().for_each(print_event);
            }
        }
    }
    Ok(())
}

/// Latest result of every probe at every vantage point.
pub async fn probes(ctx: &Ctx) -> Result<()> {
    let list: Vec<ProbeResult> = ctx.client.get("/api/v1/probes").await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    output::table(
        &[
            "PROBE", "VANTAGE", "KIND", "RESULT", "LATENCY", "AGE", "DETAIL",
        ],
        list.into_iter()
            .map(|r| {
                vec![
                    r.probe,
                    r.vantage,
                    r.labels.get("kind").cloned().unwrap_or_default(),
                    if r.ok { "ok".into() } else { "FAIL".into() },
                    format!("{} ms", r.latency_ms),
                    output::age(r.at),
                    r.detail,
                ]
            })
            .collect(),
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum RulesCmd {
    /// Check rule files without a controller (exit 1 on the first error).
    Check { files: Vec<PathBuf> },
    /// Rules in force and the last reload error, from the controller.
    Status,
    /// Make the controller re-read its rule files now.
    Reload,
}

pub async fn rules(ctx: &Ctx, cmd: &RulesCmd) -> Result<()> {
    match cmd {
        RulesCmd::Check { files } => {
            if files.is_empty() {
                bail!("name at least one rule file");
            }
            let mut set = standby_monitor::RuleSet::builtin();
            for f in files {
                let src = std::fs::read_to_string(f)
                    .with_context(|| format!("unable to read {}", f.display()))?;
                let more =
                    standby_monitor::RuleSet::parse(&src, f).map_err(|e| anyhow::anyhow!("{e}"))?;
                set = standby_monitor::RuleSet::merge(set, more)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "ok: {} rules ({})",
                set.names().len(),
                set.names().join(", ")
            );
        }
        RulesCmd::Status | RulesCmd::Reload => {
            let st: serde_json::Value = if matches!(cmd, RulesCmd::Reload) {
                ctx.client.post("/api/v1/rules/reload", &json!({})).await?
            } else {
                ctx.client.get("/api/v1/rules").await?
            };
            if ctx.json {
                output::json(&st);
                return Ok(());
            }
            let names: Vec<String> = st["rules"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            println!("{} rules in force: {}", names.len(), names.join(", "));
            if let Some(e) = st["error"].as_str() {
                println!("last reload failed (previous rules kept): {e}");
            }
        }
    }
    Ok(())
}

/// `standby agent`: run as a remote agent until interrupted.
pub async fn agent(
    name: &str,
    controller: &str,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<std::path::PathBuf>,
    auth: standby_agent::daemon::AgentAuth,
    policy: Option<standby_agent::policy::Policy>,
) -> Result<()> {
    let tls = matches!(auth, standby_agent::daemon::AgentAuth::Tls { .. });
    // One address or several replicas, comma-separated.
    let controller = controller
        .split(',')
        .map(|c| {
            let c = c.trim();
            if c.starts_with("http://") || c.starts_with("https://") {
                c.to_string()
            } else if tls {
                format!("https://{c}")
            } else {
                format!("http://{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        c.cancel();
    });
    eprintln!("standby agent {name} reporting to {controller}");
    let ready = std::sync::Arc::new(tokio::sync::Notify::new());
    let (serving, name2) = (ready.clone(), name.to_string());
    tokio::spawn(async move {
        serving.notified().await;
        crate::systemd::ready(&format!("agent {name2} serving"));
    });
    let out = standby_agent::daemon::run(
        standby_agent::daemon::AgentOptions {
            controller,
            name: name.to_string(),
            listen,
            data_dir,
            auth,
            policy,
            ready: Some(ready),
        },
        cancel,
    )
    .await;
    crate::systemd::stopping();
    out.context("agent stopped")
}
