//! API routes of the watch side: events (list and stream), probes, rules,
//! alerts, silences, incidents, deliveries, agents and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use standby_db::{AlertQuery, EventQuery};
use standby_types::watch::{
    Alert, AlertState, Delivery, Event, Incident, IncidentDetail, IncidentState, Labels,
    ProbeResult, Severity, Silence,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::controller::Controller;
use crate::error::ServerError;
use crate::watch::{self, AckRequest, IncidentOpen, IncidentUpdate, RulesStatus};

type Ctl = State<Arc<Controller>>;
type ApiResult<T> = Result<Json<T>, ServerError>;

pub fn routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(events_stream))
        .route("/api/v1/probes", get(probes))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/rules/reload", post(rules_reload))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/alerts/{id}/ack", post(alert_ack))
        .route("/api/v1/silences", get(silences).post(silence_add))
        .route("/api/v1/silences/{id}", delete(silence_expire))
        .route("/api/v1/incidents", get(incidents).post(incident_open))
        .route(
            "/api/v1/incidents/{id}",
            get(incident).patch(incident_update),
        )
        .route("/api/v1/incidents/{id}/notes", post(incident_note))
        .route("/api/v1/incidents/{id}/resolve", post(incident_resolve))
        .route("/api/v1/incidents/{id}/close", post(incident_close))
        .route("/api/v1/deliveries", get(deliveries))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{name}/heartbeat", post(agent_heartbeat))
        .route("/api/v1/agents/{name}/results", post(agent_results))
        .route("/metrics", get(metrics))
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

#[derive(Debug, Deserialize)]
struct EventParams {
    after: Option<i64>,
    since: Option<String>,
    kind: Option<String>,
    source: Option<String>,
    severity: Option<String>,
    limit: Option<u32>,
}

fn event_query(p: EventParams, raw: Option<&str>) -> Result<EventQuery, ServerError> {
    let since = match p.since {
        None => None,
        Some(s) => Some(parse_since(&s)?),
    };
    let min_severity = match p.severity {
        None => None,
        Some(s) => Some(s.parse::<Severity>().map_err(ServerError::BadRequest)?),
    };
    Ok(EventQuery {
        after_id: p.after,
        since,
        kind: p.kind,
        source: p.source,
        min_severity,
        labels: parse_labels(raw)?,
        limit: p.limit.unwrap_or(100).min(10_000),
    })
}

/// `5m` (ago) or an RFC 3339 time.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, ServerError> {
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

async fn events(
    State(ctl): Ctl,
    Query(p): Query<EventParams>,
    raw: axum::extract::RawQuery,
) -> ApiResult<Vec<Event>> {
    let q = event_query(p, raw.0.as_deref())?;
    Ok(Json(ctl.watch.repo().events(&q).await?))
}

fn matches(q: &EventQuery, e: &Event) -> bool {
    q.kind.as_ref().is_none_or(|k| &e.kind == k)
        && q.source.as_ref().is_none_or(|s| &e.source == s)
        && q.min_severity.is_none_or(|s| e.severity >= s)
        && q.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
}

