//! The request side: request directives (RFC 9111 §5.2.1, §5.4) and the
//! decision whether a stored response may be reused for a request (§4,
//! §4.2.4), including RFC 5861's stale windows.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

use super::cache_control::{CacheControl, Delta, FieldScope, MaxStale};
use super::response::ResponsePolicy;

/// The caching directives of a request.
#[derive(Debug, Clone, Default)]
pub struct RequestDirectives {
    pub cc: CacheControl,
    /// `Pragma: no-cache` counts only when Cache-Control is absent (§5.4).
    pragma_no_cache: bool,
}

impl RequestDirectives {
    pub fn from_headers(headers: &HeaderMap) -> RequestDirectives {
        let has_cc = headers.contains_key(CACHE_CONTROL);
        let pragma_no_cache = !has_cc
            && headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("no-cache")));
        RequestDirectives {
            cc: if has_cc { CacheControl::from_headers(headers) } else { CacheControl::default() },
            pragma_no_cache,
        }
    }

    /// §5.2.1.4 / §5.4: the client wants a validated response.
    pub fn no_cache(&self) -> bool {
        self.cc.no_cache.is_some() || self.pragma_no_cache
    }
}

/// Why a stored response cannot be used as it is. Maps to Cache-Status
/// `fwd=` (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateReason {
    /// The stored response is stale (or the origin demands validation).
    Stale,
    /// A request directive asked for a fresher response.
    Request,
}

/// What may be done with a stored response for a request at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh and acceptable: serve it.
    Fresh,
    /// Stale, but the client accepts that staleness (max-stale, §5.2.1.2).
    StaleAccepted,
    /// Must be validated with upstream before use. `serve_stale_meanwhile`
    /// is true inside a `stale-while-revalidate` window (RFC 5861 §3).
    Validate { reason: ValidateReason, serve_stale_meanwhile: bool },
}

/// State of a stored object that is not in its headers: whether an
/// invalidation has marked it stale (a soft purge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectState {
    pub soft_invalidated: bool,
}

/// Stale-window defaults a content class may add when the origin sends none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleDefaults {
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// Forbid serving stale for this class, whatever the origin says.
    pub forbid: bool,
    /// The class's freshness SLO, enforced (design §6): no response staler
    /// than this is served, whatever stale-while-revalidate,
    /// stale-if-error or max-stale allow. A soft-purged object is not
    /// served stale at all under a cap: how long ago its invalidation was
    /// applied is not kept per object, so its staleness cannot be shown to
    /// be within the cap.
    pub max_staleness: Option<Duration>,
}

/// Within the class's staleness cap, if it has one?
fn within_cap(defaults: StaleDefaults, state: ObjectState, staleness: Duration) -> bool {
    defaults.max_staleness.is_none_or(|cap| !state.soft_invalidated && staleness <= cap)
}

fn window(directive: Option<Delta>, default: Option<Duration>) -> Option<Duration> {
    match directive {
        Some(d) => Some(Duration::from_secs(d.seconds())),
        None => default,
    }
}

/// How stale the object is at `now`; a soft-invalidated object counts as
/// stale from the moment it was invalidated even if its lifetime remains.
fn is_stale(stored: &ResponsePolicy, state: ObjectState, now: SystemTime) -> bool {
    state.soft_invalidated || stored.current_age(now) >= stored.lifetime
}

