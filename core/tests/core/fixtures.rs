//! A small signed repository built in memory: deterministic keys from fixed seeds, a
//! fixed "now", and helpers to sign documents with any set of keys.

use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{
    to_payload, Assignment, DirectorMetadata, ImageRef, Role, RoleKeys, Roles, RootMetadata,
    TargetImage, TargetsBinding, TargetsMetadata,
};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState, VehicleIdentity};

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

pub fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
}

pub fn future() -> Timestamp {
    Timestamp::parse("2027-06-01T00:00:00Z").unwrap()
}

pub fn past() -> Timestamp {
    Timestamp::parse("2026-05-01T00:00:00Z").unwrap()
}

pub const IMAGE_NAME: &str = "ecu-main-2.0.0.img";
pub const HARDWARE_ID: &str = "ecu-main-v2";
pub const VEHICLE_ID: &str = "veh-0001";

pub fn image_bytes() -> &'static [u8] {
    b"the new firmware image, version 2.0.0"
}

/// Role keys and thresholds of one root version.
#[derive(Clone)]
pub struct Repo {
    pub root_keys: Vec<SigningKey>,
    pub root_threshold: u32,
    pub targets_keys: Vec<SigningKey>,
    pub targets_threshold: u32,
    pub director_keys: Vec<SigningKey>,
    pub director_threshold: u32,
}

fn role_keys(keys: &[SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: keys.iter().map(|k| k.key_id()).collect(),
        threshold,
    }
}

impl Repo {
    /// Root 2-of-3, targets 2-of-2, director 1-of-1.
    pub fn standard() -> Repo {
        Repo {
            root_keys: vec![key(1), key(2), key(3)],
            root_threshold: 2,
            targets_keys: vec![key(11), key(12)],
            targets_threshold: 2,
            director_keys: vec![key(21)],
            director_threshold: 1,
        }
    }

    pub fn root_metadata(&self, version: u64, expires: Timestamp) -> RootMetadata {
        let public: Vec<_> = self
            .root_keys
            .iter()
            .chain(&self.targets_keys)
            .chain(&self.director_keys)
            .map(|k| k.public_key())
            .collect();
        RootMetadata::new(
            version,
            expires,
            &public,
            Roles {
                root: role_keys(&self.root_keys, self.root_threshold),
                targets: role_keys(&self.targets_keys, self.targets_threshold),
                director: role_keys(&self.director_keys, self.director_threshold),
            },
        )
    }

    /// Root `version` signed by this repo's own root keys.
    pub fn root(&self, version: u64) -> Vec<u8> {
        let keys: Vec<&SigningKey> = self.root_keys.iter().collect();
        sign(
            Role::Root,
            to_payload(&self.root_metadata(version, future())),
            &keys,
        )
    }

    pub fn anchor(&self) -> TrustedState {
        TrustedState::from_anchor(&self.root(1)).expect("the fixture root must be a valid anchor")
    }

    pub fn targets_keys(&self) -> Vec<&SigningKey> {
        self.targets_keys.iter().collect()
    }

    pub fn director_keys(&self) -> Vec<&SigningKey> {
        self.director_keys.iter().collect()
    }

    pub fn targets(&self, doc: &TargetsMetadata) -> Vec<u8> {
        sign(Role::Targets, to_payload(doc), &self.targets_keys())
    }

    pub fn director(&self, doc: &DirectorMetadata) -> Vec<u8> {
        sign(Role::Director, to_payload(doc), &self.director_keys())
    }

    /// A valid update: targets v1 listing the image, director v1 assigning it.
    pub fn update(&self) -> MetadataUpdate {
        MetadataUpdate {
            roots: vec![],
            targets: self.targets(&targets_doc(1)),
            director: self.director(&director_doc(1)),
        }
    }
}

pub fn sign(role: Role, payload: Vec<u8>, keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign(role.payload_type(), payload, keys).to_json_bytes()
}

pub fn target_image() -> TargetImage {
    TargetImage {
        hardware_id: HARDWARE_ID.to_owned(),
        version: "2.0.0".to_owned(),
        security_version: 5,
        length: image_bytes().len() as u64,
        sha256: Sha256Digest::of(image_bytes()),
    }
}

pub fn targets_doc(version: u64) -> TargetsMetadata {
    TargetsMetadata::new(version, future(), [(IMAGE_NAME.to_owned(), target_image())])
}

pub fn assignment() -> Assignment {
    let target = target_image();
    Assignment {
        ecu: "main".to_owned(),
        hardware_id: HARDWARE_ID.to_owned(),
        deployment_id: "dep-1".to_owned(),
        image: ImageRef {
            name: IMAGE_NAME.to_owned(),
            version: target.version,
            length: target.length,
            sha256: target.sha256,
            url: format!("/v1/blobs/{}", target.sha256),
        },
        delta: None,
        preconditions: None,
    }
}

/// Director `version` bound to `targets_doc(1)`, the targets of [`Repo::update`].
pub fn director_doc(version: u64) -> DirectorMetadata {
    director_doc_for(version, &targets_doc(1))
}

/// Director `version` bound to `targets` (as [`Repo::targets`] signs it).
pub fn director_doc_for(version: u64, targets: &TargetsMetadata) -> DirectorMetadata {
    DirectorMetadata::new(
        version,
        future(),
        VEHICLE_ID,
        binding(targets),
        vec![assignment()],
        300,
    )
}

/// The binding of a director to `targets` as signed by [`Repo::targets`].
pub fn binding(targets: &TargetsMetadata) -> TargetsBinding {
    TargetsBinding::of_payload(targets.version, &to_payload(targets))
}

pub fn vehicle() -> VehicleIdentity {
    VehicleIdentity {
        vehicle_id: VEHICLE_ID.to_owned(),
        ecus: [("main".to_owned(), HARDWARE_ID.to_owned())].into(),
    }
}

/// Replaces the signatures of a wire envelope by `edit(signatures)`.
pub fn edit_signatures(
    envelope: &[u8],
    edit: impl FnOnce(&mut Vec<ota_core::envelope::EnvelopeSignature>),
) -> Vec<u8> {
    let mut parsed = Envelope::parse(envelope).unwrap();
    edit(&mut parsed.signatures);
    parsed.to_json_bytes()
}
