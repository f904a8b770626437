//! Invalidation tags an origin attaches to a response: `Surrogate-Key`
//! (space-separated), `Cache-Tag` (comma-separated) and `Cache-Groups`
//! (RFC 9875, a structured-field list of strings).

use http::HeaderMap;

/// Header fields that carry tags; removed from client responses unless the
/// operator keeps them.
pub const TAG_FIELDS: [&str; 3] = ["surrogate-key", "cache-tag", "cache-groups"];

/// Longest tag kept; longer ones are ignored rather than stored.
pub const MAX_TAG_LEN: usize = 256;
/// Most tags kept per object.
pub const MAX_TAGS: usize = 128;

/// The tags of a response, deduplicated, in first-seen order.
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |t: &str| {
        let t = t.trim();
        if !t.is_empty() && t.len() <= MAX_TAG_LEN && out.len() < MAX_TAGS && !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    };
    for v in headers.get_all("surrogate-key").iter().filter_map(|v| v.to_str().ok()) {
        v.split_ascii_whitespace().for_each(&mut add);
    }
    for v in headers.get_all("cache-tag").iter().filter_map(|v| v.to_str().ok()) {
        v.split(',').for_each(&mut add);
    }
    for group in cache_groups(headers, "cache-groups") {
        add(&group);
    }
    out
}

/// A structured-field list of strings (RFC 9875 §2): `Cache-Groups` and
/// `Cache-Group-Invalidation`. A field that does not parse is ignored as a
/// whole (RFC 9651 §4.2); members that are not strings are skipped.
pub fn cache_groups(headers: &HeaderMap, name: &str) -> Vec<String> {
    let mut joined = String::new();
    for v in headers.get_all(name) {
        let Ok(text) = v.to_str() else {
            return Vec::new();
        };
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(text);
    }
    let mut parser = sfparse::Parser::new(joined.as_bytes());
    let mut groups = Vec::new();
    loop {
        match parser.parse_list() {
            Ok(None) => return groups,
            Ok(Some(sfparse::Value::String { range, escape })) => {
                let raw = &joined[range];
                groups.push(if escape { raw.replace("\\\"", "\"").replace("\\\\", "\\") } else { raw.to_string() });
            }
            Ok(Some(_)) => {}
            Err(_) => return Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    #[test]
    fn tags_from_all_three_fields() {
        let h = headers(&[
            ("surrogate-key", "product-1  category-9"),
            ("cache-tag", "product-1, home"),
            ("cache-groups", "\"g1\", \"g 2\""),
        ]);
        assert_eq!(tags(&h), vec!["product-1", "category-9", "home", "g1", "g 2"]);
    }

    #[test]
    fn rfc9875_invalid_cache_groups_is_ignored_whole() {
        assert!(cache_groups(&headers(&[("cache-groups", "\"a\", \"b")]), "cache-groups").is_empty());
        assert_eq!(cache_groups(&headers(&[("cache-groups", "\"a\", tok, 1")]), "cache-groups"), vec!["a"]);
    }
}
