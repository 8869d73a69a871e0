//! `director`: what one vehicle must install now (signed online by the server).

use super::{impl_role_document, Role, SPEC_VERSION};
use crate::encoding::Sha256Digest;
use crate::time::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

/// The full image an ECU must end up running. Must match the targets entry of `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    pub name: String,
    pub version: String,
    pub length: u64,
    pub sha256: Sha256Digest,
    /// Where to download the full image (`/v1/blobs/{sha256}` on the server).
    pub url: String,
}

/// A delta from the image the ECU runs now to [`ImageRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaRef {
    /// The image the delta applies to: the agent refuses it unless its active slot is this.
    pub source_sha256: Sha256Digest,
    pub source_length: u64,
    /// The delta blob itself.
    pub length: u64,
    pub sha256: Sha256Digest,
    pub url: String,
}

/// Vehicle conditions that must hold before the agent starts installing (it reports
/// `waiting` with the unmet condition meanwhile). Absent members impose nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preconditions {
    /// The vehicle must be parked.
    pub parked: bool,
    /// Minimum state of charge of the traction (or 12 V) battery, 0–100 (a larger
    /// number is malformed metadata, never "impossible to satisfy").
    #[serde(deserialize_with = "percent")]
    pub min_state_of_charge_percent: Option<u8>,
    /// Required network kind, e.g. `"wifi"`; absent: any network.
    pub network: Option<String>,
}

/// Highest value of a percentage on the wire.
pub const MAX_PERCENT: u8 = 100;

/// An optional integer 0–100: `null` or absent is `None`; 101 and above are refused.
fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let value = Option::<u8>::deserialize(deserializer)?;
    match value {
        Some(percent) if percent > MAX_PERCENT => Err(serde::de::Error::custom(format!(
            "min_state_of_charge_percent is {percent}, above {MAX_PERCENT}"
        ))),
        _ => Ok(value),
    }
}

impl Preconditions {
    /// True when nothing is required.
    pub fn is_unconstrained(&self) -> bool {
        *self == Preconditions::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The ECU's name within the vehicle, e.g. `"main"`, `"tcu"`.
    pub ecu: String,
    pub hardware_id: String,
    /// The deployment this assignment belongs to (progress events carry it back).
    pub deployment_id: String,
    pub image: ImageRef,
    /// Absent when the full image must be downloaded.
    pub delta: Option<DeltaRef>,
    /// Absent when the installation may start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preconditions: Option<Preconditions>,
}

/// The targets document a director was built against: its `version` and the SHA-256 of
/// its exact payload bytes. A verifier refuses a director whose binding is not the
/// targets document it is given (`targets_mismatch`), so an old, still-unexpired targets
/// document cannot be paired with a fresh director (PROTOCOL.md §4.3, §5 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsBinding {
    /// 0 only when no targets document exists yet: such a director never verifies.
    pub version: u64,
    pub payload_sha256: Sha256Digest,
}

impl TargetsBinding {
    /// The binding to a targets document whose exact payload bytes are `payload`.
    pub fn of_payload(version: u64, payload: &[u8]) -> TargetsBinding {
        TargetsBinding {
            version,
            payload_sha256: Sha256Digest::of(payload),
        }
    }

    /// The binding to a signed targets envelope (wire bytes). Signatures are not
    /// checked: the signer binds to what it will publish; the verifier checks both.
    pub fn of_envelope(envelope: &[u8]) -> Result<TargetsBinding, crate::Error> {
        let envelope = crate::envelope::Envelope::parse(envelope)?;
        let doc: super::TargetsMetadata = super::parse_document(&envelope.payload)?;
        Ok(TargetsBinding::of_payload(doc.version, &envelope.payload))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorMetadata {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Timestamp,
    /// The vehicle's opaque id (never the VIN).
    pub vehicle_id: String,
    /// The targets document this director was built against.
    pub targets: TargetsBinding,
    /// Empty: nothing to do.
    pub assignments: Vec<Assignment>,
    /// When to check in next, in seconds (the agent adds jitter): 0–4294967295 on the
    /// wire (a larger number is malformed metadata); agents treat 0 as their minimum.
    pub next_poll_seconds: u32,
}
impl_role_document!(DirectorMetadata, Role::Director);

impl DirectorMetadata {
    /// Every assigned image name obeys [`super::is_valid_image_name`].
    fn check_members(&self) -> Result<(), String> {
        self.assignments
            .iter()
            .try_for_each(|a| super::check_image_name(&a.image.name))
    }

    pub fn new(
        version: u64,
        expires: Timestamp,
        vehicle_id: impl Into<String>,
        targets: TargetsBinding,
        assignments: Vec<Assignment>,
        next_poll_seconds: u32,
    ) -> Self {
        DirectorMetadata {
            type_: Role::Director.as_str().to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires,
            vehicle_id: vehicle_id.into(),
            targets,
            assignments,
            next_poll_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_are_unconstrained_only_when_none_is_required() {
        assert!(Preconditions::default().is_unconstrained());
        for required in [
            Preconditions {
                parked: true,
                ..Preconditions::default()
            },
            Preconditions {
                min_state_of_charge_percent: Some(0),
                ..Preconditions::default()
            },
            Preconditions {
                network: Some("wifi".to_owned()),
                ..Preconditions::default()
            },
        ] {
            assert!(
                !required.is_unconstrained(),
                "{required:?} requires something"
            );
        }
    }
}
