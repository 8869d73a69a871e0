//! The root trust anchor in a real PKCS#11 token (SoftHSM2): provisioning, verification
//! chained from the token's key, and every way the anchor can be wrong failing closed.

use crate::services::{SoftHsm, PIN, TOKEN};
use crate::verify_cli::{attacker_root, director_doc, key, root, sign_director, targets};
use ota_agent::hsm::{Hsm, DEFAULT_ANCHOR_LABEL};
use std::path::{Path, PathBuf};
use std::process::Output;

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");

fn run(hsm: &SoftHsm, args: &[&str], extra: &[String]) -> Output {
    hsm.command(AGENT).args(args).args(extra).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

struct Vehicle {
    hsm: SoftHsm,
    trust: PathBuf,
}

/// A token and a trust store with root v1 (root key = key(1)); anchor installed if asked.
fn vehicle(install_anchor: bool) -> Option<Vehicle> {
    let hsm = SoftHsm::new()?;
    let trust = hsm.dir.path().join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::write(trust.join("root.json"), root(1)).unwrap();
    if install_anchor {
        let root_json = trust.join("root.json").display().to_string();
        let out = run(
            &hsm,
            &["hsm", "install-anchor", "--root", &root_json],
            &hsm.args(),
        );
        assert!(
            out.status.success(),
            "install-anchor: {}",
            text(&out.stderr)
        );
    }
    Some(Vehicle { hsm, trust })
}

fn verify(vehicle: &Vehicle, with_hsm: bool) -> Output {
    let files = vehicle.hsm.dir.path();
    let targets_path = files.join("targets.json");
    let director_path = files.join("director.json");
    std::fs::write(&targets_path, targets(1)).unwrap();
    std::fs::write(&director_path, sign_director(&director_doc(1), &key(3))).unwrap();
    let mut args: Vec<String> = vec![
        "verify-metadata".into(),
        "--trust".into(),
        vehicle.trust.display().to_string(),
        "--targets".into(),
        targets_path.display().to_string(),
        "--director".into(),
        director_path.display().to_string(),
        "--now".into(),
        "2026-06-01T00:00:00Z".into(),
    ];
    if with_hsm {
        args.extend(vehicle.hsm.args());
    }
    vehicle.hsm.command(AGENT).args(&args).output().unwrap()
}

/// Plants a public-key object directly (bypassing the provisioning checks).
fn plant(hsm: &SoftHsm, seed: u8, protected: bool) {
    let _guard = hsm.in_process();
    let token = Hsm::open(&hsm.config(), true).unwrap();
    token
        .create_public_key_object(DEFAULT_ANCHOR_LABEL, &key(seed).public_key(), protected)
        .unwrap();
    token.close().unwrap();
}

#[test]
fn an_agent_anchored_in_the_token_accepts_metadata_chained_from_it() {
    let Some(vehicle) = vehicle(true) else { return };
    let out = run(&vehicle.hsm, &["hsm", "show-anchor"], &vehicle.hsm.args());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), key(1).key_id().as_str());
    let out = verify(&vehicle, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "must accept: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_provisioned_root_not_signed_by_the_token_anchor_fails_closed() {
    let Some(vehicle) = vehicle(true) else { return };
    // Someone with write access to the disk replaces root.json by a self-signed root.
    std::fs::write(vehicle.trust.join("root.json"), attacker_root()).unwrap();
    let out = verify(&vehicle, false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "without the HSM the file store cannot tell"
    );
    let out = verify(&vehicle, true);
    assert_eq!(
        out.status.code(),
        Some(2),
        "with the HSM anchor it must fail closed"
    );
    assert!(
        text(&out.stderr).contains("hardware anchor"),
        "the error must name the hardware anchor: {}",
        text(&out.stderr)
    );
}

#[test]
fn the_anchor_can_be_neither_replaced_nor_destroyed() {
    let Some(vehicle) = vehicle(true) else { return };
    let root_json = vehicle.trust.join("root.json").display().to_string();
    let out = run(
        &vehicle.hsm,
        &["hsm", "install-anchor", "--root", &root_json],
        &vehicle.hsm.args(),
    );
    assert!(!out.status.success(), "a second install must be refused");
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let delete = vehicle
        .hsm
        .command("pkcs11-tool")
        .arg("--module")
        .arg(&vehicle.hsm.module)
        .args(["--token-label", TOKEN, "--login", "--pin", PIN])
        .args([
            "--delete-object",
            "--type",
            "pubkey",
            "--label",
            DEFAULT_ANCHOR_LABEL,
        ])
        .output()
        .expect("pkcs11-tool (Debian package opensc) must be installed");
    // Refused by the token because the object is not destroyable — not for a usage,
    // login or lookup error, which would fail just the same without protecting anything.
    let stderr = text(&delete.stderr);
    assert!(
        !delete.status.success(),
        "the token must refuse to destroy the anchor"
    );
    // CKR_ACTION_PROHIBITED is 0x1b (PKCS#11 2.40); some pkcs11-tool versions print it
    // as "unknown PKCS11 error (0x1b)".
    assert!(
        stderr.contains("C_DestroyObject")
            && (stderr.contains("CKR_ACTION_PROHIBITED") || stderr.contains("(0x1b)")),
        "the token must refuse C_DestroyObject as prohibited, got: {stderr}"
    );
    let out = verify(&vehicle, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the anchor must survive: {}",
        text(&out.stderr)
    );
}

#[test]
fn missing_duplicate_or_unprotected_anchors_fail_closed() {
    /// (case, planted objects as (key seed, protected), expected message)
    type Case = (&'static str, &'static [(u8, bool)], &'static str);
    let cases: [Case; 3] = [
        ("missing", &[], "no public-key object"),
        ("modifiable", &[(1, false)], "modifiable"),
        ("duplicate", &[(1, true), (1, true)], "2 public-key objects"),
    ];
    for (case, objects, message) in cases {
        let Some(vehicle) = vehicle(false) else {
            return;
        };
        for (seed, protected) in objects {
            plant(&vehicle.hsm, *seed, *protected);
        }
        let out = verify(&vehicle, true);
        assert_eq!(out.status.code(), Some(2), "{case}: must fail closed");
        assert!(
            text(&out.stderr).contains(message),
            "{case}: expected {message:?} in: {}",
            text(&out.stderr)
        );
        assert!(!Path::new(&vehicle.trust.join("state.json")).exists());
    }
}
