//! Timestamps on the wire: RFC 3339, UTC, whole seconds, exactly `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! One spelling per instant keeps independent implementations in agreement; the clock
//! itself is never read here — callers pass `now` in.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

const WIRE_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// The accepted bytes: `D` is one ASCII digit, every other byte is itself.
const WIRE_PATTERN: &[u8; 20] = b"DDDD-DD-DDTDD:DD:DDZ";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Parses the one accepted form, `YYYY-MM-DDTHH:MM:SSZ`: the bytes must match
    /// `[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z` exactly, then month 01–12,
    /// a day that exists in that month, hour 00–23, minute 00–59 and second 00–59 (no
    /// leap second). Nothing is skipped or widened: no signs, spaces or short fields.
    pub fn parse(text: &str) -> Result<Self, String> {
        let malformed = || format!("{text:?} is not of the form YYYY-MM-DDTHH:MM:SSZ");
        let bytes = text.as_bytes();
        if bytes.len() != WIRE_PATTERN.len() {
            return Err(malformed());
        }
        let matches = bytes
            .iter()
            .zip(WIRE_PATTERN)
            .all(|(&byte, &expected)| match expected {
                b'D' => byte.is_ascii_digit(),
                literal => byte == literal,
            });
        if !matches {
            return Err(malformed());
        }
        // Every field is ASCII digits now: read them as plain decimal numbers.
        let field = |range: std::ops::Range<usize>| {
            bytes[range]
                .iter()
                .fold(0u32, |acc, digit| acc * 10 + u32::from(digit - b'0'))
        };
        let (year, month, day) = (field(0..4), field(5..7), field(8..10));
        let (hour, minute, second) = (field(11..13), field(14..16), field(17..19));
        let out_of_range = |what: &str| format!("{text:?} is not a valid UTC time: {what}");
        // `year` has four digits, so it fits in i32.
        let date = NaiveDate::from_ymd_opt(year as i32, month, day)
            .ok_or_else(|| out_of_range("no such date"))?;
        if second > 59 {
            return Err(out_of_range(
                "second above 59 (leap seconds are not accepted)",
            ));
        }
        let time = NaiveTime::from_hms_opt(hour, minute, second)
            .ok_or_else(|| out_of_range("hour, minute or second out of range"))?;
        Ok(Timestamp(NaiveDateTime::new(date, time).and_utc()))
    }

    /// Any instant, truncated to whole seconds.
    pub fn from_datetime(time: DateTime<Utc>) -> Self {
        let secs = time.timestamp();
        Timestamp(DateTime::from_timestamp(secs, 0).unwrap_or(time))
    }

    pub fn from_unix_seconds(secs: i64) -> Option<Self> {
        DateTime::from_timestamp(secs, 0).map(Timestamp)
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }

    pub fn datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// This instant plus `secs` seconds (saturating at the representable range).
    pub fn plus_seconds(&self, secs: i64) -> Self {
        Timestamp::from_unix_seconds(self.unix_seconds().saturating_add(secs)).unwrap_or(*self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format(WIRE_FORMAT))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_utc_form_parses() {
        let cases = [
            ("2027-01-02T03:04:05Z", true),
            ("2027-01-02T03:04:05+00:00", false),
            ("2027-01-02T03:04:05.5Z", false),
            ("2027-01-02t03:04:05z", false),
            ("2027-02-30T03:04:05Z", false),
            ("2027-01-02 03:04:05Z", false),
        ];
        for (text, ok) in cases {
            assert_eq!(Timestamp::parse(text).is_ok(), ok, "{text}");
        }
        let t = Timestamp::parse("2027-01-02T03:04:05Z").unwrap();
        assert_eq!(
            t.to_string(),
            "2027-01-02T03:04:05Z",
            "display must round-trip"
        );
    }

    /// Spellings chrono's lenient parser reads as an instant (or as a negative year) must
    /// be refused as malformed; the edge cases of the calendar must still parse.
    #[test]
    fn lenient_timestamp_spellings_are_refused_and_calendar_edges_parse() {
        let refused = [
            "2027-01-01T00:00:60Z", // leap second at any minute
            "2027-06-30T23:59:60Z", // even where a real leap second could be
            "2027-01-01T00:00:61Z",
            "2027-01-01T00:00: 5Z", // space before a number
            "2027- 1-01T00:00:00Z",
            "2027-01-01T 0:00:00Z",
            "+2027-01-01T00:00:0Z", // signed year, one-digit second
            "-027-01-01T00:00:00Z", // negative year
            "2027-1-01T00:00:00ZZ",
            "2027-01-01T24:00:00Z",
            "2027-01-01T23:60:00Z",
            "2027-00-01T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-01-00T00:00:00Z",
            "2027-01-32T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "2027-02-29T00:00:00Z",  // not a leap year
            "2100-02-29T00:00:00Z",  // century, not a leap year
            "２027-01-01T00:00:00Z", // non-ASCII digit
            "2027-01-01T00:00:00Z\n",
            "",
        ];
        for text in refused {
            assert!(Timestamp::parse(text).is_err(), "{text:?} must be refused");
        }
        let accepted = [
            ("2028-02-29T00:00:00Z", 1_835_395_200),
            ("2000-02-29T12:00:00Z", 951_825_600),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
            ("1970-01-01T00:00:00Z", 0),
            ("2027-12-31T23:59:59Z", 1_830_297_599),
        ];
        for (text, unix) in accepted {
            let parsed = Timestamp::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.unix_seconds(), unix, "{text}");
            assert_eq!(parsed.to_string(), text, "{text} must round-trip");
        }
    }

    #[test]
    fn unix_seconds_convert_both_ways_and_plus_seconds_saturates() {
        let parse = |text: &str| Timestamp::parse(text).unwrap();
        assert_eq!(
            Timestamp::from_unix_seconds(0),
            Some(parse("1970-01-01T00:00:00Z"))
        );
        let end_of_2027 = parse("2027-12-31T23:59:59Z");
        assert_eq!(
            Timestamp::from_unix_seconds(1_830_297_599),
            Some(end_of_2027)
        );
        assert_eq!(Timestamp::from_unix_seconds(i64::MAX), None);
        assert_eq!(end_of_2027.plus_seconds(1), parse("2028-01-01T00:00:00Z"));
        assert_eq!(end_of_2027.plus_seconds(-59), parse("2027-12-31T23:59:00Z"));
        assert_eq!(
            end_of_2027.plus_seconds(i64::MAX),
            end_of_2027,
            "an instant past chrono's range leaves the time unchanged"
        );
    }

    #[test]
    fn debug_prints_the_wire_form() {
        let t = Timestamp::parse("2027-01-02T03:04:05Z").unwrap();
        assert_eq!(format!("{t:?}"), "2027-01-02T03:04:05Z");
        assert_eq!(
            format!("{:?}", Some(t)),
            "Some(2027-01-02T03:04:05Z)",
            "error messages show timestamps as on the wire"
        );
    }
}
