//! The server's metadata keys: the trusted root, the online director key and (in dev, or
//! when the operator chooses) the targets key.
//!
//! Production: a key directory made by `ota-server keys init` holding `root.json` (the
//! signed root envelope) and `<role>.key.json` files of the form
//! `{"keytype":"ed25519","role":"director","keyid":hex,"public":hex,"private":hex seed}`.
//! The targets key may be absent: releases are then signed offline by `otactl` and only
//! verified here. Dev: with no key directory configured, an ephemeral key set is
//! generated once under `<data_dir>/dev-keys` and logged loudly.

use crate::keys::keyfile::KeyFile;
use anyhow::{bail, Context};
use ota_core::envelope::Envelope;
use ota_core::key::{KeyId, SigningKey};
use ota_core::metadata::{parse_document, to_payload, Role, Root, TargetsMetadata};
use ota_core::threshold::verify_threshold;
use ota_core::time::Timestamp;
use std::path::Path;

/// Reads a private key file (format in [`crate::keys::keyfile`]) and checks it.
pub fn read_key_file(path: &Path) -> anyhow::Result<SigningKey> {
    KeyFile::read(path)?
        .signing_key()
        .with_context(|| format!("key file {}", path.display()))
}

#[derive(Debug)]
pub struct ServerKeys {
    /// The key directory: `root.<N>.json` of every root version live here.
    pub dir: std::path::PathBuf,
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
        let (root_envelope, root) = crate::keys::load_root(dir)?;
        let director = read_key_file(&dir.join("director.key.json"))?;
        let targets_path = dir.join("targets.key.json");
        let targets = if targets_path.exists() {
            Some(read_key_file(&targets_path)?)
        } else {
            None
        };
        let keys = ServerKeys {
            dir: dir.to_owned(),
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
        crate::keys::init(dir, now, 365)?;
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
        // Signatures first: nothing unauthenticated is parsed further.
        verify_threshold(
            &envelope,
            Role::Targets,
            &self.root.keys,
            self.root.role_keys(Role::Targets),
            "trusted root",
        )?;
        Ok(parse_document(&envelope.payload)?)
    }

    /// The signed root of `version` (for vehicles walking the chain), if this key
    /// directory has it.
    pub fn root_version(&self, version: u64) -> Option<Vec<u8>> {
        if version == self.root.version() {
            return Some(self.root_envelope.clone());
        }
        std::fs::read(self.dir.join(format!("root.{version}.json"))).ok()
    }

    pub fn director_key_id(&self) -> KeyId {
        self.director.key_id()
    }
}
