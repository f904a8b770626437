//! The demo: a small origin app that exercises Fresco's features, served on
//! loopback behind an edge node. `fresco origin` runs the app alone, which
//! the benchmarks use as their origin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Default)]
struct App {
    counter: AtomicU64,
    price: AtomicU64,
    /// Requests received per path and query, for the benchmarks' stampede
    /// count (`GET /__hits?path=...`). Bounded: cleared when large.
    hits: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Until when the app answers 503 to everything (`POST /__outage?seconds=N`),
    /// so the demo can show stale-if-error and the dashboard's charts react.
    down_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Serves the demo origin on `listener` forever.
pub async fn serve_origin(listener: TcpListener) {
    let app = Arc::new(App { price: AtomicU64::new(1999), ..Default::default() });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(status: StatusCode, headers: &[(&'static str, String)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().append(*k, v);
        }
    }
    resp
}

/// A fixed Last-Modified for the static pages.
fn published() -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
}

async fn route(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    if path == "/__hits" {
        let wanted = req.uri().query().and_then(|q| q.strip_prefix("path=")).map(percent_decode).unwrap_or_default();
        let n = app.hits.lock().unwrap_or_else(|e| e.into_inner()).get(&wanted).copied().unwrap_or(0);
        return respond(StatusCode::OK, &[("cache-control", "no-store".into())], format!("{n}\n"));
    }
    if path == "/__outage" && method == Method::POST {
        let seconds: u64 =
            req.uri().query().and_then(|q| q.strip_prefix("seconds=")).and_then(|n| n.parse().ok()).unwrap_or(30);
        let seconds = seconds.min(600);
        *app.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now() + Duration::from_secs(seconds));
        return respond(
            StatusCode::OK,
            &[("cache-control", "no-store".into())],
            format!("origin down for {seconds} s\n"),
        );
    }
    let down = app.down_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t > std::time::Instant::now());
    if down {
        let _ = req.into_body().collect().await;
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &[("cache-control", "no-store".into())],
            "the demo origin is down (POST /__outage)\n",
        );
    }
    {
        let mut hits = app.hits.lock().unwrap_or_else(|e| e.into_inner());
        if hits.len() > 10_000 {
            hits.clear();
        }
        *hits.entry(path_and_query).or_default() += 1;
    }
    let html = ("content-type", "text/html; charset=utf-8".to_string());
    let json = ("content-type", "application/json".to_string());
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/") => respond(
            StatusCode::OK,
            &[
                html,
                // Browsers revalidate every time; the edge keeps it a minute.
                ("cache-control", "no-cache".into()),
                ("cdn-cache-control", "max-age=60".into()),
                ("etag", "\"home-v1\"".into()),
                ("surrogate-key", "html home".into()),
            ],
            "<!doctype html><title>Fresco demo</title><h1>Fresco demo shop</h1>\
             <p><a href=/about>About</a> · <a href=/api/products/42>Product 42</a></p>\
             <script src=/assets/app.3f9a1c.js></script>\n",
        ),
        (Method::GET | Method::HEAD, "/about") => respond(
            StatusCode::OK,
            &[
                html,
                ("cache-control", "max-age=300".into()),
                ("last-modified", published()),
                ("surrogate-key", "html".into()),
            ],
            "<!doctype html><title>About</title><p>A page cached for five minutes.</p>\n",
        ),
        (Method::GET | Method::HEAD, "/assets/app.3f9a1c.js") => respond(
            StatusCode::OK,
            &[
                ("content-type", "text/javascript".into()),
                ("cache-control", "public, max-age=31536000, immutable".into()),
            ],
            "console.log('fingerprinted asset: cached for a year');\n",
        ),
        (Method::GET | Method::HEAD, "/assets/app.js") => respond(
            StatusCode::OK,
            &[
                ("content-type", "text/javascript".into()),
                ("cache-control", "max-age=10, stale-while-revalidate=30, stale-if-error=86400".into()),
                ("last-modified", published()),
            ],
            "console.log('unfingerprinted asset: short TTL, served stale while revalidating');\n",
        ),
        (Method::GET | Method::HEAD, "/api/products/42") => {
            let price = app.price.load(Ordering::Relaxed);
            respond(
                StatusCode::OK,
                &[
                    json,
                    ("cache-control", "max-age=0, s-maxage=300".into()),
                    ("etag", format!("\"p42-{price}\"")),
                    ("surrogate-key", "product-42 products".into()),
                    ("cache-tag", "api".into()),
                ],
                format!("{{\"id\":42,\"name\":\"Espresso cup\",\"price_cents\":{price}}}\n"),
            )
        }
        (Method::POST, "/api/products/42/price") => {
            let price = app.price.fetch_add(100, Ordering::Relaxed) + 100;
            respond(
                StatusCode::OK,
                &[json, ("cache-group-invalidation", "\"product-42\"".into())],
                format!("{{\"id\":42,\"price_cents\":{price}}}\n"),
            )
        }
        (Method::GET | Method::HEAD, "/api/counter") => respond(
            StatusCode::OK,
            &[json, ("cache-control", "max-age=30".into())],
            format!("{{\"count\":{}}}\n", app.counter.load(Ordering::Relaxed)),
        ),
        (Method::POST, "/api/counter") => {
            let n = app.counter.fetch_add(1, Ordering::Relaxed) + 1;
            respond(
                StatusCode::OK,
                &[json, ("content-location", "/api/counter".into())],
                format!("{{\"count\":{n}}}\n"),
            )
        }
        (Method::GET | Method::HEAD, "/private") => respond(
            StatusCode::OK,
            &[("cache-control", "private, max-age=60".into())],
            "per-user content: never stored by a shared cache\n",
        ),
        (Method::GET | Method::HEAD, p) if p.starts_with("/bytes/") => {
            let n: usize = p["/bytes/".len()..].parse().unwrap_or(0).min(64 << 20);
            respond(
                StatusCode::OK,
                &[("cache-control", "max-age=3600".into()), ("content-type", "application/octet-stream".into())],
                vec![b'x'; n],
            )
        }
        (Method::GET | Method::HEAD, p) if p.starts_with("/tagged/") => {
            // /tagged/TAG/N: many small objects sharing one tag.
            let tag = p["/tagged/".len()..].split('/').next().unwrap_or("none").to_string();
            respond(StatusCode::OK, &[("cache-control", "max-age=3600".into()), ("surrogate-key", tag)], p.to_string())
        }
        (Method::GET | Method::HEAD, p) if p.starts_with("/swr/") => {
            // Fresh for two seconds, then served stale while a slow revalidation runs.
            let ms: u64 = p["/swr/".len()..].parse().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(
                StatusCode::OK,
                &[("cache-control", "max-age=2, stale-while-revalidate=60".into())],
                format!("waited {ms} ms\n"),
            )
        }
        (Method::GET | Method::HEAD, p) if p.starts_with("/delay/") => {
            let ms: u64 = p["/delay/".len()..].parse().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond(StatusCode::OK, &[("cache-control", "max-age=3600".into())], format!("waited {ms} ms\n"))
        }
        _ => {
            // Drain any body so the connection stays usable.
            let _ = req.into_body().collect().await;
            respond(StatusCode::NOT_FOUND, &[("cache-control", "max-age=10".into())], "not found\n")
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fresco demo`: the demo origin and an edge node in front of it, with
/// its own data directory (a fresh one under the system's temporary
/// directory, removed at exit), so that a later `fresco serve` neither
/// replays the demo's invalidations nor reuses its token. With `bus` (a
/// NATS server with JetStream), a second edge node runs as a child process
/// on the same log, so purges show their convergence on two nodes. The
/// guide is printed once the nodes listen, with the addresses they have.
pub async fn run(listen: SocketAddr, admin: SocketAddr, origin: SocketAddr, bus: Option<String>) -> Result<(), String> {
    let origin_listener = TcpListener::bind(origin)
        .await
        .map_err(|e| format!("cannot listen on {origin} for the demo origin: {e}; pick another with --origin"))?;
    let origin_addr = origin_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_origin(origin_listener));
    let data_dir = std::env::temp_dir().join(format!("fresco-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let exe = std::env::current_exe().map_or_else(|_| "fresco".to_string(), |p| p.display().to_string());
    let result = async {
        let second = match &bus {
            Some(bus) => Some(second_edge(&exe, origin_addr, bus, &data_dir.join("edge-2")).await?),
            None => None,
        };
        let raw = crate::config::RawConfig {
            listen: Some(listen.to_string()),
            admin: Some(admin.to_string()),
            origin: Some(format!("http://{origin_addr}")),
            data_dir: Some(data_dir.clone()),
            node_id: bus.as_ref().map(|_| "edge-1".to_string()),
            bus: bus.clone(),
            // The disk tier, on in the demo (issue 10).
            disk: Some("256MiB".into()),
            ..Default::default()
        };
        let cfg = crate::config::Config::from_raw(raw).map_err(|e| e.to_string())?;
        // With PostgreSQL installed: a throwaway cluster, followed by `fresco
        // cdc` into this node once it listens (design §4); stopped and
        // removed when the demo ends.
        let database = crate::cdc::demo::start(data_dir.clone()).await;
        let addrs = second.as_ref().map(|s| (s.data, s.admin));
        crate::server::run_then(cfg, crate::server::shutdown_signal(), |edge, admin| {
            print_guide(&Guide { edge, admin, origin: origin_addr, second: addrs, data_dir: &data_dir, exe: &exe });
            if let Some(database) = &database {
                database.follow(edge, admin);
            }
        })
        .await
    }
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

