//! The upstream side: pooled keep-alive connections to the origin (or a
//! parent node), with connect and first-byte timeouts. The total timeout is
//! enforced where the body is read.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
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

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    base: Uri,
    first_byte_timeout: Duration,
}

impl Upstream {
    pub fn new(base: Uri, connect_timeout: Duration, first_byte_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream { client, base, first_byte_timeout }
    }

    /// The upstream URI for a request path.
    pub fn uri_for(&self, path_and_query: &str) -> Uri {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| self.base.clone())
    }

    /// Sends `req` and waits for the response head.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, UpstreamError> {
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
