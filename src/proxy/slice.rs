//! Large objects in slices (issue 10; the idea of nginx's slice module and
//! Fastly's segmented caching), and byte ranges that never fetch the whole
//! file.
//!
//! An object larger than `slice_size` is stored as independent slices of
//! that size, each an ordinary object under a key derived from the
//! object's own (`KEY\n slice FIRST-LAST`: no request can produce it, a
//! space never being part of a key component name). Each slice carries the
//! object's URL, tags, fetch stamp and header fields, so every URL, prefix,
//! tag or everything invalidation selects every slice through the usual
//! validity check, one slice at a time, with no scan.
//!
//! Under the object's own key a *manifest* is stored: the response's
//! fields with the complete `Content-Length`, the slice size it was cut
//! with in a `fresco-slices` field, and no body. It tells a later request
//! that the object is sliced and how long it is; the bytes and their
//! freshness are always the slices'.
//!
//! Slices are combined only when they are the same version: the same
//! strong `ETag` (or, without one, the same `Last-Modified`) and the same
//! complete length (RFC 9110 §14.3: a cache may combine parts only under a
//! strong validator). A slice of another version restarts the object (the
//! manifest and its slices are dropped) and a response that has already
//! sent bytes of one version ends with an error instead of going on with
//! another: bytes of two versions are never spliced.
//!
//! Slices are fetched through the same coalesced fills as whole objects
//! (`fetch.rs`, `fill.rs`): concurrent requests for one slice share one
//! origin request. A slice fill asks with `Range`; what the origin answers
//! decides what is stored (see [`classify`]).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT_RANGES, AGE, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderName, HeaderValue, LAST_MODIFIED, VARY,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::fetch::{SHARED_TRIES, Start};
use super::fill::{Outcome, Reader};
use super::upstream::{BoxError, UpstreamBody};
use super::{Candidate, Client, Proxy, Target};
use crate::key::CacheKey;
use crate::metrics;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::policy::conditional::{self, parse_etag};
use crate::policy::range::{self, RangeReply, Requested};
use crate::policy::request::{self, RequestDirectives, Reuse};
use crate::store::{CachedObject, StoredHeaders};

/// Marks a manifest; its value is the slice size the object was cut with.
pub(super) const MARKER: HeaderName = HeaderName::from_static("fresco-slices");

const KEY_MARK: &str = "\n slice ";

/// The most slices one object is cut into (256 GiB with 1 MiB slices):
/// restarting an object visits each of its slice keys, so a length an
/// origin declares must not make that unbounded. Larger objects are
/// handled whole (passed through).
pub(super) const MAX_SLICES: u64 = 1 << 18;

/// The key of the slice that starts at `first` (slices are keyed by their
/// nominal span, so a change of `slice_size` never reads a slice of another
/// size).
pub(super) fn slice_key(main: &str, first: u64, size: u64) -> String {
    format!("{main}{KEY_MARK}{first}-{}", first.saturating_add(size - 1))
}

pub(super) fn is_slice_key(key: &str) -> bool {
    key.contains(KEY_MARK)
}

/// The slice a fill asks the origin for.
#[derive(Debug, Clone)]
pub(super) struct SliceJob {
    /// The object's own key.
    pub main_key: String,
    pub first: u64,
    /// The nominal last byte; the last slice of an object is shorter.
    pub last: u64,
}

impl SliceJob {
    pub(super) fn range_header(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("bytes={}-{}", self.first, self.last)).unwrap_or(HeaderValue::from_static(""))
    }
}

/// The validator that identifies one version of a representation for
/// combining its parts: a strong ETag, else Last-Modified (RFC 9110
/// §13.1.5, §14.3). None when there is neither: such a response is never
/// sliced, since a change between two slices could not be seen.
fn validator(h: &HeaderMap) -> Option<String> {
    if let Some(etag) = h.get(ETAG).and_then(|v| v.to_str().ok()) {
        let tag = parse_etag(etag)?;
        return (!tag.weak).then(|| format!("etag {}", tag.opaque));
    }
    h.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(|lm| format!("lm {lm}"))
}

