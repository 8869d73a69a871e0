//! Adversarial table: every row is named after the attack it mounts, builds the trusted
//! state and the hostile update, and says which typed rejection must come back.
//!
//! That a rejection leaves the trusted state unchanged is not asserted row by row here:
//! `verify_update` takes the state by shared reference and returns a new one, so there
//! is nothing in memory it could change (`verification_cannot_mutate_the_trusted_state`
//! pins that signature). The claim that matters, that nothing of a rejected update
//! reaches the trust store on disk, is checked byte for byte at the agent level:
//! `agent/tests/agent/verify_cli.rs`
//! (`each_attack_exits_1_with_its_typed_rejection_and_leaves_the_store_unchanged`) and
//! `agent/tests/agent/directive.rs`
//! (`a_refused_directive_after_a_rotation_writes_nothing_of_its_own`: a root rotation
//! walked in the same update as a rejected director leaves no trace).

use crate::fixtures::*;
use ota_core::encoding::{decode_base64, encode_base64, Sha256Digest};
use ota_core::envelope::{Envelope, EnvelopeSignature};
use ota_core::error::{Error, SignatureRejection};
use ota_core::metadata::{to_payload, Role};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState, VehicleIdentity, VerifiedUpdate};

struct Case {
    attack: &'static str,
    state: TrustedState,
    update: MetadataUpdate,
    vehicle: Option<VehicleIdentity>,
    now: Timestamp,
    expect: fn(&Result<VerifiedUpdate, Error>) -> bool,
}

fn case(attack: &'static str, expect: fn(&Result<VerifiedUpdate, Error>) -> bool) -> Case {
    let repo = Repo::standard();
    Case {
        attack,
        state: repo.anchor(),
        update: repo.update(),
        vehicle: Some(vehicle()),
        now: now(),
        expect,
    }
}

/// Adds the group order L to the S half of a signature: the same point equation holds
/// for a lax verifier, but S is no longer canonical (malleability).
fn non_canonical_s(sig: &[u8]) -> Vec<u8> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = sig.to_vec();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = out[32 + i] as u16 + L[i] as u16 + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

fn threshold_not_met(
    result: &Result<VerifiedUpdate, Error>,
    role: Role,
    valid: usize,
    why: fn(&SignatureRejection) -> bool,
) -> bool {
    matches!(result, Err(Error::ThresholdNotMet { role: r, valid: v, rejected, .. })
        if *r == role && *v == valid && rejected.iter().any(why))
}

