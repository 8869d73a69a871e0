//! The file trust store over a vehicle's life: the root chain it keeps in `roots/` is
//! re-walked at every load, however long it has grown; the per-update cap on root
//! rotations applies to one received update only.

use crate::verify_cli::{director_doc_for, key, sign_director, targets};
use ota_agent::trust_store::FileTrustStore;
use ota_agent::verifier::{Persist, Verifier, VerifyError};
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{to_payload, Role, RoleKeys, Roles, RootMetadata};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, VehicleIdentity, MAX_ROOT_ROTATIONS};
use std::path::Path;

pub fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
}

/// The root key of root version `version`: a fresh key at every rotation.
pub fn root_key(version: u64) -> SigningKey {
    let mut seed = [0xA5; 32];
    seed[..8].copy_from_slice(&version.to_le_bytes());
    SigningKey::from_seed(&seed)
}

fn one(key: &SigningKey) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    }
}

/// Root `version`, signed by its own root key and (from v2 on) by the previous one.
pub fn rotated_root(version: u64) -> Vec<u8> {
    let own = root_key(version);
    let meta = RootMetadata::new(
        version,
        Timestamp::parse("2027-06-01T00:00:00Z").unwrap(),
        &[own.public_key(), key(2).public_key(), key(3).public_key()],
        Roles {
            root: one(&own),
            targets: one(&key(2)),
            director: one(&key(3)),
        },
    );
    let previous = root_key(version.saturating_sub(1));
    let signers: Vec<&SigningKey> = if version > 1 {
        vec![&previous, &own]
    } else {
        vec![&own]
    };
    Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &signers).to_json_bytes()
}

pub fn vehicle() -> VehicleIdentity {
    VehicleIdentity {
        vehicle_id: "veh-42".into(),
        ecus: [("tcu".to_owned(), "tcu-v2".to_owned())].into(),
    }
}

pub fn update(roots: impl IntoIterator<Item = u64>, version: u64) -> MetadataUpdate {
    MetadataUpdate {
        roots: roots.into_iter().map(rotated_root).collect(),
        targets: targets(version),
        director: sign_director(&director_doc_for(version, version), &key(3)),
    }
}

fn verifier(dir: &Path) -> Verifier {
    Verifier::new(FileTrustStore::new(dir), Some(vehicle()))
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in [dir.to_owned(), dir.join("roots")] {
        for entry in std::fs::read_dir(sub).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                files.push((
                    entry.path().display().to_string(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

/// 200 rotations over one trust store's life, applied one to four at a time, each
/// persisted and re-loaded: the store must keep loading past 64 stored roots and keep
/// accepting honest updates; only a single update with too many roots is refused.
#[test]
fn vehicle_is_not_bricked_after_200_root_rotations_over_its_life() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), rotated_root(1)).unwrap();
    let verifier = verifier(dir.path());
    let mut trusted = 1u64;
    let mut batch = 0u64;
    while trusted < 201 {
        let next = (trusted + 1 + batch % 4).min(201);
        let verified = verifier
            .verify(&update(trusted + 1..=next, 1), now(), Persist::Yes)
            .unwrap_or_else(|e| panic!("rotation to root v{next} must be accepted: {e}"));
        assert_eq!(verified.state.root().version(), next);
        trusted = next;
        batch += 1;
    }
    let store = FileTrustStore::new(dir.path());
    let loaded = store
        .load()
        .expect("a store holding 200 accepted rotations must still load");
    assert_eq!(loaded.root().version(), 201);

    // An honest update after the 200th rotation is accepted, and the store still loads.
    let verified = verifier
        .verify(&update(std::iter::empty(), 2), now(), Persist::Yes)
        .expect("an honest update must be accepted after 200 rotations");
    assert_eq!(verified.director.version, 2);
    assert_eq!(store.load().unwrap().director_record().unwrap().version, 2);

    // One update carrying more roots than the per-update cap is still refused, and
    // changes nothing.
    let before = snapshot(dir.path());
    let too_many = 202..=202 + MAX_ROOT_ROTATIONS as u64;
    assert_eq!(too_many.clone().count(), MAX_ROOT_ROTATIONS + 1);
    match verifier.verify(&update(too_many, 3), now(), Persist::Yes) {
        Err(VerifyError::Rejected(err)) => assert_eq!(err.kind(), "too_many_root_rotations"),
        other => panic!("65 roots in one update must be refused, got {other:?}"),
    }
    assert_eq!(snapshot(dir.path()), before, "a refusal must write nothing");
}

/// The cap boundary: exactly 64 roots in one update are walked (and the store loads the
/// resulting chain); 65 are refused.
#[test]
fn root_rotation_cap_is_exactly_64_per_update() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), rotated_root(1)).unwrap();
    let verifier = verifier(dir.path());
    let last = 1 + MAX_ROOT_ROTATIONS as u64;
    match verifier.verify(&update(2..=last + 1, 1), now(), Persist::Yes) {
        Err(VerifyError::Rejected(err)) => assert_eq!(err.kind(), "too_many_root_rotations"),
        other => panic!("65 roots in one update must be refused, got {other:?}"),
    }
    let verified = verifier
        .verify(&update(2..=last, 1), now(), Persist::Yes)
        .expect("exactly 64 roots in one update must be accepted");
    assert_eq!(verified.state.root().version(), last);
    assert_eq!(
        FileTrustStore::new(dir.path())
            .load()
            .unwrap()
            .root()
            .version(),
        last
    );
}
