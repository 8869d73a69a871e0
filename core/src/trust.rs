//! Trusted state and the full verification of a metadata update.
//!
//! [`TrustedState`] is what a vehicle remembers between updates: the latest trusted root
//! (exact envelope bytes), the version and payload digest of the last trusted `targets`
//! and `director` documents, and the installed `security_version` floor of each hardware
//! id. [`TrustedState::verify_update`] takes it by reference and returns a *new* state
//! on success: a rejection can never leave the caller's state half-updated.
//!
//! Order of checks, per document: payload type → signatures (threshold of distinct
//! authorised keys) → strict parse → version against the trusted floor → expiry. Then
//! the director's binding to the targets document it was built against (version and
//! payload SHA-256), then its assignments against the targets metadata and the vehicle.

use crate::encoding::{
    decode_base64, encode_base64, from_slice_exact, parse_lower_hex, Sha256Digest,
};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::metadata::{
    parse_document, Assignment, DirectorMetadata, Role, RoleDocument, Root, TargetImage,
    TargetsMetadata,
};
use crate::threshold::verify_threshold;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most root versions walked in one received update. A longer update is refused rather
/// than verified at unbounded cost. The cap is per update, not per vehicle life: the chain
/// a vehicle stored from earlier updates is re-walked without it
/// ([`TrustedState::walk_stored_root_chain`]).
pub const MAX_ROOT_ROTATIONS: usize = 64;

/// How far (seconds) `now` may be earlier than the latest time at which this state
/// verified an update before it is a clock rollback (PROTOCOL.md §5 step 0): room for an
/// RTC corrected by NTP, far below any metadata lifetime.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// The last trusted version of a role document and the digest of its payload: the same
/// version may be presented again only with the same content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    pub version: u64,
    pub payload_sha256: Sha256Digest,
}

/// What the vehicle is: its opaque id and the hardware id of each of its ECUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleIdentity {
    pub vehicle_id: String,
    /// ECU name → hardware id.
    pub ecus: BTreeMap<String, String>,
}

/// The envelopes of one update, as received.
#[derive(Debug, Clone, Default)]
pub struct MetadataUpdate {
    /// Root envelopes newer than the trusted one, in increasing version order. A copy of
    /// the currently trusted root may be included and is skipped.
    pub roots: Vec<Vec<u8>>,
    pub targets: Vec<u8>,
    pub director: Vec<u8>,
}

/// One assignment that passed every check, with the targets entry it matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedAssignment {
    #[serde(flatten)]
    pub assignment: Assignment,
    pub security_version: u64,
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUpdate {
    /// The state to persist (the caller decides whether and when).
    pub state: TrustedState,
    pub targets: TargetsMetadata,
    pub director: DirectorMetadata,
    pub assignments: Vec<VerifiedAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedState {
    root_envelope: Vec<u8>,
    root_payload_sha256: Sha256Digest,
    root: Root,
    targets: Option<VersionRecord>,
    director: Option<VersionRecord>,
    security_floors: BTreeMap<String, u64>,
    /// The latest `now` at which an update verified: a later `now` more than
    /// [`MAX_CLOCK_SKEW_SECONDS`] earlier is a clock rollback. Only ever rises.
    verified_time: Option<Timestamp>,
}

/// On-disk form of [`TrustedState`] (see PROTOCOL.md, "Trusted state").
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedState {
    format: u32,
    /// Format 2 only: the generation of a hardware-bound state (PROTOCOL.md §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// Standard base64 of the exact trusted root envelope bytes.
    root: String,
    targets: Option<VersionRecord>,
    director: Option<VersionRecord>,
    security_versions: BTreeMap<String, u64>,
    /// Absent in files written before the clock floor existed (read as `null`).
    #[serde(default)]
    verified_time: Option<Timestamp>,
    /// Format 2 only: lowercase hex of the HMAC-SHA256 the vehicle's hardware computed
    /// over [`TrustedState::binding_message`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// A state file without hardware binding (development trust store).
const PERSISTED_FORMAT: u32 = 1;
/// A state file bound to the vehicle's hardware: format 1 plus `generation` and `mac`.
const BOUND_FORMAT: u32 = 2;

/// Domain separation of the message a vehicle's hardware authenticates
/// ([`TrustedState::binding_message`]).
pub const STATE_BINDING_CONTEXT: &[u8] = b"ota-trusted-state-binding-v1\n";

/// The hardware binding read from a format-2 state file: which generation it claims and
/// the MAC the hardware computed over [`TrustedState::binding_message`] for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSeal {
    pub generation: u64,
    pub mac: [u8; 32],
}

/// How a hardware-bound state file stands against the generation the hardware holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationCheck {
    /// No state file and the hardware never accepted one: the anchor alone is trusted.
    NoStateYet,
    /// The file is the state the hardware last accepted.
    Current,
    /// The file is one generation ahead: a save wrote it and stopped before the hardware
    /// counter was raised. The loader accepts it and raises the counter to it.
    CompletesInterruptedSave,
}

