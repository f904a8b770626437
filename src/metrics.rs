//! Prometheus metrics. Counters are recorded with the `metrics` facade on
//! the request path; store figures are read when /metrics is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Response;
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::invalidation::Invalidations;
use crate::invalidation::cluster::{ClusterView, NodeInfo};
use crate::store::{Refusal, Store};

/// Installs the global recorder; returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .expect("static buckets are valid")
        // Served staleness spans seconds to a day, not a request's latency.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("fresco_served_staleness_seconds".into()),
            &[0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0],
        )
        .expect("static buckets are valid")
        .build_recorder();
    let handle = recorder.handle();
    // A second install (tests in one process) keeps the first recorder.
    let _ = metrics::set_global_recorder(recorder);
    // Counters without labels are exported from the start, at 0, so that a
    // dashboard or alert can tell "none yet" from "not reported".
    for name in UNLABELLED_COUNTERS {
        metrics::counter!(name).increment(0);
    }
    for kind in crate::proxy::upstream::UpstreamError::DETAILS {
        counter!("fresco_origin_errors_total", "kind" => kind).increment(0);
    }
    for reason in StaleReason::ALL {
        counter!("fresco_stale_served_total", "reason" => reason.as_str()).increment(0);
    }
    handle
}

/// Why a stale response was served, for `fresco_stale_served_total`: a
/// soft purge made it stale (whatever then allowed serving it), or it
/// expired and was served under stale-while-revalidate, stale-if-error or
/// the client's max-stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    StaleWhileRevalidate,
    StaleIfError,
    MaxStale,
    SoftPurged,
}

impl StaleReason {
    const ALL: [StaleReason; 4] =
        [StaleReason::StaleWhileRevalidate, StaleReason::StaleIfError, StaleReason::MaxStale, StaleReason::SoftPurged];

    fn as_str(self) -> &'static str {
        match self {
            StaleReason::StaleWhileRevalidate => "stale-while-revalidate",
            StaleReason::StaleIfError => "stale-if-error",
            StaleReason::MaxStale => "max-stale",
            StaleReason::SoftPurged => "soft-purged",
        }
    }
}

const UNLABELLED_COUNTERS: [&str; 10] = [
    "fresco_accept_errors_total",
    "fresco_background_revalidations_total",
    "fresco_invalidation_retention_gaps_total",
    "fresco_invalidation_unreadable_total",
    "fresco_invalidations_accepted_total",
    "fresco_invalidations_applied_total",
    "fresco_sweeper_objects_freed_total",
    "fresco_sweeper_records_dropped_total",
    "fresco_sweeper_walks_total",
    "fresco_unsafe_method_invalidations_total",
];

/// A response's class for the request metrics, left by the proxy in the
/// response's extensions ([`crate::policy::cache_status::CacheStatus::class`]).
#[derive(Debug, Clone, Copy)]
pub struct CacheClass(pub &'static str);

/// Records a finished response under its cache status; returns it. The
/// latency histogram is also labelled by content class (`content_class`, a
/// configured `[[class]]` name or `none`), so its `_count` gives requests by
/// class and cache status; never by URL.
pub fn request_finished<B>(resp: &Response<B>, elapsed: Duration, content_class: Option<&str>) -> &'static str {
    let status = resp.extensions().get::<CacheClass>().map_or("none", |c| c.0);
    counter!("fresco_requests_total", "cache" => status).increment(1);
    let seconds = elapsed.as_secs_f64();
    match content_class {
        // A static label: no allocation on the hot path of a node without classes.
        None => {
            histogram!("fresco_request_duration_seconds", "cache" => status, "content_class" => "none").record(seconds)
        }
        Some(name) => {
            histogram!("fresco_request_duration_seconds", "cache" => status, "content_class" => name.to_string())
                .record(seconds)
        }
    }
    status
}

/// Origin requests so far, all kinds, for the dashboard's offload chart
/// (the `metrics` facade cannot be read back).
static ORIGIN_REQUESTS: AtomicU64 = AtomicU64::new(0);

