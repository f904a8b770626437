//! What a response from upstream permits: which directives govern it for
//! Fresco (targeted fields first, RFC 9213), its freshness lifetime
//! (RFC 9111 §4.2.1–4.2.2), and whether it may be stored (§3).
//!
//! [`ResponsePolicy`] is computed once when a response arrives and kept with
//! the stored object, so a cache hit never re-parses header fields.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, COOKIE, EXPIRES, HeaderName, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, StatusCode};

use super::age;
use super::cache_control::{self, CacheControl, FieldScope};
use super::request::RequestDirectives;

/// Settings that shape the caching decisions. Pure data: the policy
/// functions read nothing else.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Targeted fields Fresco obeys, in precedence order (RFC 9213 §2.2).
    pub targeted_fields: Vec<HeaderName>,
    /// Fresco's device token in `Surrogate-Control` targeting.
    pub surrogate_device: String,
    /// Fraction of (Date − Last-Modified) used as heuristic freshness.
    pub heuristic_fraction: f64,
    /// Upper bound of a heuristic freshness lifetime.
    pub heuristic_max: Duration,
    /// Whether responses carrying `Set-Cookie` may be stored. Off by
    /// default: RFC 9111 allows storing them, but replaying one user's
    /// cookie to another is a classic incident.
    pub store_set_cookie: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            surrogate_device: "fresco".to_string(),
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            store_set_cookie: false,
        }
    }
}

/// Which field the governing directives came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectiveSource {
    CacheControl,
    /// A field from [`PolicyConfig::targeted_fields`].
    Targeted,
    SurrogateControl,
}

/// The caching facts of one response, derived once.
#[derive(Debug, Clone)]
pub struct ResponsePolicy {
    /// The directives that govern Fresco: a targeted field's if one is
    /// present and valid, else Cache-Control.
    pub directives: CacheControl,
    pub source: DirectiveSource,
    /// Freshness lifetime (§4.2.1); zero for a response that is stale on
    /// arrival.
    pub lifetime: Duration,
    /// True when `lifetime` came from heuristics (§4.2.2).
    pub heuristic: bool,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub corrected_initial_age: Duration,
    /// The request that fetched it carried `Cookie` or `Authorization`, so
    /// the response may have been personalised for that client.
    pub credentialed: bool,
}

/// Why a response was not stored; shown in `Cache-Status: detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Status,
    NoStoreResponse,
    NoStoreRequest,
    Private,
    Authorization,
    SetCookie,
    MustUnderstand,
    NoFreshness,
    VaryStar,
    /// Heuristic freshness for a response to a request with credentials or
    /// cookies, which the origin did not mark as shareable.
    Personalised,
    /// Stale on arrival and without a validator: it could never be
    /// served, only handed to someone it was not meant for.
    NeverFresh,
    /// Its content class names content types and this is not one of them.
    ContentType,
}

impl NotStorable {
    /// True when the refusal comes from the request (its `no-store`, its
    /// credentials), not from the response: another request for the same
    /// URL may well get a storable answer, so the URL is not marked
    /// hit-for-pass.
    pub fn caused_by_request(self) -> bool {
        matches!(self, NotStorable::NoStoreRequest | NotStorable::Authorization)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Status => "status",
            NotStorable::NoStoreResponse => "no-store",
            NotStorable::NoStoreRequest => "request-no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::MustUnderstand => "must-understand",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::VaryStar => "vary-star",
            NotStorable::Personalised => "personalised",
            NotStorable::NeverFresh => "never-fresh",
            NotStorable::ContentType => "content-type",
        }
    }
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Status codes whose caching semantics Fresco implements, for
/// `must-understand` (§5.2.2.3). 206 is absent: Fresco does not store
/// partial content.
fn understood(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501)
}

impl ResponsePolicy {
    /// Analyses a response received at `response_time` to a request sent at
    /// `request_time`.
    pub fn new(
        status: StatusCode,
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        cfg: &PolicyConfig,
    ) -> ResponsePolicy {
        let (directives, source) = governing_directives(headers, cfg);
        let corrected_initial_age = age::corrected_initial_age(headers, request_time, response_time);
        let (lifetime, heuristic) = freshness_lifetime(status, headers, &directives, &source, response_time, cfg);
        ResponsePolicy {
            directives,
            source,
            lifetime,
            heuristic,
            request_time,
            response_time,
            corrected_initial_age,
            credentialed: false,
        }
    }

