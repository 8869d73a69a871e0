//! The device key in a real PKCS#11 token (SoftHSM2): `ota-agent provision` through the
//! real binary, envelopes signed with `CKM_EDDSA` that the server's helper opens with the
//! printed key, the key's protection, and every way the token can be wrong failing
//! closed.

use crate::services::{SoftHsm, PIN, TOKEN};
use crate::verify_cli::{director_doc, key, root, sign_director, targets};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use ota_agent::config::{AgentConfig, KeyConfig};
use ota_agent::hsm::{Hsm, HsmError, DEFAULT_ANCHOR_LABEL};
use ota_agent::identity::pkcs11::{Pkcs11Key, DEFAULT_DEVICE_KEY_LABEL};
use ota_agent::identity::{open_identity, request_credential, sign_envelope, IdentityError};
use ota_core::key::PublicKey;
use ota_core::protocol::{open_message, PAYLOAD_TYPE_CHECKIN};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");
/// DER of the Ed25519 OID, for planting objects behind the agent's back.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

pub struct Provisioned {
    pub hsm: SoftHsm,
    pub state: PathBuf,
    pub config: PathBuf,
    pub out: Output,
}

impl Provisioned {
    pub fn load(&self) -> AgentConfig {
        AgentConfig::load(&self.config).unwrap()
    }
}

