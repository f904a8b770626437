//! Issue 9, the data path: one request must never plant content for later
//! visitors. Each test is an attacker request followed by a victim request;
//! the victim never sees what the attacker shaped.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Fresco, Origin, Reply, get, send};

/// Sends raw bytes on a new connection and returns what came back before
/// the server closed it or went quiet for a moment.
async fn raw(fresco: &Fresco, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(fresco.data).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(800)),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// An origin that reflects the request's host and every header it got.
fn reflecting(origin: &Origin, path: &str) {
    origin.handle(path, |seen| {
        let mut body = format!("path={}\n", seen.path);
        for (k, v) in &seen.headers {
            body.push_str(&format!("{k}={}\n", v.to_str().unwrap_or("?")));
        }
        Reply::ok(&body).header("cache-control", "max-age=60")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_9_3_1_a_get_with_a_body_never_desynchronises_the_upstream_connection() {
    let origin = Origin::start().await;
    origin.route("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    origin.route("/b", Reply::ok("b").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &["--first-byte-timeout", "3s"]);
    for i in 0..20 {
        let attack = format!(
            "GET /a?{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 20\r\n\r\nGET /b HTTP/1.1\r\nX: "
        );
        let reply = raw(&fresco, attack.as_bytes()).await;
        assert!(status_line(&reply).contains("200"), "the attacker's own request is answered: {reply}");
        let victim = get(&fresco.url(&format!("/b?{i}"))).await;
        assert_eq!((victim.status, victim.text()), (200, "b".to_string()), "try {i}");
    }
    let victims: usize = (0..20).map(|i| origin.hits(&format!("/b?{i}"))).sum();
    assert_eq!(victims, 20, "every victim request reached the origin as itself");
    assert_eq!(origin.hits("/b"), 0, "no request was smuggled inside another's body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9110_9_3_1_a_get_with_a_body_over_http2_is_passed_with_its_body_and_not_stored() {
    let origin = Origin::start().await;
    origin.route("/search", Reply::ok("results").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &["--first-byte-timeout", "3s"]);
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    for _ in 0..3 {
        let req = http::Request::get(fresco.url("/search")).body(Full::new(Bytes::from_static(b"{\"q\":1}"))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), h2.request(req)).await.unwrap().unwrap();
        let cs = resp.headers().get("cache-status").unwrap().to_str().unwrap().to_string();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "results");
        assert!(cs.contains("detail=request-body"), "{cs}");
    }
    assert_eq!(origin.hits("/search"), 3, "a GET with content is never answered from the store");
    assert_eq!(get(&fresco.url("/search")).await.text(), "results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_fresco_keys_is_the_path_it_forwards() {
    let origin = Origin::start().await;
    origin.route("/obj/target", Reply::ok("target").header("cache-control", "max-age=60"));
    origin.route("/obj/x/%2e%2e/%2e%2e/obj/target", Reply::ok("attacker").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &[]);
    let attack = get(&fresco.url("/obj/x/%2e%2e/%2e%2e/obj/target")).await;
    assert_eq!(attack.text(), "target", "forwarded normalised, as keyed");
    assert_eq!(get(&fresco.url("/obj/target")).await.text(), "target");
    assert_eq!(origin.hits("/obj/x/%2e%2e/%2e%2e/obj/target"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_3_2_2_an_absolute_form_target_is_forwarded_with_its_own_host() {
    let origin = Origin::start().await;
    reflecting(&origin, "/p");
    let fresco = Fresco::start(&origin.url(), &[]);
    let attack =
        raw(&fresco, b"GET http://victim.example/p HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(status_line(&attack).contains("200"), "{attack}");
    assert!(!attack.contains("evil.example"), "{attack}");
    let victim = raw(&fresco, b"GET /p HTTP/1.1\r\nHost: Victim.Example:80\r\nConnection: close\r\n\r\n").await;
    assert!(victim.contains("host=victim.example\n"), "{victim}");
    assert!(!victim.contains("evil"), "{victim}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_3_2_several_or_invalid_hosts_are_refused() {
    let origin = Origin::start().await;
    reflecting(&origin, "/p");
    let fresco = Fresco::start(&origin.url(), &[]);
    for bad in [
        "GET /p HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: a@b.example\r\nConnection: close\r\n\r\n",
        "GET /p HTTP/1.1\r\nHost: a.example/x\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw(&fresco, bad.as_bytes()).await;
        assert!(status_line(&reply).contains("400"), "{bad:?} -> {reply}");
    }
    assert_eq!(origin.hits("/p"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_steering_headers_never_reach_the_origin_of_a_cacheable_request() {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &[]);
    let names = [
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-scheme",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "forwarded",
        "x-host",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-original-host",
    ];
    for (i, name) in names.iter().enumerate() {
        let path = format!("/page{i}");
        reflecting(&origin, &path);
        let attack = send("GET", &fresco.url(&path), &[(name, "evil.example")]).await;
        assert!(!attack.text().contains("evil"), "{name} reached the origin: {}", attack.text());
        let victim = get(&fresco.url(&path)).await;
        assert!(!victim.text().contains("evil"), "{name} poisoned the cache: {}", victim.text());
    }
    let victim = get(&fresco.url("/page0")).await;
    assert!(victim.text().contains("x-forwarded-proto=http\n"), "Fresco sets what it knows: {}", victim.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steering_header_named_in_key_headers_is_forwarded_and_keyed() {
    let origin = Origin::start().await;
    reflecting(&origin, "/k");
    let dir = crate::harness::temp_dir("key-headers");
    let file = dir.join("fresco.toml");
    std::fs::write(&file, "key_headers = [\"x-forwarded-proto\"]\n").unwrap();
    let fresco = Fresco::start(&origin.url(), &["--config", file.to_str().unwrap()]);
    let https = send("GET", &fresco.url("/k"), &[("x-forwarded-proto", "https")]).await;
    assert!(https.text().contains("x-forwarded-proto=https\n"), "{}", https.text());
    let plain = send("GET", &fresco.url("/k"), &[("x-forwarded-proto", "http")]).await;
    assert!(plain.text().contains("x-forwarded-proto=http\n"), "a separate object: {}", plain.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stale_never_hands_one_users_page_to_another() {
    let origin = Origin::start().await;
    origin.handle("/me", |seen| {
        let who = seen.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string();
        Reply::ok(&format!("page of {who}")).header("cache-control", "max-age=0")
    });
    origin.handle("/me-etag", |seen| {
        let who = seen.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string();
        Reply::ok(&format!("page of {who}")).header("cache-control", "max-age=0").header("etag", &format!("\"{who}\""))
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    for path in ["/me", "/me-etag"] {
        let alice = send("GET", &fresco.url(path), &[("cookie", "user=alice")]).await;
        assert_eq!(alice.text(), "page of user=alice");
        let attacker = send("GET", &fresco.url(path), &[("cache-control", "max-stale")]).await;
        assert_eq!(attacker.text(), "page of anonymous", "{path}: {}", attacker.cache_status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_cache_deception_a_personal_page_under_an_asset_path_is_not_shared() {
    let origin = Origin::start().await;
    // The origin ignores the suffix and sends the account page, with only a
    // Last-Modified (heuristically cacheable, RFC 9111 §4.2.2).
    origin.handle("/account/settings.css", |seen| {
        let who = seen.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_string();
        Reply::ok(&format!("account of {who}"))
            .header("content-type", "text/html")
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    let victim = send("GET", &fresco.url("/account/settings.css"), &[("cookie", "session=alice")]).await;
    assert_eq!(victim.text(), "account of session=alice");
    let attacker = get(&fresco.url("/account/settings.css")).await;
    assert_eq!(attacker.text(), "account of anonymous", "{}", attacker.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_that_names_a_content_type_stores_nothing_else_under_its_path() {
    let origin = Origin::start().await;
    origin.route(
        "/static/account.css",
        Reply::ok("<html>").header("content-type", "text/html").header("cache-control", "max-age=60"),
    );
    origin.route(
        "/static/site.css",
        Reply::ok("body{}").header("content-type", "text/css").header("cache-control", "max-age=60"),
    );
    let dir = crate::harness::temp_dir("deception-class");
    let file = dir.join("fresco.toml");
    std::fs::write(&file, "[[class]]\nname = \"css\"\npath_prefix = \"/static/\"\ncontent_type = \"text/css\"\n")
        .unwrap();
    let fresco = Fresco::start(&origin.url(), &["--config", file.to_str().unwrap()]);
    let first = get(&fresco.url("/static/account.css")).await;
    assert!(first.cache_status().contains("detail=content-type"), "{}", first.cache_status());
    assert!(!get(&fresco.url("/static/account.css")).await.is_hit());
    get(&fresco.url("/static/site.css")).await;
    assert!(get(&fresco.url("/static/site.css")).await.is_hit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_validations_are_coalesced_and_use_validators() {
    let origin = Origin::start().await;
    origin.handle("/v", |seen| {
        let reply = if seen.headers.contains_key("if-none-match") { Reply::ok("").status(304) } else { Reply::ok("v") };
        reply.header("etag", "\"1\"").header("cache-control", "max-age=60").delay(Duration::from_millis(300))
    });
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/v")).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let u = fresco.url("/v");
            tokio::spawn(async move { send("GET", &u, &[("cache-control", "no-cache")]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().text(), "v");
    }
    assert_eq!(origin.hits("/v"), 2, "one fill, then one shared validation for the 20");
    assert!(origin.last("/v").unwrap().headers.contains_key("if-none-match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_framing_errors_are_client_errors_and_unsafe_methods_are_not_forwarded() {
    let origin = Origin::start().await;
    origin.route("/up", Reply::ok("ok"));
    let fresco = Fresco::start(&origin.url(), &[]);
    let malformed =
        raw(&fresco, b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
            .await;
    assert!(status_line(&malformed).contains("400"), "{malformed}");
    let gzip = raw(&fresco, b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").await;
    assert!(status_line(&gzip).contains("501"), "{gzip}");
    for method in ["CONNECT x:443", "TRACE /up"] {
        let reply = raw(&fresco, format!("{method} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(status_line(&reply).contains("405"), "{method}: {reply}");
    }
    assert_eq!(origin.hits("/up"), 0);
    assert_eq!(get(&fresco.url("/up")).await.text(), "ok", "the next client is served");
    let origin_errors = crate::harness::metric(&fresco, "fresco_origin_errors_total").await;
    assert_eq!(origin_errors, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_past_max_request_body_gets_413() {
    let origin = Origin::start().await;
    origin.route("/upload", Reply::ok("stored"));
    let fresco = Fresco::start(&origin.url(), &["--max-request-body", "1KiB"]);
    let chunk = "x".repeat(1000);
    let mut request =
        String::from("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for _ in 0..4 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    let reply = raw(&fresco, request.as_bytes()).await;
    assert!(status_line(&reply).contains("413"), "{reply}");
    let small = crate::harness::send_body("POST", &fresco.url("/upload"), &[], Bytes::from_static(b"ok")).await;
    assert_eq!(small.status, 200, "a body within the limit is forwarded");
}
