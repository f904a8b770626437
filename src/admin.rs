//! The admin listener: health, metrics and the invalidation API.
//!
//! - `POST /api/v1/invalidations` → 202 `{"id","version"}` once durable
//! - `GET  /api/v1/invalidations/{id}` → status with per-node applied times
//! - `GET  /api/v1/invalidations?limit=N&before=V` → audit log, newest first
//! - `GET  /api/v1/nodes`, `GET /healthz`, `GET /metrics`
//!
//! Every `/api` call needs a bearer token; errors are JSON `{"error": ...}`
//! naming what was wrong.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Denied;
use crate::invalidation::audit::{Applied, AuditRecord};
use crate::invalidation::cluster::ClusterView;
use crate::invalidation::service::{self, MAX_BODY, Refused, Service};
use crate::invalidation::{LogError, Mode};
use crate::proxy::Proxy;

#[derive(Clone)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub service: Arc<Service>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/invalidations", get(list).post(create))
        .route("/api/v1/invalidations/{id}", get(status))
        .route("/api/v1/invalidation-events", axum::routing::post(event))
        .route("/api/v1/nodes", get(nodes))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = crate::metrics::render(&state.metrics, state.proxy.store.as_ref(), &state.proxy.invalidations);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The response for a refused request.
pub fn refusal(r: Refused) -> Response {
    match r {
        Refused::Invalid(msg) => error(StatusCode::BAD_REQUEST, msg),
        Refused::Denied(d) => denial(d),
        Refused::Log(LogError::Busy) => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, LogError::Busy.to_string());
            resp.headers_mut().insert(RETRY_AFTER, 1.into());
            resp
        }
        Refused::Log(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn denial(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated(msg) => error(StatusCode::UNAUTHORIZED, msg),
        Denied::Forbidden(msg) => error(StatusCode::FORBIDDEN, msg),
        Denied::RateLimited { retry_after } => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "rate limit for this token reached");
            resp.headers_mut().insert(RETRY_AFTER, retry_after.as_secs().max(1).into());
            resp
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

async fn create(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    // Authenticate before parsing, so an anonymous caller learns nothing.
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let (req, selectors) = match service::parse(&body, &state.service.keys) {
        Ok(x) => x,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let mode = req.mode.unwrap_or(Mode::Hard);
    match state.service.submit(bearer(&headers), selectors, mode, req.reason, req.break_glass).await {
        Ok(entry) => {
            let id = entry.id();
            let body = json!({ "id": id, "version": entry.version, "status": format!("/api/v1/invalidations/{id}") });
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(r) => refusal(r),
    }
}

/// How long the standard event API waits for every live node before
/// answering 202 instead of 200.
const EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `POST /api/v1/invalidation-events`: the HTTP cache invalidation draft's
/// resource. 200 once every live node has applied it (within EVENT_WAIT),
/// 202 otherwise, 501 for selector types Fresco does not support.
async fn event(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let event: service::Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid invalidation event: {e}")),
    };
    let (selectors, mode) = match service::event_selectors(&event, &state.service.keys) {
        Ok(x) => x,
        Err((true, msg)) => return error(StatusCode::NOT_IMPLEMENTED, msg),
        Err((false, msg)) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let entry = match state
        .service
        .submit(bearer(&headers), selectors, mode, "invalidation event".into(), event.break_glass)
        .await
    {
        Ok(e) => e,
        Err(r) => return refusal(r),
    };
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let view = state.service.membership.view().await;
        let converged = state.service.audit.get(entry.version).is_some_and(|r| status_of(&view, r).converged);
        if converged {
            return (StatusCode::OK, axum::Json(json!({ "id": entry.id(), "version": entry.version }))).into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return (StatusCode::ACCEPTED, axum::Json(json!({ "id": entry.id(), "version": entry.version })))
                .into_response();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// One node's view of an invalidation.
#[derive(Serialize)]
struct NodeStatus {
    node: String,
    applied: bool,
    /// When it applied it, if its acknowledgement was seen.
    applied_ms: Option<u64>,
    lag_ms: Option<u64>,
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    record: AuditRecord,
    id: String,
    /// Every live node, with when it applied the invalidation.
    nodes: Vec<NodeStatus>,
    /// Nodes that stopped heartbeating: listed, not counted.
    down: Vec<String>,
    converged: bool,
}

fn status_of(view: &ClusterView, record: AuditRecord) -> Status {
    let version = record.entry.version;
    let nodes: Vec<NodeStatus> = view
        .nodes
        .iter()
        .filter(|n| n.live)
        .map(|n| {
            let applied_ms = record.applied.iter().find(|a: &&Applied| a.node == n.node).map(|a| a.applied_ms);
            NodeStatus {
                node: n.node.clone(),
                applied: applied_ms.is_some() || n.applied_version >= version,
                applied_ms,
                lag_ms: applied_ms.map(|t| t.saturating_sub(record.entry.accepted_ms)),
            }
        })
        .collect();
    let down = view.nodes.iter().filter(|n| !n.live).map(|n| n.node.clone()).collect();
    let converged = !nodes.is_empty() && nodes.iter().all(|n| n.applied);
    Status { id: record.entry.id(), record, nodes, down, converged }
}

async fn status(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let Ok(version) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, format!("invalid invalidation id {id:?}: ids are numbers"));
    };
    match state.service.audit.get(version) {
        Some(record) => {
            let view = state.service.membership.view().await;
            axum::Json(status_of(&view, record)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no invalidation with id {id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    before: Option<u64>,
}

async fn list(
    State(state): State<AdminState>,
    headers: HeaderMap,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let Ok(Query(page)) = page else {
        return error(StatusCode::BAD_REQUEST, "query parameters are `limit` (1..=1000) and `before` (a version)");
    };
    let limit = page.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit {limit} out of range 1..=1000"));
    }
    let view = state.service.membership.view().await;
    let records: Vec<Status> =
        state.service.audit.page(page.before, limit).into_iter().map(|r| status_of(&view, r)).collect();
    let next = if records.len() == limit { records.last().map(|s| s.record.entry.version) } else { None };
    axum::Json(json!({ "invalidations": records, "next_before": next })).into_response()
}

async fn nodes(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    axum::Json(state.service.membership.view().await).into_response()
}

pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}