/// Why a hardware-bound trusted state is refused. Every refusal fails closed: the vehicle
/// verifies nothing until it is re-provisioned (README, "Re-provisioning").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateBindingError {
    #[error("state.json is missing, but the vehicle's hardware accepted trusted state generation {hardware}: the trusted state was deleted")]
    Missing { hardware: u64 },
    #[error("state.json is generation {file}, older than generation {hardware} in the vehicle's hardware: an old trusted state was restored")]
    RolledBack { file: u64, hardware: u64 },
    #[error("state.json is generation {file}, more than one ahead of generation {hardware} in the vehicle's hardware: the hardware counter was reset")]
    Ahead { file: u64, hardware: u64 },
    #[error("state.json is not authenticated by the vehicle's hardware: {reason}")]
    Forged { reason: String },
}

impl StateBindingError {
    /// The stable kind for logs and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            StateBindingError::Missing { .. } => "state_missing",
            StateBindingError::RolledBack { .. } => "state_rolled_back",
            StateBindingError::Ahead { .. } => "state_ahead_of_hardware",
            StateBindingError::Forged { .. } => "state_forged",
        }
    }
}

/// The crash-safe generation rule (PROTOCOL.md §6.1). A save writes the file with
/// generation `g + 1` first and raises the hardware counter from `g` to `g + 1` second, so
/// after any crash the file is either at the counter or one ahead of it:
/// - no file: accepted only while the hardware counter is 0 (nothing was ever saved);
/// - file = counter: the current state;
/// - file = counter + 1: a save interrupted between its two steps, accepted (the caller
///   then raises the counter to it, finishing that save);
/// - file < counter: an old state restored; file > counter + 1: a counter that went
///   back. Both refused.
///
/// `file` must come from a file whose MAC the hardware verified.
pub fn check_generation(
    file: Option<u64>,
    hardware: u64,
) -> Result<GenerationCheck, StateBindingError> {
    match file {
        None if hardware == 0 => Ok(GenerationCheck::NoStateYet),
        None => Err(StateBindingError::Missing { hardware }),
        Some(file) if file == hardware => Ok(GenerationCheck::Current),
        Some(file) if Some(file) == hardware.checked_add(1) => {
            Ok(GenerationCheck::CompletesInterruptedSave)
        }
        Some(file) if file < hardware => Err(StateBindingError::RolledBack { file, hardware }),
        Some(file) => Err(StateBindingError::Ahead { file, hardware }),
    }
}

fn parse_envelope_of(role: Role, bytes: &[u8]) -> Result<Envelope, Error> {
    let envelope = Envelope::parse(bytes)?;
    if envelope.payload_type != role.payload_type() {
        return Err(Error::WrongPayloadType {
            expected: role.payload_type().to_owned(),
            actual: envelope.payload_type,
        });
    }
    Ok(envelope)
}

