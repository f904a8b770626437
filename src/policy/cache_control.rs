//! Parsing of `Cache-Control` (RFC 9111 §5.2) and of the targeted fields that
//! share its directive grammar: `CDN-Cache-Control` (RFC 9213, a structured
//! dictionary) and `Surrogate-Control` (Edge Architecture 1.0).
//!
//! Parsing never fails as a whole: an unknown directive is ignored (§5.2.3),
//! and a directive whose argument is malformed is kept as [`Delta::Invalid`]
//! so that the freshness rules can treat the response as stale (§4.2.1).

use http::HeaderMap;
use http::header::HeaderName;

/// §1.2.2: a delta-seconds too large to represent is taken as 2^31.
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// A delta-seconds argument (§1.2.2). Stored as u32: §1.2.2 caps every
/// value at 2^31, and stored objects carry many of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    Valid(u32),
    /// Present but not a non-negative integer (`max-age=abc`, `max-age=-1`,
    /// `max-age` without a value).
    Invalid,
}

impl Delta {
    fn parse(arg: Option<&str>) -> Delta {
        let Some(arg) = arg else {
            return Delta::Invalid;
        };
        if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
            return Delta::Invalid;
        }
        Delta::Valid(arg.parse::<u64>().map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX)) as u32)
    }

    /// Seconds, with an invalid argument counted as zero ("treat as stale").
    pub fn seconds(self) -> u64 {
        match self {
            Delta::Valid(s) => u64::from(s),
            Delta::Invalid => 0,
        }
    }
}

/// `no-cache` and `private` take an optional list of field names
/// (§5.2.2.4, §5.2.2.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldScope {
    /// The directive applies to the whole response.
    All,
    /// The directive applies only to these header fields.
    Fields(Vec<HeaderName>),
}

/// `max-stale` with or without a bound (§5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    Any,
    Limit(u32),
}

