//! The one HTTP client of `fresco audit` and `fresco diagnose`: HTTP and
//! HTTPS (rustls with the system's roots), a bounded wait, and a bounded
//! body, so that a hostile or endless site cannot hold or fill the tool.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How much of a body the tools read: enough for any page or stylesheet
/// worth scanning; the rest is not needed to judge headers.
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;
/// Redirects followed for one resource (as browsers cap theirs, lower).
const MAX_REDIRECTS: usize = 5;

/// One exchange as the tool saw it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// The URL that answered (after redirects).
    pub url: Uri,
    pub status: u16,
    pub headers: HeaderMap,
    /// At most [`MAX_BODY`] bytes; `truncated` says when more was sent.
    pub body: Bytes,
    pub truncated: bool,
}

pub(crate) struct Fetcher {
    https: Option<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Fetcher {
    pub(crate) fn new(timeout: Duration) -> Fetcher {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        // Without system roots, plain HTTP still works and HTTPS says why not.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .ok()
            .map(|b| b.https_or_http().enable_http1().enable_http2().build())
            .map(|c| Client::builder(TokioExecutor::new()).build(c));
        let http = Client::builder(TokioExecutor::new()).build_http();
        Fetcher { https, http, timeout }
    }

    /// One request, no redirects followed. `host` overrides the Host field
    /// (to ask a cache layer for the public URL's resource).
    pub(crate) async fn once(
        &self,
        method: &Method,
        url: &Uri,
        host: Option<&str>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Fetched, String> {
        let mut req = Request::builder().method(method.clone()).uri(url.clone());
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        req = req.header(http::header::USER_AGENT, concat!("fresco/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Empty::new()).map_err(|e| format!("{url}: {e}"))?;
        let call = async {
            let resp = match url.scheme_str() {
                Some("https") => match &self.https {
                    Some(c) => c.request(req).await,
                    None => return Err(format!("{url}: no CA certificates found on this system for HTTPS")),
                },
                Some("http") => self.http.request(req).await,
                _ => return Err(format!("{url}: only http:// and https:// URLs can be fetched")),
            }
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let (body, truncated) = read_capped(resp.into_body()).await.map_err(|e| format!("{url}: body: {e}"))?;
            Ok(Fetched { url: url.clone(), status, headers, body, truncated })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("{url}: no complete answer within {} s", self.timeout.as_secs()))?
    }

    /// A GET that follows redirects (at most [`MAX_REDIRECTS`]).
    pub(crate) async fn get(&self, url: &Uri, headers: &[(HeaderName, HeaderValue)]) -> Result<Fetched, String> {
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let got = self.once(&Method::GET, &current, None, headers).await?;
            let location = got.headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok());
            match (got.status, location) {
                (301 | 302 | 303 | 307 | 308, Some(loc)) => {
                    current = crate::policy::headers::resolve(&current, loc)
                        .ok_or_else(|| format!("{current}: redirect to an unusable Location {loc:?}"))?;
                }
                _ => return Ok(got),
            }
        }
        Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
    }
}

async fn read_capped(body: hyper::body::Incoming) -> Result<(Bytes, bool), String> {
    let mut body = Limited::new(body, MAX_BODY);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Ok((Bytes::from(out), true)),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((Bytes::from(out), false))
}

/// The error and its sources, since hyper's top-level message alone
/// ("client error (Connect)") does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
