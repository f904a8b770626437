//! The practices `fresco audit` checks, as pure functions of (URL, response
//! headers, context). The practices come from the field (shared/domain, the
//! decision matrix): HTML revalidates, fingerprinted assets are cached for a
//! year as `immutable` (RFC 8246), nothing else is `immutable`, service
//! workers are never cached by HTTP caches, user-specific responses stay out
//! of shared caches (RFC 9111 §3.5, §5.2.2.7) and sensitive ones out of every
//! cache (`no-store`, §5.2.2.5), `Vary` does not fragment shared caches, and
//! the targeted fields (RFC 9213) agree with `Cache-Control`.

use std::sync::LazyLock;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, Uri};
use regex::Regex;

use super::html::Referenced;
use crate::policy::cache_control::{CacheControl, FieldScope, parse_cdn_cache_control, parse_surrogate_control};

/// HTML fresher than this in browsers keeps users on the old page after a
/// deploy for longer than anyone waits.
const HTML_MAX_TTL: u64 = 300;
/// Same bound for JSON a browser keeps (a new bundle reading an old schema).
const API_MAX_TTL: u64 = 300;
/// A fingerprinted asset cached for less than this is fetched again for no
/// reason: its URL changes whenever its content does.
const FINGERPRINTED_MIN_TTL: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a resource is, which decides the practice it must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Class {
    HtmlEntry,
    FingerprintedAsset,
    UnfingerprintedAsset,
    ApiJson,
    ServiceWorker,
}

impl Class {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Class::HtmlEntry => "html",
            Class::FingerprintedAsset => "fingerprinted",
            Class::UnfingerprintedAsset => "unfingerprinted",
            Class::ApiJson => "api/json",
            Class::ServiceWorker => "service-worker",
        }
    }
}

/// Each practice, named as in the README's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Rule {
    HtmlCachedTooLong,
    NoExplicitLifetime,
    MissingValidator,
    FingerprintedShortLived,
    FingerprintedNotImmutable,
    ImmutableUnfingerprinted,
    QueryStringVersioning,
    ServiceWorkerCacheable,
    UserSpecificPublic,
    NoCacheForSensitive,
    VaryCookie,
    VaryUserAgent,
    TargetedInvalid,
    TargetedConflict,
    TargetedSharesPrivate,
    ApiCachedTooLong,
    /// Not a header practice: a referenced resource that does not load.
    FetchFailed,
}

impl Rule {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rule::HtmlCachedTooLong => "html-cached-too-long",
            Rule::NoExplicitLifetime => "no-explicit-lifetime",
            Rule::MissingValidator => "missing-validator",
            Rule::FingerprintedShortLived => "fingerprinted-short-lived",
            Rule::FingerprintedNotImmutable => "fingerprinted-not-immutable",
            Rule::ImmutableUnfingerprinted => "immutable-unfingerprinted",
            Rule::QueryStringVersioning => "query-string-versioning",
            Rule::ServiceWorkerCacheable => "service-worker-cacheable",
            Rule::UserSpecificPublic => "user-specific-public",
            Rule::NoCacheForSensitive => "no-cache-for-sensitive",
            Rule::VaryCookie => "vary-cookie",
            Rule::VaryUserAgent => "vary-user-agent",
            Rule::TargetedInvalid => "targeted-invalid",
            Rule::TargetedConflict => "targeted-conflict",
            Rule::TargetedSharesPrivate => "targeted-shares-private",
            Rule::ApiCachedTooLong => "api-cached-too-long",
            Rule::FetchFailed => "fetch-failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Finding {
    pub rule: Rule,
    pub severity: Severity,
    pub finding: String,
    pub fix: &'static str,
}

/// What the audit knows about a resource besides its own response.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// How the page referenced it; `None` for a page itself.
    pub referenced_as: Option<Referenced>,
    /// The audit sent credentials (`Authorization`) with the request.
    pub sent_authorization: bool,
    /// When the response arrived, for `Expires` without `Date`.
    pub now: SystemTime,
}

