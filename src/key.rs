//! The cache key policy, in one place.
//!
//! A key is the normalised URL (scheme, host, path, query) followed by any
//! request header values or cookie values the operator made part of the key,
//! so that, e.g., an experiment cookie keeps each cohort's page apart. The
//! URL part alone is also what URL and prefix invalidations match.

use http::{HeaderMap, HeaderName};

/// How requests map to cache keys.
#[derive(Debug, Clone, Default)]
pub struct KeyPolicy {
    pub sort_query: bool,
    pub ignore_query_params: Vec<String>,
    pub headers: Vec<HeaderName>,
    pub cookies: Vec<String>,
}

/// A request's cache key and the normalised URL it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Scheme, host, path and query, normalised (RFC 3986 §6.2.2).
    pub url: String,
    /// `url` plus the configured header and cookie components.
    pub key: String,
}

impl KeyPolicy {
    pub fn key(&self, scheme: &str, authority: &str, path_and_query: &str, headers: &HeaderMap) -> CacheKey {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut url = normalise_origin(scheme, authority);
        url.push_str(&normalise_path(path));
        if let Some(query) = query {
            let mut params: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let name = p.split('=').next().unwrap_or_default();
                    !self.ignore_query_params.iter().any(|i| i == name)
                })
                .collect();
            if self.sort_query {
                params.sort_unstable();
            }
            if !params.is_empty() || self.ignore_query_params.is_empty() {
                url.push('?');
                url.push_str(&normalise_percent(&params.join("&")));
            }
        }
        let mut key = url.clone();
        for name in &self.headers {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            if let Some(v) = crate::policy::vary::normalised(headers, name) {
                key.push_str(&v);
            }
        }
        for cookie in &self.cookies {
            key.push_str("\ncookie:");
            key.push_str(cookie);
            key.push('=');
            if let Some(v) = cookie_value(headers, cookie) {
                key.push_str(v);
            }
        }
        CacheKey { url, key }
    }
}

/// Lowercase scheme and host, default port removed (RFC 3986 §6.2.2.1, §6.2.3).
pub fn normalise_origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let mut host = authority.rsplit('@').next().unwrap_or(authority).to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if host.ends_with(default_port) {
        host.truncate(host.len() - default_port.len());
    } else if host.ends_with(':') {
        // An empty port is the default one (RFC 3986 §6.2.3).
        host.pop();
    }
    format!("{scheme}://{host}")
}

/// An empty path is `/`; percent-encodings normalised; dot segments removed
/// (RFC 3986 §5.2.4, §6.2.2.3).
pub fn normalise_path(path: &str) -> String {
    let path = normalise_percent(if path.is_empty() { "/" } else { path });
    if !path.split('/').any(|s| s == "." || s == "..") {
        return path;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Uppercases percent-encoding hex digits and decodes unreserved characters
/// (RFC 3986 §6.2.2.1–6.2.2.2).
pub fn normalise_percent(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let (h, l) = (bytes[i + 1], bytes[i + 2]);
            if let (Some(h), Some(l)) = ((h as char).to_digit(16), (l as char).to_digit(16)) {
                let v = (h * 16 + l) as u8;
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The value of cookie `name` in the request's Cookie fields.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn url(p: &KeyPolicy, scheme: &str, auth: &str, pq: &str) -> String {
        p.key(scheme, auth, pq, &HeaderMap::new()).url
    }

    #[test]
    fn rfc3986_6_2_case_port_and_percent_normalisation() {
        let p = KeyPolicy::default();
        assert_eq!(url(&p, "HTTP", "Example.COM:80", ""), "http://example.com/");
        assert_eq!(url(&p, "https", "a.test:443", "/%7euser/%2f"), "https://a.test/~user/%2F");
        assert_eq!(url(&p, "http", "a.test:8080", "/x"), "http://a.test:8080/x");
        assert_eq!(url(&p, "http", "a.test", "/a/./b/../c"), "http://a.test/a/c");
        assert_eq!(url(&p, "https", "www.example.com:", "/../foo/bar"), "https://www.example.com/foo/bar");
    }

    #[test]
    fn query_order_kept_unless_sorting_is_configured() {
        let p = KeyPolicy::default();
        assert_eq!(url(&p, "http", "a", "/p?b=2&a=1"), "http://a/p?b=2&a=1");
        let sorted = KeyPolicy { sort_query: true, ..Default::default() };
        assert_eq!(url(&sorted, "http", "a", "/p?b=2&a=1"), "http://a/p?a=1&b=2");
    }

    #[test]
    fn ignored_query_params_do_not_count() {
        let p = KeyPolicy { ignore_query_params: vec!["utm_source".into()], ..Default::default() };
        assert_eq!(url(&p, "http", "a", "/p?utm_source=x&id=3"), "http://a/p?id=3");
        assert_eq!(url(&p, "http", "a", "/p?utm_source=x"), "http://a/p");
    }

    #[test]
    fn cohort_cookie_separates_keys_but_not_urls() {
        let p = KeyPolicy { cookies: vec!["exp".into()], ..Default::default() };
        let mut a = HeaderMap::new();
        a.insert("cookie", HeaderValue::from_static("sid=1; exp=blue"));
        let mut b = HeaderMap::new();
        b.insert("cookie", HeaderValue::from_static("exp=green"));
        let ka = p.key("http", "a", "/", &a);
        let kb = p.key("http", "a", "/", &b);
        assert_ne!(ka.key, kb.key);
        assert_eq!(ka.url, kb.url);
    }

    #[test]
    fn truncated_percent_escape_is_kept_verbatim() {
        assert_eq!(normalise_percent("/a%2"), "/a%2");
        assert_eq!(normalise_percent("/a%"), "/a%");
        assert_eq!(normalise_percent("/a%zz"), "/a%zz");
    }
}
