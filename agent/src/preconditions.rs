//! Preconditions of an assignment (parked, state of charge, network) against what the
//! vehicle-state provider reports. The check is pure; the provider here is a JSON file
//! (`{"parked": true, "state_of_charge_percent": 80, "network": "wifi"}`) that a CAN
//! bridge or the test keeps up to date.

use ota_core::metadata::Preconditions;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the vehicle reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VehicleState {
    pub parked: Option<bool>,
    pub state_of_charge_percent: Option<u8>,
    pub network: Option<String>,
}

/// The first unmet condition, named for the check-in's `agent_state`, or `None` when
/// every condition holds. A condition the provider does not report is unmet.
pub fn first_unmet(required: &Preconditions, state: &VehicleState) -> Option<String> {
    if required.parked && state.parked != Some(true) {
        return Some("parked".to_owned());
    }
    if let Some(min) = required.min_state_of_charge_percent {
        if state.state_of_charge_percent.is_none_or(|soc| soc < min) {
            return Some(format!("state_of_charge>={min}"));
        }
    }
    if let Some(network) = &required.network {
        if state.network.as_deref() != Some(network.as_str()) {
            return Some(format!("network={network}"));
        }
    }
    None
}

/// Reads the provider file and checks `required`; `Err` names what is unmet.
pub fn evaluate(required: &Preconditions, provider: Option<&Path>) -> Result<(), String> {
    if required.is_unconstrained() {
        return Ok(());
    }
    let Some(path) = provider else {
        return Err("vehicle_state_unavailable".to_owned());
    };
    let state = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<VehicleState>(&bytes).ok());
    match state {
        Some(state) => first_unmet(required, &state).map_or(Ok(()), Err),
        None => Err("vehicle_state_unavailable".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(parked: bool, soc: u8, network: &str) -> VehicleState {
        VehicleState {
            parked: Some(parked),
            state_of_charge_percent: Some(soc),
            network: Some(network.to_owned()),
        }
    }

    #[test]
    fn each_condition_is_checked_and_named() {
        let required = Preconditions {
            parked: true,
            min_state_of_charge_percent: Some(30),
            network: Some("wifi".to_owned()),
        };
        let cases = [
            (state(true, 80, "wifi"), None),
            (state(false, 80, "wifi"), Some("parked")),
            (state(true, 29, "wifi"), Some("state_of_charge>=30")),
            (state(true, 30, "lte"), Some("network=wifi")),
            (VehicleState::default(), Some("parked")),
        ];
        for (vehicle, expected) in cases {
            assert_eq!(
                first_unmet(&required, &vehicle).as_deref(),
                expected,
                "{vehicle:?}"
            );
        }
    }

    #[test]
    fn the_provider_file_is_read_and_a_missing_one_is_unmet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vehicle.json");
        let required = Preconditions {
            parked: true,
            ..Preconditions::default()
        };
        assert_eq!(
            evaluate(&required, Some(&path)),
            Err("vehicle_state_unavailable".to_owned())
        );
        std::fs::write(&path, br#"{"parked": false}"#).unwrap();
        assert_eq!(evaluate(&required, Some(&path)), Err("parked".to_owned()));
        std::fs::write(&path, br#"{"parked": true}"#).unwrap();
        assert_eq!(evaluate(&required, Some(&path)), Ok(()));
        assert_eq!(evaluate(&Preconditions::default(), None), Ok(()));
    }
}
