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

impl CacheKey {
    /// The normalised host (and non-default port): what Fresco sends as
    /// `Host`, so the origin answers for exactly what the key names.
    pub fn host(&self) -> &str {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        rest.split_once('/').map_or(rest, |(host, _)| host)
    }

    /// The normalised path and query: what Fresco forwards, so the
    /// response it stores under this key is the response to this key.
    pub fn path_and_query(&self) -> &str {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        rest.find('/').map_or("/", |i| &rest[i..])
    }
}

/// Why a request names no host Fresco can key and forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    /// RFC 9112 §3.2: more than one Host field.
    Several,
    /// Not a host[:port] (userinfo, a path, spaces, a bad port, ...).
    Invalid,
}

impl HostError {
    pub fn message(self) -> &'static str {
        match self {
            HostError::Missing => "request has no Host\n",
            HostError::Several => "request has more than one Host field (RFC 9112 §3.2)\n",
            HostError::Invalid => "request Host is not a valid host[:port]\n",
        }
    }
}

/// The authority a request is for: the target's own in absolute form (or
/// HTTP/2's `:authority`), which replaces any Host field (RFC 9112 §3.2.2),
/// else its one Host field. Validated, so that what Fresco keys is what it
/// can forward.
pub fn request_authority(uri: &http::Uri, headers: &HeaderMap) -> Result<String, HostError> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Several);
    }
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => host.ok_or(HostError::Missing)?.to_str().map_err(|_| HostError::Invalid)?,
    };
    if raw.is_empty() {
        return Err(HostError::Missing);
    }
    valid_authority(raw).then(|| raw.to_string()).ok_or(HostError::Invalid)
}

/// host [ ":" port ] with host an IP literal, IPv4 address or DNS-style
/// reg-name (RFC 3986 §3.2.2); no userinfo.
fn valid_authority(raw: &str) -> bool {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else { return false };
        if literal.is_empty() || !literal.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("x", port),
                None => return false,
            },
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (raw, ""),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let port_ok = port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535));
    host_ok && port_ok
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
            // Each parameter is normalised before it is compared or sorted,
            // so that escaping a name (`utm%5Fsource`) neither dodges
            // `ignore_query_params` nor changes the order: the key of a
            // key is the key.
            let mut params: Vec<String> = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(normalise_percent)
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
                url.push_str(&params.join("&"));
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
    format!("{scheme}://{}", normalise_host(&scheme, authority))
}

/// An authority as keys hold it: userinfo dropped, lowercase, the scheme's
/// default port (or an empty one) removed. Whatever compares hosts with
/// keys (the hosts a node serves, purge URLs) goes through this.
pub fn normalise_host(scheme: &str, authority: &str) -> String {
    let mut host = authority.rsplit('@').next().unwrap_or(authority).to_ascii_lowercase();
    let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
    if host.ends_with(default_port) {
        host.truncate(host.len() - default_port.len());
    } else if host.ends_with(':') {
        // An empty port is the default one (RFC 3986 §6.2.3).
        host.pop();
    }
    host
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
/// (RFC 3986 §6.2.2.1–6.2.2.2). A `%` that starts no escape (RFC 3986
/// §2.1) is itself encoded as `%25`, so that it can never join the
/// characters after it into an escape on a later normalisation.
pub fn normalise_percent(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (Some(h), Some(l)) => {
                let v = (h * 16 + l) as u8;
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v);
                } else {
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
            }
            _ => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
        }
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
    fn the_key_gives_the_host_and_target_to_forward() {
        let k = KeyPolicy::default().key("http", "X.COM:80", "/obj/x/%2e%2e/%2e%2e/obj/target?a=1", &HeaderMap::new());
        assert_eq!(k.host(), "x.com");
        assert_eq!(k.path_and_query(), "/obj/target?a=1");
        let k = KeyPolicy::default().key("http", "[::1]:8080", "", &HeaderMap::new());
        assert_eq!((k.host(), k.path_and_query()), ("[::1]:8080", "/"));
    }

    fn authority(uri: &str, hosts: &[&str]) -> Result<String, HostError> {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(http::header::HOST, HeaderValue::from_str(v).unwrap());
        }
        request_authority(&uri.parse().unwrap(), &h)
    }

    #[test]
    fn rfc9112_3_2_one_valid_host() {
        assert_eq!(authority("/p", &["a.test:8080"]), Ok("a.test:8080".into()));
        assert_eq!(authority("/p", &["a.test", "b.test"]), Err(HostError::Several));
        assert_eq!(authority("/p", &[]), Err(HostError::Missing));
        for bad in ["a@b", "a/x", "a b", "a.test:99999", "a.test:8o", "[zz]", ":80"] {
            assert_eq!(authority("/p", &[bad]), Err(HostError::Invalid), "{bad}");
        }
        assert_eq!(authority("/p", &["[::1]:80"]), Ok("[::1]:80".into()));
    }

    #[test]
    fn rfc9112_3_2_2_absolute_form_target_replaces_host() {
        assert_eq!(authority("http://victim.example/p", &["evil.example"]), Ok("victim.example".into()));
        assert_eq!(authority("http://user@victim.example/p", &[]), Err(HostError::Invalid));
    }

    #[test]
    fn rfc3986_2_1_a_percent_that_starts_no_escape_is_encoded() {
        assert_eq!(normalise_percent("/a%2"), "/a%252");
        assert_eq!(normalise_percent("/a%"), "/a%25");
        assert_eq!(normalise_percent("/a%zz"), "/a%25zz");
        assert_eq!(normalise_percent("/%4%41"), "/%254A");
        assert_eq!(normalise_percent(&normalise_percent("/%4%41")), "/%254A", "idempotent");
    }
}
