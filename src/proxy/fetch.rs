//! Coalesced upstream fetches: the first client for a key starts a fill,
//! later ones join it; the fill's producer task stores what may be stored.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;

use super::fill::{FetchedHead, Fill, Outcome, Reader};
use super::upstream::UpstreamBody;
use super::{Candidate, Client, Proxy, Target};
use crate::invalidation::{Stamp, Validity};
use crate::metrics;
use crate::policy::cache_status::{CacheStatus, Fwd};
use crate::policy::request::{self, ObjectState, RequestDirectives, Reuse};
use crate::policy::response::{self, ResponsePolicy};
use crate::policy::{age, conditional, headers, tags, vary};
use crate::store::{CachedObject, StoredHeaders};

/// What the producer of a fill needs to know about the request that
/// started it.
struct Job {
    target: Target,
    client: Client,
    headers: HeaderMap,
    directives: RequestDirectives,
    /// The stored object being revalidated, if any.
    stale: Option<Arc<CachedObject>>,
}

/// How a request gets its response from upstream.
enum Start {
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
        let (mut reader, collapsed) =
            match self.join_or_start(&parts, &target, client, &rd, stale.as_ref().map(|s| s.0.clone()), true) {
                Start::Joined(r) => (r, true),
                Start::Started(r) => (r, false),
                Start::Stored(obj) => return self.serve_stored_hit(&parts, &obj),
            };
        let mut outcome = if collapsed {
            match tokio::time::timeout(self.settings.lock_timeout, reader.outcome()).await {
                Ok(o) => Some(o),
                Err(_) => {
                    metrics::coalesce("lock-timeout");
                    None
                }
            }
        } else {
            Some(reader.outcome().await)
        };
        if collapsed {
            let usable = match &outcome {
                Some(Outcome::Response(head)) => head.serves(&parts.headers),
                Some(Outcome::Refreshed(obj)) => obj.vary.matches(&parts.headers),
                // A failed leader: one waiter retries rather than all of them.
                Some(Outcome::Failed(_)) | None => false,
            };
            if usable {
                metrics::coalesce("served");
                status.collapsed = true;
            } else {
                // After a failure the waiters share one retry; otherwise the
                // leader's response was not for them and each asks alone.
                let retry_shared = matches!(outcome, Some(Outcome::Failed(_)));
                reader = match self.join_or_start(
                    &parts,
                    &target,
                    client,
                    &rd,
                    stale.as_ref().map(|s| s.0.clone()),
                    retry_shared,
                ) {
                    Start::Joined(r) | Start::Started(r) => r,
                    Start::Stored(obj) => return self.serve_stored_hit(&parts, &obj),
                };
                outcome = Some(reader.outcome().await);
            }
        }
        let now = SystemTime::now();
        match outcome.expect("outcome set above") {
            Outcome::Refreshed(obj) => {
                status.fwd_status = Some(304);
                status.stored = true;
                status.ttl = Some(obj.policy.ttl(now));
                self.serve_stored(&parts, &obj, status, true, now)
            }
            Outcome::Response(head) => {
                if let Some((obj, state)) = &stale
                    && is_server_error(head.status)
                    && request::stale_if_error(&rd, &obj.policy, *state, obj.stale, now)
                {
                    return self.serve_stale_on_error(&parts, obj, status, head.status.as_u16(), now);
                }
                status.fwd_status = Some(head.status.as_u16());
                match head.storable {
                    Ok(()) if head.shareable => {
                        status.stored = true;
                        status.ttl = Some(head.policy.ttl(now));
                    }
                    Ok(()) => status.detail = Some("too-large".into()),
                    Err(why) => status.detail = Some(why.as_str().into()),
                }
                self.serve_fetched(&parts, &head, reader, status)
            }
            Outcome::Failed(err) => {
                if let Some((obj, state)) = &stale
                    && request::stale_if_error(&rd, &obj.policy, *state, obj.stale, now)
                {
                    return self.serve_stale_on_error(&parts, obj, status, 0, now);
                }
                tracing::warn!(url = %target.key.url, error = %err, "upstream failed");
                status.detail = Some(err.detail().into());
                // §5.2.2.2: a stored response that may not be served stale
                // turns a failed validation into 504.
                let code = if stale.is_some() { StatusCode::GATEWAY_TIMEOUT } else { err.status() };
                self.error(code, status, &format!("{err}\n"))
            }
        }
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
        metrics::stale_served("stale-if-error");
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
        if let Start::Started(_) = self.join_or_start(parts, target, client, rd, Some(obj.clone()), true) {
            metrics::background_revalidation();
        }
    }

    /// Joins the fill in progress for this key, or finds that one just
    /// stored what this request needs, or starts one. `share` false starts a
    /// private fill that nobody else joins.
    fn join_or_start(
        self: &Arc<Self>,
        parts: &Parts,
        target: &Target,
        client: Client,
        rd: &RequestDirectives,
        stale: Option<Arc<CachedObject>>,
        share: bool,
    ) -> Start {
        let key = &target.key.key;
        let share = share && !self.recently_uncacheable(key);
        let fill = Fill::new(self.settings.max_object_size);
        let Some(reader) = fill.reader() else { unreachable!("a new fill accepts readers") };
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if share
                && let Some(existing) = inflight.get(key)
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
        let job = Job { target: target.clone(), client, headers: parts.headers.clone(), directives: rd.clone(), stale };
        let this = self.clone();
        tokio::spawn(async move { this.run_fill(fill, job, share).await });
        Start::Started(reader)
    }

    fn recently_uncacheable(&self, key: &str) -> bool {
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

    /// The producer: one upstream exchange, published through `fill`.
    async fn run_fill(self: Arc<Self>, fill: Arc<Fill>, job: Job, registered: bool) {
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
            let req = self.upstream_request(
                &Method::GET,
                &job.target,
                job.client,
                &job.headers,
                Some(validators),
                super::respond::empty(),
            );
            metrics::origin_request(if validate.is_some() { "revalidate" } else { "fetch" });
            let resp = match self.upstream.send(req, &job.target.key.key).await {
                Ok(r) => r,
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
                if conditional::not_modified_applies(&old.headers.to_map(), resp.headers()) {
                    let fresh = self.freshened(&old, resp.headers(), request_time, response_time, stamp);
                    self.store_object(&job.target.key.key, fresh.clone());
                    fill.set_outcome(Outcome::Refreshed(fresh), false);
                    break;
                }
                // §4.3.4: a 304 for some other representation updates
                // nothing; ask again without validators.
                continue;
            }
            self.stream_into(&fill, &job, resp, stamp, request_time, response_time, started).await;
            break;
        }
        if registered {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(&job.target.key.key).is_some_and(|f| Arc::ptr_eq(f, &fill)) {
                inflight.remove(&job.target.key.key);
            }
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
        let mut hdrs = parts.headers;
        headers::remove_hop_by_hop(&mut hdrs);
        // RFC 9110 §6.6.1: a cache adds Date when the origin did not.
        if !hdrs.contains_key(DATE)
            && let Ok(v) = HeaderValue::from_str(&age::format_http_date(response_time))
        {
            hdrs.insert(DATE, v);
        }
        let path = job.target.path_and_query.split('?').next().unwrap_or("/");
        let class = self.settings.classes.classify(path, hdrs.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()));
        let mut cfg = std::borrow::Cow::Borrowed(&self.settings.policy);
        if let Some(store_set_cookie) = class.and_then(|c| c.store_set_cookie) {
            cfg.to_mut().store_set_cookie = store_set_cookie;
        }
        let policy = ResponsePolicy::new(parts.status, &hdrs, request_time, response_time, &cfg);
        let storable =
            response::storable(&Method::GET, &job.directives, &job.headers, parts.status, &hdrs, &policy, &cfg);
        let stale = class.map(|c| c.stale).unwrap_or_default();
        let vary_names = vary::vary_names(&hdrs);
        let vary = vary::VaryKey::for_request(vary_names.as_deref().unwrap_or(&[]), &job.headers);
        let declared = hdrs.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        let shareable = storable.is_ok() && declared.is_none_or(|n| n <= self.settings.max_object_size);
        self.mark_uncacheable(&job.target.key.key, storable.is_err());
        let head = Arc::new(FetchedHead {
            status: parts.status,
            headers: hdrs,
            policy,
            storable,
            vary_names,
            vary,
            shareable,
        });
        fill.set_outcome(Outcome::Response(head.clone()), shareable);

        let deadline = tokio::time::Instant::from_std(started + self.settings.total_timeout);
        let result = loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => break Err("upstream body timed out".to_string()),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(format!("upstream body failed: {e}")),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !fill.push(data).await
                    {
                        break Err("no reader left".to_string());
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::debug!(url = %job.target.key.url, error = %e, "fill ended early; not stored");
        }
        // Only a shareable response is kept by the fill, so only it is stored.
        fill.finish(result, |bytes| {
            let mut stored_headers = head.headers.clone();
            headers::remove_private_fields(&mut stored_headers, head.policy.directives.private.as_ref());
            // When a class allows storing Set-Cookie responses, the cookie
            // stays with the client whose request fetched it.
            stored_headers.remove(SET_COOKIE);
            let tags: Box<[Arc<str>]> = tags::tags(&stored_headers).into_iter().map(Arc::from).collect();
            let object = CachedObject {
                status: head.status,
                headers: StoredHeaders::from_map(&stored_headers),
                body: bytes,
                policy: head.policy.clone(),
                vary: head.vary.clone(),
                url: Arc::from(job.target.key.url.as_str()),
                tags,
                stamp,
                stale,
            };
            self.store_object(&job.target.key.key, Arc::new(object));
        });
    }

    /// §4.3.4: the stored object updated by a 304's header fields.
    pub(super) fn freshened(
        &self,
        old: &CachedObject,
        update: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        stamp: Stamp,
    ) -> Arc<CachedObject> {
        let mut update = update.clone();
        headers::remove_hop_by_hop(&mut update);
        let mut hdrs = old.headers.to_map();
        conditional::freshen(&mut hdrs, &update);
        if !update.contains_key(DATE)
            && let Ok(v) = HeaderValue::from_str(&age::format_http_date(response_time))
        {
            hdrs.insert(DATE, v);
        }
        let policy = ResponsePolicy::new(old.status, &hdrs, request_time, response_time, &self.settings.policy);
        let tags = tags::tags(&hdrs).into_iter().map(Arc::from).collect();
        Arc::new(CachedObject { headers: StoredHeaders::from_map(&hdrs), policy, tags, stamp, ..old.clone() })
    }

    /// Adds `object` beside the other variants of its key, dropping
    /// variants that an invalidation has removed.
    pub(super) fn store_object(&self, key: &str, object: Arc<CachedObject>) {
        // An object already outranked by an invalidation is not stored.
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
        self.store.put(key, current.with(object, self.settings.max_variants));
    }
}
