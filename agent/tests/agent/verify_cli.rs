//! `ota-agent verify-metadata` end to end: accepted updates print the assignment, every
//! attack prints its typed rejection and exits 1, and the trust store on disk is
//! byte-for-byte unchanged unless `--persist` was given and the update was accepted.

use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{
    to_payload, Assignment, DirectorMetadata, ImageRef, Role, RoleKeys, Roles, RootMetadata,
    TargetImage, TargetsBinding, TargetsMetadata,
};
use ota_core::time::Timestamp;
use std::path::{Path, PathBuf};
use std::process::Command;

const NOW: &str = "2026-06-01T00:00:00Z";

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

pub fn one(key: &SigningKey) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    }
}

pub fn root(version: u64) -> Vec<u8> {
    let meta = RootMetadata::new(
        version,
        ts("2027-06-01T00:00:00Z"),
        &[
            key(1).public_key(),
            key(2).public_key(),
            key(3).public_key(),
        ],
        Roles {
            root: one(&key(1)),
            targets: one(&key(2)),
            director: one(&key(3)),
        },
    );
    Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &[&key(1)]).to_json_bytes()
}

fn image() -> TargetImage {
    TargetImage {
        hardware_id: "tcu-v2".into(),
        version: "3.1.0".into(),
        security_version: 4,
        length: 4096,
        sha256: Sha256Digest::of(b"tcu image 3.1.0"),
    }
}

pub fn targets(version: u64) -> Vec<u8> {
    targets_signed_by(version, &key(2))
}

/// `targets(version)`'s payload, signed by `signer`.
pub fn targets_signed_by(version: u64, signer: &SigningKey) -> Vec<u8> {
    let doc = TargetsMetadata::new(
        version,
        ts("2027-01-01T00:00:00Z"),
        [("tcu-3.1.0".to_owned(), image())],
    );
    Envelope::sign(Role::Targets.payload_type(), to_payload(&doc), &[signer]).to_json_bytes()
}

/// Director `version` built against `targets(1)`.
pub fn director_doc(version: u64) -> DirectorMetadata {
    director_doc_for(version, 1)
}

/// Director `version` built against `targets(targets_version)`.
pub fn director_doc_for(version: u64, targets_version: u64) -> DirectorMetadata {
    let image = image();
    DirectorMetadata::new(
        version,
        ts("2026-06-02T00:00:00Z"),
        "veh-42",
        TargetsBinding::of_envelope(&targets(targets_version)).unwrap(),
        vec![Assignment {
            ecu: "tcu".into(),
            hardware_id: "tcu-v2".into(),
            deployment_id: "dep-7".into(),
            image: ImageRef {
                name: "tcu-3.1.0".into(),
                version: image.version,
                length: image.length,
                sha256: image.sha256,
                url: format!("/v1/blobs/{}", image.sha256),
            },
            delta: None,
            preconditions: None,
        }],
        600,
    )
}

pub fn sign_director(doc: &DirectorMetadata, signer: &SigningKey) -> Vec<u8> {
    Envelope::sign(Role::Director.payload_type(), to_payload(doc), &[signer]).to_json_bytes()
}

