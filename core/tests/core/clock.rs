//! Clock rollback (PROTOCOL.md §5 step 0): the trusted state keeps the latest time at
//! which it verified an update; a `now` earlier than that by more than the stated skew
//! is refused, and verification never lowers it.

use crate::fixtures::*;
use ota_core::error::Error;
use ota_core::metadata::Role;
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState, MAX_CLOCK_SKEW_SECONDS};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

/// The standard repo's state after verifying director `version` at `now`.
fn verified_at(repo: &Repo, state: &TrustedState, version: u64, now: Timestamp) -> TrustedState {
    let update = MetadataUpdate {
        roots: vec![],
        targets: repo.targets(&targets_doc(1)),
        director: repo.director(&director_doc(version)),
    };
    state
        .verify_update(&update, Some(&vehicle()), now)
        .unwrap()
        .state
}

#[test]
fn clock_set_back_to_revive_an_expired_director_is_refused() {
    let repo = Repo::standard();
    // Director v2 expired on 2026-05-20; the vehicle verified something on 2026-06-01.
    let state = verified_at(&repo, &repo.anchor(), 1, now());
    let mut expired = director_doc(2);
    expired.expires = at("2026-05-20T00:00:00Z");
    let update = MetadataUpdate {
        roots: vec![],
        targets: repo.targets(&targets_doc(1)),
        director: repo.director(&expired),
    };
    // At the real time it is expired...
    assert!(matches!(
        state.verify_update(&update, Some(&vehicle()), now()),
        Err(Error::Expired {
            role: Role::Director,
            ..
        })
    ));
    // ...and with the clock set back before its expiry it is a clock rollback.
    let set_back = at("2026-05-10T00:00:00Z");
    let result = state.verify_update(&update, Some(&vehicle()), set_back);
    assert!(
        matches!(&result, Err(Error::ClockRollback { latest, now: n, .. }) if *latest == now() && *n == set_back),
        "{result:?}"
    );
    assert_eq!(result.unwrap_err().kind(), "clock_rollback");
    // The anchor has verified nothing, so it has no floor: there the same update at the
    // same set-back time is accepted, so the refusal above is the floor's doing.
    assert!(repo
        .anchor()
        .verify_update(&update, Some(&vehicle()), set_back)
        .is_ok());
}

#[test]
fn clock_skew_boundary_is_exactly_the_stated_skew() {
    let repo = Repo::standard();
    let state = verified_at(&repo, &repo.anchor(), 1, now());
    let update = MetadataUpdate {
        roots: vec![],
        targets: repo.targets(&targets_doc(1)),
        director: repo.director(&director_doc(2)),
    };
    let within = now().plus_seconds(-MAX_CLOCK_SKEW_SECONDS);
    assert!(state
        .verify_update(&update, Some(&vehicle()), within)
        .is_ok());
    let beyond = now().plus_seconds(-MAX_CLOCK_SKEW_SECONDS - 1);
    assert!(matches!(
        state.verify_update(&update, Some(&vehicle()), beyond),
        Err(Error::ClockRollback { .. })
    ));
}

#[test]
fn clock_rollback_within_skew_never_lowers_the_verified_time() {
    let repo = Repo::standard();
    let state = verified_at(&repo, &repo.anchor(), 1, now());
    assert_eq!(state.verified_time(), Some(now()));
    // Accepted a little earlier (within the skew): the floor stays where it was, so a
    // series of small steps back cannot walk it down.
    let earlier = now().plus_seconds(-MAX_CLOCK_SKEW_SECONDS);
    let state = verified_at(&repo, &state, 2, earlier);
    assert_eq!(state.verified_time(), Some(now()));
    let later = now().plus_seconds(3600);
    let state = verified_at(&repo, &state, 3, later);
    assert_eq!(state.verified_time(), Some(later));
    // A refused update (any reason) leaves the floor alone, and committing an image too.
    let state = state.with_installed(HARDWARE_ID, 5);
    assert_eq!(state.verified_time(), Some(later));
}

#[test]
fn clock_floor_survives_persistence_and_an_old_state_file_has_none() {
    let repo = Repo::standard();
    let state = verified_at(&repo, &repo.anchor(), 1, now());
    let restored = TrustedState::from_persisted(&state.to_persisted()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.verified_time(), Some(now()));
    // A state file written before the floor existed (no member) loads with no floor.
    let mut json: serde_json::Value = serde_json::from_slice(&state.to_persisted()).unwrap();
    json.as_object_mut().unwrap().remove("verified_time");
    let old = TrustedState::from_persisted(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(old.verified_time(), None);
}