fn provision_args(hsm: &SoftHsm, state: &Path, config: &Path) -> Vec<String> {
    let root_json = hsm.dir.path().join("root.json");
    if !root_json.exists() {
        std::fs::write(&root_json, root(1)).unwrap();
    }
    [
        "provision",
        "--pkcs11-module",
        &hsm.module.display().to_string(),
        "--token-label",
        TOKEN,
        "--pin",
        PIN,
        "--vehicle-id",
        "veh-0001",
        "--hardware-id",
        "hw-a",
        "--ecu",
        "main",
        "--root",
        &root_json.display().to_string(),
        "--server-url",
        "http://127.0.0.1:8080",
        "--mqtt-url",
        "mqtt://127.0.0.1:1883",
        "--state-dir",
        &state.display().to_string(),
        "--slot-a",
        &state.join("slot_a.img").display().to_string(),
        "--slot-b",
        &state.join("slot_b.img").display().to_string(),
        "--config",
        &config.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A fresh token provisioned through the real binary.
pub fn provisioned() -> Option<Provisioned> {
    let hsm = SoftHsm::new()?;
    let state = hsm.dir.path().join("state");
    let config = hsm.dir.path().join("agent.toml");
    let out = hsm
        .command(AGENT)
        .args(provision_args(&hsm, &state, &config))
        .output()
        .unwrap();
    assert!(out.status.success(), "provision: {}", text(&out.stderr));
    Some(Provisioned {
        hsm,
        state,
        config,
        out,
    })
}

/// The device public key printed by `provision`.
fn printed_key(out: &Output) -> PublicKey {
    let stdout = text(&out.stdout);
    let hex_key = stdout
        .lines()
        .find_map(|line| line.strip_prefix("device public key: "))
        .unwrap_or_else(|| panic!("no device public key in: {stdout}"));
    let raw: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
    PublicKey::from_bytes(&raw).unwrap()
}

#[test]
fn a_provisioned_token_key_signs_envelopes_that_open_with_the_printed_key() {
    let Some(vehicle) = provisioned() else { return };
    let public_key = printed_key(&vehicle.out);
    let stdout = text(&vehicle.out.stdout);
    assert!(stdout.contains("vehicle id: veh-0001"), "{stdout}");
    let register = format!(
        "otactl vehicle register --id veh-0001 --public-key {} --ecu main=hw-a",
        public_key.to_hex()
    );
    assert!(stdout.contains(&register), "{stdout}");

    // The config names the token and the anchor; the root is in the trust store.
    let config = vehicle.load();
    assert_eq!(config.vehicle_id, "veh-0001");
    assert!(matches!(&config.key, KeyConfig::Pkcs11(k) if k.label == DEFAULT_DEVICE_KEY_LABEL));
    assert_eq!(config.anchor.as_ref().unwrap().label, DEFAULT_ANCHOR_LABEL);
    assert_eq!(
        std::fs::read(vehicle.state.join("trust/root.json")).unwrap(),
        root(1)
    );
    let mode = std::fs::metadata(&vehicle.config)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the config may hold the PIN");

    let _token = vehicle.hsm.in_process();
    let identity = open_identity(&config).unwrap();
    assert_eq!(identity.root_anchor(), Some(key(1).public_key()));
    let signer = identity.signer();
    assert_eq!(signer.public_key(), public_key);
    let payload = br#"{"vehicle_id":"veh-0001","nonce":"n1"}"#.to_vec();
    let wire = sign_envelope(PAYLOAD_TYPE_CHECKIN, payload, signer.as_ref()).unwrap();
    let opened: serde_json::Value = open_message(&wire, PAYLOAD_TYPE_CHECKIN, &public_key)
        .expect("the server must open what the token signed");
    assert_eq!(opened["nonce"], "n1");
    // Signed by the token, not by some other key: another key does not open it.
    assert!(
        open_message::<serde_json::Value>(&wire, PAYLOAD_TYPE_CHECKIN, &key(9).public_key())
            .is_err()
    );
    let target = "/v1/metadata/targets.json";
    let header =
        request_credential("veh-0001", 1_800_000_000, "GET", target, signer.as_ref()).unwrap();
    let credential = ota_core::credential::parse(&header).unwrap();
    assert_eq!(
        (
            credential.request.vehicle_id.as_str(),
            credential.request.unix_seconds
        ),
        ("veh-0001", 1_800_000_000)
    );
    credential
        .verify(&public_key, "GET", target)
        .expect("the token signed the request");
    drop(signer);
    identity.close().unwrap();
}

/// Reads the device private key's attributes through a session of our own.
fn private_key_attributes(hsm: &SoftHsm) -> Vec<Attribute> {
    let context = Pkcs11::new(&hsm.module).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context.get_slots_with_initialized_token().unwrap()[0];
    let session = context.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_owned())))
        .unwrap();
    let objects = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(DEFAULT_DEVICE_KEY_LABEL.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(objects.len(), 1);
    let attributes = session
        .get_attributes(
            objects[0],
            &[
                AttributeType::Value,
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::NeverExtractable,
                AttributeType::Local,
            ],
        )
        .unwrap();
    drop(session);
    context.finalize().unwrap();
    attributes
}

#[test]
fn the_device_private_key_never_leaves_the_token() {
    let Some(vehicle) = provisioned() else { return };
    let attributes = {
        let _token = vehicle.hsm.in_process();
        private_key_attributes(&vehicle.hsm)
    };
    assert!(
        !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
        "the private key's value must be unreadable: {attributes:?}"
    );
    for expected in [
        Attribute::Extractable(false),
        Attribute::Sensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Local(true),
    ] {
        assert!(
            attributes.contains(&expected),
            "{expected:?} in {attributes:?}"
        );
    }
}

/// Opens a raw session on the token (behind the agent's back) and runs `plant`.
fn with_raw_session(hsm: &SoftHsm, plant: impl FnOnce(&cryptoki::session::Session)) {
    let _token = hsm.in_process();
    let context = Pkcs11::new(&hsm.module).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context.get_slots_with_initialized_token().unwrap()[0];
    let session = context.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN.to_owned())))
        .unwrap();
    plant(&session);
    drop(session);
    context.finalize().unwrap();
}

