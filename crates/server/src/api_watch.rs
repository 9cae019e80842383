//! API routes of the watch side: events (list and stream), probes, rules,
//! alerts, silences, incidents, deliveries, agents and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use standby_db::{AlertQuery, EventQuery};
use standby_types::watch::{
    Alert, AlertState, Delivery, Event, Incident, IncidentDetail, IncidentState, Labels,
    ProbeResult, Severity, Silence,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::common::{ApiQuery, ListParams, ListResult, Page, SCAN_CAP, operators_only};
use crate::auth::Principal;
use crate::error::ServerError;
use crate::state::AppState;
use standby_engine::Controller;
use standby_engine::watch::{self, AckRequest, IncidentOpen, IncidentUpdate, RulesStatus};
use standby_types::api::ApiError;

/// How many of the newest events a list looks at.
const EVENT_SCAN: u32 = 10_000;

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(events_stream))
        .routes(routes!(probes))
        .routes(routes!(rules))
        .routes(routes!(rules_reload))
        .routes(routes!(alerts))
        .routes(routes!(alert))
        .routes(routes!(alert_ack))
        .routes(routes!(silences, silence_add))
        .routes(routes!(silence_expire))
        .routes(routes!(incidents, incident_open))
        .routes(routes!(incident, incident_update))
        .routes(routes!(incident_note))
        .routes(routes!(incident_resolve))
        .routes(routes!(incident_close))
        .routes(routes!(deliveries))
        .routes(routes!(agents))
        .routes(routes!(agent_heartbeat))
        .routes(routes!(agent_results))
        .routes(routes!(metrics))
}

/// `label=k=v` may repeat; parsed from the raw query.
fn parse_labels(raw: Option<&str>) -> Result<Labels, ServerError> {
    let mut out = Labels::new();
    for (k, v) in url_pairs(raw.unwrap_or("")) {
        if k == "label" {
            let (lk, lv) = v
                .split_once('=')
                .ok_or_else(|| ServerError::BadRequest(format!("label '{v}' is not k=v")))?;
            out.insert(lk.to_string(), lv.to_string());
        }
    }
    Ok(out)
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// Only events with a larger id, oldest first (for tailing).
    after: Option<i64>,
    /// Only events since: a duration ago (`5m`) or an RFC 3339 time.
    since: Option<String>,
    /// Only events of this kind.
    kind: Option<String>,
    /// Only events from this source.
    source: Option<String>,
    /// Only events at least this severe: `info`, `warning`, `error`, `critical`.
    severity: Option<String>,
    /// At most this many (default 100, at most 1000): the newest ones
    /// (unless `after` is given), shown oldest first.
    limit: Option<u32>,
    /// Skip this many newest (with `after`: oldest) first.
    offset: Option<u32>,
}

fn event_query(p: &EventParams, raw: Option<&str>) -> Result<EventQuery, ServerError> {
    let since = match &p.since {
        None => None,
        Some(s) => Some(parse_since(s)?),
    };
    let min_severity = match &p.severity {
        None => None,
        Some(s) => Some(s.parse::<Severity>().map_err(ServerError::BadRequest)?),
    };
    Ok(EventQuery {
        after_id: p.after,
        since,
        kind: p.kind.clone(),
        source: p.source.clone(),
        min_severity,
        labels: parse_labels(raw)?,
        limit: EVENT_SCAN,
    })
}

/// `5m` (ago) or an RFC 3339 time.
pub(crate) fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, ServerError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        ServerError::BadRequest(format!(
            "since '{s}' is neither a duration nor an RFC 3339 time: {e}"
        ))
    })?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
}

/// Events, oldest first: probe results, agent reports, alert, incident
/// and runbook changes.
#[utoipa::path(get, path = "/api/v1/events", tag = "watch",
    params(EventParams,
        ("label" = Option<Vec<String>>, Query, description = "`k=v`: only events with this label (may repeat)")),
    responses((status = 200, body = Vec<Event>,
        headers(("x-total-count" = u64, description = "Number of matches among the newest 10 000"))),
        (status = 400, body = ApiError)))]
