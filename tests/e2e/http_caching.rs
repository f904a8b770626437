//! RFC 9111 behaviour observed from outside: a real origin, a real node.

use std::time::Duration;

use crate::harness::{Fresco, Origin, Reply, get, send, wait_until_stale};

async fn setup() -> (Origin, Fresco) {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &[]);
    (origin, fresco)
}

#[tokio::test]
async fn rfc9111_4_miss_then_hit_with_age_and_cache_status() {
    let (origin, fresco) = setup().await;
    origin.route("/a", Reply::ok("hello").header("cache-control", "max-age=60"));
    let first = get(&fresco.url("/a")).await;
    assert_eq!(first.text(), "hello");
    assert!(first.cache_status().contains("fwd=uri-miss"), "{}", first.cache_status());
    assert!(first.cache_status().contains("stored"));
    let second = get(&fresco.url("/a")).await;
    assert_eq!(second.text(), "hello");
    assert!(second.is_hit(), "{}", second.cache_status());
    assert!(second.header("age").is_some(), "§5.1: Age on a response from cache");
    assert_eq!(origin.hits("/a"), 1);
}

#[tokio::test]
async fn rfc9111_4_2_3_age_from_upstream_counts() {
    let (origin, fresco) = setup().await;
    origin.route("/aged", Reply::ok("x").header("cache-control", "max-age=100").header("age", "40"));
    get(&fresco.url("/aged")).await;
    let hit = get(&fresco.url("/aged")).await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((40..=45).contains(&age), "age {age}");
    assert!(hit.cache_status().contains("ttl=6"), "{}", hit.cache_status());
}

#[tokio::test]
async fn rfc9111_5_2_2_10_s_maxage_overrides_max_age_zero() {
    let (origin, fresco) = setup().await;
    origin.route("/s", Reply::ok("s").header("cache-control", "max-age=0, s-maxage=60"));
    get(&fresco.url("/s")).await;
    assert!(get(&fresco.url("/s")).await.is_hit());
    assert_eq!(origin.hits("/s"), 1);
}

#[tokio::test]
async fn rfc9111_5_2_2_7_private_is_never_stored() {
    let (origin, fresco) = setup().await;
    origin.route("/p", Reply::ok("mine").header("cache-control", "private, s-maxage=60, public"));
    let first = get(&fresco.url("/p")).await;
    assert!(first.cache_status().contains("detail=private"), "{}", first.cache_status());
    get(&fresco.url("/p")).await;
    assert_eq!(origin.hits("/p"), 2);
}

#[tokio::test]
async fn rfc9111_5_2_2_7_qualified_private_fields_are_not_stored() {
    let (origin, fresco) = setup().await;
    origin.route(
        "/qp",
        Reply::ok("page").header("cache-control", "max-age=60, private=\"x-user\"").header("x-user", "alice"),
    );
    assert_eq!(get(&fresco.url("/qp")).await.header("x-user"), Some("alice"));
    let hit = get(&fresco.url("/qp")).await;
    assert!(hit.is_hit());
    assert_eq!(hit.header("x-user"), None, "alice's field must not reach the next user");
}

#[tokio::test]
async fn rfc9111_5_2_2_5_no_store_and_set_cookie_are_not_stored() {
    let (origin, fresco) = setup().await;
    origin.route("/ns", Reply::ok("n").header("cache-control", "no-store, max-age=60"));
    origin.route("/cookie", Reply::ok("c").header("cache-control", "max-age=60").header("set-cookie", "sid=alice"));
    for _ in 0..2 {
        get(&fresco.url("/ns")).await;
        get(&fresco.url("/cookie")).await;
    }
    assert_eq!(origin.hits("/ns"), 2);
    assert_eq!(origin.hits("/cookie"), 2);
}

