//! Stampede protection and stale serving (issue 3): coalescing, hit-for-pass,
//! stale-while-revalidate, stale-if-error, content classes, origin shield.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{Fresco, Origin, Reply, burst, eventually, get, metric, send, temp_dir, wait_until_stale};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_cold_requests_cause_one_origin_request() {
    let origin = Origin::start().await;
    let body: String = (0..20_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    origin.route("/cold", Reply::ok(&body).header("cache-control", "max-age=60").delay(Duration::from_millis(300)));
    let fresco = Fresco::start(&origin.url(), &[]);
    let responses = burst(&fresco.url("/cold"), 500, &[]).await;
    for r in &responses {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), body, "every client gets the full, correct body");
    }
    assert_eq!(origin.hits("/cold"), 1);
    // One leader; everyone else either waited on it or came after it stored.
    let leaders = responses.iter().filter(|r| !r.is_hit() && !r.cache_status().contains("collapsed")).count();
    assert_eq!(leaders, 1);
    let collapsed = responses.iter().filter(|r| r.cache_status().contains("collapsed")).count() as f64;
    assert_eq!(metric(&fresco, "fresco_coalesced_requests_total{outcome=\"served\"}").await, collapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_answer_is_never_shared_between_clients() {
    let origin = Origin::start().await;
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    origin.handle("/me", move |_| {
        let i = counter.fetch_add(1, Ordering::SeqCst);
        Reply::ok(&format!("user-{i}")).header("cache-control", "private, max-age=60").delay(Duration::from_millis(300))
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    let responses = burst(&fresco.url("/me"), 40, &[]).await;
    let bodies: HashSet<String> = responses.iter().map(|r| r.text()).collect();
    assert_eq!(bodies.len(), 40, "no client got another client's private response");
    assert_eq!(origin.hits("/me"), 40);
    // Hit-for-pass: later requests skip the queue and go straight to origin.
    let later = get(&fresco.url("/me")).await;
    assert!(!later.cache_status().contains("collapsed"), "{}", later.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5861_stale_while_revalidate_answers_at_once_with_one_revalidation() {
    let origin = Origin::start().await;
    let version = Arc::new(AtomicUsize::new(1));
    let finished = Arc::new(AtomicBool::new(false));
    let (v, f) = (version.clone(), finished.clone());
    origin.handle("/swr", move |_| {
        let n = v.load(Ordering::SeqCst);
        if n == 1 {
            Reply::ok("v1").header("cache-control", "max-age=1, stale-while-revalidate=60")
        } else {
            Reply::ok("v2").header("cache-control", "max-age=60").delay(Duration::from_millis(1500)).streamed(
                1,
                Duration::ZERO,
                f.clone(),
            )
        }
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    let stored = get(&fresco.url("/swr")).await;
    assert_eq!(stored.text(), "v1");
    version.store(2, Ordering::SeqCst);
    wait_until_stale(&fresco, "/swr", &stored).await;
    let responses = burst(&fresco.url("/swr"), 50, &[]).await;
    assert!(!finished.load(Ordering::SeqCst), "every client was answered before the revalidation finished");
    for r in &responses {
        assert_eq!(r.text(), "v1");
        let cs = r.cache_status();
        assert!(cs.contains("fwd=stale") && cs.contains("detail=stale-while-revalidate"), "{cs}");
    }
    // The background revalidation stores v2; `only-if-cached` looks without
    // causing another one.
    eventually("the revalidated v2 is stored", Duration::from_secs(15), async || {
        send("GET", &fresco.url("/swr"), &[("cache-control", "only-if-cached")]).await.text() == "v2"
    })
    .await;
    assert!(finished.load(Ordering::SeqCst));
    assert_eq!(origin.hits("/swr"), 2, "exactly one background revalidation");
    let after = get(&fresco.url("/swr")).await;
    assert_eq!(after.text(), "v2");
    assert!(after.is_hit());
    assert_eq!(metric(&fresco, "fresco_background_revalidations_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5861_stale_if_error_within_the_window_then_error() {
    let origin = Origin::start().await;
    origin.route("/sie", Reply::ok("saved").header("cache-control", "max-age=1, stale-if-error=5"));
    origin.route("/err", Reply::ok("e").header("cache-control", "max-age=1, stale-if-error=60"));
    let fresco = Fresco::start(&origin.url(), &[]);
    let sie = get(&fresco.url("/sie")).await;
    let err = get(&fresco.url("/err")).await;
    // A 503 from the origin: stale instead of the error.
    origin.route("/err", Reply::ok("down").status(503));
    wait_until_stale(&fresco, "/err", &err).await;
    wait_until_stale(&fresco, "/sie", &sie).await;
    let on_503 = get(&fresco.url("/err")).await;
    assert_eq!((on_503.status, on_503.text()), (200, "e".to_string()));
    assert!(on_503.cache_status().contains("fwd-status=503"), "{}", on_503.cache_status());
    origin.stop();
    let within = get(&fresco.url("/sie")).await;
    assert_eq!((within.status, within.text()), (200, "saved".to_string()));
    assert!(within.cache_status().contains("detail=stale-if-error"));
    // The subject here is the passage of time: the window is the response's
    // own `stale-if-error=5`, and the object has been stale for less than
    // that, so waiting out the whole window (plus rounding slack) passes it.
    tokio::time::sleep(Duration::from_millis(5_000 + 200)).await;
    let after = get(&fresco.url("/sie")).await;
    assert_eq!(after.status, 504, "past the window: an error, not the stale object");
    assert!(metric(&fresco, "fresco_stale_served_total{reason=\"stale-if-error\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_classes_give_defaults_and_can_forbid_stale() {
    let origin = Origin::start().await;
    origin.route("/assets/app.js", Reply::ok("js").header("cache-control", "max-age=1"));
    origin.route("/sw.js", Reply::ok("sw").header("cache-control", "max-age=1, stale-if-error=600"));
    let dir = std::env::temp_dir().join(format!("fresco-classes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fresco.toml");
    std::fs::write(
        &file,
        "[[class]]\nname = \"assets\"\npath_prefix = \"/assets/\"\nstale_if_error = \"1d\"\n\n\
         [[class]]\nname = \"service-worker\"\npath_prefix = \"/sw.js\"\nforbid_stale = true\n",
    )
    .unwrap();
    let fresco = Fresco::start(&origin.url(), &["--config", file.to_str().unwrap()]);
    let asset = get(&fresco.url("/assets/app.js")).await;
    let sw = get(&fresco.url("/sw.js")).await;
    origin.stop();
    wait_until_stale(&fresco, "/assets/app.js", &asset).await;
    wait_until_stale(&fresco, "/sw.js", &sw).await;
    let asset = get(&fresco.url("/assets/app.js")).await;
    assert_eq!((asset.status, asset.text()), (200, "js".to_string()), "class default stale-if-error");
    let sw = get(&fresco.url("/sw.js")).await;
    assert_eq!(sw.status, 504, "class forbids stale even though the origin allows it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_shield_coalesces_children() {
    let origin = Origin::start().await;
    origin.route(
        "/shared",
        Reply::ok("from origin")
            .header("cache-control", "max-age=60")
            .header("cdn-cache-control", "max-age=120")
            .header("surrogate-key", "t1")
            .delay(Duration::from_millis(300)),
    );
    let parent = Fresco::start(&origin.url(), &["--node-name", "shield"]);
    let parent_url = format!("http://{}", parent.data);
    let a = Fresco::start(&origin.url(), &["--parent", &parent_url, "--node-name", "edge-a"]);
    let b = Fresco::start(&origin.url(), &["--parent", &parent_url, "--node-name", "edge-b"]);
    let (url_a, url_b) = (a.url("/shared"), b.url("/shared"));
    // Clients reach every edge under the site's one host name.
    const SITE: &[(&str, &str)] = &[("host", "shop.test")];
    let (ra, rb) = tokio::join!(burst(&url_a, 20, SITE), burst(&url_b, 20, SITE));
    for r in ra.iter().chain(rb.iter()) {
        assert_eq!(r.text(), "from origin");
        assert_eq!(r.header("cdn-cache-control"), Some("max-age=120"), "forwarded downstream (RFC 9213 §2.1)");
        assert_eq!(r.header("surrogate-key"), None);
    }
    assert_eq!(origin.hits("/shared"), 1, "one origin request for both children");
    let statuses: Vec<String> =
        ra[0].headers.get_all("cache-status").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(statuses.len(), 2, "both hops: {statuses:?}");
    assert!(statuses[0].starts_with("shield;") && statuses[1].starts_with("edge-a;"), "{statuses:?}");
    let hit = send("GET", &a.url("/shared"), SITE).await;
    assert!(
        hit.cache_status().contains("ttl=1"),
        "the child obeyed CDN-Cache-Control from upstream: {}",
        hit.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_is_down_is_skipped() {
    let origin = Origin::start().await;
    origin.route("/p", Reply::ok("direct").header("cache-control", "max-age=60"));
    let child = Fresco::start(&origin.url(), &["--parent", "http://127.0.0.1:9"]);
    let r = get(&child.url("/p")).await;
    assert_eq!((r.status, r.text()), (200, "direct".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_may_store_set_cookie_responses_but_never_replays_the_cookie() {
    let origin = Origin::start().await;
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    origin.handle("/landing", move |_| {
        let i = counter.fetch_add(1, Ordering::SeqCst);
        Reply::ok("landing page")
            .header("cache-control", "max-age=600")
            .header("set-cookie", &format!("visitor={i}"))
            .delay(Duration::from_millis(300))
    });
    let dir = temp_dir("cookie-class");
    let file = dir.join("fresco.toml");
    std::fs::write(&file, "[[class]]\nname = \"landing\"\npath_prefix = \"/landing\"\nstore_set_cookie = true\n")
        .unwrap();
    let fresco = Fresco::start(&origin.url(), &["--config", file.to_str().unwrap()]);
    let responses = burst(&fresco.url("/landing"), 20, &[]).await;
    let with_cookie = responses.iter().filter(|r| r.header("set-cookie").is_some()).count();
    assert_eq!(with_cookie, 1, "only the client whose request fetched it gets the cookie");
    assert!(responses.iter().all(|r| r.text() == "landing page"));
    let hit = get(&fresco.url("/landing")).await;
    assert!(hit.is_hit());
    assert_eq!(hit.header("set-cookie"), None, "a stored copy never replays a cookie");
    assert_eq!(origin.hits("/landing"), 1);
}
