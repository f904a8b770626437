//! Secondary cache keys (RFC 9111 §4.1).
//!
//! A stored response with `Vary` can only answer requests whose listed
//! header fields match those of the request that produced it. Values are
//! normalised first (lines combined, whitespace around list commas removed,
//! case folded for fields whose values are case-insensitive, and the members
//! of the content-negotiation lists put in one order, since their preference
//! is carried by `q` weights, not by order: RFC 9110 §12.4.2), so trivially
//! different requests share one variant.

use http::HeaderMap;
use http::header::{HeaderName, VARY};

/// The request header values a variant was selected by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VaryKey {
    /// (field name, normalised value or None when absent), in Vary order.
    pub fields: Vec<(HeaderName, Option<String>)>,
}

/// True when the response's Vary contains `*`, which never matches (§4.1).
pub fn is_star(response_headers: &HeaderMap) -> bool {
    vary_members(response_headers).any(|m| m == "*")
}

fn vary_members(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(VARY)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
}

/// The field names listed in the response's Vary, lowercased and without
/// duplicates. `None` when Vary lists `*` or an invalid name.
pub fn vary_names(response_headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for member in vary_members(response_headers) {
        if member == "*" {
            return None;
        }
        let name = HeaderName::from_bytes(member.as_bytes()).ok()?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Some(names)
}

/// Fields whose values compare case-insensitively.
fn case_insensitive(name: &HeaderName) -> bool {
    matches!(name.as_str(), "accept" | "accept-encoding" | "accept-language" | "accept-charset" | "origin" | "host")
}

/// Proactive-negotiation fields (RFC 9110 §12.5): lists whose members are
/// weighted by `q`, so their order carries no meaning.
fn weighted_list(name: &HeaderName) -> bool {
    matches!(name.as_str(), "accept" | "accept-encoding" | "accept-language" | "accept-charset")
}

/// The normalised value of `name` in `request`, or None when absent.
pub fn normalised(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let weighted = weighted_list(name);
    let mut out = String::new();
    // Only a weighted list is put in order, so only it needs its members apart.
    let mut members: Vec<String> = Vec::new();
    let mut any = false;
    for value in request.get_all(name) {
        any = true;
        let text = String::from_utf8_lossy(value.as_bytes());
        for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let member = member.split_whitespace().collect::<Vec<_>>().join(" ");
            if weighted {
                // `en; q=0.8` is `en;q=0.8` (OWS around parameters, §5.6.6);
                // every weighted list is case-insensitive.
                let member = member.split(';').map(str::trim).collect::<Vec<_>>().join(";");
                members.push(member.replace(" =", "=").replace("= ", "=").to_ascii_lowercase());
            } else {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&member);
            }
        }
    }
    if !any {
        return None;
    }
    if weighted {
        members.sort();
        members.dedup();
        return Some(members.join(","));
    }
    if case_insensitive(name) {
        out.make_ascii_lowercase();
    }
    Some(out)
}

impl VaryKey {
    /// The key of `request` for a response that varies on `names`.
    pub fn for_request(names: &[HeaderName], request: &HeaderMap) -> VaryKey {
        VaryKey { fields: names.iter().map(|n| (n.clone(), normalised(request, n))).collect() }
    }

    /// §4.1: does `request` select this variant?
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.fields.iter().all(|(name, value)| normalised(request, name) == *value)
    }

    /// Bytes used on the heap, for the memory budget.
    pub fn heap_size(&self) -> usize {
        self.fields.iter().map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, String::len) + 48).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    #[test]
    fn rfc9111_4_1_vary_star_never_matches() {
        assert!(is_star(&headers(&[("vary", "Accept, *")])));
        assert_eq!(vary_names(&headers(&[("vary", "*")])), None);
    }

    #[test]
    fn rfc9111_4_1_names_from_all_lines_deduplicated() {
        let names = vary_names(&headers(&[("vary", "Accept-Encoding, accept"), ("vary", "ACCEPT-ENCODING")])).unwrap();
        assert_eq!(names, vec![HeaderName::from_static("accept-encoding"), HeaderName::from_static("accept")]);
    }

    #[test]
    fn rfc9111_4_1_normalised_whitespace_and_lines_match() {
        let names = [HeaderName::from_static("accept-encoding")];
        let key = VaryKey::for_request(&names, &headers(&[("accept-encoding", "gzip,  br")]));
        assert!(key.matches(&headers(&[("accept-encoding", "GZIP, br")])));
        assert!(key.matches(&headers(&[("accept-encoding", "gzip"), ("accept-encoding", "br")])));
        assert!(key.matches(&headers(&[("accept-encoding", "br, gzip")])), "weighted list: order is no difference");
        assert!(!key.matches(&headers(&[("accept-encoding", "gzip")])));
    }

    /// RFC 9110 §12.5: Accept-* lists weigh their members by `q`, so order
    /// and whitespace around parameters do not make another variant; any
    /// other field keeps its order.
    #[test]
    fn rfc9111_4_1_weighted_lists_match_in_any_order() {
        let names = [HeaderName::from_static("accept-language")];
        let key = VaryKey::for_request(&names, &headers(&[("accept-language", "en-GB, fr;q=0.8, de; q=0.5")]));
        assert!(key.matches(&headers(&[("accept-language", "de;q=0.5, FR ; q=0.8,en-gb")])));
        assert!(key.matches(&headers(&[("accept-language", "fr;q=0.8"), ("accept-language", "en-GB, de;q=0.5")])));
        assert!(!key.matches(&headers(&[("accept-language", "en-GB, fr;q=0.9, de;q=0.5")])), "another weight");
        let names = [HeaderName::from_static("x-list")];
        let key = VaryKey::for_request(&names, &headers(&[("x-list", "a, b")]));
        assert!(!key.matches(&headers(&[("x-list", "b, a")])), "order kept where it may matter");
    }

    #[test]
    fn rfc9111_4_1_absent_field_matches_only_absent() {
        let names = [HeaderName::from_static("x-flag")];
        let key = VaryKey::for_request(&names, &HeaderMap::new());
        assert!(key.matches(&HeaderMap::new()));
        assert!(!key.matches(&headers(&[("x-flag", "")])));
        assert!(!key.matches(&headers(&[("x-flag", "on")])));
    }

    #[test]
    fn rfc9111_4_1_case_sensitive_fields_keep_case() {
        let names = [HeaderName::from_static("x-cohort")];
        let key = VaryKey::for_request(&names, &headers(&[("x-cohort", "A")]));
        assert!(!key.matches(&headers(&[("x-cohort", "a")])));
    }
}
