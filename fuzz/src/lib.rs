//! The bodies of the fuzz targets: one function per parser of untrusted
//! input, each taking raw bytes. `cargo fuzz` drives them through
//! `fuzz_targets/*.rs`; `tests/fuzz_corpus.rs` of the main crate runs them
//! over every input kept in `fuzz/corpus/<target>/` on every `cargo test`,
//! so an input that once crashed stays a regression test.
//!
//! Besides "never panics", each body asserts the property a user relies on
//! where one is cheap to state (a range lies inside the body, a request
//! selects its own variant, a date round-trips, a key is stable).

use std::time::{Duration, SystemTime};

use fresco::policy::{age, cache_control, conditional, headers, range, request, response, tags, vary};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A target's body: raw bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("cache_control", cache_control),
    ("targeted_fields", targeted_fields),
    ("vary", vary),
    ("tags", tags),
    ("http_date", http_date),
    ("range", range),
    ("response_headers", response_headers),
    ("admin_api", admin_api),
    ("config", config),
    ("cache_key", cache_key),
];

/// `data` split on newlines into field lines of `name` (several lines of one
/// field, as a client or origin may send them); lines that are not valid
/// field values are dropped, as hyper would have refused them.
fn field_lines(name: &'static str, data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            h.append(HeaderName::from_static(name), v);
        }
    }
    h
}

/// `data` as a header block, `name: value` per line.
fn header_block(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Cache-Control (RFC 9111 §5.2), as request and response directives.
pub fn cache_control(data: &[u8]) {
    let h = field_lines("cache-control", data);
    let cc = cache_control::CacheControl::from_headers(&h);
    // One field line means the same as its text parsed alone.
    if h.get_all("cache-control").iter().count() == 1
        && let Ok(text) = h["cache-control"].to_str()
    {
        assert_eq!(cache_control::CacheControl::parse(text), cc, "{text:?}");
    }
    let rd = request::RequestDirectives::from_headers(&h);
    let _ = rd.no_cache();
    let now = at(1_700_000_000);
    let p = response::ResponsePolicy::new(StatusCode::OK, &h, now, now, &response::PolicyConfig::default());
    let _ = (p.ttl(now), p.staleness(now + Duration::from_secs(3600)), p.forbids_stale());
}

/// CDN-Cache-Control (RFC 9213, a structured dictionary) and
/// Surrogate-Control (Edge Architecture 1.0, with `;device` targets).
pub fn targeted_fields(data: &[u8]) {
    let cdn = HeaderName::from_static("cdn-cache-control");
    let _ = cache_control::parse_cdn_cache_control(&field_lines("cdn-cache-control", data), &cdn);
    let _ = cache_control::parse_surrogate_control(&field_lines("surrogate-control", data), "fresco");
}

/// Vary (RFC 9111 §4.1): the names, and the secondary key of a request
/// whose fields hold the same bytes.
pub fn vary(data: &[u8]) {
    let h = field_lines("vary", data);
    let _ = vary::is_star(&h);
    let Some(names) = vary::vary_names(&h) else { return };
    let mut req = HeaderMap::new();
    for name in &names {
        for line in data.split(|b| *b == b'\n') {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                req.append(name.clone(), v);
            }
        }
    }
    let key = vary::VaryKey::for_request(&names, &req);
    assert!(key.matches(&req), "a request selects the variant stored for it");
}

/// Surrogate-Key, Cache-Tag and Cache-Groups (RFC 9875, structured list).
pub fn tags(data: &[u8]) {
    let mut h = field_lines("surrogate-key", data);
    h.extend(field_lines("cache-tag", data));
    h.extend(field_lines("cache-groups", data));
    let got = tags::tags(&h);
    assert!(got.len() <= tags::MAX_TAGS);
    for (i, t) in got.iter().enumerate() {
        assert!(!t.is_empty() && t.len() <= tags::MAX_TAG_LEN, "{t:?}");
        assert!(!got[..i].contains(t), "duplicate tag {t:?}");
    }
    let _ = tags::cache_groups(&field_lines("cache-group-invalidation", data), "cache-group-invalidation");
}

/// HTTP-dates (RFC 9110 §5.6.7) and the Age / Date arithmetic of §4.2.3.
pub fn http_date(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = age::parse_http_date(&text) {
        assert_eq!(age::parse_http_date(&age::format_http_date(t)), Some(t), "{text:?}");
    }
    let _ = age::age_value(&field_lines("age", data));
    let mut h = field_lines("date", data);
    h.extend(field_lines("age", data));
    let _ = age::single_date(&h, &http::header::DATE);
    let _ = age::corrected_initial_age(&h, at(0), at(1_700_000_000));
    let _ = age::corrected_initial_age(&h, at(1_700_000_000), at(0));
    let mut conditional_request = field_lines("if-modified-since", data);
    conditional_request.extend(field_lines("if-none-match", data));
    let stored = header_block(b"etag: \"a\"\nlast-modified: Sun, 01 Nov 2026 00:00:00 GMT");
    let _ = conditional::not_modified(&conditional_request, &stored, at(1_700_000_000));
}

