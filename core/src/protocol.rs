//! The vehicle protocol (DESIGN §5): MQTT topic names and the signed messages vehicles
//! and the server exchange over them.
//!
//! Every message travels inside a DSSE [`Envelope`]. Vehicles sign check-ins and
//! progress events with their own device key; the server signs directives (director
//! metadata) and control messages with the director key. The vehicle id in a topic is
//! the opaque id assigned at provisioning, never the VIN.

use crate::encoding::{from_slice_exact, Sha256Digest};
use crate::envelope::Envelope;
use crate::key::{PublicKey, SigningKey};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Payload type of a vehicle's check-in.
pub const PAYLOAD_TYPE_CHECKIN: &str = "application/vnd.ota.checkin+json";
/// Payload type of a vehicle's progress event.
pub const PAYLOAD_TYPE_PROGRESS: &str = "application/vnd.ota.progress+json";
/// Payload type of a server control message.
pub const PAYLOAD_TYPE_CONTROL: &str = "application/vnd.ota.control+json";

/// Topic prefix shared by every vehicle topic.
pub const TOPIC_ROOT: &str = "ota/v1";
/// The shared subscription several server replicas use to split check-ins between them.
pub const SHARED_CHECKIN_SUBSCRIPTION: &str = "$share/ota-server/ota/v1/+/checkin";
/// The shared subscription for progress events.
pub const SHARED_PROGRESS_SUBSCRIPTION: &str = "$share/ota-server/ota/v1/+/progress";

/// The four per-vehicle topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    CheckIn,
    Directive,
    Progress,
    Control,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::CheckIn => "checkin",
            Channel::Directive => "directive",
            Channel::Progress => "progress",
            Channel::Control => "control",
        }
    }
}

/// `ota/v1/{vid}/{channel}`.
pub fn topic(vehicle_id: &str, channel: Channel) -> String {
    format!("{TOPIC_ROOT}/{vehicle_id}/{}", channel.as_str())
}

/// Splits `ota/v1/{vid}/{channel}` into the vehicle id and channel; `None` for any other
/// topic (including vehicle ids containing `/`, `+` or `#`, which cannot be provisioned).
pub fn parse_topic(topic: &str) -> Option<(&str, Channel)> {
    let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
    let (vehicle_id, channel) = rest.split_once('/')?;
    if !is_valid_vehicle_id(vehicle_id) {
        return None;
    }
    let channel = match channel {
        "checkin" => Channel::CheckIn,
        "directive" => Channel::Directive,
        "progress" => Channel::Progress,
        "control" => Channel::Control,
        _ => return None,
    };
    Some((vehicle_id, channel))
}

/// Vehicle ids are 1–64 characters of `[A-Za-z0-9._-]`: safe inside an MQTT topic level,
/// a URL path segment and a log line.
pub fn is_valid_vehicle_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The image an ECU currently runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledImage {
    pub version: String,
    pub sha256: Sha256Digest,
    pub length: u64,
}

/// One ECU's state in a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuReport {
    pub ecu: String,
    pub hardware_id: String,
    pub installed: Option<InstalledImage>,
    /// Which A/B slot is active (`"a"` or `"b"`), as the agent reports it.
    pub active_slot: String,
}

/// The metadata versions the vehicle trusts now (the server signs above them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedVersions {
    pub root: u64,
    pub targets: u64,
    pub director: u64,
}

/// A vehicle's periodic check-in, signed with its device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub vehicle_id: String,
    /// Random per message; lets the server drop replays within its window.
    pub nonce: String,
    pub sent_at: Timestamp,
    pub ecus: Vec<EcuReport>,
    /// The agent's state machine state, e.g. `"idle"`, `"downloading"`.
    pub agent_state: String,
    pub trusted: TrustedVersions,
}

/// Phases of one deployment on a vehicle, in the order they normally happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressPhase {
    Downloading,
    Downloaded,
    Verified,
    Installing,
    Installed,
    Rebooting,
    HealthCheck,
    Committed,
    Failed,
    RolledBack,
}

