//! The private key file format: `{"keytype": "ed25519", "role": ..., "keyid": ...,
//! "public": hex, "private": hex of the 32-byte seed}`, written with mode 0600.

use anyhow::{bail, Context};
use ota_core::encoding::{from_slice_exact, parse_lower_hex};
use ota_core::key::{SigningKey, KEYTYPE_ED25519};
use ota_core::metadata::Role;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
            keytype: KEYTYPE_ED25519.to_owned(),
            role: role.as_str().to_owned(),
            keyid: key.key_id().to_string(),
            public: key.public_key().to_hex(),
            private: hex::encode(key.seed()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn read(path: &Path) -> anyhow::Result<KeyFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let trimmed = bytes.trim_ascii();
        from_slice_exact(trimmed)
            .map_err(|reason| anyhow::anyhow!("{} is not a key file: {reason}", path.display()))
    }

    /// The signing key, after checking that the file is consistent with itself.
    pub fn signing_key(&self) -> anyhow::Result<SigningKey> {
        if self.keytype != KEYTYPE_ED25519 {
            bail!("key type {:?} is not {KEYTYPE_ED25519:?}", self.keytype);
        }
        let seed = parse_lower_hex::<32>(&self.private)
            .map_err(|e| anyhow::anyhow!("private key: {e}"))?;
        let key = SigningKey::from_seed(&seed);
        if key.public_key().to_hex() != self.public || key.key_id().as_str() != self.keyid {
            bail!(
                "key file is inconsistent: its public key or key id does not match the private key"
            );
        }
        Ok(key)
    }
}

/// Creates `path` with mode 0600 (owner read/write only) and writes `bytes`. Refuses to
/// replace an existing file: private keys are never silently overwritten.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