/// Server-sent events: stored events after `after` first (so a client that
/// reconnects misses nothing), then new ones as they are stored.
async fn events_stream(
    State(ctl): Ctl,
    Query(p): Query<EventParams>,
    raw: axum::extract::RawQuery,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>, ServerError> {
    let q = event_query(p, raw.0.as_deref())?;
    // Subscribe before reading the backlog so nothing falls between.
    let rx = ctl.watch.subscribe();
    let backlog = if q.after_id.is_some() || q.since.is_some() {
        ctl.watch.repo().events(&q).await?
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
        Ok(e) if e.id > last && matches(&q, &e) => {
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

async fn probes(State(ctl): Ctl) -> ApiResult<Vec<ProbeResult>> {
    Ok(Json(ctl.watch.probe_states()))
}

async fn rules(State(ctl): Ctl) -> ApiResult<RulesStatus> {
    Ok(Json(ctl.watch.rules_status()))
}

async fn rules_reload(State(ctl): Ctl) -> Response {
    let st = watch::reload_rules(&ctl);
    let code = if st.error.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    (code, Json(st)).into_response()
}

#[derive(Debug, Deserialize)]
struct AlertParams {
    /// `active` (default), `all`, or one state.
    state: Option<String>,
    rule: Option<String>,
    limit: Option<u32>,
}

async fn alerts(State(ctl): Ctl, Query(p): Query<AlertParams>) -> ApiResult<Vec<Alert>> {
    let states = match p.state.as_deref().unwrap_or("active") {
        "active" => vec![AlertState::Firing, AlertState::Acknowledged],
        "all" => vec![],
        s => vec![s.parse().map_err(ServerError::BadRequest)?],
    };
    let q = AlertQuery {
        states,
        rule: p.rule,
        limit: p.limit.unwrap_or(100).min(10_000),
    };
    Ok(Json(ctl.watch.repo().alerts(&q).await?))
}

async fn alert(State(ctl): Ctl, Path(id): Path<i64>) -> ApiResult<Alert> {
    Ok(Json(ctl.watch.repo().alert(id).await?))
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

async fn alert_ack(
    State(ctl): Ctl,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Alert> {
    let req: AckRequest = optional_body(&body)?;
    let by = req.by.unwrap_or_else(|| "api".to_string());
    Ok(Json(watch::acknowledge(&ctl, id, &by).await?))
}

#[derive(Debug, Deserialize)]
struct SilenceParams {
    #[serde(default)]
    all: bool,
}

async fn silences(State(ctl): Ctl, Query(p): Query<SilenceParams>) -> ApiResult<Vec<Silence>> {
    let now = if p.all {
        None
    } else {
        Some(chrono::Utc::now())
    };
    Ok(Json(ctl.watch.repo().silences(now).await?))
}

async fn silence_add(
    State(ctl): Ctl,
    Json(req): Json<watch::SilenceRequest>,
) -> ApiResult<Silence> {
    Ok(Json(watch::add_silence(&ctl, req).await?))
}

async fn silence_expire(State(ctl): Ctl, Path(id): Path<i64>) -> ApiResult<serde_json::Value> {
    watch::expire_silence(&ctl, id).await?;
    Ok(Json(serde_json::json!({"expired": id})))
}

#[derive(Debug, Deserialize)]
struct IncidentParams {
    /// `open` (default: new and active), `all`, or one state.
    state: Option<String>,
    limit: Option<u32>,
}

async fn incidents(State(ctl): Ctl, Query(p): Query<IncidentParams>) -> ApiResult<Vec<Incident>> {
    let states = match p.state.as_deref().unwrap_or("open") {
        "open" => vec![IncidentState::New, IncidentState::Active],
        "all" => vec![],
        s => vec![s.parse().map_err(ServerError::BadRequest)?],
    };
    Ok(Json(
        ctl.watch
            .repo()
            .incidents(&states, p.limit.unwrap_or(100).min(10_000))
            .await?,
    ))
}

async fn incident_open(State(ctl): Ctl, Json(req): Json<IncidentOpen>) -> ApiResult<Incident> {
    Ok(Json(watch::open_incident(&ctl, req).await?))
}

async fn incident(State(ctl): Ctl, Path(id): Path<i64>) -> ApiResult<IncidentDetail> {
    Ok(Json(watch::incident_detail(&ctl, id).await?))
}

async fn incident_update(
    State(ctl): Ctl,
    Path(id): Path<i64>,
    Json(req): Json<IncidentUpdate>,
) -> ApiResult<Incident> {
    Ok(Json(watch::update_incident(&ctl, id, req).await?))
}

#[derive(Debug, Deserialize)]
struct NoteRequest {
    text: String,
    #[serde(default)]
    author: Option<String>,
}

async fn incident_note(
    State(ctl): Ctl,
    Path(id): Path<i64>,
    Json(req): Json<NoteRequest>,
) -> ApiResult<Incident> {
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

#[derive(Debug, Default, Deserialize)]
struct StateRequest {
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    author: Option<String>,
}

async fn incident_resolve(
    State(ctl): Ctl,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Incident> {
    set_incident_state(&ctl, id, &body, IncidentState::Resolved).await
}

async fn incident_close(
    State(ctl): Ctl,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Incident> {
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

#[derive(Debug, Deserialize)]
struct LimitParams {
    limit: Option<u32>,
}

async fn deliveries(State(ctl): Ctl, Query(p): Query<LimitParams>) -> ApiResult<Vec<Delivery>> {
    Ok(Json(
        ctl.watch
            .repo()
            .deliveries(p.limit.unwrap_or(100).min(10_000))
            .await?,
    ))
}

async fn agents(State(ctl): Ctl) -> ApiResult<serde_json::Value> {
    let seen: std::collections::BTreeMap<_, _> = ctl.watch.agents_seen().into_iter().collect();
    let out: Vec<_> = ctl
        .cfg
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
    Ok(Json(serde_json::Value::Array(out)))
}

async fn agent_heartbeat(
    State(ctl): Ctl,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<watch::HeartbeatReply> {
    let hb: watch::Heartbeat = optional_body(&body)?;
    Ok(Json(watch::agent_heartbeat(&ctl, &name, hb)?))
}

#[derive(Debug, Deserialize)]
struct ResultsRequest {
    results: Vec<ProbeResult>,
}

async fn agent_results(
    State(ctl): Ctl,
    Path(name): Path<String>,
    Json(req): Json<ResultsRequest>,
) -> ApiResult<serde_json::Value> {
    let n = watch::agent_results(&ctl, &name, req.results)?;
    Ok(Json(serde_json::json!({"accepted": n})))
}

async fn metrics(State(ctl): Ctl) -> Result<Response, ServerError> {
    let body = watch::metrics::render(&ctl).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
