//! Range requests (RFC 9110 §14): parsing a request's Range, answering it
//! from a complete representation, and reading an origin's Content-Range.
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

/// The one byte range a request asks for (§14.1.2), before the length of
/// the representation is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// `bytes=first-last` or `bytes=first-` (`last` None).
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

/// The request's single byte range, or None when it has no Range, several
/// ranges, another unit or one that is not understood (all answered with
/// the whole representation, §14.2). If-Range is not looked at here.
pub fn requested(request: &HeaderMap) -> Option<Requested> {
    let range = request.get(RANGE)?.to_str().ok()?;
    if request.get_all(RANGE).iter().count() > 1 {
        return None;
    }
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    match (digits(first), digits(last), last.is_empty()) {
        // bytes=a-b or bytes=a-
        (true, true, _) | (true, false, true) => {
            let first = first.parse::<u64>().ok()?;
            // A last position past what u64 holds is "to the end".
            let last = if last.is_empty() { None } else { Some(last.parse::<u64>().unwrap_or(u64::MAX)) };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            Some(Requested::From { first, last })
        }
        (false, true, _) if first.is_empty() => last.parse::<u64>().ok().map(Requested::Suffix),
        _ => None,
    }
}

/// §14.2–14.4 for one stored response.
pub fn evaluate(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeReply {
    if !if_range_holds(request, stored) {
        return RangeReply::Full;
    }
    match requested(request) {
        None => RangeReply::Full,
        Some(Requested::From { first, .. }) if first >= len => RangeReply::Unsatisfiable,
        Some(Requested::From { first, last }) => {
            RangeReply::Partial { start: first, end: last.unwrap_or(u64::MAX).min(len - 1) }
        }
        Some(Requested::Suffix(n)) if n == 0 || len == 0 => RangeReply::Unsatisfiable,
        Some(Requested::Suffix(n)) => RangeReply::Partial { start: len.saturating_sub(n), end: len - 1 },
    }
}

/// §14.4: `Content-Range: bytes first-last/complete` of a 206, as
/// (first, last, complete length); None for anything else (an unknown
/// length `*` included: such a part cannot be placed in a whole).
pub fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.trim().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let (first, last, total) = (num(first)?, num(last)?, num(total)?);
    (first <= last && last < total).then_some((first, last, total))
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
    fn rfc9110_14_1_2_requested_range_before_the_length_is_known() {
        let req = |r: &str| requested(&headers(&[("range", r)]));
        assert_eq!(
            req("bytes=150000000-150000099"),
            Some(Requested::From { first: 150_000_000, last: Some(150_000_099) })
        );
        assert_eq!(req("bytes=7-"), Some(Requested::From { first: 7, last: None }));
        assert_eq!(req("bytes=-5"), Some(Requested::Suffix(5)));
        assert_eq!(req("bytes=0-99999999999999999999999"), Some(Requested::From { first: 0, last: Some(u64::MAX) }));
        for r in ["bytes=0-1,3-4", "items=0-1", "bytes=5-2", "bytes=-", "bytes= - "] {
            assert_eq!(req(r), None, "{r}");
        }
    }

    #[test]
    fn rfc9110_14_4_content_range_of_a_206() {
        assert_eq!(content_range("bytes 0-99/200"), Some((0, 99, 200)));
        assert_eq!(content_range("bytes 1048576-2097151/209715200"), Some((1_048_576, 2_097_151, 209_715_200)));
        for v in ["bytes 0-99/*", "bytes */200", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1"] {
            assert_eq!(content_range(v), None, "{v}");
        }
    }

    proptest::proptest! {
        #[test]
        fn rfc9110_14_4_content_range_round_trips(first in 0u64..1 << 40, len in 1u64..1 << 30, extra in 0u64..1 << 30) {
            let (last, total) = (first + len - 1, first + len + extra);
            proptest::prop_assert_eq!(content_range(&format!("bytes {first}-{last}/{total}")), Some((first, last, total)));
        }

        #[test]
        fn rfc9110_14_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = content_range(&text);
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                let mut h = HeaderMap::new();
                h.insert(RANGE, v);
                let _ = requested(&h);
            }
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
