//! Issue 8, the data path: every write into the store passes one admission
//! and every answer from it one validity check, whichever path it takes
//! (fill, 304 revalidation, HEAD freshening, coalesced waiter).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Fresco, Origin, Reply, burst, get, send};

fn client_of(seen: &crate::harness::Seen) -> String {
    seen.headers.get("x-client").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string()
}

async fn hard_purge_url(fresco: &Fresco, url: &str) {
    let body = json!({"urls": [url], "mode": "hard"}).to_string();
    let r = crate::harness::invalidate(fresco, &fresco.token(), body).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

/// The first answer is stored and already stale (it has a validator), so
/// every later request revalidates; the 304 carries whatever `update` adds.
fn revalidated_origin(origin: &Origin, path: &str, update: &'static [(&'static str, &'static str)]) {
    origin.handle(path, move |seen| {
        if seen.headers.get("if-none-match").is_some() {
            let mut r = Reply::ok("").status(304).header("etag", "\"v1\"");
            for (k, v) in update {
                r = r.header(k, &v.replace("{client}", &client_of(seen)));
            }
            r
        } else {
            Reply::ok("page").header("etag", "\"v1\"").header("cache-control", "max-age=0")
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_4_a_304_with_set_cookie_reaches_only_its_requester() {
    let origin = Origin::start().await;
    revalidated_origin(&origin, "/r", &[("cache-control", "max-age=60"), ("set-cookie", "session={client}")]);
    let fresco = Fresco::start(&origin.url(), &[]);
    assert_eq!(get(&fresco.url("/r")).await.text(), "page");
    let alice = send("GET", &fresco.url("/r"), &[("x-client", "alice")]).await;
    assert_eq!(alice.status, 200);
    assert_eq!(alice.header("set-cookie"), Some("session=alice"), "the requester gets its own cookie");
    for _ in 0..3 {
        let bob = send("GET", &fresco.url("/r"), &[("x-client", "bob")]).await;
        assert_eq!(bob.text(), "page");
        assert_ne!(bob.header("set-cookie"), Some("session=alice"), "{:?}", bob.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_5_2_2_7_a_304_never_stores_fields_named_by_private() {
    let origin = Origin::start().await;
    revalidated_origin(
        &origin,
        "/p",
        &[("cache-control", "max-age=60, private=\"x-secret\""), ("x-secret", "token-of-{client}")],
    );
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/p")).await;
    let alice = send("GET", &fresco.url("/p"), &[("x-client", "alice")]).await;
    assert_eq!(alice.header("x-secret"), Some("token-of-alice"), "the requester gets the whole response");
    let bob = send("GET", &fresco.url("/p"), &[("x-client", "bob")]).await;
    assert!(bob.is_hit(), "the merged response was stored: {}", bob.cache_status());
    assert_eq!(bob.header("x-secret"), None, "without the field private to alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_5_a_head_with_set_cookie_never_freshens_the_stored_get() {
    let origin = Origin::start().await;
    origin.handle("/h", |seen| {
        let r = Reply::ok("page").header("etag", "\"v1\"");
        if seen.method == http::Method::HEAD {
            r.header("cache-control", "max-age=60").header("set-cookie", &format!("session={}", client_of(seen)))
        } else {
            r.header("cache-control", "max-age=0")
        }
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/h")).await;
    let head = send("HEAD", &fresco.url("/h"), &[("x-client", "alice")]).await;
    assert_eq!(head.header("set-cookie"), Some("session=alice"));
    let bob = send("GET", &fresco.url("/h"), &[("x-client", "bob")]).await;
    assert_eq!(bob.header("set-cookie"), None, "{:?}", bob.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_4_3_5_a_head_after_a_hard_purge_does_not_bring_the_old_body_back() {
    let origin = Origin::start().await;
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    // No validators: a HEAD 200 of the same length "describes" any version.
    origin.handle("/obj", move |_| {
        Reply::ok(&format!("v{}", v.load(Ordering::SeqCst))).header("cache-control", "max-age=60")
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    assert_eq!(get(&fresco.url("/obj")).await.text(), "v1");
    version.store(2, Ordering::SeqCst);
    hard_purge_url(&fresco, &format!("http://{}/obj", fresco.data)).await;
    let head = send("HEAD", &fresco.url("/obj"), &[]).await;
    assert_eq!(head.status, 200);
    let after = get(&fresco.url("/obj")).await;
    assert_eq!(after.text(), "v2", "the purged body never comes back: {}", after.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_for_pass_is_a_property_of_the_response_not_of_one_request() {
    let origin = Origin::start().await;
    origin
        .route("/shared", Reply::ok("shared").header("cache-control", "max-age=60").delay(Duration::from_millis(300)));
    let fresco = Fresco::start(&origin.url(), &[]);
    // RFC 9111 §3.5: not stored for this request, which says nothing about
    // what anonymous clients will get.
    let auth = send("GET", &fresco.url("/shared"), &[("authorization", "Bearer x")]).await;
    assert_eq!(auth.status, 200);
    let nostore = send("GET", &fresco.url("/shared"), &[("cache-control", "no-store")]).await;
    assert_eq!(nostore.status, 200);
    let before = origin.hits("/shared");
    let responses = burst(&fresco.url("/shared"), 20, &[]).await;
    assert!(responses.iter().all(|r| r.status == 200 && r.text() == "shared"));
    assert_eq!(origin.hits("/shared") - before, 1, "the 20 anonymous requests were coalesced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_3_5_an_authenticated_waiter_never_gets_the_anonymous_fill() {
    let origin = Origin::start().await;
    origin.handle("/page", |seen| {
        let who = if seen.headers.contains_key("authorization") { "member" } else { "anonymous" };
        Reply::ok(who).header("cache-control", "max-age=60").delay(Duration::from_millis(500))
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.url("/page");
    let anon = tokio::spawn({
        let u = url.clone();
        async move { get(&u).await }
    });
    // Wait until the anonymous fill is on its way to the origin.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while origin.hits("/page") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the fill never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let member = send("GET", &url, &[("authorization", "Bearer m")]).await;
    assert_eq!(anon.await.unwrap().text(), "anonymous");
    assert_eq!(member.text(), "member", "{}", member.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_fetch_is_the_answer_for_its_waiters() {
    let origin = Origin::start().await;
    origin.route("/hang", Reply::ok("late").header("cache-control", "max-age=60").delay(Duration::from_secs(5)));
    let fresco = Fresco::start(&origin.url(), &["--first-byte-timeout", "1s"]);
    let responses = burst(&fresco.url("/hang"), 20, &[]).await;
    assert!(responses.iter().all(|r| r.status == 504), "{:?}", responses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(origin.hits("/hang"), 1, "one origin request for the 20 clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9211_a_soft_purged_object_served_to_max_stale_says_it_is_stale() {
    let origin = Origin::start().await;
    origin.route("/soft", Reply::ok("old").header("cache-control", "max-age=600").header("etag", "\"1\""));
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/soft")).await;
    let body = json!({"urls": [format!("http://{}/soft", fresco.data)], "mode": "soft"}).to_string();
    let r = crate::harness::invalidate(&fresco, &fresco.token(), body).await;
    assert_eq!(r.status, 202);
    let stale = send("GET", &fresco.url("/soft"), &[("cache-control", "max-stale")]).await;
    let cs = stale.cache_status();
    assert!(cs.contains("detail=invalidated") && !cs.contains("ttl=600"), "{cs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9875_a_cache_group_invalidation_that_cannot_be_logged_is_not_acknowledged() {
    let origin = Origin::start().await;
    origin.route("/save", Reply::ok("saved").header("cache-group-invalidation", "\"product-7\""));
    let mut nats = crate::harness::Nats::start().await;
    let dir = crate::harness::temp_dir("cgi-unlogged");
    let fresco = Fresco::start_in(&dir, &origin.url(), &["--bus", &nats.url(), "--node-id", "edge"]);
    assert_eq!(send("POST", &fresco.url("/save"), &[]).await.status, 200, "logged: the origin's answer");
    nats.stop();
    let lost = send("POST", &fresco.url("/save"), &[]).await;
    assert_eq!(lost.status, 503, "{}", lost.text());
    assert!(lost.cache_status().contains("detail=invalidation-not-logged"), "{}", lost.cache_status());
}