/// Version rule shared by targets and director: lower is a rollback; equal is allowed
/// only for the identical payload (a re-download); higher moves the floor.
fn check_version(
    role: Role,
    trusted: Option<&VersionRecord>,
    received: &VersionRecord,
) -> Result<(), Error> {
    let Some(trusted) = trusted else {
        return Ok(());
    };
    if received.version < trusted.version {
        return Err(Error::Rollback {
            role,
            trusted: trusted.version,
            received: received.version,
        });
    }
    if received.version == trusted.version && received.payload_sha256 != trusted.payload_sha256 {
        return Err(Error::VersionReused {
            role,
            version: received.version,
        });
    }
    Ok(())
}

fn check_expiry(role: Role, expires: Timestamp, now: Timestamp) -> Result<(), Error> {
    if expires <= now {
        return Err(Error::Expired { role, expires, now });
    }
    Ok(())
}

impl TrustedState {
    /// Starts from a trust anchor: a root envelope that must be signed by a threshold of
    /// its own root keys. Its expiry is not checked here: an old anchor is how a vehicle
    /// leaves the factory; the next update walks it forward and checks the newest root.
    pub fn from_anchor(root_envelope: &[u8]) -> Result<TrustedState, Error> {
        let envelope = parse_envelope_of(Role::Root, root_envelope)?;
        let root = Root::from_payload(&envelope.payload)?;
        verify_threshold(
            &envelope,
            Role::Root,
            &root.keys,
            root.role_keys(Role::Root),
            "its own root keys",
        )?;
        Ok(TrustedState {
            root_envelope: root_envelope.to_vec(),
            root_payload_sha256: Sha256Digest::of(&envelope.payload),
            root,
            targets: None,
            director: None,
            security_floors: BTreeMap::new(),
            verified_time: None,
        })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn root_envelope(&self) -> &[u8] {
        &self.root_envelope
    }

    pub fn targets_record(&self) -> Option<&VersionRecord> {
        self.targets.as_ref()
    }

    pub fn director_record(&self) -> Option<&VersionRecord> {
        self.director.as_ref()
    }

    /// The latest time at which this state verified an update (`None`: never).
    pub fn verified_time(&self) -> Option<Timestamp> {
        self.verified_time
    }

    /// Refuses a `now` earlier than the latest verified time by more than
    /// [`MAX_CLOCK_SKEW_SECONDS`]: with the clock set back, an expired document would
    /// otherwise look current again.
    pub fn check_clock(&self, now: Timestamp) -> Result<(), Error> {
        match self.verified_time {
            Some(floor) if now.unix_seconds() < floor.unix_seconds() - MAX_CLOCK_SKEW_SECONDS => {
                Err(Error::ClockRollback {
                    latest: floor,
                    now,
                    skew_seconds: MAX_CLOCK_SKEW_SECONDS,
                })
            }
            _ => Ok(()),
        }
    }

    pub fn security_floor(&self, hardware_id: &str) -> u64 {
        self.security_floors.get(hardware_id).copied().unwrap_or(0)
    }

    /// The state after an image with `security_version` was committed on an ECU of
    /// `hardware_id`: the floor only rises. (Verification alone never raises it: a
    /// failed install must not lock the vehicle out of the version it still runs.)
    pub fn with_installed(&self, hardware_id: &str, security_version: u64) -> TrustedState {
        let mut next = self.clone();
        let floor = next
            .security_floors
            .entry(hardware_id.to_owned())
            .or_insert(0);
        *floor = (*floor).max(security_version);
        next
    }

    /// Walks the root chain one version at a time. Each new root N+1 must be signed by a
    /// threshold of root N's root keys AND a threshold of its own root keys, and carry
    /// version exactly N+1. When a role's keys or threshold change, the trusted version
    /// of that role is forgotten (so that a compromised-and-replaced key's inflated
    /// version numbers cannot lock the fleet out: TUF's fast-forward recovery).
    ///
    /// This is the walk of one received update: at most [`MAX_ROOT_ROTATIONS`] roots.
    pub fn update_root(&self, roots: &[Vec<u8>]) -> Result<TrustedState, Error> {
        if roots.len() > MAX_ROOT_ROTATIONS {
            return Err(Error::TooManyRootRotations {
                limit: MAX_ROOT_ROTATIONS,
            });
        }
        self.walk_root_chain(roots)
    }

    /// Re-walks a root chain this vehicle already accepted, one update at a time, over
    /// its whole life (a trust store's `roots/` at start-up): every rule of
    /// [`TrustedState::update_root`] except the per-update cap, which bounds the work one
    /// *received* update may cause and would otherwise brick a vehicle after its 65th
    /// rotation. The cost is linear in the chain's length.
    pub fn walk_stored_root_chain(&self, roots: &[Vec<u8>]) -> Result<TrustedState, Error> {
        self.walk_root_chain(roots)
    }

    fn walk_root_chain(&self, roots: &[Vec<u8>]) -> Result<TrustedState, Error> {
        let mut state = self.clone();
        for bytes in roots {
            let envelope = parse_envelope_of(Role::Root, bytes)?;
            let payload_sha256 = Sha256Digest::of(&envelope.payload);
            if payload_sha256 == state.root_payload_sha256 {
                continue; // the root we already trust, sent again
            }
            verify_threshold(
                &envelope,
                Role::Root,
                &state.root.keys,
                state.root.role_keys(Role::Root),
                "trusted root",
            )?;
            let new_root = Root::from_payload(&envelope.payload)?;
            verify_threshold(
                &envelope,
                Role::Root,
                &new_root.keys,
                new_root.role_keys(Role::Root),
                "its own root keys",
            )?;
            let trusted = state.root.version();
            let received = new_root.version();
            if received <= trusted {
                return Err(if received == trusted {
                    Error::VersionReused {
                        role: Role::Root,
                        version: received,
                    }
                } else {
                    Error::Rollback {
                        role: Role::Root,
                        trusted,
                        received,
                    }
                });
            }
            if received != trusted + 1 {
                return Err(Error::RootVersionSkipped {
                    trusted,
                    expected: trusted + 1,
                    received,
                });
            }
            for role in [Role::Targets, Role::Director] {
                if role_key_material(&state.root, role) != role_key_material(&new_root, role) {
                    match role {
                        Role::Targets => state.targets = None,
                        _ => state.director = None,
                    }
                }
            }
            state.root = new_root;
            state.root_envelope = bytes.clone();
            state.root_payload_sha256 = payload_sha256;
        }
        Ok(state)
    }

    /// Verifies a role document against the (already updated) trusted root.
    fn verify_document<T: RoleDocument>(
        &self,
        bytes: &[u8],
        trusted: Option<&VersionRecord>,
        now: Timestamp,
    ) -> Result<(T, VersionRecord), Error> {
        let role = T::ROLE;
        let envelope = parse_envelope_of(role, bytes)?;
        verify_threshold(
            &envelope,
            role,
            &self.root.keys,
            self.root.role_keys(role),
            "trusted root",
        )?;
        let doc: T = parse_document(&envelope.payload)?;
        let record = VersionRecord {
            version: doc.version(),
            payload_sha256: Sha256Digest::of(&envelope.payload),
        };
        check_version(role, trusted, &record)?;
        check_expiry(role, doc.expires(), now)?;
        Ok((doc, record))
    }

    /// Verifies a whole update: root chain, then targets, then director, then every
    /// director assignment against targets (name, hardware id, version, length, SHA-256),
    /// the `security_version` floors and, when given, the vehicle's identity.
    pub fn verify_update(
        &self,
        update: &MetadataUpdate,
        vehicle: Option<&VehicleIdentity>,
        now: Timestamp,
    ) -> Result<VerifiedUpdate, Error> {
        self.check_clock(now)?;
        let mut state = self.update_root(&update.roots)?;
        check_expiry(Role::Root, state.root.expires(), now)?;

        let (targets, targets_record) = state.verify_document::<TargetsMetadata>(
            &update.targets,
            state.targets.as_ref(),
            now,
        )?;
        let (director, director_record) = state.verify_document::<DirectorMetadata>(
            &update.director,
            state.director.as_ref(),
            now,
        )?;
        let binding = director.targets;
        if binding.version != targets_record.version
            || binding.payload_sha256 != targets_record.payload_sha256
        {
            return Err(Error::TargetsMismatch {
                director_version: binding.version,
                director_sha256: binding.payload_sha256,
                targets_version: targets_record.version,
                targets_sha256: targets_record.payload_sha256,
            });
        }

        if let Some(vehicle) = vehicle {
            if director.vehicle_id != vehicle.vehicle_id {
                return Err(Error::WrongVehicle {
                    expected: vehicle.vehicle_id.clone(),
                    actual: director.vehicle_id.clone(),
                });
            }
        }
        let mut seen_ecus = BTreeSet::new();
        let mut assignments = Vec::with_capacity(director.assignments.len());
        for assignment in &director.assignments {
            if !seen_ecus.insert(assignment.ecu.as_str()) {
                return Err(Error::MalformedMetadata {
                    role: Role::Director,
                    reason: format!("ECU {:?} is assigned twice", assignment.ecu),
                });
            }
            let target = match_target(&targets, assignment)?;
            if let Some(vehicle) = vehicle {
                let Some(expected) = vehicle.ecus.get(&assignment.ecu) else {
                    return Err(Error::UnknownEcu {
                        ecu: assignment.ecu.clone(),
                    });
                };
                if *expected != assignment.hardware_id {
                    return Err(Error::WrongHardwareId {
                        ecu: assignment.ecu.clone(),
                        expected: expected.clone(),
                        actual: assignment.hardware_id.clone(),
                    });
                }
            }
            let floor = state.security_floor(&target.hardware_id);
            if target.security_version < floor {
                return Err(Error::SecurityVersionRollback {
                    hardware_id: target.hardware_id.clone(),
                    floor,
                    received: target.security_version,
                });
            }
            assignments.push(VerifiedAssignment {
                assignment: assignment.clone(),
                security_version: target.security_version,
            });
        }

        state.targets = Some(targets_record);
        state.director = Some(director_record);
        state.verified_time = Some(state.verified_time.map_or(now, |floor| floor.max(now)));
        Ok(VerifiedUpdate {
            state,
            targets,
            director,
            assignments,
        })
    }

    fn persisted(
        &self,
        format: u32,
        generation: Option<u64>,
        mac: Option<String>,
    ) -> PersistedState {
        PersistedState {
            format,
            generation,
            root: encode_base64(&self.root_envelope),
            targets: self.targets.clone(),
            director: self.director.clone(),
            security_versions: self.security_floors.clone(),
            verified_time: self.verified_time,
            mac,
        }
    }

    /// The on-disk form without hardware binding (format 1, see PROTOCOL.md §6).
    pub fn to_persisted(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.persisted(PERSISTED_FORMAT, None, None)).unwrap_or_default()
    }

