//! Conformance vectors (PROTOCOL.md §11): signed documents, the trusted state before,
//! `now`, the vehicle identity and the expected outcome, as files an independent verifier
//! can run. [`generate`] builds them deterministically (fixed Ed25519 seeds and times);
//! `cargo run -p ota-tests --bin gen-vectors` writes them to `tests/vectors/`, and the
//! e2e test `vectors` checks the committed files are exactly this output and runs
//! `ota-agent verify-metadata` over every case.

use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{
    to_payload, Assignment, DirectorMetadata, ImageRef, Role, RoleKeys, Roles, RootMetadata,
    TargetImage, TargetsBinding, TargetsMetadata,
};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState, VehicleIdentity};
use serde_json::json;
use std::collections::BTreeMap;

const VEHICLE: &str = "veh-vectors";
const ECU: &str = "main";
const HW: &str = "ecu-main-v2";
const IMAGE: &str = "ecu-main-2.0.0.img";
const NOW: &str = "2026-06-01T00:00:00Z";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("fixed time")
}

fn one(seed: u8) -> RoleKeys {
    RoleKeys {
        keyids: vec![key(seed).key_id()],
        threshold: 1,
    }
}

fn sign(role: Role, payload: Vec<u8>, seeds: &[u8]) -> Vec<u8> {
    let keys: Vec<SigningKey> = seeds.iter().map(|s| key(*s)).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    Envelope::sign(role.payload_type(), payload, &refs).to_json_bytes()
}

/// Root `version`: root key `root_seed`, targets key 2, director key `director_seed`.
fn root(version: u64, root_seed: u8, director_seed: u8, signers: &[u8]) -> Vec<u8> {
    let meta = RootMetadata::new(
        version,
        ts("2027-06-01T00:00:00Z"),
        &[
            key(root_seed).public_key(),
            key(2).public_key(),
            key(director_seed).public_key(),
        ],
        Roles {
            root: one(root_seed),
            targets: one(2),
            director: one(director_seed),
        },
    );
    sign(Role::Root, to_payload(&meta), signers)
}

fn image() -> TargetImage {
    let bytes = b"the firmware image 2.0.0";
    TargetImage {
        hardware_id: HW.to_owned(),
        version: "2.0.0".to_owned(),
        security_version: 5,
        length: bytes.len() as u64,
        sha256: Sha256Digest::of(bytes),
    }
}

fn targets_doc(version: u64) -> TargetsMetadata {
    TargetsMetadata::new(
        version,
        ts("2027-01-01T00:00:00Z"),
        [(IMAGE.to_owned(), image())],
    )
}

fn director_doc(version: u64, targets: &TargetsMetadata) -> DirectorMetadata {
    let image = image();
    DirectorMetadata::new(
        version,
        ts("2026-06-02T00:00:00Z"),
        VEHICLE,
        TargetsBinding::of_payload(targets.version, &to_payload(targets)),
        vec![Assignment {
            ecu: ECU.to_owned(),
            hardware_id: HW.to_owned(),
            deployment_id: "dep-1".to_owned(),
            image: ImageRef {
                name: IMAGE.to_owned(),
                version: image.version,
                length: image.length,
                sha256: image.sha256,
                url: format!("/v1/blobs/{}", image.sha256),
            },
            delta: None,
            preconditions: None,
        }],
        300,
    )
}

fn identity() -> VehicleIdentity {
    VehicleIdentity {
        vehicle_id: VEHICLE.to_owned(),
        ecus: [(ECU.to_owned(), HW.to_owned())].into(),
    }
}

struct Case {
    name: &'static str,
    description: &'static str,
    state: Option<Vec<u8>>,
    roots: Vec<Vec<u8>>,
    targets: Vec<u8>,
    director: Vec<u8>,
    now: &'static str,
    vehicle: bool,
    /// `None`: accepted; `Some(kind)`: refused with that kind.
    kind: Option<&'static str>,
}

fn case(name: &'static str, description: &'static str) -> Case {
    let targets = targets_doc(1);
    Case {
        name,
        description,
        state: None,
        roots: Vec::new(),
        targets: sign(Role::Targets, to_payload(&targets), &[2]),
        director: sign(Role::Director, to_payload(&director_doc(1, &targets)), &[3]),
        now: NOW,
        vehicle: true,
        kind: None,
    }
}

/// The state after accepting targets `version` and director `version` at `now`.
fn state_after(version: u64, now: &str) -> Vec<u8> {
    let targets = targets_doc(version);
    let update = MetadataUpdate {
        roots: Vec::new(),
        targets: sign(Role::Targets, to_payload(&targets), &[2]),
        director: sign(
            Role::Director,
            to_payload(&director_doc(version, &targets)),
            &[3],
        ),
    };
    TrustedState::from_anchor(&root(1, 1, 3, &[1]))
        .and_then(|s| s.verify_update(&update, Some(&identity()), ts(now)))
        .expect("the generator's own update verifies")
        .state
        .to_persisted()
}

