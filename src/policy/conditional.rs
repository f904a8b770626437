//! Validation (RFC 9111 §4.3): answering a client's conditional request from
//! a stored response, building our own conditional request to upstream, and
//! updating stored header fields from a 304 or a HEAD response.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, ETAG, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};

use super::age;
use super::headers::is_hop_by_hop;

/// An entity tag (RFC 9110 §8.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    pub opaque: &'a str,
}

/// Parses one entity-tag; `None` when malformed.
pub fn parse_etag(text: &str) -> Option<EntityTag<'_>> {
    let text = text.trim();
    let (weak, rest) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
    if opaque.contains('"') {
        return None;
    }
    Some(EntityTag { weak, opaque })
}

/// Parses an If-None-Match list. `None` for `*`.
fn etag_list(text: &str) -> Option<Vec<EntityTag<'_>>> {
    if text.trim() == "*" {
        return None;
    }
    Some(text.split(',').filter_map(parse_etag).collect())
}

/// RFC 9110 §13.1.2: If-None-Match uses weak comparison.
fn weak_match(a: &EntityTag<'_>, b: &EntityTag<'_>) -> bool {
    a.opaque == b.opaque
}

/// The time a stored response counts as last modified for If-Modified-Since
/// (§4.3.2): Last-Modified, else Date, else when it was received.
fn last_modified(stored: &HeaderMap, response_time: SystemTime) -> SystemTime {
    match age::single_date(stored, &LAST_MODIFIED) {
        Some(Ok(t)) => t,
        _ => age::date_value(stored, response_time),
    }
}

/// §4.3.2: does the client's conditional GET/HEAD match the stored
/// response, so that a 304 answers it? If-None-Match wins over
/// If-Modified-Since when both are present (RFC 9110 §13.2.2).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap, response_time: SystemTime) -> bool {
    let inm: Vec<&HeaderValue> = request.get_all(IF_NONE_MATCH).iter().collect();
    if !inm.is_empty() {
        let Some(stored_tag) = stored.get(ETAG).and_then(|v| v.to_str().ok()).and_then(parse_etag) else {
            // `*` matches any current representation.
            return inm.iter().any(|v| v.to_str().is_ok_and(|t| t.trim() == "*"));
        };
        return inm.iter().filter_map(|v| v.to_str().ok()).any(|line| match etag_list(line) {
            None => true,
            Some(tags) => tags.iter().any(|t| weak_match(t, &stored_tag)),
        });
    }
    match age::single_date(request, &IF_MODIFIED_SINCE) {
        Some(Ok(since)) => last_modified(stored, response_time) <= since,
        _ => false,
    }
}

/// The client's own conditionals, which are removed when Fresco fetches a
/// full response to store and then evaluates them itself.
pub const CLIENT_CONDITIONALS: [HeaderName; 2] = [IF_NONE_MATCH, IF_MODIFIED_SINCE];

/// §4.3.1: the validators to send upstream to revalidate `stored`.
pub fn validation_headers(stored: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(ETAG) {
        out.push((IF_NONE_MATCH, etag.clone()));
    }
    if let Some(lm) = stored.get(LAST_MODIFIED) {
        out.push((IF_MODIFIED_SINCE, lm.clone()));
    }
    out
}

/// True when the stored response has a validator to revalidate with.
pub fn has_validator(stored: &HeaderMap) -> bool {
    stored.contains_key(ETAG) || stored.contains_key(LAST_MODIFIED)
}

/// §4.3.4: may this 304 update the stored response we validated?
pub fn not_modified_applies(stored: &HeaderMap, response: &HeaderMap) -> bool {
    let new_tag = response.get(ETAG).and_then(|v| v.to_str().ok()).and_then(parse_etag);
    let old_tag = stored.get(ETAG).and_then(|v| v.to_str().ok()).and_then(parse_etag);
    match (new_tag, old_tag) {
        (Some(new), Some(old)) if !new.weak => !old.weak && new.opaque == old.opaque,
        (Some(new), Some(old)) => new.opaque == old.opaque,
        (Some(_), None) => false,
        (None, _) => match (response.get(LAST_MODIFIED), stored.get(LAST_MODIFIED)) {
            (Some(a), Some(b)) => same_date(a, b),
            (Some(_), None) => false,
            // No validator in the 304: it updates the one response we asked about.
            (None, _) => true,
        },
    }
}