    /// The bytes the vehicle's hardware authenticates for this state at `generation`
    /// (PROTOCOL.md §6.1): [`STATE_BINDING_CONTEXT`], then the compact JSON of the format-2
    /// file without its `mac` member. Every member of the state is in it, the whole
    /// trusted root envelope (so its version and digest) included; it is rebuilt from the
    /// parsed state, so any change that alters what the state means alters the message.
    pub fn binding_message(&self, generation: u64) -> Vec<u8> {
        let mut message = STATE_BINDING_CONTEXT.to_vec();
        let persisted = self.persisted(BOUND_FORMAT, Some(generation), None);
        message.extend(serde_json::to_vec(&persisted).unwrap_or_default());
        message
    }

    /// The on-disk form bound to the vehicle's hardware (format 2): `mac` is the
    /// hardware's HMAC-SHA256 over [`TrustedState::binding_message`] at `generation`.
    pub fn to_persisted_bound(&self, binding: &StateSeal) -> Vec<u8> {
        let persisted = self.persisted(
            BOUND_FORMAT,
            Some(binding.generation),
            Some(hex::encode(binding.mac)),
        );
        serde_json::to_vec_pretty(&persisted).unwrap_or_default()
    }

    /// Reads the on-disk form back: format 1 only (a format-2 file is bound to a
    /// vehicle's hardware and is read with [`TrustedState::from_persisted_bound`]). The
    /// stored root is re-checked as an anchor, so a corrupted file fails closed instead
    /// of trusting garbage.
    pub fn from_persisted(bytes: &[u8]) -> Result<TrustedState, Error> {
        match TrustedState::from_persisted_any(bytes)? {
            (state, None) => Ok(state),
            (_, Some(_)) => Err(corrupt_state(
                "format 2 is bound to a vehicle's hardware and is read only with that hardware"
                    .into(),
            )),
        }
    }