fn cases() -> Vec<Case> {
    let mut cases = vec![case(
        "accepted",
        "a valid targets and director, no state yet",
    )];

    let mut c = case("director-signed-by-targets-key", "threshold not met");
    let t = targets_doc(1);
    c.director = sign(Role::Director, to_payload(&director_doc(1, &t)), &[2]);
    c.kind = Some("threshold_not_met");
    cases.push(c);

    let mut c = case("expired-director", "director expires before now");
    c.now = "2026-06-02T00:00:00Z";
    c.kind = Some("expired");
    cases.push(c);

    let mut c = case("targets-rollback", "targets v1 after the state trusted v2");
    c.state = Some(state_after(2, NOW));
    let t = targets_doc(1);
    c.director = sign(Role::Director, to_payload(&director_doc(3, &t)), &[3]);
    c.kind = Some("rollback");
    cases.push(c);

    let mut c = case(
        "old-targets-with-fresh-director",
        "targets v1 paired with a director built against targets v2",
    );
    c.director = sign(
        Role::Director,
        to_payload(&director_doc(1, &targets_doc(2))),
        &[3],
    );
    c.kind = Some("targets_mismatch");
    cases.push(c);

    let mut c = case(
        "clock-rollback",
        "now is a day before the latest verified time",
    );
    c.state = Some(state_after(1, "2026-06-01T12:00:00Z"));
    c.now = "2026-05-31T12:00:00Z";
    c.kind = Some("clock_rollback");
    cases.push(c);

    let mut c = case("wrong-vehicle", "director addressed to another vehicle");
    let mut doc = director_doc(1, &t);
    doc.vehicle_id = "veh-other".to_owned();
    c.director = sign(Role::Director, to_payload(&doc), &[3]);
    c.kind = Some("wrong_vehicle");
    cases.push(c);

    let mut c = case(
        "hash-mismatch",
        "director image SHA-256 differs from targets",
    );
    let mut doc = director_doc(1, &t);
    doc.assignments[0].image.sha256 = Sha256Digest::of(b"evil");
    c.director = sign(Role::Director, to_payload(&doc), &[3]);
    c.kind = Some("hash_mismatch");
    cases.push(c);

    let mut c = case(
        "trailing-newline-payload",
        "director payload ends with a newline",
    );
    let mut payload = to_payload(&director_doc(1, &t));
    payload.push(b'\n');
    c.director = sign(Role::Director, payload, &[3]);
    c.kind = Some("malformed_metadata");
    cases.push(c);

    let mut c = case(
        "image-name-traversal",
        "image name is a path outside the character set",
    );
    let mut t2 = targets_doc(1);
    t2.targets = [("../boot.img".to_owned(), image())].into_iter().collect();
    let mut doc = director_doc(1, &t2);
    doc.assignments[0].image.name = "../boot.img".to_owned();
    c.targets = sign(Role::Targets, to_payload(&t2), &[2]);
    c.director = sign(Role::Director, to_payload(&doc), &[3]);
    c.kind = Some("malformed_metadata");
    cases.push(c);

    let mut c = case(
        "root-rotation",
        "root v2 (new root and director keys, cross-signed), director by the new key",
    );
    c.roots = vec![root(2, 4, 5, &[1, 4])];
    c.director = sign(Role::Director, to_payload(&director_doc(1, &t)), &[5]);
    cases.push(c);

    let mut c = case("root-version-skipped", "root v3 directly after v1");
    c.roots = vec![root(3, 1, 3, &[1])];
    c.kind = Some("root_version_skipped");
    cases.push(c);

    let mut c = case(
        "no-vehicle-identity",
        "without identity the vehicle check is skipped (offline tools only)",
    );
    c.vehicle = false;
    cases.push(c);
    cases
}

/// Every vector file, by path relative to the vectors directory.
pub fn generate() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for case in cases() {
        let dir = case.name;
        let mut put = |name: &str, bytes: Vec<u8>| {
            files.insert(format!("{dir}/{name}"), bytes);
        };
        put("trust/root.json", root(1, 1, 3, &[1]));
        if let Some(state) = &case.state {
            put("trust/state.json", state.clone());
        }
        let roots: Vec<String> = (0..case.roots.len())
            .map(|i| format!("root-{}.json", i + 2))
            .collect();
        for (name, bytes) in roots.iter().zip(&case.roots) {
            put(name, bytes.clone());
        }
        put("targets.json", case.targets.clone());
        put("director.json", case.director.clone());
        let vehicle = case
            .vehicle
            .then(|| json!({"vehicle_id": VEHICLE, "ecus": {ECU: HW}}));
        let expected = match case.kind {
            None => json!({"accepted": true}),
            Some(kind) => json!({"accepted": false, "kind": kind}),
        };
        let mut text = serde_json::to_vec_pretty(&json!({
            "description": case.description,
            "trust": "trust",
            "roots": roots,
            "targets": "targets.json",
            "director": "director.json",
            "now": case.now,
            "vehicle": vehicle,
            "expected": expected,
        }))
        .expect("json");
        text.push(b'\n');
        put("case.json", text);
    }
    files
}