pub fn origin_request(kind: &'static str) {
    ORIGIN_REQUESTS.fetch_add(1, Ordering::Relaxed);
    counter!("fresco_origin_requests_total", "kind" => kind).increment(1);
}

pub fn origin_requests() -> u64 {
    ORIGIN_REQUESTS.load(Ordering::Relaxed)
}

/// Time from sending a request upstream to its response head.
pub fn origin_response(kind: &'static str, elapsed: Duration) {
    histogram!("fresco_origin_request_duration_seconds", "kind" => kind).record(elapsed.as_secs_f64());
}

pub fn origin_error(kind: &'static str) {
    counter!("fresco_origin_errors_total", "kind" => kind).increment(1);
}

pub fn coalesce(outcome: &'static str) {
    counter!("fresco_coalesced_requests_total", "outcome" => outcome).increment(1);
}

pub fn background_revalidation() {
    counter!("fresco_background_revalidations_total").increment(1);
}

pub fn stale_served(reason: StaleReason) {
    counter!("fresco_stale_served_total", "reason" => reason.as_str()).increment(1);
}

pub fn local_invalidation() {
    counter!("fresco_unsafe_method_invalidations_total").increment(1);
}

/// Renders all metrics, with the store's figures as gauges.
/// `position` is the version applied in the log the node follows.
pub fn render(
    handle: &PrometheusHandle,
    store: &dyn Store,
    invalidations: &Invalidations,
    position: u64,
    cluster: &ClusterView,
) -> String {
    let s = store.stats();
    let mut out = handle.render();
    let gauges = [
        ("fresco_store_objects", "Stored responses (all variants).", s.objects),
        ("fresco_store_keys", "Cache keys in the store.", s.keys),
        ("fresco_store_bytes", "Bytes accounted in the store.", s.bytes),
        ("fresco_store_capacity_bytes", "The store's byte budget.", s.capacity),
        ("fresco_invalidation_applied_version", "Version applied in the invalidation log this node follows.", position),
        ("fresco_invalidation_records", "Selector records held.", invalidations.records() as u64),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    }
    out.push_str(&format!(
        "# HELP fresco_store_evictions_total Keys evicted to make room (replacements not counted).\n# TYPE fresco_store_evictions_total counter\nfresco_store_evictions_total {}\n",
        s.evictions
    ));
    out.push_str(
        "# HELP fresco_store_refused_total Objects the store did not take, by reason.\n# TYPE fresco_store_refused_total counter\n",
    );
    for (reason, n) in Refusal::ALL.iter().zip(s.refused) {
        out.push_str(&format!("fresco_store_refused_total{{reason=\"{}\"}} {n}\n", reason.as_str()));
    }
    render_cluster(&mut out, cluster);
    out
}

/// Every node as this node sees it (the invalidation lag per node): what
/// it applied, how far behind the log's head, how long since it was heard
/// from, whether it counts as live. Node ids are the cluster's members, a
/// bounded set.
fn render_cluster(out: &mut String, cluster: &ClusterView) {
    type Family = (&'static str, &'static str, fn(&NodeInfo, Option<u64>) -> f64);
    let families: [Family; 4] = [
        ("fresco_cluster_node_applied_version", "Version of the invalidation log each node has applied.", |n, _| {
            n.applied_version as f64
        }),
        ("fresco_cluster_node_lag_versions", "Invalidations each node is behind the log's head.", |n, head| {
            head.map_or(0, |h| h.saturating_sub(n.applied_version)) as f64
        }),
        ("fresco_cluster_node_heartbeat_age_seconds", "Seconds since each node was last heard from.", |n, _| {
            n.heartbeat_age_ms as f64 / 1000.0
        }),
        ("fresco_cluster_node_live", "1 while a node heartbeats, 0 once it is listed as down.", |n, _| {
            f64::from(u8::from(n.live))
        }),
    ];
    for (name, help, value) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for node in &cluster.nodes {
            let id = node.node.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!("{name}{{node=\"{id}\"}} {}\n", value(node, cluster.head)));
        }
    }
}
