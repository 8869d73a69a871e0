//! The server's metadata keys: the trusted root, the online director key and (in dev, or
//! when the operator chooses) the targets key.
//!
//! Production: a key directory made by `ota-server keys init` holding `root.json` (the
//! signed root envelope) and `<role>.key.json` files of the form
//! `{"keytype":"ed25519","role":"director","keyid":hex,"public":hex,"private":hex seed}`.
//! The targets key may be absent: releases are then signed offline by `otactl` and only
//! verified here. Dev: with no key directory configured, an ephemeral key set is
//! generated once under `<data_dir>/dev-keys` and logged loudly.

use anyhow::{bail, Context};
use ota_core::encoding::parse_lower_hex;
use ota_core::envelope::Envelope;
use ota_core::key::{KeyId, SigningKey};
use ota_core::metadata::{
    parse_document, to_payload, Role, RoleKeys, Roles, Root, RootMetadata, TargetsMetadata,
};
use ota_core::threshold::verify_threshold;
use ota_core::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub keytype: String,
    pub role: String,
    pub keyid: String,
    pub public: String,
    pub private: String,
}

impl KeyFile {
    pub fn new(role: Role, key: &SigningKey) -> KeyFile {
        KeyFile {
            keytype: ota_core::key::KEYTYPE_ED25519.to_owned(),
            role: role.as_str().to_owned(),
            keyid: key.key_id().to_string(),
            public: key.public_key().to_hex(),
            private: hex::encode(key.seed()),
        }
    }

    /// Parses and checks that the public key and key id belong to the private seed.
    pub fn to_signing_key(&self) -> anyhow::Result<SigningKey> {
        let seed =
            parse_lower_hex::<32>(&self.private).map_err(|e| anyhow::anyhow!("private: {e}"))?;
        let key = SigningKey::from_seed(&seed);
        if key.public_key().to_hex() != self.public || key.key_id().as_str() != self.keyid {
            bail!("public key or key id does not match the private key");
        }
        Ok(key)
    }
}

pub fn read_key_file(path: &Path) -> anyhow::Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: KeyFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    file.to_signing_key()
        .with_context(|| format!("key file {}", path.display()))
}

#[derive(Debug)]
pub struct ServerKeys {
    pub root_envelope: Vec<u8>,
    pub root: Root,
    pub director: SigningKey,
    /// `None` when targets are signed offline only.
    pub targets: Option<SigningKey>,
}

/// Why uploaded targets metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetsRejection {
    #[error("{0}")]
    Core(#[from] ota_core::Error),
    #[error("payload type is {0:?}, expected the targets type")]
    WrongType(String),
}

impl ServerKeys {
    pub fn load(dir: &Path) -> anyhow::Result<ServerKeys> {
        let root_path = dir.join("root.json");
        let root_envelope = std::fs::read(&root_path)
            .with_context(|| format!("reading {}", root_path.display()))?;
        let envelope = Envelope::parse(&root_envelope)
            .with_context(|| format!("parsing {}", root_path.display()))?;
        let root = Root::from_payload(&envelope.payload).context("root.json payload")?;
        verify_threshold(
            &envelope,
            Role::Root,
            &root.keys,
            root.role_keys(Role::Root),
            "its own root keys",
        )
        .context("root.json must be signed by a threshold of its own root keys")?;
        let director = read_key_file(&dir.join("director.key.json"))?;
        let targets_path = dir.join("targets.key.json");
        let targets = if targets_path.exists() {
            Some(read_key_file(&targets_path)?)
        } else {
            None
        };
        let keys = ServerKeys {
            root_envelope,
            root,
            director,
            targets,
        };
        keys.check_authorised(Role::Director, &keys.director)?;
        if let Some(t) = &keys.targets {
            keys.check_authorised(Role::Targets, t)?;
        }
        Ok(keys)
    }

    fn check_authorised(&self, role: Role, key: &SigningKey) -> anyhow::Result<()> {
        if !self.root.role_keys(role).keyids.contains(&key.key_id()) {
            bail!(
                "the {role} key {} is not authorised for {role} in root.json",
                key.key_id()
            );
        }
        Ok(())
    }

    /// Loads `dir` if it holds keys, else creates a fresh dev key set there.
    pub fn load_or_create_dev(dir: &Path, now: Timestamp) -> anyhow::Result<ServerKeys> {
        if dir.join("root.json").exists() {
            return Self::load(dir);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let seed = || -> anyhow::Result<SigningKey> {
            let mut s = [0u8; 32];
            getrandom::getrandom(&mut s).context("reading random bytes for a dev key")?;
            Ok(SigningKey::from_seed(&s))
        };
        let (root_key, targets_key, director_key) = (seed()?, seed()?, seed()?);
        let role = |k: &SigningKey| RoleKeys {
            keyids: vec![k.key_id()],
            threshold: 1,
        };
        let metadata = RootMetadata::new(
            1,
            now.plus_seconds(365 * 86_400),
            &[
                root_key.public_key(),
                targets_key.public_key(),
                director_key.public_key(),
            ],
            Roles {
                root: role(&root_key),
                targets: role(&targets_key),
                director: role(&director_key),
            },
        );
        let envelope = Envelope::sign(
            Role::Root.payload_type(),
            to_payload(&metadata),
            &[&root_key],
        );
        for (role, key) in [
            (Role::Root, &root_key),
            (Role::Targets, &targets_key),
            (Role::Director, &director_key),
        ] {
            let path = dir.join(format!("{}.key.json", role.as_str()));
            std::fs::write(&path, serde_json::to_vec_pretty(&KeyFile::new(role, key))?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        std::fs::write(dir.join("root.json"), envelope.to_json_bytes())
            .context("writing root.json")?;
        tracing::warn!(
            dir = %dir.display(),
            "generated an EPHEMERAL DEVELOPMENT key set (root, targets, director private keys on disk): not for production"
        );
        Self::load(dir)
    }

    /// Signs targets metadata with the online targets key (dev / single-key setups).
    pub fn sign_targets(&self, metadata: &TargetsMetadata) -> Option<Envelope> {
        self.targets
            .as_ref()
            .map(|key| Envelope::sign(Role::Targets.payload_type(), to_payload(metadata), &[key]))
    }

    /// Verifies pre-signed targets metadata against the trusted root's targets role.
    pub fn verify_targets(
        &self,
        envelope_bytes: &[u8],
    ) -> Result<TargetsMetadata, TargetsRejection> {
        let envelope = Envelope::parse(envelope_bytes)?;
        if envelope.payload_type != Role::Targets.payload_type() {
            return Err(TargetsRejection::WrongType(envelope.payload_type));
        }
        let metadata: TargetsMetadata = parse_document(&envelope.payload)?;
        verify_threshold(
            &envelope,
            Role::Targets,
            &self.root.keys,
            self.root.role_keys(Role::Targets),
            "trusted root",
        )?;
        Ok(metadata)
    }

    pub fn director_key_id(&self) -> KeyId {
        self.director.key_id()
    }
}
