//! Facing the internet: hostile clients on raw sockets (silent, trickling,
//! flooding), an origin that closes keep-alive connections (real nginx) or
//! hangs, and the admin API's guard rails. Every loop is bounded in count
//! and time; assertions are about answers, never about timings.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Fresco, Got, Origin, Reply, eventually, free_port, get, metric, send, send_body, temp_dir};

/// A real nginx on loopback, stopped when dropped.
struct Nginx {
    port: u16,
    child: Child,
}

impl Nginx {
    /// nginx answering every path with `200 ok` and `Cache-Control:
    /// no-store` (so every request through Fresco reaches it), closing idle
    /// keep-alive connections after `keepalive`.
    async fn start(keepalive: &str) -> Nginx {
        let dir = temp_dir("nginx");
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             keepalive_timeout {keepalive};\n keepalive_requests 100000;\n\
             server {{\n  listen 127.0.0.1:{port};\n  location / {{ add_header Cache-Control no-store; return 200 \"ok\\n\"; }}\n }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut child = Command::new("nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (scripts/test.sh installs it)");
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Nginx { port, child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 9112 §9.3.1 (retrying requests): nginx closes an idle keep-alive
/// connection after 1 s; requests spaced right around that reuse a pooled
/// connection nginx is closing at that moment. None may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_connections_nginx_is_closing_never_get_502() {
    let nginx = Nginx::start("1s").await;
    // A pool timeout far above nginx's keep-alive, so only the retry protects.
    let fresco = Fresco::start(&nginx.url(), &["--upstream-idle-timeout", "60s"]);
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let url = fresco.url("/spaced");
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..16u64 {
                let got = get(&url).await;
                if got.status != 200 {
                    failures.push(format!("request {i}: {} {}", got.status, got.cache_status()));
                }
                // 990 ms to 1010 ms: the window where nginx's timer fires.
                tokio::time::sleep(Duration::from_millis(990 + (i * 7 + c * 3) % 21)).await;
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "requests failed on closed upstream connections: {failures:?}");
}

/// Issue 9 item 8: distinct misses to a hanging origin open at most
/// `upstream_max_connections` connections; a bounded number wait; the
/// rest get 503 at once, saying why in Cache-Status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_to_a_hanging_origin_are_capped_and_the_overflow_gets_503() {
    let origin = Origin::start().await;
    for i in 0..20 {
        origin.route(&format!("/hang/{i}"), Reply::ok("late").delay(Duration::from_secs(30)));
    }
    origin.route("/fast", Reply::ok("fast").header("cache-control", "no-store"));
    let fresco = Fresco::start(
        &origin.url(),
        &["--upstream-max-connections", "4", "--upstream-queue", "4", "--first-byte-timeout", "4s"],
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..20 {
        let (url, tx) = (fresco.url(&format!("/hang/{i}")), tx.clone());
        tokio::spawn(async move {
            let got = get(&url).await;
            let _ = tx.send((got.status, got.cache_status()));
        });
    }
    drop(tx);
    let mut statuses = Vec::new();
    // The overflow is refused at once, while the first four still hang.
    while statuses.len() < 12 {
        statuses.push(rx.recv().await.expect("every request is answered"));
    }
    let requested = || (0..20).map(|i| origin.hits(&format!("/hang/{i}"))).sum::<usize>();
    // The four admitted requests may still be on their way to the origin.
    eventually("the four admitted requests reach the origin", Duration::from_secs(3), async || requested() >= 4).await;
    assert_eq!(requested(), 4, "the origin sees only the capped number of requests: {statuses:?}");
    assert!(statuses.iter().all(|(s, cs)| *s == 503 && cs.contains("upstream-queue-full")), "{statuses:?}");
    while let Some(answer) = rx.recv().await {
        statuses.push(answer);
    }
    // The queued ones waited at most the first-byte timeout in all.
    let late = &statuses[12..];
    assert!(
        late.iter().all(|(s, cs)| (*s == 504 && cs.contains("upstream-timeout"))
            || (*s == 503 && cs.contains("upstream-queue-timeout"))),
        "{late:?}"
    );
    // The slots come back: the origin is reachable again.
    assert_eq!(get(&fresco.url("/fast")).await.status, 200);
}

/// Slow uploads hold their upstream connection as long as the client
/// trickles; they may take at most half of the upstream's connections, so
/// misses are still fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_cannot_take_every_upstream_connection() {
    let origin = Origin::start().await;
    origin.route("/upload", Reply::ok("stored").header("cache-control", "no-store"));
    origin.route("/page", Reply::ok("page").header("cache-control", "max-age=60"));
    let fresco = Fresco::start(
        &origin.url(),
        &["--upstream-max-connections", "4", "--upstream-queue", "0", "--client-header-timeout", "30s"],
    );
    let mut uploads = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(fresco.data).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nfirst bytes").await.unwrap();
        uploads.push(s);
    }
    // Two uploads hold half the connections; the other two were refused.
    let mut refused = 0;
    for s in &mut uploads[2..] {
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            refused += usize::from(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
        }
    }
    assert!(refused >= 1, "uploads past half of the upstream connections are refused");
    for i in 0..3 {
        let got = get(&fresco.url(&format!("/page?{i}"))).await;
        assert_eq!((got.status, got.text().as_str()), (200, "page"), "miss {i} while uploads trickle");
    }
}

/// Reads until EOF or an error; true if the peer closed within `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Issue 9 item 6: connections that never send a byte are closed after
/// the header timeout, and past the connection cap the silent ones make
/// room for clients that do send requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_past_the_cap_do_not_lock_out_clients() {
    let origin = Origin::start().await;
    origin.route("/probe", Reply::ok("alive").header("cache-control", "no-store"));
    let fresco = Fresco::start(&origin.url(), &["--max-connections", "50", "--client-header-timeout", "3s"]);
    let mut silent = Vec::new();
    for _ in 0..150 {
        if let Ok(s) = TcpStream::connect(fresco.data).await {
            silent.push(s);
        }
    }
    for i in 0..10 {
        let got = get(&fresco.url("/probe")).await;
        assert_eq!((got.status, got.text().as_str()), (200, "alive"), "probe {i} among silent connections");
    }
    let open = metric(&fresco, "fresco_client_connections").await;
    assert!(open <= 51.0, "{open} connections open with a cap of 50");
    let evicted = metric(&fresco, "fresco_client_connections_closed_total{reason=\"evicted\"}").await;
    assert!(evicted >= 100.0, "silent connections past the cap were closed: {evicted}");
    // The last silent one (never evicted: newer than the probes' room) is
    // closed by the header deadline, not left open.
    let mut last = silent.pop().unwrap();
    assert!(closed_within(&mut last, Duration::from_secs(20)).await, "a silent connection stays open");
}

/// The header deadline holds for HTTP/2 too: a client that sends the
/// connection preface and then no request is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_a_request_is_closed() {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &["--client-header-timeout", "2s"]);
    let mut s = TcpStream::connect(fresco.data).await.unwrap();
    // The preface and an empty SETTINGS frame (RFC 9113 §3.4), then silence.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(20)).await, "an idle HTTP/2 connection stays open");
}

/// Slowloris: a client trickling header lines is closed at the header
/// deadline however steadily it trickles; other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_off_and_others_are_served() {
    let origin = Origin::start().await;
    origin.route("/probe", Reply::ok("alive").header("cache-control", "no-store"));
    let fresco = Fresco::start(&origin.url(), &["--client-header-timeout", "2s"]);
    let mut slow = TcpStream::connect(fresco.data).await.unwrap();
    slow.write_all(b"GET /probe HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut cut_off = false;
    // 60 lines at 250 ms would take 15 s; the deadline is 2 s after the first byte.
    for i in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if slow.write_all(format!("X-Trickle-{i}: a\r\n").as_bytes()).await.is_err() {
            cut_off = true;
            break;
        }
        if i % 4 == 0 {
            let got = get(&fresco.url("/probe")).await;
            assert_eq!(got.status, 200, "probe while a client trickles");
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the trickling client was never cut off");
}

/// Sends raw bytes and returns the status code of the answer (0 if the
/// connection closed without one).
async fn raw_status(fresco: &Fresco, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(fresco.data).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Header floods: more header fields than `max_headers`, or a head larger
/// than `max_header_size`, get 431 (RFC 6585 §5); the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_get_431_and_the_node_keeps_serving() {
    let origin = Origin::start().await;
    origin.route("/probe", Reply::ok("alive").header("cache-control", "no-store"));
    let fresco = Fresco::start(&origin.url(), &["--max-headers", "50", "--max-header-size", "16KiB"]);
    let many: String = (0..60).map(|i| format!("X-Flood-{i}: v\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(32 * 1024));
    for (what, extra) in [("60 fields", many), ("a 32 KiB field", huge)] {
        let req = format!("GET /probe HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        assert_eq!(raw_status(&fresco, req.as_bytes()).await, 431, "{what}");
        assert_eq!(get(&fresco.url("/probe")).await.status, 200, "served after {what}");
    }
    let fine: String = (0..40).map(|i| format!("X-Fine-{i}: v\r\n")).collect();
    let req = format!("GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fine}\r\n");
    assert_eq!(raw_status(&fresco, req.as_bytes()).await, 200, "40 fields are within the limit");
}

/// RFC 9110 §15.5.15 / §15.5.14: a target over `max_url_length` gets 414,
/// a declared body over `max_request_body` gets 413; neither reaches the
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_targets_get_414_and_large_bodies_get_413() {
    let origin = Origin::start().await;
    origin.route("/upload", Reply::ok("stored").header("cache-control", "no-store"));
    let fresco = Fresco::start(&origin.url(), &["--max-url-length", "1KiB", "--max-request-body", "4KiB"]);
    let long = format!("/upload?q={}", "a".repeat(2000));
    let got = get(&fresco.url(&long)).await;
    assert_eq!(got.status, 414);
    assert!(got.cache_status().contains("uri-too-long"), "{}", got.cache_status());
    let got = send_body("POST", &fresco.url("/upload"), &[], Bytes::from(vec![b'x'; 8192])).await;
    assert_eq!(got.status, 413);
    assert!(got.text().contains("4096"), "names the limit: {}", got.text());
    assert_eq!(origin.hits("/upload"), 0, "refused requests never reach the origin");
    let got = send_body("POST", &fresco.url("/upload"), &[], Bytes::from(vec![b'x'; 1024])).await;
    assert_eq!((got.status, got.text().as_str()), (200, "stored"), "a body within the limit is forwarded");
}

/// An idle keep-alive connection is closed after `client_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let origin = Origin::start().await;
    origin.route("/probe", Reply::ok("alive").header("cache-control", "no-store"));
    let fresco = Fresco::start(&origin.url(), &["--client-idle-timeout", "2s", "--client-header-timeout", "30s"]);
    let mut s = TcpStream::connect(fresco.data).await.unwrap();
    s.write_all(b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "answered first");
    assert!(closed_within(&mut s, Duration::from_secs(20)).await, "the idle connection stays open");
}

/// A TLS client that starts a handshake and stalls is closed at the
/// handshake deadline; TLS clients that complete theirs are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_closed() {
    let origin = Origin::start().await;
    origin.route("/tls", Reply::ok("secure").header("cache-control", "no-store"));
    let dir = temp_dir("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let fresco = Fresco::start(
        &origin.url(),
        &["--tls-cert", cert, "--tls-key", key, "--tls-handshake-timeout", "2s", "--client-header-timeout", "30s"],
    );
    let mut stalled = TcpStream::connect(fresco.data).await.unwrap();
    // The first bytes of a TLS record header (handshake, TLS 1.0 record version), then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let port = fresco.data.port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/tls");
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert", cert, "--resolve", &resolve, &url])
        .output()
        .await
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secure", "a complete handshake is served");
    assert!(closed_within(&mut stalled, Duration::from_secs(20)).await, "the stalled handshake stays open");
}

/// Posts an invalidation with the node's local token (or `token`).
async fn invalidate(fresco: &Fresco, token: Option<&str>, path: &str, body: serde_json::Value) -> Got {
    let auth = format!("Bearer {}", token.map_or_else(|| fresco.token(), str::to_string));
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    send_body("POST", &fresco.admin_url(path), &headers, Bytes::from(body.to_string())).await
}

/// Issue 9 item 9: a prefix that selects a whole host, or an `origin`
/// event, needs break-glass like purging everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_whole_host_needs_break_glass() {
    let origin = Origin::start().await;
    origin.route("/page", Reply::ok("page").header("cache-control", "max-age=600"));
    let fresco = Fresco::start(&origin.url(), &[]);
    let host = format!("http://{}", fresco.data);
    assert!(!get(&fresco.url("/page")).await.is_hit());
    for (path, body) in [
        ("/api/v1/invalidations", json!({"prefixes": [format!("{host}/")]})),
        ("/api/v1/invalidations", json!({"prefixes": [host.clone()]})),
        ("/api/v1/invalidation-events", json!({"type": "origin", "selectors": [host.clone()], "purge": true})),
        ("/api/v1/invalidation-events", json!({"type": "uri-prefix", "selectors": [format!("{host}/")]})),
    ] {
        let got = invalidate(&fresco, None, path, body.clone()).await;
        assert_eq!(got.status, 403, "{body}: {}", got.text());
        assert!(got.text().contains("break_glass"), "{}", got.text());
    }
    assert!(get(&fresco.url("/page")).await.is_hit(), "nothing was purged");
    let got = invalidate(
        &fresco,
        None,
        "/api/v1/invalidation-events",
        json!({"type": "origin", "selectors": [host.clone()], "purge": true, "break_glass": true}),
    )
    .await;
    assert!(got.status == 200 || got.status == 202, "{}", got.text());
    assert!(!get(&fresco.url("/page")).await.is_hit(), "the confirmed origin event purged the host");
}

/// RFC 9110 §11.1: the auth scheme is case-insensitive; the generated
/// local token is rate limited like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_case_insensitive_and_the_local_token_is_rate_limited() {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &[]);
    let url = fresco.admin_url("/api/v1/invalidations");
    let body = || Bytes::from(json!({"tags": ["t"]}).to_string());
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", fresco.token());
        let got = send_body("POST", &url, &[("authorization", &auth)], body()).await;
        assert_eq!(got.status, 202, "{scheme}: {}", got.text());
    }
    let auth = format!("Bearer {}", fresco.token());
    let mut limited = None;
    for _ in 0..2000 {
        let got = send_body("POST", &url, &[("authorization", &auth)], body()).await;
        if got.status == 429 {
            limited = Some(got);
            break;
        }
        assert_eq!(got.status, 202, "{}", got.text());
    }
    let limited = limited.expect("the local token hit its rate limit within 2000 requests");
    assert!(limited.header("retry-after").is_some());
}

/// Token secrets: a guessable one stops the node with a message naming
/// the token; one given only as its SHA-256 (as `fresco token` prints it)
/// authenticates the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_secrets_are_refused_and_hashed_secrets_work() {
    let origin = Origin::start().await;
    let dir = temp_dir("tokens");
    let weak = dir.join("weak.toml");
    std::fs::write(&weak, "[[token]]\nname = \"cms\"\nsecret = \"aaaaaaaaaaaaaaaa\"\nscopes = [\"all\"]\n").unwrap();
    let origin_url = origin.url();
    let args = ["serve", "--origin", &origin_url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let data_dir = dir.join("data");
    let mut weak_args = args.to_vec();
    weak_args.extend(["--data-dir", data_dir.to_str().unwrap(), "--config", weak.to_str().unwrap()]);
    let err = Fresco::spawn(&weak_args).err().expect("a node with a guessable token secret does not start");
    assert!(err.contains("token `cms`") && err.contains("fresco token"), "{err}");

    let out =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco")).args(["token", "--name", "cms"]).output().await;
    let out = String::from_utf8(out.unwrap().stdout).unwrap();
    let secret = out.lines().find_map(|l| l.strip_prefix("secret: ")).expect("a secret line").to_string();
    let table: String =
        out.lines().filter(|l| !l.starts_with("secret: ") && !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    assert!(!table.contains(&secret), "the config table holds only the hash");
    let hashed = dir.join("hashed.toml");
    std::fs::write(&hashed, format!("{table}\n")).unwrap();
    let fresco = Fresco::start(&origin.url(), &["--config", hashed.to_str().unwrap()]);
    let got = invalidate(&fresco, Some(&secret), "/api/v1/invalidations", json!({"tags": ["x"]})).await;
    assert_eq!(got.status, 202, "{}", got.text());
    let got =
        invalidate(&fresco, Some("not-the-secret-at-all-9876"), "/api/v1/invalidations", json!({"tags": ["x"]})).await;
    assert_eq!(got.status, 401);
}

/// Tags and reasons that would display as something else (bidirectional
/// overrides, zero-width characters) are refused, naming the code point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deceptive_tags_and_reasons_are_refused() {
    let origin = Origin::start().await;
    let fresco = Fresco::start(&origin.url(), &[]);
    for (body, code) in [
        (json!({"tags": ["product-\u{202E}24"]}), "U+202E"),
        (json!({"tags": ["product\u{200B}-42"]}), "U+200B"),
        (json!({"tags": ["ok"], "reason": "price \u{2067}change"}), "U+2067"),
    ] {
        let got = invalidate(&fresco, None, "/api/v1/invalidations", body.clone()).await;
        assert_eq!(got.status, 400, "{body}");
        assert!(got.text().contains(code), "{}", got.text());
    }
    let event = json!({"type": "group", "selectors": [format!("http://{}", fresco.data)], "groups": ["g\u{FEFF}"]});
    let got = invalidate(&fresco, None, "/api/v1/invalidation-events", event).await;
    assert_eq!(got.status, 400, "{}", got.text());
}

/// Issue 8 item 14: URL selectors that cannot match any key on this node
/// (another scheme than its listener's, a host it does not serve, the
/// origin's own address) are refused with the form keys take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_purges_that_can_match_nothing_are_refused() {
    let origin = Origin::start().await;
    origin.route("/a", Reply::ok("a").header("cache-control", "max-age=600"));
    let open = Fresco::start(&origin.url(), &[]);
    let origin_url = json!({"urls": [format!("{}/a", origin.url())]});
    let got = invalidate(&open, None, "/api/v1/invalidations", origin_url).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("origin"), "{}", got.text());
    let tls_url = json!({"urls": [format!("https://{}/a", open.data)]});
    let got = invalidate(&open, None, "/api/v1/invalidations", tls_url).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("http://HOST/PATH"), "{}", got.text());

    let listed = Fresco::start(&origin.url(), &["--host", "shop.test", "--host", "www.shop.test"]);
    let got = send("GET", &listed.url("/a"), &[("host", "shop.test")]).await;
    assert_eq!(got.status, 200);
    assert!(send("GET", &listed.url("/a"), &[("host", "shop.test")]).await.is_hit());
    // RFC 9110 §15.5.20: other hosts are refused, so every key names a listed host.
    let elsewhere = send("GET", &listed.url("/a"), &[("host", "elsewhere.test")]).await;
    assert_eq!(elsewhere.status, 421, "{}", elsewhere.text());
    assert!(elsewhere.text().contains("shop.test, www.shop.test"), "{}", elsewhere.text());
    assert_eq!(origin.hits("/a"), 1, "a misdirected request never reaches the origin");
    let other = json!({"prefixes": ["http://elsewhere.test/a"]});
    let got = invalidate(&listed, None, "/api/v1/invalidations", other).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("shop.test, www.shop.test"), "{}", got.text());
    let event = json!({"type": "uri", "selectors": ["https://shop.test/a"]});
    let got = invalidate(&listed, None, "/api/v1/invalidation-events", event).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("http://shop.test/PATH"), "{}", got.text());
    let got = invalidate(&listed, None, "/api/v1/invalidations", json!({"urls": ["http://SHOP.test:80/a"]})).await;
    assert_eq!(got.status, 202, "{}", got.text());
    assert!(!send("GET", &listed.url("/a"), &[("host", "shop.test")]).await.is_hit(), "the accepted purge matched");
}

