//! The trusted state bound to the vehicle's token (SoftHSM2), PROTOCOL.md §6.1: every way
//! an attacker with write access to the trust directory could roll the state back, wipe
//! it or forge it fails closed; honest saves, and a save cut between its two steps, keep
//! loading. The token is provisioned through the real binary (`hsm install-anchor`) and
//! then used in process through the agent's own [`TokenBinding`].

use crate::services::SoftHsm;
use crate::trust_store::{now, root_key, rotated_root, update, vehicle as identity};
use crate::verify_cli::{
    director_doc, director_doc_for, key, one, sign_director, targets, targets_signed_by,
};
use ota_agent::hsm::Hsm;
use ota_agent::identity::open_identity;
use ota_agent::trust_store::{FileTrustStore, TokenBinding, TrustStoreError};
use ota_agent::verifier::{Persist, Verifier, VerifyError};
use ota_core::envelope::Envelope;
use ota_core::metadata::{to_payload, Role, Roles, RootMetadata};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");

/// A token whose anchor is root v1's key (`root_key(1)`) and whose state binding was
/// created by `ota-agent hsm install-anchor`, and the trust directory anchored in it.
struct Vehicle {
    hsm: SoftHsm,
    trust: PathBuf,
}

fn provisioned() -> Option<Vehicle> {
    let hsm = SoftHsm::new()?;
    let trust = hsm.dir.path().join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::write(trust.join("root.json"), rotated_root(1)).unwrap();
    let out = hsm
        .command(AGENT)
        .args(["hsm", "install-anchor", "--root"])
        .arg(trust.join("root.json"))
        .args(hsm.args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install-anchor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Vehicle { hsm, trust })
}

/// An open, logged-in session on the vehicle's token, in process.
struct Session {
    hsm: Arc<Mutex<Hsm>>,
    trust: PathBuf,
}

impl Session {
    /// The trust store as the agent opens it on a vehicle: anchored and bound.
    fn store(&self) -> FileTrustStore {
        let anchor = self
            .hsm
            .lock()
            .unwrap()
            .root_anchor("ota-root-anchor")
            .unwrap();
        let binding = TokenBinding::open(Arc::clone(&self.hsm)).expect("state binding");
        FileTrustStore::new(&self.trust)
            .with_hardware_anchor(anchor)
            .with_hardware_binding(Arc::new(binding))
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(self.store(), Some(identity()))
    }

    /// Director `director` accepted and persisted, then the image of `tcu-v2` committed
    /// (floor 4): two saves. The store and the accepted state.
    fn installed(&self, director: u64) -> (FileTrustStore, TrustedState) {
        let verified = self
            .verifier()
            .verify(&honest(director), now(), Persist::Yes)
            .unwrap();
        let store = self.store();
        store
            .save(&verified.state.with_installed("tcu-v2", 4), &[])
            .unwrap();
        (store, verified.state)
    }

    /// The generation the token holds.
    fn generation(&self) -> u64 {
        let hsm = self.hsm.lock().unwrap();
        hsm.state_generation(&hsm.state_objects().unwrap()).unwrap()
    }
}

impl Vehicle {
    /// Runs `f` with exclusive in-process access to the token, then finalizes the module
    /// (every store `f` made must be dropped by then).
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        let _guard = self.hsm.in_process();
        let session = Session {
            hsm: Arc::new(Mutex::new(Hsm::open(&self.hsm.config(), true).unwrap())),
            trust: self.trust.clone(),
        };
        let result = f(&session);
        let hsm = Arc::try_unwrap(session.hsm).expect("every store is dropped");
        hsm.into_inner().unwrap().close().unwrap();
        result
    }

    fn state_path(&self) -> PathBuf {
        self.trust.join("state.json")
    }
}

/// The kind of a trust store refusal, or a panic naming what was accepted.
fn refusal(result: Result<TrustedState, TrustStoreError>) -> &'static str {
    match result {
        Err(err) => err.kind(),
        Ok(state) => panic!(
            "must be refused, loaded a state at director {:?}",
            state.director_record()
        ),
    }
}

fn honest(director: u64) -> MetadataUpdate {
    update(std::iter::empty(), director)
}