impl ProgressPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressPhase::Downloading => "downloading",
            ProgressPhase::Downloaded => "downloaded",
            ProgressPhase::Verified => "verified",
            ProgressPhase::Installing => "installing",
            ProgressPhase::Installed => "installed",
            ProgressPhase::Rebooting => "rebooting",
            ProgressPhase::HealthCheck => "health_check",
            ProgressPhase::Committed => "committed",
            ProgressPhase::Failed => "failed",
            ProgressPhase::RolledBack => "rolled_back",
        }
    }

    /// A terminal phase ends the deployment on the vehicle.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ProgressPhase::Committed | ProgressPhase::Failed | ProgressPhase::RolledBack
        )
    }
}

/// A progress event of one deployment, signed with the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressEvent {
    pub vehicle_id: String,
    pub deployment_id: String,
    /// Per deployment, strictly increasing: the server applies each event once.
    pub sequence: u64,
    pub phase: ProgressPhase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Machine-readable reason for `failed` / `rolled_back`.
    pub reason_code: Option<String>,
    pub at: Timestamp,
}

/// Commands the server pushes to a vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCommand {
    /// Check in now instead of waiting for the next interval.
    PollNow,
    /// Stop a deployment that has not started installing.
    Cancel,
    /// Go back to the previous image (automated rollback policy).
    Rollback,
}

/// A control message, signed with the director key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlMessage {
    pub vehicle_id: String,
    pub command: ControlCommand,
    pub deployment_id: Option<String>,
    pub issued_at: Timestamp,
}

/// Why a signed vehicle message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed envelope: {0}")]
    Envelope(String),
    #[error("expected payload type {expected:?}, got {actual:?}")]
    WrongPayloadType {
        expected: &'static str,
        actual: String,
    },
    #[error("no valid signature by the expected key")]
    BadSignature,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message names vehicle {inside:?} but arrived for {outside:?}")]
    VehicleMismatch { outside: String, inside: String },
}

/// Signs `message` as a DSSE envelope of `payload_type`, returning the wire bytes.
pub fn sign_message<T: Serialize>(payload_type: &str, message: &T, key: &SigningKey) -> Vec<u8> {
    let payload = serde_json::to_vec(message).unwrap_or_default();
    Envelope::sign(payload_type, payload, &[key]).to_json_bytes()
}

/// Parses an envelope, checks its type and that `key` signed it, and parses the payload.
/// Only the signer's own key counts: device messages have a threshold of one key.
pub fn open_message<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    payload_type: &'static str,
    key: &PublicKey,
) -> Result<T, MessageError> {
    let envelope = Envelope::parse(bytes).map_err(|e| MessageError::Envelope(e.to_string()))?;
    if envelope.payload_type != payload_type {
        return Err(MessageError::WrongPayloadType {
            expected: payload_type,
            actual: envelope.payload_type,
        });
    }
    let signed = envelope.signed_message();
    let keyid = key.key_id();
    let valid = envelope.signatures.iter().any(|signature| {
        signature.keyid == keyid.as_str()
            && crate::encoding::decode_base64(&signature.sig)
                .ok()
                .and_then(|raw| <[u8; 64]>::try_from(raw.as_slice()).ok())
                .is_some_and(|raw| key.verify_strict(&signed, &raw))
    });
    if !valid {
        return Err(MessageError::BadSignature);
    }
    from_slice_exact(&envelope.payload).map_err(MessageError::Malformed)
}