/// One resource's response, with what every rule reads parsed once.
pub(crate) struct Subject<'a> {
    pub url: &'a Uri,
    pub headers: &'a HeaderMap,
    pub ctx: &'a Context,
    pub cc: CacheControl,
    pub class: Class,
    /// Sets a cookie, answers credentials, or is marked `private`.
    pub user_specific: bool,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(url: &'a Uri, headers: &'a HeaderMap, ctx: &'a Context) -> Subject<'a> {
        let cc = CacheControl::from_headers(headers);
        let user_specific = headers.contains_key(http::header::SET_COOKIE)
            || ctx.sent_authorization
            || matches!(cc.private, Some(FieldScope::All));
        let class = classify(url, headers, ctx.referenced_as);
        Subject { url, headers, ctx, cc, class, user_specific }
    }

    /// How long a browser (a private cache) may reuse it without asking:
    /// `Some(0)` when it must not, `None` when no lifetime is given and a
    /// cache may pick a heuristic one (RFC 9111 §4.2.1, §4.2.2).
    fn browser_lifetime(&self) -> Option<u64> {
        if self.cc.no_store || matches!(self.cc.no_cache, Some(FieldScope::All)) {
            return Some(0);
        }
        if let Some(max_age) = self.cc.max_age {
            return Some(max_age.seconds());
        }
        self.expires_lifetime()
    }

    /// The lifetime a shared cache uses: the targeted fields first (RFC 9213
    /// §2.2), then `s-maxage`, `max-age`, `Expires`.
    fn shared_lifetime(&self) -> Option<u64> {
        if let Some(t) = self.targeted() {
            if t.no_store || matches!(t.no_cache, Some(FieldScope::All)) || t.private.is_some() {
                return Some(0);
            }
            if let Some(a) = t.s_maxage.or(t.max_age) {
                return Some(a.seconds());
            }
        }
        if self.cc.no_store || self.cc.private.is_some() || matches!(self.cc.no_cache, Some(FieldScope::All)) {
            return Some(0);
        }
        match self.cc.s_maxage.or(self.cc.max_age) {
            Some(a) => Some(a.seconds()),
            None => self.expires_lifetime(),
        }
    }

    fn expires_lifetime(&self) -> Option<u64> {
        let expires = self.headers.get(http::header::EXPIRES)?.to_str().ok()?;
        // An invalid Expires means "already expired" (§5.3).
        let Some(expires) = crate::policy::age::parse_http_date(expires) else {
            return Some(0);
        };
        let date = self
            .headers
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(crate::policy::age::parse_http_date)
            .unwrap_or(self.ctx.now);
        Some(expires.duration_since(date).map_or(0, |d| d.as_secs()))
    }

    /// `CDN-Cache-Control`, else `Surrogate-Control`.
    fn targeted(&self) -> Option<CacheControl> {
        parse_cdn_cache_control(self.headers, &HeaderName::from_static("cdn-cache-control"))
            .or_else(|| parse_surrogate_control(self.headers, ""))
    }

    fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG) || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    fn shared_cacheable(&self) -> bool {
        self.shared_lifetime().is_none_or(|l| l > 0)
            || (self.cc.no_cache.is_some() && !self.cc.no_store && self.cc.private.is_none())
    }

    fn vary_has(&self, name: &str) -> bool {
        self.headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name))
    }
}

/// The class of a resource: what referenced it, its content type, its URL.
pub(crate) fn classify(url: &Uri, headers: &HeaderMap, referenced_as: Option<Referenced>) -> Class {
    let file = url.path().rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
    if referenced_as == Some(Referenced::ServiceWorker) || file == "sw.js" || file == "service-worker.js" {
        return Class::ServiceWorker;
    }
    let media = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media == "text/html" || media == "application/xhtml+xml" {
        return Class::HtmlEntry;
    }
    let is_json = media == "application/json" || (media.ends_with("+json") && media != "application/manifest+json");
    if is_json && referenced_as != Some(Referenced::Manifest) {
        return Class::ApiJson;
    }
    if fingerprinted(url) { Class::FingerprintedAsset } else { Class::UnfingerprintedAsset }
}

