//! Requests Fresco does not answer from its store: unsafe methods (with the
//! invalidation RFC 9111 §4.4 requires), GET and HEAD requests with content,
//! HEAD requests that miss (with the freshening of §4.3.5), and `PURGE`;
//! and the one place that builds every request sent upstream.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING, VIA};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::fetch::Asked;
use super::upstream::{BoxError, UpstreamBody};
use super::{Candidate, Client, Proxy, Target};
use crate::access::Denied;
use crate::invalidation::service::Refused;
use crate::invalidation::{LogError, Mode, NewInvalidation, Selector};
use crate::metrics;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::policy::request::RequestDirectives;
use crate::policy::{conditional, headers, tags};
use crate::store::CachedObject;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Request fields that origins and frameworks commonly use to rebuild the
/// request's host, scheme, path or method, and that published web cache
/// poisoning research found reflected into cacheable responses. Removed
/// from GET and HEAD requests unless named in `key_headers`; Fresco sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host` itself.
const STEERING_FIELDS: [HeaderName; 20] = [
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// What became of the client's request body while it was forwarded.
const BODY_OK: u8 = 0;
const BODY_MALFORMED: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;

pub(super) const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

impl Proxy {
    /// The request Fresco sends upstream for a client request: hop-by-hop
    /// fields removed, the canonical Host, Via and X-Forwarded-* added, and
    /// for fills the client's own conditionals replaced by Fresco's
    /// validators: `fill` is `Some(validators)` for a fetch Fresco may
    /// store, `None` to pass the request through as the client sent it.
    ///
    /// For GET and HEAD, whose answers may be stored or freshen what is
    /// stored, the request header fields that origins commonly act on but
    /// the key does not include ([`STEERING_FIELDS`]) are removed unless the
    /// configuration makes them part of the key: one client must not be
    /// able to shape what every later client gets.
    pub(super) fn upstream_request(
        &self,
        method: &Method,
        target: &Target,
        client: Client,
        client_headers: &HeaderMap,
        fill: Option<Vec<(HeaderName, HeaderValue)>>,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let mut h = client_headers.clone();
        headers::remove_hop_by_hop(&mut h);
        let keyed = |name: &HeaderName| self.settings.keys.headers.contains(name);
        let cacheable = *method == Method::GET || *method == Method::HEAD;
        if cacheable {
            for name in STEERING_FIELDS {
                if !keyed(&name) {
                    h.remove(name);
                }
            }
            // What is sent must be framed exactly as it is sent: a bodiless
            // request carries no framing fields of the client's.
            if http_body::Body::is_end_stream(&body) {
                h.remove(CONTENT_LENGTH);
                h.remove(TRANSFER_ENCODING);
            }
        }
        if let Some(validators) = fill {
            for name in conditional::CLIENT_CONDITIONALS {
                h.remove(name);
            }
            // Fills fetch the whole representation.
            h.remove(http::header::RANGE);
            h.remove(http::header::IF_RANGE);
            for (name, value) in validators {
                h.insert(name, value);
            }
        }
        // RFC 9112 §3.2.2: the target's authority, normalised as in the key.
        if let Ok(v) = HeaderValue::from_str(&target.authority) {
            h.insert(HOST, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("1.1 {}", self.settings.node_name)) {
            h.append(VIA, v);
        }
        append_forwarded_for(&mut h, client.addr.ip());
        // RFC 8586: lets a parent Fresco know its client is a cache (and
        // detect loops).
        if let Ok(v) = HeaderValue::from_str(&self.settings.node_name) {
            h.append(CDN_LOOP, v);
        }
        // Fresco says what it knows, whatever the client claimed.
        if !keyed(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.scheme));
        }
        if !keyed(&X_FORWARDED_HOST)
            && let Ok(v) = HeaderValue::from_str(&target.authority)
        {
            h.insert(X_FORWARDED_HOST, v);
        }
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = self.upstream.uri_for(&target.path_and_query);
        *req.headers_mut() = h;
        req
    }

    /// Forwards a request and streams the response back, storing nothing.
    /// After a successful unsafe method the target URI and same-origin
    /// Location / Content-Location are invalidated (RFC 9111 §4.4).
    pub(super) async fn forward(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        target: &Target,
        client: Client,
        mut status: CacheStatus,
    ) -> Response<UpstreamBody> {
        let (parts, body) = req.into_parts();
        // A request body the client could not frame (a malformed chunk, a
        // short Content-Length) or that outgrew `max_request_body` is the
        // client's error, not the origin's.
        let client_body = Arc::new(AtomicU8::new(BODY_OK));
        let flag = client_body.clone();
        let body = body
            .map_err(move |e: BoxError| {
                let why = if e.is::<http_body_util::LengthLimitError>() { BODY_TOO_LARGE } else { BODY_MALFORMED };
                flag.store(why, Ordering::Release);
                e
            })
            .boxed();
        let upstream_req = self.upstream_request(&parts.method, target, client, &parts.headers, None, body);
        metrics::origin_request("pass");
        let started = Instant::now();
        let resp = match self.upstream.send(upstream_req, &target.key.key).await {
            Ok(r) => {
                metrics::origin_response("pass", started.elapsed());
                r
            }
            Err(_) if client_body.load(Ordering::Acquire) == BODY_TOO_LARGE => {
                status.detail = Some("body-too-large".into());
                return self.error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    status,
                    "the request body exceeds max_request_body\n",
                );
            }
            Err(_) if client_body.load(Ordering::Acquire) == BODY_MALFORMED => {
                status.detail = Some("request-body".into());
                return self.error(StatusCode::BAD_REQUEST, status, "the request body is malformed or incomplete\n");
            }
            Err(e) => {
                metrics::origin_error(e.detail());
                status.detail = Some(e.detail().into());
                return self.error(e.status(), status, e.client_message());
            }
        };
        let (resp_parts, resp_body) = resp.into_parts();
        self.invalidate_after_unsafe(&parts.method, resp_parts.status, target, client, &resp_parts.headers);
        status.fwd_status = Some(resp_parts.status.as_u16());
        if let Err(e) =
            self.cache_group_invalidation(&parts.method, resp_parts.status, target, &resp_parts.headers).await
        {
            // The origin asked for an invalidation that could not be logged:
            // relaying its success would acknowledge an invalidation that
            // is lost. Say so, so the client retries.
            status.detail = Some("invalidation-not-logged".into());
            let msg = format!(
                "the origin answered {}, but its Cache-Group-Invalidation was not logged: {e}\n",
                resp_parts.status
            );
            return self.error(StatusCode::SERVICE_UNAVAILABLE, status, &msg);
        }
        let deadline = tokio::time::Instant::from_std(started + self.settings.total_timeout);
        let body = with_deadline(resp_body, deadline);
        self.relay(resp_parts.status, resp_parts.headers, body, status)
    }

    /// A HEAD that Fresco cannot answer from its store goes upstream as
    /// HEAD. A 200 then freshens the stored GET response it describes, or
    /// marks it stale when it describes another one (§4.3.5). Only an
    /// object the validity check still accepts when the answer arrives is
    /// touched, the merge goes through the same admission as a fill, and it
    /// carries the stamp of a fetch that started when the HEAD was sent.
    pub(super) async fn forward_head(
        self: &Arc<Self>,
        parts: Parts,
        target: &Target,
        client: Client,
        stored: Option<Arc<CachedObject>>,
        fwd: Fwd,
    ) -> Response<UpstreamBody> {
        let mut status = CacheStatus::forward(fwd);
        let request_time = SystemTime::now();
        let fetch = self.invalidations.begin_fetch();
        let req = self.upstream_request(&Method::HEAD, target, client, &parts.headers, None, super::respond::empty());
        metrics::origin_request("head");
        let sent = std::time::Instant::now();
        let resp = match self.upstream.send(req, &target.key.key).await {
            Ok(r) => {
                metrics::origin_response("head", sent.elapsed());
                r
            }
            Err(e) => {
                metrics::origin_error(e.detail());
                status.detail = Some(e.detail().into());
                let code = if stored.is_some() { StatusCode::GATEWAY_TIMEOUT } else { e.status() };
                return self.error(code, status, "");
            }
        };
        let response_time = SystemTime::now();
        let (resp_parts, _) = resp.into_parts();
        status.fwd_status = Some(resp_parts.status.as_u16());
        if resp_parts.status == StatusCode::OK
            && let Candidate::Found(obj, state) = self.candidate(target, &parts.headers)
        {
            let stored = obj.headers.to_map();
            // A soft purge promises revalidation with validators: a HEAD
            // that matches only by Content-Length proves nothing about the
            // stored body.
            let proven = !state.soft_invalidated || conditional::validator_matches(&stored, &resp_parts.headers);
            if proven && conditional::head_matches(&stored, &resp_parts.headers) {
                let rd = RequestDirectives::from_headers(&parts.headers);
                let times = (request_time, response_time);
                let asked = Asked { target, headers: &parts.headers, directives: &rd };
                let (_, shared) = self.merge_update(asked, &obj, &resp_parts.headers, times, fetch.stamp);
                if let Some(shared) = shared {
                    self.store_object(&target.key.key, shared);
                }
            } else {
                // Keeps its old stamp: marking stale never revives anything.
                let mut stale = (*obj).clone();
                stale.policy.lifetime = std::time::Duration::ZERO;
                self.store_object(&target.key.key, Arc::new(stale));
            }
        }
        self.relay(resp_parts.status, resp_parts.headers, super::respond::empty(), status)
    }

    /// RFC 9875 §3: a non-error response to an unsafe request may name
    /// groups (tags) to invalidate. Fresco fronts one origin, so the groups
    /// are that origin's; the invalidation goes through the log like any
    /// other, so every node applies it. The response waits for it, so the
    /// client's next read cannot see the old content.
    async fn cache_group_invalidation(
        &self,
        method: &Method,
        status: StatusCode,
        target: &Target,
        response: &HeaderMap,
    ) -> Result<(), LogError> {
        if method.is_safe() || !(status.is_success() || status.is_redirection()) {
            return Ok(());
        }
        let groups = tags::cache_groups(response, "cache-group-invalidation");
        if groups.is_empty() {
            return Ok(());
        }
        let inv = NewInvalidation {
            selectors: groups.into_iter().filter(|g| g.len() <= tags::MAX_TAG_LEN).map(Selector::Tag).collect(),
            mode: Mode::Hard,
            reason: format!("Cache-Group-Invalidation on {method} {}", target.key.url),
            issuer: "origin".into(),
            break_glass: false,
        };
        self.service.append(inv).await.map(drop).inspect_err(|e| {
            tracing::error!(url = %target.key.url, error = %e, "Cache-Group-Invalidation not applied");
        })
    }

    /// The conventional PURGE method for one URL (all its variants): only
    /// from the configured client networks and with a token whose scope
    /// covers the URL. `Fresco-Purge-Mode: soft` marks stale instead.
    pub(super) async fn purge<B>(&self, req: &Request<B>, target: &Target, client: Client) -> Response<UpstreamBody> {
        let status = CacheStatus::forward(Fwd::Method).with_detail("purge");
        if !self.service.access.purge_allowed_from(client.addr.ip()) {
            let msg = format!("PURGE is not allowed from {}\n", client.addr.ip());
            return self.error(StatusCode::FORBIDDEN, status, &msg);
        }
        let mode = match req.headers().get("fresco-purge-mode").map(|v| v.as_bytes()) {
            None | Some(b"hard") => Mode::Hard,
            Some(b"soft") => Mode::Soft,
            Some(_) => {
                return self.error(StatusCode::BAD_REQUEST, status, "Fresco-Purge-Mode must be `hard` or `soft`\n");
            }
        };
        let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let selectors = vec![Selector::Url(target.key.url.clone())];
        match self.service.submit(authorization, selectors, mode, "PURGE method".into(), false).await {
            Ok(entry) => {
                let body = format!("{{\"id\":\"{}\",\"version\":{}}}\n", entry.id(), entry.version);
                let mut h = HeaderMap::new();
                h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self.relay(StatusCode::OK, h, super::respond::full(Bytes::from(body)), status)
            }
            Err(refused) => {
                let (code, msg) = match refused {
                    Refused::Invalid(m) => (StatusCode::BAD_REQUEST, m),
                    Refused::Denied(Denied::Unauthenticated(m)) => (StatusCode::UNAUTHORIZED, m.to_string()),
                    Refused::Denied(Denied::Forbidden(m)) => (StatusCode::FORBIDDEN, m),
                    Refused::Denied(Denied::RateLimited { .. }) | Refused::Log(LogError::Busy) => {
                        (StatusCode::TOO_MANY_REQUESTS, "too many invalidations; retry shortly".into())
                    }
                    Refused::Log(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                };
                self.error(code, status, &format!("{msg}\n"))
            }
        }
    }

    /// RFC 9111 §4.4.
    fn invalidate_after_unsafe(
        &self,
        method: &Method,
        status: StatusCode,
        target: &Target,
        client: Client,
        response: &HeaderMap,
    ) {
        let Ok(uri) = Uri::builder()
            .scheme(client.scheme)
            .authority(target.authority.as_str())
            .path_and_query(target.path_and_query.as_str())
            .build()
        else {
            return;
        };
        for t in headers::unsafe_invalidation_targets(method, status, &uri, response) {
            let key = self.settings.keys.key(
                t.scheme_str().unwrap_or(client.scheme),
                t.authority().map_or(target.authority.as_str(), |a| a.as_str()),
                t.path_and_query().map_or("/", |p| p.as_str()),
                &HeaderMap::new(),
            );
            self.invalidations.invalidate_local(&key.url);
            metrics::local_invalidation();
        }
    }
}

fn append_forwarded_for(h: &mut HeaderMap, ip: IpAddr) {
    let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// A pass-through body that fails once the total timeout passes.
fn with_deadline(body: super::upstream::ResponseBody, deadline: tokio::time::Instant) -> UpstreamBody {
    let stream = futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => Some((Err::<hyper::body::Frame<Bytes>, BoxError>("upstream body timed out".into()), None)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(Box::new(e) as BoxError), None)),
            Ok(Some(Ok(frame))) => Some((Ok(frame), Some(body))),
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}
