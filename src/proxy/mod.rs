//! The data path: a request comes in, is looked up, and is answered from
//! the store, from a (shared) upstream fetch, or by forwarding it as it is.
//!
//! Every caching decision is delegated to [`crate::policy`] with `now`
//! passed in; this module does the I/O around those decisions.
//!
//! - [`fetch`]: coalesced fills and revalidations, storing what may be stored
//! - [`forward`]: pass-through of uncacheable requests, RFC 9111 §4.4 and §4.3.5
//! - [`respond`]: building client responses (Age, Cache-Status, 304s, HEAD)
//! - [`fill`]: one upstream body streamed to many clients
//! - [`slice`]: large objects stored in slices, ranges that never fetch the whole file
//! - [`upstream`]: the pooled client to the origin or a parent

pub mod fetch;
pub mod fill;
pub mod forward;
pub mod respond;
pub mod slice;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, Response, StatusCode};

use crate::classes::Classes;
use crate::invalidation::nats::NodeCounters;
use crate::invalidation::service::Service;
use crate::invalidation::{Invalidations, Validity};
use crate::key::{CacheKey, KeyPolicy};
use crate::metrics;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::policy::request::{self, ObjectState, RequestDirectives, Reuse, ValidateReason};
use crate::policy::response::PolicyConfig;
use crate::store::{CachedObject, Store};

use fill::Fill;
use upstream::{Upstream, UpstreamBody};

/// How many times a request may pass nodes with this node's name (parents
/// and children share names by default) before it is taken for a loop.
const MAX_HOPS: usize = 4;

/// How the data path behaves; built from the node's configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// This cache's name in Cache-Status and Via.
    pub node_name: String,
    pub policy: PolicyConfig,
    pub keys: KeyPolicy,
    pub max_object_size: usize,
    /// Responses larger than this are stored in slices of this size (0: off).
    pub slice_size: usize,
    /// Limit on a whole upstream response, body included.
    pub total_timeout: Duration,
    pub expose_tag_headers: bool,
    /// Remove the targeted fields (`CDN-Cache-Control`) from client
    /// responses; by default they go on to downstream CDNs (RFC 9213 §2.1).
    pub strip_cdn_cache_control: bool,
    /// How long a client waits on another client's fetch before fetching
    /// itself.
    pub lock_timeout: Duration,
    /// How long a key whose response could not be shared skips coalescing
    /// (Varnish's hit-for-pass), so its requests do not queue.
    pub uncacheable_ttl: Duration,
    pub max_variants: usize,
    pub classes: Classes,
    /// One line per response when `access_log` is set.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Served staleness per content class, against its freshness SLO.
    pub freshness: Arc<crate::freshness::Freshness>,
}

impl ProxySettings {
    pub fn new(node_name: String) -> ProxySettings {
        ProxySettings {
            node_name,
            policy: PolicyConfig::default(),
            keys: KeyPolicy::default(),
            max_object_size: 16 << 20,
            slice_size: 1 << 20,
            total_timeout: Duration::from_secs(300),
            expose_tag_headers: false,
            strip_cdn_cache_control: false,
            lock_timeout: Duration::from_secs(30),
            uncacheable_ttl: Duration::from_secs(10),
            max_variants: 16,
            classes: Classes::default(),
            access_log: None,
            freshness: Arc::default(),
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
    /// `http` or `https`, as the client spoke to us.
    pub scheme: &'static str,
}

/// Why a stored object may not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Selected by other request header values (§4.1).
    Vary,
    /// §3.5.
    Authorization,
    /// Removed by an invalidation.
    Invalidated,
    /// Invalidations this node knows it missed are still arriving.
    CatchingUp,
}

impl Refusal {
    fn detail(self) -> &'static str {
        match self {
            Refusal::Vary => "vary",
            Refusal::Authorization => "authorization",
            Refusal::Invalidated => "invalidated",
            Refusal::CatchingUp => "catching-up",
        }
    }
}

/// What the store holds for a request.
pub(super) enum Candidate {
    Found(Arc<CachedObject>, ObjectState),
    Missing { fwd: Fwd, detail: Option<&'static str> },
}

/// The request target, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub key: CacheKey,
    pub path_and_query: String,
    pub authority: String,
}