/// A content hash in the path (`app.3f2a9c1b.js`, `index-BdkQ3tHW.js`,
/// `/static/5f3c2a1b9e7d/app.js`): a token of 8 or more characters that is
/// hex with digits and letters, or mixed-case alphanumeric with a digit
/// inside (base64url hashes). The query is not part of a file's name, so
/// `?v=3` is not a fingerprint.
pub(crate) fn fingerprinted(url: &Uri) -> bool {
    url.path().split('/').flat_map(|segment| segment.split(['.', '-', '_', '~', '@'])).any(|token| {
        let len = token.len();
        if !(8..=64).contains(&len) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return false;
        }
        let digits = token.bytes().filter(u8::is_ascii_digit).count();
        let letters = len - digits;
        if digits == 0 || letters == 0 {
            return false;
        }
        if token.bytes().all(|b| b.is_ascii_hexdigit()) && !token.bytes().any(|b| b.is_ascii_uppercase()) {
            return true;
        }
        let mixed_case = token.bytes().any(|b| b.is_ascii_uppercase()) && token.bytes().any(|b| b.is_ascii_lowercase());
        let digit_inside = token.trim_end_matches(|c: char| c.is_ascii_digit()).bytes().any(|b| b.is_ascii_digit());
        mixed_case && digit_inside
    })
}

/// `?v=12`, `?ver=…`, `?hash=…`, `?1700000000`: a version in the query.
static QUERY_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:[a-z0-9]{1,64}|(?:.*&)?(?:v|ver|version|rev|revision|hash|h|build|cb|cachebust|bust|t|ts|_)=[^&]+.*)$")
        .expect("valid")
});

/// Every practice, in the order the table lists them.
const RULES: [fn(&Subject) -> Option<Finding>; 15] = [
    html_cached_too_long,
    service_worker_cacheable,
    immutable_unfingerprinted,
    user_specific_public,
    targeted_shares_private,
    no_cache_for_sensitive,
    api_cached_too_long,
    no_explicit_lifetime,
    missing_validator,
    fingerprinted_short_lived,
    query_string_versioning,
    vary_cookie,
    vary_user_agent,
    targeted_consistency,
    fingerprinted_not_immutable,
];

/// Checks one successful response against every practice.
pub(crate) fn check(subject: &Subject) -> Vec<Finding> {
    RULES.iter().filter_map(|rule| rule(subject)).collect()
}

fn finding(rule: Rule, severity: Severity, finding: String, fix: &'static str) -> Option<Finding> {
    Some(Finding { rule, severity, finding, fix })
}

fn html_cached_too_long(s: &Subject) -> Option<Finding> {
    if s.class != Class::HtmlEntry {
        return None;
    }
    let ttl = s.browser_lifetime()?;
    (ttl > HTML_MAX_TTL).then_some(())?;
    finding(
        Rule::HtmlCachedTooLong,
        Severity::Error,
        format!("HTML fresh for {ttl} s in browsers: after a deploy they keep the old page and its old asset URLs"),
        "Cache-Control: no-cache with an ETag (or max-age <= 300)",
    )
}

fn service_worker_cacheable(s: &Subject) -> Option<Finding> {
    if s.class != Class::ServiceWorker {
        return None;
    }
    let lifetime = match (s.browser_lifetime(), s.shared_lifetime()) {
        (Some(b), Some(sh)) => Some(b.max(sh)),
        _ => None,
    };
    let what = match lifetime {
        Some(0) => return None,
        Some(t) => format!("cacheable for {t} s"),
        None => "cacheable for a heuristic lifetime (no Cache-Control)".to_string(),
    };
    finding(
        Rule::ServiceWorkerCacheable,
        Severity::Error,
        format!(
            "service worker script {what}: a cached copy keeps the old worker, which can pin every user to the old site"
        ),
        "Cache-Control: no-cache (or no-store) on the service worker script",
    )
}

