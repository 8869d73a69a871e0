//! The hardware-bound form of the trusted state (PROTOCOL.md §6.1): what the vehicle's
//! hardware authenticates, and the crash-safe generation rule.

use crate::fixtures::*;
use ota_core::trust::{check_generation, GenerationCheck, StateSeal, TrustedState};

fn state() -> TrustedState {
    let repo = Repo::standard();
    repo.anchor()
        .verify_update(&repo.update(), None, now())
        .unwrap()
        .state
        .with_installed(HARDWARE_ID, 5)
}

#[test]
fn the_generation_rule_accepts_the_counter_and_one_above_and_nothing_else() {
    use GenerationCheck::*;
    assert_eq!(check_generation(None, 0), Ok(NoStateYet));
    assert_eq!(check_generation(Some(0), 0), Ok(Current));
    assert_eq!(check_generation(Some(7), 7), Ok(Current));
    assert_eq!(check_generation(Some(1), 0), Ok(CompletesInterruptedSave));
    assert_eq!(check_generation(Some(8), 7), Ok(CompletesInterruptedSave));
    let kind = |file, hardware| check_generation(file, hardware).unwrap_err().kind();
    assert_eq!(kind(None, 1), "state_missing");
    assert_eq!(kind(Some(6), 7), "state_rolled_back");
    assert_eq!(kind(Some(0), 7), "state_rolled_back");
    assert_eq!(kind(Some(9), 7), "state_ahead_of_hardware");
    assert_eq!(kind(Some(0), u64::MAX), "state_rolled_back");
    assert_eq!(check_generation(Some(u64::MAX), u64::MAX), Ok(Current));
}

#[test]
fn a_bound_state_round_trips_and_its_message_covers_every_member() {
    let state = state();
    let seal = StateSeal {
        generation: 4,
        mac: [0xab; 32],
    };
    let bytes = state.to_persisted_bound(&seal);
    assert_eq!(
        TrustedState::from_persisted_bound(&bytes).unwrap(),
        (state.clone(), seal)
    );
    // The message changes with the generation and with every floor.
    let message = state.binding_message(4);
    assert_ne!(message, state.binding_message(5));
    assert_ne!(
        message,
        state.with_installed(HARDWARE_ID, 6).binding_message(4)
    );
    assert_ne!(
        message,
        state.with_installed("other-hw", 1).binding_message(4)
    );
    assert_ne!(message, Repo::standard().anchor().binding_message(4));
    assert!(message.starts_with(ota_core::trust::STATE_BINDING_CONTEXT));
}

#[test]
fn bound_and_unbound_files_are_never_read_as_each_other() {
    let state = state();
    let bound = state.to_persisted_bound(&StateSeal {
        generation: 1,
        mac: [1; 32],
    });
    assert!(TrustedState::from_persisted(&bound).is_err());
    assert!(TrustedState::from_persisted_bound(&state.to_persisted()).is_err());
    // A format-2 file without its mac, or with a malformed one, is refused.
    let mut json: serde_json::Value = serde_json::from_slice(&bound).unwrap();
    json.as_object_mut().unwrap().remove("mac");
    assert!(TrustedState::from_persisted_bound(&serde_json::to_vec(&json).unwrap()).is_err());
    for mac in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32)] {
        json["mac"] = mac.clone().into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(TrustedState::from_persisted_bound(&bytes).is_err(), "{mac}");
    }
}
