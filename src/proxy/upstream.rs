//! The upstream side: pooled keep-alive connections to the origin (or a
//! parent node), with connect and first-byte timeouts, a bounded number of
//! connections per upstream with a bounded queue in front, and one retry on
//! a fresh connection when a pooled one turns out to have been closed by
//! the origin. The total timeout is enforced where the body is read.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Why upstream gave no response; shown in Cache-Status `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    Connect(String),
    Timeout,
    Protocol(String),
    /// Every connection to this upstream is busy and its queue is full.
    QueueFull,
    /// Every connection stayed busy for the whole first-byte timeout.
    QueueTimeout,
}

impl UpstreamError {
    /// Every [`UpstreamError::detail`], so that the error counters are
    /// exported (at 0) before the first error.
    pub const DETAILS: [&'static str; 5] =
        ["upstream-connect", "upstream-timeout", "upstream-error", "upstream-queue-full", "upstream-queue-timeout"];

    /// A short token for Cache-Status `detail` and metrics.
    pub fn detail(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream-connect",
            UpstreamError::Timeout => "upstream-timeout",
            UpstreamError::Protocol(_) => "upstream-error",
            UpstreamError::QueueFull => "upstream-queue-full",
            UpstreamError::QueueTimeout => "upstream-queue-timeout",
        }
    }

    /// The body of the error response a client gets: short and stable, so
    /// no internal error text (addresses, library messages) reaches
    /// clients; the Cache-Status detail says which case it was and the
    /// node's log has the cause.
    pub fn client_message(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "the upstream server could not be reached\n",
            UpstreamError::Timeout => "the upstream server did not answer in time\n",
            UpstreamError::Protocol(_) => "the upstream server sent no valid response\n",
            UpstreamError::QueueFull | UpstreamError::QueueTimeout => {
                "too many requests are waiting for the upstream server\n"
            }
        }
    }

    /// The status to answer with when nothing stored can stand in.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            // The origin was never asked: this node is out of capacity for it.
            UpstreamError::QueueFull | UpstreamError::QueueTimeout => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "cannot connect to upstream: {e}"),
            UpstreamError::Timeout => f.write_str("upstream did not answer in time"),
            UpstreamError::Protocol(e) => write!(f, "upstream error: {e}"),
            UpstreamError::QueueFull => f.write_str("too many requests waiting for an upstream connection"),
            UpstreamError::QueueTimeout => f.write_str("no upstream connection became free in time"),
        }
    }
}

/// How the node talks to its upstreams; from the configuration.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Bounds the wait for a connection slot and the response head together.
    pub first_byte_timeout: Duration,
    /// How long an idle pooled connection is kept. Below the origin's own
    /// keep-alive timeout, so Fresco rarely reuses one the origin is closing.
    pub idle_timeout: Duration,
    /// Connections in use per upstream (origin or parent).
    pub max_connections: usize,
    /// Requests that may wait for a connection per upstream; past it, 503.
    pub queue: usize,
}

/// How long a parent that refused a connection is skipped.
const PARENT_DOWN_FOR: Duration = Duration::from_secs(5);

/// The connections one upstream may use at once, and the bounded queue of
/// requests waiting for one. Requests with a body may hold at most half of
/// them: a client that uploads slowly keeps its connection busy for as
/// long as it likes, and must not be able to starve the misses.
struct Slots {
    free: Arc<Semaphore>,
    with_body: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// What a request holds while it uses an upstream connection.
struct Slot {
    _connection: OwnedSemaphorePermit,
    _body_share: Option<OwnedSemaphorePermit>,
}

/// Counts a request as queued until dropped (also when its wait is
/// cancelled).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slots {
    fn new(settings: &UpstreamSettings) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(settings.max_connections)),
            with_body: Arc::new(Semaphore::new(settings.max_connections.div_ceil(2))),
            waiting: AtomicUsize::new(0),
            queue: settings.queue,
        }
    }

    async fn acquire(&self, deadline: tokio::time::Instant, has_body: bool) -> Result<Slot, UpstreamError> {
        let body_share = match has_body {
            true => Some(self.wait_for(&self.with_body, deadline).await?),
            false => None,
        };
        let connection = self.wait_for(&self.free, deadline).await?;
        Ok(Slot { _connection: connection, _body_share: body_share })
    }

    async fn wait_for(
        &self,
        semaphore: &Arc<Semaphore>,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, UpstreamError> {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(UpstreamError::QueueFull);
        }
        let _queued = Queued(&self.waiting);
        match tokio::time::timeout_at(deadline, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) => Err(UpstreamError::QueueFull),
            Err(_) => Err(UpstreamError::QueueTimeout),
        }
    }
}

