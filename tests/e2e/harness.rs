//! Real components for end-to-end tests: a programmable origin server on
//! loopback, `fresco` processes started from the built binary, and a plain
//! HTTP client. Nothing here is a mock: every exchange crosses a socket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the test origin answers for a path.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Send the body as this many chunks, `interval` apart.
    pub chunks: Option<(usize, Duration)>,
    /// Set once the last byte has been handed to the connection.
    pub finished: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            delay: Duration::ZERO,
            chunks: None,
            finished: None,
        }
    }

    pub fn bytes(body: Bytes) -> Reply {
        Reply { body, ..Reply::ok("") }
    }

    /// Streams the body in `n` chunks, `interval` apart, raising `finished`
    /// after the last one.
    pub fn streamed(mut self, n: usize, interval: Duration, finished: Arc<std::sync::atomic::AtomicBool>) -> Reply {
        self.chunks = Some((n, interval));
        self.finished = Some(finished);
        self
    }

    pub fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

#[derive(Default)]
struct OriginState {
    routes: Mutex<HashMap<String, Handler>>,
    seen: Mutex<Vec<Seen>>,
}

/// A real HTTP server on 127.0.0.1 whose answers each test programs.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(OriginState::default()))
    }

    /// Starts again on the same address with the same routes (after `stop`).
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Self::spawn_server(listener, self.state.clone());
    }

    /// Stops accepting and drops open connections: the origin is down.
    pub fn stop(&self) {
        self.task.abort();
    }

    fn serve(listener: TcpListener, state: Arc<OriginState>) -> Origin {
        let addr = listener.local_addr().unwrap();
        let task = Self::spawn_server(listener, state.clone());
        Origin { addr, state, task }
    }

    fn spawn_server(listener: TcpListener, st: Arc<OriginState>) -> tokio::task::JoinHandle<()> {
        serve_http1(listener, move |req| {
            let st = st.clone();
            async move { answer(&st, req).await }
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `path` with a fixed reply.
    pub fn route(&self, path: &str, reply: Reply) {
        self.handle(path, move |_| reply.clone());
    }

    /// Answers `path` by calling `f` with the request.
    pub fn handle(&self, path: &str, f: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        self.state.routes.lock().unwrap().insert(path.to_string(), Arc::new(f));
    }

    /// Requests received for `path` (any method).
    pub fn hits(&self, path: &str) -> usize {
        self.state.seen.lock().unwrap().iter().filter(|s| s.path == path).count()
    }

    pub fn last(&self, path: &str) -> Option<Seen> {
        self.state.seen.lock().unwrap().iter().rev().find(|s| s.path == path).cloned()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(st: &OriginState, req: Request<Incoming>) -> Response<OriginBody> {
    let seen = Seen {
        method: req.method().clone(),
        path: req.uri().path_and_query().map_or("/".into(), |p| p.as_str().to_string()),
        headers: req.headers().clone(),
    };
    let _ = req.into_body().collect().await;
    st.seen.lock().unwrap().push(seen.clone());
    let path_only = seen.path.split('?').next().unwrap_or("/").to_string();
    let handler = {
        let routes = st.routes.lock().unwrap();
        routes.get(&seen.path).or_else(|| routes.get(&path_only)).cloned()
    };
    let reply = match handler {
        Some(h) => h(&seen),
        None => Reply::ok("no route\n").status(404),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body: OriginBody = match (&reply.chunks, seen.method == Method::HEAD) {
        (_, true) => Full::new(Bytes::new()).boxed(),
        (None, false) => Full::new(reply.body.clone()).boxed(),
        (Some((n, interval)), false) => {
            let (n, interval) = (*n.max(&1), *interval);
            let size = reply.body.len().div_ceil(n).max(1);
            let pieces: Vec<Bytes> = reply.body.chunks(size).map(Bytes::copy_from_slice).collect();
            let count = pieces.len();
            let finished = reply.finished.clone();
            let stream = futures_util::stream::unfold((pieces.into_iter(), 0usize), move |(mut it, i)| {
                let finished = finished.clone();
                async move {
                    let piece = it.next()?;
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    if i + 1 == count
                        && let Some(f) = finished
                    {
                        f.store(true, Ordering::SeqCst);
                    }
                    Some((Ok::<_, Infallible>(hyper::body::Frame::data(piece)), (it, i + 1)))
                }
            });
            http_body_util::StreamBody::new(stream).boxed()
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in &reply.headers {
        resp.headers_mut().append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    resp
}

/// A `fresco serve` process. Killed when dropped.
pub struct Fresco {
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: std::path::PathBuf,
    child: Child,
}

/// A fresh directory for one node's data.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "fresco-e2e-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Fresco {
    /// Starts `fresco serve` in front of `origin` with extra flags, on
    /// ephemeral loopback ports, and waits for its ready line.
    pub fn start(origin: &str, extra: &[&str]) -> Fresco {
        Self::start_in(&temp_dir("node"), origin, extra)
    }

    /// Starts a node that keeps its data in `dir` (to restart it later).
    pub fn start_in(dir: &std::path::Path, origin: &str, extra: &[&str]) -> Fresco {
        let dir_arg = dir.to_str().unwrap();
        let mut args = vec!["serve", "--origin", origin, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        if !extra.contains(&"--data-dir") {
            args.extend(["--data-dir", dir_arg]);
        }
        args.extend_from_slice(extra);
        Self::spawn(&args).unwrap_or_else(|e| panic!("fresco did not start: {e}"))
    }

    /// The local admin token the node generated in its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token")).expect("admin token").trim().to_string()
    }

    /// SIGTERM, then waits for the process to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await;
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fresco did not exit within 15 s of SIGTERM");
    }

    /// The process id, to signal the node while requests are in flight.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs the binary with `args`; Ok once it prints its ready line, Err
    /// with its stderr when it exits first.
    pub fn spawn(args: &[&str]) -> Result<Fresco, String> {
        let data_dir = args
            .iter()
            .position(|a| *a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fresco"))
            .args(args)
            .env("RUST_LOG", std::env::var("FRESCO_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fresco");
        // Drain stderr into the node's directory so a chatty node never
        // blocks on a full pipe, and a failing test can be read afterwards.
        let stderr = child.stderr.take().unwrap();
        let log_path = if data_dir.as_os_str().is_empty() { None } else { Some(data_dir.join("node.log")) };
        let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = log_path.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
            let mut collected = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if collected.len() < 64 * 1024 {
                    collected.push_str(&line);
                    collected.push('\n');
                }
            }
            let _ = err_tx.send(collected);
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("fresco ready") => {
                    let field = |name: &str| -> SocketAddr {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(&format!("{name}=")))
                            .and_then(|a| a.parse().ok())
                            .unwrap_or_else(|| panic!("no {name}= in {line}"))
                    };
                    let (data, admin) = (field("data"), field("admin"));
                    // Keep draining stdout so the child never blocks on a full pipe.
                    std::thread::spawn(move || lines.for_each(drop));
                    return Ok(Fresco { data, admin, data_dir, child });
                }
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.data)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Fresco {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Fresco's own Cache-Status entry (the last one).
    pub fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .next_back()
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status().split(';').any(|p| p.trim() == "hit")
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request and reads the whole response.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    send_body(method, url, headers, Bytes::new()).await
}

pub async fn send_body(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req.body(Full::new(body)).unwrap()))
        .await
        .expect("response within 30 s")
        .expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Got { status, headers, body }
}

/// POSTs an invalidation (the admin API's JSON body) with a bearer token.
pub async fn invalidate(fresco: &Fresco, token: &str, body: String) -> Got {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    send_body("POST", &fresco.admin_url("/api/v1/invalidations"), &headers, Bytes::from(body)).await
}

/// `n` concurrent GETs of `url`, each on its own connection, answers in
/// request order.
pub async fn burst(url: &str, n: usize, headers: &'static [(&'static str, &'static str)]) -> Vec<Got> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let u = url.to_string();
            tokio::spawn(async move { send("GET", &u, headers).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub async fn get(url: &str) -> Got {
    send("GET", url, &[]).await
}

/// The value of a Prometheus sample, named exactly as exported (name and
/// labels, e.g. `fresco_requests_total{cache="hit"}`). Panics naming the
/// sample when the node does not export it, so that a misspelt name or a
/// metric that disappeared fails the test instead of reading as 0.
pub async fn metric(fresco: &Fresco, sample: &str) -> f64 {
    let text = get(&fresco.admin_url("/metrics")).await.text();
    sample_value(&text, sample).unwrap_or_else(|| {
        let family = sample.split('{').next().unwrap_or(sample);
        let related: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
        panic!("metric sample `{sample}` is not exported; samples of `{family}`: {related:?}")
    })
}

/// The sum of every sample of a labelled counter family (`name{...}`), for
/// "how many in all, whatever the label". A family nobody incremented yet is
/// not exported at all (the exporter shows a labelled counter once it
/// exists), so here absence really means 0, unlike in [`metric`].
pub async fn metric_sum(fresco: &Fresco, family: &str) -> f64 {
    let text = get(&fresco.admin_url("/metrics")).await.text();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| name.strip_prefix(family).is_some_and(|rest| rest.is_empty() || rest.starts_with('{')))
        .map(|(name, v)| v.trim().parse::<f64>().unwrap_or_else(|_| panic!("{name}: bad value {v:?}")))
        .sum()
}

/// The value on the line whose sample name (with labels) is exactly `sample`.
fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name.trim() == sample).then(|| value.trim().parse::<f64>().ok()).flatten()
    })
}

/// Polls `check` every 50 ms until it holds; panics naming `what` if it does
/// not within `limit`. For conditions that arrive asynchronously (a fetch
/// reaching the origin, a background task finishing): waiting for the
/// condition itself keeps a loaded machine from turning into a flaky test.
pub async fn eventually<F: AsyncFn() -> bool>(what: &str, limit: Duration, check: F) {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node itself holds the object at `path` as stale (RFC 9111
/// §4.2), for tests whose subject is expiry. It asks with `Cache-Control:
/// only-if-cached` (§5.2.1.7), which never contacts the origin and never
/// triggers a revalidation: a fresh object answers 200, a stale one 504 with
/// `fwd=stale`. The bound is the object's own remaining lifetime (the `ttl`
/// of its Cache-Status when it was stored) plus slack for a loaded machine.
pub async fn wait_until_stale(fresco: &Fresco, path: &str, stored: &Got) {
    let ttl: u64 = stored
        .cache_status()
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl="))
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("{path}: no ttl in the storing response: {}", stored.cache_status()))
        .max(0) as u64;
    let url = fresco.url(path);
    eventually(&format!("{path} goes stale (ttl={ttl})"), Duration::from_secs(ttl + 10), async || {
        let probe = send("GET", &url, &[("cache-control", "only-if-cached")]).await;
        match probe.status {
            200 => false,
            504 if probe.cache_status().contains("fwd=stale") => true,
            other => panic!(
                "{path}: the stored object vanished while waiting for it to expire: {other} {}",
                probe.cache_status()
            ),
        }
    })
    .await;
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real `nats-server` with JetStream on loopback. Killed when dropped.
pub struct Nats {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    /// One server with JetStream and a fresh store.
    pub async fn start() -> Nats {
        let dir = temp_dir("nats");
        let port = free_port();
        let args = vec!["-js", "-sd", dir.to_str().unwrap(), "-a", "127.0.0.1", "-p", &port.to_string()]
            .into_iter()
            .map(String::from)
            .collect();
        let mut nats = Nats { port, args, child: None };
        nats.restart().await;
        nats
    }

    /// Three servers in one JetStream cluster.
    pub async fn cluster3() -> Vec<Nats> {
        let dir = temp_dir("nats-cluster");
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut servers = Vec::new();
        for i in 0..3 {
            let store = dir.join(format!("s{i}"));
            let args = [
                "-js",
                "-sd",
                store.to_str().unwrap(),
                "-a",
                "127.0.0.1",
                "-p",
                &client[i].to_string(),
                "-n",
                &format!("n{i}"),
                "--cluster_name",
                "fresco",
                "--cluster",
                &format!("nats://127.0.0.1:{}", route[i]),
                "--routes",
                &routes,
            ];
            let mut nats = Nats { port: client[i], args: args.iter().map(|s| s.to_string()).collect(), child: None };
            nats.restart().await;
            servers.push(nats);
        }
        servers
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) with the same store and port; waits until it listens.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback TCP relay to a service (the bus, a layer) that a test can cut
/// (dropping the relayed connections and refusing new ones) and heal: a
/// real partition of whatever connects through it, both ends running.
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays 127.0.0.1:<new port> to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (c, j) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let mut set = j.lock().unwrap();
                while set.try_join_next().is_some() {}
                set.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { port, cut, conns, task }
    }

    /// The relay as a bus address for a node.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.conns.lock().unwrap().abort_all();
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.conns.lock().unwrap().abort_all();
    }
}

/// Runs the `fresco` CLI (a command other than `serve`) to completion:
/// its exit code, stdout and stderr. `FRESCO_TOKEN` is not inherited.
pub async fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fresco"))
        .args(args)
        .env_remove("FRESCO_TOKEN")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run fresco {args:?}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real nginx on a free loopback port (`nginx-light` from Debian), serving
/// files from `dir/www`, killed when dropped. Panics, saying how to install
/// it, when it is missing: tests that use it must not pass without it.
pub struct Nginx {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Child,
}

impl Nginx {
    /// Starts nginx with `http` (given the directory and the port) inside
    /// its `http {}` block: the caller's log format and server block.
    pub async fn start(tag: &str, http: impl FnOnce(&str, u16) -> String) -> Nginx {
        let binary = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| Command::new(b).arg("-v").stderr(Stdio::null()).status().is_ok())
            .expect("nginx is not installed: run scripts/test.sh, which installs it (apt-get install nginx-light)");
        let dir = temp_dir(tag);
        let port = free_port();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let d = dir.display().to_string();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
            http(&d, port)
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c", &format!("{d}/nginx.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}: {}", nginx.error_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file nginx serves as `/name`.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("www").join(name)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves HTTP/1.1 on `listener` with `handle` until the task is aborted:
/// the test origins' server loop.
pub fn serve_http1<B, F, Fut>(listener: TcpListener, handle: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let response = handle(req);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
            while conns.try_join_next().is_some() {}
        }
    })
}
