//! Coalesced upstream fetches: the first client for a key starts a fill,
//! later ones join it; the fill's producer task stores what may be stored.
//!
//! Every write into the store from here goes through [`Proxy::admit`]
//! (the one admission rule, `policy::response::admit`) and
//! [`Proxy::store_object`] (the validity check against invalidations);
//! every answer given to a client other than the one whose request caused
//! the fetch goes through [`Proxy::may_answer`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;

use super::fill::{FetchedHead, Fill, Outcome, Producer, Reader};
use super::slice::{self, SliceJob};
use super::upstream::{UpstreamBody, UpstreamError};
use super::{Candidate, Client, Proxy, Target};
use crate::invalidation::{Stamp, Validity};
use crate::metrics;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::policy::request::{self, ObjectState, RequestDirectives, Reuse};
use crate::policy::response::{self, NotStorable, ResponsePolicy};
use crate::policy::{age, conditional, headers, tags, vary};
use crate::store::{CachedObject, Put, StoredHeaders};

/// What the producer of a fill needs to know about the request that
/// started it.
struct Job {
    target: Target,
    client: Client,
    headers: HeaderMap,
    directives: RequestDirectives,
    /// The stored object being revalidated, if any.
    stale: Option<Arc<CachedObject>>,
    /// The slice of a large object this fill asks for with `Range`.
    slice: Option<SliceJob>,
}

/// The request a response answers, as the admission rule needs it.
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    pub target: &'a Target,
    pub headers: &'a HeaderMap,
    pub directives: &'a RequestDirectives,
}

impl Job {
    fn asked(&self) -> Asked<'_> {
        Asked { target: &self.target, headers: &self.headers, directives: &self.directives }
    }
}

/// How a request gets its response from upstream.
pub(super) enum Start {
    /// Joined another request's fill.
    Joined(Reader),
    /// Started a fill of its own.
    Started(Reader),
    /// A fill finished and stored what it needs in the meantime.
    Stored(Arc<CachedObject>),
}

/// Statuses after which a stale object may stand in (RFC 5861 §4).
fn is_server_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// How many shared fills a waiter tries before fetching alone: when a
/// fill's answer is not for it (another Vary selection, credentials, an
/// invalidation that outranks it), it joins the next one once, then asks
/// by itself so it can never be handed yet another client's response.
pub(super) const SHARED_TRIES: usize = 2;

impl Proxy {
    /// Fetches (or revalidates `stale`) through a shared fill and answers the
    /// client from it.
    pub(super) async fn fetch(
        self: &Arc<Self>,
        parts: Parts,
        target: Target,
        client: Client,
        rd: RequestDirectives,
        stale: Option<(Arc<CachedObject>, ObjectState)>,
        mut status: CacheStatus,
    ) -> Response<UpstreamBody> {
        let stale_obj = stale.as_ref().map(|s| s.0.clone());
        // A request whose response may not be stored (§5.2.1.5) does not
        // lead a fill that others would wait on.
        let mut share = !rd.cc.no_store;
        let mut tries = 0;
        let (outcome, reader) = loop {
            match self.join_or_start(&parts, &target, client, &rd, stale_obj.clone(), share, None) {
                // A manifest: the object is stored in slices.
                Start::Stored(obj) if slice::layout(&obj).is_some() => {
                    return self.serve_sliced(parts, target, client, rd, Some(obj)).await;
                }
                Start::Stored(obj) => return self.serve_stored_hit(&parts, &obj),
                Start::Started(mut reader) => break (reader.outcome().await, reader),
                Start::Joined(mut reader) => {
                    let Ok(outcome) = tokio::time::timeout(self.settings.lock_timeout, reader.outcome()).await else {
                        metrics::coalesce("lock-timeout");
                        return self.lock_timed_out(&parts, &rd, stale.as_ref(), status);
                    };
                    if self.waiter_may_use(&outcome, &parts.headers) {
                        metrics::coalesce("served");
                        status.collapsed = true;
                        break (outcome, reader);
                    }
                    tries += 1;
                    share = share && tries < SHARED_TRIES;
                }
            }
        };
        let now = SystemTime::now();
        match outcome {
            Outcome::Refreshed { own, shared } => {
                status.fwd_status = Some(304);
                status.stored = shared.is_some();
                // A waiter only gets here with the shared form.
                let obj = if status.collapsed { shared.unwrap_or(own) } else { own };
                status.ttl = Some(obj.policy.ttl(now));
                self.serve_stored(&parts, &obj, status, true, now)
            }
            Outcome::Response(head) => {
                if is_server_error(head.status)
                    && let Some(obj) = self.stale_if_error(&rd, stale.as_ref(), now)
                {
                    return self.serve_stale_on_error(&parts, &obj, status, head.status.as_u16(), now);
                }
                status.fwd_status = Some(head.status.as_u16());
                match &head.admitted {
                    Ok(_) if head.shareable || head.sliced => {
                        status.stored = true;
                        status.ttl = Some(head.policy.ttl(now));
                    }
                    Ok(_) => status.detail = Some("too-large".into()),
                    Err(why) => status.detail = Some(why.as_str().into()),
                }
                self.serve_fetched(&parts, &head, reader, status)
            }
            // A failed shared fetch is the answer for everyone who waited on
            // it: retrying for each waiter would multiply the load on an
            // origin that is already failing.
            Outcome::Failed(err) => self.fetch_failed(&parts, &rd, stale.as_ref(), status, err, now),
        }
    }