/// May a response (a 200 or a 206 part) be stored in slices? It needs a
/// strong validator, and no Vary: slices are one representation.
pub(super) fn sliceable(h: &HeaderMap) -> bool {
    validator(h).is_some() && !h.contains_key(VARY)
}

/// What a slice fill received, and so where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SliceAnswer {
    /// The part asked for, of a sliceable object: stored as the slice.
    Slice,
    /// The whole representation: a 200 (the origin ignores Range), or a
    /// 206 that covers all of it (a small object; turned into that 200
    /// here). Stored, if it may be, under the object's own key.
    Whole,
    /// Anything else (another range, an object without validator, 416,
    /// errors): stored nowhere, passed on.
    Other,
}

/// Classifies the answer to a slice fill, rewriting a 206 that holds the
/// whole representation into the 200 it stands for (RFC 9110 §15.3.7).
pub(super) fn classify(job: &SliceJob, status: &mut StatusCode, h: &mut HeaderMap) -> SliceAnswer {
    if *status == StatusCode::OK {
        return SliceAnswer::Whole;
    }
    if *status != StatusCode::PARTIAL_CONTENT {
        return SliceAnswer::Other;
    }
    let Some((first, last, total)) = h.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(range::content_range)
    else {
        return SliceAnswer::Other;
    };
    let declared = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if first != job.first || last != job.last.min(total - 1) || declared.is_some_and(|n| n != last - first + 1) {
        return SliceAnswer::Other;
    }
    if total.div_ceil(job.last.saturating_sub(job.first).saturating_add(1)) > MAX_SLICES {
        return SliceAnswer::Other;
    }
    if first == 0 && last == total - 1 {
        *status = StatusCode::OK;
        h.remove(CONTENT_RANGE);
        h.insert(CONTENT_LENGTH, HeaderValue::from(total));
        return SliceAnswer::Whole;
    }
    if sliceable(h) { SliceAnswer::Slice } else { SliceAnswer::Other }
}

