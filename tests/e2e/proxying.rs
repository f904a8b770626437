//! Proxy behaviour: forwarding headers, errors, bad input, streaming,
//! protocols, configuration and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Fresco, Origin, Reply, eventually, get, metric, send};

#[tokio::test]
async fn rfc9110_7_6_1_hop_by_hop_removed_and_forwarding_headers_added() {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &[]);
    origin.route(
        "/hop",
        Reply::ok("h").header("connection", "x-internal").header("x-internal", "1").header("keep-alive", "timeout=5"),
    );
    let got = send("GET", &fresco.url("/hop"), &[("connection", "x-secret"), ("x-secret", "s"), ("x-keep", "k")]).await;
    let seen = origin.last("/hop").unwrap();
    assert!(!seen.headers.contains_key("x-secret"), "Connection-listed request field removed");
    assert_eq!(seen.headers["x-keep"], "k");
    assert!(seen.headers["via"].to_str().unwrap().contains("fresco"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers["host"].to_str().unwrap().starts_with("127.0.0.1:"), "Host preserved");
    assert_eq!(got.header("x-internal"), None, "Connection-listed response field removed");
    assert_eq!(got.header("keep-alive"), None);
    assert!(got.header("via").unwrap().contains("fresco"));
}

#[tokio::test]
async fn unreachable_origin_gives_502_and_slow_origin_504() {
    let origin = Origin::start().await;
    let dead = Fresco::start("http://127.0.0.1:9", &[]);
    let r = get(&dead.url("/x")).await;
    assert_eq!(r.status, 502);
    assert!(r.cache_status().contains("detail=upstream-connect"), "{}", r.cache_status());
    let fresco = Fresco::start(&origin.url(), &["--first-byte-timeout", "300ms"]);
    origin.route("/slow", Reply::ok("late").delay(Duration::from_secs(2)));
    let r = get(&fresco.url("/slow")).await;
    assert_eq!(r.status, 504);
    assert!(r.cache_status().contains("detail=upstream-timeout"), "{}", r.cache_status());
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_and_the_node_keeps_serving() {
    let origin = Origin::start().await;
    origin.route("/ok", Reply::ok("fine").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &["--max-header-size", "16KiB"]);
    let bad = raw(fresco.data, b"GET /ok HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let garbage = raw(fresco.data, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let big = format!("GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let too_big = raw(fresco.data, big.as_bytes()).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{}", &too_big[..too_big.len().min(200)]);
    let no_host = raw(fresco.data, b"GET /ok HTTP/1.0\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.0 400") || no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert_eq!(get(&fresco.url("/ok")).await.text(), "fine");
}

#[tokio::test]
async fn large_bodies_stream_through_uncached() {
    let origin = Origin::start().await;
    let body = Bytes::from(vec![b'z'; 8 << 20]);
    origin.route("/big", Reply::bytes(body.clone()).header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &["--max-object-size", "1MiB"]);
    for _ in 0..2 {
        let r = get(&fresco.url("/big")).await;
        assert_eq!(r.body.len(), body.len());
        assert!(r.body.iter().all(|b| *b == b'z'));
    }
    assert_eq!(origin.hits("/big"), 2, "over max-object-size: not stored");
    assert!(metric(&fresco, "fresco_store_bytes").await < (1 << 20) as f64);
}

#[tokio::test]
async fn responses_stream_to_the_client_as_they_arrive() {
    let origin = Origin::start().await;
    let finished = Arc::new(AtomicBool::new(false));
    let body = Bytes::from(vec![b's'; 64 * 1024]);
    origin.route(
        "/stream",
        Reply::bytes(body).header("cache-control", "max-age=60").streamed(
            8,
            Duration::from_millis(150),
            finished.clone(),
        ),
    );
    let fresco = Fresco::start(&origin.url(), &[]);
    let resp = crate::harness::client()
        .request(http::Request::get(fresco.url("/stream")).body(http_body_util::Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert!(!finished.load(Ordering::SeqCst), "first bytes reached the client before the origin finished");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(first.data_ref().unwrap().len() + rest.len(), 64 * 1024);
}

#[tokio::test]
async fn http2_cleartext_is_served() {
    let origin = Origin::start().await;
    origin.route("/h2", Reply::ok("two").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &[]);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    for i in 0..2 {
        let req = http::Request::get(fresco.url("/h2")).body(http_body_util::Full::new(Bytes::new())).unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let cs = resp.headers()["cache-status"].to_str().unwrap().to_string();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "two");
        assert_eq!(cs.contains("hit"), i == 1, "{cs}");
    }
}

#[tokio::test]
async fn bad_configuration_stops_the_node_naming_the_key() {
    let err = Fresco::spawn(&["serve", "--origin", "http://127.0.0.1:1", "--memory", "plenty"]).err().unwrap();
    assert!(err.contains("`memory`") && err.contains("plenty"), "{err}");
    let err = Fresco::spawn(&["serve"]).err().unwrap();
    assert!(err.contains("origin"), "{err}");
    let dir = std::env::temp_dir().join(format!("fresco-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fresco.toml");
    std::fs::write(&file, "origin = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nmax_objekt_size = \"1MiB\"\n").unwrap();
    let err = Fresco::spawn(&["serve", "--config", file.to_str().unwrap()]).err().unwrap();
    assert!(err.contains("max_objekt_size"), "{err}");
    let data = dir.join("data");
    let text = format!(
        "origin = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {data:?}\n"
    );
    std::fs::write(&file, text).unwrap();
    let ok = Fresco::spawn(&["serve", "--config", file.to_str().unwrap(), "--max-object-size", "2MiB"]);
    assert!(ok.is_ok(), "file plus flags: {:?}", ok.err());
}

#[tokio::test]
async fn metrics_count_requests_by_cache_status_and_store_contents() {
    let origin = Origin::start().await;
    origin.route("/m", Reply::ok("metric").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(&origin.url(), &[]);
    get(&fresco.url("/m")).await;
    get(&fresco.url("/m")).await;
    get(&fresco.url("/m")).await;
    assert_eq!(get(&fresco.admin_url("/healthz")).await.status, 200);
    assert_eq!(metric(&fresco, "fresco_requests_total{cache=\"hit\"}").await, 2.0);
    assert_eq!(metric(&fresco, "fresco_requests_total{cache=\"miss\"}").await, 1.0);
    assert_eq!(metric(&fresco, "fresco_origin_requests_total{kind=\"fetch\"}").await, 1.0);
    assert_eq!(metric(&fresco, "fresco_store_objects").await, 1.0);
    assert!(metric(&fresco, "fresco_store_bytes").await > 6.0);
}

/// Runs a command and returns its stdout; panics with its stderr on failure.
async fn run(cmd: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(cmd).args(args).output().await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn tls_with_http2_by_alpn() {
    let origin = Origin::start().await;
    origin.route("/tls", Reply::ok("secure").header("cache-control", "max-age=60"));
    let dir = std::env::temp_dir().join(format!("fresco-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"];
    let mut args = vec!["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"];
    args.extend(subject);
    args.extend(["-keyout", key, "-out", cert]);
    run("openssl", &args).await;
    let fresco = Fresco::start(&origin.url(), &["--tls-cert", cert, "--tls-key", key]);
    let port = fresco.data.port();
    let url = format!("https://localhost:{port}/tls");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let curl_args =
        ["-s", "--http2", "--cacert", cert, "--resolve", &resolve, "-D", "-", "-w", "\nversion=%{http_version}", &url];
    let first = run("curl", &curl_args).await;
    assert!(first.contains("version=2"), "{first}");
    assert!(first.contains("secure"), "{first}");
    let second = run("curl", &curl_args).await;
    assert!(second.contains("cache-status: fresco; hit"), "{second}");
    assert_eq!(origin.last("/tls").unwrap().headers["x-forwarded-proto"], "https");
    let bad = Fresco::spawn(&["serve", "--origin", &origin.url(), "--tls-cert", cert]).err().unwrap();
    assert!(bad.contains("tls_key"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits() {
    let origin = Origin::start().await;
    origin
        .route("/slow", Reply::ok("finished").header("cache-control", "max-age=60").delay(Duration::from_millis(800)));
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    // SIGTERM once the request is in flight: the origin has it and holds the
    // answer for 800 ms.
    eventually("the request reaches the origin", Duration::from_secs(10), async || origin.hits("/slow") == 1).await;
    let status = fresco.terminate().await;
    assert!(status.success(), "clean exit: {status}");
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.text()), (200, "finished".to_string()), "the request in flight was answered");
}
