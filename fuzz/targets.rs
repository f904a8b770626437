//! The fuzz targets' bodies: one function per parser of untrusted input,
//! each asserting what must hold for any input (no panic, and the
//! invariants noted). Shared by the cargo-fuzz targets (fuzz_targets/) and
//! by the regression replay in the end-to-end tests, which runs every input
//! kept in fuzz/regressions/TARGET/ on stable Rust in CI.

use std::time::{Duration, UNIX_EPOCH};

use fresco::config::{Config, RawConfig};
use fresco::invalidation::service;
use fresco::key::KeyPolicy;
use fresco::policy::{age, cache_control, conditional, range, tags, vary};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A target: any bytes in, a panic if something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target by name, as the regression directories are named.
pub const TARGETS: [(&str, Target); 9] = [
    ("cache_control", cache_control),
    ("targeted_fields", targeted_fields),
    ("vary", vary_fields),
    ("tag_headers", tag_headers),
    ("http_date", http_date),
    ("range", byte_range),
    ("conditional", conditional_fields),
    ("admin_api", admin_api),
    ("config", config),
];

/// Header fields from `name: value` lines; lines that are not valid
/// fields are skipped, as hyper would refuse them.
fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value.trim_ascii())) {
            map.append(n, v);
        }
    }
    map
}

/// One field value from the whole input.
fn field(name: &'static str, data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        map.insert(HeaderName::from_static(name), v);
    }
    map
}

/// `Cache-Control` (RFC 9111 §5.2): any text parses to some directives.
pub fn cache_control(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let cc = cache_control::CacheControl::parse(text);
        let _ = cc.is_empty();
        for (name, arg) in cache_control::directives(text) {
            assert_eq!(name, name.to_ascii_lowercase(), "directive names are lower-cased");
            let _ = arg.map(|a| cache_control::unquote(&a));
        }
    }
    let _ = cache_control::CacheControl::from_headers(&headers(data));
}

/// `CDN-Cache-Control` (RFC 9213, a structured-field dictionary) and
/// `Surrogate-Control`.
pub fn targeted_fields(data: &[u8]) {
    let name = HeaderName::from_static("cdn-cache-control");
    let _ = cache_control::parse_cdn_cache_control(&field("cdn-cache-control", data), &name);
    let _ = cache_control::parse_surrogate_control(&field("surrogate-control", data), "fresco");
    let many = headers(data);
    let _ = cache_control::parse_cdn_cache_control(&many, &name);
    let _ = cache_control::parse_surrogate_control(&many, "fresco");
}

/// `Vary` (RFC 9111 §4.1): the names it yields select a key that the
/// same request always matches.
pub fn vary_fields(data: &[u8]) {
    let map = headers(data);
    let _ = vary::is_star(&map);
    if let Some(names) = vary::vary_names(&map) {
        for n in &names {
            let _ = vary::normalised(&map, n);
        }
        let key = vary::VaryKey::for_request(&names, &map);
        assert!(key.matches(&map), "a request matches the key made from it");
    }
}

/// `Surrogate-Key`, `Cache-Tag` and `Cache-Groups` (RFC 9875, a
/// structured-field list): tags stay within their bounds.
pub fn tag_headers(data: &[u8]) {
    let map = headers(data);
    let found = tags::tags(&map);
    assert!(found.len() <= tags::MAX_TAGS);
    assert!(found.iter().all(|t| !t.is_empty() && t.len() <= tags::MAX_TAG_LEN));
    let _ = tags::cache_groups(&map, "cache-groups");
    let _ = tags::cache_groups(&field("cache-group-invalidation", data), "cache-group-invalidation");
}

/// HTTP-date (RFC 9110 §5.6.7): whatever parses formats back to a date
/// that parses to the same instant.
pub fn http_date(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(t) = age::parse_http_date(text) {
        assert_eq!(age::parse_http_date(&age::format_http_date(t)), Some(t), "{text:?}");
    }
    let map = headers(data);
    let _ = age::age_value(&map);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = age::corrected_initial_age(&map, now, now);
}

/// `Range` and `If-Range` (RFC 9110 §14): a partial answer lies within
/// the stored body.
pub fn byte_range(data: &[u8]) {
    let (len, rest) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len) % (1 << 40), rest),
        None => (0, data),
    };
    let (request, stored) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (headers(&rest[..i]), headers(&rest[i + 1..])),
        None => (headers(rest), HeaderMap::new()),
    };
    if let range::RangeReply::Partial { start, end } = range::evaluate(&request, &stored, len) {
        assert!(start <= end && end < len, "{start}-{end} of {len}");
    }
}

/// Entity tags and conditional fields (RFC 9110 §13).
pub fn conditional_fields(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = conditional::parse_etag(text);
    }
    let (request, stored) = match data.iter().position(|b| *b == 0) {
        Some(i) => (headers(&data[..i]), headers(&data[i + 1..])),
        None => (headers(data), HeaderMap::new()),
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let _ = conditional::not_modified(&request, &stored, now);
    let _ = conditional::validation_headers(&stored);
    let _ = conditional::not_modified_applies(&stored, &request);
    let _ = conditional::head_matches(&stored, &request);
}

/// The admin API's bodies: `POST /api/v1/invalidations` and the
/// invalidation-events resource. Accepted selectors are normalised.
pub fn admin_api(data: &[u8]) {
    let keys = KeyPolicy::default();
    if let Ok((_, selectors)) = service::parse(data, &keys) {
        assert!(!selectors.is_empty() && selectors.len() <= service::MAX_SELECTORS);
    }
    if let Ok(event) = serde_json::from_slice::<service::Event>(data) {
        let _ = service::event_selectors(&event, &keys);
    }
}

/// The configuration file: any text is a configuration or an error, never
/// a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = toml::from_str::<RawConfig>(text) {
        let _ = Config::from_raw(raw);
    }
}