async fn events(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<EventParams>,
    raw: axum::extract::RawQuery,
) -> ListResult<Event> {
    let page = Page::new(p.limit, p.offset)?;
    let q = event_query(&p, raw.0.as_deref())?;
    let all: Vec<Event> = ctl
        .watch
        .repo()
        .events(&q)
        .await?
        .into_iter()
        .filter(|e| who.sees(crate::tenancy::labels(&ctl.cfg(), &e.labels)))
        .collect();
    Ok(if q.after_id.is_some() {
        page.of(all)
    } else {
        page.of_newest(all)
    })
}

fn matches(q: &EventQuery, e: &Event) -> bool {
    q.kind.as_ref().is_none_or(|k| &e.kind == k)
        && q.source.as_ref().is_none_or(|s| &e.source == s)
        && q.min_severity.is_none_or(|s| e.severity >= s)
        && q.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
}

/// Server-sent events: stored events after `after` first (so a client that
/// reconnects misses nothing), then new ones as they are stored.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "watch",
    params(EventParams,
        ("label" = Option<Vec<String>>, Query, description = "`k=v`: only events with this label (may repeat)")),
    responses((status = 200, description = "Server-sent events, one per stored event (its kind as the event name, its id as the SSE id); `lagged` when the client fell behind",
        content_type = "text/event-stream", body = String),
        (status = 400, body = ApiError)))]
async fn events_stream(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<EventParams>,
    raw: axum::extract::RawQuery,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>, ServerError> {
    let page = Page::new(p.limit, p.offset)?;
    let q = event_query(&p, raw.0.as_deref())?;
    let cfg = ctl.cfg().clone();
    let visible = move |e: &Event| who.sees(crate::tenancy::labels(&cfg, &e.labels));
    // Subscribe before reading the backlog so nothing falls between.
    let rx = ctl.watch.subscribe();
    let backlog = if q.after_id.is_some() || q.since.is_some() {
        let all: Vec<Event> = ctl
            .watch
            .repo()
            .events(&q)
            .await?
            .into_iter()
            .filter(|e| visible(e))
            .collect();
        if q.after_id.is_some() {
            page.of(all).items
        } else {
            page.of_newest(all).items
        }
    } else {
        Vec::new()
    };
    let mut last = backlog.last().map(|e| e.id).or(q.after_id).unwrap_or(0);
    let to_sse = |e: &Event| {
        SseEvent::default()
            .id(e.id.to_string())
            .event(e.kind.clone())
            .json_data(e)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
    };
    let backlog: Vec<Result<SseEvent, Infallible>> =
        backlog.iter().map(|e| Ok(to_sse(e))).collect();
    let live = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(e) if e.id > last && matches(&q, &e) && visible(&e) => {
            last = e.id;
            Some(Ok(to_sse(&e)))
        }
        Ok(_) => None,
        // The client fell behind: say so; it can resume with `after`.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            Some(Ok(SseEvent::default().event("lagged").data(n.to_string())))
        }
    });
    Ok(Sse::new(tokio_stream::iter(backlog).chain(live)).keep_alive(KeepAlive::default()))
}

/// The latest result of every probe at every vantage point (operators'
/// only).
#[utoipa::path(get, path = "/api/v1/probes", tag = "watch", params(ListParams),
    responses((status = 200, body = Vec<ProbeResult>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn probes(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ListResult<ProbeResult> {
    let page = Page::new(q.limit, q.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    Ok(page.of(ctl.watch.probe_states()))
}

/// The alert rules in force and the last reload's outcome.
#[utoipa::path(get, path = "/api/v1/rules", tag = "watch",
    responses((status = 200, body = RulesStatus), (status = 404, body = ApiError)))]
async fn rules(State(ctl): Ctl, who: Principal) -> ApiResult<RulesStatus> {
    operators_only(&who, "rules", "rules")?;
    Ok(Json(ctl.watch.rules_status()))
}

/// Reload the rule files (admin); the previous rules stay in force when
/// the new ones do not load (422).
#[utoipa::path(post, path = "/api/v1/rules/reload", tag = "watch",
    security(("bearer" = ["admin"]), ("cookie" = ["admin"])),
    responses((status = 200, body = RulesStatus),
        (status = 422, description = "The files did not load; the previous rules stay", body = RulesStatus)))]