/// The object stored under the object's key for a sliced object.
fn manifest_of(template: &CachedObject, total: u64, size: u64) -> CachedObject {
    let mut h = template.headers.to_map();
    h.remove(CONTENT_RANGE);
    h.insert(CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(MARKER, HeaderValue::from(size));
    CachedObject {
        status: StatusCode::OK,
        headers: StoredHeaders::from_map(&h),
        body: Bytes::new(),
        ..template.clone()
    }
}

/// A manifest's (slice size, complete length), or None for any other
/// object. A manifest is the only stored 200 with an empty body and the
/// marker, which Fresco removes from every upstream response.
pub(super) fn layout(obj: &CachedObject) -> Option<(u64, u64)> {
    if !obj.body.is_empty() || obj.status != StatusCode::OK {
        return None;
    }
    let num = |v: HeaderValue| v.to_str().ok().and_then(|s| s.parse::<u64>().ok());
    let mut size = None;
    let mut total = None;
    for (name, value) in obj.headers.iter() {
        if *name == MARKER {
            size = num(value);
        } else if *name == CONTENT_LENGTH {
            total = num(value);
        }
    }
    Some((size.filter(|s| *s > 0)?, total?))
}

/// The slice of `template`'s representation holding bytes `first..=last`.
fn slice_object(template: &CachedObject, first: u64, total: u64, body: Bytes) -> CachedObject {
    let last = first + body.len() as u64 - 1;
    let mut h = template.headers.to_map();
    h.remove(MARKER);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{total}")) {
        h.insert(CONTENT_RANGE, v);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    CachedObject { status: StatusCode::PARTIAL_CONTENT, headers: StoredHeaders::from_map(&h), body, ..template.clone() }
}

/// (version, first, last, total) of a stored slice.
fn slice_facts(obj: &CachedObject) -> Option<(String, u64, u64, u64)> {
    let h = obj.headers.to_map();
    let (first, last, total) = h.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(range::content_range)?;
    (obj.body.len() as u64 == last - first + 1).then_some(())?;
    Some((validator(&h)?, first, last, total))
}

/// Cuts a whole 200 body into slices as it streams through a fill, so one
/// full fetch stores every slice of the object. Holds at most one slice.
pub(super) struct Cutter {
    template: Arc<CachedObject>,
    main_key: String,
    total: u64,
    size: u64,
    /// Where `buf` starts in the whole body.
    at: u64,
    buf: BytesMut,
}

impl Cutter {
    pub(super) fn new(template: Arc<CachedObject>, main_key: String, total: u64, size: u64) -> Cutter {
        Cutter { template, main_key, total, size, at: 0, buf: BytesMut::new() }
    }

    /// The manifest to store before the first slice.
    pub(super) fn manifest(&self) -> CachedObject {
        manifest_of(&self.template, self.total, self.size)
    }

    /// Takes the next bytes of the body; returns the slices they complete,
    /// with their keys.
    pub(super) fn push(&mut self, mut data: &[u8]) -> Vec<(String, Arc<CachedObject>)> {
        let mut done = Vec::new();
        while !data.is_empty() {
            let want = (self.size.min(self.total.saturating_sub(self.at)) as usize).saturating_sub(self.buf.len());
            if want == 0 {
                // More bytes than the declared length: nothing more is cut.
                break;
            }
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if take == want {
                let body = self.buf.split().freeze();
                let obj = slice_object(&self.template, self.at, self.total, body);
                done.push((slice_key(&self.main_key, self.at, self.size), Arc::new(obj)));
                self.at += self.size;
            }
        }
        done
    }
}

/// What fetching one slice gave.
enum SliceFetch {
    /// The slice, with how it was answered from the store (None: fetched),
    /// and whether it is the stored (shared) form, which may describe the
    /// object in its manifest. A slice that may not be stored (because of
    /// this request's credentials or no-store, say) serves this request
    /// only.
    Slice(Arc<CachedObject>, Option<CacheStatus>, bool),
    /// The origin's answer was not a usable slice.
    Other(Outcome, Reader),
    /// Waited on another request's fetch for longer than `lock_timeout`.
    LockTimeout,
    /// The slice's body broke off.
    Failed(String),
    /// Not stored, and the request said `only-if-cached` (§5.2.1.7).
    NotCached,
}

impl Proxy {
    /// How a range request that found nothing stored is answered.
    pub(super) fn range_miss(&self, key: &str, request: &HeaderMap, rd: &RequestDirectives) -> RangeMiss {
        let Some(wanted) = range::requested(request) else { return RangeMiss::Whole };
        // Hit-for-pass: this key's last answer could not be stored, so
        // neither will this one: let the origin answer the range itself.
        if self.recently_uncacheable(key) || rd.cc.no_store {
            return RangeMiss::Pass;
        }
        match wanted {
            Requested::From { .. } if self.settings.slice_size > 0 => RangeMiss::Slices,
            // Without slices, or for the last n bytes of a length not known
            // yet, the origin answers the range: a range request never
            // fetches the whole file.
            Requested::From { .. } | Requested::Suffix(_) => RangeMiss::Pass,
        }
    }

    /// Passes a range request through as the client sent it (Range and
    /// If-Range included); the origin's 206 goes back unchanged.
    pub(super) async fn pass_range(
        self: &Arc<Self>,
        parts: Parts,
        target: &Target,
        client: Client,
        fwd: Fwd,
    ) -> Response<UpstreamBody> {
        let req = Request::from_parts(parts, super::respond::empty());
        self.forward(req, target, client, CacheStatus::forward(fwd).with_detail("range-pass")).await
    }

    /// Answers a GET or HEAD for an object stored in slices (`manifest`),
    /// or for a range of an object not seen yet (None), from its slices.
    pub(super) async fn serve_sliced(
        self: &Arc<Self>,
        parts: Parts,
        target: Target,
        client: Client,
        rd: RequestDirectives,
        manifest: Option<Arc<CachedObject>>,
    ) -> Response<UpstreamBody> {
        let known = manifest.as_deref().and_then(layout);
        let size = known.map_or(self.settings.slice_size as u64, |(size, _)| size);
        if size == 0 {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, CacheStatus::default(), "slicing is off\n");
        }
        let now = SystemTime::now();
        // The first byte the answer needs, so its slice is fetched first.
        let first = match (&manifest, known) {
            (Some(m), Some((_, total))) => match range::evaluate(&parts.headers, &m.headers.to_map(), total) {
                RangeReply::Partial { start, .. } => start,
                RangeReply::Full => 0,
                RangeReply::Unsatisfiable => {
                    return self.unsatisfiable(total, CacheStatus::hit(m.policy.ttl(now)));
                }
            },
            _ => match range::requested(&parts.headers) {
                Some(Requested::From { first, .. }) => first,
                _ => 0,
            },
        };
        let start = first / size * size;
        let (obj, served, kept) = match self.fetch_slice(&parts, &target, client, &rd, start, size, true).await {
            SliceFetch::Slice(obj, served, kept) => (obj, served, kept),
            SliceFetch::Other(outcome, reader) => {
                // A 206 that is no usable slice (the object lost its
                // validator, or varies now): it is no longer sliced.
                if let (Some((size, total)), Outcome::Response(head)) = (known, &outcome)
                    && head.status == StatusCode::PARTIAL_CONTENT
                    && !sliceable(&head.headers)
                {
                    self.restart_object(&target.key.key, size, total);
                }
                return self.serve_unsliced(parts, &target, client, outcome, reader).await;
            }
            SliceFetch::LockTimeout => return self.slice_lock_timeout(),
            SliceFetch::NotCached => return self.only_if_cached(Fwd::UriMiss),
            SliceFetch::Failed(e) => {
                let status = CacheStatus::forward(Fwd::UriMiss).with_detail("upstream-body");
                return self.error(StatusCode::BAD_GATEWAY, status, &format!("{e}\n"));
            }
        };
        // The origin's answer to this request may not be shared (it was
        // this client's own: its credentials, a response that may not be
        // stored): then the stored slices, of whatever version, are not
        // this client's answer either. Its request goes to the origin as
        // it came.
        if !kept {
            return self.pass_range(parts, &target, client, Fwd::UriMiss).await;
        }
        let Some((version, _, _, total)) = slice_facts(&obj) else {
            return self.error(StatusCode::BAD_GATEWAY, CacheStatus::forward(Fwd::UriMiss), "inconsistent slice\n");
        };
        if kept {
            self.note_slice(&target.key.key, manifest.as_deref(), &obj, &version, total, size);
        }

        let mut h = obj.headers.to_map();
        let (a, b, code) = match range::evaluate(&parts.headers, &h, total) {
            RangeReply::Partial { start, end } => (start, end, StatusCode::PARTIAL_CONTENT),
            RangeReply::Full => (0, total - 1, StatusCode::OK),
            RangeReply::Unsatisfiable => return self.unsatisfiable(total, CacheStatus::hit(obj.policy.ttl(now))),
        };
        // The answer's Cache-Status is its first slice's: later ones are
        // served only fresh or fetched (see `Walk`).
        let mut status = served.unwrap_or_else(|| CacheStatus {
            fwd: Some(Fwd::UriMiss),
            fwd_status: Some(206),
            stored: true,
            ttl: Some(obj.policy.ttl(now)),
            ..Default::default()
        });
        status.detail = Some(status.detail.map_or("sliced".into(), |d| format!("{d} sliced")));
        h.remove(CONTENT_RANGE);
        h.insert(AGE, HeaderValue::from(obj.policy.current_age(now).as_secs()));
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if code == StatusCode::OK && conditional::not_modified(&parts.headers, &h, obj.policy.response_time) {
            return self.serve_stored(&parts, &manifest_like(&obj, &h), status, false, now);
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(b - a + 1));
        if code == StatusCode::PARTIAL_CONTENT
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{total}"))
        {
            h.insert(CONTENT_RANGE, v);
        }
        let body = if parts.method == Method::HEAD {
            super::respond::empty()
        } else {
            let walk = Walk {
                proxy: self.clone(),
                parts,
                target,
                client,
                rd,
                size,
                total,
                version,
                next: a,
                last: b,
                prefetched: Some(obj),
            };
            walk.into_body()
        };
        self.relay(code, h, body, status)
    }

    /// 416 with the complete length (RFC 9110 §15.5.17).
    fn unsatisfiable(&self, total: u64, status: CacheStatus) -> Response<UpstreamBody> {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
            h.insert(CONTENT_RANGE, v);
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
        self.relay(StatusCode::RANGE_NOT_SATISFIABLE, h, super::respond::empty(), status)
    }

    fn slice_lock_timeout(&self) -> Response<UpstreamBody> {
        let status = CacheStatus::forward(Fwd::UriMiss).with_detail("lock-timeout");
        self.error(StatusCode::GATEWAY_TIMEOUT, status, "the shared fetch of this slice did not answer in time\n")
    }

    /// The origin did not answer a slice fill with a slice: a 200 (stored
    /// whole when it may be, then answered like any stored object, range
    /// included), a 206 that cannot be stored (the client's own request is
    /// then passed through), or anything else, relayed.
    async fn serve_unsliced(
        self: &Arc<Self>,
        parts: Parts,
        target: &Target,
        client: Client,
        outcome: Outcome,
        reader: Reader,
    ) -> Response<UpstreamBody> {
        let now = SystemTime::now();
        let head = match outcome {
            Outcome::Response(head) => head,
            // A revalidated slice this request may not be given in its
            // shared form: the origin answers the request itself.
            Outcome::Refreshed { .. } => {
                drop(reader);
                return self.pass_range(parts, target, client, Fwd::Stale).await;
            }
            Outcome::Failed(err) => {
                let status = CacheStatus::forward(Fwd::UriMiss).with_detail(err.detail());
                return self.error(err.status(), status, &format!("{err}\n"));
            }
        };
        let mut status =
            CacheStatus { fwd: Some(Fwd::UriMiss), fwd_status: Some(head.status.as_u16()), ..Default::default() };
        if head.status == StatusCode::OK
            && let Some(template) = head.shared()
        {
            // Kept whole: at most max_object_size.
            let Ok(body) = reader.into_body().collect().await.map(|b| b.to_bytes()) else {
                return self.error(
                    StatusCode::BAD_GATEWAY,
                    status.with_detail("upstream-body"),
                    "upstream body failed\n",
                );
            };
            status.stored = true;
            status.ttl = Some(template.policy.ttl(now));
            let obj = CachedObject { body, ..(**template).clone() };
            return self.serve_stored(&parts, &obj, status, false, now);
        }
        if head.status == StatusCode::PARTIAL_CONTENT {
            drop(reader);
            return self.pass_range(parts, target, client, Fwd::UriMiss).await;
        }
        self.serve_fetched(&parts, &head, reader, status)
    }

    /// The slice starting at `first`: stored, or fetched through a
    /// coalesced fill. `allow_stale`: a stored slice the request accepts
    /// stale (max-stale, a soft purge) may be used as it is; only the first
    /// slice of an answer, whose Cache-Status the answer carries, may.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_slice(
        self: &Arc<Self>,
        parts: &Parts,
        target: &Target,
        client: Client,
        rd: &RequestDirectives,
        first: u64,
        size: u64,
        allow_stale: bool,
    ) -> SliceFetch {
        let job = SliceJob { main_key: target.key.key.clone(), first, last: first.saturating_add(size - 1) };
        let slice_target = Target {
            key: CacheKey { url: target.key.url.clone(), key: slice_key(&target.key.key, first, size) },
            ..target.clone()
        };
        let mut stale = None;
        let now = SystemTime::now();
        if let Candidate::Found(obj, state) = self.candidate(&slice_target, &parts.headers) {
            match request::reuse(rd, &obj.policy, state, obj.stale, now) {
                Reuse::Fresh => {
                    let status = CacheStatus::hit(obj.policy.ttl(now));
                    return SliceFetch::Slice(obj, Some(status), true);
                }
                Reuse::StaleAccepted if allow_stale => {
                    // As for a whole object: RFC 9211 §2.5, a soft purge
                    // made it stale whatever its lifetime said.
                    let mut status = CacheStatus::hit(obj.policy.ttl(now));
                    if state.soft_invalidated {
                        status.ttl = status.ttl.map(|t| t.min(0));
                        status.detail = Some("invalidated".into());
                    }
                    return SliceFetch::Slice(obj, Some(status), true);
                }
                Reuse::StaleAccepted | Reuse::Validate { .. } => stale = Some(obj),
            }
        }
        if rd.cc.only_if_cached {
            return SliceFetch::NotCached;
        }
        let mut share = !rd.cc.no_store;
        let mut tries = 0;
        loop {
            match self.join_or_start(parts, &slice_target, client, rd, stale.clone(), share, Some(job.clone())) {
                Start::Stored(obj) => {
                    let status = CacheStatus::hit(obj.policy.ttl(now));
                    return SliceFetch::Slice(obj, Some(status), true);
                }
                Start::Started(mut reader) => {
                    let outcome = reader.outcome().await;
                    return Self::slice_from(outcome, reader, false, &target.key.url).await;
                }
                Start::Joined(mut reader) => {
                    let Ok(outcome) = tokio::time::timeout(self.settings.lock_timeout, reader.outcome()).await else {
                        metrics::coalesce("lock-timeout");
                        return SliceFetch::LockTimeout;
                    };
                    if self.waiter_may_use(&outcome, &parts.headers) {
                        metrics::coalesce("served");
                        return Self::slice_from(outcome, reader, true, &target.key.url).await;
                    }
                    tries += 1;
                    share = share && tries < SHARED_TRIES;
                }
            }
        }
    }

    /// The slice a fill produced, read whole (at most one slice). A
    /// waiter only ever gets the stored form; the request that caused the
    /// fetch gets its own answer when it may not be stored.
    async fn slice_from(outcome: Outcome, reader: Reader, waiter: bool, url: &str) -> SliceFetch {
        match &outcome {
            Outcome::Response(head) if head.slice => {
                let shared = head.shared().cloned();
                if waiter && shared.is_none() {
                    return SliceFetch::Other(outcome, reader);
                }
                let body = match reader.into_body().collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(e) => return SliceFetch::Failed(format!("slice body failed: {e}")),
                };
                let kept = shared.is_some();
                let obj = match shared {
                    Some(template) => CachedObject { body, ..(*template).clone() },
                    None => CachedObject {
                        status: head.status,
                        headers: StoredHeaders::from_map(&head.headers),
                        body,
                        policy: head.policy.clone(),
                        vary: Default::default(),
                        url: Arc::from(url),
                        tags: Box::default(),
                        stamp: Default::default(),
                        verified: Default::default(),
                        stale: Default::default(),
                    },
                };
                SliceFetch::Slice(Arc::new(obj), None, kept)
            }
            Outcome::Refreshed { own, shared } => match (shared, waiter) {
                (Some(obj), _) if obj.status == StatusCode::PARTIAL_CONTENT => {
                    SliceFetch::Slice(obj.clone(), None, true)
                }
                (None, false) if own.status == StatusCode::PARTIAL_CONTENT => {
                    SliceFetch::Slice(own.clone(), None, false)
                }
                _ => SliceFetch::Other(outcome, reader),
            },
            _ => SliceFetch::Other(outcome, reader),
        }
    }

    /// Keeps the manifest in step with the slices: stored when missing,
    /// and when a slice of another version arrives, the object restarts:
    /// the old version's slices are dropped and the manifest describes the
    /// new one.
    fn note_slice(
        &self,
        main_key: &str,
        manifest: Option<&CachedObject>,
        slice: &CachedObject,
        version: &str,
        total: u64,
        size: u64,
    ) {
        if let Some(m) = manifest {
            let current = layout(m).is_some_and(|(s, t)| s == size && t == total)
                && validator(&m.headers.to_map()).as_deref() == Some(version);
            if current {
                return;
            }
            if let Some((old_size, old_total)) = layout(m) {
                ::metrics::counter!("fresco_slice_restarts_total").increment(1);
                self.forget_slices(main_key, old_size, old_total);
            }
        }
        self.store_object(main_key, Arc::new(manifest_of(slice, total, size)));
    }

    /// Drops every slice of one layout (and not the manifest).
    fn forget_slices(&self, main_key: &str, size: u64, total: u64) {
        let mut first = 0;
        while first < total {
            self.store.remove(&slice_key(main_key, first, size));
            first += size;
        }
    }

    /// A response that already sent bytes of one version met a slice of
    /// another: the object restarts from nothing.
    fn restart_object(&self, main_key: &str, size: u64, total: u64) {
        ::metrics::counter!("fresco_slice_restarts_total").increment(1);
        self.store.remove(main_key);
        self.forget_slices(main_key, size, total);
    }
}