pub struct Proxy {
    pub settings: ProxySettings,
    pub store: Arc<dyn Store>,
    pub invalidations: Arc<Invalidations>,
    /// Accepts invalidations: PURGE requests and the origin's
    /// Cache-Group-Invalidation go through the same log as the API.
    pub service: Arc<Service>,
    /// Hits and requests, for the cluster's hit ratios.
    pub counters: Arc<NodeCounters>,
    upstream: Upstream,
    /// Fills in progress, by cache key; shared with each fill's producer,
    /// which removes its entry however it ends.
    inflight: Arc<Mutex<HashMap<String, Arc<Fill>>>>,
    /// Keys whose last response could not be shared, until when.
    uncacheable: Mutex<HashMap<String, Instant>>,
}

impl Proxy {
    pub fn new(
        settings: ProxySettings,
        store: Arc<dyn Store>,
        invalidations: Arc<Invalidations>,
        upstream: Upstream,
        service: Arc<Service>,
        counters: Arc<NodeCounters>,
    ) -> Proxy {
        Proxy {
            settings,
            store,
            invalidations,
            service,
            counters,
            upstream,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            uncacheable: Mutex::new(HashMap::new()),
        }
    }

    /// Answers one client request. Never fails: every problem becomes a
    /// response with a status and a Cache-Status detail.
    pub async fn handle(self: Arc<Self>, req: Request<UpstreamBody>, client: Client) -> Response<UpstreamBody> {
        let started = Instant::now();
        // The content class needs the path; only kept when classes exist.
        let path = (!self.settings.classes.0.is_empty()).then(|| req.uri().path().to_string());
        let request_line = self.settings.access_log.as_ref().map(|_| crate::access_log::RequestLine::of(&req));
        let loop_ids: Vec<String> = req
            .headers()
            .get_all(forward::CDN_LOOP)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|id| id.split(';').next().map(|id| id.trim().to_string()))
            .collect();
        let hops = loop_ids.iter().filter(|id| **id == self.settings.node_name).count();
        let mut resp = if hops >= MAX_HOPS {
            let status = CacheStatus::forward(Fwd::Bypass).with_detail("loop");
            self.error(StatusCode::LOOP_DETECTED, status, "request loop: this node already handled it\n")
        } else {
            self.dispatch(req, client).await
        };
        // A client that announced itself in CDN-Loop is a CDN cache (a child
        // node, say): the targeted and tag fields are for it too.
        if loop_ids.is_empty() {
            self.strip_cache_fields(resp.headers_mut());
        }
        let content_class = path.as_deref().and_then(|p| {
            let content_type = resp.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            self.settings.classes.classify(p, content_type)
        });
        let label = metrics::request_finished(&resp, started.elapsed(), content_class.map(|c| c.name.as_str()));
        if let Some(class) = content_class {
            let staleness = resp.extensions().get::<crate::freshness::Staleness>().map_or(Duration::ZERO, |s| s.0);
            self.settings.freshness.record(class, staleness);
        }
        if let (Some(log), Some(line)) = (&self.settings.access_log, request_line) {
            log.response(&line, client.addr.ip(), &resp, started.elapsed());
        }
        self.counters.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if label == "hit" {
            self.counters.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        resp
    }

    async fn dispatch(self: &Arc<Self>, req: Request<UpstreamBody>, client: Client) -> Response<UpstreamBody> {
        let authority = match crate::key::request_authority(req.uri(), req.headers()) {
            Ok(a) => a,
            Err(e) => {
                let detail = if e == crate::key::HostError::Missing { "missing-host" } else { "bad-host" };
                return self.error(
                    StatusCode::BAD_REQUEST,
                    CacheStatus::forward(Fwd::Bypass).with_detail(detail),
                    e.message(),
                );
            }
        };
        let raw_target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let key = self.settings.keys.key(client.scheme, &authority, raw_target, req.headers());
        // Fresco forwards exactly what it keys: the normalised target and
        // host, so a response can only be stored under the request it
        // answers.
        let target =
            Target { path_and_query: key.path_and_query().to_string(), authority: key.host().to_string(), key };
        let method = req.method().clone();
        if let Some(refused) = self.refuse_framing(&req) {
            return refused;
        }
        if method.as_str() == "PURGE" {
            return self.purge(&req, &target, client).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return self.forward(req, &target, client, CacheStatus::forward(Fwd::Method)).await;
        }
        // A GET or HEAD with content (RFC 9110 §9.3.1: no defined meaning)
        // is passed through with that content, framed as received, and its
        // answer never stored: the content may have mattered to it.
        if !http_body::Body::is_end_stream(req.body()) {
            let status = CacheStatus::forward(Fwd::Bypass).with_detail("request-body");
            return self.forward(req, &target, client, status).await;
        }
        // Authenticated requests take the same path: §3.5 (in
        // policy::response::admit) decides whether their responses may be
        // shared.
        self.lookup(req, target, client).await
    }