struct Setup {
    _dir: tempfile::TempDir,
    trust: PathBuf,
    files: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("trust");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(trust.join("root.json"), root(1)).unwrap();
    Setup {
        trust,
        files,
        _dir: dir,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

struct Outcome {
    code: i32,
    stdout: serde_json::Value,
    stderr: String,
}

fn verify(setup: &Setup, targets: &[u8], director: &[u8], extra: &[&str]) -> Outcome {
    verify_at(setup, NOW, targets, director, extra)
}

fn verify_at(setup: &Setup, now: &str, targets: &[u8], director: &[u8], extra: &[&str]) -> Outcome {
    let targets = write(&setup.files, "targets.json", targets);
    let director = write(&setup.files, "director.json", director);
    let output = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("verify-metadata")
        .arg("--trust")
        .arg(&setup.trust)
        .arg("--targets")
        .arg(&targets)
        .arg("--director")
        .arg(&director)
        .args([
            "--now",
            now,
            "--vehicle-id",
            "veh-42",
            "--ecu",
            "tcu=tcu-v2",
        ])
        .args(extra)
        .output()
        .expect("ota-agent must run");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn accepted_metadata_prints_the_assignment_and_persists_nothing_by_default() {
    let setup = setup();
    let before = snapshot(&setup.trust);
    let out = verify(
        &setup,
        &targets(1),
        &sign_director(&director_doc(1), &key(3)),
        &[],
    );
    assert_eq!(
        out.code, 0,
        "valid metadata must be accepted: {}",
        out.stderr
    );
    assert_eq!(out.stdout["accepted"], true);
    assert_eq!(out.stdout["vehicle_id"], "veh-42");
    assert_eq!(out.stdout["assignments"][0]["ecu"], "tcu");
    assert_eq!(out.stdout["assignments"][0]["security_version"], 4);
    assert_eq!(
        out.stdout["assignments"][0]["image"]["sha256"],
        Sha256Digest::of(b"tcu image 3.1.0").to_hex()
    );
    assert_eq!(
        snapshot(&setup.trust),
        before,
        "without --persist nothing may be written"
    );
}

#[test]
fn each_attack_exits_1_with_its_typed_rejection_and_leaves_the_store_unchanged() {
    let setup = setup();
    // First accept version 5 with --persist, so that rollbacks have a floor to hit.
    let out = verify(
        &setup,
        &targets(5),
        &sign_director(&director_doc_for(5, 5), &key(3)),
        &["--persist"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        setup.trust.join("state.json").exists(),
        "--persist must write state.json"
    );

    let mut wrong_hw = director_doc_for(6, 5);
    wrong_hw.assignments[0].hardware_id = "bcm-v1".into();
    let mut other_hash = director_doc_for(6, 5);
    other_hash.assignments[0].image.sha256 = Sha256Digest::of(b"evil");
    let mut expired = director_doc_for(6, 5);
    expired.expires = ts("2026-05-31T00:00:00Z");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "director-version-rollback",
            targets(5),
            sign_director(&director_doc_for(4, 5), &key(3)),
            "rollback",
        ),
        (
            "targets-version-rollback",
            targets(4),
            sign_director(&director_doc_for(6, 5), &key(3)),
            "rollback",
        ),
        (
            "director-signed-by-targets-key",
            targets(5),
            sign_director(&director_doc_for(6, 5), &key(2)),
            "threshold_not_met",
        ),
        (
            "director-hash-differs",
            targets(5),
            sign_director(&other_hash, &key(3)),
            "hash_mismatch",
        ),
        (
            "wrong-hardware-id",
            targets(5),
            sign_director(&wrong_hw, &key(3)),
            "wrong_hardware_id",
        ),
        (
            "expired-director",
            targets(5),
            sign_director(&expired, &key(3)),
            "expired",
        ),
        (
            "garbage-envelope",
            targets(5),
            b"{\"payloadType\":1}".to_vec(),
            "malformed_envelope",
        ),
    ];
    for (attack, targets, director, kind) in cases {
        let before = snapshot(&setup.trust);
        let out = verify(&setup, &targets, &director, &["--persist"]);
        assert_eq!(out.code, 1, "{attack}: must exit 1, stderr: {}", out.stderr);
        assert_eq!(out.stdout["accepted"], false, "{attack}");
        assert_eq!(
            out.stdout["rejection"]["kind"], kind,
            "{attack}: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains(kind),
            "{attack}: stderr must name the rejection"
        );
        assert_eq!(
            snapshot(&setup.trust),
            before,
            "{attack}: trust store must be unchanged"
        );
    }
}

#[test]
fn clock_set_back_after_a_persisted_verification_is_refused_and_changes_nothing() {
    let setup = setup();
    let director = sign_director(&director_doc(1), &key(3));
    let out = verify(&setup, &targets(1), &director, &["--persist"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.trust.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        state["verified_time"], NOW,
        "the trust store keeps the time"
    );

    // A later process with the clock set back a day: refused, store untouched.
    let before = snapshot(&setup.trust);
    let out = verify_at(
        &setup,
        "2026-05-31T00:00:00Z",
        &targets(1),
        &director,
        &["--persist"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout["rejection"]["kind"], "clock_rollback");
    assert_eq!(snapshot(&setup.trust), before);
    // Within the stated skew (300 s) it is still accepted.
    let out = verify_at(&setup, "2026-05-31T23:55:00Z", &targets(1), &director, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn missing_trust_anchor_is_an_error_not_an_acceptance() {
    let setup = setup();
    std::fs::remove_file(setup.trust.join("root.json")).unwrap();
    let out = verify(
        &setup,
        &targets(1),
        &sign_director(&director_doc(1), &key(3)),
        &[],
    );
    assert_eq!(
        out.code, 2,
        "no anchor must fail with exit 2: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("root.json"),
        "must say what is missing: {}",
        out.stderr
    );
}

#[test]
fn the_development_anchor_in_the_repository_loads_as_a_trust_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keys/dev-root.json");
    std::fs::copy(&anchor, dir.path().join("root.json")).unwrap();
    let state = ota_agent::trust_store::FileTrustStore::new(dir.path())
        .load()
        .expect("keys/dev-root.json must be a valid self-signed root");
    assert_eq!(state.root().version(), 1);
}

/// A root v1 signed by, and naming as root key, a key the vehicle never trusted.
pub fn attacker_root() -> Vec<u8> {
    let one = |seed: u8| RoleKeys {
        keyids: vec![key(seed).key_id()],
        threshold: 1,
    };
    let meta = RootMetadata::new(
        1,
        Timestamp::parse("2027-06-01T00:00:00Z").unwrap(),
        &[
            key(9).public_key(),
            key(2).public_key(),
            key(3).public_key(),
        ],
        Roles {
            root: one(9),
            targets: one(2),
            director: one(3),
        },
    );
    Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &[&key(9)]).to_json_bytes()
}

#[test]
fn root_rotation_is_kept_as_a_chain_and_a_forged_state_root_fails_closed() {
    let setup = setup();
    let root2 = write(&setup.files, "root2.json", &root(2));
    let root2_arg = root2.display().to_string();
    let director = sign_director(&director_doc(1), &key(3));
    let out = verify(
        &setup,
        &targets(1),
        &director,
        &["--root", &root2_arg, "--persist"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout["root_version"], 2);
    assert!(
        setup.trust.join("roots/2.json").exists(),
        "the accepted root must be kept"
    );

    // The next start walks root.json -> roots/2.json and finds state.json at its end.
    let out = verify(&setup, &targets(1), &director, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout["root_version"], 2);

    // A state file whose root was swapped for a self-signed one does not chain.
    let state_path = setup.trust.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["root"] = ota_core::encoding::encode_base64(&attacker_root()).into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = verify(&setup, &targets(1), &director, &[]);
    assert_eq!(
        out.code, 2,
        "a forged state root must fail closed: {}",
        out.stdout
    );
    assert!(out.stderr.contains("does not chain"), "{}", out.stderr);
}

/// `ota-agent verify-metadata` over a valid update, without any identity or PKCS#11
/// option from the caller's environment: the test adds what it needs.
fn bare_verify_command(setup: &Setup, director: &[u8], now: &str) -> Command {
    let targets = write(&setup.files, "targets.json", &targets(1));
    let director = write(&setup.files, "director.json", director);
    let mut command = Command::new(env!("CARGO_BIN_EXE_ota-agent"));
    for var in ["OTA_PKCS11_MODULE", "OTA_PKCS11_TOKEN", "OTA_PKCS11_PIN"] {
        command.env_remove(var);
    }
    command
        .arg("verify-metadata")
        .arg("--trust")
        .arg(&setup.trust)
        .arg("--targets")
        .arg(&targets)
        .arg("--director")
        .arg(&director)
        // `--now=` so that a value starting with `-` is still a value.
        .arg(format!("--now={now}"));
    command
}

fn valid_director() -> Vec<u8> {
    sign_director(&director_doc(1), &key(3))
}

fn outcome(output: std::process::Output) -> Outcome {
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// A vehicle configured for a token (PIN, token label or anchor label given) but whose
/// module option was dropped must not silently verify against whatever `root.json`
/// says: here `root.json` is an attacker's self-signed root that signs the update.
#[test]
fn pkcs11_options_without_a_module_are_refused_not_a_silent_file_store_fallback() {
    let setup = setup();
    std::fs::write(setup.trust.join("root.json"), attacker_root()).unwrap();
    // The attacker's root names the real targets and director keys: the file store
    // alone accepts this update.
    let out = outcome(
        bare_verify_command(&setup, &valid_director(), NOW)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "file-store baseline: {}", out.stderr);

    let flag_cases: [(&str, &[&str]); 3] = [
        ("pin", &["--pkcs11-pin", "1234"]),
        ("token-label", &["--pkcs11-token", "ota-vehicle"]),
        ("anchor-label", &["--anchor-label", "ota-root-anchor"]),
    ];
    for (case, flags) in flag_cases {
        let out = outcome(
            bare_verify_command(&setup, &valid_director(), NOW)
                .args(flags)
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 2, "{case}: must be an error: {}", out.stdout);
        assert_ne!(out.stdout["accepted"], true, "{case}");
        assert!(
            out.stderr.contains("without --pkcs11-module"),
            "{case}: must say the module is missing: {}",
            out.stderr
        );
    }
    for (var, value) in [
        ("OTA_PKCS11_PIN", "1234"),
        ("OTA_PKCS11_TOKEN", "ota-vehicle"),
    ] {
        let out = outcome(
            bare_verify_command(&setup, &valid_director(), NOW)
                .env(var, value)
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 2, "{var}: must be an error: {}", out.stdout);
        assert!(
            out.stderr.contains("without --pkcs11-module"),
            "{var}: {}",
            out.stderr
        );
    }

    // The hsm subcommands refuse the same way.
    let output = Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .env_remove("OTA_PKCS11_MODULE")
        .args(["hsm", "show-anchor", "--pkcs11-pin", "1234"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--pkcs11-module"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Without `--vehicle-id` another vehicle's director is accepted: the CLI must say
/// loudly that it skipped that check, and stay quiet when the identity is given.
#[test]
fn verify_without_vehicle_id_warns_loudly_that_the_vehicle_check_is_skipped() {
    let setup = setup();
    let mut other_vehicle = director_doc(1);
    other_vehicle.vehicle_id = "veh-someone-else".into();
    let other_vehicle = sign_director(&other_vehicle, &key(3));
    let out = outcome(
        bare_verify_command(&setup, &other_vehicle, NOW)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout["vehicle_id"], "veh-someone-else");
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("SKIPPING the vehicle check"),
        "the skipped vehicle check must be announced: {:?}",
        out.stderr
    );

    let out = verify(
        &setup,
        &targets(1),
        &sign_director(&director_doc(1), &key(3)),
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stderr.contains("WARNING"),
        "no warning with --vehicle-id: {:?}",
        out.stderr
    );
}

/// `--now` goes through the wire parser: lenient spellings are usage errors.
#[test]
fn lenient_now_spellings_are_refused() {
    let setup = setup();
    for now in [
        "2026-06-01T00:00:60Z",
        "2026-06-01T00:00: 5Z",
        "2026- 6-01T00:00:00Z",
        "+2026-06-01T00:00:0Z",
        "-026-06-01T00:00:00Z",
    ] {
        let out = outcome(
            bare_verify_command(&setup, &valid_director(), now)
                .args(["--vehicle-id", "veh-42"])
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 2, "--now {now:?} must be refused: {}", out.stdout);
        assert!(out.stderr.contains("--now"), "{now}: {}", out.stderr);
    }
}