    /// May a client that waited on someone else's fetch use its outcome?
    pub(super) fn waiter_may_use(&self, outcome: &Outcome, request: &HeaderMap) -> bool {
        let shared = match outcome {
            Outcome::Response(head) => head.shared(),
            Outcome::Refreshed { shared, .. } => shared.as_ref(),
            Outcome::Failed(_) => return true,
        };
        // Only a response that is still valid now: an invalidation applied
        // while the fetch was in flight outranks it for later requests.
        shared.is_some_and(|obj| matches!(self.may_answer(obj, request), Ok(state) if state == ObjectState::default()))
    }

    fn fetch_failed(
        &self,
        parts: &Parts,
        rd: &RequestDirectives,
        stale: Option<&(Arc<CachedObject>, ObjectState)>,
        mut status: CacheStatus,
        err: UpstreamError,
        now: SystemTime,
    ) -> Response<UpstreamBody> {
        if let Some(obj) = self.stale_if_error(rd, stale, now) {
            return self.serve_stale_on_error(parts, &obj, status, 0, now);
        }
        status.detail = Some(err.detail().into());
        // §5.2.2.2: a stored response that may not be served stale turns a
        // failed validation into 504.
        let code = if stale.is_some() { StatusCode::GATEWAY_TIMEOUT } else { err.status() };
        self.error(code, status, err.client_message())
    }

    /// A waiter whose leader has not answered within `lock_timeout`: stale
    /// content where stale-if-error allows it, else 504. It does not fetch
    /// by itself: a slow origin would get one more request per waiter.
    fn lock_timed_out(
        &self,
        parts: &Parts,
        rd: &RequestDirectives,
        stale: Option<&(Arc<CachedObject>, ObjectState)>,
        mut status: CacheStatus,
    ) -> Response<UpstreamBody> {
        let now = SystemTime::now();
        if let Some(obj) = self.stale_if_error(rd, stale, now) {
            return self.serve_stale_on_error(parts, &obj, status, 0, now);
        }
        status.detail = Some("lock-timeout".into());
        self.error(StatusCode::GATEWAY_TIMEOUT, status, "the shared fetch of this object did not answer in time\n")
    }

    /// The stale object that may stand in for a failed fetch (RFC 5861 §4),
    /// checked against the invalidations applied by now.
    fn stale_if_error(
        &self,
        rd: &RequestDirectives,
        stale: Option<&(Arc<CachedObject>, ObjectState)>,
        now: SystemTime,
    ) -> Option<Arc<CachedObject>> {
        let (obj, _) = stale?;
        let state = self.validity(obj).ok()?;
        request::stale_if_error(rd, &obj.policy, state, obj.stale, now).then(|| obj.clone())
    }

