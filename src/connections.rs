//! Client connections on the data listener: accept, TLS, HTTP/1.1 and
//! HTTP/2, and the limits that keep one client from holding the node.
//!
//! - A connection must complete a request head within `client_header_timeout`
//!   of being accepted, and every later one within that time of its first
//!   byte, whatever the protocol (the deadline covers the TLS handshake and
//!   HTTP version detection, which hyper's own header timer does not), so
//!   silent and trickling (slowloris) clients are closed.
//! - Between requests a connection is closed after `client_idle_timeout`.
//! - At most `max_connections` are open: past it the longest-idle one is
//!   closed to make room, or the new one if none is idle. Running out of file
//!   descriptors does the same (and the cap is lowered at start to leave
//!   descriptors for upstream connections), and accept errors back off and
//!   are logged at most once a second.
//! - Request targets longer than `max_url_length` get 414, bodies declared
//!   larger than `max_request_body` 413, and with `hosts` set other hosts
//!   421, before the proxy sees them;
//!   heads over `max_header_size` or with more than `max_headers` fields get
//!   431 from hyper.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::ClientLimits;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::proxy::upstream::UpstreamBody;
use crate::proxy::{Client, Proxy};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// "No byte read since the connection went idle."
const NONE: u64 = u64::MAX;

/// Why Fresco closed a client connection; a label of
/// `fresco_client_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// No complete request head in time (silent or trickling client).
    HeaderTimeout,
    /// Idle between requests for too long.
    Idle,
    /// Closed to make room for a new connection.
    Evicted,
    TlsHandshake,
    /// Refused at accept: at the cap with no idle connection to close.
    OverCapacity,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header-timeout",
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
            Closed::TlsHandshake => "tls-handshake",
            Closed::OverCapacity => "over-capacity",
        }
    }
}

fn closed(reason: Closed) {
    ::metrics::counter!("fresco_client_connections_closed_total", "reason" => reason.as_str()).increment(1);
}

/// What the watchdog and the connection cap know about one connection.
/// Times are milliseconds since the registry's epoch.
struct Conn {
    /// Requests whose response has not been fully sent.
    active: AtomicU32,
    /// When `active` last dropped to zero (or the accept).
    idle_since: AtomicU64,
    /// First byte read while idle: a request head has begun.
    first_read: AtomicU64,
    /// At least one request was answered.
    served: AtomicBool,
    /// Chosen for eviction.
    closing: AtomicBool,
    close: Notify,
    /// The last request finished: the watchdog's deadline moves.
    went_idle: Notify,
}