/// §4: may `stored` be reused for `req` at `now`?
pub fn reuse(
    req: &RequestDirectives,
    stored: &ResponsePolicy,
    state: ObjectState,
    defaults: StaleDefaults,
    now: SystemTime,
) -> Reuse {
    let age = stored.current_age(now);
    let d = &stored.directives;
    // §5.2.2.4: unqualified no-cache always needs validation. A soft purge
    // is validated too, but may still be served inside a stale window.
    if d.no_cache == Some(FieldScope::All) {
        return Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: false };
    }
    if req.no_cache() {
        return Reuse::Validate { reason: ValidateReason::Request, serve_stale_meanwhile: false };
    }
    if let Some(max_age) = req.cc.max_age
        && age.as_secs() > max_age.seconds()
    {
        return Reuse::Validate { reason: ValidateReason::Request, serve_stale_meanwhile: false };
    }
    if !is_stale(stored, state, now) {
        if let Some(min_fresh) = req.cc.min_fresh
            && (stored.lifetime - age).as_secs() < min_fresh.seconds()
        {
            return Reuse::Validate { reason: ValidateReason::Request, serve_stale_meanwhile: false };
        }
        return Reuse::Fresh;
    }
    // Stale from here on. RFC 8246: immutable never makes a stale response
    // fresh, so it plays no part.
    let staleness = stored.staleness(now);
    if stored.forbids_stale() || defaults.forbid || !within_cap(defaults, state, staleness) {
        return Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: false };
    }
    // A response stale on arrival (no freshness, or max-age=0) to a request
    // with credentials may have been personalised for that client: it was
    // kept only to be revalidated, so a client's max-stale does not reach it.
    let client_may_accept = !stored.only_revalidated();
    let accepted = client_may_accept
        && match req.cc.max_stale {
            Some(MaxStale::Any) => true,
            Some(MaxStale::Limit(limit)) => staleness.as_secs() <= u64::from(limit),
            None => false,
        };
    if accepted && req.cc.min_fresh.is_none() {
        return Reuse::StaleAccepted;
    }
    let swr = window(d.stale_while_revalidate, defaults.stale_while_revalidate);
    let serve_stale_meanwhile = swr.is_some_and(|w| staleness < w);
    Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile }
}

