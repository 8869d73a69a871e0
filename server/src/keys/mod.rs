//! Metadata keys: generation, the signed root, root rotation, offline signing.
//!
//! A key directory (created by `ota-server keys init`) holds:
//! - `root.key.json`, `targets.key.json`, `director.key.json`: private keys, mode 0600
//!   ([`keyfile::KeyFile`]). In production the root and targets keys live offline and
//!   only the director key stays on the server.
//! - `root.json`: the newest signed root envelope; `root.<N>.json`: every version, for
//!   agents walking the chain.
//! - `<role>.key.v<N>.json`: a key retired when root version N was replaced.

pub mod cli;
pub mod keyfile;

use anyhow::{bail, Context};
use keyfile::{write_private_file, KeyFile};
use ota_core::envelope::Envelope;
use ota_core::key::{PublicKey, SigningKey};
use ota_core::metadata::{
    parse_document, to_payload, DirectorMetadata, Role, RoleKeys, Roles, Root, RootMetadata,
    TargetsMetadata,
};
use ota_core::time::Timestamp;
use ota_core::trust::TrustedState;
use std::path::{Path, PathBuf};

const ROLES: [Role; 3] = [Role::Root, Role::Targets, Role::Director];

/// A fresh signing key from the operating system's CSPRNG.
pub fn generate_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).context("reading the operating system's random generator")?;
    Ok(SigningKey::from_seed(&seed))
}

fn key_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{role}.key.json"))
}

pub fn root_path(dir: &Path) -> PathBuf {
    dir.join("root.json")
}

fn versioned_root_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("root.{version}.json"))
}

fn one_key(key: &SigningKey) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    }
}

