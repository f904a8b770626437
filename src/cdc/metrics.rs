//! The relay's metrics: its own Prometheus recorder and `/metrics`
//! listener (`--metrics ADDR`), since it runs apart from any node.
//!
//! - `fresco_cdc_changes_total{op}`: row changes and outbox messages seen
//! - `fresco_cdc_transactions_total`: committed transactions seen
//! - `fresco_cdc_invalidations_total{kind}`: requests accepted (immediate, delayed)
//! - `fresco_cdc_lag_bytes`, `fresco_cdc_lag_seconds`: how far the confirmed
//!   slot position is behind the server's WAL, and the age of the oldest
//!   commit not yet confirmed
//! - `fresco_cdc_commit_to_invalidation_seconds`: from the commit (the
//!   server's clock) to the invalidation accepted (the relay's)
//! - `fresco_cdc_delivery_errors_total{kind}`: attempts the node did not
//!   accept (transient: retried; refused: the relay stops)
//! - `fresco_cdc_unrendered_tags_total{reason}`, `fresco_cdc_bad_messages_total`,
//!   `fresco_cdc_undecodable_total`: what could not become a tag

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .expect("static buckets are valid")
        .build_recorder();
    let handle = recorder.handle();
    let _ = metrics::set_global_recorder(recorder);
    for op in ["insert", "update", "delete", "truncate", "message"] {
        metrics::counter!("fresco_cdc_changes_total", "op" => op).increment(0);
    }
    for kind in ["immediate", "delayed"] {
        metrics::counter!("fresco_cdc_invalidations_total", "kind" => kind).increment(0);
    }
    for kind in ["transient", "refused"] {
        metrics::counter!("fresco_cdc_delivery_errors_total", "kind" => kind).increment(0);
    }
    metrics::counter!("fresco_cdc_transactions_total").increment(0);
    metrics::gauge!("fresco_cdc_lag_bytes").set(0.0);
    metrics::gauge!("fresco_cdc_lag_seconds").set(0.0);
    handle
}

/// Binds `addr` and serves `/metrics` in the background; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, handle: PrometheusHandle) -> Result<SocketAddr, String> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--metrics: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    Ok(bound)
}
