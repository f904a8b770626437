//! Range requests answered from a stored complete response (RFC 9110 §14).
//!
//! Fresco serves a single byte range as 206 and an unsatisfiable one as
//! 416; several ranges, other units or a failed If-Range get the whole
//! representation (a server may always ignore Range, §14.2).

use http::HeaderMap;
use http::header::{ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

use super::conditional::parse_etag;

/// What to send for a request's Range against a stored body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// The whole representation, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// §14.2–14.4 for one stored response.
pub fn evaluate(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeReply {
    let Some(range) = request.get(RANGE).and_then(|v| v.to_str().ok()) else { return RangeReply::Full };
    if request.get_all(RANGE).iter().count() > 1 || !if_range_holds(request, stored) {
        return RangeReply::Full;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return RangeReply::Full };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeReply::Full };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    match (digits(first), digits(last), last.is_empty()) {
        // bytes=a-b or bytes=a-
        (true, true, _) | (true, false, true) => {
            let Ok(start) = first.parse::<u64>() else { return RangeReply::Full };
            let end = if last.is_empty() { u64::MAX } else { last.parse::<u64>().unwrap_or(u64::MAX) };
            if end < start {
                return RangeReply::Full;
            }
            if start >= len {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start, end: end.min(len - 1) }
        }
        // bytes=-n: the last n bytes
        (false, true, _) if first.is_empty() => {
            let Ok(n) = last.parse::<u64>() else { return RangeReply::Full };
            if n == 0 || len == 0 {
                return RangeReply::Unsatisfiable;
            }
            RangeReply::Partial { start: len.saturating_sub(n), end: len - 1 }
        }
        _ => RangeReply::Full,
    }
}

/// §13.1.5: If-Range holds with a strong ETag match or an exact
/// Last-Modified match.
fn if_range_holds(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(value) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) else { return true };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        let (Some(want), Some(have)) =
            (parse_etag(value), stored.get(ETAG).and_then(|v| v.to_str().ok()).and_then(parse_etag))
        else {
            return false;
        };
        return !want.weak && !have.weak && want.opaque == have.opaque;
    }
    stored.get(LAST_MODIFIED).is_some_and(|lm| lm.as_bytes() == value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::headers;

    fn eval(range: &str, len: u64) -> RangeReply {
        evaluate(&headers(&[("range", range)]), &HeaderMap::new(), len)
    }

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        assert_eq!(eval("bytes=0-4", 10), RangeReply::Partial { start: 0, end: 4 });
        assert_eq!(eval("bytes=5-", 10), RangeReply::Partial { start: 5, end: 9 });
        assert_eq!(eval("bytes=-3", 10), RangeReply::Partial { start: 7, end: 9 });
        assert_eq!(eval("bytes=8-100", 10), RangeReply::Partial { start: 8, end: 9 });
        assert_eq!(eval("bytes=-30", 10), RangeReply::Partial { start: 0, end: 9 });
    }

    #[test]
    fn rfc9110_15_5_17_unsatisfiable_ranges() {
        assert_eq!(eval("bytes=10-", 10), RangeReply::Unsatisfiable);
        assert_eq!(eval("bytes=-0", 10), RangeReply::Unsatisfiable);
    }

    #[test]
    fn rfc9110_14_2_what_is_not_understood_gets_the_whole() {
        for r in ["bytes=0-1,3-4", "items=0-1", "bytes=5-2", "bytes=a-b", "bytes=-"] {
            assert_eq!(eval(r, 10), RangeReply::Full, "{r}");
        }
    }

    #[test]
    fn rfc9110_13_1_5_if_range_needs_a_strong_match() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT")]);
        let req = |ir: &str| headers(&[("range", "bytes=0-1"), ("if-range", ir)]);
        assert_eq!(evaluate(&req("\"v1\""), &stored, 10), RangeReply::Partial { start: 0, end: 1 });
        assert_eq!(evaluate(&req("\"v0\""), &stored, 10), RangeReply::Full);
        assert_eq!(evaluate(&req("W/\"v1\""), &stored, 10), RangeReply::Full);
        assert_eq!(
            evaluate(&req("Sun, 01 Nov 2026 00:00:00 GMT"), &stored, 10),
            RangeReply::Partial { start: 0, end: 1 }
        );
    }
}
