//! The rules for every value the API accepts, one per kind of value, applied at the edge
//! (request parsing) before anything reaches the engine or the database. A refusal is a
//! 422 problem naming the field, what was expected and what was given; the OpenAPI
//! document states the same limits from the constants here.
//!
//! Kinds of text:
//! - **names** (image, release and rollout names, versions, hardware ids, ECU names,
//!   tags, phase names, the `network` precondition): 1–64 of `[A-Za-z0-9._+-]`, so they
//!   are safe in URLs, log lines, terminals and MQTT topics — no NUL, no control
//!   characters, no escape sequences;
//! - **vehicle ids**: [`ota_core::protocol::is_valid_vehicle_id`], the rule the agent,
//!   the MQTT topics and the vehicle credential use;
//! - **resource ids** (`img_…`, `rel_…`, `ro_…`): [`super::extract::parse_id`].
//!
//! Integers are stored as SQL `BIGINT` (signed 64-bit): every one has a range within
//! `0..=i64::MAX`, so nothing wraps on the way to the database.

use super::error::ApiError;
use crate::rollout::FieldError;
use ota_core::protocol::is_valid_vehicle_id;
use std::fmt::Display;

/// Longest name, in bytes (all ASCII).
pub const MAX_NAME_LEN: usize = 64;
/// What a name may contain, as a regular expression (the OpenAPI `pattern`).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9._+-]{1,64}$";
/// What a vehicle id may contain, as a regular expression (the OpenAPI `pattern`).
pub const VEHICLE_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// An image name: a name that starts with a letter or digit (PROTOCOL.md §4.2).
pub const IMAGE_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$";
const NAME_EXPECTED: &str = "1-64 characters of A-Z a-z 0-9 . _ - +";
const VEHICLE_ID_EXPECTED: &str = "1-64 characters of A-Z a-z 0-9 . _ -";

/// Most tags on one vehicle.
pub const MAX_TAGS: usize = 32;
/// Most entries in each selector list except `vehicle_ids`.
pub const MAX_SELECTOR_VALUES: usize = 64;
/// Most vehicle ids a selector may name.
pub const MAX_SELECTOR_VEHICLES: usize = 10_000;
/// Highest `security_version` (and any other stored counter): `i64::MAX`.
pub const MAX_COUNTER: u64 = i64::MAX as u64;
/// Longest phase soak and retry backoff: one year.
pub const MAX_DURATION_SECONDS: u64 = 366 * 86_400;
/// Range of `expires_in_days` of server-signed targets.
pub const EXPIRES_IN_DAYS: (u32, u32) = (1, 3650);
/// Range of `limit` on list routes, and its default.
pub const LIMIT_RANGE: (i64, i64) = (1, 1000);
pub const DEFAULT_LIMIT: i64 = 100;

/// Most ECUs of one vehicle.
pub const MAX_ECUS: usize = 32;
/// Most phases of one rollout.
pub const MAX_PHASES: usize = 20;