/// §4.3.5: does a 200 response to HEAD describe the stored GET response?
/// If not, the stored response should be considered stale.
pub fn head_matches(stored: &HeaderMap, head: &HeaderMap) -> bool {
    let same = |name: &HeaderName| match head.get(name) {
        Some(v) => stored.get(name) == Some(v),
        None => true,
    };
    let same_lm = match head.get(LAST_MODIFIED) {
        Some(v) => stored.get(LAST_MODIFIED).is_some_and(|s| same_date(s, v)),
        None => true,
    };
    same(&ETAG) && same_lm && same(&CONTENT_LENGTH)
}

/// Two Last-Modified values name the same instant, however each is written
/// (RFC 9110 §5.6.7 lets a sender use an obsolete form).
fn same_date(a: &HeaderValue, b: &HeaderValue) -> bool {
    let parse = |v: &HeaderValue| v.to_str().ok().and_then(age::parse_http_date);
    a == b || parse(a).is_some_and(|t| parse(b) == Some(t))
}

/// True when `head` carries a validator (a strong ETag, or Last-Modified)
/// equal to the stored one: proof that it describes the stored content.
pub fn validator_matches(stored: &HeaderMap, head: &HeaderMap) -> bool {
    fn strong_tag(h: &HeaderMap) -> Option<EntityTag<'_>> {
        h.get(ETAG).and_then(|v| v.to_str().ok()).and_then(parse_etag).filter(|t| !t.weak)
    }
    match (strong_tag(stored), strong_tag(head)) {
        (Some(a), Some(b)) => a.opaque == b.opaque,
        _ => head.get(LAST_MODIFIED).is_some_and(|lm| stored.get(LAST_MODIFIED).is_some_and(|s| same_date(s, lm))),
    }
}