fn immutable_unfingerprinted(s: &Subject) -> Option<Finding> {
    let targeted_immutable = s.targeted().is_some_and(|t| t.immutable);
    if !(s.cc.immutable || targeted_immutable) || s.class == Class::FingerprintedAsset {
        return None;
    }
    finding(
        Rule::ImmutableUnfingerprinted,
        Severity::Error,
        "immutable on a URL that does not change with its content: a changed file stays old until max-age ends".into(),
        "drop immutable, or put a content hash in the file name",
    )
}

fn user_specific_public(s: &Subject) -> Option<Finding> {
    let cookie = s.headers.contains_key(http::header::SET_COOKIE);
    if !(cookie || s.ctx.sent_authorization) {
        return None;
    }
    let targeted_shares = s.targeted().is_some_and(|t| {
        !t.no_store && t.private.is_none() && t.s_maxage.or(t.max_age).is_some_and(|a| a.seconds() > 0)
    });
    if !(s.cc.public || s.cc.s_maxage.is_some() || targeted_shares) || s.cc.no_store {
        return None;
    }
    let why = if cookie { "sets a cookie" } else { "answers a request with credentials" };
    finding(
        Rule::UserSpecificPublic,
        Severity::Error,
        format!(
            "{why} but is marked for shared caches (public / s-maxage / CDN-Cache-Control): one user's response can reach another"
        ),
        "Cache-Control: private (or no-store); serve the shared part without the cookie",
    )
}

fn targeted_shares_private(s: &Subject) -> Option<Finding> {
    let t = s.targeted()?;
    let cc_forbids = s.cc.no_store || matches!(s.cc.private, Some(FieldScope::All));
    let t_shares = !t.no_store && t.private.is_none() && t.s_maxage.or(t.max_age).is_some_and(|a| a.seconds() > 0);
    (cc_forbids && t_shares).then_some(())?;
    finding(
        Rule::TargetedSharesPrivate,
        Severity::Error,
        "Cache-Control says private/no-store but CDN-Cache-Control/Surrogate-Control let the CDN store it".into(),
        "remove the targeted field, or make it no-store too",
    )
}

fn no_cache_for_sensitive(s: &Subject) -> Option<Finding> {
    let sensitive = s.ctx.sent_authorization || matches!(s.cc.private, Some(FieldScope::All));
    (sensitive && s.cc.no_cache.is_some() && !s.cc.no_store).then_some(())?;
    finding(
        Rule::NoCacheForSensitive,
        Severity::Warning,
        "private data with no-cache: no-cache still stores the response (it only revalidates before use)".into(),
        "Cache-Control: private, no-store for data that must not be kept",
    )
}

fn api_cached_too_long(s: &Subject) -> Option<Finding> {
    if s.class != Class::ApiJson {
        return None;
    }
    let ttl = s.browser_lifetime()?;
    (ttl > API_MAX_TTL).then_some(())?;
    finding(
        Rule::ApiCachedTooLong,
        Severity::Warning,
        format!(
            "JSON fresh for {ttl} s in browsers: after a deploy new code reads the old schema and no purge reaches browsers"
        ),
        "max-age <= 60 for browsers (s-maxage or CDN-Cache-Control for the CDN, purged on deploy)",
    )
}

fn no_explicit_lifetime(s: &Subject) -> Option<Finding> {
    if !matches!(s.class, Class::HtmlEntry | Class::ApiJson) || s.browser_lifetime().is_some() {
        return None;
    }
    finding(
        Rule::NoExplicitLifetime,
        Severity::Warning,
        "no Cache-Control or Expires: caches pick a heuristic lifetime (often 10% of the time since Last-Modified)"
            .into(),
        "say it: Cache-Control: no-cache (HTML) or a short max-age (API)",
    )
}

