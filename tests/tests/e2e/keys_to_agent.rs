//! The release engineer's key tooling and the vehicle's verifier, as separate programs
//! meeting only through files: `ota-server keys init/rotate/sign` produce metadata that
//! `ota-agent verify-metadata` accepts, and attacks built from the same tools are
//! refused with their typed rejection.

use ota_core::encoding::Sha256Digest;
use ota_core::metadata::{
    to_payload, Assignment, DirectorMetadata, ImageRef, TargetImage, TargetsBinding,
    TargetsMetadata,
};
use ota_core::time::Timestamp;
use ota_tests::binary;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary must start")
}

fn server(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("ota-server"));
    cmd.args(args);
    cmd
}

fn expires() -> Timestamp {
    // Relative to the real clock: these binaries verify against the system time.
    Timestamp::from_unix_seconds(4_102_444_800).unwrap() // 2100-01-01
}

fn image() -> TargetImage {
    TargetImage {
        hardware_id: "adas-v4".into(),
        version: "7.0.1".into(),
        security_version: 2,
        length: 1 << 20,
        sha256: Sha256Digest::of(b"adas 7.0.1"),
    }
}

fn director(version: u64, hardware_id: &str, targets: TargetsBinding) -> DirectorMetadata {
    let image = image();
    DirectorMetadata::new(
        version,
        expires(),
        "veh-e2e",
        targets,
        vec![Assignment {
            ecu: "adas".into(),
            hardware_id: hardware_id.into(),
            deployment_id: "dep-e2e".into(),
            image: ImageRef {
                name: "adas-7.0.1".into(),
                version: image.version,
                length: image.length,
                sha256: image.sha256,
                url: format!("/v1/blobs/{}", image.sha256),
            },
            delta: None,
            preconditions: None,
        }],
        120,
    )
}

/// `ota-server keys sign` over a payload written to disk, returning the envelope path.
fn sign(dir: &Path, name: &str, payload: &[u8], role: &str, key: &Path) -> PathBuf {
    let payload_path = dir.join(format!("{name}.payload.json"));
    std::fs::write(&payload_path, payload).unwrap();
    let out = dir.join(format!("{name}.json"));
    let output = run(server(&["keys", "sign", "--payload-type", role, "--key"])
        .arg(key)
        .arg("--out")
        .arg(&out)
        .arg(&payload_path));
    assert!(
        output.status.success(),
        "keys sign: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

fn verify(
    trust: &Path,
    roots: &[PathBuf],
    targets: &Path,
    director: &Path,
) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(binary("ota-agent"));
    cmd.arg("verify-metadata").arg("--trust").arg(trust);
    for root in roots {
        cmd.arg("--root").arg(root);
    }
    cmd.arg("--targets")
        .arg(targets)
        .arg("--director")
        .arg(director)
        .args(["--vehicle-id", "veh-e2e", "--ecu", "adas=adas-v4"]);
    let output = run(&mut cmd);
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), json)
}

#[test]
fn metadata_from_the_key_tooling_is_accepted_and_attacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let output = run(server(&["keys", "init", "--out"]).arg(&keys));
    assert!(
        output.status.success(),
        "keys init: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The vehicle is provisioned with root v1 only.
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(keys.join("root.json"), trust.join("root.json")).unwrap();

    let targets_payload = to_payload(&TargetsMetadata::new(
        1,
        expires(),
        [("adas-7.0.1".to_owned(), image())],
    ));
    let bound = TargetsBinding::of_payload(1, &targets_payload);
    let targets = sign(
        dir.path(),
        "targets",
        &targets_payload,
        "targets",
        &keys.join("targets.key.json"),
    );
    let good = sign(
        dir.path(),
        "director",
        &to_payload(&director(1, "adas-v4", bound)),
        "director",
        &keys.join("director.key.json"),
    );

    let (code, json) = verify(&trust, &[], &targets, &good);
    assert_eq!(
        code, 0,
        "metadata signed by the tooling must be accepted: {json}"
    );
    assert_eq!(json["assignments"][0]["image"]["name"], "adas-7.0.1");

    // Attacks, each built with the same tools.
    let by_targets_key = sign(
        dir.path(),
        "wrong-key",
        &to_payload(&director(1, "adas-v4", bound)),
        "director",
        &keys.join("targets.key.json"),
    );
    let wrong_hw = sign(
        dir.path(),
        "wrong-hw",
        &to_payload(&director(1, "adas-v3", bound)),
        "director",
        &keys.join("director.key.json"),
    );
    // `keys sign` refuses a payload with trailing bytes (no vehicle would accept it), so
    // the attacker's envelope is signed here with the same director key.
    let mut trailing_payload = to_payload(&director(1, "adas-v4", bound));
    trailing_payload.extend_from_slice(b"  ");
    let director_key = ota_server::signing::read_key_file(&keys.join("director.key.json"))
        .expect("the director key file");
    let trailing = dir.path().join("trailing.json");
    std::fs::write(
        &trailing,
        ota_core::envelope::Envelope::sign(
            ota_core::metadata::Role::Director.payload_type(),
            trailing_payload,
            &[&director_key],
        )
        .to_json_bytes(),
    )
    .unwrap();
    for (attack, director, kind) in [
        (
            "director-signed-by-targets-key",
            &by_targets_key,
            "threshold_not_met",
        ),
        ("wrong-hardware-id", &wrong_hw, "wrong_hardware_id"),
        ("trailing-bytes", &trailing, "malformed_metadata"),
    ] {
        let (code, json) = verify(&trust, &[], &targets, director);
        assert_eq!(code, 1, "{attack} must be rejected: {json}");
        assert_eq!(json["rejection"]["kind"], kind, "{attack}");
    }

    // Rotate the director key: the old director key no longer counts once the vehicle
    // walks to root v2; the new one does.
    let output = run(server(&["keys", "rotate", "--role", "director", "--dir"]).arg(&keys));
    assert!(
        output.status.success(),
        "keys rotate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let root2 = keys.join("root.2.json");
    let (code, json) = verify(&trust, std::slice::from_ref(&root2), &targets, &good);
    assert_eq!(
        code, 1,
        "the retired director key must not count after rotation: {json}"
    );
    assert_eq!(json["rejection"]["kind"], "threshold_not_met");
    let fresh = sign(
        dir.path(),
        "director2",
        &to_payload(&director(2, "adas-v4", bound)),
        "director",
        &keys.join("director.key.json"),
    );
    let (code, json) = verify(&trust, &[root2], &targets, &fresh);
    assert_eq!(
        code, 0,
        "the new director key must count after rotation: {json}"
    );
    assert_eq!(json["root_version"], 2);
}
