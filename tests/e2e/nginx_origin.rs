//! nginx as the origin (issue 9): a real nginx on loopback with upstream
//! keep-alive, a real fresco in front, attacked over raw TCP (HTTP/1.1) and
//! HTTP/2 cleartext. nginx frames requests strictly by Content-Length and
//! keeps connections open, which is what turns a framing mistake in a proxy
//! into one user's bytes read as part of another user's request.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Fresco, Nginx, send};

/// A real nginx serving a few static files and echo locations, logging the
/// connection of every request.
async fn nginx() -> Nginx {
    // keepalive_timeout 60s and unlimited keepalive_requests: every
    // upstream connection fresco pools stays open and is reused.
    let nginx = Nginx::start("nginx", |d, port| {
        format!(
            "  log_format conn '$connection $request_uri';\n  access_log {d}/access.log conn;\n\
               keepalive_timeout 60s;\n  keepalive_requests 1000000;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 location /static/ {{ add_header Cache-Control \"max-age=60\"; }}\n\
                 location /echo/ {{ add_header Cache-Control \"max-age=60\"; return 200 \"uri=$request_uri host=$http_host\\n\"; }}\n\
                 location /private/ {{ add_header Cache-Control \"private\"; return 200 \"uri=$request_uri host=$http_host\\n\"; }}\n\
               }}"
        )
    })
    .await;
    std::fs::create_dir_all(nginx.file("static")).unwrap();
    std::fs::write(nginx.file("static/a.txt"), "static a\n").unwrap();
    std::fs::write(nginx.file("static/b.txt"), "static b\n").unwrap();
    nginx
}

/// (requests, distinct connections) nginx logged, and whether any request
/// line was for `/echo/smuggled`.
fn traffic(nginx: &Nginx) -> (usize, usize, bool) {
    let log = nginx.access_log();
    let connections: std::collections::HashSet<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
    (log.lines().count(), connections.len(), log.contains("/echo/smuggled"))
}

/// The attack only bites through a reused upstream connection: check that
/// fresco did reuse them, so that a pass means something.
fn assert_reused_and_clean(nginx: &Nginx) {
    let (requests, connections, smuggled) = traffic(nginx);
    assert!(requests >= 100, "the requests reached nginx: {requests}");
    assert!(
        connections * 4 <= requests,
        "upstream keep-alive in use: {connections} connections for {requests} requests"
    );
    assert!(!smuggled, "nginx answered a smuggled request");
}

/// Writes `request` on a new connection and reads until the peer closes
/// (every request here says `Connection: close`), at most 10 s.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A body that is itself a complete request: if a hop forwarded it without
/// its framing, nginx would answer it as a second request on that
/// connection, and the next user would get `/echo/smuggled`.
const SMUGGLED: &str = "GET /echo/smuggled HTTP/1.1\r\nHost: evil.example\r\nX-Pad: ";

/// The three ways to give a GET or HEAD content over HTTP/1.1.
fn attack(kind: usize, path: &str) -> Vec<u8> {
    let body = format!("{SMUGGLED}{}\r\n\r\n", "p".repeat(kind * 7));
    let head = |method: &str, framing: String| {
        format!("{method} {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n{framing}\r\n{body}")
    };
    match kind % 3 {
        0 => head("GET", format!("Content-Length: {}\r\n", body.len())),
        1 => {
            let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
            format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}")
        }
        _ => head("HEAD", format!("Content-Length: {}\r\n", body.len())),
    }
    .into_bytes()
}

/// A normal request on its own connection must get its own response.
async fn victim(fresco: &Fresco, path: &str, i: usize) {
    let r = send("GET", &fresco.url(path), &[("host", "shop.example")]).await;
    assert_eq!(
        (r.status, r.text()),
        (200, format!("uri={path} host=shop.example\n")),
        "try {i}: the next client got another request's response ({})",
        r.cache_status()
    );
}

/// Issue 9 item 1, RFC 9112 §6.3: a GET or HEAD with content (by
/// Content-Length or chunked), followed on another connection by a normal
/// request: against nginx with upstream keep-alive the normal request gets
/// its own response, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9112_6_3_get_with_a_body_never_desynchronises_nginx_over_http1() {
    let nginx = nginx().await;
    let fresco = Fresco::start(&nginx.url(), &[]);
    for i in 0..100 {
        let attack_path = format!("/echo/attack-{i}");
        let reply = raw(fresco.data, &attack(i, &attack_path)).await;
        assert!(!reply.contains("smuggled"), "try {i}: the body was answered as a request: {reply}");
        // Same URL for the victim half the time (was the attacker's answer
        // stored?), a fresh one otherwise (was the pooled connection
        // corrupted?).
        let path = if i % 2 == 0 { attack_path } else { format!("/echo/victim-{i}") };
        victim(&fresco, &path, i).await;
        victim(&fresco, "/echo/shared", i).await;
    }
    assert_reused_and_clean(&nginx);
}

