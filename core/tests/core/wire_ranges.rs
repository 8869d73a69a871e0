//! Every timestamp and integer on the wire has one spelling and a stated range
//! (PROTOCOL.md §1, §4): anything else is `malformed_metadata`, never a valid-looking
//! value that a later check (expiry, preconditions, polling) would misread.

use crate::fixtures::*;
use ota_core::error::Error;
use ota_core::metadata::{to_payload, Preconditions, Role};
use ota_core::time::Timestamp;
use ota_core::trust::MetadataUpdate;

/// Spellings that a lenient RFC 3339 parser reads as an instant (or, for `-027`, as a
/// time long past, which would be reported as `expired`).
const LENIENT_SPELLINGS: [&str; 6] = [
    "2027-01-01T00:00:60Z",
    "2027-01-01T00:00: 5Z",
    "2027- 1-01T00:00:00Z",
    "+2027-01-01T00:00:0Z",
    "-027-01-01T00:00:00Z",
    "2027-02-29T00:00:00Z",
];

/// The payload of `doc` with its `expires` value replaced by `spelling`, byte for byte.
fn with_expires(payload: Vec<u8>, spelling: &str) -> Vec<u8> {
    let text = String::from_utf8(payload).unwrap();
    let canonical = format!("\"expires\":\"{}\"", future());
    assert!(text.contains(&canonical), "fixture must expire at future()");
    text.replace(&canonical, &format!("\"expires\":\"{spelling}\""))
        .into_bytes()
}

#[test]
fn lenient_expires_spellings_are_malformed_metadata_not_expired() {
    let repo = Repo::standard();
    for spelling in LENIENT_SPELLINGS {
        let director = with_expires(to_payload(&director_doc(1)), spelling);
        let update = MetadataUpdate {
            director: sign(Role::Director, director, &repo.director_keys()),
            ..repo.update()
        };
        let result = repo
            .anchor()
            .verify_update(&update, Some(&vehicle()), now());
        assert!(
            matches!(
                result,
                Err(Error::MalformedMetadata {
                    role: Role::Director,
                    ..
                })
            ),
            "director expiring {spelling:?}: {result:?}"
        );

        let targets = with_expires(to_payload(&targets_doc(1)), spelling);
        let update = MetadataUpdate {
            targets: sign(Role::Targets, targets, &repo.targets_keys()),
            ..repo.update()
        };
        let result = repo
            .anchor()
            .verify_update(&update, Some(&vehicle()), now());
        assert!(
            matches!(
                result,
                Err(Error::MalformedMetadata {
                    role: Role::Targets,
                    ..
                })
            ),
            "targets expiring {spelling:?}: {result:?}"
        );
    }
}

#[test]
fn calendar_edge_expiry_times_are_accepted() {
    let repo = Repo::standard();
    for spelling in ["2028-02-29T00:00:00Z", "9999-12-31T23:59:59Z"] {
        let mut doc = director_doc(1);
        doc.expires = Timestamp::parse(spelling).unwrap();
        let update = MetadataUpdate {
            director: repo.director(&doc),
            ..repo.update()
        };
        let verified = repo
            .anchor()
            .verify_update(&update, Some(&vehicle()), now())
            .unwrap_or_else(|e| panic!("director expiring {spelling}: {e}"));
        assert_eq!(verified.director.expires.to_string(), spelling);
    }
}

/// The director payload with `"preconditions":{"min_state_of_charge_percent":N}` in its
/// assignment, spelled by hand so that any integer can be written.
fn director_with_state_of_charge(number: &str) -> Vec<u8> {
    let mut doc = director_doc(1);
    doc.assignments[0].preconditions = Some(Preconditions {
        min_state_of_charge_percent: Some(42),
        ..Preconditions::default()
    });
    let text = String::from_utf8(to_payload(&doc)).unwrap();
    let field = "\"min_state_of_charge_percent\":42";
    assert!(text.contains(field));
    text.replace(field, &format!("\"min_state_of_charge_percent\":{number}"))
        .into_bytes()
}

#[test]
fn state_of_charge_above_100_percent_is_malformed_metadata() {
    let repo = Repo::standard();
    let verify = |payload: Vec<u8>| {
        let update = MetadataUpdate {
            director: sign(Role::Director, payload, &repo.director_keys()),
            ..repo.update()
        };
        repo.anchor()
            .verify_update(&update, Some(&vehicle()), now())
    };
    for number in ["0", "100"] {
        let verified = verify(director_with_state_of_charge(number))
            .unwrap_or_else(|e| panic!("state of charge {number}: {e}"));
        let preconditions = verified.assignments[0].assignment.preconditions.clone();
        assert_eq!(
            preconditions.unwrap().min_state_of_charge_percent,
            Some(number.parse().unwrap())
        );
    }
    for number in ["101", "255", "256", "-1", "50.0", "1e2"] {
        let result = verify(director_with_state_of_charge(number));
        assert!(
            matches!(
                result,
                Err(Error::MalformedMetadata {
                    role: Role::Director,
                    ..
                })
            ),
            "state of charge {number}: {result:?}"
        );
    }
}

/// `next_poll_seconds` is 0..=4294967295 (u32) on the wire, as PROTOCOL.md says.
#[test]
fn next_poll_seconds_beyond_the_u32_range_is_malformed_metadata() {
    let repo = Repo::standard();
    let verify = |number: &str| {
        let text = String::from_utf8(to_payload(&director_doc(1))).unwrap();
        let field = "\"next_poll_seconds\":300";
        assert!(text.contains(field));
        let payload = text.replace(field, &format!("\"next_poll_seconds\":{number}"));
        let update = MetadataUpdate {
            director: sign(Role::Director, payload.into_bytes(), &repo.director_keys()),
            ..repo.update()
        };
        repo.anchor()
            .verify_update(&update, Some(&vehicle()), now())
    };
    for number in ["0", "1", "4294967295"] {
        let verified = verify(number).unwrap_or_else(|e| panic!("poll {number}: {e}"));
        assert_eq!(
            u64::from(verified.director.next_poll_seconds),
            number.parse::<u64>().unwrap()
        );
    }
    for number in ["4294967296", "18446744073709551615", "-1", "300.5"] {
        let result = verify(number);
        assert!(
            matches!(
                result,
                Err(Error::MalformedMetadata {
                    role: Role::Director,
                    ..
                })
            ),
            "poll {number}: {result:?}"
        );
    }
}