fn cases() -> Vec<Case> {
    let repo = Repo::standard();
    let mut cases = Vec::new();

    cases.push(case("valid-update", |r| {
        matches!(r, Ok(u) if u.assignments.len() == 1 && u.assignments[0].security_version == 5)
    }));

    let mut c = case(
        "no-signatures",
        |r| matches!(r, Err(Error::ThresholdNotMet { role: Role::Director, valid: 0, rejected, .. }) if rejected.is_empty()),
    );
    c.update.director = edit_signatures(&c.update.director, |s| s.clear());
    cases.push(c);

    let mut c = case("under-threshold", |r| {
        matches!(
            r,
            Err(Error::ThresholdNotMet {
                role: Role::Targets,
                valid: 1,
                required: 2,
                ..
            })
        )
    });
    c.update.targets = sign(Role::Targets, to_payload(&targets_doc(1)), &[&key(11)]);
    cases.push(c);

    let mut c = case("duplicate-sigs", |r| {
        threshold_not_met(r, Role::Targets, 1, |j| {
            matches!(j, SignatureRejection::DuplicateKey { .. })
        })
    });
    c.update.targets = sign(
        Role::Targets,
        to_payload(&targets_doc(1)),
        &[&key(11), &key(11)],
    );
    cases.push(c);

    // The second signature claims another key id for the same key (an uppercase
    // spelling); it can neither resolve to a listed key nor count twice.
    let mut c = case("same-key-two-keyids", |r| {
        threshold_not_met(r, Role::Targets, 1, |j| {
            matches!(j, SignatureRejection::UnknownKey { .. })
        })
    });
    c.update.targets = edit_signatures(
        &sign(Role::Targets, to_payload(&targets_doc(1)), &[&key(11)]),
        |s| {
            let mut alias = s[0].clone();
            alias.keyid = alias.keyid.to_uppercase();
            s.push(alias);
        },
    );
    cases.push(c);

    let mut c = case("wrong-role-key", |r| {
        threshold_not_met(r, Role::Director, 0, |j| {
            matches!(
                j,
                SignatureRejection::NotAuthorisedForRole {
                    role: Role::Director,
                    ..
                }
            )
        })
    });
    c.update.director = sign(Role::Director, to_payload(&director_doc(1)), &[&key(11)]);
    cases.push(c);

    let mut c = case("extra-garbage-signature", |r| r.is_ok());
    c.update.director = edit_signatures(&c.update.director, |s| {
        s.push(EnvelopeSignature {
            keyid: key(99).key_id().to_string(),
            sig: encode_base64(&[0x5a; 64]),
        });
        s.push(EnvelopeSignature {
            keyid: key(21).key_id().to_string(),
            sig: "not base64 at all!".to_owned(),
        });
        s.push(EnvelopeSignature {
            keyid: "garbage".to_owned(),
            sig: String::new(),
        });
    });
    cases.push(c);

    let mut c = case("non-canonical-s", |r| {
        threshold_not_met(r, Role::Director, 0, |j| {
            matches!(j, SignatureRejection::Invalid { .. })
        })
    });
    c.update.director = edit_signatures(&c.update.director, |s| {
        let raw = decode_base64(&s[0].sig).unwrap();
        s[0].sig = encode_base64(&non_canonical_s(&raw));
    });
    cases.push(c);

    for (attack, len) in [("signature-63-bytes", 63usize), ("signature-65-bytes", 65)] {
        let mut c = case(attack, |r| {
            threshold_not_met(r, Role::Director, 0, |j| {
                matches!(j, SignatureRejection::Malformed { .. })
            })
        });
        c.update.director = edit_signatures(&c.update.director, |s| {
            let mut raw = decode_base64(&s[0].sig).unwrap();
            raw.resize(len, 0);
            s[0].sig = encode_base64(&raw);
        });
        cases.push(c);
    }

    let mut c = case("tampered-payload", |r| {
        threshold_not_met(r, Role::Director, 0, |j| {
            matches!(j, SignatureRejection::Invalid { .. })
        })
    });
    let mut tampered = Envelope::parse(&c.update.director).unwrap();
    let mut doc = director_doc(1);
    doc.assignments[0].image.url = "http://evil.example/image".to_owned();
    tampered.payload = to_payload(&doc);
    c.update.director = tampered.to_json_bytes();
    cases.push(c);

    let mut c = case("wrong-payload-type", |r| {
        matches!(r, Err(Error::WrongPayloadType { .. }))
    });
    c.update.director = c.update.targets.clone();
    cases.push(c);

    // Role documents of every role, expired.
    let mut c = case("expired-root", |r| {
        matches!(
            r,
            Err(Error::Expired {
                role: Role::Root,
                ..
            })
        )
    });
    c.now = Timestamp::parse("2027-06-01T00:00:00Z").unwrap();
    cases.push(c);

    let mut c = case("expired-targets", |r| {
        matches!(
            r,
            Err(Error::Expired {
                role: Role::Targets,
                ..
            })
        )
    });
    let mut doc = targets_doc(1);
    doc.expires = past();
    c.update.targets = repo.targets(&doc);
    cases.push(c);

    let mut c = case("expired-director", |r| {
        matches!(
            r,
            Err(Error::Expired {
                role: Role::Director,
                ..
            })
        )
    });
    let mut doc = director_doc(1);
    doc.expires = now(); // expiring exactly now is expired
    c.update.director = repo.director(&doc);
    cases.push(c);

    // Version rollback of each role: the state already trusts newer versions.
    let trusting_v5 = |repo: &Repo| {
        repo.anchor()
            .verify_update(
                &MetadataUpdate {
                    roots: vec![],
                    targets: repo.targets(&targets_doc(5)),
                    director: repo.director(&director_doc_for(5, &targets_doc(5))),
                },
                Some(&vehicle()),
                now(),
            )
            .unwrap()
            .state
    };
    let mut c = case("targets-version-rollback", |r| {
        matches!(
            r,
            Err(Error::Rollback {
                role: Role::Targets,
                trusted: 5,
                received: 4
            })
        )
    });
    c.state = trusting_v5(&repo);
    c.update.targets = repo.targets(&targets_doc(4));
    c.update.director = repo.director(&director_doc(6));
    cases.push(c);

    let mut c = case("director-version-rollback", |r| {
        matches!(
            r,
            Err(Error::Rollback {
                role: Role::Director,
                trusted: 5,
                received: 4
            })
        )
    });
    c.state = trusting_v5(&repo);
    c.update.targets = repo.targets(&targets_doc(5));
    c.update.director = repo.director(&director_doc_for(4, &targets_doc(5)));
    cases.push(c);

    let mut c = case("director-version-reused-with-other-content", |r| {
        matches!(
            r,
            Err(Error::VersionReused {
                role: Role::Director,
                version: 5
            })
        )
    });
    c.state = trusting_v5(&repo);
    c.update.targets = repo.targets(&targets_doc(5));
    let mut doc = director_doc_for(5, &targets_doc(5));
    doc.next_poll_seconds = 1;
    c.update.director = repo.director(&doc);
    cases.push(c);

    let mut c = case("same-version-same-content-is-a-redownload", |r| r.is_ok());
    c.state = trusting_v5(&repo);
    c.update.targets = repo.targets(&targets_doc(5));
    c.update.director = repo.director(&director_doc_for(5, &targets_doc(5)));
    cases.push(c);

    // Mix-and-match of targets (freshness): an attacker keeps an old, still-unexpired
    // targets document and pairs it with the fresh director built against a newer one.
    let mut c = case("old-unexpired-targets-paired-with-fresh-director", |r| {
        matches!(
            r,
            Err(Error::TargetsMismatch {
                director_version: 6,
                targets_version: 5,
                ..
            })
        )
    });
    c.state = trusting_v5(&repo);
    c.update.targets = repo.targets(&targets_doc(5));
    c.update.director = repo.director(&director_doc_for(7, &targets_doc(6)));
    cases.push(c);

    // Same targets version, other content (a targets key signing two documents with one
    // version): the director's payload digest pins the one it was built against.
    let mut c = case("targets-of-the-bound-version-with-other-content", |r| {
        matches!(
            r,
            Err(Error::TargetsMismatch {
                director_version: 1,
                targets_version: 1,
                ..
            })
        )
    });
    let mut other = targets_doc(1);
    other.expires = Timestamp::parse("2027-05-01T00:00:00Z").unwrap();
    c.update.targets = repo.targets(&other);
    cases.push(c);

    let mut c = case("root-version-rollback", |r| {
        matches!(
            r,
            Err(Error::Rollback {
                role: Role::Root,
                trusted: 2,
                received: 1
            })
        )
    });
    let mut old_root = repo.root_metadata(1, future());
    old_root.expires = Timestamp::parse("2027-01-01T00:00:00Z").unwrap(); // other content than v1
    c.state = repo.anchor().update_root(&[repo.root(2)]).unwrap();
    c.update.roots = vec![sign(Role::Root, to_payload(&old_root), &[&key(1), &key(2)])];
    cases.push(c);

    let mut c = case("security-version-rollback", |r| {
        matches!(
            r,
            Err(Error::SecurityVersionRollback {
                floor: 6,
                received: 5,
                ..
            })
        )
    });
    c.state = repo.anchor().with_installed(HARDWARE_ID, 6);
    cases.push(c);

    let mut c = case("director-hash-differs-from-targets", |r| {
        matches!(r, Err(Error::HashMismatch { .. }))
    });
    let mut doc = director_doc(1);
    doc.assignments[0].image.sha256 = Sha256Digest::of(b"a malicious image");
    c.update.director = repo.director(&doc);
    cases.push(c);

    let mut c = case("director-length-differs-from-targets", |r| {
        matches!(r, Err(Error::LengthMismatch { .. }))
    });
    let mut doc = director_doc(1);
    doc.assignments[0].image.length += 1;
    c.update.director = repo.director(&doc);
    cases.push(c);

    let mut c = case("director-image-not-in-targets", |r| {
        matches!(r, Err(Error::TargetNotFound { .. }))
    });
    let mut doc = director_doc(1);
    doc.assignments[0].image.name = "unlisted.img".to_owned();
    c.update.director = repo.director(&doc);
    cases.push(c);

    // The director names another hardware id than the image was built for.
    let mut c = case("wrong-hardware-id-against-targets", |r| {
        matches!(r, Err(Error::WrongHardwareId { .. }))
    });
    let mut doc = director_doc(1);
    doc.assignments[0].hardware_id = "ecu-body-v1".to_owned();
    c.update.director = repo.director(&doc);
    cases.push(c);

    // Targets and director agree, but the vehicle's ECU is another hardware.
    let mut c = case(
        "wrong-hardware-id-for-this-vehicle",
        |r| matches!(r, Err(Error::WrongHardwareId { expected, .. }) if expected == "ecu-main-v3"),
    );
    let mut identity = vehicle();
    identity
        .ecus
        .insert("main".to_owned(), "ecu-main-v3".to_owned());
    c.vehicle = Some(identity);
    cases.push(c);

    let mut c = case("director-for-another-vehicle", |r| {
        matches!(r, Err(Error::WrongVehicle { .. }))
    });
    let mut doc = director_doc(1);
    doc.vehicle_id = "veh-9999".to_owned();
    c.update.director = repo.director(&doc);
    cases.push(c);

    let mut c = case("director-assigns-unknown-ecu", |r| {
        matches!(r, Err(Error::UnknownEcu { .. }))
    });
    let mut doc = director_doc(1);
    doc.assignments[0].ecu = "gateway".to_owned();
    c.update.director = repo.director(&doc);
    cases.push(c);

    let mut c = case("same-ecu-assigned-twice", |r| {
        matches!(
            r,
            Err(Error::MalformedMetadata {
                role: Role::Director,
                ..
            })
        )
    });
    let mut doc = director_doc(1);
    doc.assignments.push(assignment());
    c.update.director = repo.director(&doc);
    cases.push(c);

    // Signed, but the payload itself is not one exact JSON document.
    let mut c = case(
        "payload-trailing-bytes",
        |r| matches!(r, Err(Error::MalformedMetadata { role: Role::Targets, reason }) if reason.contains("trailing")),
    );
    let mut payload = to_payload(&targets_doc(1));
    payload.extend_from_slice(b"{}");
    c.update.targets = sign(Role::Targets, payload, &repo.targets_keys());
    cases.push(c);

    let mut c = case("payload-trailing-whitespace", |r| {
        matches!(
            r,
            Err(Error::MalformedMetadata {
                role: Role::Targets,
                ..
            })
        )
    });
    let mut payload = to_payload(&targets_doc(1));
    payload.push(b'\n');
    c.update.targets = sign(Role::Targets, payload, &repo.targets_keys());
    cases.push(c);

    let mut c = case(
        "payload-duplicate-json-keys",
        |r| matches!(r, Err(Error::MalformedMetadata { role: Role::Director, reason }) if reason.contains("duplicate")),
    );
    let payload = String::from_utf8(to_payload(&director_doc(1))).unwrap();
    let payload = payload.replacen("{\"_type\"", "{\"version\":99,\"_type\"", 1);
    c.update.director = sign(Role::Director, payload.into_bytes(), &repo.director_keys());
    cases.push(c);

    let mut c = case(
        "payload-duplicate-image-names",
        |r| matches!(r, Err(Error::MalformedMetadata { role: Role::Targets, reason }) if reason.contains("duplicate")),
    );
    let payload = String::from_utf8(to_payload(&targets_doc(1))).unwrap();
    let entry = serde_json::to_string(&target_image()).unwrap();
    let payload = payload.replacen(
        "\"targets\":{",
        &format!("\"targets\":{{\"{IMAGE_NAME}\":{entry},"),
        1,
    );
    c.update.targets = sign(Role::Targets, payload.into_bytes(), &repo.targets_keys());
    cases.push(c);

    let mut c = case("payload-unknown-field", |r| {
        matches!(
            r,
            Err(Error::MalformedMetadata {
                role: Role::Director,
                ..
            })
        )
    });
    let payload = String::from_utf8(to_payload(&director_doc(1))).unwrap();
    let payload = payload.replacen("{\"_type\"", "{\"allow_downgrade\":true,\"_type\"", 1);
    c.update.director = sign(Role::Director, payload.into_bytes(), &repo.director_keys());
    cases.push(c);

    let mut c = case("payload-of-another-role", |r| {
        matches!(
            r,
            Err(Error::MalformedMetadata {
                role: Role::Director,
                ..
            })
        )
    });
    c.update.director = sign(
        Role::Director,
        to_payload(&targets_doc(1)),
        &repo.director_keys(),
    );
    cases.push(c);

    let mut c = case("endless-data", |r| {
        matches!(r, Err(Error::EnvelopeTooLarge { .. }))
    });
    c.update.director = vec![b'{'; 2 * 1024 * 1024];
    cases.push(c);

    cases
}