/// An attacker restores yesterday's `state.json`: every version floor of that day
/// would be acceptable again. The token's generation has moved on: refused.
#[test]
fn restoring_an_older_state_json_is_refused_as_rolled_back() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        let verifier = session.verifier();
        verifier.verify(&honest(1), now(), Persist::Yes).unwrap();
        let old = std::fs::read(vehicle.state_path()).unwrap();
        verifier.verify(&honest(2), now(), Persist::Yes).unwrap();
        assert_eq!(session.generation(), 2);

        std::fs::write(vehicle.state_path(), &old).unwrap();
        assert_eq!(refusal(session.store().load()), "state_rolled_back");
        // The refused store verifies nothing, and the token is left where it was.
        match verifier.verify(&honest(1), now(), Persist::Yes) {
            Err(VerifyError::Store(err)) => assert_eq!(err.kind(), "state_rolled_back"),
            other => panic!(
                "the replayed director must not verify: {:?}",
                other.map(|v| v.director.version)
            ),
        }
        assert_eq!(session.generation(), 2);
    });
}

/// Deleting `state.json` would reset every version and `security_version` floor to
/// the anchor's: refused once the token has accepted any state.
#[test]
fn deleting_state_json_is_refused_as_missing() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        let (store, _) = session.installed(3);
        assert_eq!(store.load().unwrap().security_floor("tcu-v2"), 4);

        std::fs::remove_file(vehicle.state_path()).unwrap();
        assert_eq!(refusal(store.load()), "state_missing");
    });
}

/// An attacker edits the floors of the current `state.json` (lower director version,
/// no `security_version` floor) and re-serializes it, generation and MAC kept; or
/// replaces it by an unbound development (format 1) file. Both refused as forged.
#[test]
fn a_forged_state_json_with_edited_floors_is_refused() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        let (store, verified) = session.installed(5);
        let honest_file = std::fs::read(vehicle.state_path()).unwrap();

        let mut json: serde_json::Value = serde_json::from_slice(&honest_file).unwrap();
        json["director"]["version"] = 1.into();
        json["security_versions"] = serde_json::json!({});
        std::fs::write(vehicle.state_path(), serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(refusal(store.load()), "state_forged");

        // The same state without any binding, as the development store writes it.
        let unbound = verified.to_persisted();
        std::fs::write(vehicle.state_path(), unbound).unwrap();
        assert_eq!(refusal(store.load()), "state_forged");

        // Whitespace changes nothing the MAC covers: the honest file, re-indented, loads.
        let honest_json: serde_json::Value = serde_json::from_slice(&honest_file).unwrap();
        std::fs::write(
            vehicle.state_path(),
            serde_json::to_vec(&honest_json).unwrap(),
        )
        .unwrap();
        assert_eq!(store.load().unwrap().security_floor("tcu-v2"), 4);
    });
}

/// Root v2 of an attacker holding the *retired* v1 root key: signed by that key as v1's
/// root key and as its own, with targets and director keys of the attacker.
fn backdoor_root_v2() -> Vec<u8> {
    let retired = root_key(1);
    let meta = RootMetadata::new(
        2,
        Timestamp::parse("2027-06-01T00:00:00Z").unwrap(),
        &[
            retired.public_key(),
            key(12).public_key(),
            key(13).public_key(),
        ],
        Roles {
            root: one(&retired),
            targets: one(&key(12)),
            director: one(&key(13)),
        },
    );
    Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &[&retired]).to_json_bytes()
}

