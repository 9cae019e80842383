//! The action catalog's implementations (the table itself, with inputs
//! and outputs, is `standby_runbook::catalog`). Every action may run twice
//! for one step execution (a retry, or a job resumed after a crash), so
//! each checks the world first or returns what it recorded while it ran
//! ([`ActionCtx::record`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use standby_db::{StepRecord, StepState};
use standby_hv::VmState;
use standby_types::api::RestoreRequest;
use standby_types::watch::{IncidentState, ProbeCheck, ProbeSpec, Severity};

use crate::controller::Controller;
use crate::error::EngineError;
use crate::jobs::JobProgress;

/// What an action knows about the step execution it serves.
pub struct ActionCtx {
    pub ctl: Arc<Controller>,
    pub job: i64,
    pub runbook: String,
    pub step: String,
    /// -1 for a step without `for_each`.
    pub item: i64,
    pub position: i64,
    /// When this step execution first started (kept across a resume).
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
    /// What an earlier run of this execution recorded (null if none).
    pub recorded: Value,
    pub incident: Option<i64>,
    pub input: Value,
}

impl ActionCtx {
    /// `JOB:STEP:ITEM`, unique per step execution.
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.job, self.step, self.item.max(0))
    }

    /// Persist `v` with the running step, so a re-run finds it in
    /// `recorded`.
    pub async fn record(&self, v: Value) -> Result<(), EngineError> {
        self.ctl
            .runbooks
            .repo()
            .put_step(&StepRecord {
                job: self.job,
                step: self.step.clone(),
                item: self.item,
                position: self.position,
                state: StepState::Running,
                attempt: self.attempt,
                input: self.input.clone(),
                output: v,
                error: None,
                started_at: Some(self.started_at),
                finished_at: None,
            })
            .await?;
        Ok(())
    }

    fn str(&self, name: &str) -> Result<String, EngineError> {
        self.opt_str(name)?
            .ok_or_else(|| EngineError::BadRequest(format!("input '{name}' is required")))
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a string"
            ))),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) if s == "true" => Ok(Some(true)),
            Value::String(s) if s == "false" => Ok(Some(false)),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a bool"
            ))),
        }
    }

    fn opt_i64(&self, name: &str) -> Result<Option<i64>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| {
                EngineError::BadRequest(format!("input '{name}': {n} is not an integer"))
            }),
            Value::String(s) => s.trim().parse().map(Some).map_err(|_| {
                EngineError::BadRequest(format!("input '{name}': '{s}' is not an integer"))
            }),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a number"
            ))),
        }
    }

    fn opt_duration(&self, name: &str) -> Result<Option<Duration>, EngineError> {
        match &self.input[name] {
            Value::Null => Ok(None),
            Value::Number(n) => Ok(n.as_f64().map(Duration::from_secs_f64)),
            Value::String(s) => standby_runbook::duration(s)
                .map(Some)
                .map_err(|e| EngineError::BadRequest(format!("input '{name}': {e}"))),
            other => Err(EngineError::BadRequest(format!(
                "input '{name}': {other} is not a duration"
            ))),
        }
    }

    fn incident_or_job(&self) -> Result<i64, EngineError> {
        self.opt_i64("incident")?.or(self.incident).ok_or_else(|| {
            EngineError::BadRequest(
                "no incident: give 'incident' or open one earlier with incident.open".into(),
            )
        })
    }

    fn author(&self) -> String {
        format!("runbook:{}", self.runbook)
    }
}

