//! Timestamps on the wire: RFC 3339, UTC, whole seconds, exactly `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! One spelling per instant keeps independent implementations in agreement; the clock
//! itself is never read here — callers pass `now` in.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

const WIRE_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Parses the one accepted form, `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() != 20 || !text.ends_with('Z') {
            return Err(format!("{text:?} is not of the form YYYY-MM-DDTHH:MM:SSZ"));
        }
        NaiveDateTime::parse_from_str(text, WIRE_FORMAT)
            .map(|naive| Timestamp(naive.and_utc()))
            .map_err(|e| format!("{text:?} is not a valid UTC time: {e}"))
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
}
