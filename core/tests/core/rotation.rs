//! Root rotation: the chain is walked one version at a time, each new root signed by a
//! threshold of the previous root keys AND of its own.

use crate::fixtures::*;
use ota_core::error::Error;
use ota_core::key::SigningKey;
use ota_core::metadata::{to_payload, Role, RootMetadata};
use ota_core::trust::{MetadataUpdate, MAX_ROOT_ROTATIONS};

/// The standard repo with its root keys replaced by `keys` (threshold 2).
fn rotated(keys: Vec<SigningKey>) -> Repo {
    Repo {
        root_keys: keys,
        ..Repo::standard()
    }
}

fn signed(meta: &RootMetadata, keys: &[&SigningKey]) -> Vec<u8> {
    sign(Role::Root, to_payload(meta), keys)
}

#[test]
fn valid_chain_of_rotations_is_walked_to_the_newest_root() {
    let v1 = Repo::standard();
    let v2 = rotated(vec![key(4), key(5), key(6)]);
    let v3 = rotated(vec![key(7), key(8), key(9)]);
    let root2 = signed(
        &v2.root_metadata(2, future()),
        &[&key(1), &key(2), &key(4), &key(5)],
    );
    let root3 = signed(
        &v3.root_metadata(3, future()),
        &[&key(5), &key(6), &key(7), &key(9)],
    );
    let state = v1.anchor();
    let update = MetadataUpdate {
        roots: vec![v1.root(1), root2, root3],
        ..v3.update()
    };
    let verified = state
        .verify_update(&update, Some(&vehicle()), now())
        .unwrap();
    assert_eq!(verified.state.root().version(), 3, "must end on root v3");
    // The new state now refuses what only the retired keys sign.
    let old_keys_only = signed(&v1.root_metadata(4, future()), &[&key(1), &key(2)]);
    assert!(matches!(
        verified.state.update_root(&[old_keys_only]),
        Err(Error::ThresholdNotMet {
            role: Role::Root,
            ..
        })
    ));
}

#[test]
fn rotation_attacks_are_rejected_with_their_typed_error() {
    let v1 = Repo::standard();
    let v2 = rotated(vec![key(4), key(5), key(6)]);
    type Expectation = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<Vec<u8>>, Expectation)> = vec![
        (
            "not-signed-by-old-keys",
            vec![signed(
                &v2.root_metadata(2, future()),
                &[&key(4), &key(5), &key(6)],
            )],
            |e| {
                matches!(
                    e,
                    Error::ThresholdNotMet {
                        role: Role::Root,
                        signed_by: "trusted root",
                        ..
                    }
                )
            },
        ),
        (
            "old-threshold-not-met",
            vec![signed(
                &v2.root_metadata(2, future()),
                &[&key(1), &key(4), &key(5)],
            )],
            |e| {
                matches!(
                    e,
                    Error::ThresholdNotMet {
                        role: Role::Root,
                        signed_by: "trusted root",
                        valid: 1,
                        ..
                    }
                )
            },
        ),
        (
            "new-threshold-not-met",
            vec![signed(
                &v2.root_metadata(2, future()),
                &[&key(1), &key(2), &key(4)],
            )],
            |e| {
                matches!(
                    e,
                    Error::ThresholdNotMet {
                        role: Role::Root,
                        signed_by: "its own root keys",
                        valid: 1,
                        ..
                    }
                )
            },
        ),
        (
            "version-skipped",
            vec![signed(
                &v2.root_metadata(3, future()),
                &[&key(1), &key(2), &key(4), &key(5)],
            )],
            |e| {
                matches!(
                    e,
                    Error::RootVersionSkipped {
                        trusted: 1,
                        expected: 2,
                        received: 3
                    }
                )
            },
        ),
        (
            "weak-public-key-in-root",
            {
                let mut meta = v1.root_metadata(2, future());
                let mut weak = [0u8; 32];
                weak[0] = 1; // the identity point
                let id = ota_core::key::KeyId::of_public_key(&weak);
                meta.keys.0.insert(
                    id.clone(),
                    ota_core::key::KeyEntry {
                        keytype: "ed25519".into(),
                        public: hex::encode(weak),
                    },
                );
                meta.roles.targets.keyids.push(id);
                vec![signed(&meta, &[&key(1), &key(2)])]
            },
            |e| matches!(e, Error::WeakPublicKey { .. }),
        ),
        (
            "same-key-listed-under-two-keyids",
            {
                let mut meta = v1.root_metadata(2, future());
                let entry = ota_core::key::KeyEntry::ed25519(&key(11).public_key());
                let alias = ota_core::key::KeyId::of_public_key(&[0xab; 32]);
                meta.keys.0.insert(alias.clone(), entry);
                meta.roles.targets.keyids.push(alias);
                vec![signed(&meta, &[&key(1), &key(2)])]
            },
            |e| matches!(e, Error::KeyIdMismatch { .. }),
        ),
        (
            "threshold-zero",
            {
                let mut meta = v1.root_metadata(2, future());
                meta.roles.director.threshold = 0;
                vec![signed(&meta, &[&key(1), &key(2)])]
            },
            |e| {
                matches!(
                    e,
                    Error::InvalidThreshold {
                        role: Role::Director,
                        ..
                    }
                )
            },
        ),
        (
            "too-many-rotations",
            vec![v1.root(1); MAX_ROOT_ROTATIONS + 1],
            |e| matches!(e, Error::TooManyRootRotations { .. }),
        ),
        (
            "wrong-payload-type",
            vec![sign(
                Role::Targets,
                to_payload(&v2.root_metadata(2, future())),
                &[&key(1), &key(2)],
            )],
            |e| matches!(e, Error::WrongPayloadType { .. }),
        ),
    ];
    // `update_root` borrows the state and returns a new one, so a rejection cannot
    // change it in memory (pinned by `attacks::verification_cannot_mutate_the_trusted_state`);
    // that nothing of a rejected rotation reaches disk is checked byte for byte by
    // `agent/tests/agent/directive.rs`
    // (`a_refused_directive_after_a_rotation_writes_nothing_of_its_own`).
    for (attack, roots, expect) in cases {
        match &v1.anchor().update_root(&roots) {
            Err(err) if expect(err) => {}
            other => panic!("{attack}: unexpected outcome {other:?}"),
        }
    }
}