/// A response to a GET with content may depend on that content: it is
/// never stored, so nothing the attacker sent can answer anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_content_is_passed_through_and_never_stored() {
    let nginx = nginx().await;
    let fresco = Fresco::start(&nginx.url(), &[]);
    for kind in 0..3 {
        let path = format!("/echo/body-{kind}");
        let reply = raw(fresco.data, &attack(kind, &path)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{kind}: {reply}");
        let next = send("GET", &fresco.url(&path), &[("host", "shop.example")]).await;
        assert!(!next.is_hit(), "{kind}: the answer to a request with content was stored: {}", next.cache_status());
        assert!(next.cache_status().contains("stored"), "{kind}: a normal request is stored: {}", next.cache_status());
    }
}

/// The same attack from an HTTP/2 client (DATA frames on a GET), with the
/// victims on their own HTTP/2 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9113_8_1_get_with_a_body_never_desynchronises_nginx_over_http2() {
    let nginx = nginx().await;
    let fresco = Fresco::start(&nginx.url(), &[]);
    let h2 = || {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>()
    };
    for i in 0..100 {
        let body = format!("{SMUGGLED}{}\r\n\r\n", "q".repeat(i % 11));
        let attack_path = format!("/echo/h2-attack-{i}");
        let req = http::Request::get(fresco.url(&attack_path))
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), h2().request(req))
            .await
            .unwrap_or_else(|_| panic!("try {i}: no answer to the attack within 10 s"))
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&text).contains("smuggled"), "try {i}");
        let path = if i % 2 == 0 { attack_path } else { format!("/echo/h2-victim-{i}") };
        let req = http::Request::get(fresco.url(&path)).body(Full::default()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), h2().request(req))
            .await
            .unwrap_or_else(|_| panic!("try {i}: the victim got no answer within 10 s"))
            .unwrap();
        let status = resp.status();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            (status.as_u16(), String::from_utf8_lossy(&text).into_owned()),
            // HTTP/2's :authority (the URL's) is the host (RFC 9113 §8.3.1).
            (200, format!("uri={path} host={}\n", fresco.data)),
            "try {i}: the next client got another request's response"
        );
        victim(&fresco, "/echo/shared", i).await;
    }
    assert_reused_and_clean(&nginx);
}

/// Issue 9 item 2, RFC 3986 §6.2.2.3: a path whose (encoded) dot segments
/// nginx resolves is forwarded as it is keyed, so nginx's answer names the
/// object it is stored under; and an absolute-form target is forwarded with
/// its own authority as Host (RFC 9112 §3.2.2), not the attacker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_host_variants_cannot_poison_what_nginx_answers() {
    let nginx = nginx().await;
    let fresco = Fresco::start(&nginx.url(), &[]);
    let attacks: [&[u8]; 4] = [
        b"GET /echo/x/%2e%2e/%2e%2e/echo/target HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        b"GET /echo/./a/../target2 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        b"GET /static/x/%2E%2E/b.txt HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        b"GET http://shop.example/echo/target3 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    ];
    for a in attacks {
        let reply = raw(fresco.data, a).await;
        assert!(!reply.contains("evil.example") && !reply.contains("%2e") && !reply.contains(".."), "{reply}");
    }
    for path in ["/echo/target", "/echo/target2", "/echo/target3"] {
        let r = send("GET", &fresco.url(path), &[("host", "shop.example")]).await;
        assert_eq!(r.text(), format!("uri={path} host=shop.example\n"), "{}", r.cache_status());
        assert!(r.is_hit(), "the attack filled the right key with the right answer: {}", r.cache_status());
    }
    let b = send("GET", &fresco.url("/static/b.txt"), &[("host", "shop.example")]).await;
    assert_eq!(b.text(), "static b\n");
    let a = send("GET", &fresco.url("/static/a.txt"), &[("host", "shop.example")]).await;
    assert_eq!(a.text(), "static a\n");
}
