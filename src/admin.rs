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

/// One node's view of an invalidation.
#[derive(Serialize)]
struct NodeStatus {
    node: String,
    applied_ms: Option<u64>,
    lag_ms: Option<u64>,
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    record: AuditRecord,
    id: String,
    nodes: Vec<NodeStatus>,
    converged: bool,
}

fn status_of(state: &AdminState, record: AuditRecord) -> Status {
    // One node with the embedded log; a cluster lists every live node.
    let live = [state.service.node.clone()];
    let nodes: Vec<NodeStatus> = live
        .iter()
        .map(|n| {
            let applied = record.applied.iter().find(|a: &&Applied| a.node == *n).map(|a| a.applied_ms);
            NodeStatus {
                node: n.clone(),
                applied_ms: applied,
                lag_ms: applied.map(|t| t.saturating_sub(record.entry.accepted_ms)),
            }
        })
        .collect();
    let converged = nodes.iter().all(|n| n.applied_ms.is_some());
    Status { id: record.entry.id(), record, nodes, converged }
}

async fn status(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let Ok(version) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, format!("invalid invalidation id {id:?}: ids are numbers"));
    };
    match state.service.audit.get(version) {
        Some(record) => axum::Json(status_of(&state, record)).into_response(),
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
    let records: Vec<Status> =
        state.service.audit.page(page.before, limit).into_iter().map(|r| status_of(&state, r)).collect();
    let next = if records.len() == limit { records.last().map(|s| s.record.entry.version) } else { None };
    axum::Json(json!({ "invalidations": records, "next_before": next })).into_response()
}

async fn nodes(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    let applied = state.service.invalidations.applied();
    axum::Json(json!({ "nodes": [{ "node": state.service.node, "applied_version": applied, "live": true }] }))
        .into_response()
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
