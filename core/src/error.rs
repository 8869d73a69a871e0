//! Typed rejections. One variant per attack class, each carrying what a caller (or an
//! operator reading the log) needs to act. Decisions branch on these kinds, never on
//! message strings.

use crate::encoding::Sha256Digest;
use crate::metadata::Role;
use crate::time::Timestamp;

/// Why one signature in an envelope did not count toward the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureRejection {
    /// The key id is not listed in the trusted root at all.
    UnknownKey { keyid: String },
    /// The key exists but is not authorised for this role.
    NotAuthorisedForRole { keyid: String, role: Role },
    /// Not canonical base64, or not exactly 64 bytes.
    Malformed { keyid: String, reason: String },
    /// A second signature by a public key that already counted.
    DuplicateKey { keyid: String },
    /// Strict Ed25519 verification failed (wrong key, tampered payload, non-canonical S...).
    Invalid { keyid: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("envelope is {size} bytes, more than the {limit}-byte limit")]
    EnvelopeTooLarge { size: usize, limit: usize },
    #[error("malformed envelope: {reason}")]
    MalformedEnvelope { reason: String },
    #[error("expected payload type {expected:?}, got {actual:?}")]
    WrongPayloadType { expected: String, actual: String },
    #[error("malformed {role} metadata: {reason}")]
    MalformedMetadata { role: Role, reason: String },
    #[error("public key {keyid} in root metadata is weak (small order)")]
    WeakPublicKey { keyid: String },
    #[error("public key {keyid} in root metadata is invalid: {reason}")]
    InvalidPublicKey { keyid: String, reason: String },
    #[error("root metadata lists a key under id {listed}, but its id is {computed}")]
    KeyIdMismatch { listed: String, computed: String },
    #[error("role {role} has threshold {threshold} but {keys} distinct usable key(s)")]
    InvalidThreshold {
        role: Role,
        threshold: u32,
        keys: usize,
    },
    #[error("{role} metadata: {valid} valid signature(s) of distinct authorised keys, {required} required ({signed_by})")]
    ThresholdNotMet {
        role: Role,
        /// Whose keys were counted: "trusted root" or "its own root keys" during rotation.
        signed_by: &'static str,
        valid: usize,
        required: u32,
        rejected: Vec<SignatureRejection>,
    },
    #[error("{role} metadata expired at {expires} (now {now})")]
    Expired {
        role: Role,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error("{role} metadata version {received} is older than trusted version {trusted}")]
    Rollback {
        role: Role,
        trusted: u64,
        received: u64,
    },
    #[error("{role} metadata version {version} was already trusted with different content")]
    VersionReused { role: Role, version: u64 },
    #[error("root version {received} does not follow trusted root version {trusted}; expected {expected}")]
    RootVersionSkipped {
        trusted: u64,
        expected: u64,
        received: u64,
    },
    #[error("more than {limit} root rotations in one update")]
    TooManyRootRotations { limit: usize },
    #[error("image for hardware id {hardware_id:?} has security version {received}, below the installed floor {floor}")]
    SecurityVersionRollback {
        hardware_id: String,
        floor: u64,
        received: u64,
    },
    #[error("director assigns image {image:?}, which the targets metadata does not list")]
    TargetNotFound { image: String },
    #[error("image {image:?}: director says SHA-256 {director}, targets says {targets}")]
    HashMismatch {
        image: String,
        director: Sha256Digest,
        targets: Sha256Digest,
    },
    #[error("image {image:?}: director says length {director}, targets says {targets}")]
    LengthMismatch {
        image: String,
        director: u64,
        targets: u64,
    },
    #[error("image {image:?}: director says version {director:?}, targets says {targets:?}")]
    ImageVersionMismatch {
        image: String,
        director: String,
        targets: String,
    },
    #[error("ECU {ecu:?}: hardware id {actual:?} where {expected:?} was required")]
    WrongHardwareId {
        ecu: String,
        expected: String,
        actual: String,
    },
    #[error("director metadata is for vehicle {actual:?}, not this vehicle {expected:?}")]
    WrongVehicle { expected: String, actual: String },
    #[error("director assigns an image to ECU {ecu:?}, which this vehicle does not have")]
    UnknownEcu { ecu: String },
    #[error("director was built against targets version {director_version} (payload SHA-256 {director_sha256}), but the targets given are version {targets_version} ({targets_sha256})")]
    TargetsMismatch {
        director_version: u64,
        director_sha256: Sha256Digest,
        targets_version: u64,
        targets_sha256: Sha256Digest,
    },
    #[error("clock rollback: now {now} is more than {skew_seconds} s before {latest}, the latest time metadata was verified at")]
    ClockRollback {
        latest: Timestamp,
        now: Timestamp,
        skew_seconds: i64,
    },
}

impl Error {
    /// A stable, machine-readable name of the rejection class (for logs, exit reports
    /// and progress reason codes).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::EnvelopeTooLarge { .. } => "envelope_too_large",
            Error::MalformedEnvelope { .. } => "malformed_envelope",
            Error::WrongPayloadType { .. } => "wrong_payload_type",
            Error::MalformedMetadata { .. } => "malformed_metadata",
            Error::WeakPublicKey { .. } => "weak_public_key",
            Error::InvalidPublicKey { .. } => "invalid_public_key",
            Error::KeyIdMismatch { .. } => "key_id_mismatch",
            Error::InvalidThreshold { .. } => "invalid_threshold",
            Error::ThresholdNotMet { .. } => "threshold_not_met",
            Error::Expired { .. } => "expired",
            Error::Rollback { .. } => "rollback",
            Error::VersionReused { .. } => "version_reused",
            Error::RootVersionSkipped { .. } => "root_version_skipped",
            Error::TooManyRootRotations { .. } => "too_many_root_rotations",
            Error::SecurityVersionRollback { .. } => "security_version_rollback",
            Error::TargetNotFound { .. } => "target_not_found",
            Error::HashMismatch { .. } => "hash_mismatch",
            Error::LengthMismatch { .. } => "length_mismatch",
            Error::ImageVersionMismatch { .. } => "image_version_mismatch",
            Error::WrongHardwareId { .. } => "wrong_hardware_id",
            Error::WrongVehicle { .. } => "wrong_vehicle",
            Error::UnknownEcu { .. } => "unknown_ecu",
            Error::TargetsMismatch { .. } => "targets_mismatch",
            Error::ClockRollback { .. } => "clock_rollback",
        }
    }
}