/// Run action `name` with the rendered input of `ctx`.
pub async fn run(ctx: &ActionCtx, name: &str) -> Result<Value, EngineError> {
    match name {
        "vm.list" => vm_list(ctx).await,
        "vm.start" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::start(&ctx.ctl, &vm).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "vm.shutdown" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::shutdown(&ctx.ctl, &vm, ctx.opt_duration("timeout")?).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "vm.stop" => {
            let vm = ctx.str("vm")?;
            let st = crate::vms::stop(&ctx.ctl, &vm).await?;
            Ok(json!({ "vm": vm, "state": st.state.to_string() }))
        }
        "point.create" => point_create(ctx).await,
        "point.latest" => {
            let vm = ctx.str("vm")?;
            point_latest(&ctx.ctl, &vm, ctx.opt_str("site")?.as_deref()).await
        }
        "point.restore" => point_restore(ctx).await,
        "site.fence" => {
            ctx.ctl
                .fence_site(&ctx.str("site")?, &ctx.str("reason")?)
                .await
        }
        "site.unfence" => ctx.ctl.unfence_site(&ctx.str("site")?).await,
        "traffic.switch" => {
            ctx.ctl
                .switch_traffic(&ctx.str("service")?, &ctx.str("site")?)
                .await
        }
        "probe.wait" => probe_wait(ctx).await,
        "drill.start" => drill_start(ctx).await,
        "drill.probe" => drill_probe(ctx).await,
        "drill.stop" => crate::drill::stop(&ctx.ctl, &ctx.str("id")?).await,
        "drill.report" => drill_report(ctx).await,
        "incident.open" => incident_open(ctx).await,
        "incident.note" => incident_note(ctx).await,
        "incident.resolve" => incident_resolve(ctx).await,
        "notify" => notify(ctx).await,
        "http" => http(ctx).await,
        "shell" => shell(ctx).await,
        "sleep" => {
            let d = ctx
                .opt_duration("duration")?
                .ok_or_else(|| EngineError::BadRequest("input 'duration' is required".into()))?;
            tokio::time::sleep(d).await;
            Ok(json!({ "seconds": d.as_secs_f64() }))
        }
        other => Err(EngineError::BadRequest(format!("unknown action '{other}'"))),
    }
}

/// The configured probe about a VM (labels `vm = NAME`), if any.
fn probe_of(ctl: &Controller, vm: &str) -> Option<String> {
    ctl.cfg
        .probes
        .iter()
        .find(|(_, p)| p.labels.get("vm").map(String::as_str) == Some(vm))
        .map(|(n, _)| n.clone())
}

/// Front-door services of a VM, by name.
fn services_of(ctl: &Controller, vm: &str) -> Vec<String> {
    ctl.cfg
        .services
        .iter()
        .filter(|(_, s)| s.vm == vm)
        .map(|(n, _)| n.clone())
        .collect()
}

/// How to check `service` where it runs at `site`: its probe kind against
/// its backend address there.
fn service_check(ctl: &Controller, service: &str, site: &str) -> Result<ProbeCheck, EngineError> {
    let svc = ctl
        .cfg
        .services
        .get(service)
        .ok_or_else(|| EngineError::not_found("service", service))?;
    let target = svc.backends.get(site).cloned().ok_or_else(|| {
        EngineError::BadRequest(format!("service {service} has no backend at site {site}"))
    })?;
    let kind = svc
        .probe
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "tcp".into());
    Ok(match kind.as_str() {
        "sip" => ProbeCheck::Sip { target },
        "http" => ProbeCheck::Http {
            url: svc
                .probe_url
                .clone()
                .unwrap_or_else(|| format!("http://{target}/")),
            status: None,
            body_contains: None,
        },
        _ => ProbeCheck::Tcp { target },
    })
}

async fn vm_list(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let only = ctx.opt_str("vm")?;
    if let Some(vm) = &only
        && !ctl.cfg.vms.contains_key(vm)
    {
        return Err(EngineError::not_found("vm", vm));
    }
    let site = ctx.opt_str("site")?;
    let group = ctx.opt_str("group")?;
    let protected = ctx.opt_bool("protected")?.unwrap_or(false);
    let mut vms = Vec::new();
    let mut services = Vec::new();
    for rec in ctl.repo.vms().await? {
        let Some(cfg) = ctl.cfg.vms.get(&rec.name) else {
            continue;
        };
        let groups: Vec<String> = ctl
            .cfg
            .groups_of(&rec.name)
            .into_iter()
            .map(String::from)
            .collect();
        if only.as_ref().is_some_and(|v| *v != rec.name)
            || site.as_ref().is_some_and(|s| *s != rec.active_site)
            || group.as_ref().is_some_and(|g| !groups.contains(g))
            || (protected && groups.is_empty())
        {
            continue;
        }
        let state = match ctl.agent(&rec.active_host) {
            Ok(a) => match a.status(&rec.name).await {
                Ok(st) => st.state.to_string(),
                Err(_) => "unknown".to_string(),
            },
            Err(_) => "unknown".to_string(),
        };
        for s in services_of(ctl, &rec.name) {
            let probe = ctl.cfg.services[&s].probe.as_ref().map(|p| p.to_string());
            services.push(json!({
                "service": s,
                "vm": rec.name,
                "site": rec.active_site,
                "home_site": rec.home_site,
                "dr_site": cfg.dr_site,
                "probe": probe,
            }));
        }
        vms.push(json!({
            "name": rec.name,
            "site": rec.active_site,
            "host": rec.active_host,
            "home_site": rec.home_site,
            "dr_site": cfg.dr_site,
            "groups": groups,
            "state": state,
            "probe": probe_of(ctl, &rec.name),
        }));
    }
    Ok(json!({ "vms": vms, "services": services }))
}