struct Parent {
    base: Uri,
    slots: Slots,
    down_until: Mutex<Option<Instant>>,
}

/// An upstream response body. Holds its upstream's connection slot until
/// the body ends (or is dropped), because the connection is busy until then.
pub struct ResponseBody {
    inner: Incoming,
    slot: Option<Slot>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The way upstream: the origin, optionally through parent nodes (an
/// origin shield). With several parents each object goes to the one its key
/// ranks highest by rendezvous hashing, so the shield tier's capacity adds
/// up; a parent that refuses connections is skipped for a while and the
/// next in rank (finally the origin) is used.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    /// Keeps no idle connections: a retry must not pick another pooled
    /// connection the origin may be closing too.
    fresh: Client<HttpConnector, UpstreamBody>,
    origin: Uri,
    origin_slots: Arc<Slots>,
    parents: Arc<[Parent]>,
    first_byte_timeout: Duration,
}

impl Upstream {
    pub fn new(origin: Uri, parents: Vec<Uri>, settings: &UpstreamSettings) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_connections)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        let parents = parents
            .into_iter()
            .map(|base| Parent { base, slots: Slots::new(settings), down_until: Mutex::new(None) })
            .collect();
        Upstream {
            client,
            fresh,
            origin,
            origin_slots: Arc::new(Slots::new(settings)),
            parents,
            first_byte_timeout: settings.first_byte_timeout,
        }
    }

    /// The upstream URI for a request path (on the origin; `send` moves it
    /// to the chosen parent).
    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        with_base(&self.origin, path_and_query)
    }

    /// Where to send a request for `key`, in order of preference. The rank
    /// is a portable hash, so every node, whatever its build or machine,
    /// sends a key to the same parent.
    fn route(&self, key: &str) -> Vec<(&Uri, &Slots)> {
        let now = Instant::now();
        let mut ranked: Vec<(u64, &Parent)> = self
            .parents
            .iter()
            .filter(|p| p.down_until.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|t| t <= now))
            .map(|p| (rendezvous_rank(&p.base.to_string(), key), p))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked
            .into_iter()
            .map(|(_, p)| (&p.base, &p.slots))
            .chain(std::iter::once((&self.origin, &*self.origin_slots)))
            .collect()
    }

    fn mark_down(&self, base: &Uri) {
        if let Some(p) = self.parents.iter().find(|p| p.base == *base) {
            *p.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + PARENT_DOWN_FOR);
            tracing::warn!(parent = %base, "parent refused the connection; skipping it for {PARENT_DOWN_FOR:?}");
        }
    }

    /// Sends `req` for cache key `key` and waits for the response head.
    /// Requests without a body move on to the next parent when one refuses
    /// the connection.
    pub async fn send(&self, req: Request<UpstreamBody>, key: &str) -> Result<Response<ResponseBody>, UpstreamError> {
        if self.parents.is_empty() {
            return self.send_once(req, &self.origin_slots).await;
        }
        let retryable = req.method() == Method::GET || req.method() == Method::HEAD;
        let (parts, body) = req.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let route = self.route(key);
        let mut body = Some(body);
        for (i, (base, slots)) in route.iter().enumerate() {
            let mut attempt = Request::new(body.take().unwrap_or_else(crate::proxy::respond::empty));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = with_base(base, path_and_query);
            *attempt.headers_mut() = parts.headers.clone();
            match self.send_once(attempt, slots).await {
                Err(UpstreamError::Connect(e)) if retryable && i + 1 < route.len() => {
                    tracing::debug!(upstream = %base, error = %e, "trying the next upstream");
                    self.mark_down(base);
                }
                other => return other,
            }
        }
        Err(UpstreamError::Connect("no upstream accepted the connection".into()))
    }

    /// One exchange with one upstream: a connection slot, then the request.
    /// The slot wait and the response head share the first-byte timeout.
    /// A failure is logged here, where the upstream URL that failed is
    /// known (the origin or a parent), with its cause.
    async fn send_once(
        &self,
        req: Request<UpstreamBody>,
        slots: &Slots,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let url = req.uri().clone();
        let result = self.exchange(req, slots).await;
        match &result {
            // Overload is counted (fresco_origin_errors_total) rather than
            // logged per request, which would flood the log when it matters.
            Err(e @ (UpstreamError::QueueFull | UpstreamError::QueueTimeout)) => {
                tracing::debug!(upstream = %url, error = %e, "upstream request refused")
            }
            Err(e) => tracing::warn!(upstream = %url, error = %e, "upstream request failed"),
            Ok(_) => {}
        }
        result
    }

    async fn exchange(
        &self,
        req: Request<UpstreamBody>,
        slots: &Slots,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.first_byte_timeout;
        let slot = slots.acquire(deadline, !req.body().is_end_stream()).await?;
        let replay = replayable(&req);
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => return Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => match replay {
                // RFC 9112 §9.3.1: a pooled connection the origin closed
                // while the request went out; an idempotent request without
                // content is sent again, once, on a new connection.
                Some(again) if closed_under_request(&e) => {
                    tracing::debug!(error = %e, "upstream closed a pooled connection; retrying on a new one");
                    match tokio::time::timeout_at(deadline, self.fresh.request(again)).await {
                        Err(_) => return Err(UpstreamError::Timeout),
                        Ok(Ok(resp)) => resp,
                        Ok(Err(e)) => return Err(classify(e)),
                    }
                }
                _ => return Err(classify(e)),
            },
        };
        Ok(resp.map(|inner| ResponseBody { inner, slot: Some(slot) }))
    }
}

