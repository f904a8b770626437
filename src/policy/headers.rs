//! Header-field rules that are not about freshness: hop-by-hop fields
//! (RFC 9110 §7.6.1, RFC 9111 §3.1), the fields a cache must not replay, and
//! the unsafe-method invalidation targets of RFC 9111 §4.4.

use http::header::{
    CONNECTION, CONTENT_LOCATION, HeaderName, LOCATION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::cache_control::FieldScope;

const ALWAYS_HOP_BY_HOP: [&str; 3] = ["keep-alive", "proxy-connection", "http2-settings"];

/// True when `name` is hop-by-hop in a message with these `headers`: one of
/// the fixed set, or listed in its Connection field.
pub fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    matches!(*name, CONNECTION | TE | TRANSFER_ENCODING | UPGRADE | TRAILER | PROXY_AUTHENTICATE | PROXY_AUTHORIZATION)
        || ALWAYS_HOP_BY_HOP.contains(&name.as_str())
        || connection_listed(headers).any(|n| n.eq_ignore_ascii_case(name.as_str()))
}

fn connection_listed(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(CONNECTION).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Removes hop-by-hop fields before a message is forwarded or stored.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> =
        connection_listed(headers).filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRANSFER_ENCODING, UPGRADE, TRAILER, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION] {
        headers.remove(name);
    }
    for name in ALWAYS_HOP_BY_HOP {
        headers.remove(name);
    }
}

/// §5.2.2.7: fields named by a qualified `private` are not stored by a
/// shared cache.
pub fn remove_private_fields(headers: &mut HeaderMap, private: Option<&FieldScope>) {
    if let Some(FieldScope::Fields(names)) = private {
        for name in names {
            headers.remove(name);
        }
    }
}

/// §5.2.2.4: fields named by a qualified `no-cache` are not sent on a reuse
/// that was not validated.
pub fn remove_no_cache_fields(headers: &mut HeaderMap, no_cache: Option<&FieldScope>) {
    if let Some(FieldScope::Fields(names)) = no_cache {
        for name in names {
            headers.remove(name);
        }
    }
}

/// RFC 9111 §4.4: the URIs a response to an unsafe request invalidates:
/// the target URI, and Location / Content-Location when they are on the
/// same origin. Empty for safe methods and error responses.
pub fn unsafe_invalidation_targets(
    method: &Method,
    status: StatusCode,
    target: &Uri,
    response: &HeaderMap,
) -> Vec<Uri> {
    if method.is_safe() || !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let mut targets = vec![target.clone()];
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(value) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(uri) = resolve(target, value)
            && same_origin(target, &uri)
            && !targets.contains(&uri)
        {
            targets.push(uri);
        }
    }
    targets
}

/// Resolves a Location-style reference against an absolute target URI.
/// Handles absolute URIs and absolute paths, which is what origins send.
pub fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    let reference = reference.trim();
    if reference.starts_with("//") {
        return format!("{}:{reference}", base.scheme_str()?).parse().ok();
    }
    if reference.starts_with('/') {
        return Uri::builder()
            .scheme(base.scheme()?.clone())
            .authority(base.authority()?.clone())
            .path_and_query(reference)
            .build()
            .ok();
    }
    let uri: Uri = reference.parse().ok()?;
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Some(uri);
    }
    // A relative path: resolve against the base's directory.
    let base_path = base.path();
    let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
    Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(format!("{dir}{reference}"))
        .build()
        .ok()
}

/// RFC 9110 §4.3.1: same scheme, host and port.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            _ => Some(80),
        })
    };
    a.scheme_str().map(str::to_ascii_lowercase) == b.scheme_str().map(str::to_ascii_lowercase)
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    #[test]
    fn rfc9110_7_6_1_connection_listed_fields_are_removed() {
        let mut h =
            headers(&[("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("x-kept", "1")]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn rfc9111_4_4_unsafe_success_invalidates_target_location_and_content_location() {
        let target: Uri = "http://shop.test/cart".parse().unwrap();
        let resp = headers(&[("location", "/cart/42"), ("content-location", "http://shop.test/cart?v=2")]);
        let got = unsafe_invalidation_targets(&Method::POST, StatusCode::CREATED, &target, &resp);
        let want: Vec<Uri> = ["http://shop.test/cart", "http://shop.test/cart/42", "http://shop.test/cart?v=2"]
            .iter()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rfc9111_4_4_other_origin_location_is_not_invalidated() {
        let target: Uri = "http://shop.test/cart".parse().unwrap();
        let resp = headers(&[("location", "http://evil.test/cart")]);
        let got = unsafe_invalidation_targets(&Method::DELETE, StatusCode::OK, &target, &resp);
        assert_eq!(got, vec![target]);
    }

    #[test]
    fn rfc9111_4_4_errors_and_safe_methods_invalidate_nothing() {
        let target: Uri = "http://shop.test/cart".parse().unwrap();
        assert!(
            unsafe_invalidation_targets(&Method::POST, StatusCode::INTERNAL_SERVER_ERROR, &target, &HeaderMap::new())
                .is_empty()
        );
        assert!(
            unsafe_invalidation_targets(&Method::POST, StatusCode::NOT_FOUND, &target, &HeaderMap::new()).is_empty()
        );
        assert!(unsafe_invalidation_targets(&Method::GET, StatusCode::OK, &target, &HeaderMap::new()).is_empty());
    }

    #[test]
    fn rfc9111_4_4_methods_of_unknown_safety_invalidate() {
        let target: Uri = "http://shop.test/x".parse().unwrap();
        let m = Method::from_bytes(b"FROB").unwrap();
        assert_eq!(unsafe_invalidation_targets(&m, StatusCode::OK, &target, &HeaderMap::new()), vec![target]);
    }
}