/// Range and If-Range (RFC 9110 §14) against a stored body whose length
/// comes from the first 8 bytes.
pub fn range(data: &[u8]) {
    let (len, rest) = match data.split_first_chunk::<8>() {
        Some((l, rest)) => (u64::from_le_bytes(*l) % (1 << 40), rest),
        None => (10, data),
    };
    let (if_range, ranges) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let mut req = field_lines("range", ranges);
    if let Ok(v) = HeaderValue::from_bytes(if_range) {
        req.insert(http::header::IF_RANGE, v);
    }
    let stored = header_block(b"etag: \"a\"\nlast-modified: Sun, 01 Nov 2026 00:00:00 GMT");
    if let range::RangeReply::Partial { start, end } = range::evaluate(&req, &stored, len) {
        assert!(start <= end && end < len, "{start}..={end} of {len}");
    }
}

/// A whole response head from an origin: storability, freshness, fields
/// kept and removed, validation, freshening, §4.4 invalidation targets.
pub fn response_headers(data: &[u8]) {
    let (status, block) = match data.split_first_chunk::<2>() {
        Some((s, rest)) => (StatusCode::from_u16(100 + u16::from_le_bytes(*s) % 500).unwrap_or(StatusCode::OK), rest),
        None => (StatusCode::OK, data),
    };
    let h = header_block(block);
    let cfg = response::PolicyConfig::default();
    let (sent, received) = (at(1_700_000_000), at(1_700_000_001));
    let policy = response::ResponsePolicy::new(status, &h, sent, received, &cfg);
    let rd = request::RequestDirectives::from_headers(&h);
    let _ = response::admit(&rd, &h, status, &h, &policy, &cfg);
    let _ = (policy.ttl(received), policy.shareable_with_authorization(), policy.forbids_stale());
    let mut stored = h.clone();
    headers::remove_hop_by_hop(&mut stored);
    let _ = conditional::not_modified(&h, &stored, received);
    let _ = conditional::not_modified_applies(&stored, &h);
    let _ = conditional::head_matches(&stored, &h);
    let _ = conditional::validation_headers(&stored);
    conditional::freshen(&mut stored, &h);
    let target: http::Uri = "http://shop.example/a/b?c".parse().unwrap();
    let _ = headers::unsafe_invalidation_targets(&http::Method::POST, status, &target, &h);
}

/// The bodies of `POST /api/v1/invalidations` and
/// `POST /api/v1/invalidation-events`.
pub fn admin_api(data: &[u8]) {
    use fresco::invalidation::selectors::Selector;
    use fresco::invalidation::service;
    for keys in [fresco::key::KeyPolicy::default(), fresco::key::KeyPolicy { sort_query: true, ..Default::default() }] {
        if let Ok((_, selectors)) = service::parse(data, &keys) {
            assert!(!selectors.is_empty() && selectors.len() <= service::MAX_SELECTORS);
            for s in &selectors {
                if let Selector::Tag(t) = s {
                    assert!(!t.is_empty() && t.len() <= tags::MAX_TAG_LEN, "{t:?}");
                }
            }
        }
        if let Ok(event) = serde_json::from_slice::<service::Event>(data) {
            let _ = service::event_selectors(&event, &keys);
        }
    }
}

/// The configuration file (TOML → validated `Config`).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(raw) = toml::from_str::<fresco::config::RawConfig>(text) {
        let _ = fresco::config::Config::from_raw(raw);
    }
    let _ = fresco::config::parse_size(text);
    let _ = fresco::config::parse_duration(text);
}

/// A request's Host and target → cache key (RFC 3986 §6.2.2, RFC 9112 §3.2):
/// the key of the key's own host and path is the same key, so what Fresco
/// forwards names what it stores, and a purge of the stored URL selects it.
/// First line: the Host field; the rest: the request target.
pub fn cache_key(data: &[u8]) {
    let (host, target) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"shop.example"[..], data),
    };
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let Some(pq) = uri.path_and_query().map(|p| p.as_str().to_string()) else { return };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(host) {
        h.insert(http::header::HOST, v);
    }
    let Ok(authority) = fresco::key::request_authority(&uri, &h) else { return };
    if !pq.starts_with('/') {
        return;
    }
    let policies = [
        fresco::key::KeyPolicy::default(),
        fresco::key::KeyPolicy {
            sort_query: true,
            ignore_query_params: vec!["utm_source".into()],
            ..Default::default()
        },
    ];
    for keys in policies {
        let key = keys.key("http", &authority, &pq, &h);
        let again = keys.key("http", key.host(), key.path_and_query(), &h);
        assert_eq!(again.url, key.url, "key of {authority:?} {pq:?} is not stable");
        let _ = fresco::invalidation::selectors::path_prefixes(&key.url).count();
    }
}