#[tokio::test]
async fn rfc9111_3_5_authenticated_responses_are_shared_only_when_marked() {
    let (origin, fresco) = setup().await;
    origin.route("/mine", Reply::ok("secret").header("cache-control", "max-age=60"));
    origin.route("/shared", Reply::ok("everyone").header("cache-control", "max-age=60, public"));
    let alice = [("authorization", "Bearer alice")];
    let first = send("GET", &fresco.url("/mine"), &alice).await;
    assert!(first.cache_status().contains("detail=authorization"), "{}", first.cache_status());
    assert!(!get(&fresco.url("/mine")).await.is_hit(), "alice's response was not stored for others");
    let again = send("GET", &fresco.url("/mine"), &alice).await;
    assert!(!again.is_hit(), "an anonymous copy does not answer an authenticated request");
    send("GET", &fresco.url("/shared"), &alice).await;
    assert!(get(&fresco.url("/shared")).await.is_hit(), "public allows sharing (§3.5)");
    assert!(send("GET", &fresco.url("/shared"), &alice).await.is_hit());
}

/// RFC 9111 §4: a response that was not stored answers only the requests
/// that shared its fetch while it ran, never the next request, even one
/// sent the moment the previous response was read to its end (the fetch
/// may not have left the in-flight table yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_fetch_is_not_joined_by_the_next_request() {
    let (origin, fresco) = setup().await;
    // Eight clients at once, each sending its requests one after another,
    // so the node is busy enough for a finished fetch to linger.
    let paths: Vec<String> = (0..8).map(|i| format!("/seq{i}")).collect();
    for (i, path) in paths.iter().enumerate() {
        let reply = if i % 2 == 0 {
            Reply::ok("x").header("cache-control", "no-store")
        } else {
            Reply::ok("y").header("expires", "0")
        };
        origin.route(path, reply);
    }
    let clients = paths.iter().map(|path| {
        let url = fresco.url(path);
        tokio::spawn(async move {
            for i in 0..60 {
                let got = get(&url).await;
                assert!(!got.cache_status().contains("collapsed"), "{url} request {i}: {}", got.cache_status());
            }
        })
    });
    for c in clients.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    for path in &paths {
        assert_eq!(origin.hits(path), 60, "{path}: every request went to the origin");
    }
}

#[tokio::test]
async fn rfc9111_5_3_invalid_expires_is_already_stale() {
    let (origin, fresco) = setup().await;
    origin.route("/exp0", Reply::ok("e").header("expires", "0").header("etag", "\"e1\""));
    get(&fresco.url("/exp0")).await;
    let second = get(&fresco.url("/exp0")).await;
    assert!(!second.is_hit(), "{}", second.cache_status());
    assert_eq!(origin.hits("/exp0"), 2);
    assert_eq!(origin.last("/exp0").unwrap().headers["if-none-match"], "\"e1\"", "§4.3.1: revalidated with the ETag");
}

#[tokio::test]
async fn rfc9111_4_1_vary_keeps_variants_side_by_side() {
    let (origin, fresco) = setup().await;
    origin.handle("/v", |seen| {
        let lang = seen.headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("none").to_string();
        Reply::ok(&format!("lang={lang}")).header("cache-control", "max-age=60").header("vary", "Accept-Language")
    });
    for lang in ["en", "fr"] {
        let r = send("GET", &fresco.url("/v"), &[("accept-language", lang)]).await;
        assert_eq!(r.text(), format!("lang={lang}"));
    }
    for lang in ["en", "fr"] {
        let r = send("GET", &fresco.url("/v"), &[("accept-language", lang)]).await;
        assert!(r.is_hit(), "{lang}: {}", r.cache_status());
        assert_eq!(r.text(), format!("lang={lang}"));
    }
    let other = send("GET", &fresco.url("/v"), &[("accept-language", "de")]).await;
    assert!(other.cache_status().contains("fwd=vary-miss"), "{}", other.cache_status());
    assert_eq!(origin.hits("/v"), 3);
}

#[tokio::test]
async fn rfc9111_4_1_vary_star_never_matches() {
    let (origin, fresco) = setup().await;
    origin.route("/star", Reply::ok("*").header("cache-control", "max-age=60").header("vary", "*"));
    get(&fresco.url("/star")).await;
    get(&fresco.url("/star")).await;
    assert_eq!(origin.hits("/star"), 2);
}