/// After the root was rotated away from v1's key, someone who can rewrite the trust
/// directory deletes `roots/` and `state.json` (or rewrites both around a root of their
/// own) and presents a self-consistent chain signed by the retired v1 key, which the
/// token still holds as its anchor. The file store accepts it (the attack); the bound
/// store refuses it.
#[test]
fn a_retired_root_key_is_no_backdoor_after_rotation_and_a_wiped_trust_directory() {
    let Some(vehicle) = provisioned() else { return };
    let backdoor = MetadataUpdate {
        roots: vec![backdoor_root_v2()],
        targets: targets_signed_by(1, &key(12)),
        director: sign_director(&director_doc_for(1, 1), &key(13)),
    };
    let wipe = |trust: &Path| {
        std::fs::remove_dir_all(trust.join("roots")).unwrap();
        std::fs::remove_file(trust.join("state.json")).unwrap();
    };

    // Without hardware binding, the attack works: this is what the binding closes.
    let dev = tempfile::tempdir().unwrap();
    std::fs::write(dev.path().join("root.json"), rotated_root(1)).unwrap();
    let file_store = Verifier::new(FileTrustStore::new(dev.path()), Some(identity()));
    file_store
        .verify(&update([2], 1), now(), Persist::Yes)
        .unwrap();
    wipe(dev.path());
    let accepted = file_store
        .verify(&backdoor, now(), Persist::No)
        .expect("the development file store cannot tell");
    assert_eq!(accepted.state.root().version(), 2);

    vehicle.with_session(|session| {
        let verifier = session.verifier();
        let rotated = verifier
            .verify(&update([2], 1), now(), Persist::Yes)
            .expect("the honest rotation to root v2");
        assert_eq!(rotated.state.root().version(), 2);
        match verifier.verify(&backdoor, now(), Persist::Yes) {
            Err(VerifyError::Rejected(err)) => assert_eq!(err.kind(), "threshold_not_met"),
            other => panic!(
                "with the trust directory intact the chain is refused: {:?}",
                other.map(|v| v.state.root().version())
            ),
        }

        // Rewritten instead of wiped: the backdoor root as roots/2.json and as the root of
        // state.json (generation and MAC kept). The MAC covers the root: forged.
        std::fs::write(vehicle.trust.join("roots/2.json"), backdoor_root_v2()).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vehicle.state_path()).unwrap()).unwrap();
        json["root"] = ota_core::encoding::encode_base64(&backdoor_root_v2()).into();
        std::fs::write(vehicle.state_path(), serde_json::to_vec(&json).unwrap()).unwrap();
        match verifier.verify(&backdoor, now(), Persist::Yes) {
            Err(VerifyError::Store(err)) => assert_eq!(err.kind(), "state_forged"),
            other => panic!(
                "a state re-rooted on the retired key must be refused: {:?}",
                other.map(|v| v.state.root().version())
            ),
        }

        wipe(&vehicle.trust);
        match verifier.verify(&backdoor, now(), Persist::Yes) {
            Err(VerifyError::Store(err)) => assert_eq!(err.kind(), "state_missing"),
            other => panic!(
                "the retired root key must not restart the chain: {:?}",
                other.map(|v| v.state.root().version())
            ),
        }
        assert!(!vehicle.state_path().exists(), "a refusal writes nothing");
    });
}

/// Many honest saves (updates, a root rotation, security floors), each loaded back by a
/// fresh store: the token's generation counts every accepted state.
#[test]
fn honest_updates_across_many_writes_keep_loading() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        assert_eq!(session.generation(), 0);
        assert_eq!(session.store().load().unwrap().root().version(), 1);
        let mut expected_generation = 0;
        for director in 1..=25u64 {
            let roots: Vec<u64> = if director == 10 { vec![2, 3] } else { vec![] };
            let verified = session
                .verifier()
                .verify(&update(roots, director), now(), Persist::Yes)
                .unwrap_or_else(|e| panic!("director v{director}: {e}"));
            expected_generation += 1;
            let store = session.store();
            if director % 5 == 0 {
                store
                    .save(&verified.state.with_installed("body-v1", director), &[])
                    .unwrap();
                expected_generation += 1;
            }
            let loaded = store.load().unwrap();
            assert_eq!(loaded.director_record().unwrap().version, director);
            assert_eq!(session.generation(), expected_generation);
        }
        let loaded = session.store().load().unwrap();
        assert_eq!(loaded.root().version(), 3);
        assert_eq!(loaded.security_floor("body-v1"), 25);
    });
}

/// A save cut between writing `state.json` (generation g + 1) and raising the token's
/// counter: the next load accepts the new file and finishes the save by raising the
/// counter, after which the file before the cut counts as rolled back.
#[test]
fn a_crash_between_the_state_write_and_the_counter_bump_still_loads() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        let verifier = session.verifier();
        verifier.verify(&honest(1), now(), Persist::Yes).unwrap();
        let before_cut = std::fs::read(vehicle.state_path()).unwrap();
        assert_eq!(session.generation(), 1);

        let next = verifier.verify(&honest(2), now(), Persist::No).unwrap();
        let store = session.store();
        assert_eq!(store.write_bound_state(&next.state).unwrap(), 2);
        assert_eq!(session.generation(), 1, "only the first half ran");

        let loaded = store.load().expect("the interrupted save must load");
        assert_eq!(loaded, next.state);
        assert_eq!(session.generation(), 2, "the load finished the save");
        std::fs::write(vehicle.state_path(), &before_cut).unwrap();
        assert_eq!(refusal(store.load()), "state_rolled_back");
    });
}

