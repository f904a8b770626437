//! The admin listener: health, metrics and the invalidation API.
//!
//! - `POST /api/v1/invalidations` → 202 `{"id","version"}` once durable
//! - `GET  /api/v1/invalidations/{id}` → status with per-node applied times
//! - `GET  /api/v1/invalidations?limit=N&before=V` → audit log, newest first
//! - `GET  /api/v1/nodes`, `GET /healthz`, `GET /readyz`, `GET /metrics`
//! - `GET  /` the dashboard, fed by `GET /api/v1/dashboard` ([`crate::dashboard`])
//!
//! `/healthz` says the process runs; `/readyz` (200 or 503, with a JSON body
//! naming each check) says whether the node may take traffic: it applied
//! the log it knows of, can reach the log, and its consumer and other
//! background tasks run.
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
use crate::invalidation::cluster::{Check, ClusterView, NodeInfo};
use crate::invalidation::service::{self, IdempotencyKey, MAX_BODY, Refused, Service};
use crate::invalidation::{LogError, Mode};
use crate::proxy::Proxy;
use crate::supervisor::Health;

#[derive(Clone)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub service: Arc<Service>,
    pub metrics: PrometheusHandle,
    pub health: Arc<Health>,
    /// The dashboard's chart history.
    pub samples: Arc<crate::dashboard::Samples>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/invalidations", get(list).post(create))
        .route("/api/v1/invalidations/{id}", get(status))
        .route("/api/v1/invalidation-events", axum::routing::post(event))
        .route("/api/v1/nodes", get(nodes))
        .merge(crate::dashboard::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let mut checks = state.service.membership.readiness();
    let dead = state.health.dead();
    checks.push(Check {
        name: "tasks",
        ok: dead.is_empty(),
        detail: if dead.is_empty() {
            "all background tasks run".into()
        } else {
            format!("stopped: {}", dead.join(", "))
        },
    });
    let ready = checks.iter().all(|c| c.ok);
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": ready, "failed": failed, "checks": checks }))).into_response()
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let position = state.service.membership.position();
    let cluster = state.service.membership.view().await;
    let body = crate::metrics::render(
        &state.metrics,
        state.proxy.store.as_ref(),
        &state.proxy.invalidations,
        position,
        &cluster,
    );
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

pub(crate) fn denial(d: Denied) -> Response {
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

/// The request's `Idempotency-Key`, if it carries a valid one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, String> {
    headers.get("idempotency-key").map(|v| IdempotencyKey::from_client(v.as_bytes())).transpose()
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
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
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let mode = req.mode.unwrap_or(Mode::Hard);
    match state.service.submit_keyed(bearer(&headers), selectors, mode, req.reason, req.break_glass, key).await {
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
    let key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let submitted = state
        .service
        .submit_keyed(bearer(&headers), selectors, mode, "invalidation event".into(), event.break_glass, key)
        .await;
    let entry = match submitted {
        Ok(e) => e,
        Err(r) => return refusal(r),
    };
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let view = view(&state).await;
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
pub(crate) struct NodeStatus {
    node: String,
    applied: bool,
    /// When it applied it, if its acknowledgement was seen.
    applied_ms: Option<u64>,
    lag_ms: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct Status {
    #[serde(flatten)]
    record: AuditRecord,
    id: String,
    /// Every node that is live or may still answer from its store, with
    /// when it applied the invalidation.
    nodes: Vec<NodeStatus>,
    /// Nodes that stopped heartbeating long enough ago that they no longer
    /// answer from their stores: listed, not counted.
    down: Vec<String>,
    /// Nodes that may still answer from their stores and have not
    /// confirmed applying the invalidation.
    unconfirmed: Vec<String>,
    /// Layers (`[[layer]]`) whose scope covers the invalidation and that
    /// have not taken it yet (their attempts are under `layers`).
    layers_pending: Vec<String>,
    /// True when no node that may still answer from its store is
    /// unconfirmed and every layer concerned has taken it.
    converged: bool,
}

pub(crate) fn status_of(view: &ClusterView, record: AuditRecord) -> Status {
    let version = record.entry.version;
    let counted: Vec<&NodeInfo> = view.nodes.iter().filter(|n| n.live || n.may_serve).collect();
    let nodes: Vec<NodeStatus> = counted
        .iter()
        .map(|n| {
            // Acknowledgements are kept only for the stream this node follows.
            let applied_ms = record.applied.iter().find(|a: &&Applied| a.node == n.node).map(|a| a.applied_ms);
            NodeStatus {
                node: n.node.clone(),
                applied: applied_ms.is_some() || n.applied(&view.stream, version),
                applied_ms,
                lag_ms: applied_ms.map(|t| t.saturating_sub(record.entry.accepted_ms)),
            }
        })
        .collect();
    let down = view.nodes.iter().filter(|n| !(n.live || n.may_serve)).map(|n| n.node.clone()).collect();
    let unconfirmed: Vec<String> = counted
        .iter()
        .zip(&nodes)
        .filter(|(info, status)| info.may_serve && !status.applied)
        .map(|(info, _)| info.node.clone())
        .collect();
    let layers_pending: Vec<String> = view
        .layers
        .iter()
        .filter(|l| l.concerned(&record.entry.invalidation.selectors))
        // At or below its position a layer has taken it, or it came before
        // the layer was configured.
        .filter(|l| record.entry.version > l.delivered)
        .filter(|l| !record.layers.iter().any(|o| o.layer == l.name && o.ok))
        .map(|l| l.name.clone())
        .collect();
    let converged = nodes.iter().any(|n| n.applied) && unconfirmed.is_empty() && layers_pending.is_empty();
    Status { id: record.entry.id(), record, nodes, down, unconfirmed, layers_pending, converged }
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
            let view = view(&state).await;
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
    let view = view(&state).await;
    let records: Vec<Status> =
        state.service.audit.page(page.before, limit).into_iter().map(|r| status_of(&view, r)).collect();
    let next = if records.len() == limit { records.last().map(|s| s.record.entry.version) } else { None };
    axum::Json(json!({ "invalidations": records, "next_before": next })).into_response()
}

/// The cluster as this node sees it, with the layers it forwards to.
async fn view(state: &AdminState) -> ClusterView {
    let mut view = state.service.membership.view().await;
    view.layers = state.service.layers.infos();
    view
}

async fn nodes(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(d) = state.service.access.authenticate(bearer(&headers)) {
        return denial(d);
    }
    axum::Json(view(&state).await).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::{Entry, NewInvalidation, Selector};

    fn record(version: u64, acked_by: &[&str]) -> AuditRecord {
        let invalidation = NewInvalidation {
            selectors: vec![Selector::Tag("t".into())],
            mode: Mode::Hard,
            reason: String::new(),
            issuer: "t".into(),
            break_glass: false,
        };
        AuditRecord {
            entry: Entry { version, invalidation, accepted_ms: 0 },
            applied: acked_by.iter().map(|n| Applied { node: n.to_string(), applied_ms: 1 }).collect(),
            layers: Vec::new(),
        }
    }

    fn node(name: &str, stream: &str, from: u64, to: u64, live: bool, may_serve: bool) -> NodeInfo {
        NodeInfo {
            node: name.into(),
            stream: stream.into(),
            applied_version: to,
            applied_from: from,
            heartbeat_age_ms: 0,
            live,
            may_serve,
            hits: 0,
            requests: 0,
        }
    }

    fn view(nodes: Vec<NodeInfo>) -> ClusterView {
        ClusterView { stream: "s2".into(), base: 0, head: Some(10), nodes, layers: Vec::new() }
    }

    #[test]
    fn a_node_that_skipped_a_version_or_follows_another_stream_has_not_applied_it() {
        let v = view(vec![
            node("a", "s2", 1, 10, true, true),
            node("gap", "s2", 6, 10, true, true),
            node("old-stream", "s1", 1, 40, true, true),
        ]);
        let s = status_of(&v, record(3, &["a"]));
        let applied: Vec<bool> = s.nodes.iter().map(|n| n.applied).collect();
        assert_eq!(applied, vec![true, false, false]);
        assert_eq!(s.unconfirmed, vec!["gap".to_string(), "old-stream".to_string()]);
        assert!(!s.converged);
    }

    #[test]
    fn a_silent_node_blocks_convergence_until_it_can_no_longer_be_serving() {
        let maybe = view(vec![node("a", "s2", 1, 10, true, true), node("cut", "s2", 1, 2, false, true)]);
        let s = status_of(&maybe, record(3, &["a"]));
        assert_eq!((s.converged, s.unconfirmed.clone(), s.down.clone()), (false, vec!["cut".to_string()], vec![]));
        let gone = view(vec![node("a", "s2", 1, 10, true, true), node("cut", "s2", 1, 2, false, false)]);
        let s = status_of(&gone, record(3, &["a"]));
        assert_eq!((s.converged, s.down.clone()), (true, vec!["cut".to_string()]));
    }
}