/// §3.2: update stored header fields from a 304 or HEAD response. Every
/// field in `update` replaces the stored one, except hop-by-hop fields,
/// Content-Length (the stored content is unchanged), and fields the cache
/// computes itself.
pub fn freshen(stored: &mut HeaderMap, update: &HeaderMap) {
    let mut replaced: Vec<HeaderName> = Vec::new();
    for (name, value) in update {
        if is_hop_by_hop(name, update) || *name == CONTENT_LENGTH || name.as_str() == "cache-status" {
            continue;
        }
        if !replaced.contains(name) {
            stored.remove(name);
            replaced.push(name.clone());
        }
        stored.append(name.clone(), value.clone());
    }
    // The stored Age described the old response; the new one carries its own.
    if !update.contains_key(http::header::AGE) {
        stored.remove(http::header::AGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_validator_match_needs_a_validator() {
        let stored = headers(&[("etag", "\"v1\""), ("content-length", "2")]);
        assert!(validator_matches(&stored, &headers(&[("etag", "\"v1\"")])));
        assert!(!validator_matches(&stored, &headers(&[("etag", "\"v2\"")])));
        assert!(!validator_matches(&stored, &headers(&[("content-length", "2")])), "a length proves nothing");
        let lm = headers(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]);
        assert!(validator_matches(&lm, &lm));
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_is_weak_comparison() {
        let stored = headers(&[("etag", "W/\"v1\"")]);
        assert!(not_modified(&headers(&[("if-none-match", "\"v1\"")]), &stored, at(0)));
        assert!(not_modified(&headers(&[("if-none-match", "\"x\", W/\"v1\"")]), &stored, at(0)));
        assert!(!not_modified(&headers(&[("if-none-match", "\"v2\"")]), &stored, at(0)));
    }

    #[test]
    fn rfc9110_13_1_2_star_matches_any_stored_response() {
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &HeaderMap::new(), at(0)));
    }

    #[test]
    fn rfc9111_4_3_2_if_modified_since_uses_last_modified_then_date() {
        let lm = age::format_http_date(at(100));
        let stored = headers(&[("last-modified", &lm)]);
        assert!(not_modified(&headers(&[("if-modified-since", &lm)]), &stored, at(500)));
        let earlier = age::format_http_date(at(99));
        assert!(!not_modified(&headers(&[("if-modified-since", &earlier)]), &stored, at(500)));
        let stored = headers(&[("date", &age::format_http_date(at(200)))]);
        assert!(not_modified(&headers(&[("if-modified-since", &age::format_http_date(at(200)))]), &stored, at(500)));
    }

    /// RFC 9111 §4.3.2 with RFC 9110 §13.2.2: every combination of the
    /// client's validators (none, If-None-Match matching or not, `*`,
    /// If-Modified-Since before, at or after the stored time, invalid, both)
    /// against every kind of stored response (ETag and Last-Modified, ETag
    /// only, Last-Modified only, Date only).
    #[test]
    fn rfc9111_4_3_2_every_combination_of_validators() {
        let (t, before, after) =
            (age::format_http_date(at(1_000)), age::format_http_date(at(999)), age::format_http_date(at(1_001)));
        let date = age::format_http_date(at(1_000));
        let stored_kinds: [(&str, HeaderMap); 4] = [
            ("etag+lm", headers(&[("etag", "\"a\""), ("last-modified", &t), ("date", &date)])),
            ("etag", headers(&[("etag", "\"a\""), ("date", &date)])),
            ("lm", headers(&[("last-modified", &t), ("date", &date)])),
            ("date", headers(&[("date", &date)])),
        ];
        // The request's fields, and whether each stored kind above answers 304.
        type Case<'a> = (Vec<(&'a str, &'a str)>, [bool; 4]);
        let cases: Vec<Case> = vec![
            (vec![], [false; 4]),
            (vec![("if-none-match", "\"a\"")], [true, true, false, false]),
            (vec![("if-none-match", "W/\"a\"")], [true, true, false, false]),
            (vec![("if-none-match", "\"b\"")], [false; 4]),
            (vec![("if-none-match", "*")], [true; 4]),
            (vec![("if-modified-since", &t)], [true; 4]),
            (vec![("if-modified-since", &after)], [true; 4]),
            (vec![("if-modified-since", &before)], [false; 4]),
            (vec![("if-modified-since", "not a date")], [false; 4]),
            (vec![("if-modified-since", "tue, 14 nov 2023 22:30:00 gmt")], [true; 4]),
            // If-None-Match decides; If-Modified-Since is ignored.
            (vec![("if-none-match", "\"b\""), ("if-modified-since", &after)], [false; 4]),
            (vec![("if-none-match", "\"a\""), ("if-modified-since", &before)], [true, true, false, false]),
        ];
        for (request, want) in &cases {
            for ((kind, stored), want) in stored_kinds.iter().zip(want) {
                assert_eq!(not_modified(&headers(request), stored, at(5_000)), *want, "{request:?} against {kind}");
            }
        }
    }

    /// RFC 9111 §4.3.4: a 304 with only Last-Modified updates the response
    /// with the same one, however the date is written.
    #[test]
    fn rfc9111_4_3_4_last_modified_only_updates_the_same_time() {
        let stored = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified_applies(&stored, &headers(&[("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")])));
        assert!(!not_modified_applies(&stored, &headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:38 GMT")])));
        assert!(!not_modified_applies(&headers(&[]), &headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")])));
        assert!(head_matches(&stored, &headers(&[("last-modified", "Sun Nov  6 08:49:37 1994")])));
    }

    #[test]
    fn rfc9110_13_2_2_if_none_match_takes_precedence() {
        let lm = age::format_http_date(at(100));
        let stored = headers(&[("last-modified", &lm), ("etag", "\"a\"")]);
        let req = headers(&[("if-modified-since", &lm), ("if-none-match", "\"b\"")]);
        assert!(!not_modified(&req, &stored, at(0)));
    }

    #[test]
    fn rfc9111_4_3_2_invalid_if_modified_since_is_ignored() {
        assert!(!not_modified(&headers(&[("if-modified-since", "yesterday")]), &HeaderMap::new(), at(0)));
    }

    #[test]
    fn rfc9111_4_3_4_strong_validator_must_match_to_update() {
        let stored = headers(&[("etag", "\"a\"")]);
        assert!(not_modified_applies(&stored, &headers(&[("etag", "\"a\"")])));
        assert!(!not_modified_applies(&stored, &headers(&[("etag", "\"b\"")])));
        assert!(not_modified_applies(&stored, &HeaderMap::new()));
    }

    #[test]
    fn rfc9111_3_2_freshen_replaces_fields_but_not_content_length() {
        let mut stored =
            headers(&[("cache-control", "max-age=1"), ("content-length", "5"), ("x-a", "old"), ("age", "50")]);
        let update = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-a", "new"),
            ("connection", "close"),
        ]);
        freshen(&mut stored, &update);
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["x-a"], "new");
        assert!(!stored.contains_key("connection"));
        assert!(!stored.contains_key("age"));
    }

    #[test]
    fn rfc9111_4_3_5_head_with_different_validator_does_not_match() {
        let stored = headers(&[("etag", "\"a\""), ("content-length", "10")]);
        assert!(head_matches(&stored, &headers(&[("etag", "\"a\""), ("content-length", "10")])));
        assert!(!head_matches(&stored, &headers(&[("etag", "\"b\"")])));
        assert!(!head_matches(&stored, &headers(&[("content-length", "11")])));
    }
}