#[tokio::test]
async fn rfc9111_4_3_2_client_validators_answered_from_cache() {
    let (origin, fresco) = setup().await;
    origin.route(
        "/etag",
        Reply::ok("body")
            .header("cache-control", "max-age=60")
            .header("etag", "W/\"v1\"")
            .header("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT"),
    );
    get(&fresco.url("/etag")).await;
    let inm = send("GET", &fresco.url("/etag"), &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(inm.status, 304, "weak comparison matches");
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), Some("W/\"v1\""));
    let ims = send("GET", &fresco.url("/etag"), &[("if-modified-since", "Mon, 02 Nov 2026 00:00:00 GMT")]).await;
    assert_eq!(ims.status, 304);
    let changed = send("GET", &fresco.url("/etag"), &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "body");
    assert_eq!(origin.hits("/etag"), 1);
}

#[tokio::test]
async fn rfc9111_4_3_4_revalidation_304_updates_stored_headers() {
    let (origin, fresco) = setup().await;
    origin.handle("/reval", |seen| {
        if seen.headers.get("if-none-match").is_some_and(|v| v == "\"r1\"") {
            Reply::ok("")
                .status(304)
                .header("etag", "\"r1\"")
                .header("cache-control", "max-age=60")
                .header("x-version", "2")
        } else {
            Reply::ok("original").header("etag", "\"r1\"").header("cache-control", "max-age=1").header("x-version", "1")
        }
    });
    let stored = get(&fresco.url("/reval")).await;
    assert_eq!(stored.header("x-version"), Some("1"));
    wait_until_stale(&fresco, "/reval", &stored).await;
    let revalidated = get(&fresco.url("/reval")).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), "original", "the stored body is reused");
    assert_eq!(revalidated.header("x-version"), Some("2"), "updated from the 304");
    assert!(revalidated.cache_status().contains("fwd=stale; fwd-status=304"), "{}", revalidated.cache_status());
    let hit = get(&fresco.url("/reval")).await;
    assert!(hit.is_hit(), "fresh again for 60 s: {}", hit.cache_status());
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(origin.hits("/reval"), 2);
}