/// `fresco serve` started by a shell that first lowers the open-file limit.
struct FdLimited {
    data: std::net::SocketAddr,
    child: Child,
}

impl FdLimited {
    fn start(nofile: u32, origin: &str) -> FdLimited {
        use std::io::BufRead;
        let dir = temp_dir("fd-limited");
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_fresco"), "serve", "--origin", origin])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
            .args(["--client-header-timeout", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref().take(50) {
            let line = line.unwrap_or_default();
            if let Some(addr) = line.split_whitespace().find_map(|w| w.strip_prefix("data=")) {
                let data = addr.parse().unwrap();
                std::thread::spawn(move || lines.for_each(drop));
                return FdLimited { data, child };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("fresco under ulimit -n {nofile} did not start");
    }
}

impl Drop for FdLimited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 9 item 6 as reported: with the open-file limit reached by silent
/// connections, new clients must still be served (the cap stays below the
/// limit, and running out closes idle connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_exhaust_file_descriptors() {
    let origin = Origin::start().await;
    origin.route("/probe", Reply::ok("alive").header("cache-control", "no-store"));
    let fresco = FdLimited::start(128, &origin.url());
    let mut silent = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(fresco.data)).await {
            silent.push(s);
        }
    }
    let url = format!("http://{}/probe", fresco.data);
    for i in 0..10 {
        let got = get(&url).await;
        assert_eq!((got.status, got.text().as_str()), (200, "alive"), "probe {i} with 300 silent connections");
    }
}
