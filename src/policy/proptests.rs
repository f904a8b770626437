//! The header parsers never panic, whatever bytes a client or origin sends.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;

fn header_map(name: &'static str, values: &[Vec<u8>]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(HeaderName::from_static(name), v);
        }
    }
    h
}

fn field_bytes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let chunk =
        prop_oneof![prop::collection::vec(any::<u8>(), 0..64), "[a-z=\",;*/ 0-9-]{0,40}".prop_map(String::into_bytes),];
    prop::collection::vec(chunk, 0..4)
}

proptest! {
    #[test]
    fn cache_control_never_panics(v in field_bytes()) {
        let _ = cache_control::CacheControl::from_headers(&header_map("cache-control", &v));
    }

    #[test]
    fn cdn_cache_control_never_panics(v in field_bytes()) {
        let name = HeaderName::from_static("cdn-cache-control");
        let _ = cache_control::parse_cdn_cache_control(&header_map("cdn-cache-control", &v), &name);
    }

    #[test]
    fn surrogate_control_never_panics(v in field_bytes()) {
        let _ = cache_control::parse_surrogate_control(&header_map("surrogate-control", &v), "fresco");
    }

    #[test]
    fn vary_never_panics(v in field_bytes(), req in field_bytes()) {
        let resp = header_map("vary", &v);
        if let Some(names) = vary::vary_names(&resp) {
            let key = vary::VaryKey::for_request(&names, &header_map("accept", &req));
            let _ = key.matches(&header_map("accept", &req));
        }
    }

    #[test]
    fn age_and_dates_never_panic(v in field_bytes(), s in "\\PC{0,40}") {
        let _ = age::age_value(&header_map("age", &v));
        let _ = age::parse_http_date(&s);
        let h = header_map("date", &v);
        let _ = age::corrected_initial_age(&h, std::time::SystemTime::UNIX_EPOCH, std::time::SystemTime::now());
    }

    #[test]
    fn response_analysis_never_panics(cc in field_bytes(), exp in field_bytes(), lm in field_bytes()) {
        let mut h = header_map("cache-control", &cc);
        h.extend(header_map("expires", &exp));
        h.extend(header_map("last-modified", &lm));
        let now = std::time::SystemTime::now();
        let p = response::ResponsePolicy::new(http::StatusCode::OK, &h, now, now, &response::PolicyConfig::default());
        let _ = p.ttl(now);
    }

    #[test]
    fn conditionals_never_panic(inm in field_bytes(), ims in field_bytes(), etag in field_bytes()) {
        let mut req = header_map("if-none-match", &inm);
        req.extend(header_map("if-modified-since", &ims));
        let stored = header_map("etag", &etag);
        let _ = conditional::not_modified(&req, &stored, std::time::SystemTime::now());
        let _ = conditional::not_modified_applies(&stored, &req);
    }
}

proptest! {
    #[test]
    fn cache_keys_and_prefix_walks_never_panic(host in "\\PC{0,30}", path in "\\PC{0,80}") {
        let key = crate::key::KeyPolicy { sort_query: true, ..Default::default() }.key("http", &host, &path, &HeaderMap::new());
        let _ = crate::invalidation::selectors::path_prefixes(&key.url).count();
        let _ = crate::invalidation::selectors::path_prefixes(&path).count();
    }

    #[test]
    fn range_and_tags_never_panic(range in field_bytes(), tags in field_bytes(), len in 0u64..1_000_000) {
        let _ = range::evaluate(&header_map("range", &range), &HeaderMap::new(), len);
        let _ = tags::tags(&header_map("cache-groups", &tags));
        let _ = tags::tags(&header_map("surrogate-key", &tags));
    }

    #[test]
    fn api_requests_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), json in "\\{\"(urls|tags|prefixes)\":\\[\"\\PC{0,40}\"\\]\\}") {
        let keys = crate::key::KeyPolicy::default();
        let _ = crate::invalidation::service::parse(&body, &keys);
        let _ = crate::invalidation::service::parse(json.as_bytes(), &keys);
    }
}