async fn point_create(ctx: &ActionCtx) -> Result<Value, EngineError> {
    if !ctx.recorded.is_null() {
        return Ok(ctx.recorded.clone());
    }
    let ctl = &ctx.ctl;
    let (group, members) = match (ctx.opt_str("group")?, ctx.opt_str("vm")?) {
        (Some(g), None) => {
            let grp = ctl
                .cfg
                .groups
                .get(&g)
                .ok_or_else(|| EngineError::not_found("group", &g))?;
            (g, grp.members.clone())
        }
        (None, Some(vm)) => {
            let g = ctl
                .cfg
                .groups_of(&vm)
                .first()
                .map(|g| g.to_string())
                .ok_or_else(|| {
                    EngineError::BadRequest(format!("vm {vm} is in no protection group"))
                })?;
            (g, vec![vm])
        }
        _ => {
            return Err(EngineError::BadRequest(
                "give exactly one of 'group' and 'vm'".into(),
            ));
        }
    };
    let progress = Arc::new(JobProgress::default());
    let mut points = Vec::new();
    for vm in &members {
        // A point of this VM taken since the step started is this step's
        // (the controller stopped before recording it).
        let taken = ctl
            .repo
            .points(Some(vm))
            .await?
            .into_iter()
            .rev()
            .find(|p| p.time >= ctx.started_at);
        if let Some(p) = taken {
            tracing::info!(vm, point = %p.id, "point.create: point already taken by this step");
            points.push(
                json!({ "vm": vm, "point": p.id, "datastore": p.copies.first(), "reused": true }),
            );
            continue;
        }
        points.push(crate::protect::protect_vm(ctl, &group, vm, progress.clone()).await?);
    }
    let out = json!({ "group": group, "points": points });
    ctx.record(out.clone()).await?;
    Ok(out)
}

/// The newest point of `vm` with a readable manifest, in datastores at
/// `site` (all when None).
pub async fn point_latest(
    ctl: &Arc<Controller>,
    vm: &str,
    site: Option<&str>,
) -> Result<Value, EngineError> {
    let (m, ds) = crate::restore::newest_readable(ctl, vm, site).await?;
    let age = (Utc::now() - m.time).num_milliseconds() as f64 / 1000.0;
    Ok(json!({
        "point": m.id.to_string(),
        "time": m.time,
        "age_seconds": age,
        "datastore": ds,
    }))
}