fn missing_validator(s: &Subject) -> Option<Finding> {
    let revalidated = matches!(s.class, Class::HtmlEntry | Class::UnfingerprintedAsset | Class::ApiJson);
    if !revalidated || s.cc.no_store || s.has_validator() {
        return None;
    }
    finding(
        Rule::MissingValidator,
        Severity::Warning,
        "no ETag or Last-Modified: every revalidation downloads the whole body instead of a 304".into(),
        "send an ETag (or Last-Modified)",
    )
}

fn fingerprinted_short_lived(s: &Subject) -> Option<Finding> {
    if s.class != Class::FingerprintedAsset {
        return None;
    }
    let ttl = s.browser_lifetime();
    if ttl.is_some_and(|t| t >= FINGERPRINTED_MIN_TTL) {
        return None;
    }
    let what = ttl.map_or("no lifetime".to_string(), |t| format!("{t} s"));
    finding(
        Rule::FingerprintedShortLived,
        Severity::Warning,
        format!(
            "fingerprinted asset cached for {what}: its URL changes with its content, so it can be kept for a year"
        ),
        "Cache-Control: public, max-age=31536000, immutable",
    )
}

fn fingerprinted_not_immutable(s: &Subject) -> Option<Finding> {
    if s.class != Class::FingerprintedAsset || s.cc.immutable {
        return None;
    }
    s.browser_lifetime().filter(|t| *t >= FINGERPRINTED_MIN_TTL)?;
    finding(
        Rule::FingerprintedNotImmutable,
        Severity::Info,
        "fingerprinted asset without immutable: browsers revalidate it on reload".into(),
        "add immutable (RFC 8246)",
    )
}

fn query_string_versioning(s: &Subject) -> Option<Finding> {
    let query = s.url.query()?;
    if s.ctx.referenced_as.is_none() || s.class == Class::FingerprintedAsset || !QUERY_VERSION.is_match(query) {
        return None;
    }
    finding(
        Rule::QueryStringVersioning,
        Severity::Warning,
        format!(
            "versioned by query string (?{query}): some caches drop the query from their key, and the file name stays the same"
        ),
        "put the content hash in the file name (app.3f2a9c1b.js)",
    )
}

fn vary_cookie(s: &Subject) -> Option<Finding> {
    if !s.vary_has("cookie") || !s.shared_cacheable() {
        return None;
    }
    finding(
        Rule::VaryCookie,
        Severity::Warning,
        "Vary: Cookie on a shared-cacheable response: every visitor gets a copy of their own (hit ratio near zero)"
            .into(),
        "Cache-Control: private if it is per user; else key on the one cookie that matters",
    )
}

fn vary_user_agent(s: &Subject) -> Option<Finding> {
    if !s.vary_has("user-agent") || !s.shared_cacheable() {
        return None;
    }
    finding(
        Rule::VaryUserAgent,
        Severity::Warning,
        "Vary: User-Agent on a shared-cacheable response: thousands of User-Agent strings split the cache".into(),
        "vary on a normalised header (a device class) instead, or serve one response",
    )
}

