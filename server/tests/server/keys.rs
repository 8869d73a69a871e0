//! Key tooling: `keys init`, `rotate`, `show`, `sign`, checked with the agents' verifier.

use ota_core::envelope::Envelope;
use ota_core::metadata::Role;
use ota_core::time::Timestamp;
use ota_core::trust::TrustedState;
use ota_server::keys;
use std::process::Command;

fn now() -> Timestamp {
    Timestamp::parse("2026-06-01T00:00:00Z").unwrap()
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
    let bytes = b"{\"any\": \"bytes, kept exactly\"}\n";
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
