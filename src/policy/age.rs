//! HTTP-dates and the age calculation of RFC 9111 §4.2.3.
//!
//! Times are parameters: nothing here reads the clock.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{AGE, DATE, HeaderName};

use super::cache_control::DELTA_SECONDS_MAX;

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms, which recipients must accept. Recipients are
/// "encouraged to be robust" (same section), so a date that is none of these
/// exactly is read leniently: names in any case, the weekday optional,
/// one-digit days, extra spaces, and the Internet Message Format's zones
/// (`UT`, `UTC`, `Z`, `+hhmm`). A two-digit year below 70 is 20xx (as the
/// `httpdate` crate reads RFC 850 dates; RFC 9110's 50-year rule would need
/// the current time for years 70–76).
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    httpdate::parse_http_date(text).ok().or_else(|| lenient_date(text))
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// The forgiving reading of [`parse_http_date`].
fn lenient_date(text: &str) -> Option<SystemTime> {
    if text.len() > 64 {
        return None;
    }
    let lower = text.to_ascii_lowercase().replace([',', '-'], " ");
    let mut words: Vec<&str> = lower.split_ascii_whitespace().collect();
    // A leading weekday, full or abbreviated, says nothing the date does not.
    if words.first().is_some_and(|w| w.bytes().all(|b| b.is_ascii_alphabetic()) && !is_month(w)) {
        words.remove(0);
    }
    let (day, month, year, time, zone) = match words.as_slice() {
        // 6 Nov 1994 08:49:37 GMT (IMF-fixdate, RFC 850, RFC 5322)
        [d, m, y, t, rest @ ..] if is_month(m) => (*d, *m, *y, *t, rest.first().copied()),
        // Nov 6 08:49:37 1994 (asctime)
        [m, d, t, y] if is_month(m) => (*d, *m, *y, *t, None),
        _ => return None,
    };
    let day: u64 = small_number(day, 2)?;
    let month = MONTHS.iter().position(|m| month.starts_with(m))? as u64 + 1;
    let year: u64 = match (year.len(), small_number(year, 4)?) {
        (2, y) if y < 70 => 2000 + y,
        (2, y) => 1900 + y,
        (4, y) => y,
        _ => return None,
    };
    let mut hms = time.split(':');
    let (h, m, s) = (small_number(hms.next()?, 2)?, small_number(hms.next()?, 2)?, small_number(hms.next()?, 2)?);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 || !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let offset: i64 = match zone {
        None | Some("gmt" | "ut" | "utc" | "z") => 0,
        Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh = small_number(&z[1..3], 2)? as i64;
            let mm = small_number(&z[3..5], 2)? as i64;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (hh * 3600 + mm * 60)
        }
        Some(_) => return None,
    };
    let days = days_from_civil(year, month, day)?;
    let secs = (days * 86_400 + h * 3600 + m * 60 + s.min(59)) as i64 - offset;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn is_month(word: &str) -> bool {
    word.len() >= 3 && MONTHS.iter().any(|m| word.starts_with(m)) && word.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Digits only, at most `width` of them.
fn small_number(text: &str, width: usize) -> Option<u64> {
    (!text.is_empty() && text.len() <= width && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (H. Hinnant's algorithm); `None` for a day the month does not have.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day > month_days[(month - 1) as usize] {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
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

    /// RFC 9110 §5.6.7: recipients are encouraged to be robust in parsing
    /// timestamps: case, a missing weekday, one-digit days, extra spaces,
    /// and RFC 5322 zones.
    #[test]
    fn rfc9110_5_6_7_dates_are_parsed_leniently() {
        let want = Some(at(784111777));
        for text in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "06 Nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun,  06  Nov 1994   08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "Sun, 06 Nov 1994 09:49:37 +0100",
            "Sun, 06 Nov 1994 08:49:37",
            "sunday, 06-nov-94 08:49:37 gmt",
            "sun nov  6 08:49:37 1994",
            "Sun, 06 November 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(text), want, "{text}");
        }
        for bad in [
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 EST5",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "06 Nov 1994",
            "1994-11-06T08:49:37Z",
            "Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        assert_eq!(parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"), Some(at(1_709_164_800)));
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