    /// Requests Fresco answers itself because forwarding them could not be
    /// done safely: CONNECT and TRACE (a reverse proxy tunnels nothing and
    /// reflects nothing), and transfer codings other than chunked, which it
    /// cannot pass on as received (RFC 9112 §6.1: 501).
    fn refuse_framing<B>(&self, req: &Request<B>) -> Option<Response<UpstreamBody>> {
        let status = || CacheStatus::forward(Fwd::Method);
        if req.method() == Method::CONNECT || req.method() == Method::TRACE {
            let mut resp =
                self.error(StatusCode::METHOD_NOT_ALLOWED, status().with_detail("method"), "method not allowed\n");
            resp.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Some(resp);
        }
        let other_coding = req
            .headers()
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"));
        if other_coding {
            let msg = "only the chunked transfer coding is supported in requests\n";
            return Some(self.error(StatusCode::NOT_IMPLEMENTED, status().with_detail("transfer-coding"), msg));
        }
        None
    }

    async fn lookup(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        target: Target,
        client: Client,
    ) -> Response<UpstreamBody> {
        let rd = RequestDirectives::from_headers(req.headers());
        let head = req.method() == Method::HEAD;
        // GET and HEAD carry no content Fresco would forward.
        let (parts, _) = req.into_parts();
        let (fwd, detail) = match self.candidate(&target, &parts.headers) {
            // A manifest: the object is stored in slices.
            Candidate::Found(obj, _) if slice::layout(&obj).is_some() => {
                return self.serve_sliced(parts, target, client, rd, Some(obj)).await;
            }
            Candidate::Found(obj, state) => return self.reuse_stored(parts, target, client, rd, obj, state).await,
            Candidate::Missing { fwd, detail } => (fwd, detail),
        };
        if rd.cc.only_if_cached {
            return self.only_if_cached(fwd);
        }
        if head {
            return self.forward_head(parts, &target, client, None, fwd).await;
        }
        // RFC 9110 §14: a range of an object not stored is fetched by its
        // slices, or passed through when nothing will be stored; never as
        // the whole file.
        if parts.headers.contains_key(http::header::RANGE) {
            match self.range_miss(&target.key.key, &parts.headers, &rd) {
                slice::RangeMiss::Slices => return self.serve_sliced(parts, target, client, rd, None).await,
                slice::RangeMiss::Pass => return self.pass_range(parts, &target, client, fwd).await,
                slice::RangeMiss::Whole => {}
            }
        }
        let status = CacheStatus { fwd: Some(fwd), detail: detail.map(str::to_string), ..Default::default() };
        self.fetch(parts, target, client, rd, None, status).await
    }

    /// The store's answer for a request: a usable object (possibly soft
    /// invalidated), or why there is none.
    pub(super) fn candidate(&self, target: &Target, request: &http::HeaderMap) -> Candidate {
        let Some(variants) = self.store.get(&target.key.key) else {
            return Candidate::Missing { fwd: Fwd::UriMiss, detail: None };
        };
        let Some(obj) = variants.select(request).cloned() else {
            return Candidate::Missing { fwd: Fwd::VaryMiss, detail: None };
        };
        match self.may_answer(&obj, request) {
            Ok(state) => Candidate::Found(obj, state),
            Err(Refusal::Vary) => Candidate::Missing { fwd: Fwd::VaryMiss, detail: None },
            Err(refusal) => Candidate::Missing { fwd: Fwd::UriMiss, detail: Some(refusal.detail()) },
        }
    }