/// The first save of a vehicle cut the same way (token still at 0) loads too, and with
/// no state ever saved the anchor alone loads.
#[test]
fn a_crash_during_the_first_save_still_loads() {
    let Some(vehicle) = provisioned() else { return };
    vehicle.with_session(|session| {
        let store = session.store();
        assert_eq!(
            store.load().unwrap(),
            TrustedState::from_anchor(&rotated_root(1)).unwrap()
        );
        let first = session
            .verifier()
            .verify(&honest(1), now(), Persist::No)
            .unwrap();
        assert_eq!(store.write_bound_state(&first.state).unwrap(), 1);
        assert_eq!(store.load().unwrap(), first.state);
        assert_eq!(session.generation(), 1);
    });
}

/// `ota-agent verify-metadata --persist` with the token: the refusal of a restored state
/// is reported with its kind, exit 2, nothing written.
#[test]
fn verify_metadata_with_the_token_refuses_a_restored_state() {
    let Some(vehicle) = provisioned() else { return };
    let files = vehicle.hsm.dir.path();
    let run = |director: u64| {
        let update = honest(director);
        std::fs::write(files.join("targets.json"), &update.targets).unwrap();
        std::fs::write(files.join("director.json"), &update.director).unwrap();
        vehicle
            .hsm
            .command(AGENT)
            .arg("verify-metadata")
            .arg("--trust")
            .arg(&vehicle.trust)
            .arg("--targets")
            .arg(files.join("targets.json"))
            .arg("--director")
            .arg(files.join("director.json"))
            .args(["--now", "2026-06-01T00:00:00Z", "--vehicle-id", "veh-42"])
            .args(["--ecu", "tcu=tcu-v2", "--persist"])
            .args(vehicle.hsm.args())
            .output()
            .unwrap()
    };
    assert!(run(1).status.success());
    let old = std::fs::read(vehicle.state_path()).unwrap();
    assert!(run(2).status.success());
    std::fs::write(vehicle.state_path(), &old).unwrap();
    let out = run(3);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rejection"]["kind"], "state_rolled_back", "{json}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-provisioned"),
        "the refusal names the way out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(vehicle.state_path()).unwrap(), old);
}

/// The development file store still works without any token, and writes the unbound
/// format-1 file (nothing protects it: see NO_BINDING_WARNING).
#[test]
fn the_development_file_store_works_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), rotated_root(1)).unwrap();
    let store = FileTrustStore::new(dir.path());
    assert!(!store.is_hardware_bound());
    let verifier = Verifier::new(store.clone(), Some(identity()));
    for director in 1..=3 {
        verifier
            .verify(&update([], director), now(), Persist::Yes)
            .unwrap();
    }
    assert_eq!(store.load().unwrap().director_record().unwrap().version, 3);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(json["format"], 1);
    assert!(json.get("mac").is_none() && json.get("generation").is_none());
}

/// The run-time path: a vehicle provisioned with a token (`ota-agent provision`) opens
/// its identity as `ota-agent run` does, and its trust store is anchored in and bound to
/// that token through the device key's own session; an accepted update moves the token's
/// generation, which `ota-agent hsm show-state` reads back.
#[test]
fn a_vehicle_provisioned_with_a_token_runs_with_its_state_bound_to_it() {
    let Some(vehicle) = crate::identity::provisioned() else {
        return;
    };
    let printed = String::from_utf8_lossy(&vehicle.out.stdout).to_string();
    assert!(printed.contains("state bound to the token"), "{printed}");
    let config = vehicle.load();
    {
        let _token = vehicle.hsm.in_process();
        let identity = open_identity(&config).unwrap();
        let store = identity.trust_store(config.trust_dir());
        assert!(store.is_hardware_bound());
        let verified = Verifier::new(store.clone(), None)
            .verify(
                &MetadataUpdate {
                    roots: vec![],
                    targets: targets(1),
                    director: sign_director(&director_doc(1), &key(3)),
                },
                now(),
                Persist::Yes,
            )
            .expect("the provisioned vehicle verifies and persists");
        assert_eq!(store.load().unwrap(), verified.state);
        drop(store);
        identity.close().unwrap();
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.trust_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(
        (json["format"].clone(), json["generation"].clone()),
        (2.into(), 1.into())
    );
    let out = vehicle
        .hsm
        .command(AGENT)
        .args(["hsm", "show-state"])
        .args(vehicle.hsm.args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}
