//! The dashboard, served by the admin listener at `/`: the nodes (applied
//! version, lag, health), hit ratio, requests per second and origin
//! offload over the last minutes, recent invalidations with their per-node
//! convergence, and freshness per content class. One HTML page, a script
//! and a style sheet, embedded in the binary (no external network); the
//! page polls `GET /api/v1/dashboard` (bearer token, like every `/api`
//! call) every second and draws its charts as SVG.
//!
//! The charts come from a ring buffer of samples of this node's counters,
//! taken every [`SAMPLE_EVERY`] by a background task and kept for
//! [`KEEP`]: small (a few tens of KiB), and independent of Prometheus.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::invalidation::log::now_ms;
use crate::invalidation::nats::NodeCounters;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How much history the charts show.
pub const KEEP: Duration = Duration::from_secs(600);
/// Invalidations shown.
const RECENT: usize = 20;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// This node's counters at one instant (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sample {
    at_ms: u64,
    requests: u64,
    hits: u64,
    origin_requests: u64,
}

/// One chart point: the rates over the interval ending at `at_ms`.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Point {
    at_ms: u64,
    requests_per_second: f64,
    /// Hits / requests over the interval; None without requests.
    hit_ratio: Option<f64>,
    /// The share of requests that did not reach the origin; None without
    /// requests. Background revalidations count as origin requests.
    origin_offload: Option<f64>,
}

#[derive(Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

impl Samples {
    fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let capacity = (KEEP.as_millis() / SAMPLE_EVERY.as_millis()) as usize + 1;
        while ring.len() >= capacity {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    fn points(&self) -> Vec<Point> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().zip(ring.iter().skip(1)).map(|(a, b)| point(a, b)).collect()
    }
}

fn point(a: &Sample, b: &Sample) -> Point {
    let seconds = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(0.001);
    let requests = b.requests.saturating_sub(a.requests);
    let ratio = |n: u64| (requests > 0).then(|| (n as f64 / requests as f64).min(1.0));
    Point {
        at_ms: b.at_ms,
        requests_per_second: requests as f64 / seconds,
        hit_ratio: ratio(b.hits.saturating_sub(a.hits)),
        origin_offload: ratio(b.origin_requests.saturating_sub(a.origin_requests)).map(|r| 1.0 - r),
    }
}

/// Samples the node's counters every [`SAMPLE_EVERY`] until shutdown.
pub async fn sample(
    counters: std::sync::Arc<NodeCounters>,
    samples: std::sync::Arc<Samples>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        samples.push(Sample {
            at_ms: now_ms(),
            requests: counters.requests.load(Ordering::Relaxed),
            hits: counters.hits.load(Ordering::Relaxed),
            origin_requests: crate::metrics::origin_requests(),
        });
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route("/dashboard.js", get(|| asset("text/javascript; charset=utf-8", SCRIPT)))
        .route("/dashboard.css", get(|| asset("text/css; charset=utf-8", STYLE)))
        .route("/api/v1/dashboard", get(data))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only its own script and style, no inline code, nothing from elsewhere.
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

/// Everything the page shows, in one answer.
async fn data(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(d) = state.service.access.authenticate(crate::admin::bearer(&headers)) {
        return crate::admin::denial(d);
    }
    let view = state.service.membership.view().await;
    let invalidations: Vec<_> =
        state.service.audit.page(None, RECENT).into_iter().map(|r| crate::admin::status_of(&view, r)).collect();
    let classes = state.proxy.settings.freshness.report();
    axum::Json(json!({
        "node": state.service.node,
        "now_ms": now_ms(),
        "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
        "cluster": view,
        "points": state.samples.points(),
        "invalidations": invalidations,
        "classes": classes,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_rates_over_each_interval() {
        let a = Sample { at_ms: 1_000, requests: 10, hits: 5, origin_requests: 5 };
        let b = Sample { at_ms: 3_000, requests: 30, hits: 25, origin_requests: 6 };
        let p = point(&a, &b);
        assert_eq!(p.requests_per_second, 10.0);
        assert_eq!(p.hit_ratio, Some(1.0));
        assert_eq!(p.origin_offload, Some(0.95));
        let idle = point(&b, &Sample { at_ms: 4_000, ..b });
        assert_eq!((idle.requests_per_second, idle.hit_ratio, idle.origin_offload), (0.0, None, None));
    }

    #[test]
    fn the_ring_keeps_only_the_last_minutes() {
        let s = Samples::default();
        let n = (KEEP.as_millis() / SAMPLE_EVERY.as_millis()) as u64 + 50;
        for i in 0..n {
            s.push(Sample { at_ms: i * 1000, requests: i, hits: 0, origin_requests: 0 });
        }
        let points = s.points();
        assert_eq!(points.len() as u64, KEEP.as_millis() as u64 / SAMPLE_EVERY.as_millis() as u64);
        assert_eq!(points.last().unwrap().at_ms, (n - 1) * 1000);
    }
}