/// A stored-looking 200 for answering a client's conditional with 304
/// from a slice's fields.
fn manifest_like(slice: &CachedObject, h: &HeaderMap) -> CachedObject {
    CachedObject { status: StatusCode::OK, headers: StoredHeaders::from_map(h), body: Bytes::new(), ..slice.clone() }
}

/// How a range request that missed is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RangeMiss {
    /// From slices fetched with range requests.
    Slices,
    /// Passed through with its Range: nothing will be stored.
    Pass,
    /// Not a single byte range (several, another unit): the whole
    /// representation is fetched (and stored if it may be), answered 200.
    Whole,
}

/// The body of a sliced answer: bytes `next..=last`, slice after slice,
/// each taken from the store or fetched (coalesced) when it is reached.
struct Walk {
    proxy: Arc<Proxy>,
    parts: Parts,
    target: Target,
    client: Client,
    rd: RequestDirectives,
    size: u64,
    total: u64,
    version: String,
    next: u64,
    last: u64,
    prefetched: Option<Arc<CachedObject>>,
}

impl Walk {
    fn into_body(self) -> UpstreamBody {
        let stream = futures_util::stream::unfold(self, |mut w| async move {
            if w.next > w.last {
                return None;
            }
            let item = w.step().await;
            if item.is_err() {
                // Nothing follows an error.
                w.next = w.last + 1;
            }
            Some((item.map(hyper::body::Frame::data), w))
        });
        http_body_util::StreamBody::new(stream).boxed()
    }