async fn point_restore(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let vm = ctx.str("vm")?;
    let site = ctx.str("site")?;
    let start = ctx.opt_bool("start")?.unwrap_or(false);
    // Recorded result: the restore finished before a crash.
    if ctx.recorded["result"].is_object() {
        return Ok(ctx.recorded["result"].clone());
    }
    // Recorded intent: which point; if the VM is already active at the
    // site (and running, when asked to start), the restore was done.
    if let Some(point) = ctx.recorded["point"].as_str() {
        let rec = ctl.repo.vm(&vm).await?;
        let running = matches!(
            ctl.agent(&rec.active_host)?.status(&vm).await?.state,
            VmState::Running
        );
        if rec.active_site == site && (running || !start) {
            let p = ctl.repo.point(point).await?;
            tracing::info!(
                vm,
                point,
                "point.restore: already restored and started by this step"
            );
            return Ok(json!({
                "vm": vm,
                "point": point,
                "site": site,
                "host": rec.active_host,
                "seconds": (Utc::now() - ctx.started_at).num_milliseconds() as f64 / 1000.0,
                "bytes": Value::Null,
                "data_age_seconds": (ctx.started_at - p.time).num_milliseconds() as f64 / 1000.0,
                "point_time_epoch": super::epoch(p.time),
                "at_epoch": super::epoch(Utc::now()),
                "resumed": true,
            }));
        }
    }
    let point = match ctx.opt_str("point")? {
        Some(p) => p,
        None => point_latest(ctl, &vm, None).await?["point"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let p = ctl.repo.point(&point).await?;
    if p.vm != vm {
        return Err(EngineError::BadRequest(format!(
            "point {point} is of vm {}, not {vm}",
            p.vm
        )));
    }
    ctx.record(json!({ "point": point })).await?;
    let req = RestoreRequest {
        point: point.clone(),
        site: site.clone(),
        host: None,
        from: None,
        start,
    };
    crate::restore::check(ctl, &req).await?;
    let progress = Arc::new(JobProgress::default());
    let r = crate::restore::run(ctl.clone(), req, progress).await?;
    let now = Utc::now();
    let out = json!({
        "vm": vm,
        "point": point,
        "site": site,
        "host": r["host"],
        "datastore": r["datastore"],
        "seconds": r["seconds"],
        "bytes": r["bytes"],
        "started": r["started"],
        "data_age_seconds": (now - p.time).num_milliseconds() as f64 / 1000.0,
        "point_time_epoch": super::epoch(p.time),
        "at_epoch": super::epoch(now),
    });
    ctx.record(json!({ "point": point, "result": out })).await?;
    Ok(out)
}

async fn probe_wait(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let ctl = &ctx.ctl;
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let interval = ctx
        .opt_duration("interval")?
        .unwrap_or(Duration::from_millis(500));
    let began = Instant::now();
    let since = Utc::now();
    let deadline = began + timeout;
    if let Some(name) = ctx.opt_str("probe")? {
        if !ctl.cfg.probes.contains_key(&name) {
            return Err(EngineError::not_found("probe", name));
        }
        loop {
            let fresh = ctl
                .watch
                .probe_states()
                .into_iter()
                .find(|r| r.probe == name && r.ok && r.at >= since);
            if let Some(r) = fresh {
                return Ok(json!({
                    "probe": name,
                    "seconds": began.elapsed().as_secs_f64(),
                    "latency_ms": r.latency_ms,
                    "at": r.at,
                    "at_epoch": super::epoch(r.at),
                }));
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Conflict(format!(
                    "probe {name} did not pass within {}",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }
    let check = match ctx.opt_str("service")? {
        Some(service) => Some(service_check(ctl, &service, &ctx.str("site")?)?),
        None => None,
    };
    let kind = match &check {
        Some(c) => c.kind().to_string(),
        None => ctx.str("kind")?,
    };
    let target = ctx.opt_str("target")?;
    let need_target = || {
        target
            .clone()
            .ok_or_else(|| EngineError::BadRequest(format!("a {kind} check needs 'target'")))
    };
    let check = match (check, kind.as_str()) {
        (Some(c), _) => c,
        (None, "tcp") => ProbeCheck::Tcp {
            target: need_target()?,
        },
        (None, "udp") => ProbeCheck::Udp {
            target: need_target()?,
            send: "ping".into(),
            expect: None,
        },
        (None, "sip") => ProbeCheck::Sip {
            target: need_target()?,
        },
        (None, "http") => ProbeCheck::Http {
            url: ctx.str("url")?,
            status: None,
            body_contains: None,
        },
        (None, other) => {
            return Err(EngineError::BadRequest(format!(
                "kind '{other}' is not tcp, http, udp or sip"
            )));
        }
    };
    let spec = ProbeSpec {
        name: format!("runbook:{}", ctx.key()),
        check,
        interval,
        timeout: interval.max(Duration::from_millis(500)),
        attempts: 1,
        labels: Default::default(),
    };
    loop {
        let o = standby_monitor::probe::run(&spec).await;
        if o.ok {
            let now = Utc::now();
            return Ok(json!({
                "seconds": began.elapsed().as_secs_f64(),
                "latency_ms": o.latency.as_millis() as u64,
                "at": now,
                "at_epoch": super::epoch(now),
            }));
        }
        if Instant::now() >= deadline {
            return Err(EngineError::Conflict(format!(
                "{kind} check did not pass within {}: {}",
                humantime::format_duration(timeout),
                o.detail
            )));
        }
        tokio::time::sleep(interval).await;
    }
}

async fn incident_open(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let severity = match ctx.opt_str("severity")? {
        Some(s) => s.parse::<Severity>().map_err(EngineError::BadRequest)?,
        None => Severity::Error,
    };
    let key = ctx
        .opt_str("dedup")?
        .unwrap_or_else(|| format!("runbook:{}", ctx.job));
    let mut labels: standby_types::watch::Labels =
        [("runbook".to_string(), ctx.runbook.clone())].into();
    match &ctx.input["labels"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let v = match v {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    other => {
                        return Err(EngineError::BadRequest(format!(
                            "input 'labels.{k}': {other} is not a string"
                        )));
                    }
                };
                if !v.is_empty() && k != "runbook" {
                    labels.insert(k.clone(), v);
                }
            }
        }
        other => {
            return Err(EngineError::BadRequest(format!(
                "input 'labels': {other} is not a map of strings"
            )));
        }
    }
    let i = crate::watch::open_incident(
        &ctx.ctl,
        crate::watch::IncidentOpen {
            title: Some(ctx.str("title")?),
            severity: Some(severity),
            description: ctx.opt_str("description")?,
            key: Some(key),
            labels,
            author: Some(ctx.author()),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({ "incident": i.id, "title": i.title }))
}

async fn incident_note(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.incident_or_job()?;
    let text = ctx.str("text")?;
    let author = format!("{}#{}", ctx.author(), ctx.key());
    let already = ctx
        .ctl
        .watch
        .repo()
        .timeline(id)
        .await?
        .iter()
        .any(|e| e.author == author && e.text == text);
    if !already {
        crate::watch::update_incident(
            &ctx.ctl,
            id,
            crate::watch::IncidentUpdate {
                note: Some(text),
                author: Some(author),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(json!({ "incident": id }))
}

async fn incident_resolve(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.incident_or_job()?;
    let i = ctx.ctl.watch.repo().incident(id).await?;
    if matches!(i.state, IncidentState::Resolved | IncidentState::Closed) {
        return Ok(json!({ "incident": id, "state": i.state.as_str() }));
    }
    let i = crate::watch::update_incident(
        &ctx.ctl,
        id,
        crate::watch::IncidentUpdate {
            state: Some(IncidentState::Resolved),
            note: ctx.opt_str("note")?,
            author: Some(ctx.author()),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({ "incident": id, "state": i.state.as_str() }))
}

async fn notify(ctx: &ActionCtx) -> Result<Value, EngineError> {
    if !ctx.recorded.is_null() {
        return Ok(ctx.recorded.clone());
    }
    let ctl = &ctx.ctl;
    let receivers: Vec<String> = match ctx.opt_str("receiver")? {
        Some(r) if ctl.cfg.receivers.contains_key(&r) => vec![r],
        Some(r) => return Err(EngineError::not_found("receiver", r)),
        None => ctl.cfg.receivers.keys().cloned().collect(),
    };
    let incident = match ctx.incident {
        Some(id) => ctl.watch.repo().incident(id).await.ok(),
        None => None,
    };
    let subject = ctx.str("subject")?;
    let text = ctx.str("text")?;
    let n = standby_types::watch::Notification {
        delivery: 0,
        status: "runbook".into(),
        group_labels: [
            ("runbook".to_string(), ctx.runbook.clone()),
            ("subject".to_string(), subject),
            ("text".to_string(), text),
        ]
        .into(),
        alerts: Vec::new(),
        incident,
    };
    let payload = serde_json::to_value(&n)
        .map_err(|e| EngineError::Internal(format!("unable to encode the message: {e}")))?;
    let mut ids = Vec::new();
    for r in &receivers {
        let d = ctl
            .watch
            .repo()
            .insert_delivery(r, "runbook", &[], &payload, Utc::now())
            .await?;
        ids.push(d.id);
    }
    let out = json!({ "deliveries": ids });
    ctx.record(out.clone()).await?;
    Ok(out)
}

async fn http(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let method = ctx.opt_str("method")?.unwrap_or_else(|| "GET".into());
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| EngineError::BadRequest(format!("bad method '{method}'")))?;
    let url = ctx.str("url")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| EngineError::Internal(format!("http client: {e}")))?;
    let mut req = client
        .request(method, &url)
        .header("Idempotency-Key", ctx.key());
    if let Value::Object(h) = &ctx.input["headers"] {
        for (k, v) in h {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            req = req.header(k.as_str(), v);
        }
    }
    match &ctx.input["body"] {
        Value::Null => {}
        Value::String(s) => req = req.body(s.clone()),
        other => req = req.json(other),
    }
    let resp = req
        .send()
        .await
        .map_err(|e| EngineError::Conflict(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| EngineError::Conflict(format!("{url}: reading the body: {e}")))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let ok = match ctx.opt_i64("expect_status")? {
        Some(want) => i64::from(status) == want,
        None => (200..300).contains(&status),
    };
    if !ok {
        return Err(EngineError::Conflict(format!(
            "{url} answered {status}: {body}"
        )));
    }
    Ok(json!({ "status": status, "body": body }))
}

async fn shell(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let argv: Vec<String> = match &ctx.input["command"] {
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        other => {
            return Err(EngineError::BadRequest(format!(
                "input 'command': {other} is not a non-empty argv list"
            )));
        }
    };
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Value::Object(m) = &ctx.input["env"] {
        for (k, v) in m {
            env.insert(
                k.clone(),
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            );
        }
    }
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(&env)
        .env("STANDBY_IDEMPOTENCY_KEY", ctx.key())
        .env("STANDBY_JOB", ctx.job.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            EngineError::Conflict(format!(
                "{} timed out after {}",
                argv[0],
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| EngineError::BadRequest(format!("unable to run {}: {e}", argv[0])))?;
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(EngineError::Conflict(format!(
            "{} exited with {}: {}",
            argv[0],
            out.status,
            stderr.trim()
        )));
    }
    Ok(json!({ "code": code, "stdout": stdout, "stderr": stderr }))
}

async fn drill_start(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let progress = std::sync::Arc::new(crate::jobs::JobProgress::default());
    let st = crate::drill::start(
        &ctx.ctl,
        &ctx.str("id")?,
        &ctx.str("vm")?,
        &ctx.str("site")?,
        ctx.opt_str("point")?.as_deref(),
        progress,
    )
    .await?;
    serde_json::to_value(&st).map_err(|e| EngineError::Internal(e.to_string()))
}

/// Probe a drill's copy inside its namespace: `kind` and `port` given, or
/// taken from the VM's first front-door service (its probe kind and its
/// backend's port at the drill's site).
async fn drill_probe(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let id = ctx.str("id")?;
    let timeout = ctx
        .opt_duration("timeout")?
        .unwrap_or(Duration::from_secs(60));
    let (vm, site) = match (ctx.opt_str("vm")?, ctx.opt_str("site")?) {
        (Some(vm), Some(site)) => (vm, site),
        _ => {
            let rec = crate::drill::state(&ctx.ctl, &id)?
                .ok_or_else(|| EngineError::not_found("drill", &id))?;
            (rec.vm, rec.site)
        }
    };
    let check =
        match (ctx.opt_str("kind")?, ctx.opt_i64("port")?) {
            (Some(kind), Some(port)) => {
                let target = format!("127.0.0.1:{port}");
                match kind.as_str() {
                    "sip" => ProbeCheck::Sip { target },
                    "tcp" => ProbeCheck::Tcp { target },
                    "http" => ProbeCheck::Http {
                        url: format!("http://{target}/"),
                        status: None,
                        body_contains: None,
                    },
                    other => {
                        return Err(EngineError::BadRequest(format!(
                            "kind '{other}' is not sip, tcp or http"
                        )));
                    }
                }
            }
            _ => {
                let service = services_of(&ctx.ctl, &vm).into_iter().next().ok_or_else(|| {
                EngineError::BadRequest(format!(
                    "vm {vm} has no front-door service: give the drill probe 'kind' and 'port'"
                ))
            })?;
                // The same check, against the copy's loopback.
                match service_check(&ctx.ctl, &service, &site)? {
                    ProbeCheck::Sip { target } => ProbeCheck::Sip {
                        target: loopback(&target)?,
                    },
                    ProbeCheck::Tcp { target } => ProbeCheck::Tcp {
                        target: loopback(&target)?,
                    },
                    other => other,
                }
            }
        };
    let mut out = crate::drill::probe(&ctx.ctl, &id, check, timeout).await?;
    out["vm"] = json!(vm);
    Ok(out)
}

/// `ADDR:PORT` → `127.0.0.1:PORT`.
fn loopback(target: &str) -> Result<String, EngineError> {
    let port = target
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or_else(|| EngineError::BadRequest(format!("'{target}' has no port")))?;
    Ok(format!("127.0.0.1:{port}"))
}

/// The drill's report from its steps' outputs: per VM the point, its data
/// age, the restore time, the RTO (restore + boot + first passing probe)
/// and whether teardown was verified. Fails (after recording the report as
/// this step's output) when a copy did not boot or answer, or teardown was
/// not verified.
async fn drill_report(ctx: &ActionCtx) -> Result<Value, EngineError> {
    let list = |name: &str| -> Vec<Value> {
        match &ctx.input[name] {
            Value::Array(a) => a.clone(),
            Value::Null => Vec::new(),
            v => vec![v.clone()],
        }
    };
    let (boots, probes, teardowns) = (list("boot"), list("probe"), list("teardown"));
    let mut vms = Vec::new();
    let mut failed = Vec::new();
    for b in boots.iter().filter(|b| !b.is_null()) {
        let vm = b["vm"].as_str().unwrap_or_default().to_string();
        let probe = probes.iter().find(|p| p["vm"] == vm.as_str());
        let teardown = teardowns.iter().find(|t| t["vm"] == vm.as_str());
        let answered = probe.is_some_and(|p| p["rto_seconds"].is_number());
        let verified = teardown.is_some_and(|t| t["verified"] == true);
        if !answered {
            failed.push(format!("{vm}: the copy did not answer its probe"));
        }
        if !verified {
            failed.push(format!("{vm}: teardown not verified"));
        }
        vms.push(json!({
            "vm": vm,
            "site": b["site"],
            "point": b["point"],
            "point_time": b["point_time"],
            "data_age_seconds": b["data_age_seconds"],
            "restore_seconds": b["restore_seconds"],
            "rto_seconds": probe.map(|p| p["rto_seconds"].clone()).unwrap_or(Value::Null),
            "verified": verified,
        }));
    }
    let site = ctx.opt_str("site")?.unwrap_or_default();
    let booted = vms.len();
    let wanted = teardowns.len().max(booted);
    if booted < wanted {
        failed.push(format!(
            "{} of {wanted} copies did not boot",
            wanted - booted
        ));
    }
    let summary = if vms.is_empty() {
        format!("drill of site {site}: nothing was drilled")
    } else {
        let parts: Vec<String> = vms
            .iter()
            .map(|v| {
                format!(
                    "{} from point {} (data age {:.1} s): RTO {}, teardown {}",
                    v["vm"].as_str().unwrap_or_default(),
                    v["point"].as_str().unwrap_or_default(),
                    v["data_age_seconds"].as_f64().unwrap_or_default(),
                    v["rto_seconds"]
                        .as_f64()
                        .map(|r| format!("{r:.1} s"))
                        .unwrap_or_else(|| "not reached".into()),
                    if v["verified"] == true {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                )
            })
            .collect();
        format!("drill of site {site}: {}", parts.join("; "))
    };
    let report = json!({
        "site": site,
        "vms": vms,
        "ok": failed.is_empty(),
        "failures": failed,
        "summary": summary,
    });
    // Drill reports are events too, so they are found with the rest.
    ctx.ctl.watch.emit(standby_types::watch::Event {
        id: 0,
        at: Utc::now(),
        source: format!("runbook:{}", ctx.runbook),
        kind: "drill.report".into(),
        severity: if failed.is_empty() {
            Severity::Info
        } else {
            Severity::Error
        },
        labels: [
            ("site".to_string(), site.clone()),
            ("job".to_string(), ctx.job.to_string()),
            ("ok".to_string(), failed.is_empty().to_string()),
        ]
        .into_iter()
        .collect(),
        vantage: "controller".into(),
        message: summary.clone(),
    });
    if !failed.is_empty() {
        return Err(EngineError::Conflict(format!(
            "drill failed: {} ({summary})",
            failed.join("; ")
        )));
    }
    Ok(report)
}