/// Writes a root envelope as both `root.<N>.json` and `root.json`.
fn write_root(dir: &Path, version: u64, envelope: &[u8]) -> anyhow::Result<()> {
    for path in [versioned_root_path(dir, version), root_path(dir)] {
        std::fs::write(&path, envelope).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Creates root, targets and director keys and root v1, valid for `expires_days`.
/// Refuses to overwrite an existing key directory.
pub fn init(dir: &Path, now: Timestamp, expires_days: u32) -> anyhow::Result<Root> {
    if key_path(dir, Role::Root).exists() || root_path(dir).exists() {
        bail!(
            "{} already holds a key set; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root_key = generate_key()?;
    let targets_key = generate_key()?;
    let director_key = generate_key()?;
    let metadata = RootMetadata::new(
        1,
        now.plus_seconds(i64::from(expires_days) * 86_400),
        &[
            root_key.public_key(),
            targets_key.public_key(),
            director_key.public_key(),
        ],
        Roles {
            root: one_key(&root_key),
            targets: one_key(&targets_key),
            director: one_key(&director_key),
        },
    );
    let envelope = Envelope::sign(
        Role::Root.payload_type(),
        to_payload(&metadata),
        &[&root_key],
    )
    .to_json_bytes();
    // Self-check with the verifier the agents run before anything is written.
    let state = TrustedState::from_anchor(&envelope).context("verifying the new root")?;
    for (role, key) in [
        (Role::Root, &root_key),
        (Role::Targets, &targets_key),
        (Role::Director, &director_key),
    ] {
        write_private_file(&key_path(dir, role), &KeyFile::new(role, key).to_json())?;
    }
    write_root(dir, 1, &envelope)?;
    Ok(state.root().clone())
}

/// Loads the newest root of a key directory.
pub fn load_root(dir: &Path) -> anyhow::Result<(Vec<u8>, Root)> {
    let path = root_path(dir);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let state = TrustedState::from_anchor(&bytes)
        .with_context(|| format!("{} is not a valid signed root", path.display()))?;
    Ok((bytes, state.root().clone()))
}

/// Issues root N+1 in which `role` has a fresh key, signed by the current root key (a
/// threshold of root N) and, when the root key itself rotates, by the new root key too
/// (a threshold of root N+1). Verified with the agents' chain walk before it is written.
pub fn rotate(dir: &Path, role: Role, now: Timestamp, expires_days: u32) -> anyhow::Result<Root> {
    let (current_bytes, current) = load_root(dir)?;
    let old_root_key = KeyFile::read(&key_path(dir, Role::Root))?.signing_key()?;
    let new_key = generate_key()?;

    let mut roles = current.metadata.roles.clone();
    match role {
        Role::Root => roles.root = one_key(&new_key),
        Role::Targets => roles.targets = one_key(&new_key),
        Role::Director => roles.director = one_key(&new_key),
    }
    // Keep exactly the keys some role still uses.
    let mut public: Vec<PublicKey> = Vec::new();
    for r in ROLES {
        for id in &roles.get(r).keyids {
            let key = if *id == new_key.key_id() {
                new_key.public_key()
            } else {
                *current
                    .keys
                    .get(id)
                    .with_context(|| format!("root lists key {id} for {r} but not its value"))?
            };
            if !public.contains(&key) {
                public.push(key);
            }
        }
    }
    let version = current.version() + 1;
    let metadata = RootMetadata::new(
        version,
        now.plus_seconds(i64::from(expires_days) * 86_400),
        &public,
        roles,
    );
    let mut signers = vec![&old_root_key];
    if role == Role::Root {
        signers.push(&new_key);
    }
    let envelope =
        Envelope::sign(Role::Root.payload_type(), to_payload(&metadata), &signers).to_json_bytes();
    let next = TrustedState::from_anchor(&current_bytes)?
        .update_root(std::slice::from_ref(&envelope))
        .context("the new root does not verify against the current one")?;

    let path = key_path(dir, role);
    let retired = dir.join(format!("{role}.key.v{}.json", current.version()));
    std::fs::rename(&path, &retired)
        .with_context(|| format!("retiring {} to {}", path.display(), retired.display()))?;
    write_private_file(&path, &KeyFile::new(role, &new_key).to_json())?;
    write_root(dir, version, &envelope)?;
    Ok(next.root().clone())
}

/// Human summary of a key directory.
pub fn show(dir: &Path) -> anyhow::Result<String> {
    let (_, root) = load_root(dir)?;
    let mut out = format!(
        "root version {} expires {}\n",
        root.version(),
        root.expires()
    );
    for role in ROLES {
        let role_keys = root.role_keys(role);
        let private = match KeyFile::read(&key_path(dir, role)) {
            Ok(file) if role_keys.keyids.iter().any(|id| id.as_str() == file.keyid) => {
                "private key present"
            }
            Ok(_) => "private key file does not match root",
            Err(_) => "private key not in this directory",
        };
        out.push_str(&format!(
            "{role:<8} threshold {} of {} ({private})\n",
            role_keys.threshold,
            role_keys.keyids.len()
        ));
        for id in &role_keys.keyids {
            out.push_str(&format!("         keyid {id}\n"));
        }
    }
    Ok(out)
}

/// The role whose payload type `text` is (a role name or the full payload type).
fn role_of_payload_type(text: &str) -> Option<Role> {
    Role::parse(text).or_else(|| ROLES.into_iter().find(|role| role.payload_type() == text))
}

/// Checks `payload` with the verifier's own strict parser for the role of
/// `payload_type` (exact JSON: no trailing newline, no duplicate or unknown members;
/// valid keys and thresholds for a root), so that nothing every vehicle would refuse
/// gets signed. A payload type that is not one of the three roles is refused.
pub fn check_payload(payload_type: &str, payload: &[u8]) -> anyhow::Result<Role> {
    let Some(role) = role_of_payload_type(payload_type) else {
        bail!(
            "{payload_type:?} is not a payload type the signer can check: use root, targets \
             or director"
        );
    };
    let checked = match role {
        Role::Root => Root::from_payload(payload).map(|_| ()),
        Role::Targets => parse_document::<TargetsMetadata>(payload).map(|_| ()),
        Role::Director => parse_document::<DirectorMetadata>(payload).map(|_| ()),
    };
    if let Err(err) = checked {
        let hint = if payload.last().is_some_and(u8::is_ascii_whitespace) {
            " (the file ends with whitespace, e.g. the newline an editor adds: the payload \
             must end at its closing brace)"
        } else {
            ""
        };
        bail!("not signing: every vehicle would refuse this payload: {err}{hint}");
    }
    Ok(role)
}

/// Wraps the exact bytes of `payload` in an envelope signed by every key file given,
/// after [`check_payload`] accepted it.
pub fn sign_payload(
    key_files: &[PathBuf],
    payload_type: &str,
    payload: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let role = check_payload(payload_type, &payload)?;
    if key_files.is_empty() {
        bail!("at least one --key is required");
    }
    let keys = key_files
        .iter()
        .map(|path| KeyFile::read(path)?.signing_key())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    Ok(Envelope::sign(role.payload_type(), payload, &refs).to_json_bytes())
}