#[test]
fn rotating_the_targets_key_forgets_the_targets_version_floor() {
    // A targets key compromised and used to sign version 1000 must not lock the fleet
    // out once root replaces that key: the floor is forgotten with the key.
    let v1 = Repo::standard();
    let state = v1
        .anchor()
        .verify_update(
            &MetadataUpdate {
                roots: vec![],
                targets: v1.targets(&targets_doc(1000)),
                director: v1.director(&director_doc_for(1, &targets_doc(1000))),
            },
            None,
            now(),
        )
        .unwrap()
        .state;
    let v2 = Repo {
        targets_keys: vec![key(13), key(14)],
        ..Repo::standard()
    };
    let root2 = signed(&v2.root_metadata(2, future()), &[&key(1), &key(2)]);
    let update = MetadataUpdate {
        roots: vec![root2],
        targets: v2.targets(&targets_doc(1)),
        director: v2.director(&director_doc(2)),
    };
    let verified = state.verify_update(&update, None, now()).unwrap();
    assert_eq!(verified.state.targets_record().unwrap().version, 1);
    // Director keys did not change, so its floor still holds.
    let replay = MetadataUpdate {
        roots: vec![],
        targets: v2.targets(&targets_doc(1)),
        director: v2.director(&director_doc(1)),
    };
    assert!(matches!(
        verified.state.verify_update(&replay, None, now()),
        Err(Error::Rollback {
            role: Role::Director,
            ..
        })
    ));
}

#[test]
fn anchor_must_be_self_signed_and_well_formed() {
    let v1 = Repo::standard();
    let unsigned = signed(&v1.root_metadata(1, future()), &[&key(1)]);
    assert!(matches!(
        ota_core::trust::TrustedState::from_anchor(&unsigned),
        Err(Error::ThresholdNotMet {
            role: Role::Root,
            valid: 1,
            required: 2,
            ..
        })
    ));
}

/// Roots 2..=`count`+1 of `repo`: `count` rotations after the anchor, keys unchanged.
fn chain(repo: &Repo, count: usize) -> Vec<Vec<u8>> {
    (2..=count as u64 + 1).map(|v| repo.root(v)).collect()
}

#[test]
fn one_update_walks_exactly_64_rotations_and_refuses_65() {
    assert_eq!(
        MAX_ROOT_ROTATIONS, 64,
        "PROTOCOL.md documents a cap of 64 roots per update"
    );
    let repo = Repo::standard();
    let roots = chain(&repo, MAX_ROOT_ROTATIONS + 1);
    let state = repo
        .anchor()
        .update_root(&roots[..MAX_ROOT_ROTATIONS])
        .expect("exactly 64 rotations in one update are walked");
    assert_eq!(state.root().version(), 65);
    assert_eq!(
        state.root_envelope(),
        roots[MAX_ROOT_ROTATIONS - 1].as_slice()
    );
    match repo.anchor().update_root(&roots) {
        Err(Error::TooManyRootRotations { limit: 64 }) => {}
        other => panic!("65 rotations in one update must be refused, got {other:?}"),
    }
    // The chain a vehicle already stored is re-walked without the per-update cap.
    let walked = repo
        .anchor()
        .walk_stored_root_chain(&roots)
        .expect("a stored chain of 65 rotations is re-walked");
    assert_eq!(walked.root().version(), 66);
}

#[test]
fn the_trusted_root_envelope_is_the_exact_bytes_of_the_newest_root() {
    let repo = Repo::standard();
    let anchor = repo.root(1);
    let state = ota_core::trust::TrustedState::from_anchor(&anchor).unwrap();
    assert_eq!(state.root_envelope(), anchor.as_slice());
    let root2 = repo.root(2);
    let rotated = state.update_root(std::slice::from_ref(&root2)).unwrap();
    assert_eq!(
        rotated.root_envelope(),
        root2.as_slice(),
        "after a rotation the new root's own bytes are trusted"
    );
    assert_eq!(
        rotated.update_root(std::slice::from_ref(&anchor)),
        Err(Error::Rollback {
            role: Role::Root,
            trusted: 2,
            received: 1
        })
    );
    let resent = rotated.update_root(std::slice::from_ref(&root2)).unwrap();
    assert_eq!(
        resent, rotated,
        "the trusted root sent again changes nothing"
    );
    let reloaded = ota_core::trust::TrustedState::from_persisted(&rotated.to_persisted()).unwrap();
    assert_eq!(reloaded.root_envelope(), root2.as_slice());
    assert_eq!(reloaded, rotated);
}