    /// `current_age` (§4.2.3) at `now`.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        age::current_age(self.corrected_initial_age, self.response_time, now)
    }

    /// Remaining freshness at `now` in seconds; negative once stale. This is
    /// Cache-Status `ttl` (RFC 9211 §2.5).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        self.lifetime.as_secs() as i64 - self.current_age(now).as_secs() as i64
    }

    /// How long past its lifetime the response is at `now` (zero if fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.current_age(now).saturating_sub(self.lifetime)
    }

    /// §3.5: may this response answer requests that carry Authorization?
    pub fn shareable_with_authorization(&self) -> bool {
        let d = &self.directives;
        d.public || d.must_revalidate || d.s_maxage.is_some()
    }

    /// A response stale on arrival that was fetched with credentials was
    /// kept only to be revalidated: a client's own max-stale or
    /// stale-if-error may not hand it to anyone else.
    pub fn only_revalidated(&self) -> bool {
        self.lifetime.is_zero() && self.credentialed
    }

    /// True when a directive forbids serving this response stale: §4.2.4,
    /// `must-revalidate` (§5.2.2.2), `proxy-revalidate` (§5.2.2.8),
    /// `s-maxage` (§5.2.2.10, which implies proxy-revalidate) and
    /// `no-cache` (§5.2.2.4).
    pub fn forbids_stale(&self) -> bool {
        let d = &self.directives;
        d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some() || d.no_cache == Some(FieldScope::All)
    }
}

/// RFC 9213 §2.2: the first targeted field on our list that is present and
/// valid replaces Cache-Control (and Expires) entirely.
fn governing_directives(headers: &HeaderMap, cfg: &PolicyConfig) -> (CacheControl, DirectiveSource) {
    for name in &cfg.targeted_fields {
        if let Some(cc) = cache_control::parse_cdn_cache_control(headers, name) {
            return (cc, DirectiveSource::Targeted);
        }
    }
    if let Some(cc) = cache_control::parse_surrogate_control(headers, &cfg.surrogate_device) {
        return (cc, DirectiveSource::SurrogateControl);
    }
    (CacheControl::from_headers(headers), DirectiveSource::CacheControl)
}

/// §4.2.1 with §4.2.2. Returns the lifetime and whether it is heuristic.
fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    d: &CacheControl,
    source: &DirectiveSource,
    response_time: SystemTime,
    cfg: &PolicyConfig,
) -> (Duration, bool) {
    // A shared cache uses s-maxage first; an invalid one makes the
    // response stale rather than falling through (§4.2.1).
    if let Some(s) = d.s_maxage {
        return (Duration::from_secs(s.seconds()), false);
    }
    if let Some(m) = d.max_age {
        return (Duration::from_secs(m.seconds()), false);
    }
    // Expires is ignored when a targeted field governs (RFC 9213 §2.2).
    if *source == DirectiveSource::CacheControl
        && let Some(expires) = age::single_date(headers, &EXPIRES)
    {
        // An invalid Expires, including "0", means already expired
        // (§5.3). The lifetime is Expires − Date, both from the origin,
        // so the cache's clock skew does not matter.
        return match expires {
            Ok(exp) => {
                let date = age::date_value(headers, response_time);
                (exp.duration_since(date).unwrap_or(Duration::ZERO), false)
            }
            Err(()) => (Duration::ZERO, false),
        };
    }
    if (heuristically_cacheable(status) || d.public)
        && let Some(Ok(last_modified)) = age::single_date(headers, &LAST_MODIFIED)
    {
        let date = age::date_value(headers, response_time);
        let since = date.duration_since(last_modified).unwrap_or(Duration::ZERO);
        return (since.mul_f64(cfg.heuristic_fraction).min(cfg.heuristic_max), true);
    }
    (Duration::ZERO, false)
}

/// Did the request carry credentials or cookies, so that its response may
/// be personalised for that client?
pub fn carries_credentials(request_headers: &HeaderMap) -> bool {
    request_headers.contains_key(AUTHORIZATION) || request_headers.contains_key(COOKIE)
}

/// The one admission rule for everything that enters the store: a fresh
/// fill, a 304 merged into a stored response (§4.3.4), a HEAD response
/// merged into one (§4.3.5). It applies §3 (with §3.5 and the Set-Cookie
/// rule) to the response as it would be stored and returns the fields to
/// keep: the fields named by `private="..."` (§5.2.2.7) and `Set-Cookie`
/// removed. A refused response may still be served to the client whose
/// request produced it, never to anyone else.
pub fn admit(
    request: &RequestDirectives,
    request_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    policy: &ResponsePolicy,
    cfg: &PolicyConfig,
) -> Result<HeaderMap, NotStorable> {
    storable(request, request_headers, status, headers, policy, cfg)?;
    let mut kept = headers.clone();
    super::headers::remove_private_fields(&mut kept, policy.directives.private.as_ref());
    // Even where a class allows storing Set-Cookie responses, the cookie
    // stays with the client whose request fetched it.
    kept.remove(SET_COOKIE);
    Ok(kept)
}