/// The directives of one Cache-Control-like field. Request and response
/// directives share one struct because they share one grammar; each caller
/// reads the ones that apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<Delta>,
    pub s_maxage: Option<Delta>,
    pub max_stale: Option<MaxStale>,
    pub min_fresh: Option<Delta>,
    pub no_cache: Option<FieldScope>,
    pub private: Option<FieldScope>,
    pub no_store: bool,
    pub no_transform: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub only_if_cached: bool,
    /// RFC 8246.
    pub immutable: bool,
    /// RFC 5861 §3.
    pub stale_while_revalidate: Option<Delta>,
    /// RFC 5861 §4.
    pub stale_if_error: Option<Delta>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers` as one list (RFC 9110
    /// §5.3). Duplicate directives keep their first occurrence (§4.2.1).
    pub fn from_headers(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            if let Ok(text) = value.to_str() {
                for (name, arg) in directives(text) {
                    cc.apply(&name, arg.as_deref());
                }
            }
        }
        cc
    }

    /// Parses one field value in Cache-Control syntax.
    pub fn parse(text: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        for (name, arg) in directives(text) {
            cc.apply(&name, arg.as_deref());
        }
        cc
    }

    /// True when no directive was recognised.
    pub fn is_empty(&self) -> bool {
        *self == CacheControl::default()
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        fn first<T>(slot: &mut Option<T>, value: impl FnOnce() -> T) {
            if slot.is_none() {
                *slot = Some(value());
            }
        }
        match name {
            "max-age" => first(&mut self.max_age, || Delta::parse(arg)),
            "s-maxage" => first(&mut self.s_maxage, || Delta::parse(arg)),
            "min-fresh" => first(&mut self.min_fresh, || Delta::parse(arg)),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate, || Delta::parse(arg)),
            "stale-if-error" => first(&mut self.stale_if_error, || Delta::parse(arg)),
            "max-stale" => first(&mut self.max_stale, || {
                match arg.map(|a| Delta::parse(Some(a))) {
                    None => MaxStale::Any,
                    Some(Delta::Valid(s)) => MaxStale::Limit(s),
                    // An unusable bound grants nothing rather than everything.
                    Some(Delta::Invalid) => MaxStale::Limit(0),
                }
            }),
            "no-cache" => merge_scope(&mut self.no_cache, arg),
            "private" => merge_scope(&mut self.private, arg),
            "no-store" => self.no_store = true,
            "no-transform" => self.no_transform = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "immutable" => self.immutable = true,
            _ => {}
        }
    }
}

/// Two `no-cache` (or `private`) directives combine to the most restrictive
/// reading: any unqualified one makes it apply to the whole response.
fn merge_scope(slot: &mut Option<FieldScope>, arg: Option<&str>) {
    let new = match arg {
        None => FieldScope::All,
        Some(list) => {
            let names: Vec<HeaderName> =
                list.split(',').filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()).collect();
            if names.is_empty() { FieldScope::All } else { FieldScope::Fields(names) }
        }
    };
    *slot = Some(match (slot.take(), new) {
        (None, new) => new,
        (Some(FieldScope::All), _) | (_, FieldScope::All) => FieldScope::All,
        (Some(FieldScope::Fields(mut a)), FieldScope::Fields(b)) => {
            a.extend(b);
            FieldScope::Fields(a)
        }
    });
}

/// Splits a Cache-Control value into lowercase directive names and their
/// unquoted arguments. Commas inside quoted strings do not split.
pub fn directives(text: &str) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    split_list(text).filter_map(|item| {
        let (name, arg) = match item.split_once('=') {
            Some((n, a)) => (n.trim(), Some(unquote(a.trim()))),
            None => (item.trim(), None),
        };
        if name.is_empty() {
            return None;
        }
        Some((name.to_ascii_lowercase(), arg))
    })
}

/// Splits on commas that are outside quoted strings.
pub fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let bytes = rest.as_bytes();
            let mut in_quotes = false;
            let mut escaped = false;
            let mut end = bytes.len();
            for (i, &b) in bytes.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if in_quotes && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = !in_quotes;
                } else if b == b',' && !in_quotes {
                    end = i;
                    break;
                }
            }
            let item = rest[..end].trim();
            rest = if end < bytes.len() { &rest[end + 1..] } else { "" };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

/// Removes the quotes and backslash escapes of a quoted-string (RFC 9110
/// §5.6.4); a token is returned as it is.
pub fn unquote(arg: &str) -> String {
    match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => arg.to_string(),
    }
}

/// The structured-field type a response directive's value must have in a
/// targeted field (RFC 9213 §2.1: a delta is an Integer, a flag a Boolean,
/// a field list a String); extension directives may have any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expected {
    Delta,
    Flag,
    FlagOrFields,
    Any,
}

fn expected(directive: &str) -> Expected {
    match directive {
        "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error" => Expected::Delta,
        "no-cache" | "private" => Expected::FlagOrFields,
        "no-store" | "no-transform" | "public" | "must-revalidate" | "proxy-revalidate" | "must-understand"
        | "immutable" => Expected::Flag,
        _ => Expected::Any,
    }
}

/// Parses `CDN-Cache-Control` (RFC 9213 §2.1): a structured-field
/// dictionary. Returns `None` when the field is absent, empty, does not
/// parse, or gives a directive a value of the wrong type (a decimal or
/// negative `max-age`, a string `no-store`): RFC 9213 §2.1 says such values
/// are not to be consumed and a field with a parsing error is ignored, so
/// the cache falls back to `Cache-Control` rather than guessing.
pub fn parse_cdn_cache_control(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        let text = value.to_str().ok()?;
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(text);
    }
    if joined.trim().is_empty() {
        return None;
    }
    let bytes = joined.as_bytes();
    let mut parser = sfparse::Parser::new(bytes);
    let mut cc = CacheControl::default();
    // A dictionary keeps the last value of a repeated key (RFC 9651 §3.2);
    // collect then apply so that last-wins holds.
    let mut members: Vec<(String, Option<String>)> = Vec::new();
    loop {
        match parser.parse_dict() {
            Ok(None) => break,
            Ok(Some((key, value))) => {
                let key = key.to_string();
                let want = expected(&key);
                let typed = match want {
                    Expected::Any => true,
                    Expected::Flag => matches!(value, sfparse::Value::Bool(_)),
                    Expected::Delta => matches!(value, sfparse::Value::Integer(i) if i >= 0),
                    Expected::FlagOrFields => matches!(value, sfparse::Value::Bool(_) | sfparse::Value::String { .. }),
                };
                if !typed {
                    return None;
                }
                let arg = match value {
                    sfparse::Value::Bool(true) => None,
                    // `?0`: the directive is absent.
                    sfparse::Value::Bool(false) => {
                        members.retain(|(k, _)| *k != key);
                        continue;
                    }
                    sfparse::Value::Integer(i) if i >= 0 => Some(i.to_string()),
                    sfparse::Value::Token(r) => Some(joined[r].to_string()),
                    sfparse::Value::String { range, escape } => {
                        let raw = &joined[range];
                        Some(if escape { raw.replace("\\\"", "\"").replace("\\\\", "\\") } else { raw.to_string() })
                    }
                    // A decimal, byte sequence, date or the like for an
                    // extension directive, which is ignored anyway.
                    _ => continue,
                };
                members.retain(|(k, _)| *k != key);
                members.push((key, arg));
            }
            Err(_) => return None,
        }
    }
    for (name, arg) in members {
        cc.apply(&name, arg.as_deref());
    }
    Some(cc)
}

/// Parses `Surrogate-Control` (Edge Architecture 1.0) for a surrogate called
/// `device`. Directives carrying a `;target` suffix apply only when the
/// target is `device`; untargeted ones apply to every surrogate. When any
/// directive names `device`, the untargeted ones are ignored, as the
/// specification says the most specific control wins. `max-age=N+M` is read
/// as a freshness of N (the `+M` extension is ignored). Returns `None` when
/// no directive applies.
pub fn parse_surrogate_control(headers: &HeaderMap, device: &str) -> Option<CacheControl> {
    let mut general = Vec::new();
    let mut targeted = Vec::new();
    for value in headers.get_all("surrogate-control") {
        let text = value.to_str().ok()?;
        for item in split_list(text) {
            let (directive, target) = match item.rsplit_once(';') {
                Some((d, t)) if !t.contains('"') => (d.trim(), Some(t.trim())),
                _ => (item, None),
            };
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(unquote(a.trim()))),
                None => (directive.trim().to_ascii_lowercase(), None),
            };
            if name == "content" {
                continue;
            }
            let name = if name == "no-store-remote" { "no-store".to_string() } else { name };
            let arg = match (name.as_str(), arg) {
                ("max-age", Some(a)) => Some(a.split('+').next().unwrap_or_default().trim().to_string()),
                (_, a) => a,
            };
            match target {
                None => general.push((name, arg)),
                Some(t) if t.eq_ignore_ascii_case(device) => targeted.push((name, arg)),
                Some(_) => {}
            }
        }
    }
    let chosen = if targeted.is_empty() { general } else { targeted };
    if chosen.is_empty() {
        return None;
    }
    let mut cc = CacheControl::default();
    for (name, arg) in chosen {
        cc.apply(&name, arg.as_deref());
    }
    Some(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    #[test]
    fn rfc9111_5_2_directive_names_are_case_insensitive() {
        let cc = CacheControl::parse("Max-Age=60, NO-STORE");
        assert_eq!(cc.max_age, Some(Delta::Valid(60)));
        assert!(cc.no_store);
    }

    #[test]
    fn rfc9111_5_2_quoted_arguments_are_accepted() {
        assert_eq!(CacheControl::parse("max-age=\"30\"").max_age, Some(Delta::Valid(30)));
    }

    #[test]
    fn rfc9111_4_2_1_duplicate_directive_uses_first() {
        let h = headers(&[("cache-control", "max-age=10"), ("cache-control", "max-age=99")]);
        assert_eq!(CacheControl::from_headers(&h).max_age, Some(Delta::Valid(10)));
    }

    #[test]
    fn rfc9111_4_2_1_invalid_max_age_is_kept_as_invalid() {
        for bad in ["max-age=abc", "max-age=-5", "max-age=1.5", "max-age", "max-age="] {
            assert_eq!(CacheControl::parse(bad).max_age, Some(Delta::Invalid), "{bad}");
        }
    }

    #[test]
    fn rfc9111_1_2_2_overflowing_delta_is_two_to_the_31() {
        let cc = CacheControl::parse("max-age=99999999999999999999999");
        assert_eq!(cc.max_age, Some(Delta::Valid(DELTA_SECONDS_MAX as u32)));
    }

    #[test]
    fn rfc9111_5_2_2_7_private_with_field_names_keeps_them() {
        let cc = CacheControl::parse("private=\"Set-Cookie, X-User\", max-age=5");
        assert_eq!(
            cc.private,
            Some(FieldScope::Fields(vec![HeaderName::from_static("set-cookie"), HeaderName::from_static("x-user")]))
        );
        assert_eq!(cc.max_age, Some(Delta::Valid(5)));
    }

    #[test]
    fn rfc9111_5_2_2_4_unqualified_no_cache_wins_over_qualified() {
        let cc = CacheControl::parse("no-cache=\"x-a\", no-cache");
        assert_eq!(cc.no_cache, Some(FieldScope::All));
    }

    #[test]
    fn rfc9111_5_2_1_2_max_stale_with_and_without_value() {
        assert_eq!(CacheControl::parse("max-stale").max_stale, Some(MaxStale::Any));
        assert_eq!(CacheControl::parse("max-stale=20").max_stale, Some(MaxStale::Limit(20)));
    }

    #[test]
    fn rfc9111_5_2_3_unknown_directives_are_ignored() {
        let cc = CacheControl::parse("foo=bar, max-age=3, baz");
        assert_eq!(cc.max_age, Some(Delta::Valid(3)));
    }

    #[test]
    fn rfc8246_immutable_and_rfc5861_windows_are_parsed() {
        let cc = CacheControl::parse("max-age=1, immutable, stale-while-revalidate=30, stale-if-error=86400");
        assert!(cc.immutable);
        assert_eq!(cc.stale_while_revalidate, Some(Delta::Valid(30)));
        assert_eq!(cc.stale_if_error, Some(Delta::Valid(86400)));
    }

    #[test]
    fn rfc9213_cdn_cache_control_is_a_dictionary() {
        let name = HeaderName::from_static("cdn-cache-control");
        let cc =
            parse_cdn_cache_control(&headers(&[("cdn-cache-control", "max-age=600, must-revalidate")]), &name).unwrap();
        assert_eq!(cc.max_age, Some(Delta::Valid(600)));
        assert!(cc.must_revalidate);
    }

    #[test]
    fn rfc9213_2_1_invalid_or_empty_cdn_cache_control_is_ignored() {
        let name = HeaderName::from_static("cdn-cache-control");
        assert!(parse_cdn_cache_control(&headers(&[("cdn-cache-control", "max-age=6,,")]), &name).is_none());
        assert!(parse_cdn_cache_control(&headers(&[("cdn-cache-control", "")]), &name).is_none());
        assert!(parse_cdn_cache_control(&HeaderMap::new(), &name).is_none());
    }

    /// RFC 9213 §2.1: a value of the wrong type is not consumed, and the
    /// field is ignored as a whole (Cache-Control governs).
    #[test]
    fn rfc9213_2_1_a_directive_of_the_wrong_type_voids_the_field() {
        let name = HeaderName::from_static("cdn-cache-control");
        for bad in [
            "max-age=1.5",
            "max-age=-1",
            r#"max-age="60""#,
            "max-age=abc",
            "max-age",
            "no-store=1",
            r#"no-store="yes""#,
            "must-revalidate=now",
            "private=5",
            "s-maxage=60, no-cache=1",
        ] {
            assert!(parse_cdn_cache_control(&headers(&[("cdn-cache-control", bad)]), &name).is_none(), "{bad}");
        }
        for good in ["max-age=60", "no-store", r#"private="set-cookie""#, "no-cache, max-age=0", "foo=1.5, max-age=9"] {
            assert!(parse_cdn_cache_control(&headers(&[("cdn-cache-control", good)]), &name).is_some(), "{good}");
        }
        let cc = parse_cdn_cache_control(&headers(&[("cdn-cache-control", "no-store, no-store=?0, max-age=5")]), &name);
        assert!(!cc.unwrap().no_store, "?0 is absent; the last member wins (RFC 9651 §3.2)");
    }

    #[test]
    fn surrogate_control_targeting_picks_our_directives() {
        let h = headers(&[("surrogate-control", "max-age=300;fresco, max-age=10;other, no-store;other")]);
        let cc = parse_surrogate_control(&h, "fresco").unwrap();
        assert_eq!(cc.max_age, Some(Delta::Valid(300)));
        assert!(!cc.no_store);
    }

    #[test]
    fn surrogate_control_directives_targeted_elsewhere_are_ignored() {
        let h = headers(&[("surrogate-control", "no-store;akamai, content=\"ESI/1.0\"")]);
        assert!(parse_surrogate_control(&h, "fresco").is_none());
        let h = headers(&[("surrogate-control", "max-age=60+30, content=\"ESI/1.0\"")]);
        assert_eq!(parse_surrogate_control(&h, "fresco").unwrap().max_age, Some(Delta::Valid(60)));
    }
}
