//! Content classes: named matchers (path prefix, content type) that give
//! stale-serving defaults when the origin sends none, forbid serving stale
//! for what must never be stale, and decide whether Set-Cookie responses may
//! be stored, and set freshness SLOs. The first matching class wins.

use std::time::Duration;

use crate::policy::request::StaleDefaults;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentClass {
    pub name: String,
    /// Matches request paths starting with this (whole string prefix).
    pub path_prefix: Option<String>,
    /// Matches responses whose Content-Type starts with this, e.g. `text/html`.
    pub content_type: Option<String>,
    pub stale: StaleDefaults,
    /// Overrides the node's `store_set_cookie` for this class.
    pub store_set_cookie: Option<bool>,
    /// The most staleness this class's users may see (design §6): measured
    /// on every response, and a cap on serving stale unless
    /// `freshness_slo_cap = false` (then only measured).
    pub freshness_slo: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classes(pub Vec<ContentClass>);

impl Classes {
    /// The first class matching a request path and response content type.
    pub fn classify(&self, path: &str, content_type: Option<&str>) -> Option<&ContentClass> {
        self.0.iter().find(|c| {
            c.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
                && c.content_type.as_deref().is_none_or(|want| type_matches(want, content_type))
        })
    }
}

impl Classes {
    /// True when a class covering this path names the content type its
    /// responses must have and this response has another: a page answering
    /// under an asset path (`/static/account.css` returning the account's
    /// HTML, web cache deception) is then not stored.
    pub fn refuses(&self, path: &str, content_type: Option<&str>) -> bool {
        self.0.iter().any(|c| {
            c.path_prefix.as_deref().is_some_and(|p| path.starts_with(p))
                && c.content_type.as_deref().is_some_and(|want| !type_matches(want, content_type))
        })
    }
}

/// Does a response's Content-Type start with a class's `content_type`
/// (case-insensitively)? No Content-Type matches nothing.
fn type_matches(want: &str, content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with(&want.to_ascii_lowercase()))
}

/// Builds a class's stale defaults from its configured windows and, when
/// its freshness SLO is enforced, the cap on staleness.
pub fn stale(swr: Option<Duration>, sie: Option<Duration>, forbid: bool, cap: Option<Duration>) -> StaleDefaults {
    StaleDefaults { stale_while_revalidate: swr, stale_if_error: sie, forbid, max_staleness: cap }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, path: Option<&str>, ct: Option<&str>, sie: u64) -> ContentClass {
        ContentClass {
            name: name.into(),
            path_prefix: path.map(str::to_string),
            content_type: ct.map(str::to_string),
            stale: stale(None, Some(Duration::from_secs(sie)), false, None),
            freshness_slo: None,
            store_set_cookie: None,
        }
    }

    #[test]
    fn first_matching_class_wins() {
        let classes = Classes(vec![
            class("api", Some("/api/"), None, 10),
            class("html", None, Some("text/html"), 20),
            class("rest", None, None, 30),
        ]);
        assert_eq!(classes.classify("/api/x", Some("text/html")).unwrap().name, "api");
        assert_eq!(classes.classify("/page", Some("Text/HTML; charset=utf-8")).unwrap().name, "html");
        assert_eq!(classes.classify("/img.png", Some("image/png")).unwrap().name, "rest");
        assert_eq!(classes.classify("/page", None).unwrap().name, "rest");
    }

    #[test]
    fn a_class_naming_a_content_type_refuses_others_under_its_path() {
        let classes = Classes(vec![class("css", Some("/static/"), Some("text/css"), 10)]);
        assert!(classes.refuses("/static/account.css", Some("text/html; charset=utf-8")));
        assert!(classes.refuses("/static/account.css", None));
        assert!(!classes.refuses("/static/site.css", Some("text/css")));
        assert!(!classes.refuses("/account", Some("text/html")), "outside the class's path");
    }

    #[test]
    fn no_class_matches_without_classes() {
        assert!(Classes::default().classify("/", None).is_none());
    }
}