    /// The one rule for which stored (or shared) object may answer which
    /// request, whatever the path: a lookup, a waiter on someone else's
    /// fetch, stale content standing in for an error. Freshness is decided
    /// after this, by `policy::request::reuse`.
    pub(super) fn may_answer(&self, obj: &CachedObject, request: &http::HeaderMap) -> Result<ObjectState, Refusal> {
        if !obj.vary.matches(request) {
            return Err(Refusal::Vary);
        }
        // §3.5: an authenticated request is answered from the store only by
        // a response the origin marked as shareable with such requests.
        if request.contains_key(http::header::AUTHORIZATION) && !obj.policy.shareable_with_authorization() {
            return Err(Refusal::Authorization);
        }
        self.validity(obj)
    }

    /// The validity check against the invalidation state, for an object
    /// already selected for this request: None when it may not be used at
    /// all. While invalidations this node knows it missed are still
    /// arriving, nothing stored is trusted.
    pub(super) fn validity(&self, obj: &CachedObject) -> Result<ObjectState, Refusal> {
        if self.invalidations.catching_up() {
            return Err(Refusal::CatchingUp);
        }
        match self.invalidations.check(obj) {
            Validity::Valid => Ok(ObjectState::default()),
            Validity::Soft => Ok(ObjectState { soft_invalidated: true }),
            Validity::Hard => Err(Refusal::Invalidated),
        }
    }

    /// Answers from a stored object, revalidating it first when it must be.
    async fn reuse_stored(
        self: &Arc<Self>,
        parts: http::request::Parts,
        target: Target,
        client: Client,
        rd: RequestDirectives,
        obj: Arc<CachedObject>,
        state: ObjectState,
    ) -> Response<UpstreamBody> {
        let now = SystemTime::now();
        let head = parts.method == Method::HEAD;
        match request::reuse(&rd, &obj.policy, state, obj.stale, now) {
            Reuse::Fresh => self.serve_stored(&parts, &obj, CacheStatus::hit(obj.policy.ttl(now)), false, now),
            Reuse::StaleAccepted => {
                // RFC 9211 §2.5: a stale response has a ttl of zero or less;
                // a soft purge made it stale whatever its lifetime said.
                let mut status = CacheStatus::hit(obj.policy.ttl(now));
                if state.soft_invalidated {
                    status.ttl = status.ttl.map(|t| t.min(0));
                    status.detail = Some("invalidated".into());
                }
                metrics::stale_served(if state.soft_invalidated {
                    metrics::StaleReason::SoftPurged
                } else {
                    metrics::StaleReason::MaxStale
                });
                self.serve_stored(&parts, &obj, status, false, now)
            }
            Reuse::Validate { reason, serve_stale_meanwhile } => {
                if rd.cc.only_if_cached {
                    return self.only_if_cached(Fwd::Stale);
                }
                let fwd = match reason {
                    ValidateReason::Stale => Fwd::Stale,
                    ValidateReason::Request => Fwd::Request,
                };
                let mut status = CacheStatus::forward(fwd);
                if state.soft_invalidated {
                    status.detail = Some("invalidated".into());
                }
                if serve_stale_meanwhile {
                    self.revalidate_in_background(&parts, &target, client, &rd, &obj);
                    metrics::stale_served(if state.soft_invalidated {
                        metrics::StaleReason::SoftPurged
                    } else {
                        metrics::StaleReason::StaleWhileRevalidate
                    });
                    status.ttl = Some(obj.policy.ttl(now));
                    status.detail = Some("stale-while-revalidate".into());
                    return self.serve_stored(&parts, &obj, status, false, now);
                }
                if head {
                    return self.forward_head(parts, &target, client, Some(obj), fwd).await;
                }
                self.fetch(parts, target, client, rd, Some((obj, state)), status).await
            }
        }
    }

    /// §5.2.1.7: nothing usable is stored, so 504.
    fn only_if_cached(&self, fwd: Fwd) -> Response<UpstreamBody> {
        let status = CacheStatus::forward(fwd).with_detail("only-if-cached");
        self.error(StatusCode::GATEWAY_TIMEOUT, status, "only-if-cached: no stored response can be used\n")
    }
}