/// The OpenAPI schemas of the values above, built from the same constants, so the
/// document states exactly the rules this module enforces. Fields of request and
/// response types point at them with `#[schema(value_type = ...)]`.
pub mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
    use utoipa::openapi::RefOr;
    use utoipa::{PartialSchema, ToSchema};

    /// Declares a named schema (a component every use refers to).
    macro_rules! named_schema {
        ($(#[$doc:meta])* $name:ident => $build:expr) => {
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;
            impl PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    let builder: ObjectBuilder = $build;
                    builder.into()
                }
            }
            impl ToSchema for $name {}
        };
    }

    fn text(pattern: &str, description: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .description(Some(description))
    }

    fn integer(min: u64, max: u64) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(min as f64))
            .maximum(Some(max as f64))
    }

    named_schema!(
        /// A name: image, release, rollout and phase names, versions, hardware ids, ECUs, tags.
        Name => text(super::NAME_PATTERN, super::NAME_EXPECTED)
            .min_length(Some(1))
            .max_length(Some(super::MAX_NAME_LEN))
    );
    named_schema!(
        /// A vehicle id (the rule of the agent, the MQTT topics and the vehicle credential).
        VehicleId => text(super::VEHICLE_ID_PATTERN, super::VEHICLE_ID_EXPECTED)
            .min_length(Some(1))
            .max_length(Some(super::MAX_NAME_LEN))
    );
    named_schema!(
        /// An image name: a name starting with a letter or digit.
        ImageName => text(super::IMAGE_NAME_PATTERN, "a name starting with a letter or digit")
            .min_length(Some(1))
            .max_length(Some(super::MAX_NAME_LEN))
    );
    named_schema!(
        /// A SHA-256 digest: 64 lowercase hex digits.
        Sha256Hex => text("^[0-9a-f]{64}$", "64 lowercase hex digits")
            .min_length(Some(64))
            .max_length(Some(64))
    );
    named_schema!(
        /// A raw Ed25519 public key: 64 lowercase hex digits.
        PublicKeyHex => text("^[0-9a-f]{64}$", "64 lowercase hex digits (raw Ed25519 public key)")
            .min_length(Some(64))
            .max_length(Some(64))
    );
    named_schema!(
        /// A point in time, RFC 3339 UTC with milliseconds.
        Timestamp => ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
    );
    named_schema!(
        /// A stored counter (`security_version`, metadata versions): `0..=2^63-1`.
        Counter => integer(0, super::MAX_COUNTER)
    );
    named_schema!(
        /// A duration in seconds: `0..=` one year.
        DurationSeconds => integer(0, super::MAX_DURATION_SECONDS)
    );
    named_schema!(
        /// A byte length or a count.
        Count => integer(0, super::MAX_COUNTER)
    );
    named_schema!(
        /// How many entries a list returns.
        Limit => integer(super::LIMIT_RANGE.0 as u64, super::LIMIT_RANGE.1 as u64)
            .default(Some(super::DEFAULT_LIMIT.into()))
    );
    named_schema!(
        /// Raw bytes (an image, a blob).
        Binary => ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)))
    );
    named_schema!(
        /// A percentage, `0..=100`.
        Percent => ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0.0))
            .maximum(Some(100.0))
    );

    named_schema!(
        /// A list cursor: the `next_cursor` of the previous page, opaque (base64url).
        /// A cursor another list, order or filter made is refused with 400.
        Cursor => text("^[A-Za-z0-9_-]+$", "the next_cursor of the previous page")
            .min_length(Some(1))
            .max_length(Some(super::super::page::MAX_CURSOR_LEN))
    );
    named_schema!(
        /// The order of a list: ascending (the default) or descending.
        Order => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["asc", "desc"]))
            .default(Some("asc".into()))
    );
    named_schema!(
        /// The vehicle list's sort key: id, or last check-in (never-seen vehicles
        /// sort as the oldest), then id.
        VehicleSort => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["id", "last_seen_at"]))
            .default(Some("id".into()))
    );
    named_schema!(
        /// A cohort salt: 32 lowercase hex digits (16 bytes).
        Salt => text("^[0-9a-f]{32}$", "32 lowercase hex digits")
            .min_length(Some(32))
            .max_length(Some(32))
    );
    named_schema!(
        /// A set of tags, comma-separated: distinct names.
        TagSet => text(
            &format!("^{}(,{})*$", bare(super::NAME_PATTERN), bare(super::NAME_PATTERN)),
            "comma-separated distinct names",
        )
        .min_length(Some(1))
    );
    named_schema!(
        /// An audit filter: the actor, action or subject id, exactly.
        AuditFilterText => text("^[^\\u0000-\\u001f\\u007f-\\u009f]+$", "text without control characters")
            .min_length(Some(1))
            .max_length(Some(super::super::audit::MAX_FILTER_LEN))
    );
    named_schema!(
        /// A point in time to the second, UTC: `YYYY-MM-DDTHH:MM:SSZ`.
        UtcSecond => text(
            "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$",
            "YYYY-MM-DDTHH:MM:SSZ, a date the month has",
        )
    );
    named_schema!(
        /// The index of a rollout phase.
        PhaseIndex => integer(0, crate::rollout::MAX_PHASES as u64 - 1)
    );

    /// A whole-string pattern without its anchors, to compose.
    fn bare(pattern: &str) -> &str {
        pattern.trim_start_matches('^').trim_end_matches('$')
    }

    /// The id of a resource: `<prefix>_` and 16 lowercase hex digits
    /// (`super::super::extract::parse_id`).
    macro_rules! id_schema {
        ($($name:ident = $prefix:literal),* $(,)?) => {$(
            named_schema!(
                #[doc = concat!("An id: `", $prefix, "_` and 16 lowercase hex digits.")]
                $name => text(
                    concat!("^", $prefix, "_[0-9a-f]{16}$"),
                    concat!($prefix, "_ followed by 16 lowercase hex digits"),
                )
                .min_length(Some($prefix.len() + 17))
                .max_length(Some($prefix.len() + 17))
            );
        )*};
    }
    /// A list of distinct names, as a rollout selector takes them.
    pub fn selector_names() -> utoipa::openapi::schema::ArrayBuilder {
        distinct(Name::schema(), super::MAX_SELECTOR_VALUES)
    }

    /// A list of distinct vehicle ids, as a rollout selector takes them.
    pub fn selector_vehicle_ids() -> utoipa::openapi::schema::ArrayBuilder {
        distinct(VehicleId::schema(), super::MAX_SELECTOR_VEHICLES)
    }

    /// The tags of a vehicle.
    pub fn tags() -> utoipa::openapi::schema::ArrayBuilder {
        distinct(Name::schema(), super::MAX_TAGS)
    }

    fn distinct(items: RefOr<Schema>, max: usize) -> utoipa::openapi::schema::ArrayBuilder {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(items)
            .max_items(Some(max))
            .unique_items(true)
    }

    /// `ota_core::metadata::Preconditions` as the API takes it (the type lives in the
    /// IO-free core, which does not depend on the documentation crate).
    #[derive(Debug, ToSchema)]
    #[schema(as = Preconditions)]
    #[allow(dead_code)]
    pub struct PreconditionsSchema {
        /// The vehicle must be parked.
        #[schema(default = false, required = false)]
        parked: bool,
        /// Minimum state of charge of the battery.
        #[schema(minimum = 0, maximum = 100)]
        min_state_of_charge_percent: Option<u8>,
        /// Required network kind, e.g. `wifi`.
        #[schema(value_type = Option<Name>)]
        network: Option<String>,
    }

    id_schema!(
        ImageId = "img",
        ReleaseId = "rel",
        RolloutId = "ro",
        TokenId = "tok",
        DeltaJobId = "dj",
    );
}