/// The second edge node of a demo on a bus: a `fresco serve` child process
/// (killed when dropped), its log in its data directory.
struct SecondEdge {
    _child: tokio::process::Child,
    data: SocketAddr,
    admin: SocketAddr,
}

async fn second_edge(exe: &str, origin: SocketAddr, bus: &str, dir: &std::path::Path) -> Result<SecondEdge, String> {
    use tokio::io::AsyncBufReadExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join("node.log")).map_err(|e| format!("cannot create the node log: {e}"))?;
    let origin_url = format!("http://{origin}");
    let dir_arg = dir.display().to_string();
    let args = ["serve", "--origin", &origin_url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .args(["--bus", bus, "--node-id", "edge-2", "--data-dir", &dir_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the second edge node: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the second edge node")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("fresco ready") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| format!("the second edge node did not start; see {}/node.log", dir.display()))?;
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| -> Result<SocketAddr, String> {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected ready line from the second edge node: {ready}"))
    };
    Ok(SecondEdge { data: field("data=")?, admin: field("admin=")?, _child: child })
}

/// What the guide's commands need: the addresses the demo listens on, its
/// data directory (the admin token) and the binary that is running.
struct Guide<'a> {
    edge: SocketAddr,
    admin: SocketAddr,
    origin: SocketAddr,
    /// The second edge node's data and admin addresses, with a bus.
    second: Option<(SocketAddr, SocketAddr)>,
    data_dir: &'a std::path::Path,
    exe: &'a str,
}

/// Prints what to try against a running demo.
fn print_guide(g: &Guide<'_>) {
    let Guide { edge, admin, origin, exe, .. } = g;
    let dir = g.data_dir.display();
    let second = match g.second {
        Some((data, admin2)) => {
            format!("  edge 2:       http://{data}/ (admin http://{admin2}/, same invalidation log)\n")
        }
        None => "  (one edge node; `fresco demo --bus nats://127.0.0.1:4222` runs two on a NATS JetStream server)\n"
            .to_string(),
    };
    // The fragment never reaches the server; the page keeps the token in the tab.
    let token = std::fs::read_to_string(g.data_dir.join("admin-token")).unwrap_or_default();
    let token = token.trim();
    println!(
        "\nFresco demo\n  edge (cache): http://{edge}/\n  dashboard:    http://{admin}/#token={token}\n  admin:        http://{admin}/metrics\n  origin:       http://{origin}/\n  data:         {dir} (removed at exit)\n{second}\n\
Try:\n\
  curl -si http://{edge}/                       # twice: Cache-Status goes from fwd=uri-miss to hit\n\
  curl -si http://{edge}/assets/app.3f9a1c.js   # immutable, cached for a year\n\
  curl -si http://{edge}/assets/app.js          # after 10 s: served stale while revalidating\n\
  curl -si http://{edge}/api/products/42        # s-maxage=300, tagged product-42 (tag headers hidden)\n\
  curl -si -X POST http://{edge}/api/products/42/price  # origin changes the price\n\
  curl -si http://{edge}/api/counter; curl -si -X POST http://{edge}/api/counter; curl -si http://{edge}/api/counter\n\
                                                # the POST invalidates /api/counter (RFC 9111 §4.4)\n\
  curl -si -H 'If-None-Match: \"home-v1\"' http://{edge}/   # 304 from cache\n\
  curl -si http://{edge}/private                # never stored: Cache-Status detail=private\n\
  for i in $(seq 50); do curl -s -o /dev/null http://{edge}/about; done   # makes the dashboard's charts move\n\
  curl -s -X POST 'http://{origin}/__outage?seconds=30'   # origin down for 30 s: 503s, and stale-if-error for /assets/app.js\n\
\n\
Invalidate (the admin token is in {dir}/admin-token):\n\
  {exe} purge --admin http://{admin} --data-dir {dir} --tag product-42 --reason 'price change' --wait\n\
  {exe} purge --admin http://{admin} --data-dir {dir} --prefix http://{edge}/assets --soft\n\
  {exe} status --admin http://{admin} --data-dir {dir}\n\
  curl -si -X PURGE -H \"Authorization: Bearer $(cat {dir}/admin-token)\" http://{edge}/about\n\
  curl -s -H \"Authorization: Bearer $(cat {dir}/admin-token)\" http://{admin}/api/v1/invalidations\n\
  curl -si -X POST http://{edge}/api/products/42/price   # the origin's Cache-Group-Invalidation purges product-42\n\
  curl -s  http://{admin}/metrics | grep fresco_  # requests by cache status, objects, bytes\n\n\
Ctrl-C stops it.\n"
    );
}