async fn rules_reload(State(ctl): Ctl, who: Principal) -> Response {
    if let Err(e) = operators_only(&who, "rules", "rules") {
        return e.into_response();
    }
    let st = watch::reload_rules(&ctl);
    let code = if st.error.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    (code, Json(st)).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AlertParams {
    /// `active` (default: firing and acknowledged), `all`, or one state.
    state: Option<String>,
    /// Only alerts of this rule.
    rule: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// Alerts, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "watch", params(AlertParams),
    responses((status = 200, body = Vec<Alert>,
        headers(("x-total-count" = u64, description = "Number of matches"))),
        (status = 400, body = ApiError)))]
async fn alerts(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<AlertParams>,
) -> ListResult<Alert> {
    let page = Page::new(p.limit, p.offset)?;
    let states = match p.state.as_deref().unwrap_or("active") {
        "active" => vec![AlertState::Firing, AlertState::Acknowledged],
        "all" => vec![],
        s => vec![s.parse().map_err(ServerError::BadRequest)?],
    };
    let q = AlertQuery {
        states,
        rule: p.rule,
        limit: SCAN_CAP,
    };
    let all: Vec<Alert> = ctl
        .watch
        .repo()
        .alerts(&q)
        .await?
        .into_iter()
        .filter(|a| who.sees(crate::tenancy::labels(&ctl.cfg(), &a.labels)))
        .collect();
    Ok(page.of(all))
}

/// The alert, 404 unless the principal sees it.
async fn visible_alert(ctl: &Controller, who: &Principal, id: i64) -> Result<Alert, ServerError> {
    let a = ctl.watch.repo().alert(id).await?;
    who.check(
        crate::tenancy::labels(&ctl.cfg(), &a.labels),
        "alert",
        &id.to_string(),
    )?;
    Ok(a)
}

/// One alert.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "watch",
    params(("id" = i64, Path, description = "Alert id")),
    responses((status = 200, body = Alert), (status = 404, body = ApiError)))]
async fn alert(State(ctl): Ctl, who: Principal, Path(id): Path<i64>) -> ApiResult<Alert> {
    Ok(Json(visible_alert(&ctl, &who, id).await?))
}

/// A JSON body that may be absent.
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    b: &[u8],
) -> Result<T, ServerError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ServerError::BadRequest(format!("bad request body: {e}")))
}

/// Acknowledge an alert: someone is on it (notifications stop repeating).
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "watch",
    params(("id" = i64, Path, description = "Alert id")),
    request_body(content = Option<AckRequest>),
    responses((status = 200, body = Alert), (status = 404, body = ApiError)))]