/// Collects every problem of one request, so a caller can fix them together.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn push(
        &mut self,
        field: impl Into<String>,
        expected: impl Into<String>,
        got: impl Display,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            expected: expected.into(),
            got: got.to_string(),
        });
    }

    /// A name (see the module documentation).
    pub fn name(&mut self, field: impl Into<String>, value: &str) {
        if !is_name(value) {
            self.push(field, NAME_EXPECTED, shown(value));
        }
    }

    pub fn vehicle_id(&mut self, field: impl Into<String>, value: &str) {
        if !is_valid_vehicle_id(value) {
            self.push(field, VEHICLE_ID_EXPECTED, shown(value));
        }
    }

    /// A list of names: at most `max` entries, each a name, no duplicates.
    pub fn names(&mut self, field: &str, values: &[String], max: usize) {
        self.list(field, values, max, |p, f, v| p.name(f, v));
    }

    /// A list of vehicle ids: at most `max`, each valid, no duplicates.
    pub fn vehicle_ids(&mut self, field: &str, values: &[String], max: usize) {
        self.list(field, values, max, |p, f, v| p.vehicle_id(f, v));
    }

    fn list(
        &mut self,
        field: &str,
        values: &[String],
        max: usize,
        each: impl Fn(&mut Problems, String, &str),
    ) {
        if values.len() > max {
            self.push(field, format!("at most {max} entries"), values.len());
            return;
        }
        let mut seen = std::collections::HashMap::new();
        for (i, value) in values.iter().enumerate() {
            each(self, format!("{field}[{i}]"), value);
            if let Some(first) = seen.insert(value.as_str(), i) {
                self.push(
                    format!("{field}[{i}]"),
                    format!("no duplicates (same as {field}[{first}])"),
                    shown(value),
                );
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        field: impl Into<String>,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.push(field, format!("an integer in {min}..={max}"), value);
        }
    }

    pub fn into_result(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.0))
        }
    }
}