/// A second Ed25519 key pair with the device label, generated with the given
/// protection and `CKA_ID`.
fn plant_pair(session: &cryptoki::session::Session, id: &[u8], extractable: bool) {
    let label = Attribute::Label(DEFAULT_DEVICE_KEY_LABEL.as_bytes().to_vec());
    session
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::EccEdwardsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                label.clone(),
                Attribute::Id(id.to_vec()),
                Attribute::EcParams(ED25519_PARAMS.to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(!extractable),
                Attribute::Extractable(extractable),
                Attribute::Sign(true),
                label,
                Attribute::Id(id.to_vec()),
            ],
        )
        .unwrap();
}

/// An Ed25519 private key imported from known bytes (it was once outside the token).
fn plant_imported_private_key(session: &cryptoki::session::Session, id: &[u8]) {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(DEFAULT_DEVICE_KEY_LABEL.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::EcParams(ED25519_PARAMS.to_vec()),
            Attribute::Value(key(5).seed().to_vec()),
        ])
        .unwrap();
}

/// The typed refusal of `Pkcs11Key::open` on this token (panics if it opens).
fn open_refusal(hsm: &SoftHsm) -> HsmError {
    let _token = hsm.in_process();
    match Pkcs11Key::open(&hsm.config(), DEFAULT_DEVICE_KEY_LABEL) {
        Ok(key) => {
            let public = ota_agent::identity::DeviceSigner::public_key(&key);
            key.close().unwrap();
            panic!("the device key {public:?} opened; it must be refused")
        }
        Err(err) => err,
    }
}

#[test]
fn a_token_without_exactly_one_protected_device_key_pair_is_refused() {
    type Plant = fn(&cryptoki::session::Session);
    // (case, provision first?, what to plant, the typed refusal)
    type Case = (&'static str, bool, Plant, fn(&HsmError) -> bool);
    let cases: [Case; 5] = [
        (
            "missing",
            false,
            |_| {},
            |e| {
                matches!(
                    e,
                    HsmError::DeviceKeyMissing {
                        class: "private-key",
                        ..
                    }
                )
            },
        ),
        (
            "two key pairs",
            true,
            |s| plant_pair(s, b"veh-0001", false),
            |e| {
                matches!(
                    e,
                    HsmError::DeviceKeyAmbiguous {
                        class: "private-key",
                        count: 2,
                        ..
                    }
                )
            },
        ),
        (
            "pair of different ids",
            false,
            |s| {
                plant_pair(s, b"one", false);
                // Drop the first pair's public key by planting the second's only.
                let publics = s
                    .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
                    .unwrap();
                s.destroy_object(publics[0]).unwrap();
                plant_pair(s, b"two", false);
                let privates = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(b"two".to_vec()),
                    ])
                    .unwrap();
                s.destroy_object(privates[0]).unwrap();
            },
            |e| matches!(e, HsmError::DeviceKeyIdMismatch { .. }),
        ),
        (
            "extractable",
            false,
            |s| plant_pair(s, b"veh-0001", true),
            |e| {
                matches!(
                    e,
                    HsmError::DeviceKeyNotProtected {
                        problem: "not sensitive",
                        ..
                    }
                )
            },
        ),
        (
            "imported",
            false,
            |s| {
                plant_imported_private_key(s, b"veh-0001");
                let public = key(5).public_key();
                s.create_object(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC_EDWARDS),
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::Label(DEFAULT_DEVICE_KEY_LABEL.as_bytes().to_vec()),
                    Attribute::Id(b"veh-0001".to_vec()),
                    Attribute::EcParams(ED25519_PARAMS.to_vec()),
                    Attribute::EcPoint(ota_agent::hsm::encode_ec_point(&public)),
                ])
                .unwrap();
            },
            |e| matches!(e, HsmError::DeviceKeyNotProtected { problem, .. } if problem.starts_with("imported")),
        ),
    ];
    for (case, provision_first, plant, expected) in cases {
        let hsm = if provision_first {
            let Some(vehicle) = provisioned() else { return };
            vehicle.hsm
        } else {
            let Some(hsm) = SoftHsm::new() else { return };
            hsm
        };
        with_raw_session(&hsm, plant);
        let err = open_refusal(&hsm);
        assert!(expected(&err), "{case}: unexpected {err:?}");
    }
}

