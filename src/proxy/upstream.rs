//! The upstream side: pooled keep-alive connections to the origin (or a
//! parent node), with connect and first-byte timeouts. The total timeout is
//! enforced where the body is read.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Why upstream gave no response; shown in Cache-Status `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    Connect(String),
    Timeout,
    Protocol(String),
}

impl UpstreamError {
    /// A short token for Cache-Status `detail` and metrics.
    pub fn detail(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream-connect",
            UpstreamError::Timeout => "upstream-timeout",
            UpstreamError::Protocol(_) => "upstream-error",
        }
    }

    /// The status to answer with when nothing stored can stand in.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
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
        }
    }
}

/// How long a parent that refused a connection is skipped.
const PARENT_DOWN_FOR: Duration = Duration::from_secs(5);

struct Parent {
    base: Uri,
    down_until: Mutex<Option<Instant>>,
}

/// The way upstream: the origin, optionally through parent nodes (an
/// origin shield). With several parents each object goes to the one its key
/// ranks highest by rendezvous hashing, so the shield tier's capacity adds
/// up; a parent that refuses connections is skipped for a while and the
/// next in rank (finally the origin) is used.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    origin: Uri,
    parents: Arc<[Parent]>,
    first_byte_timeout: Duration,
}

impl Upstream {
    pub fn new(origin: Uri, parents: Vec<Uri>, connect_timeout: Duration, first_byte_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let parents = parents.into_iter().map(|base| Parent { base, down_until: Mutex::new(None) }).collect();
        Upstream { client, origin, parents, first_byte_timeout }
    }

    /// The upstream URI for a request path (on the origin; `send` moves it
    /// to the chosen parent).
    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        with_base(&self.origin, path_and_query)
    }

    /// Where to send a request for `key`, in order of preference.
    fn route(&self, key: &str) -> Vec<&Uri> {
        let now = Instant::now();
        let mut ranked: Vec<(u64, &Parent)> = self
            .parents
            .iter()
            .filter(|p| p.down_until.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|t| t <= now))
            .map(|p| {
                let mut h = std::hash::DefaultHasher::new();
                (p.base.to_string().as_str(), key).hash(&mut h);
                (h.finish(), p)
            })
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked.into_iter().map(|(_, p)| &p.base).chain(std::iter::once(&self.origin)).collect()
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
    pub async fn send(&self, req: Request<UpstreamBody>, key: &str) -> Result<Response<Incoming>, UpstreamError> {
        if self.parents.is_empty() {
            return self.send_once(req).await;
        }
        let retryable = req.method() == Method::GET || req.method() == Method::HEAD;
        let (parts, body) = req.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let route = self.route(key);
        let mut body = Some(body);
        for (i, base) in route.iter().enumerate() {
            let mut attempt = Request::new(body.take().unwrap_or_else(crate::proxy::respond::empty));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = with_base(base, path_and_query);
            *attempt.headers_mut() = parts.headers.clone();
            match self.send_once(attempt).await {
                Err(UpstreamError::Connect(e)) if retryable && i + 1 < route.len() => {
                    tracing::debug!(upstream = %base, error = %e, "trying the next upstream");
                    self.mark_down(base);
                }
                other => return other,
            }
        }
        Err(UpstreamError::Connect("no upstream accepted the connection".into()))
    }

    async fn send_once(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                if msg.contains("timed out") { Err(UpstreamError::Timeout) } else { Err(UpstreamError::Connect(msg)) }
            }
            Ok(Err(e)) => Err(UpstreamError::Protocol(e.to_string())),
        }
    }
}

fn with_base(base: &Uri, path_and_query: &str) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}