/// Whether `value` is a name: 1–64 of `[A-Za-z0-9._+-]`.
pub fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// A refused value as shown back in a problem: quoted and escaped (control characters
/// never reach a log or a terminal raw), and cut after 80 characters.
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    let count = value.chars().count();
    if count <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}… ({count} characters)")
    }
}

/// One name, as a result.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    let mut problems = Problems::default();
    problems.name(field, value);
    problems.into_result()
}

/// One vehicle id, as a result.
pub fn vehicle_id(field: &str, value: &str) -> Result<(), ApiError> {
    let mut problems = Problems::default();
    problems.vehicle_id(field, value);
    problems.into_result()
}

/// `2 * N` lowercase hex digits as bytes. The refusal says what was wrong with the
/// value once (its length, or the characters) rather than repeating the expectation.
pub fn lower_hex<const N: usize>(
    field: &str,
    expected: &str,
    text: &str,
) -> Result<[u8; N], ApiError> {
    ota_core::encoding::parse_lower_hex::<N>(text).map_err(|_| {
        let got = if text.len() != 2 * N {
            format!("{} characters", text.len())
        } else {
            format!("characters other than 0-9 a-f: {}", shown(text))
        };
        ApiError::invalid(field, expected, got)
    })
}

/// The `limit` of a list route: default [`DEFAULT_LIMIT`], within [`LIMIT_RANGE`].
pub fn limit(value: Option<i64>) -> Result<i64, ApiError> {
    let limit = value.unwrap_or(DEFAULT_LIMIT);
    let mut problems = Problems::default();
    problems.range("limit", limit, LIMIT_RANGE.0, LIMIT_RANGE.1);
    problems.into_result().map(|()| limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_control_characters_and_overlong_text() {
        for good in ["a", "canary", "v1.2.3+build-4_x", &"a".repeat(64)] {
            assert!(is_name(good), "{good:?}");
        }
        for bad in [
            "",
            "a\0b",
            "\u{1b}[2J",
            "with space",
            "ä",
            &"a".repeat(65),
            "a/b",
            "\u{9b}",
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn shown_values_are_escaped_and_cut() {
        assert_eq!(shown("a\u{1b}b"), "\"a\\u{1b}b\"");
        let long = "x".repeat(5000);
        let text = shown(&long);
        assert!(text.len() < 120, "{text}");
        assert!(text.ends_with("(5000 characters)"), "{text}");
    }

    #[test]
    fn lists_refuse_duplicates_and_too_many_entries() {
        let mut p = Problems::default();
        p.names("tags", &["a".into(), "b".into(), "a".into()], 8);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].field, "tags[2]");
        let mut p = Problems::default();
        p.names("tags", &vec!["a".to_owned(); 9], 8);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].field, "tags");
    }

    #[test]
    fn ranges_are_inclusive() {
        let mut p = Problems::default();
        p.range("x", MAX_COUNTER, 0, MAX_COUNTER);
        p.range("y", 0u64, 0, MAX_COUNTER);
        assert!(p.0.is_empty());
        p.range("z", MAX_COUNTER + 1, 0, MAX_COUNTER);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].expected, format!("an integer in 0..={MAX_COUNTER}"));
    }
}