    async fn step(&mut self) -> Result<Bytes, BoxError> {
        let start = self.next / self.size * self.size;
        let obj = match self.prefetched.take().filter(|o| slice_facts(o).is_some_and(|f| f.1 == start)) {
            Some(obj) => obj,
            None => {
                let fetched = self
                    .proxy
                    .fetch_slice(&self.parts, &self.target, self.client, &self.rd, start, self.size, false)
                    .await;
                match fetched {
                    SliceFetch::Slice(obj, ..) => obj,
                    SliceFetch::Other(..) | SliceFetch::LockTimeout | SliceFetch::Failed(_) | SliceFetch::NotCached => {
                        return Err(format!("the slice at {start} could not be fetched").into());
                    }
                }
            }
        };
        let expected_last = start.saturating_add(self.size - 1).min(self.total - 1);
        match slice_facts(&obj) {
            Some((version, first, last, total))
                if version == self.version && first == start && last == expected_last && total == self.total => {}
            _ => {
                // Never splice two versions: the client gets a cut-short
                // body (an error), the next request starts afresh.
                self.proxy.restart_object(&self.target.key.key, self.size, self.total);
                return Err(format!("the object changed at byte {start}; response cut").into());
            }
        }
        let from = (self.next - start) as usize;
        let to = (self.last.min(expected_last) - start) as usize;
        self.next = start + to as u64 + 1;
        Ok(obj.body.slice(from..=to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    fn job(first: u64, last: u64) -> SliceJob {
        SliceJob { main_key: "http://x/big".into(), first, last }
    }

    #[test]
    fn rfc9110_14_3_only_strong_validators_combine_parts() {
        assert!(sliceable(&headers(&[("etag", "\"v1\"")])));
        assert!(sliceable(&headers(&[("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT")])));
        assert!(!sliceable(&headers(&[("etag", "W/\"v1\"")])));
        assert!(!sliceable(&headers(&[])));
        assert!(!sliceable(&headers(&[("etag", "\"v1\""), ("vary", "accept-encoding")])));
    }

    #[test]
    fn rfc9110_15_3_7_a_slice_answer_is_placed_by_its_content_range() {
        let mut h = headers(&[("etag", "\"v1\""), ("content-range", "bytes 100-199/1000"), ("content-length", "100")]);
        let mut status = StatusCode::PARTIAL_CONTENT;
        assert_eq!(classify(&job(100, 199), &mut status, &mut h), SliceAnswer::Slice);
        // Another range than asked for is never stored as this slice.
        assert_eq!(classify(&job(0, 99), &mut status, &mut h), SliceAnswer::Other);
        // A short last slice.
        let mut h = headers(&[("etag", "\"v1\""), ("content-range", "bytes 900-999/1000")]);
        assert_eq!(classify(&job(900, 999_999), &mut status, &mut h), SliceAnswer::Slice);
        // The origin ignored Range.
        let mut ok = StatusCode::OK;
        assert_eq!(classify(&job(0, 99), &mut ok, &mut h), SliceAnswer::Whole);
        // No validator: not combinable, not stored as a slice.
        let mut h = headers(&[("content-range", "bytes 100-199/1000")]);
        assert_eq!(classify(&job(100, 199), &mut status, &mut h), SliceAnswer::Other);
        // A 416 is nothing to store.
        let mut s416 = StatusCode::RANGE_NOT_SATISFIABLE;
        assert_eq!(classify(&job(100, 199), &mut s416, &mut h), SliceAnswer::Other);
    }

    #[test]
    fn an_object_of_too_many_slices_is_not_sliced() {
        let total = MAX_SLICES * 100 + 1;
        let mut h = headers(&[("etag", "\"v1\"")]);
        h.insert(CONTENT_RANGE, HeaderValue::from_str(&format!("bytes 0-99/{total}")).unwrap());
        let mut status = StatusCode::PARTIAL_CONTENT;
        assert_eq!(classify(&job(0, 99), &mut status, &mut h), SliceAnswer::Other);
    }

    #[test]
    fn rfc9110_15_3_7_a_206_with_every_byte_is_the_whole_200() {
        let mut h = headers(&[("etag", "\"v1\""), ("content-range", "bytes 0-9/10"), ("content-length", "10")]);
        let mut status = StatusCode::PARTIAL_CONTENT;
        assert_eq!(classify(&job(0, 1023), &mut status, &mut h), SliceAnswer::Whole);
        assert_eq!(status, StatusCode::OK);
        assert!(!h.contains_key(CONTENT_RANGE));
        assert_eq!(h.get(CONTENT_LENGTH).unwrap(), "10");
    }

    #[test]
    fn the_cutter_makes_slices_with_their_place_and_a_manifest() {
        let template = Arc::new(CachedObject {
            headers: StoredHeaders::from_map(&headers(&[("etag", "\"v1\""), ("content-length", "25")])),
            ..CachedObject::for_test("http://x/big", &["t"], Default::default())
        });
        let mut cutter = Cutter::new(template, "http://x/big".into(), 25, 10);
        let m = cutter.manifest();
        assert_eq!(layout(&m), Some((10, 25)));
        let mut got = cutter.push(b"0123456");
        assert!(got.is_empty());
        got.extend(cutter.push(b"789abcdefghijklmn"));
        got.extend(cutter.push(b"opq"));
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["http://x/big\n slice 0-9", "http://x/big\n slice 10-19", "http://x/big\n slice 20-29"]);
        let bodies: Vec<&[u8]> = got.iter().map(|(_, o)| &o.body[..]).collect();
        assert_eq!(bodies, [&b"0123456789"[..], &b"abcdefghij"[..], &b"klmno"[..]]);
        let (version, first, last, total) = slice_facts(&got[2].1).unwrap();
        assert_eq!((version.as_str(), first, last, total), ("etag v1", 20, 24, 25));
        // Slices keep the object's URL and tags: its invalidations reach them.
        assert!(got.iter().all(|(_, o)| &*o.url == "http://x/big" && o.tags.len() == 1));
        assert!(got.iter().all(|(_, o)| layout(o).is_none()));
    }

    #[test]
    fn slice_keys_cannot_be_produced_by_a_request() {
        let key = slice_key("http://x/big", 1 << 20, 1 << 20);
        assert_eq!(key, "http://x/big\n slice 1048576-2097151");
        assert!(is_slice_key(&key));
        assert!(!is_slice_key("http://x/big?slice=1"));
    }
}