#[test]
fn a_second_public_key_with_the_device_label_is_refused() {
    let Some(vehicle) = provisioned() else { return };
    {
        let _token = vehicle.hsm.in_process();
        let hsm = Hsm::open(&vehicle.hsm.config(), true).unwrap();
        hsm.create_public_key_object(DEFAULT_DEVICE_KEY_LABEL, &key(6).public_key(), true)
            .unwrap();
        hsm.close().unwrap();
    }
    let err = open_refusal(&vehicle.hsm);
    assert!(
        matches!(
            err,
            HsmError::DeviceKeyAmbiguous {
                class: "public-key",
                count: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

fn token_objects(hsm: &SoftHsm) -> usize {
    let _token = hsm.in_process();
    let opened = Hsm::open(&hsm.config(), false).unwrap();
    let count = opened.objects_labelled(DEFAULT_DEVICE_KEY_LABEL).unwrap()
        + opened.objects_labelled(DEFAULT_ANCHOR_LABEL).unwrap();
    opened.close().unwrap();
    count
}

#[test]
fn provisioning_twice_refuses_and_changes_nothing() {
    let Some(vehicle) = provisioned() else { return };
    let first_key = printed_key(&vehicle.out);
    let config_bytes = std::fs::read(&vehicle.config).unwrap();
    assert_eq!(token_objects(&vehicle.hsm), 3, "key pair + anchor");

    // Same arguments: the config exists.
    let again = vehicle
        .hsm
        .command(AGENT)
        .args(provision_args(
            &vehicle.hsm,
            &vehicle.state,
            &vehicle.config,
        ))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    // A fresh state directory and config, the same token: the token refuses.
    let other_state = vehicle.hsm.dir.path().join("state2");
    let other_config = vehicle.hsm.dir.path().join("agent2.toml");
    let again = vehicle
        .hsm
        .command(AGENT)
        .args(provision_args(&vehicle.hsm, &other_state, &other_config))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("the device key is never replaced"),
        "{}",
        text(&again.stderr)
    );
    assert!(!other_config.exists() && !other_state.join("trust/root.json").exists());
    assert_eq!(
        token_objects(&vehicle.hsm),
        3,
        "nothing was added to the token"
    );
    assert_eq!(std::fs::read(&vehicle.config).unwrap(), config_bytes);

    let _token = vehicle.hsm.in_process();
    let identity = open_identity(&vehicle.load()).unwrap();
    assert_eq!(
        identity.signer().public_key(),
        first_key,
        "the key is unchanged"
    );
    identity.close().unwrap();
}

fn verify_metadata(vehicle: &Provisioned) -> Output {
    let dir = vehicle.hsm.dir.path();
    std::fs::write(dir.join("targets.json"), targets(1)).unwrap();
    std::fs::write(
        dir.join("director.json"),
        sign_director(&director_doc(1), &key(3)),
    )
    .unwrap();
    vehicle
        .hsm
        .command(AGENT)
        .arg("verify-metadata")
        .arg("--trust")
        .arg(vehicle.state.join("trust"))
        .arg("--targets")
        .arg(dir.join("targets.json"))
        .arg("--director")
        .arg(dir.join("director.json"))
        .args(["--now", "2026-06-01T00:00:00Z"])
        .args(vehicle.hsm.args())
        .output()
        .unwrap()
}

fn reinitialize_token(hsm: &SoftHsm) {
    for args in [
        vec!["--delete-token", "--token", TOKEN],
        vec![
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "0000",
            "--pin",
            PIN,
        ],
    ] {
        let out = hsm.command("softhsm2-util").args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn a_wiped_token_fails_the_anchor_check_and_the_identity_check() {
    let Some(vehicle) = provisioned() else { return };
    let out = verify_metadata(&vehicle);
    assert_eq!(
        out.status.code(),
        Some(0),
        "provisioned: {}",
        text(&out.stderr)
    );

    reinitialize_token(&vehicle.hsm);
    let out = verify_metadata(&vehicle);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the anchor is gone: must fail closed"
    );
    assert!(
        text(&out.stderr).contains("no public-key object labelled \"ota-root-anchor\""),
        "{}",
        text(&out.stderr)
    );
    let config = vehicle.load();
    {
        let _token = vehicle.hsm.in_process();
        let err = open_identity(&config).unwrap_err();
        assert!(
            matches!(err, IdentityError::Hsm(HsmError::DeviceKeyMissing { .. })),
            "{err:?}"
        );
    }

    // A device key again but still no anchor: the agent must not run.
    {
        let _token = vehicle.hsm.in_process();
        let hsm = Hsm::open(&vehicle.hsm.config(), true).unwrap();
        Pkcs11Key::generate(&hsm, DEFAULT_DEVICE_KEY_LABEL, b"veh-0001").unwrap();
        hsm.close().unwrap();
        let err = open_identity(&config).unwrap_err();
        assert!(
            matches!(err, IdentityError::Hsm(HsmError::AnchorMissing { .. })),
            "{err:?}"
        );
    }
}

#[test]
fn the_file_key_store_provisions_a_loudly_labelled_development_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let root_json = dir.path().join("root.json");
    std::fs::write(&root_json, root(1)).unwrap();
    let state = dir.path().join("state");
    let config_path = dir.path().join("agent.toml");
    let key_path = dir.path().join("device.key");
    let path = |p: &Path| p.display().to_string();
    let out = std::process::Command::new(AGENT)
        .args([
            "provision",
            "--key-store",
            "file",
            "--key-path",
            &path(&key_path),
        ])
        .args([
            "--vehicle-id",
            "sim-7",
            "--hardware-id",
            "hw-a",
            "--ecu",
            "main",
        ])
        .args(["--root", &path(&root_json), "--state-dir", &path(&state)])
        .args(["--server-url", "http://127.0.0.1:8080"])
        .args(["--mqtt-url", "mqtt://127.0.0.1:1883"])
        .args([
            "--slot-a",
            &path(&state.join("a")),
            "--slot-b",
            &path(&state.join("b")),
        ])
        .args(["--config", &path(&config_path)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("NOT for vehicles"),
        "{}",
        text(&out.stderr)
    );
    let public_key = printed_key(&out);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = AgentConfig::load(&config_path).unwrap();
    assert!(config.anchor.is_none());
    let identity = open_identity(&config).unwrap();
    let signer = identity.signer();
    assert_eq!(signer.public_key(), public_key);
    let wire = sign_envelope(PAYLOAD_TYPE_CHECKIN, b"{}".to_vec(), signer.as_ref()).unwrap();
    open_message::<serde_json::Value>(&wire, PAYLOAD_TYPE_CHECKIN, &public_key).unwrap();

    // Provisioning again never overwrites the key file.
    let key_bytes = std::fs::read(&key_path).unwrap();
    std::fs::remove_file(&config_path).unwrap();
    std::fs::remove_file(state.join("trust/root.json")).unwrap();
    let again = std::process::Command::new(AGENT)
        .args([
            "provision",
            "--key-store",
            "file",
            "--key-path",
            &path(&key_path),
        ])
        .args([
            "--vehicle-id",
            "sim-7",
            "--hardware-id",
            "hw-a",
            "--ecu",
            "main",
        ])
        .args(["--root", &path(&root_json), "--state-dir", &path(&state)])
        .args(["--server-url", "http://127.0.0.1:8080"])
        .args(["--mqtt-url", "mqtt://127.0.0.1:1883"])
        .args([
            "--slot-a",
            &path(&state.join("a")),
            "--slot-b",
            &path(&state.join("b")),
        ])
        .args(["--config", &path(&config_path)])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), key_bytes);
}
