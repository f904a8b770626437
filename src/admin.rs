//! The admin listener: health, metrics, and (later) the invalidation API.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Proxy;

#[derive(Clone)]
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AdminState) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = crate::metrics::render(&state.metrics, state.proxy.store.as_ref());
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
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
