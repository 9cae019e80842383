//! `point.create`, `point.latest` and `point.restore`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use standby_hv::VmState;
use standby_runbook::catalog::{PointCreate, PointLatest, PointRestore};
use standby_runbook::inputs::Fallback;
use standby_runbook::scalar::Text;
use standby_types::api::RestoreRequest;
use standby_types::outcome::{
    PointFound, PointRestored, PointSkipped, PointTaken, PointsCreated, TierWait,
};

use super::Perform;
use super::context::ActionCtx;
use crate::controller::Controller;
use crate::error::{EngineError, error_chain};
use crate::jobs::JobProgress;

impl Perform for PointCreate {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointsCreated, EngineError> {
        point_create(self, ctx).await
    }
}

async fn point_create(input: PointCreate, ctx: &ActionCtx) -> Result<PointsCreated, EngineError> {
    if let Some(done) = ctx.recorded::<PointsCreated>() {
        return Ok(done);
    }
    let ctl = &ctx.ctl;
    let (group, members) = match (input.group.map(String::from), input.vm.map(String::from)) {
        (Some(g), None) => {
            let live = ctl.cfg();
            let grp = live
                .groups
                .get(&g)
                .ok_or_else(|| EngineError::not_found("group", &g))?;
            (g, grp.members.clone())
        }
        (None, Some(vm)) => {
            let g = ctl
                .cfg()
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
    let progress = JobProgress::live(ctl, ctx.job);
    let request = ctx.key();
    // Whether an earlier run of this step may have taken points already:
    // it recorded its request before taking any.
    let resumed = ctx.recorded::<Requested>().is_some() || ctx.attempt > 1;
    if !resumed {
        ctx.record(Requested {
            request: request.clone(),
        })
        .await?;
    }
    let mut points = Vec::new();
    for vm in &members {
        // A point this very request took before a crash or a failed copy
        // is this step's; found by its request label, never by its time
        // (a host's clock may run ahead).
        let taken = match resumed {
            true => crate::protect::requested_point(ctl, &group, vm, &request).await?,
            false => None,
        };
        if let Some(p) = taken {
            tracing::info!(vm, point = %p.id, "point.create: point already taken by this step");
            // The run may have stopped before or during the copies: the
            // datastores of the group that lack the point get it now.
            let source = p.copies.first().cloned().unwrap_or_default();
            let id: standby_store::PointId =
                p.id.parse()
                    .map_err(|e: standby_store::StoreError| EngineError::Internal(e.to_string()))?;
            let after = crate::protect::copy_and_prune(
                ctl,
                &group,
                vm,
                &id,
                &source,
                &p.copies,
                progress.clone(),
            )
            .await;
            if !after.errors.is_empty() {
                return Err(EngineError::Internal(format!(
                    "point {} taken in {source}, but: {}",
                    p.id,
                    after.errors.join("; ")
                )));
            }
            points.push(PointTaken {
                vm: vm.clone(),
                datastore: source,
                point: p.id,
                seconds: 0.0,
                size: p.size,
                bytes_read: p.bytes_read,
                bytes_new: p.bytes_new,
                chunks: 0,
                chunks_new: 0,
                synced: after.synced,
                pruned: after.pruned,
                reused: true,
                replica: after.replica,
                snapshot: None,
            });
            continue;
        }
        points.push(
            crate::protect::protect_vm(ctl, &group, vm, Some(&request), progress.clone()).await?,
        );
    }
    let out = PointsCreated { group, points };
    ctx.record(&out).await?;
    Ok(out)
}

/// What `point.create` records before it takes any point: the request
/// its points carry.
#[derive(Debug, Serialize, Deserialize)]
struct Requested {
    request: String,
}

impl Perform for PointLatest {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointFound, EngineError> {
        point_latest(
            &ctx.ctl,
            self.vm.as_str(),
            self.site.as_ref().map(Text::as_str),
        )
        .await
    }
}

/// The newest point of `vm` with a readable manifest, in datastores at
/// `site` (all when None).
pub async fn point_latest(
    ctl: &Arc<Controller>,
    vm: &str,
    site: Option<&str>,
) -> Result<PointFound, EngineError> {
    let (m, ds) = crate::restore::newest_readable(ctl, vm, site).await?;
    let age = (Utc::now() - m.time).num_milliseconds() as f64 / 1000.0;
    Ok(PointFound {
        point: m.id.to_string(),
        time: m.time,
        age_seconds: age,
        datastore: ds,
    })
}

/// What `point.restore` records while it runs: the point it restores (and
/// the newer ones it skipped), then its result.
#[derive(Debug, Serialize, Deserialize)]
struct RestoreRecord {
    point: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<PointSkipped>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<PointRestored>,
    /// The point is restored and the VM active at the site; its start
    /// waits for the tier before it (`after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restored: Option<PointRestored>,
}

impl Perform for PointRestore {
    async fn perform(self, ctx: &ActionCtx) -> Result<PointRestored, EngineError> {
        point_restore(self, ctx).await
    }
}

async fn point_restore(input: PointRestore, ctx: &ActionCtx) -> Result<PointRestored, EngineError> {
    let ctl = &ctx.ctl;
    let vm = String::from(input.vm);
    let site = String::from(input.site);
    let start = input.start.is_some_and(|s| s.0);
    let fallback = input.fallback.unwrap_or_default();
    let max_age = input.max_data_age.map(|s| s.0);
    let after = input.after;
    let recorded = ctx.recorded::<RestoreRecord>();
    // Recorded result: the restore finished before a crash.
    if let Some(RestoreRecord {
        result: Some(done), ..
    }) = recorded
    {
        return Ok(done);
    }
    // Restored before a crash, its start waiting for its tier: on with
    // the wait.
    if let (
        Some(RestoreRecord {
            restored: Some(done),
            point,
            skipped,
            ..
        }),
        Some(after),
    ) = (&recorded, &after)
    {
        return start_after(ctx, after, done.clone(), point.clone(), skipped.clone()).await;
    }
    // Recorded intent: which point; if the VM is already active at the
    // site (and running, when asked to start), the restore was done.
    if let Some(RestoreRecord { point, skipped, .. }) = &recorded {
        let point = point.as_str();
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
            return Ok(PointRestored {
                vm,
                point: point.to_string(),
                site,
                host: rec.active_host,
                datastore: None,
                seconds: (Utc::now() - ctx.started_at).num_milliseconds() as f64 / 1000.0,
                bytes: None,
                started: None,
                data_age_seconds: (ctx.started_at - p.time).num_milliseconds() as f64 / 1000.0,
                point_time_epoch: crate::runbooks::epoch(p.time),
                at_epoch: crate::runbooks::epoch(Utc::now()),
                resumed: true,
                skipped: skipped.clone(),
                mode: None,
                written: None,
                tier: None,
                waited_seconds: 0.0,
                waited_for: Vec::new(),
            });
        }
    }
    // The first point to try: the recorded one (a resumed step goes on
    // where it was), the one asked for, else the newest.
    let (first, mut skipped) = match recorded {
        Some(r) => (r.point, r.skipped),
        None => match input.point {
            Some(p) => (p.into(), Vec::new()),
            None if fallback == Fallback::Older => match newest_in_catalog(ctl, &vm).await? {
                Some(p) => (p, Vec::new()),
                None => {
                    return Err(EngineError::Conflict(format!("vm {vm} has no point")));
                }
            },
            None => (point_latest(ctl, &vm, None).await?.point, Vec::new()),
        },
    };
    let p = ctl.repo.point(&first).await?;
    if p.vm != vm {
        return Err(EngineError::BadRequest(format!(
            "point {first} is of vm {}, not {vm}",
            p.vm
        )));
    }
    // Then, with `fallback: older`, every older point of the VM, newest
    // first.
    let mut candidates = vec![p.clone()];
    if fallback == Fallback::Older {
        let mut older: Vec<_> = ctl
            .repo
            .points(Some(&vm))
            .await?
            .into_iter()
            .filter(|o| o.time < p.time && o.id != p.id)
            .collect();
        older.sort_by_key(|p| std::cmp::Reverse(p.time));
        candidates.extend(older);
    }
    for p in candidates {
        let point = p.id.clone();
        let now = Utc::now();
        if let Some(max) = max_age {
            let age = (now - p.time).to_std().unwrap_or_default();
            if age > max {
                return Err(EngineError::Conflict(format!(
                    "vm {vm}: point {point} is {} old, older than max_data_age {}: not restored{}",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max),
                    skipped_text(&skipped)
                )));
            }
        }
        ctx.record(RestoreRecord {
            point: point.clone(),
            skipped: skipped.clone(),
            result: None,
            restored: None,
        })
        .await?;
        // In a recovery plan's tier, it is restored at once (in parallel
        // with the tier before) but started after it.
        let req = RestoreRequest {
            point: point.clone(),
            site: site.clone(),
            host: None,
            from: None,
            start: start && after.is_none(),
        };
        crate::restore::check(ctl, &req).await?;
        let progress = Arc::new(JobProgress::default());
        let r = match crate::restore::run(ctl.clone(), req, progress).await {
            Ok(r) => r,
            Err(EngineError::PointUnreadable { point, tried }) if fallback == Fallback::Older => {
                let skip = PointSkipped {
                    point,
                    time: p.time,
                    reasons: tried,
                };
                tracing::warn!(vm, point = %skip.point, "point.restore: no copy restores this point, trying the next older one: {}", skip.reasons.join("; "));
                note(
                    ctx,
                    format!(
                        "point.restore {vm}: skipped point {} (taken {}): {}; trying the next older point",
                        skip.point,
                        skip.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        skip.reasons.join("; ")
                    ),
                )
                .await;
                skipped.push(skip);
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Utc::now();
        let out = PointRestored {
            vm: vm.clone(),
            point: point.clone(),
            site: site.clone(),
            host: r.host,
            datastore: Some(r.datastore.clone()),
            seconds: r.seconds,
            bytes: Some(r.bytes),
            started: Some(r.started),
            data_age_seconds: (now - p.time).num_milliseconds() as f64 / 1000.0,
            point_time_epoch: crate::runbooks::epoch(p.time),
            at_epoch: crate::runbooks::epoch(now),
            resumed: false,
            skipped: skipped.clone(),
            mode: Some(r.mode.clone()),
            written: Some(r.written),
            tier: None,
            waited_seconds: 0.0,
            waited_for: Vec::new(),
        };
        if !skipped.is_empty() {
            note(
                ctx,
                format!(
                    "point.restore {vm}: restored the older point {point} from {} (data age {:.1} s) after skipping {} newer point(s)",
                    r.datastore,
                    out.data_age_seconds,
                    skipped.len()
                ),
            )
            .await;
        }
        if let (true, Some(after)) = (start, &after) {
            ctx.record(RestoreRecord {
                point: point.clone(),
                skipped: skipped.clone(),
                result: None,
                restored: Some(out.clone()),
            })
            .await?;
            return start_after(ctx, after, out, point, skipped).await;
        }
        ctx.record(RestoreRecord {
            point,
            skipped,
            result: Some(out.clone()),
            restored: None,
        })
        .await?;
        return Ok(out);
    }
    Err(EngineError::Conflict(format!(
        "vm {vm}: no point restores from any copy at reach{}",
        skipped_text(&skipped)
    )))
}

/// Start a restored VM once the tier before it in its recovery plan is
/// up; the result says how long it waited and for what.
async fn start_after(
    ctx: &ActionCtx,
    after: &TierWait,
    mut out: PointRestored,
    point: String,
    skipped: Vec<PointSkipped>,
) -> Result<PointRestored, EngineError> {
    let vm = out.vm.clone();
    let waited = super::tiers::wait_vms(ctx, after).await.map_err(|e| {
        EngineError::Conflict(format!(
            "vm {vm} is restored at {} but not started: {}",
            out.site,
            error_chain(&e)
        ))
    })?;
    note(
        ctx,
        format!(
            "point.restore {vm}: plan {} tier {} starts after {:.1} s: {}",
            after.plan,
            after.tier,
            waited.seconds,
            waited.how.join(", ")
        ),
    )
    .await;
    crate::vms::start(&ctx.ctl, &vm).await?;
    let now = Utc::now();
    out.started = Some(true);
    out.at_epoch = crate::runbooks::epoch(now);
    out.data_age_seconds = now.timestamp_millis() as f64 / 1000.0 - out.point_time_epoch;
    out.tier = Some(after.tier);
    out.waited_seconds = waited.seconds;
    out.waited_for = waited.how;
    ctx.record(RestoreRecord {
        point,
        skipped,
        result: Some(out.clone()),
        restored: None,
    })
    .await?;
    Ok(out)
}

/// The newest point of `vm` in the catalog.
async fn newest_in_catalog(ctl: &Controller, vm: &str) -> Result<Option<String>, EngineError> {
    Ok(ctl
        .repo
        .points(Some(vm))
        .await?
        .into_iter()
        .max_by_key(|p| p.time)
        .map(|p| p.id))
}

fn skipped_text(skipped: &[PointSkipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let each: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!("; skipped: {}", each.join(", "))
}

/// A line on the job's incident timeline (best effort).
async fn note(ctx: &ActionCtx, text: String) {
    let Some(incident) = ctx.incident else {
        return;
    };
    let req = crate::watch::IncidentUpdate {
        note: Some(text),
        kind: Some("step".into()),
        author: Some(ctx.author()),
        ..Default::default()
    };
    if let Err(e) = crate::watch::update_incident(&ctx.ctl, incident, req).await {
        tracing::warn!(
            job = ctx.job,
            incident,
            "unable to add a note to the incident: {e}"
        );
    }
}