/// RFC 5861 §4 and RFC 9111 §4.2.4: after an upstream error (5xx, timeout,
/// refused connection), may the stale object be served instead?
///
/// The origin grants it with `stale-if-error` (or a content-class default);
/// a client grants it for itself with `stale-if-error` or `max-stale` on the
/// request, which then also bounds it. Directives that forbid stale
/// responses override both.
pub fn stale_if_error(
    req: &RequestDirectives,
    stored: &ResponsePolicy,
    state: ObjectState,
    defaults: StaleDefaults,
    now: SystemTime,
) -> bool {
    if stored.forbids_stale() || defaults.forbid {
        return false;
    }
    if !is_stale(stored, state, now) {
        // Only reached when a request directive forced validation of a
        // fresh object; a fresh object is always an acceptable fallback.
        return true;
    }
    let staleness = stored.staleness(now);
    if !within_cap(defaults, state, staleness) {
        return false;
    }
    let client = if stored.only_revalidated() {
        None
    } else {
        match (req.cc.stale_if_error, req.cc.max_stale) {
            (_, Some(MaxStale::Any)) => Some(Duration::MAX),
            (Some(sie), _) => Some(Duration::from_secs(sie.seconds())),
            (None, Some(MaxStale::Limit(l))) => Some(Duration::from_secs(u64::from(l))),
            (None, None) => None,
        }
    };
    match client {
        Some(limit) => staleness <= limit,
        None => window(stored.directives.stale_if_error, defaults.stale_if_error).is_some_and(|w| staleness <= w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::response::PolicyConfig;
    use crate::policy::test_support::headers;
    use http::{HeaderValue, StatusCode};

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    /// A response received at t=0 with this Cache-Control.
    fn stored(cc: &str) -> ResponsePolicy {
        let mut h = headers(&[("cache-control", cc)]);
        h.insert("date", HeaderValue::from_str(&httpdate::fmt_http_date(at(0))).unwrap());
        ResponsePolicy::new(StatusCode::OK, &h, at(0), at(0), &PolicyConfig::default())
    }

    fn req(cc: &str) -> RequestDirectives {
        if cc.is_empty() {
            RequestDirectives::default()
        } else {
            RequestDirectives::from_headers(&headers(&[("cache-control", cc)]))
        }
    }

    fn decide(r: &str, s: &str, t: u64) -> Reuse {
        reuse(&req(r), &stored(s), ObjectState::default(), StaleDefaults::default(), at(t))
    }

    const STALE: Reuse = Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: false };

    #[test]
    fn design_6_a_freshness_slo_caps_every_way_of_serving_stale() {
        let capped = StaleDefaults { max_staleness: Some(Duration::from_secs(2)), ..StaleDefaults::default() };
        let s = stored("max-age=10, stale-while-revalidate=60, stale-if-error=60");
        let fine = ObjectState::default();
        let served_meanwhile = Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: true };
        // 2 s past its lifetime: within the cap, the origin's windows apply.
        assert_eq!(reuse(&req(""), &s, fine, capped, at(12)), served_meanwhile);
        assert!(stale_if_error(&req(""), &s, fine, capped, at(12)));
        assert_eq!(reuse(&req("max-stale"), &s, fine, capped, at(12)), Reuse::StaleAccepted);
        // Past it: validated first, no stale fallback, whatever is allowed.
        assert_eq!(reuse(&req(""), &s, fine, capped, at(13)), STALE);
        assert!(!stale_if_error(&req(""), &s, fine, capped, at(13)));
        assert_eq!(reuse(&req("max-stale"), &s, fine, capped, at(13)), STALE);
        assert!(!stale_if_error(&req("stale-if-error=600"), &s, fine, capped, at(13)));
        // Without a cap the windows alone decide.
        assert_eq!(reuse(&req(""), &s, fine, StaleDefaults::default(), at(13)), served_meanwhile);
        // A soft purge's staleness is not known per object: never served stale under a cap.
        let soft = ObjectState { soft_invalidated: true };
        assert_eq!(reuse(&req(""), &s, soft, capped, at(1)), STALE);
        assert!(!stale_if_error(&req(""), &s, soft, capped, at(1)));
        assert_eq!(reuse(&req(""), &s, soft, StaleDefaults::default(), at(1)), served_meanwhile);
    }
    const BY_REQUEST: Reuse = Reuse::Validate { reason: ValidateReason::Request, serve_stale_meanwhile: false };

    #[test]
    fn rfc9111_4_2_fresh_until_lifetime_then_stale() {
        assert_eq!(decide("", "max-age=60", 59), Reuse::Fresh);
        assert_eq!(decide("", "max-age=60", 60), STALE);
    }

    #[test]
    fn rfc9111_5_2_1_4_request_no_cache_forces_validation() {
        assert_eq!(decide("no-cache", "max-age=60", 1), BY_REQUEST);
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_only_without_cache_control() {
        let s = stored("max-age=60");
        let pragma = RequestDirectives::from_headers(&headers(&[("pragma", "no-cache")]));
        assert_eq!(reuse(&pragma, &s, ObjectState::default(), StaleDefaults::default(), at(1)), BY_REQUEST);
        let both = RequestDirectives::from_headers(&headers(&[("pragma", "no-cache"), ("cache-control", "max-stale")]));
        assert_eq!(reuse(&both, &s, ObjectState::default(), StaleDefaults::default(), at(1)), Reuse::Fresh);
    }

    #[test]
    fn rfc9111_5_2_1_1_request_max_age() {
        assert_eq!(decide("max-age=10", "max-age=60", 10), Reuse::Fresh);
        assert_eq!(decide("max-age=10", "max-age=60", 11), BY_REQUEST);
    }

    #[test]
    fn rfc9111_5_2_1_3_request_min_fresh() {
        assert_eq!(decide("min-fresh=30", "max-age=60", 30), Reuse::Fresh);
        assert_eq!(decide("min-fresh=30", "max-age=60", 31), BY_REQUEST);
    }

    #[test]
    fn max_stale_never_reaches_a_never_fresh_response_fetched_with_credentials() {
        assert_eq!(decide("max-stale", "max-age=0", 10), Reuse::StaleAccepted, "anonymous: RFC 9111 §5.2.1.2");
        let mut personal = stored("max-age=0");
        personal.credentialed = true;
        let r = reuse(&req("max-stale"), &personal, ObjectState::default(), StaleDefaults::default(), at(10));
        assert_eq!(r, STALE, "only revalidated");
        assert!(!stale_if_error(
            &req("max-stale"),
            &personal,
            ObjectState::default(),
            StaleDefaults::default(),
            at(10)
        ));
    }

    #[test]
    fn rfc9111_5_2_1_2_max_stale_with_and_without_value() {
        assert_eq!(decide("max-stale", "max-age=60", 1000), Reuse::StaleAccepted);
        assert_eq!(decide("max-stale=10", "max-age=60", 70), Reuse::StaleAccepted);
        assert_eq!(decide("max-stale=10", "max-age=60", 71), STALE);
    }

    #[test]
    fn rfc9111_4_2_4_max_stale_cannot_override_must_revalidate() {
        for cc in ["max-age=60, must-revalidate", "max-age=60, proxy-revalidate", "s-maxage=60"] {
            assert_eq!(decide("max-stale", cc, 100), STALE, "{cc}");
        }
    }

    #[test]
    fn rfc9111_5_2_2_4_response_no_cache_always_validates() {
        assert_eq!(decide("", "no-cache, max-age=60", 1), STALE);
        assert_eq!(decide("max-stale", "no-cache, max-age=60", 1), STALE);
    }

    #[test]
    fn rfc8246_immutable_never_makes_stale_fresh() {
        assert_eq!(decide("", "max-age=60, immutable", 61), STALE);
    }

    #[test]
    fn rfc5861_3_stale_while_revalidate_window() {
        let swr = Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: true };
        assert_eq!(decide("", "max-age=60, stale-while-revalidate=30", 70), swr);
        assert_eq!(decide("", "max-age=60, stale-while-revalidate=30", 91), STALE);
        assert_eq!(decide("", "max-age=60, stale-while-revalidate=30, must-revalidate", 70), STALE);
    }

    #[test]
    fn soft_invalidation_makes_fresh_object_stale_but_inside_swr() {
        let s = stored("max-age=600, stale-while-revalidate=30");
        let soft = ObjectState { soft_invalidated: true };
        let r = reuse(&RequestDirectives::default(), &s, soft, StaleDefaults::default(), at(5));
        assert_eq!(r, Reuse::Validate { reason: ValidateReason::Stale, serve_stale_meanwhile: true });
    }

    #[test]
    fn rfc5861_4_stale_if_error_from_response() {
        let s = stored("max-age=60, stale-if-error=100");
        let rd = RequestDirectives::default();
        let none = ObjectState::default();
        assert!(stale_if_error(&rd, &s, none, StaleDefaults::default(), at(160)));
        assert!(!stale_if_error(&rd, &s, none, StaleDefaults::default(), at(161)));
    }

    #[test]
    fn rfc5861_4_request_stale_if_error_grants_and_bounds() {
        let none = ObjectState::default();
        let d = StaleDefaults::default();
        assert!(stale_if_error(&req("stale-if-error=50"), &stored("max-age=60"), none, d, at(110)));
        assert!(!stale_if_error(&req("stale-if-error=5"), &stored("max-age=60, stale-if-error=100"), none, d, at(110)));
        assert!(stale_if_error(&req("max-stale"), &stored("max-age=60"), none, d, at(10_000)));
    }

    #[test]
    fn rfc9111_4_2_4_stale_if_error_never_overrides_must_revalidate() {
        let d = StaleDefaults { stale_if_error: Some(Duration::from_secs(86400)), ..Default::default() };
        let none = ObjectState::default();
        for cc in
            ["max-age=1, must-revalidate, stale-if-error=100", "s-maxage=1", "max-age=1, proxy-revalidate", "no-cache"]
        {
            assert!(!stale_if_error(&req("max-stale"), &stored(cc), none, d, at(5)), "{cc}");
        }
    }

    #[test]
    fn content_class_defaults_apply_when_origin_is_silent() {
        let none = ObjectState::default();
        let d = StaleDefaults { stale_if_error: Some(Duration::from_secs(100)), ..Default::default() };
        assert!(stale_if_error(&RequestDirectives::default(), &stored("max-age=60"), none, d, at(150)));
        let forbid = StaleDefaults { forbid: true, ..d };
        assert!(!stale_if_error(&RequestDirectives::default(), &stored("max-age=60"), none, forbid, at(150)));
    }
}
