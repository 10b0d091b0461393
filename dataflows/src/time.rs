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
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
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