fn targeted_consistency(s: &Subject) -> Option<Finding> {
    let cdn_name = HeaderName::from_static("cdn-cache-control");
    let cdn_present = s.headers.contains_key(&cdn_name);
    let cdn = parse_cdn_cache_control(s.headers, &cdn_name);
    if cdn_present && cdn.is_none() {
        return finding(
            Rule::TargetedInvalid,
            Severity::Warning,
            "CDN-Cache-Control is not a valid structured-field dictionary (RFC 9213 §2.1): CDNs ignore it".into(),
            "write it as a dictionary, e.g. CDN-Cache-Control: max-age=600",
        );
    }
    let surrogate = parse_surrogate_control(s.headers, "")?;
    let cdn = cdn?;
    let lifetime = |c: &CacheControl| {
        if c.no_store { Some(0) } else { c.s_maxage.or(c.max_age).map(|a| a.seconds()) }
    };
    (lifetime(&cdn) != lifetime(&surrogate)).then_some(())?;
    finding(
        Rule::TargetedConflict,
        Severity::Warning,
        "CDN-Cache-Control and Surrogate-Control disagree: which one applies depends on the CDN".into(),
        "send one targeted field, or the same lifetime in both",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(url: &str, headers: &[(&str, &str)], referenced_as: Option<Referenced>) -> Vec<Rule> {
        run_with(url, headers, referenced_as, false)
    }

    fn run_with(url: &str, headers: &[(&str, &str)], referenced_as: Option<Referenced>, auth: bool) -> Vec<Rule> {
        let url: Uri = url.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let ctx = Context { referenced_as, sent_authorization: auth, now: SystemTime::UNIX_EPOCH };
        let mut rules: Vec<Rule> = check(&Subject::new(&url, &map, &ctx)).into_iter().map(|f| f.rule).collect();
        rules.sort();
        rules
    }

    const HTML: (&str, &str) = ("content-type", "text/html; charset=utf-8");
    const JS: (&str, &str) = ("content-type", "text/javascript");
    const JSON: (&str, &str) = ("content-type", "application/json");
    const ETAG: (&str, &str) = ("etag", "\"a1\"");
    const SCRIPT: Option<Referenced> = Some(Referenced::Script);

    #[test]
    fn the_decision_matrix_passes_clean() {
        assert_eq!(run("https://s.test/", &[HTML, ("cache-control", "no-cache"), ETAG], None), []);
        assert_eq!(run("https://s.test/", &[HTML, ("cache-control", "max-age=60"), ETAG], None), []);
        let year = ("cache-control", "public, max-age=31536000, immutable");
        assert_eq!(run("https://s.test/app.a7f3c9b1.js", &[JS, year], SCRIPT), []);
        let hero = ("cache-control", "public, max-age=86400");
        assert_eq!(
            run("https://s.test/hero.webp", &[("content-type", "image/webp"), hero, ETAG], Some(Referenced::Image)),
            []
        );
        let cart = ("cache-control", "private, no-store");
        assert_eq!(run("https://s.test/api/cart", &[JSON, cart, ("set-cookie", "s=1")], None), []);
        let sw = ("cache-control", "no-cache");
        assert_eq!(run("https://s.test/sw.js", &[JS, sw, ETAG], Some(Referenced::ServiceWorker)), []);
    }

    #[test]
    fn html_with_a_long_max_age_or_expires_is_an_error() {
        assert_eq!(
            run("https://s.test/", &[HTML, ("cache-control", "max-age=3600"), ETAG], None),
            [Rule::HtmlCachedTooLong]
        );
        let expires =
            [HTML, ETAG, ("date", "Mon, 23 Nov 2026 10:00:00 GMT"), ("expires", "Mon, 23 Nov 2026 11:00:00 GMT")];
        assert_eq!(run("https://s.test/", &expires, None), [Rule::HtmlCachedTooLong]);
        // A long s-maxage is the CDN's, which a purge reaches: not flagged.
        assert_eq!(run("https://s.test/", &[HTML, ("cache-control", "max-age=0, s-maxage=3600"), ETAG], None), []);
    }

    #[test]
    fn html_and_api_without_a_lifetime_are_left_to_heuristics() {
        assert_eq!(run("https://s.test/", &[HTML, ETAG], None), [Rule::NoExplicitLifetime]);
        assert_eq!(run("https://s.test/api/x", &[JSON, ETAG], None), [Rule::NoExplicitLifetime]);
    }

    #[test]
    fn missing_validator_on_revalidated_resources_only() {
        assert_eq!(run("https://s.test/", &[HTML, ("cache-control", "no-cache")], None), [Rule::MissingValidator]);
        let year = ("cache-control", "public, max-age=31536000, immutable");
        assert_eq!(run("https://s.test/app.a7f3c9b1.js", &[JS, year], SCRIPT), []);
        assert_eq!(run("https://s.test/", &[HTML, ("cache-control", "no-store")], None), []);
    }

    #[test]
    fn fingerprinted_assets_want_a_year_and_immutable() {
        let day = ("cache-control", "public, max-age=86400");
        assert_eq!(run("https://s.test/app.a7f3c9b1.js", &[JS, day], SCRIPT), [Rule::FingerprintedShortLived]);
        let no_cache = ("cache-control", "no-cache");
        assert_eq!(run("https://s.test/app.a7f3c9b1.js", &[JS, no_cache], SCRIPT), [Rule::FingerprintedShortLived]);
        let year = ("cache-control", "public, max-age=31536000");
        assert_eq!(run("https://s.test/app.a7f3c9b1.js", &[JS, year], SCRIPT), [Rule::FingerprintedNotImmutable]);
    }

    #[test]
    fn immutable_without_a_fingerprint_is_an_error() {
        let cc = ("cache-control", "public, max-age=31536000, immutable");
        assert_eq!(run("https://s.test/js/app.js", &[JS, cc, ETAG], SCRIPT), [Rule::ImmutableUnfingerprinted]);
        // A version in the query is not a fingerprint of the file name.
        assert_eq!(
            run("https://s.test/js/app.js?v=12", &[JS, cc, ETAG], SCRIPT),
            [Rule::ImmutableUnfingerprinted, Rule::QueryStringVersioning]
        );
    }

    #[test]
    fn query_string_versioning_is_flagged_on_assets() {
        let day = ("cache-control", "max-age=86400");
        for q in ["v=12", "ver=3.1", "x=1&hash=abc", "1700000000", "_=17"] {
            let url = format!("https://s.test/app.css?{q}");
            assert_eq!(
                run(&url, &[("content-type", "text/css"), day, ETAG], Some(Referenced::Style)),
                [Rule::QueryStringVersioning],
                "{q}"
            );
        }
        assert_eq!(
            run(
                "https://s.test/app.css?theme=dark",
                &[("content-type", "text/css"), day, ETAG],
                Some(Referenced::Style)
            ),
            []
        );
        // A page's own query is not asset versioning.
        assert_eq!(run("https://s.test/?v=2", &[HTML, ("cache-control", "no-cache"), ETAG], None), []);
    }

    #[test]
    fn a_cacheable_service_worker_is_an_error() {
        let sw = Some(Referenced::ServiceWorker);
        assert_eq!(
            run("https://s.test/worker.js", &[JS, ("cache-control", "max-age=3600"), ETAG], sw),
            [Rule::ServiceWorkerCacheable]
        );
        assert_eq!(run("https://s.test/sw.js", &[JS, ETAG], None), [Rule::ServiceWorkerCacheable]);
        let cdn = [JS, ("cache-control", "no-cache"), ("cdn-cache-control", "max-age=600"), ETAG];
        assert_eq!(run("https://s.test/sw.js", &cdn, sw), [Rule::ServiceWorkerCacheable]);
        assert_eq!(run("https://s.test/sw.js", &[JS, ("cache-control", "no-store")], sw), []);
        assert_eq!(run("https://s.test/sw.js", &[JS, ("cache-control", "max-age=0"), ETAG], sw), []);
    }

    #[test]
    fn user_specific_responses_are_not_public() {
        let cookie = ("set-cookie", "session=abc");
        let public = ("cache-control", "public, max-age=300");
        assert_eq!(run("https://s.test/api/me", &[JSON, public, cookie, ETAG], None), [Rule::UserSpecificPublic]);
        let smax = ("cache-control", "max-age=0, s-maxage=60");
        assert_eq!(run("https://s.test/api/me", &[JSON, smax, cookie, ETAG], None), [Rule::UserSpecificPublic]);
        assert_eq!(run_with("https://s.test/api/me", &[JSON, public, ETAG], None, true), [Rule::UserSpecificPublic]);
        assert_eq!(
            run("https://s.test/api/me", &[JSON, ("cache-control", "private, max-age=60"), cookie, ETAG], None),
            []
        );
    }

    #[test]
    fn no_cache_is_not_no_store_for_private_data() {
        let cc = ("cache-control", "private, no-cache");
        assert_eq!(run("https://s.test/api/me", &[JSON, cc, ETAG], None), [Rule::NoCacheForSensitive]);
        assert_eq!(
            run_with("https://s.test/api/me", &[JSON, ("cache-control", "no-cache"), ETAG], None, true),
            [Rule::NoCacheForSensitive]
        );
        assert_eq!(run("https://s.test/api/me", &[JSON, ("cache-control", "private, no-store")], None), []);
    }

    #[test]
    fn vary_cookie_and_user_agent_on_shared_responses() {
        let cc = ("cache-control", "max-age=60");
        assert_eq!(
            run("https://s.test/api/x", &[JSON, cc, ETAG, ("vary", "Accept-Encoding, Cookie")], None),
            [Rule::VaryCookie]
        );
        assert_eq!(run("https://s.test/api/x", &[JSON, cc, ETAG, ("vary", "User-Agent")], None), [Rule::VaryUserAgent]);
        let private = ("cache-control", "private, max-age=60");
        assert_eq!(run("https://s.test/api/x", &[JSON, private, ETAG, ("vary", "Cookie")], None), []);
    }

    #[test]
    fn targeted_fields_agree_with_cache_control() {
        let cc = ("cache-control", "no-cache");
        assert_eq!(run("https://s.test/", &[HTML, cc, ETAG, ("cdn-cache-control", "max-age=600")], None), []);
        assert_eq!(
            run("https://s.test/", &[HTML, cc, ETAG, ("cdn-cache-control", "max-age=600 garbage")], None),
            [Rule::TargetedInvalid]
        );
        let both = [HTML, cc, ETAG, ("cdn-cache-control", "max-age=600"), ("surrogate-control", "max-age=60")];
        assert_eq!(run("https://s.test/", &both, None), [Rule::TargetedConflict]);
        let private = [JSON, ("cache-control", "private, no-store"), ("cdn-cache-control", "max-age=600")];
        assert_eq!(run("https://s.test/api/me", &private, None), [Rule::TargetedSharesPrivate]);
    }

    #[test]
    fn api_json_cached_long_in_browsers() {
        let cc = ("cache-control", "public, max-age=3600");
        assert_eq!(run("https://s.test/api/products", &[JSON, cc, ETAG], None), [Rule::ApiCachedTooLong]);
        let ok = ("cache-control", "public, max-age=60, s-maxage=3600");
        assert_eq!(run("https://s.test/api/products", &[JSON, ok, ETAG], None), []);
    }

    #[test]
    fn fingerprints_are_recognised_in_file_names_and_directories() {
        for yes in [
            "/static/js/app.a7f3c9b1.bundle.js",
            "/assets/index-BdkQ3tHW.js",
            "/static/5f3c2a1b9e7d/app.js",
            "/_next/static/chunks/main-3a0b1c2d3e4f5a6b.js",
        ] {
            assert!(fingerprinted(&format!("https://s.test{yes}").parse().unwrap()), "{yes}");
        }
        for no in [
            "/js/app.js",
            "/js/jquery-3.7.1.min.js",
            "/css/bootstrap5.css",
            "/img/20240101.png",
            "/js/app.js?v=a7f3c9b1",
            "/fonts/Inter-Regular.woff2",
        ] {
            assert!(!fingerprinted(&format!("https://s.test{no}").parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn classes_follow_reference_content_type_and_name() {
        let url: Uri = "https://s.test/manifest.json".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(classify(&url, &h, Some(Referenced::Manifest)), Class::UnfingerprintedAsset);
        assert_eq!(classify(&url, &h, None), Class::ApiJson);
        assert_eq!(classify(&"https://s.test/service-worker.js".parse().unwrap(), &h, None), Class::ServiceWorker);
    }
}
