//! HTTP-dates and the age calculation of RFC 9111 §4.2.3.
//!
//! Times are parameters: nothing here reads the clock.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{AGE, DATE, HeaderName};

use super::cache_control::DELTA_SECONDS_MAX;

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms, which recipients must accept.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

/// Formats `t` as an IMF-fixdate.
pub fn format_http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The value of a date header that must be a single HTTP-date. More than one
/// field line, or one that does not parse, yields `Err(())`: the caller
/// decides what "invalid" means for that field.
pub fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<Result<SystemTime, ()>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(first.to_str().ok().and_then(parse_http_date).ok_or(()))
}

/// The Age field (§5.1): the first member of a list is used; anything but a
/// non-negative integer is ignored.
pub fn age_value(headers: &HeaderMap) -> Option<Duration> {
    let first_line = headers.get(AGE)?.to_str().ok()?;
    let first = first_line.split(',').next()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = first.parse::<u64>().map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX));
    Some(Duration::from_secs(secs))
}

/// The Date of a response, or the time it was received when the Date is
/// absent or invalid (§4.2.3 allows using the receipt time).
pub fn date_value(headers: &HeaderMap, response_time: SystemTime) -> SystemTime {
    match single_date(headers, &DATE) {
        Some(Ok(d)) => d,
        _ => response_time,
    }
}

/// `corrected_initial_age` of §4.2.3, computed once when a response arrives.
pub fn corrected_initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let date = date_value(headers, response_time);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let response_delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value(headers).unwrap_or(Duration::ZERO) + response_delay;
    apparent_age.max(corrected_age_value)
}

/// `current_age` of §4.2.3.
pub fn current_age(corrected_initial_age: Duration, response_time: SystemTime, now: SystemTime) -> Duration {
    corrected_initial_age + now.duration_since(response_time).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc9110_5_6_7_all_three_date_formats_parse() {
        let want = Some(at(784111777));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), want);
        assert_eq!(parse_http_date("0"), None);
    }

    #[test]
    fn rfc9111_5_1_age_list_uses_first_member() {
        let mut h = HeaderMap::new();
        h.insert(AGE, HeaderValue::from_static("30, 60"));
        assert_eq!(age_value(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn rfc9111_5_1_invalid_age_is_ignored() {
        for bad in ["-1", "abc", "1.5", ""] {
            let mut h = HeaderMap::new();
            h.insert(AGE, HeaderValue::from_str(bad).unwrap());
            assert_eq!(age_value(&h), None, "{bad}");
        }
    }

    #[test]
    fn rfc9111_4_2_3_corrected_age_uses_response_delay() {
        let mut h = HeaderMap::new();
        h.insert(DATE, HeaderValue::from_str(&format_http_date(at(1000))).unwrap());
        h.insert(AGE, HeaderValue::from_static("10"));
        // Requested at 1000, received at 1004: Age 10 plus 4 s in flight.
        assert_eq!(corrected_initial_age(&h, at(1000), at(1004)), Duration::from_secs(14));
    }

    #[test]
    fn rfc9111_4_2_3_apparent_age_wins_when_larger() {
        let mut h = HeaderMap::new();
        h.insert(DATE, HeaderValue::from_str(&format_http_date(at(900))).unwrap());
        assert_eq!(corrected_initial_age(&h, at(1000), at(1000)), Duration::from_secs(100));
    }

    #[test]
    fn rfc9111_4_2_3_date_in_the_future_gives_zero_apparent_age() {
        let mut h = HeaderMap::new();
        h.insert(DATE, HeaderValue::from_str(&format_http_date(at(5000))).unwrap());
        assert_eq!(corrected_initial_age(&h, at(1000), at(1000)), Duration::ZERO);
        assert_eq!(current_age(Duration::ZERO, at(1000), at(1042)), Duration::from_secs(42));
    }
}