/// A copy of `req` to send again, when it is idempotent (RFC 9110 §9.2.2)
/// and carries no content that would have been consumed.
fn replayable(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let idempotent =
        matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut again = Request::new(crate::proxy::respond::empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// Did the connection go away under the request (closed or reset before a
/// response began), rather than the origin answering badly?
fn closed_under_request(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The error with its causes (`client error (Connect): tcp connect error:
/// Connection refused (os error 111)`), for the log.
fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    if !e.is_connect() {
        UpstreamError::Protocol(msg)
    } else if msg.contains("timed out") {
        UpstreamError::Timeout
    } else {
        UpstreamError::Connect(msg)
    }
}

/// Rendezvous (highest random weight) rank of `parent` for `key`, with
/// rapidhash v3, whose output is fixed across platforms and crate versions.
fn rendezvous_rank(parent: &str, key: &str) -> u64 {
    let mut bytes = Vec::with_capacity(parent.len() + 1 + key.len());
    bytes.extend_from_slice(parent.as_bytes());
    // Keys are URIs and hold no NUL, so the pair is unambiguous.
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    rapidhash::v3::rapidhash_v3(&bytes)
}

fn with_base(base: &Uri, path_and_query: &str) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_lists_every_detail() {
        let all = [
            UpstreamError::Connect(String::new()),
            UpstreamError::Timeout,
            UpstreamError::Protocol(String::new()),
            UpstreamError::QueueFull,
            UpstreamError::QueueTimeout,
        ];
        assert_eq!(all.map(|e| e.detail()), UpstreamError::DETAILS);
    }

    /// Nodes of different builds, versions and machines must rank parents
    /// alike: the ranks are pinned, so a change of hash fails here first.
    #[test]
    fn rendezvous_ranks_are_portable() {
        let ranks: Vec<u64> = ["http://shield-a:8081/", "http://shield-b:8081/"]
            .iter()
            .map(|p| rendezvous_rank(p, "http://shop.test/x"))
            .collect();
        assert_eq!(ranks, vec![18285116254135100540, 1835013484206726928]);
    }

    #[test]
    fn rendezvous_spreads_keys_over_parents() {
        let parents = ["http://shield-a:8081/", "http://shield-b:8081/", "http://shield-c:8081/"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let key = format!("http://shop.test/item/{i}");
            let best = (0..3).max_by_key(|&p| rendezvous_rank(parents[p], &key)).unwrap();
            counts[best] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