/// The reason a rejected update cannot touch the caller's state: verification borrows
/// it immutably and hands back a new state. Changing either signature to `&mut self`
/// stops this from compiling.
#[test]
fn verification_cannot_mutate_the_trusted_state() {
    type VerifyUpdate = fn(
        &TrustedState,
        &MetadataUpdate,
        Option<&VehicleIdentity>,
        Timestamp,
    ) -> Result<VerifiedUpdate, Error>;
    type UpdateRoot = fn(&TrustedState, &[Vec<u8>]) -> Result<TrustedState, Error>;
    let _: VerifyUpdate = TrustedState::verify_update;
    let _: UpdateRoot = TrustedState::update_root;
}

#[test]
fn every_attack_is_rejected_with_its_typed_error() {
    let mut failures = Vec::new();
    for case in cases() {
        let result = case
            .state
            .verify_update(&case.update, case.vehicle.as_ref(), case.now);
        if !(case.expect)(&result) {
            failures.push(format!(
                "{}: got {:?}",
                case.attack,
                result.map(|_| "accepted")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "unexpected outcomes:\n{}",
        failures.join("\n")
    );
}

#[test]
fn accepted_update_raises_version_floors_but_not_the_security_floor() {
    let repo = Repo::standard();
    let state = repo.anchor();
    let verified = state
        .verify_update(&repo.update(), Some(&vehicle()), now())
        .unwrap();
    assert_eq!(verified.state.targets_record().unwrap().version, 1);
    assert_eq!(verified.state.director_record().unwrap().version, 1);
    assert_eq!(
        verified.state.security_floor(HARDWARE_ID),
        0,
        "verification alone must not raise the security floor"
    );
    let installed = verified.state.with_installed(HARDWARE_ID, 5);
    assert_eq!(installed.security_floor(HARDWARE_ID), 5);
    assert_eq!(
        installed
            .with_installed(HARDWARE_ID, 3)
            .security_floor(HARDWARE_ID),
        5
    );
}

#[test]
fn trusted_state_survives_persistence_and_corruption_fails_closed() {
    let repo = Repo::standard();
    let state = repo
        .anchor()
        .verify_update(&repo.update(), None, now())
        .unwrap()
        .state
        .with_installed(HARDWARE_ID, 5);
    let bytes = state.to_persisted();
    assert_eq!(TrustedState::from_persisted(&bytes).unwrap(), state);

    let text = String::from_utf8(bytes).unwrap();
    let tampered_root = {
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let other = Repo {
            root_keys: vec![key(7)],
            root_threshold: 1,
            ..Repo::standard()
        };
        // A root signed by keys it does not list as root keys.
        let forged = sign(
            Role::Root,
            to_payload(&Repo::standard().root_metadata(9, future())),
            &[&other.root_keys[0]],
        );
        value["root"] = serde_json::Value::String(encode_base64(&forged));
        serde_json::to_vec(&value).unwrap()
    };
    assert!(matches!(
        TrustedState::from_persisted(&tampered_root),
        Err(Error::ThresholdNotMet {
            role: Role::Root,
            ..
        })
    ));
    assert!(TrustedState::from_persisted(b"{}").is_err());
}

#[test]
fn an_image_at_the_security_floor_is_accepted_and_one_below_is_refused() {
    let repo = Repo::standard();
    let image_security_version = target_image().security_version;
    let verify = |floor: u64| {
        repo.anchor()
            .with_installed(HARDWARE_ID, floor)
            .verify_update(&repo.update(), Some(&vehicle()), now())
    };
    for floor in [0, image_security_version - 1, image_security_version] {
        let verified = verify(floor)
            .unwrap_or_else(|e| panic!("an image at or above floor {floor} is accepted: {e}"));
        assert_eq!(
            verified.assignments[0].security_version,
            image_security_version
        );
    }
    match verify(image_security_version + 1) {
        Err(Error::SecurityVersionRollback {
            hardware_id,
            floor,
            received,
        }) => assert_eq!(
            (hardware_id.as_str(), floor, received),
            (
                HARDWARE_ID,
                image_security_version + 1,
                image_security_version
            )
        ),
        other => panic!("an image below the floor must be refused, got {other:?}"),
    }
    // A floor of another hardware id does not apply.
    repo.anchor()
        .with_installed("other-hardware", u64::MAX)
        .verify_update(&repo.update(), Some(&vehicle()), now())
        .expect("another hardware id's floor does not apply");
}
