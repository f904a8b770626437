//! The memory store (issue 8, items 6 and 7): every object that fits the
//! budget is stored, none that cannot be is reported `stored`, the store's
//! counters say what their names say, and selector records stay bounded
//! while long-lived objects keep their verdicts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::harness::{Fresco, Got, Origin, Reply, client, get, send, send_body};

/// A sample's value from /metrics; panics when the sample is missing, so a
/// renamed metric cannot make an assertion pass.
async fn sample(fresco: &Fresco, name: &str) -> f64 {
    let text = get(&fresco.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{text}"))
}

fn says_stored(got: &Got) -> bool {
    got.cache_status().split(';').any(|p| p.trim() == "stored")
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_an_object_that_fits_the_budget_is_stored_and_one_that_cannot_is_not_reported_stored() {
    let origin = Origin::start().await;
    let big = Bytes::from(vec![b'b'; 2_000_000]);
    origin.route("/two-mb", Reply::bytes(big.clone()).header("cache-control", "max-age=600"));
    origin.route("/nine-mb", Reply::bytes(Bytes::from(vec![b'n'; 9_000_000])).header("cache-control", "max-age=600"));
    // The default max_object_size (16MiB) is more than an 8MiB budget can
    // hold: the node clamps it and says so.
    let fresco = Fresco::start(&origin.url(), &["--memory", "8MiB"]);

    let first = get(&fresco.url("/two-mb")).await;
    assert_eq!(first.body, big);
    assert!(says_stored(&first), "{}", first.cache_status());
    let second = get(&fresco.url("/two-mb")).await;
    assert!(second.is_hit(), "a 2 MB object with memory = 8MiB is a hit: {}", second.cache_status());
    assert_eq!(second.body, big);
    assert_eq!(origin.hits("/two-mb"), 1);

    let huge = get(&fresco.url("/nine-mb")).await;
    assert_eq!(huge.body.len(), 9_000_000);
    assert!(!says_stored(&huge), "9 MB cannot be held in 8MiB: {}", huge.cache_status());
    assert!(huge.cache_status().contains("detail=too-large"), "{}", huge.cache_status());
    let again = get(&fresco.url("/nine-mb")).await;
    assert!(!again.is_hit());
    assert_eq!(origin.hits("/nine-mb"), 2);
    // The 2 MB object was not pushed out by the refused one.
    assert!(get(&fresco.url("/two-mb")).await.is_hit());

    let log = fresco.data_dir.join("node.log");
    let warned = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("max_object_size is larger than the memory budget"))
    })
    .await;
    assert!(warned, "start-up says max_object_size was clamped");
    assert_eq!(sample(&fresco, "fresco_store_refused_total{reason=\"too_large\"}").await, 0.0);
    assert_eq!(sample(&fresco, "fresco_store_objects").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_count_evictions_not_replacements() {
    let origin = Origin::start().await;
    origin.handle("/obj", |_| Reply::bytes(Bytes::from(vec![b'o'; 1_000_000])).header("cache-control", "max-age=600"));
    let fresco = Fresco::start(&origin.url(), &["--memory", "8MiB"]);

    // The same key refilled (the client forces a refetch) replaces the
    // stored object: no eviction.
    // A request may join the previous fill if it is still being published
    // (coalescing; said by `collapsed`): only fills count.
    let mut fills = 0;
    for _ in 0..50 {
        let got = send("GET", &fresco.url("/obj?same"), &[("cache-control", "no-cache")]).await;
        if got.cache_status().contains("collapsed") {
            continue;
        }
        assert!(says_stored(&got), "{}", got.cache_status());
        fills += 1;
        if fills == 5 {
            break;
        }
    }
    assert_eq!(origin.hits("/obj?same"), 5);
    assert_eq!(sample(&fresco, "fresco_store_evictions_total").await, 0.0);
    assert_eq!(sample(&fresco, "fresco_store_objects").await, 1.0);

    // Twenty distinct 1 MB objects in 8 MiB: some must go.
    for i in 0..20 {
        assert!(says_stored(&get(&fresco.url(&format!("/obj?{i}"))).await));
    }
    let objects = sample(&fresco, "fresco_store_objects").await;
    let evictions = sample(&fresco, "fresco_store_evictions_total").await;
    assert!(objects < 9.0, "{objects} objects of 1 MB in 8 MiB");
    assert_eq!(objects + evictions, 21.0, "every object stored is either held or counted as evicted");
    assert_eq!(sample(&fresco, "fresco_store_keys").await, objects);
    assert!(sample(&fresco, "fresco_store_bytes").await <= sample(&fresco, "fresco_store_capacity_bytes").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stay_bounded_and_long_lived_objects_keep_their_verdicts() {
    let origin = Origin::start().await;
    let version = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let v = version.clone();
    let current = move || format!("v{}", v.load(std::sync::atomic::Ordering::SeqCst));
    let asset = current.clone();
    origin.handle("/asset", move |_| {
        Reply::ok(&asset()).header("cache-control", "max-age=31536000, immutable").header("surrogate-key", "asset")
    });
    let soft = current.clone();
    origin.handle("/soft", move |_| Reply::ok(&soft()).header("cache-control", "max-age=31536000"));
    origin.route("/cart", Reply::ok("ok"));
    let fresco = Fresco::start(&origin.url(), &["--sweep-interval", "100ms"]);
    let token = format!("Bearer {}", fresco.token());
    let purge = |body: serde_json::Value| {
        let (url, token) = (fresco.admin_url("/api/v1/invalidations"), token.clone());
        async move {
            let headers = [("authorization", token.as_str()), ("content-type", "application/json")];
            let r = send_body("POST", &url, &headers, Bytes::from(body.to_string())).await;
            assert_eq!(r.status, 202, "{}", r.text());
        }
    };

    assert_eq!(get(&fresco.url("/asset")).await.text(), "v1");
    assert_eq!(get(&fresco.url("/soft")).await.text(), "v1");
    purge(json!({"urls": [fresco.url("/soft")], "mode": "soft"})).await;
    version.store(2, std::sync::atomic::Ordering::SeqCst);

    // 1 000 successful unsafe requests (each a local URL record, §4.4) and
    // 50 purges, none of which selects the two objects.
    let c = client();
    for i in 0..1000 {
        let req = http::Request::post(fresco.url(&format!("/cart?item={i}"))).body(Full::new(Bytes::new())).unwrap();
        let resp = c.request(req).await.expect("POST answered");
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
        if i % 20 == 0 {
            purge(json!({"tags": [format!("other-{i}")]})).await;
        }
    }
    let bounded =
        eventually(Duration::from_secs(20), || async { sample(&fresco, "fresco_invalidation_records").await == 0.0 })
            .await;
    assert!(bounded, "records left: {}", sample(&fresco, "fresco_invalidation_records").await);
    assert!(sample(&fresco, "fresco_sweeper_records_dropped_total").await >= 1051.0);

    // The immutable asset is still served as stored...
    let hit = get(&fresco.url("/asset")).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.text(), "v1");
    // ...and the soft-purged object is still stale: it is not served as a
    // fresh hit but fetched again.
    let refetched = get(&fresco.url("/soft")).await;
    assert!(!refetched.is_hit(), "{}", refetched.cache_status());
    assert_eq!(refetched.text(), "v2");
    assert_eq!(origin.hits("/soft"), 2);
    // A hard purge after the compaction still reaches the asset.
    purge(json!({"tags": ["asset"]})).await;
    assert_eq!(get(&fresco.url("/asset")).await.text(), "v2");
}
