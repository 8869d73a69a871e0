//! Key tooling: `keys init`, `rotate`, `show`, `sign`, checked with the agents' verifier.

use ota_core::envelope::Envelope;
use ota_core::metadata::{to_payload, Role, TargetsMetadata};
use ota_core::time::Timestamp;
use ota_core::trust::TrustedState;
use ota_server::keys;
use std::process::Command;

fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
}

/// An exact targets payload (no images yet).
fn targets_payload() -> String {
    let doc = TargetsMetadata::new(1, now().plus_seconds(86_400), []);
    String::from_utf8(to_payload(&doc)).unwrap()
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_private_keys_0600_and_a_self_signed_root_v1() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let root = keys::init(&out, now(), 30).unwrap();
    assert_eq!(root.version(), 1);
    assert_eq!(root.expires(), now().plus_seconds(30 * 86_400));
    for role in ["root", "targets", "director"] {
        let path = out.join(format!("{role}.key.json"));
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600, "{role} key must be owner-only");
        let file = keys::keyfile::KeyFile::read(&path).unwrap();
        let key = file.signing_key().unwrap();
        let role = Role::parse(role).unwrap();
        assert_eq!(root.role_keys(role).keyids, vec![key.key_id()]);
    }
    let anchor = std::fs::read(out.join("root.json")).unwrap();
    assert_eq!(anchor, std::fs::read(out.join("root.1.json")).unwrap());
    TrustedState::from_anchor(&anchor).expect("root v1 must verify as an anchor");
    assert!(
        keys::init(&out, now(), 30).is_err(),
        "init must refuse to overwrite an existing key set"
    );
}

#[test]
fn rotating_each_role_yields_a_chain_the_agent_walks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    keys::init(&out, now(), 30).unwrap();
    let anchor = TrustedState::from_anchor(&std::fs::read(out.join("root.json")).unwrap()).unwrap();
    let old_root_keyid = anchor.root().role_keys(Role::Root).keyids.clone();
    for role in [Role::Targets, Role::Director, Role::Root, Role::Root] {
        keys::rotate(&out, role, now(), 30).unwrap();
    }
    let chain: Vec<Vec<u8>> = (2..=5)
        .map(|v| std::fs::read(out.join(format!("root.{v}.json"))).unwrap())
        .collect();
    let state = anchor
        .update_root(&chain)
        .expect("the rotated chain must verify");
    assert_eq!(state.root().version(), 5);
    assert_ne!(state.root().role_keys(Role::Root).keyids, old_root_keyid);
    assert_eq!(
        state.root().keys.len(),
        3,
        "retired keys must leave the root"
    );
    assert!(
        out.join("root.key.v3.json").exists(),
        "the retired root key is kept aside"
    );
    // Skipping a version must fail: the agent walks one version at a time.
    assert!(anchor.update_root(&chain[1..]).is_err());
    let shown = keys::show(&out).unwrap();
    assert!(shown.contains("root version 5"), "{shown}");
    assert!(shown.contains("private key present"), "{shown}");
}

#[test]
fn keys_cli_signs_a_payload_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let bin = env!("CARGO_BIN_EXE_ota-server");
    let status = Command::new(bin)
        .args(["keys", "init", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "keys init must succeed");
    let payload = dir.path().join("payload.json");
    // Pretty-printed, as a person might write it: signed as is, never re-serialized.
    let doc: serde_json::Value = serde_json::from_str(&targets_payload()).unwrap();
    let bytes = serde_json::to_string_pretty(&doc).unwrap();
    assert!(bytes.contains('\n') && !bytes.ends_with('\n'));
    let bytes = bytes.as_bytes();
    std::fs::write(&payload, bytes).unwrap();
    let output = Command::new(bin)
        .args(["keys", "sign", "--payload-type", "targets", "--key"])
        .arg(out.join("targets.key.json"))
        .arg(&payload)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let envelope = Envelope::parse(&output.stdout).unwrap();
    assert_eq!(
        envelope.payload, bytes,
        "the payload must be signed exactly as given"
    );
    assert_eq!(envelope.payload_type, Role::Targets.payload_type());
    let state = TrustedState::from_anchor(&std::fs::read(out.join("root.json")).unwrap()).unwrap();
    ota_core::threshold::verify_threshold(
        &envelope,
        Role::Targets,
        &state.root().keys,
        state.root().role_keys(Role::Targets),
        "trusted root",
    )
    .expect("the targets key's signature must count for targets");

    let output = Command::new(bin)
        .args(["keys", "rotate", "--role", "bogus", "--dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a role"),
        "a bad role must be named in the error"
    );
}

/// `keys sign` refuses, before signing, any payload the verifier would refuse: the
/// newline every editor adds, other stray bytes, duplicate or unknown members, a
/// document of another role, a payload type it cannot check.
#[test]
fn keys_sign_refuses_a_payload_every_vehicle_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    keys::init(&keys_dir, now(), 30).unwrap();
    let key = keys_dir.join("targets.key.json");
    let exact = targets_payload();
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "trailing-newline",
            "targets",
            format!("{exact}\n"),
            "newline",
        ),
        (
            "trailing-crlf",
            "targets",
            format!("{exact}\r\n"),
            "trailing",
        ),
        (
            "leading-space",
            "targets",
            format!(" {exact}"),
            "whitespace",
        ),
        (
            "two-values",
            "targets",
            format!("{exact}{exact}"),
            "trailing",
        ),
        (
            "duplicate-member",
            "targets",
            exact.replacen("\"version\":1", "\"version\":1,\"version\":2", 1),
            "duplicate",
        ),
        (
            "unknown-member",
            "targets",
            exact.replacen("{", "{\"extra\":true,", 1),
            "unknown field",
        ),
        (
            "targets-as-director",
            "director",
            exact.clone(),
            "malformed director metadata",
        ),
        (
            "unknown-payload-type",
            "application/octet-stream",
            exact.clone(),
            "not a payload type",
        ),
    ];
    let bin = env!("CARGO_BIN_EXE_ota-server");
    for (case, payload_type, payload, says) in cases {
        let payload_path = dir.path().join(format!("{case}.payload.json"));
        std::fs::write(&payload_path, &payload).unwrap();
        let out = dir.path().join(format!("{case}.json"));
        let output = Command::new(bin)
            .args(["keys", "sign", "--payload-type", payload_type, "--key"])
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .arg(&payload_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: must be refused");
        assert!(stderr.contains(says), "{case}: must say why: {stderr}");
        assert!(!out.exists(), "{case}: nothing may be written");
        assert!(
            output.stdout.is_empty(),
            "{case}: no envelope may be printed"
        );
    }

    // The exact payload signs, by role name or by full payload type.
    for payload_type in ["targets", Role::Targets.payload_type()] {
        let payload_path = dir.path().join("exact.payload.json");
        std::fs::write(&payload_path, &exact).unwrap();
        let output = Command::new(bin)
            .args(["keys", "sign", "--payload-type", payload_type, "--key"])
            .arg(&key)
            .arg(&payload_path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{payload_type}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            Envelope::parse(&output.stdout).unwrap().payload,
            exact.as_bytes()
        );
    }
}