/// §3: may a shared cache store this response to a GET request? (Fresco
/// stores GET responses only; a HEAD is answered from them, §4.3.5.)
fn storable(
    request: &RequestDirectives,
    request_headers: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    policy: &ResponsePolicy,
    cfg: &PolicyConfig,
) -> Result<(), NotStorable> {
    let d = &policy.directives;
    if status.is_informational() || status == StatusCode::NOT_MODIFIED || status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStorable::Status);
    }
    // must-understand overrides no-store for status codes we understand
    // and forbids storing any other (§5.2.2.3).
    if d.must_understand {
        if !understood(status) {
            return Err(NotStorable::MustUnderstand);
        }
    } else if d.no_store {
        return Err(NotStorable::NoStoreResponse);
    }
    if request.cc.no_store {
        return Err(NotStorable::NoStoreRequest);
    }
    // Unqualified private stops a shared cache whatever else is present
    // (§5.2.2.7); qualified private only removes the named fields.
    if d.private == Some(FieldScope::All) {
        return Err(NotStorable::Private);
    }
    // §3.5: a response to an authenticated request is shared only when the
    // origin says so explicitly.
    if request_headers.contains_key(AUTHORIZATION) && !policy.shareable_with_authorization() {
        return Err(NotStorable::Authorization);
    }
    if !cfg.store_set_cookie && headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if super::vary::is_star(headers) {
        return Err(NotStorable::VaryStar);
    }
    let explicit = d.public
        || d.max_age.is_some()
        || d.s_maxage.is_some()
        || (policy.source == DirectiveSource::CacheControl && headers.contains_key(EXPIRES));
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStorable::NoFreshness);
    }
    // Heuristic freshness guesses that the origin forgot to say how long a
    // response may be reused; a response to a request that carried
    // credentials or cookies may be that client's own page (cache
    // deception: /account/settings.css), so only the origin's explicit
    // word (public, s-maxage) shares it.
    if policy.heuristic && carries_credentials(request_headers) && !d.public && d.s_maxage.is_none() {
        return Err(NotStorable::Personalised);
    }
    // A response stale on arrival is stored only to be revalidated (a
    // validator), or served under the origin's own stale windows.
    let stale_window = d.stale_while_revalidate.is_some() || d.stale_if_error.is_some();
    if policy.lifetime.is_zero() && !stale_window && !super::conditional::has_validator(headers) {
        return Err(NotStorable::NeverFresh);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        age::format_http_date(at(secs))
    }

    fn analyse(status: u16, h: &HeaderMap) -> ResponsePolicy {
        ResponsePolicy::new(StatusCode::from_u16(status).unwrap(), h, at(0), at(0), &PolicyConfig::default())
    }

    fn can_store(status: u16, h: &HeaderMap) -> Result<(), NotStorable> {
        can_store_for(status, h, &HeaderMap::new())
    }

    fn can_store_for(status: u16, h: &HeaderMap, req: &HeaderMap) -> Result<(), NotStorable> {
        let p = analyse(status, h);
        let rd = RequestDirectives::from_headers(req);
        storable(&rd, req, StatusCode::from_u16(status).unwrap(), h, &p, &PolicyConfig::default())
    }

    fn admit_for(h: &HeaderMap, cfg: &PolicyConfig) -> Result<HeaderMap, NotStorable> {
        let p = ResponsePolicy::new(StatusCode::OK, h, at(0), at(0), cfg);
        let rd = RequestDirectives::from_headers(&HeaderMap::new());
        admit(&rd, &HeaderMap::new(), StatusCode::OK, h, &p, cfg)
    }

    #[test]
    fn rfc9111_4_2_2_no_heuristic_freshness_for_a_request_with_cookies() {
        let h = headers(&[("date", &date(3600)), ("last-modified", &date(0))]);
        let with_cookie = headers(&[("cookie", "session=alice")]);
        assert_eq!(can_store_for(200, &h, &with_cookie).unwrap_err(), NotStorable::Personalised);
        assert!(can_store_for(200, &h, &HeaderMap::new()).is_ok());
        let public = headers(&[("date", &date(3600)), ("last-modified", &date(0)), ("cache-control", "public")]);
        assert!(can_store_for(200, &public, &with_cookie).is_ok(), "the origin opted in");
    }

    #[test]
    fn rfc9111_3_a_response_that_can_never_be_fresh_needs_a_validator() {
        let h = headers(&[("cache-control", "max-age=0")]);
        assert_eq!(can_store(200, &h).unwrap_err(), NotStorable::NeverFresh);
        let h = headers(&[("cache-control", "max-age=0"), ("etag", "\"v1\"")]);
        assert!(can_store(200, &h).is_ok(), "kept to be revalidated");
        let h = headers(&[("cache-control", "max-age=0, stale-if-error=60")]);
        assert!(can_store(200, &h).is_ok(), "the origin's own stale window");
    }

    #[test]
    fn rfc9111_3_admission_never_keeps_a_cookie() {
        let h = headers(&[("cache-control", "max-age=60"), ("set-cookie", "session=alice")]);
        assert_eq!(admit_for(&h, &PolicyConfig::default()).unwrap_err(), NotStorable::SetCookie);
        let allow = PolicyConfig { store_set_cookie: true, ..Default::default() };
        let kept = admit_for(&h, &allow).unwrap();
        assert!(!kept.contains_key(SET_COOKIE), "stored, but without the cookie");
    }

    #[test]
    fn rfc9111_5_2_2_7_admission_drops_fields_named_by_private() {
        let h =
            headers(&[("cache-control", "max-age=60, private=\"x-secret\""), ("x-secret", "alice"), ("x-other", "1")]);
        let kept = admit_for(&h, &PolicyConfig::default()).unwrap();
        assert!(!kept.contains_key("x-secret"));
        assert_eq!(kept.get("x-other").unwrap(), "1");
        let h = headers(&[("cache-control", "private, max-age=60")]);
        assert_eq!(admit_for(&h, &PolicyConfig::default()).unwrap_err(), NotStorable::Private);
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_beats_max_age_beats_expires() {
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20"), ("date", &date(0)), ("expires", &date(30))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(20));
        let h = headers(&[("cache-control", "max-age=10"), ("date", &date(0)), ("expires", &date(30))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(10));
        let h = headers(&[("date", &date(0)), ("expires", &date(30))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(30));
    }

    #[test]
    fn rfc9111_4_2_1_expires_minus_date_ignores_cache_clock_skew() {
        // Origin clock is an hour behind ours: the lifetime is still 60 s.
        let h = headers(&[("date", &date(0)), ("expires", &date(60))]);
        let p = ResponsePolicy::new(StatusCode::OK, &h, at(3600), at(3600), &PolicyConfig::default());
        assert_eq!(p.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn rfc9111_5_3_invalid_expires_means_expired() {
        for bad in ["0", "-1", "tomorrow"] {
            let h = headers(&[("date", &date(0)), ("expires", bad), ("last-modified", &date(0))]);
            let p = analyse(200, &h);
            assert_eq!(p.lifetime, Duration::ZERO, "{bad}");
            assert!(!p.heuristic);
        }
    }

    #[test]
    fn rfc9111_4_2_1_two_expires_lines_are_treated_as_stale() {
        let h = headers(&[("date", &date(0)), ("expires", &date(60)), ("expires", &date(90))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::ZERO);
    }

    #[test]
    fn rfc9111_4_2_1_invalid_max_age_makes_stale_not_fallthrough() {
        let h = headers(&[("cache-control", "max-age=soon"), ("date", &date(0)), ("expires", &date(600))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::ZERO);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_from_last_modified_is_capped() {
        let h = headers(&[("date", &date(1000)), ("last-modified", &date(0))]);
        let p = analyse(200, &h);
        assert!(p.heuristic);
        assert_eq!(p.lifetime, Duration::from_secs(100));
        let h = headers(&[("date", &date(100 * 24 * 3600)), ("last-modified", &date(0))]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn rfc9111_4_2_2_no_heuristic_for_non_heuristic_status() {
        let h = headers(&[("date", &date(1000)), ("last-modified", &date(0))]);
        assert_eq!(analyse(302, &h).lifetime, Duration::ZERO);
        assert_eq!(can_store(302, &h), Err(NotStorable::NoFreshness));
        assert_eq!(can_store(500, &h), Err(NotStorable::NoFreshness));
    }

    #[test]
    fn rfc9111_3_explicit_freshness_stores_any_final_status() {
        let h = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(can_store(302, &h), Ok(()));
        assert_eq!(can_store(500, &h), Ok(()));
    }

    #[test]
    fn rfc9111_5_2_2_7_private_stops_shared_cache_even_with_s_maxage() {
        let h = headers(&[("cache-control", "private, s-maxage=60, public, max-age=60")]);
        assert_eq!(can_store(200, &h), Err(NotStorable::Private));
        let h = headers(&[("cache-control", "private=\"x-user\", max-age=60")]);
        assert_eq!(can_store(200, &h), Ok(()));
    }

    #[test]
    fn rfc9111_5_2_2_5_no_store_is_not_stored() {
        assert_eq!(
            can_store(200, &headers(&[("cache-control", "no-store, max-age=60")])),
            Err(NotStorable::NoStoreResponse)
        );
    }

    #[test]
    fn rfc9111_5_2_1_5_request_no_store_is_not_stored() {
        let req = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            can_store_for(200, &headers(&[("cache-control", "max-age=60")]), &req),
            Err(NotStorable::NoStoreRequest)
        );
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand_overrides_no_store_for_known_status() {
        let h = headers(&[("cache-control", "must-understand, no-store, max-age=60")]);
        assert_eq!(can_store(200, &h), Ok(()));
        assert_eq!(can_store(299, &h), Err(NotStorable::MustUnderstand));
    }

    #[test]
    fn rfc9111_3_5_authorization_needs_explicit_permission() {
        let req = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            can_store_for(200, &headers(&[("cache-control", "max-age=60")]), &req),
            Err(NotStorable::Authorization)
        );
        for ok in ["max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"] {
            assert_eq!(can_store_for(200, &headers(&[("cache-control", ok)]), &req), Ok(()), "{ok}");
        }
    }

    #[test]
    fn set_cookie_responses_are_not_stored_by_default() {
        let h = headers(&[("cache-control", "max-age=60"), ("set-cookie", "sid=1")]);
        assert_eq!(can_store(200, &h), Err(NotStorable::SetCookie));
    }

    #[test]
    fn rfc9111_3_partial_and_not_modified_are_not_stored() {
        let h = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(can_store(206, &h), Err(NotStorable::Status));
        assert_eq!(can_store(304, &h), Err(NotStorable::Status));
    }

    #[test]
    fn rfc9111_4_1_vary_star_is_not_stored() {
        let h = headers(&[("cache-control", "max-age=60"), ("vary", "accept, *")]);
        assert_eq!(can_store(200, &h), Err(NotStorable::VaryStar));
    }

    #[test]
    fn rfc9213_2_2_targeted_field_overrides_cache_control_and_expires() {
        let h = headers(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=600"), ("expires", "0")]);
        let p = analyse(200, &h);
        assert_eq!(p.lifetime, Duration::from_secs(600));
        assert_eq!(can_store(200, &h), Ok(()));
        let h = headers(&[("cache-control", "max-age=600"), ("cdn-cache-control", "no-store")]);
        assert_eq!(can_store(200, &h), Err(NotStorable::NoStoreResponse));
    }

    #[test]
    fn rfc9213_2_2_invalid_targeted_field_falls_back_to_cache_control() {
        let h = headers(&[("cache-control", "max-age=60"), ("cdn-cache-control", "max-age=\"")]);
        let p = analyse(200, &h);
        assert_eq!(p.source, DirectiveSource::CacheControl);
        assert_eq!(p.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn surrogate_control_governs_below_cdn_cache_control() {
        let h = headers(&[("cache-control", "max-age=5"), ("surrogate-control", "max-age=300")]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(300));
        let h = headers(&[("cdn-cache-control", "max-age=7"), ("surrogate-control", "max-age=300")]);
        assert_eq!(analyse(200, &h).lifetime, Duration::from_secs(7));
    }

    #[test]
    fn rfc9111_4_2_4_stale_forbidden_by_revalidate_directives() {
        for cc in ["max-age=1, must-revalidate", "max-age=1, proxy-revalidate", "s-maxage=1", "no-cache"] {
            assert!(analyse(200, &headers(&[("cache-control", cc)])).forbids_stale(), "{cc}");
        }
        assert!(!analyse(200, &headers(&[("cache-control", "max-age=1")])).forbids_stale());
    }

    #[test]
    fn rfc9111_3_heuristically_cacheable_status_is_storable_without_explicit_freshness() {
        let lm = headers(&[("date", &date(3600)), ("last-modified", &date(0))]);
        assert_eq!(can_store(200, &lm), Ok(()));
        // Storable by §3, but never fresh and without a validator: useless.
        assert_eq!(can_store(200, &HeaderMap::new()), Err(NotStorable::NeverFresh));
        assert_eq!(can_store(302, &HeaderMap::new()), Err(NotStorable::NoFreshness));
    }
}
