//! Delivering invalidations: `POST /api/v1/invalidations` on a node's admin
//! API. A request counts as delivered only when the node answered 202,
//! which it does once the invalidation is durable in its log (design §3.3);
//! only then may the slot be confirmed past it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request as HttpRequest, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::batch::Request;

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

    /// Retries until accepted or refused: a change is never dropped because
    /// the node was briefly away.
    pub(crate) async fn deliver(&self, req: &Request) -> Result<(), String> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.send(req).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => {
                    metrics::counter!("fresco_cdc_delivery_errors_total", "kind" => "refused").increment(1);
                    return Err(format!("{}: {e}", self.endpoint));
                }
                Err(Failure::Transient(e)) => {
                    metrics::counter!("fresco_cdc_delivery_errors_total", "kind" => "transient").increment(1);
                    tracing::warn!(endpoint = %self.endpoint, key = %req.key, error = %e, "invalidation not accepted yet; retrying with the same key");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