    /// Reads a format-2 (hardware-bound) file: the state and the binding it claims. The
    /// caller must have the hardware verify `binding.mac` over
    /// [`TrustedState::binding_message`]`(binding.generation)` before trusting either.
    /// A format-1 file has no binding and is refused here.
    pub fn from_persisted_bound(bytes: &[u8]) -> Result<(TrustedState, StateSeal), Error> {
        match TrustedState::from_persisted_any(bytes)? {
            (state, Some(binding)) => Ok((state, binding)),
            (_, None) => Err(corrupt_state(
                "format 1 carries no MAC of the vehicle's hardware".into(),
            )),
        }
    }

    fn from_persisted_any(bytes: &[u8]) -> Result<(TrustedState, Option<StateSeal>), Error> {
        let persisted: PersistedState = from_slice_exact(bytes).map_err(corrupt_state)?;
        let seal = match (persisted.format, persisted.generation, &persisted.mac) {
            (PERSISTED_FORMAT, None, None) => None,
            (BOUND_FORMAT, Some(generation), Some(mac)) => {
                let mac = parse_lower_hex::<32>(mac)
                    .map_err(|reason| corrupt_state(format!("mac: {reason}")))?;
                Some(StateSeal { generation, mac })
            }
            (PERSISTED_FORMAT | BOUND_FORMAT, _, _) => {
                return Err(corrupt_state(
                    "generation and mac are required in format 2 and absent in format 1".into(),
                ))
            }
            (other, _, _) => return Err(corrupt_state(format!("unknown format {other}"))),
        };
        let root_envelope = decode_base64(&persisted.root).map_err(corrupt_state)?;
        let mut state = TrustedState::from_anchor(&root_envelope)?;
        state.targets = persisted.targets;
        state.director = persisted.director;
        state.security_floors = persisted.security_versions;
        state.verified_time = persisted.verified_time;
        Ok((state, seal))
    }
}