async fn alert_ack(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Alert> {
    visible_alert(&ctl, &who, id).await?;
    let req: AckRequest = optional_body(&body)?;
    let by = req.by.unwrap_or_else(|| "api".to_string());
    Ok(Json(watch::acknowledge(&ctl, id, &by).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SilenceParams {
    /// Expired silences too.
    #[serde(default)]
    all: bool,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// Silences in force (operators' only).
#[utoipa::path(get, path = "/api/v1/silences", tag = "watch", params(SilenceParams),
    responses((status = 200, body = Vec<Silence>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn silences(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<SilenceParams>,
) -> ListResult<Silence> {
    let page = Page::new(p.limit, p.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    let now = if p.all {
        None
    } else {
        Some(chrono::Utc::now())
    };
    Ok(page.of(ctl.watch.repo().silences(now).await?))
}

/// Mute the alerts that carry the matchers' labels for a while (operators'
/// only).
#[utoipa::path(post, path = "/api/v1/silences", tag = "watch",
    request_body = watch::SilenceRequest,
    responses((status = 200, body = Silence), (status = 400, body = ApiError),
        (status = 403, body = ApiError)))]
async fn silence_add(
    State(ctl): Ctl,
    who: Principal,
    Json(req): Json<watch::SilenceRequest>,
) -> ApiResult<Silence> {
    if who.tenant.is_some() {
        return Err(ServerError::Forbidden(
            "silences are the operators' (a tenant's user cannot add one)".into(),
        ));
    }
    Ok(Json(watch::add_silence(&ctl, req).await?))
}

/// End a silence now (operators' only).
#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "watch",
    params(("id" = i64, Path, description = "Silence id")),
    responses((status = 200, description = "`{\"expired\": id}`", body = Object),
        (status = 404, body = ApiError)))]
async fn silence_expire(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
) -> ApiResult<serde_json::Value> {
    operators_only(&who, "silence", &id.to_string())?;
    watch::expire_silence(&ctl, id).await?;
    Ok(Json(json!({"expired": id})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct IncidentParams {
    /// `open` (default: new and active), `all`, or one state.
    state: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
    /// Skip this many first.
    offset: Option<u32>,
}

/// Incidents, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents", params(IncidentParams),
    responses((status = 200, body = Vec<Incident>,
        headers(("x-total-count" = u64, description = "Number of matches"))),
        (status = 400, body = ApiError)))]
async fn incidents(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<IncidentParams>,
) -> ListResult<Incident> {
    let page = Page::new(p.limit, p.offset)?;
    let states = match p.state.as_deref().unwrap_or("open") {
        "open" => vec![IncidentState::New, IncidentState::Active],
        "all" => vec![],
        s => vec![s.parse().map_err(ServerError::BadRequest)?],
    };
    let all: Vec<Incident> = ctl
        .watch
        .repo()
        .incidents(&states, SCAN_CAP)
        .await?
        .into_iter()
        .filter(|i| who.sees(crate::tenancy::labels(&ctl.cfg(), &i.labels)))
        .collect();
    Ok(page.of(all))
}

/// Open an incident, from a template or with a title. A tenant's user
/// opens incidents about their own objects only (its labels).
#[utoipa::path(post, path = "/api/v1/incidents", tag = "incidents",
    request_body = IncidentOpen,
    responses((status = 200, body = Incident), (status = 400, body = ApiError),
        (status = 403, body = ApiError)))]
async fn incident_open(
    State(ctl): Ctl,
    who: Principal,
    Json(req): Json<IncidentOpen>,
) -> ApiResult<Incident> {
    if !who.sees(crate::tenancy::labels(&ctl.cfg(), &req.labels)) {
        return Err(ServerError::Forbidden(
            "a tenant's user opens incidents about their own vm, service or group only \
             (give one in labels)"
                .into(),
        ));
    }
    Ok(Json(watch::open_incident(&ctl, req).await?))
}

/// 404 unless the incident exists and the principal sees it.
async fn check_incident(ctl: &Controller, who: &Principal, id: i64) -> Result<(), ServerError> {
    let i = ctl.watch.repo().incident(id).await?;
    who.check(
        crate::tenancy::labels(&ctl.cfg(), &i.labels),
        "incident",
        &id.to_string(),
    )
}

/// One incident with its alerts and timeline.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path, description = "Incident id")),
    responses((status = 200, body = IncidentDetail), (status = 404, body = ApiError)))]
async fn incident(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
) -> ApiResult<IncidentDetail> {
    check_incident(&ctl, &who, id).await?;
    Ok(Json(watch::incident_detail(&ctl, id).await?))
}

/// Change an incident: a note, a state, a severity.
#[utoipa::path(patch, path = "/api/v1/incidents/{id}", tag = "incidents",
    params(("id" = i64, Path, description = "Incident id")),
    request_body = IncidentUpdate,
    responses((status = 200, body = Incident), (status = 400, body = ApiError),
        (status = 404, body = ApiError)))]
