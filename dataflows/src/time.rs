//! Event time: milliseconds since the Unix epoch, UTC, and the hourly windows
//! and UTC days built on it.
//!
//! Event time is data in tally, never the timely timestamp (that is the
//! checkpoint epoch). Every event time is checked at decode to lie in
//! [`EARLIEST`, `LATEST`), so window and day arithmetic below cannot overflow
//! and every window start fits ClickHouse's `DateTime`.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// One second.
pub const SECOND: Millis = 1_000;
/// One minute.
pub const MINUTE: Millis = 60 * SECOND;
/// One hour: the length of a billing window.
pub const HOUR: Millis = 60 * MINUTE;
/// One UTC day.
pub const DAY: Millis = 24 * HOUR;

/// The earliest event time accepted (1970-01-01T00:00:00Z).
pub const EARLIEST: Millis = 0;
/// Event times must be before 2106-01-01T00:00:00Z, where ClickHouse's
/// `DateTime` ends.
pub const LATEST: Millis = 4_291_747_200_000;

/// Start of the hourly window holding `time`.
pub fn window_start(time: Millis) -> Millis {
    time.div_euclid(HOUR) * HOUR
}

/// Start of the UTC day holding `time`.
pub fn day_start(time: Millis) -> Millis {
    time.div_euclid(DAY) * DAY
}

/// Parses an RFC 3339 timestamp with an offset and truncates it to the
/// millisecond (towards the past).
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    usual_utc(text.as_bytes()).or_else(|| DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` or `YYYY-MM-DDTHH:MM:SS.mmmZ`, the times nearly
/// every event carries, read directly: chrono's general parser took about
/// 460 instructions an event. `None` for anything else, valid or not, which
/// chrono then reads; a property test holds the two to the same result.
fn usual_utc(text: &[u8]) -> Option<Millis> {
    let millis = match text.len() {
        20 => 0,
        24 if text[19] == b'.' => digits(&text[20..23])?,
        _ => return None,
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (text.len() - 1, b'Z')];
    if separators.iter().any(|&(at, separator)| text[at] != separator) {
        return None;
    }
    let (year, month, day) = (digits(&text[0..4])?, digits(&text[5..7])?, digits(&text[8..10])?);
    let (hour, minute, second) = (digits(&text[11..13])?, digits(&text[14..16])?, digits(&text[17..19])?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // A leap second (`:60`) is chrono's to read.
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second;
    Some(seconds * SECOND + millis)
}

/// The value of a run of ASCII digits.
fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses a duration such as `1h`, `30s` or `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let duration = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    Millis::try_from(duration.as_millis()).map_err(|_| format!("{text:?}: too long"))
}

/// Displays a millisecond timestamp as RFC 3339 UTC.
pub struct Rfc3339(pub Millis);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_the_millisecond_and_honours_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.0019Z"), Some(1));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.250+01:00"), Some(250));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.9995Z"), Some(-1));
        assert_eq!(parse_rfc3339("2026-11-23T10:15:00"), None);
        assert_eq!(parse_rfc3339("2106-01-01T00:00:00Z"), Some(LATEST));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// The usual shape is read as chrono reads it: any time from
        /// 1970 to 2106, whole seconds or milliseconds, and near misses.
        #[test]
        fn the_usual_shape_reads_as_chrono_reads_it(
            millis in EARLIEST..LATEST,
            whole_seconds: bool,
            edit in proptest::option::of((0usize..24, proptest::sample::select(b"0123456789:-.TZtz +69".to_vec()))),
        ) {
            let format = if whole_seconds { SecondsFormat::Secs } else { SecondsFormat::Millis };
            let mut text = DateTime::<Utc>::from_timestamp_millis(millis).unwrap().to_rfc3339_opts(format, true);
            if let Some((at, byte)) = edit {
                let mut bytes = text.into_bytes();
                let at = at % bytes.len();
                bytes[at] = byte;
                text = String::from_utf8(bytes).unwrap();
            }
            let chrono = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis());
            proptest::prop_assert_eq!(parse_rfc3339(&text), chrono, "{}", text);
            if let Some(read) = usual_utc(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(read), chrono, "{}", text);
            }
        }
    }

    #[test]
    fn the_usual_shape_takes_leap_days_and_leaves_the_rest_to_chrono() {
        assert_eq!(usual_utc(b"2024-02-29T12:00:00.125Z"), parse_rfc3339("2024-02-29T12:00:00.125+00:00"));
        assert_eq!(usual_utc(b"2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(usual_utc(b"2100-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2100-02-29T00:00:00Z"), None);
        assert_eq!(usual_utc(b"2026-11-23T10:15:60Z"), None, "a leap second is chrono's");
        assert_eq!(usual_utc(b"2026-11-23T10:15:00.1234Z"), None);
        assert_eq!(parse_rfc3339("2026-11-23T10:15:00.1234Z"), parse_rfc3339("2026-11-23T10:15:00.123Z"));
    }

    #[test]
    fn windows_and_days_are_utc() {
        let t = parse_rfc3339("2026-11-23T10:15:00.250Z").unwrap();
        assert_eq!(Rfc3339(window_start(t)).to_string(), "2026-11-23T10:00:00.000Z");
        assert_eq!(Rfc3339(day_start(t)).to_string(), "2026-11-23T00:00:00.000Z");
        assert_eq!(window_start(HOUR), HOUR);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Ok(HOUR));
        assert_eq!(parse_duration("1m 30s"), Ok(90 * SECOND));
        assert!(parse_duration("soon").is_err());
    }
}
