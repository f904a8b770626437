//! Delivering invalidations, to a node's admin API (`POST
//! /api/v1/invalidations`) or straight into the cluster's log on NATS
//! JetStream. A request counts as delivered only when it is durable: the
//! node answered 202, which it does once the invalidation is in its log
//! (design §3.3), or JetStream acknowledged the message. Only then may the
//! slot be confirmed past it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request as HttpRequest, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::batch::Request;
use crate::invalidation::{NewInvalidation, Selector};

/// Bound on one attempt; the request is then retried with the same key.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The node is out of reach, busy (429) or its log is (503): retried
    /// with the same idempotency key until it is accepted.
    Transient(String),
    /// The node refused the request itself (a bad token, a tag it rejects):
    /// retrying cannot help; the relay stops without confirming, so the
    /// change is delivered once the operator fixed the cause.
    Refused(String),
}

/// Where invalidations go.
pub(crate) enum Sink {
    Admin(AdminSink),
    Bus(BusSink),
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Sink::Admin(a) => a.endpoint.to_string(),
            Sink::Bus(b) => b.url.clone(),
        }
    }

    async fn send(&self, req: &Request) -> Result<(), Failure> {
        match self {
            Sink::Admin(a) => a.send(req).await,
            Sink::Bus(b) => b.send(req).await,
        }
    }

    /// Retries until accepted or refused: a change is never dropped because
    /// the node or the bus was briefly away.
    pub(crate) async fn deliver(&self, req: &Request) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.send(req).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => {
                    metrics::counter!("fresco_cdc_delivery_errors_total", "kind" => "refused").increment(1);
                    return Err(format!("{}: {e}", self.name()));
                }
                Err(Failure::Transient(e)) => {
                    metrics::counter!("fresco_cdc_delivery_errors_total", "kind" => "transient").increment(1);
                    tracing::warn!(to = %self.name(), key = %req.key, error = %e, "invalidation not accepted yet; retrying with the same key");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// The cluster's log on NATS JetStream, written directly (`--bus`): no node
/// in the path, the bus's credentials are the authorisation.
pub(crate) struct BusSink {
    js: async_nats::jetstream::Context,
    url: String,
}

impl BusSink {
    pub(crate) async fn connect(url: &str) -> Result<BusSink, String> {
        let mut options = async_nats::ConnectOptions::new().name("fresco cdc").request_timeout(Some(ATTEMPT_TIMEOUT));
        // The client ignores credentials written in the URL: pass them on.
        let first = url.split(',').next().unwrap_or_default().trim();
        if let Ok(addr) = first.parse::<async_nats::ServerAddr>()
            && let Some(user) = addr.username()
        {
            options = options.user_and_password(user.to_string(), addr.password().unwrap_or_default().to_string());
        }
        let client = options.connect(url).await.map_err(|e| format!("--bus {url}: cannot connect: {e}"))?;
        Ok(BusSink { js: async_nats::jetstream::new(client), url: url.to_string() })
    }

    async fn send(&self, req: &Request) -> Result<(), Failure> {
        let invalidation = NewInvalidation {
            selectors: req.tags.iter().map(|t| Selector::Tag(t.clone())).collect(),
            mode: req.mode,
            reason: req.reason.clone(),
            issuer: "fresco-cdc".into(),
            break_glass: false,
        };
        let publish = crate::invalidation::nats::publish_external(&self.js, invalidation, &req.key);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Transient(e)),
            Err(_) => Err(Failure::Transient(format!("no acknowledgement within {ATTEMPT_TIMEOUT:?}"))),
        }
    }
}

pub(crate) struct AdminSink {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
    authorization: Option<String>,
}

impl AdminSink {
    pub(crate) fn new(admin: &str, token: Option<&str>) -> Result<AdminSink, String> {
        let base = admin.trim_end_matches('/');
        let endpoint: Uri = format!("{base}/api/v1/invalidations")
            .parse()
            .map_err(|e| format!("--admin {admin:?} is not a URL such as http://127.0.0.1:9091: {e}"))?;
        if endpoint.scheme_str() != Some("http") || endpoint.host().is_none() {
            return Err(format!("--admin {admin:?}: give the node's admin listener as http://HOST:PORT"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(AdminSink {
            client: Client::builder(TokioExecutor::new()).build(connector),
            endpoint,
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    /// One attempt.
    pub(crate) async fn send(&self, req: &Request) -> Result<(), Failure> {
        let body = json!({ "tags": req.tags, "mode": req.mode, "reason": req.reason });
        let mut builder = HttpRequest::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", &req.key);
        if let Some(auth) = &self.authorization {
            builder = builder.header("authorization", auth);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
        let attempt = async {
            let resp = self.client.request(request).await.map_err(|e| Failure::Transient(format!("{e:?}")))?;
            let status = resp.status();
            let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&text).into_owned();
            match status {
                StatusCode::ACCEPTED | StatusCode::OK => Ok(()),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                    Err(Failure::Transient(format!("{status}: {text}")))
                }
                s if s.is_server_error() => Err(Failure::Transient(format!("{status}: {text}"))),
                s => Err(Failure::Refused(format!("the admin API answered {s}: {text}"))),
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Transient(format!("no answer within {ATTEMPT_TIMEOUT:?}"))),
        }
    }
}