#[tokio::test]
async fn rfc9111_5_2_1_request_directives() {
    let (origin, fresco) = setup().await;
    origin.route("/rd", Reply::ok("r").header("cache-control", "max-age=60").header("etag", "\"rd\""));
    let miss = send("GET", &fresco.url("/rd"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(miss.status, 504, "§5.2.1.7");
    get(&fresco.url("/rd")).await;
    let cached = send("GET", &fresco.url("/rd"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(cached.status, 200);
    let nc = send("GET", &fresco.url("/rd"), &[("cache-control", "no-cache")]).await;
    assert!(nc.cache_status().contains("fwd=request"), "{}", nc.cache_status());
    let pragma = send("GET", &fresco.url("/rd"), &[("pragma", "no-cache")]).await;
    assert!(pragma.cache_status().contains("fwd=request"), "§5.4: {}", pragma.cache_status());
    let fresh_enough = send("GET", &fresco.url("/rd"), &[("cache-control", "min-fresh=30")]).await;
    assert!(fresh_enough.is_hit());
    let too_demanding = send("GET", &fresco.url("/rd"), &[("cache-control", "min-fresh=3600")]).await;
    assert!(too_demanding.cache_status().contains("fwd=request"));
}

#[tokio::test]
async fn rfc9111_5_2_1_2_max_stale_accepts_stale() {
    let (origin, fresco) = setup().await;
    origin.route("/ms", Reply::ok("old").header("cache-control", "max-age=1"));
    let stored = get(&fresco.url("/ms")).await;
    wait_until_stale(&fresco, "/ms", &stored).await;
    let stale_ok = send("GET", &fresco.url("/ms"), &[("cache-control", "max-stale")]).await;
    assert!(stale_ok.is_hit(), "{}", stale_ok.cache_status());
    // RFC 9211 §2.4: ttl is whole seconds, negative once stale; stale by less
    // than a second it reads 0.
    let ttl = stale_ok.cache_status().split(';').find_map(|p| p.trim().strip_prefix("ttl=")?.parse::<i64>().ok());
    assert!(ttl.is_some_and(|t| t <= 0), "{}", stale_ok.cache_status());
    assert_eq!(origin.hits("/ms"), 1);
}

#[tokio::test]
async fn rfc9111_4_4_unsafe_methods_invalidate_target_and_location() {
    let (origin, fresco) = setup().await;
    origin.route("/cart", Reply::ok("cart").header("cache-control", "max-age=60"));
    origin.route("/cart/1", Reply::ok("item").header("cache-control", "max-age=60"));
    origin.route("/other", Reply::ok("other").header("cache-control", "max-age=60"));
    origin.route(
        "/cart/add",
        Reply::ok("added")
            .status(201)
            .header("location", "/cart/1")
            .header("content-location", "http://elsewhere.test/other"),
    );
    origin.route("/cart/fail", Reply::ok("nope").status(500));
    for p in ["/cart", "/cart/1", "/other"] {
        get(&fresco.url(p)).await;
    }
    // An error response invalidates nothing.
    assert_eq!(crate::harness::send("POST", &fresco.url("/cart/fail"), &[]).await.status, 500);
    assert!(get(&fresco.url("/cart/1")).await.is_hit());
    let post = crate::harness::send("POST", &fresco.url("/cart/add"), &[]).await;
    assert_eq!(post.status, 201);
    assert!(post.cache_status().contains("fwd=method"), "{}", post.cache_status());
    assert!(!get(&fresco.url("/cart/add")).await.is_hit());
    assert!(!get(&fresco.url("/cart/1")).await.is_hit(), "same-origin Location invalidated");
    assert!(get(&fresco.url("/other")).await.is_hit(), "other-origin Content-Location ignored");
    let put = crate::harness::send("PUT", &fresco.url("/cart"), &[]).await;
    assert_eq!(put.status, 200);
    assert!(!get(&fresco.url("/cart")).await.is_hit(), "target URI invalidated");
}

/// RFC 9213 §2.1-2.2: CDN-Cache-Control governs and is forwarded for CDNs
/// downstream (removed only when configured); Surrogate-Control is ours and
/// removed; a CDN-Cache-Control with a directive of the wrong type is
/// ignored as a whole.
#[tokio::test]
async fn rfc9213_cdn_cache_control_governs_and_is_forwarded() {
    let (origin, fresco) = setup().await;
    origin.route("/cdn", Reply::ok("c").header("cache-control", "no-store").header("cdn-cache-control", "max-age=60"));
    origin.route("/sc", Reply::ok("s").header("cache-control", "max-age=0").header("surrogate-control", "max-age=60"));
    for path in ["/cdn", "/sc"] {
        let first = get(&fresco.url(path)).await;
        assert_eq!(first.header("surrogate-control"), None);
        assert!(get(&fresco.url(path)).await.is_hit(), "{path}");
    }
    let hit = get(&fresco.url("/cdn")).await;
    assert_eq!(hit.header("cache-control"), Some("no-store"), "browser directive kept");
    assert_eq!(hit.header("cdn-cache-control"), Some("max-age=60"), "forwarded downstream");
    origin.route(
        "/typed",
        Reply::ok("t").header("cache-control", "no-store").header("cdn-cache-control", "max-age=60, no-store=1"),
    );
    get(&fresco.url("/typed")).await;
    assert!(!get(&fresco.url("/typed")).await.is_hit(), "the invalid field is ignored: Cache-Control's no-store");
    let stripping = Fresco::start(&origin.url(), &["--strip-cdn-cache-control", "true"]);
    assert_eq!(get(&stripping.url("/cdn")).await.header("cdn-cache-control"), None, "removed when configured");
}

#[tokio::test]
async fn rfc9111_4_3_5_head_served_from_stored_get() {
    let (origin, fresco) = setup().await;
    origin.route("/h", Reply::ok("0123456789").header("cache-control", "max-age=60"));
    get(&fresco.url("/h")).await;
    let head = send("HEAD", &fresco.url("/h"), &[]).await;
    assert!(head.is_hit());
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    assert_eq!(origin.hits("/h"), 1);
}

#[tokio::test]
async fn rfc9111_4_2_2_heuristic_freshness_from_last_modified() {
    let (origin, fresco) = setup().await;
    origin.route("/lm", Reply::ok("lm").header("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"));
    origin.route(
        "/lm302",
        Reply::ok("lm").status(302).header("location", "/x").header("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
    );
    get(&fresco.url("/lm")).await;
    assert!(get(&fresco.url("/lm")).await.is_hit(), "200 is heuristically cacheable");
    get(&fresco.url("/lm302")).await;
    get(&fresco.url("/lm302")).await;
    assert_eq!(origin.hits("/lm302"), 2, "302 is not heuristically cacheable");
}

#[tokio::test]
async fn rfc9111_4_2_4_must_revalidate_gives_504_when_origin_is_down() {
    let (mut origin, fresco) = setup().await;
    origin.route("/mr", Reply::ok("m").header("cache-control", "max-age=1, must-revalidate, stale-if-error=600"));
    origin.route("/sie", Reply::ok("kept").header("cache-control", "max-age=1, stale-if-error=600"));
    let stored = [get(&fresco.url("/mr")).await, get(&fresco.url("/sie")).await];
    origin.stop();
    wait_until_stale(&fresco, "/mr", &stored[0]).await;
    wait_until_stale(&fresco, "/sie", &stored[1]).await;
    let mr = get(&fresco.url("/mr")).await;
    assert_eq!(mr.status, 504, "{}", mr.cache_status());
    let sie = get(&fresco.url("/sie")).await;
    assert_eq!(sie.status, 200);
    assert_eq!(sie.text(), "kept");
    assert!(sie.cache_status().contains("detail=stale-if-error"), "{}", sie.cache_status());
    origin.restart().await;
    let back = get(&fresco.url("/mr")).await;
    assert_eq!(back.status, 200, "served again once the origin is back");
}

#[tokio::test]
async fn rfc9111_4_2_4_stale_is_not_served_without_permission() {
    let (origin, fresco) = setup().await;
    origin.route("/plain", Reply::ok("p").header("cache-control", "max-age=1"));
    let stored = get(&fresco.url("/plain")).await;
    origin.stop();
    wait_until_stale(&fresco, "/plain", &stored).await;
    let r = get(&fresco.url("/plain")).await;
    assert!(r.status == 502 || r.status == 504, "status {}", r.status);
    assert!(r.cache_status().contains("detail=upstream-connect"), "{}", r.cache_status());
}

#[tokio::test]
async fn rfc9211_cache_status_reports_upstream_status_and_ttl() {
    let (origin, fresco) = setup().await;
    origin.route("/cs", Reply::ok("x").header("cache-control", "max-age=300"));
    let miss = get(&fresco.url("/cs")).await;
    assert_eq!(miss.cache_status(), "fresco; fwd=uri-miss; fwd-status=200; stored; ttl=300");
}

#[tokio::test]
async fn request_coalescing_sends_one_origin_request() {
    let (origin, fresco) = setup().await;
    origin
        .route("/slow", Reply::ok("slow body").header("cache-control", "max-age=60").delay(Duration::from_millis(300)));
    let url = fresco.url("/slow");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn({
                let u = url.clone();
                async move { get(&u).await }
            })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.text(), "slow body");
        collapsed += r.cache_status().contains("collapsed") as usize;
    }
    assert_eq!(origin.hits("/slow"), 1);
    assert!(collapsed >= 40, "collapsed {collapsed}");
}

#[tokio::test]
async fn rfc9110_14_ranges_are_served_from_a_stored_response() {
    let (origin, fresco) = setup().await;
    origin.route("/file", Reply::ok("0123456789").header("cache-control", "max-age=60").header("etag", "\"f1\""));
    // A miss asks for the range's slice; this origin ignores Range, so
    // its 200 is stored whole and the range answered from it.
    let first = send("GET", &fresco.url("/file"), &[("range", "bytes=2-4")]).await;
    assert_eq!((first.status, first.text()), (206, "234".to_string()));
    let part = send("GET", &fresco.url("/file"), &[("range", "bytes=2-4")]).await;
    assert_eq!((part.status, part.text()), (206, "234".to_string()));
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    let tail = send("GET", &fresco.url("/file"), &[("range", "bytes=-3")]).await;
    assert_eq!(tail.text(), "789");
    let beyond = send("GET", &fresco.url("/file"), &[("range", "bytes=20-")]).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */10"));
    let changed = send("GET", &fresco.url("/file"), &[("range", "bytes=0-1"), ("if-range", "\"f0\"")]).await;
    assert_eq!(changed.status, 200, "If-Range mismatch: the whole representation");
    assert_eq!(origin.hits("/file"), 1);
    assert_eq!(origin.last("/file").unwrap().headers.get("range").unwrap(), "bytes=0-1048575", "one slice asked for");
}
