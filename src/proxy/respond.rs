//! Client responses: replaying a stored object (with Age, a 304 when the
//! client's validators match, no body for HEAD), relaying a fetched one,
//! and Fresco's own errors. Every one carries Cache-Status (RFC 9211).

use std::convert::Infallible;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, CONTENT_TYPE, DATE, ETAG,
    EXPIRES, HeaderName, HeaderValue, LAST_MODIFIED, VARY, VIA,
};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use super::Proxy;
use super::fill::{FetchedHead, Reader};
use super::upstream::UpstreamBody;
use crate::metrics;
use crate::policy::cache_status::CacheStatus;
use crate::policy::range::{self, RangeReply};
use crate::policy::{conditional, headers, tags};
use crate::store::CachedObject;

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Header fields a 304 carries (RFC 9110 §15.4.5), plus the cache's own.
const NOT_MODIFIED_FIELDS: [HeaderName; 7] =
    [CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, VARY, LAST_MODIFIED];

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn empty() -> UpstreamBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(bytes: Bytes) -> UpstreamBody {
    Full::new(bytes).map_err(|e: Infallible| match e {}).boxed()
}

impl Proxy {
    /// Replays `obj`. `validated` is true when it was just confirmed by
    /// upstream, so fields named by `no-cache="..."` may be sent (§5.2.2.4).
    pub(super) fn serve_stored(
        &self,
        req: &Parts,
        obj: &CachedObject,
        status: CacheStatus,
        validated: bool,
        now: SystemTime,
    ) -> Response<UpstreamBody> {
        let mut resp = self.stored_response(req, obj, status, validated, now);
        // Measured against the content class's freshness SLO (design §6).
        resp.extensions_mut().insert(crate::freshness::Staleness(obj.policy.staleness(now)));
        resp
    }

    fn stored_response(
        &self,
        req: &Parts,
        obj: &CachedObject,
        status: CacheStatus,
        validated: bool,
        now: SystemTime,
    ) -> Response<UpstreamBody> {
        let mut h = obj.headers.to_map();
        let conditional_match =
            obj.status == StatusCode::OK && conditional::not_modified(&req.headers, &h, obj.policy.response_time);
        if !validated {
            headers::remove_no_cache_fields(&mut h, obj.policy.directives.no_cache.as_ref());
        }
        h.insert(AGE, HeaderValue::from(obj.policy.current_age(now).as_secs()));
        if conditional_match {
            let mut short = HeaderMap::new();
            for name in NOT_MODIFIED_FIELDS.iter().chain([&AGE, &CACHE_STATUS]) {
                for v in h.get_all(name) {
                    short.append(name.clone(), v.clone());
                }
            }
            return self.relay(StatusCode::NOT_MODIFIED, short, empty(), status);
        }
        if !(obj.status == StatusCode::NO_CONTENT
            || obj.status == StatusCode::NOT_MODIFIED
            || obj.status.is_informational())
        {
            h.insert(CONTENT_LENGTH, HeaderValue::from(obj.body.len()));
        }
        if obj.status == StatusCode::OK && req.method == Method::GET {
            h.entry(ACCEPT_RANGES).or_insert(HeaderValue::from_static("bytes"));
            let len = obj.body.len() as u64;
            match range::evaluate(&req.headers, &h, len) {
                RangeReply::Full => {}
                RangeReply::Partial { start, end } => {
                    h.insert(CONTENT_RANGE, header_value(&format!("bytes {start}-{end}/{len}")));
                    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                    let part = obj.body.slice(start as usize..=end as usize);
                    return self.relay(StatusCode::PARTIAL_CONTENT, h, full(part), status);
                }
                RangeReply::Unsatisfiable => {
                    h.insert(CONTENT_RANGE, header_value(&format!("bytes */{len}")));
                    h.insert(CONTENT_LENGTH, HeaderValue::from(0));
                    return self.relay(StatusCode::RANGE_NOT_SATISFIABLE, h, empty(), status);
                }
            }
        }
        let body = if req.method == Method::HEAD { empty() } else { full(obj.body.clone()) };
        self.relay(obj.status, h, body, status)
    }

    /// Streams a fetched response to one client, answering its own
    /// conditional with 304 when the response matches it.
    pub(super) fn serve_fetched(
        &self,
        req: &Parts,
        head: &FetchedHead,
        reader: Reader,
        status: CacheStatus,
    ) -> Response<UpstreamBody> {
        if head.status == StatusCode::OK
            && conditional::not_modified(&req.headers, &head.headers, head.policy.response_time)
        {
            let mut short = HeaderMap::new();
            for name in NOT_MODIFIED_FIELDS.iter().chain([&AGE, &CACHE_STATUS]) {
                for v in head.headers.get_all(name) {
                    short.append(name.clone(), v.clone());
                }
            }
            return self.relay(StatusCode::NOT_MODIFIED, short, empty(), status);
        }
        let body = if req.method == Method::HEAD { empty() } else { reader.into_body() };
        // Another client's fetch is shared only in its admitted form: no
        // cookie and no `private="..."` field of that client's.
        let h = match (status.collapsed, head.shared()) {
            (true, Some(shared)) => shared.headers.to_map(),
            _ => head.headers.clone(),
        };
        self.relay(head.status, h, body, status)
    }

    /// The last step for every response: hop-by-hop fields out, Via and
    /// our Cache-Status entry appended after any upstream entries.
    pub(super) fn relay(
        &self,
        code: StatusCode,
        mut h: HeaderMap,
        body: UpstreamBody,
        status: CacheStatus,
    ) -> Response<UpstreamBody> {
        headers::remove_hop_by_hop(&mut h);
        if let Ok(v) = HeaderValue::from_str(&status.render(&self.settings.node_name)) {
            h.append(CACHE_STATUS, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("1.1 {}", self.settings.node_name)) {
            h.append(VIA, v);
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = code;
        *resp.headers_mut() = h;
        resp.extensions_mut().insert(metrics::CacheClass(status.class()));
        resp
    }

    /// Removes the fields that are meant for this cache (`Surrogate-Control`,
    /// `Cache-Group-Invalidation`, the tag fields unless configured
    /// otherwise) from a response going to a client that is not a Fresco
    /// node. The targeted fields (`CDN-Cache-Control`) go on, for the CDNs
    /// downstream (RFC 9213 §2.1), unless configured otherwise.
    pub(super) fn strip_cache_fields(&self, h: &mut HeaderMap) {
        if self.settings.strip_cdn_cache_control {
            for name in &self.settings.policy.targeted_fields {
                h.remove(name);
            }
        }
        h.remove("surrogate-control");
        h.remove("cache-group-invalidation");
        if !self.settings.expose_tag_headers {
            for name in tags::TAG_FIELDS {
                h.remove(name);
            }
        }
    }

    /// An error Fresco generates itself.
    pub(super) fn error(&self, code: StatusCode, status: CacheStatus, message: &str) -> Response<UpstreamBody> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.relay(code, h, full(Bytes::copy_from_slice(message.as_bytes())), status)
    }
}
