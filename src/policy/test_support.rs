//! Helpers shared by the policy tests.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from (name, value) pairs, repeated names appended.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}