/// The open connections, for the cap.
struct Registry {
    epoch: Instant,
    next: AtomicU64,
    open: AtomicUsize,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn register(self: &Arc<Self>) -> Registered {
        let now = self.now();
        let conn = Arc::new(Conn {
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            first_read: AtomicU64::new(NONE),
            served: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            went_idle: Notify::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, conn.clone());
        self.open.fetch_add(1, Ordering::AcqRel);
        ::metrics::gauge!("fresco_client_connections").increment(1.0);
        Registered { registry: self.clone(), id, conn }
    }

    /// Asks the connection idle the longest to close; false if none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .values()
            .filter(|c| c.active.load(Ordering::Acquire) == 0 && !c.closing.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        match victim {
            Some(c) => {
                c.closing.store(true, Ordering::Release);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's place in the registry, given back when dropped.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.registry.open.fetch_sub(1, Ordering::AcqRel);
        ::metrics::gauge!("fresco_client_connections").decrement(1.0);
    }
}

/// One request in progress on a connection, until its response body is
/// dropped (sent, or abandoned).
struct InProgress {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl InProgress {
    fn begin(registry: &Arc<Registry>, conn: &Arc<Conn>) -> InProgress {
        conn.active.fetch_add(1, Ordering::AcqRel);
        InProgress { registry: registry.clone(), conn: conn.clone() }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.first_read.store(NONE, Ordering::Release);
            self.conn.idle_since.store(self.registry.now(), Ordering::Release);
            self.conn.served.store(true, Ordering::Release);
            self.conn.went_idle.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: UpstreamBody,
    _request: InProgress,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = crate::proxy::upstream::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, noting when a request head begins on an idle
/// connection.
struct Watched {
    inner: TcpStream,
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let conn = &this.conn;
            if conn.active.load(Ordering::Acquire) == 0 && conn.first_read.load(Ordering::Acquire) == NONE {
                conn.first_read.store(this.registry.now(), Ordering::Release);
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves when the connection must be closed: no request head in time,
/// idle too long, or evicted. Never while a request is in progress (the
/// upstream timeouts bound those).
async fn watchdog(registry: &Registry, conn: &Conn, limits: &ClientLimits) -> Closed {
    let header = limits.header_timeout.as_millis() as u64;
    let idle = limits.idle_timeout.as_millis() as u64;
    loop {
        let now = registry.now();
        // Nothing to enforce while a request runs: wait for it to end.
        let deadline = (conn.active.load(Ordering::Acquire) == 0).then(|| {
            let first_read = conn.first_read.load(Ordering::Acquire);
            let idle_since = conn.idle_since.load(Ordering::Acquire);
            if first_read != NONE {
                (first_read.saturating_add(header), Closed::HeaderTimeout)
            } else if conn.served.load(Ordering::Acquire) {
                (idle_since.saturating_add(idle), Closed::Idle)
            } else {
                (idle_since.saturating_add(header), Closed::HeaderTimeout)
            }
        });
        if let Some((at, reason)) = deadline
            && now >= at
        {
            return reason;
        }
        let expiry = async {
            match deadline {
                Some((at, _)) => {
                    let wake = registry.epoch + Duration::from_millis(at);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expiry => {}
            _ = conn.went_idle.notified() => {}
            _ = conn.close.notified() => {
                // Chosen while idle, but a request may have begun since.
                if conn.active.load(Ordering::Acquire) == 0 {
                    return Closed::Evicted;
                }
                conn.closing.store(false, Ordering::Release);
            }
        }
    }
}

/// A refusal of a request that breaks a limit, answered without the proxy.
fn refuse(node: &str, code: StatusCode, detail: &'static str, message: &str) -> Response<UpstreamBody> {
    ::metrics::counter!("fresco_client_requests_refused_total", "reason" => detail).increment(1);
    let mut resp = Response::new(crate::proxy::respond::full(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = code;
    let status = CacheStatus::forward(Fwd::Bypass).with_detail(detail);
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(&status.render(node)) {
        headers.insert("cache-status", v);
    }
    // The body was not read: the connection's framing is in doubt.
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// 414 / 413 for a request over the URL or body limits (RFC 9110 §15.5.15,
/// §15.5.14), 421 for a host this node does not serve (§15.5.20: with
/// `hosts` set, every key's host is one of them, so URL invalidations can
/// reach every object); None when it may go on.
fn refusal(req: &Request<Incoming>, limits: &ClientLimits, proxy: &Proxy) -> Option<Response<UpstreamBody>> {
    let node = proxy.settings.node_name.as_str();
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_url_length {
        let msg = format!("request target is {target_len} bytes; at most {} are accepted", limits.max_url_length);
        return Some(refuse(node, StatusCode::URI_TOO_LONG, "uri-too-long", &msg));
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if declared > limits.max_request_body {
        let msg = format!("request body is {declared} bytes; at most {} are accepted", limits.max_request_body);
        return Some(refuse(node, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", &msg));
    }
    let served = &proxy.service.served;
    if !served.hosts.is_empty() {
        // The target's authority wins over Host (RFC 9112 §3.2.2).
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
        if let Some(host) = host
            && !served.serves_host(host)
        {
            let msg = format!("this node serves {}", served.hosts.join(", "));
            return Some(refuse(node, StatusCode::MISDIRECTED_REQUEST, "unknown-host", &msg));
        }
    }
    None
}

/// Accept errors: never spin, log at most once a second.
struct AcceptErrors {
    last_log: Option<Instant>,
    suppressed: u64,
    backoff: Duration,
}

impl AcceptErrors {
    async fn on_error(&mut self, e: &std::io::Error, registry: &Registry) {
        // Out of descriptors (ENFILE, EMFILE): free some held by idle
        // clients, enough for the next client and its upstream request.
        if matches!(e.raw_os_error(), Some(23 | 24)) {
            for _ in 0..8 {
                if !registry.evict_oldest_idle() {
                    break;
                }
            }
        }
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            tracing::warn!(error = %e, suppressed = self.suppressed, open = registry.open.load(Ordering::Relaxed), "accept failed");
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        ::metrics::counter!("fresco_accept_errors_total").increment(1);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(500));
    }
}

/// The open-file limit, from /proc (Linux), if known.
fn fd_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    text.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

/// `max_connections`, lowered if the open-file limit would run out first:
/// a quarter of the descriptors (at least 16, at most 2048) stays free for
/// upstream connections, the log and the admin listener, so the cap, not
/// the kernel, decides which client connection goes.
fn connection_cap(max_connections: usize, fd_limit: Option<usize>) -> usize {
    let Some(fds) = fd_limit else { return max_connections };
    let usable = fds.saturating_sub((fds / 4).clamp(16, 2048)).max(1);
    if usable < max_connections {
        tracing::warn!(
            fd_limit = fds,
            max_connections,
            using = usable,
            "the open-file limit is too low for `max_connections`; raise it (ulimit -n) or lower `max_connections`"
        );
    }
    max_connections.min(usable)
}

/// Serves the data listener until `shutdown` turns true, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    limits: ClientLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_connections = connection_cap(limits.max_connections, fd_limit());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog enforces header and idle deadlines for both protocols.
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_size.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_size as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next: AtomicU64::new(0),
        open: AtomicUsize::new(0),
        conns: Mutex::new(HashMap::new()),
    });
    let limits = Arc::new(limits);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut errors = AcceptErrors { last_log: None, suppressed: 0, backoff: Duration::from_millis(5) };
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    errors.on_error(&e, &registry).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        errors.backoff = Duration::from_millis(5);
        if registry.open.load(Ordering::Acquire) >= max_connections && !registry.evict_oldest_idle() {
            // Every connection is busy: refuse this one at once.
            closed(Closed::OverCapacity);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let registered = registry.register();
        let client = Client { addr, scheme };
        let conn = registered.conn.clone();
        let svc = service_fn({
            let (proxy, registry, conn, limits) = (proxy.clone(), registry.clone(), conn.clone(), limits.clone());
            move |req: Request<Incoming>| {
                let request = InProgress::begin(&registry, &conn);
                let proxy = proxy.clone();
                let refusal = refusal(&req, &limits, &proxy);
                let max = usize::try_from(limits.max_request_body).unwrap_or(usize::MAX);
                async move {
                    let resp = match refusal {
                        Some(resp) => resp,
                        // Bodies without a declared length are bounded as
                        // they arrive (a declared one was checked above).
                        None => {
                            let req = req.map(|b| http_body_util::BodyExt::boxed(http_body_util::Limited::new(b, max)));
                            proxy.handle(req, client).await
                        }
                    };
                    Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _request: request }))
                }
            }
        });
        let io = Watched { inner: stream, registry: registry.clone(), conn: conn.clone() };
        let (builder, watcher, tls, limits, registry) =
            (builder.clone(), graceful.watcher(), tls.clone(), limits.clone(), registry.clone());
        tokio::spawn(async move {
            let _registered = registered;
            let serve = async {
                match tls {
                    None => watcher.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned()).await,
                    Some(acceptor) => match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(s)) => watcher.watch(builder.serve_connection(TokioIo::new(s), svc).into_owned()).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            closed(Closed::TlsHandshake);
                            Ok(())
                        }
                    },
                }
            };
            tokio::select! {
                result = serve => {
                    if let Err(e) = result {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                }
                why = watchdog(&registry, &conn, &limits) => {
                    tracing::debug!(%addr, reason = why.as_str(), "closing client connection");
                    closed(why);
                }
            }
        });
    }
    drop(listener);
    tracing::info!("draining connections");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing");
    }
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_upstream() {
        assert_eq!(connection_cap(10_000, Some(20_000)), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024)), 768);
        assert_eq!(connection_cap(10_000, Some(64)), 48);
        assert_eq!(connection_cap(500, None), 500);
    }
}