async fn incident_update(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
    Json(req): Json<IncidentUpdate>,
) -> ApiResult<Incident> {
    check_incident(&ctl, &who, id).await?;
    Ok(Json(watch::update_incident(&ctl, id, req).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
struct NoteRequest {
    text: String,
    #[serde(default)]
    author: Option<String>,
}

/// Add a note to an incident's timeline.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/notes", tag = "incidents",
    params(("id" = i64, Path, description = "Incident id")),
    request_body = NoteRequest,
    responses((status = 200, body = Incident), (status = 400, body = ApiError),
        (status = 404, body = ApiError)))]
async fn incident_note(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
    Json(req): Json<NoteRequest>,
) -> ApiResult<Incident> {
    check_incident(&ctl, &who, id).await?;
    if req.text.trim().is_empty() {
        return Err(ServerError::BadRequest("a note needs text".into()));
    }
    let upd = IncidentUpdate {
        note: Some(req.text),
        author: req.author,
        ..Default::default()
    };
    Ok(Json(watch::update_incident(&ctl, id, upd).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
struct StateRequest {
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    author: Option<String>,
}

/// Resolve an incident (optionally with a note).
#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", tag = "incidents",
    params(("id" = i64, Path, description = "Incident id")),
    request_body(content = Option<StateRequest>),
    responses((status = 200, body = Incident), (status = 404, body = ApiError)))]
async fn incident_resolve(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Incident> {
    check_incident(&ctl, &who, id).await?;
    set_incident_state(&ctl, id, &body, IncidentState::Resolved).await
}

/// Close an incident (optionally with a note).
#[utoipa::path(post, path = "/api/v1/incidents/{id}/close", tag = "incidents",
    params(("id" = i64, Path, description = "Incident id")),
    request_body(content = Option<StateRequest>),
    responses((status = 200, body = Incident), (status = 404, body = ApiError)))]
async fn incident_close(
    State(ctl): Ctl,
    who: Principal,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Incident> {
    check_incident(&ctl, &who, id).await?;
    set_incident_state(&ctl, id, &body, IncidentState::Closed).await
}

async fn set_incident_state(
    ctl: &Arc<Controller>,
    id: i64,
    body: &[u8],
    state: IncidentState,
) -> ApiResult<Incident> {
    let b: StateRequest = optional_body(body)?;
    let upd = IncidentUpdate {
        state: Some(state),
        note: b.note,
        author: b.author,
        ..Default::default()
    };
    Ok(Json(watch::update_incident(ctl, id, upd).await?))
}

/// Notification deliveries, newest first (operators' only).
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "watch", params(ListParams),
    responses((status = 200, body = Vec<Delivery>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn deliveries(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ListResult<Delivery> {
    let page = Page::new(p.limit, p.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    Ok(page.of(ctl.watch.repo().deliveries(SCAN_CAP).await?))
}

/// Remote agents and when each was last heard of (operators' only).
#[utoipa::path(get, path = "/api/v1/agents", tag = "watch", params(ListParams),
    responses((status = 200, description = "`[{name, site, host, seen}]`", body = Vec<Object>,
        headers(("x-total-count" = u64, description = "Number of matches")))))]
async fn agents(
    State(ctl): Ctl,
    who: Principal,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ListResult<serde_json::Value> {
    let page = Page::new(p.limit, p.offset)?;
    if who.tenant.is_some() {
        return Ok(page.of(Vec::new()));
    }
    let seen: std::collections::BTreeMap<_, _> = ctl.watch.agents_seen().into_iter().collect();
    let out: Vec<_> = ctl
        .cfg()
        .agents
        .iter()
        .map(|(name, a)| {
            serde_json::json!({
                "name": name,
                "site": a.site,
                "host": a.host,
                "seen": seen.get(name),
            })
        })
        .collect();
    Ok(page.of(out))
}

/// An agent's heartbeat; the answer lists the probes it runs (agent
/// authentication).
#[utoipa::path(post, path = "/api/v1/agents/{name}/heartbeat", tag = "agents",
    params(("name" = String, Path, description = "Agent")),
    request_body(content = Option<watch::Heartbeat>),
    extensions(("x-standby-auth" = json!("agent"))),
    responses((status = 200, body = watch::HeartbeatReply), (status = 404, body = ApiError)))]
pub(crate) async fn agent_heartbeat(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<watch::HeartbeatReply> {
    let hb: watch::Heartbeat = optional_body(&body)?;
    Ok(Json(watch::agent_heartbeat(&ctl, &name, hb)?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ResultsRequest {
    results: Vec<ProbeResult>,
    /// The controller's session and the agent's counter (from its
    /// heartbeats' answers).
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

/// An agent's probe results (agent authentication).
#[utoipa::path(post, path = "/api/v1/agents/{name}/results", tag = "agents",
    params(("name" = String, Path, description = "Agent")),
    request_body = ResultsRequest,
    extensions(("x-standby-auth" = json!("agent"))),
    responses((status = 200, description = "`{\"accepted\": n}`", body = Object),
        (status = 404, body = ApiError)))]
pub(crate) async fn agent_results(
    State(ctl): Ctl,
    Path(name): Path<String>,
    Json(req): Json<ResultsRequest>,
) -> ApiResult<serde_json::Value> {
    let n = watch::agent_results(&ctl, &name, (req.session.as_deref(), req.seq), req.results)?;
    Ok(Json(json!({"accepted": n})))
}

/// Prometheus metrics, OpenMetrics text (operators' only).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 404, body = ApiError)))]
async fn metrics(State(ctl): Ctl, who: Principal) -> Result<Response, ServerError> {
    operators_only(&who, "metrics", "/metrics")?;
    let body = crate::metrics::render(&ctl).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