fn corrupt_state(reason: String) -> Error {
    Error::MalformedMetadata {
        role: Role::Root,
        reason: format!("trusted state file: {reason}"),
    }
}

/// The keys and threshold of a role, as a comparable value.
fn role_key_material(root: &Root, role: Role) -> (BTreeSet<[u8; 32]>, u32) {
    let role_keys = root.role_keys(role);
    let keys = role_keys
        .keyids
        .iter()
        .filter_map(|id| root.keys.get(id).map(|key| key.to_bytes()))
        .collect();
    (keys, role_keys.threshold)
}

fn match_target<'a>(
    targets: &'a TargetsMetadata,
    assignment: &Assignment,
) -> Result<&'a TargetImage, Error> {
    let image = &assignment.image;
    let Some(target) = targets.targets.get(&image.name) else {
        return Err(Error::TargetNotFound {
            image: image.name.clone(),
        });
    };
    if target.hardware_id != assignment.hardware_id {
        return Err(Error::WrongHardwareId {
            ecu: assignment.ecu.clone(),
            expected: target.hardware_id.clone(),
            actual: assignment.hardware_id.clone(),
        });
    }
    if target.length != image.length {
        return Err(Error::LengthMismatch {
            image: image.name.clone(),
            director: image.length,
            targets: target.length,
        });
    }
    if target.sha256 != image.sha256 {
        return Err(Error::HashMismatch {
            image: image.name.clone(),
            director: image.sha256,
            targets: target.sha256,
        });
    }
    if target.version != image.version {
        return Err(Error::ImageVersionMismatch {
            image: image.name.clone(),
            director: image.version.clone(),
            targets: target.version.clone(),
        });
    }
    Ok(target)
}