/// Reads only the (unverified) vehicle id claimed inside a message, to find the key
/// that must have signed it. Never trust anything else before [`open_message`].
pub fn claimed_vehicle_id(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Claim {
        vehicle_id: String,
    }
    let envelope = Envelope::parse(bytes).ok()?;
    serde_json::from_slice::<Claim>(&envelope.payload)
        .ok()
        .map(|c| c.vehicle_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkin(vid: &str) -> CheckIn {
        CheckIn {
            vehicle_id: vid.to_owned(),
            nonce: "n1".to_owned(),
            sent_at: Timestamp::parse("2027-01-01T00:00:00Z").unwrap(),
            ecus: vec![EcuReport {
                ecu: "main".to_owned(),
                hardware_id: "hw-a".to_owned(),
                installed: None,
                active_slot: "a".to_owned(),
            }],
            agent_state: "idle".to_owned(),
            trusted: TrustedVersions::default(),
        }
    }

    #[test]
    fn topics_round_trip_and_reject_wildcards() {
        assert_eq!(topic("veh-1", Channel::CheckIn), "ota/v1/veh-1/checkin");
        assert_eq!(
            parse_topic("ota/v1/veh-1/progress"),
            Some(("veh-1", Channel::Progress))
        );
        for bad in [
            "ota/v1/+/checkin",
            "ota/v1/a/b/checkin",
            "ota/v2/veh/checkin",
            "ota/v1//checkin",
            "ota/v1/veh/other",
        ] {
            assert_eq!(parse_topic(bad), None, "{bad} must not parse");
        }
    }

    #[test]
    fn signed_checkin_opens_only_with_the_device_key_and_type() {
        let device = SigningKey::from_seed(&[3u8; 32]);
        let other = SigningKey::from_seed(&[4u8; 32]);
        let bytes = sign_message(PAYLOAD_TYPE_CHECKIN, &checkin("veh-1"), &device);
        let opened: CheckIn =
            open_message(&bytes, PAYLOAD_TYPE_CHECKIN, &device.public_key()).unwrap();
        assert_eq!(opened, checkin("veh-1"));
        assert_eq!(claimed_vehicle_id(&bytes).as_deref(), Some("veh-1"));
        assert_eq!(
            open_message::<CheckIn>(&bytes, PAYLOAD_TYPE_CHECKIN, &other.public_key()),
            Err(MessageError::BadSignature)
        );
        assert!(matches!(
            open_message::<CheckIn>(&bytes, PAYLOAD_TYPE_PROGRESS, &device.public_key()),
            Err(MessageError::WrongPayloadType { .. })
        ));
    }

    #[test]
    fn every_channel_round_trips_through_its_topic() {
        for (channel, name) in [
            (Channel::CheckIn, "checkin"),
            (Channel::Directive, "directive"),
            (Channel::Progress, "progress"),
            (Channel::Control, "control"),
        ] {
            let wire = topic("veh-1", channel);
            assert_eq!(wire, format!("ota/v1/veh-1/{name}"));
            assert_eq!(parse_topic(&wire), Some(("veh-1", channel)), "{wire}");
        }
    }

    #[test]
    fn vehicle_ids_are_1_to_64_characters_of_letters_digits_dot_underscore_dash() {
        let longest = "v".repeat(64);
        for good in ["a", "Veh_1.2-x", longest.as_str()] {
            assert!(is_valid_vehicle_id(good), "{good:?} is a valid vehicle id");
        }
        let too_long = "v".repeat(65);
        for bad in [
            "",
            too_long.as_str(),
            "veh 1",
            "veh/1",
            "veh+",
            "v#",
            "v\u{e9}h",
        ] {
            assert!(!is_valid_vehicle_id(bad), "{bad:?} is not a vehicle id");
        }
    }

    #[test]
    fn progress_phases_have_their_wire_names_and_three_end_a_deployment() {
        use ProgressPhase::*;
        let all = [
            Downloading,
            Downloaded,
            Verified,
            Installing,
            Installed,
            Rebooting,
            HealthCheck,
            Committed,
            Failed,
            RolledBack,
        ];
        for phase in all {
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{}\"", phase.as_str()),
                "as_str is the wire name of {phase:?}"
            );
            assert_eq!(
                phase.is_terminal(),
                matches!(phase, Committed | Failed | RolledBack),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_signature_under_the_device_key_id_that_does_not_verify_is_refused() {
        let device = SigningKey::from_seed(&[3u8; 32]);
        let forger = SigningKey::from_seed(&[4u8; 32]);
        let mut envelope = Envelope::parse(&sign_message(
            PAYLOAD_TYPE_CHECKIN,
            &checkin("veh-1"),
            &forger,
        ))
        .unwrap();
        envelope.signatures[0].keyid = device.key_id().as_str().to_owned();
        assert_eq!(
            open_message::<CheckIn>(
                &envelope.to_json_bytes(),
                PAYLOAD_TYPE_CHECKIN,
                &device.public_key()
            ),
            Err(MessageError::BadSignature),
            "naming the device's key id is not signing with it"
        );
    }
}