    /// A stored variant this request may use as it is, now: valid, and
    /// fresh by the request's own directives.
    fn usable_stored(&self, target: &Target, parts: &Parts, rd: &RequestDirectives) -> Option<Arc<CachedObject>> {
        let Candidate::Found(obj, state) = self.candidate(target, &parts.headers) else { return None };
        let reuse = request::reuse(rd, &obj.policy, state, obj.stale, SystemTime::now());
        (reuse == Reuse::Fresh).then_some(obj)
    }

    fn serve_stored_hit(&self, parts: &Parts, obj: &CachedObject) -> Response<UpstreamBody> {
        let now = SystemTime::now();
        self.serve_stored(parts, obj, CacheStatus::hit(obj.policy.ttl(now)), false, now)
    }

    fn serve_stale_on_error(
        &self,
        parts: &Parts,
        obj: &CachedObject,
        mut status: CacheStatus,
        upstream: u16,
        now: SystemTime,
    ) -> Response<UpstreamBody> {
        metrics::stale_served(if status.detail.as_deref() == Some("invalidated") {
            metrics::StaleReason::SoftPurged
        } else {
            metrics::StaleReason::StaleIfError
        });
        status.fwd = Some(Fwd::Stale);
        status.fwd_status = (upstream != 0).then_some(upstream);
        status.ttl = Some(obj.policy.ttl(now));
        // Keep saying why the object was stale when an invalidation made it so.
        status.detail = Some(match status.detail.as_deref() {
            Some("invalidated") => "invalidated stale-if-error".into(),
            _ => "stale-if-error".into(),
        });
        self.serve_stored(parts, obj, status, false, now)
    }

    /// Starts one background revalidation of `obj` unless one is running
    /// (RFC 5861 §3: one per object).
    pub(super) fn revalidate_in_background(
        self: &Arc<Self>,
        parts: &Parts,
        target: &Target,
        client: Client,
        rd: &RequestDirectives,
        obj: &Arc<CachedObject>,
    ) {
        // Joined or already refreshed: someone else's revalidation covers it.
        if let Start::Started(_) = self.join_or_start(parts, target, client, rd, Some(obj.clone()), true, None) {
            metrics::background_revalidation();
        }
    }

    /// Joins the fill in progress for this key, or finds that one just
    /// stored what this request needs, or starts one. `share` false starts a
    /// private fill that nobody else joins; `slice` makes it a fill of one
    /// slice of a large object.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        parts: &Parts,
        target: &Target,
        client: Client,
        rd: &RequestDirectives,
        stale: Option<Arc<CachedObject>>,
        share: bool,
        slice: Option<SliceJob>,
    ) -> Start {
        let key = &target.key.key;
        let share = share && !self.recently_uncacheable(key);
        let fill = Fill::new(self.settings.max_object_size);
        let Some(reader) = fill.reader() else { unreachable!("a new fill accepts readers") };
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            // Only a fetch still under way is shared: one that has ended
            // answered the requests that came while it ran. A request
            // after it (a client's next request, sent as soon as it read
            // the last byte) gets what the store holds, or its own fetch,
            // as it would had the producer already left the table.
            if share
                && let Some(existing) = inflight.get(key)
                && !existing.ended()
                && let Some(r) = existing.reader()
            {
                return Start::Joined(r);
            }
            // A fill stores its object before it leaves `inflight`, so
            // looking here, under the lock, closes the gap between this
            // request's lookup and now.
            if let Some(obj) = self.usable_stored(target, parts, rd) {
                return Start::Stored(obj);
            }
            if share {
                inflight.insert(key.clone(), fill.clone());
            }
        }
        // Whatever ends the producer task, the key is released and waiters
        // get an outcome.
        let release = {
            let inflight = self.inflight.clone();
            let (key, fill) = (key.clone(), fill.clone());
            move || {
                if share {
                    let mut inflight = inflight.lock().unwrap_or_else(|e| e.into_inner());
                    if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &fill)) {
                        inflight.remove(&key);
                    }
                }
            }
        };
        let producer = Producer::new(fill, release);
        let job = Job {
            target: target.clone(),
            client,
            headers: parts.headers.clone(),
            directives: rd.clone(),
            stale,
            slice,
        };
        let this = self.clone();
        tokio::spawn(async move { this.run_fill(producer, job).await });
        Start::Started(reader)
    }

    pub(super) fn recently_uncacheable(&self, key: &str) -> bool {
        let mut map = self.uncacheable.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    fn mark_uncacheable(&self, key: &str, uncacheable: bool) {
        let mut map = self.uncacheable.lock().unwrap_or_else(|e| e.into_inner());
        if uncacheable {
            // Bounded: a flood of distinct uncacheable URLs must not grow it forever.
            if map.len() >= 100_000 {
                let now = Instant::now();
                map.retain(|_, until| *until > now);
            }
            if map.len() < 100_000 {
                map.insert(key.to_string(), Instant::now() + self.settings.uncacheable_ttl);
            }
        } else if !map.is_empty() {
            map.remove(key);
        }
    }

    /// The producer: one upstream exchange, published through its fill.
    async fn run_fill(self: Arc<Self>, producer: Producer, job: Job) {
        let fill = producer.fill();
        // The stamp is taken before the request leaves, so an invalidation
        // applied while it is in flight outranks what it brings back.
        let fetch = self.invalidations.begin_fetch();
        let stamp = fetch.stamp;
        let started = Instant::now();
        let mut validate = job.stale.clone().filter(|o| conditional::has_validator(&o.headers.to_map()));
        loop {
            let request_time = SystemTime::now();
            let validators =
                validate.as_ref().map(|o| conditional::validation_headers(&o.headers.to_map())).unwrap_or_default();
            let mut req = self.upstream_request(
                &Method::GET,
                &job.target,
                job.client,
                &job.headers,
                Some(validators),
                super::respond::empty(),
            );
            // A slice is asked for by its span; its validators (when it is
            // revalidated) are the object's.
            if let Some(slice) = &job.slice {
                req.headers_mut().insert(http::header::RANGE, slice.range_header());
            }
            let kind = match (&validate, &job.slice) {
                (Some(_), _) => "revalidate",
                (None, Some(_)) => "slice",
                (None, None) => "fetch",
            };
            metrics::origin_request(kind);
            let sent = Instant::now();
            let resp = match self.upstream.send(req, &job.target.key.key).await {
                Ok(r) => {
                    metrics::origin_response(kind, sent.elapsed());
                    r
                }
                Err(e) => {
                    metrics::origin_error(e.detail());
                    fill.set_outcome(Outcome::Failed(e), false);
                    break;
                }
            };
            let response_time = SystemTime::now();
            if resp.status() == StatusCode::NOT_MODIFIED
                && let Some(old) = validate.take()
            {
                // §4.3.4: a 304 for some other representation updates
                // nothing, and one for an object a hard invalidation removed
                // meanwhile must not bring it back: ask again without
                // validators.
                if conditional::not_modified_applies(&old.headers.to_map(), resp.headers())
                    && self.invalidations.check(&old) != Validity::Hard
                {
                    let times = (request_time, response_time);
                    let (own, shared) = self.merge_update(job.asked(), &old, resp.headers(), times, stamp);
                    if let Some(shared) = &shared {
                        self.store_object(&job.target.key.key, shared.clone());
                    }
                    fill.set_outcome(Outcome::Refreshed { own, shared }, false);
                    break;
                }
                continue;
            }
            self.stream_into(fill, &job, resp, stamp, request_time, response_time, started).await;
            break;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_into(
        &self,
        fill: &Fill,
        job: &Job,
        resp: Response<super::upstream::ResponseBody>,
        stamp: Stamp,
        request_time: SystemTime,
        response_time: SystemTime,
        started: Instant,
    ) {
        let (parts, mut body) = resp.into_parts();
        let mut status = parts.status;
        let mut hdrs = parts.headers;
        headers::remove_hop_by_hop(&mut hdrs);
        // Only Fresco marks its manifests.
        hdrs.remove(slice::MARKER);
        add_date(&mut hdrs, response_time);
        // Where the answer goes: a slice fill stores the slice it asked
        // for under the slice's key, a whole representation under the
        // object's key, and nothing else.
        let answer = match &job.slice {
            Some(s) => slice::classify(s, &mut status, &mut hdrs),
            None => slice::SliceAnswer::Whole,
        };
        let main_key = job.slice.as_ref().map_or(&job.target.key.key, |s| &s.main_key);
        let store_key = if answer == slice::SliceAnswer::Slice { &job.target.key.key } else { main_key };
        let (policy, admitted) = self.admit(job.asked(), status, &hdrs, (request_time, response_time), stamp);
        let declared = hdrs.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        // A whole response larger than a slice is stored in slices as it
        // streams through (one origin request stores every slice).
        let size = self.settings.slice_size;
        let cutter = match &admitted {
            Ok(template)
                if job.slice.is_none()
                    && size > 0
                    && status == StatusCode::OK
                    && declared.is_some_and(|n| n > size && (n as u64).div_ceil(size as u64) <= slice::MAX_SLICES)
                    && slice::sliceable(&hdrs) =>
            {
                let total = declared.unwrap_or_default() as u64;
                Some(slice::Cutter::new(template.clone(), main_key.clone(), total, size as u64))
            }
            _ => None,
        };
        let shareable = admitted.is_ok()
            && answer != slice::SliceAnswer::Other
            && cutter.is_none()
            && declared.is_none_or(|n| n <= self.settings.max_object_size);
        // Hit-for-pass is a property of the response (as in Varnish): a
        // refusal caused by this request's own credentials or no-store says
        // nothing about what other clients will get. A slice fill's answer
        // speaks for the object.
        match &admitted {
            Err(why) if why.caused_by_request() => {}
            _ if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT => {
                self.mark_uncacheable(main_key, !shareable && cutter.is_none())
            }
            _ => {}
        }
        if let Some(cutter) = &cutter {
            self.store_object(main_key, Arc::new(cutter.manifest()));
        }
        let head = Arc::new(FetchedHead {
            status,
            headers: hdrs,
            policy,
            admitted,
            shareable,
            slice: answer == slice::SliceAnswer::Slice,
            sliced: cutter.is_some(),
        });
        fill.set_outcome(Outcome::Response(head.clone()), shareable);
        let mut cutter = cutter;

        let deadline = tokio::time::Instant::from_std(started + self.settings.total_timeout);
        let mut last = None;
        let result = loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => break Err("upstream body timed out".to_string()),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(format!("upstream body failed: {e}")),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if let Some(cutter) = &mut cutter {
                        for (key, slice) in cutter.push(&data) {
                            self.store_object(&key, slice);
                        }
                    }
                    // The chunk that completes a declared length is
                    // published together with the stored object.
                    if http_body::Body::is_end_stream(&body) {
                        last = Some(data);
                        break Ok(());
                    }
                    if !fill.push(data).await {
                        break Err("no reader left".to_string());
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::debug!(url = %job.target.key.url, error = %e, "fill ended early; not stored");
        }
        // Only a shareable response is kept by the fill, so only the
        // admitted form is ever stored.
        fill.finish(last, result, |bytes: Bytes| {
            if let Some(template) = head.shared() {
                let object = CachedObject { body: bytes, ..(**template).clone() };
                self.store_object(store_key, Arc::new(object));
            }
        });
    }

    /// Analyses a response to a request for `target` and applies the one
    /// admission rule to it. Returns the response's policy and either the
    /// object the store may hold (with an empty body: the caller adds the
    /// body it has) or why it may hold none. Fills, 304 merges (§4.3.4) and
    /// HEAD merges (§4.3.5) all come through here.
    pub(super) fn admit(
        &self,
        asked: Asked<'_>,
        status: StatusCode,
        hdrs: &HeaderMap,
        (request_time, response_time): (SystemTime, SystemTime),
        stamp: Stamp,
    ) -> (ResponsePolicy, Result<Arc<CachedObject>, NotStorable>) {
        let Asked { target, headers: request_headers, directives: rd } = asked;
        let path = target.path_and_query.split('?').next().unwrap_or("/");
        let content_type = hdrs.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let class = self.settings.classes.classify(path, content_type);
        let mut cfg = std::borrow::Cow::Borrowed(&self.settings.policy);
        if let Some(store_set_cookie) = class.and_then(|c| c.store_set_cookie) {
            cfg.to_mut().store_set_cookie = store_set_cookie;
        }
        // A slice is a part of a 200 and is admitted as one; it is stored
        // as the 206 it is, under a key no client request reaches.
        let judged = if status == StatusCode::PARTIAL_CONTENT && slice::is_slice_key(&target.key.key) {
            StatusCode::OK
        } else {
            status
        };
        let mut policy = ResponsePolicy::new(judged, hdrs, request_time, response_time, &cfg);
        policy.credentialed = response::carries_credentials(request_headers);
        let admitted = response::admit(rd, request_headers, judged, hdrs, &policy, &cfg).and_then(|kept| {
            if self.settings.classes.refuses(path, content_type) { Err(NotStorable::ContentType) } else { Ok(kept) }
        });
        let admitted = admitted.map(|kept| {
            let names = vary::vary_names(&kept).unwrap_or_default();
            Arc::new(CachedObject {
                status,
                headers: StoredHeaders::from_map(&kept),
                body: Bytes::new(),
                policy: policy.clone(),
                vary: vary::VaryKey::for_request(&names, request_headers),
                url: Arc::from(target.key.url.as_str()),
                tags: tags::tags(&kept).into_iter().map(Arc::from).collect(),
                stamp,
                verified: Default::default(),
                stale: class.map(|c| c.stale).unwrap_or_default(),
            })
        });
        (policy, admitted)
    }

    /// §4.3.4 and §4.3.5: a stored object updated by the header fields of a
    /// 304 or of a 200 to HEAD, fetched at `stamp`. Returns what the
    /// requester gets (every merged field, its cookie included) and the
    /// admitted form to store, None when the merged response may not be
    /// stored (then the old object stays as it was).
    pub(super) fn merge_update(
        &self,
        asked: Asked<'_>,
        old: &CachedObject,
        update: &HeaderMap,
        times: (SystemTime, SystemTime),
        stamp: Stamp,
    ) -> (Arc<CachedObject>, Option<Arc<CachedObject>>) {
        let mut hdrs = old.headers.to_map();
        // `freshen` leaves out hop-by-hop fields itself.
        conditional::freshen(&mut hdrs, update);
        // The stored Date described the old response: an update without
        // one gets the time it arrived (RFC 9110 §6.6.1).
        if !update.contains_key(DATE) {
            hdrs.remove(DATE);
        }
        add_date(&mut hdrs, times.1);
        let (policy, admitted) = self.admit(asked, old.status, &hdrs, times, stamp);
        let shared =
            admitted.ok().map(|template| Arc::new(CachedObject { body: old.body.clone(), ..(*template).clone() }));
        // The requester's own copy is served, never stored: no tags needed.
        let own = Arc::new(CachedObject { headers: StoredHeaders::from_map(&hdrs), policy, stamp, ..old.clone() });
        (own, shared)
    }

    /// Adds `object` beside the other variants of its key, dropping
    /// variants that an invalidation has removed. The store's one entry
    /// point: an object already outranked by an invalidation is not stored.
    pub(super) fn store_object(&self, key: &str, object: Arc<CachedObject>) {
        if self.invalidations.check(&object) == Validity::Hard {
            return;
        }
        let current = self
            .store
            .get(key)
            .map(|v| v.without(|o| self.invalidations.check(o) == Validity::Hard))
            .unwrap_or_default();
        // Most keys are the URL itself: share its allocation.
        let key = if *object.url == *key { object.url.clone() } else { Arc::from(key) };
        if let Put::Refused(why) = self.store.put(key, current.with(object, self.settings.max_variants)) {
            tracing::debug!(?why, "the store refused an object");
        }
    }
}

/// RFC 9110 §6.6.1: a cache adds Date when the origin did not.
fn add_date(hdrs: &mut HeaderMap, response_time: SystemTime) {
    if !hdrs.contains_key(DATE)
        && let Ok(v) = HeaderValue::from_str(&age::format_http_date(response_time))
    {
        hdrs.insert(DATE, v);
    }
}
