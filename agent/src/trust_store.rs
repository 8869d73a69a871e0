//! The agent's trust store.
//!
//! A directory holding:
//! - `root.json`: the root installed at provisioning (a signed root envelope);
//! - `roots/<N>.json`: every newer root the agent accepted, so the whole chain can be
//!   re-walked from the anchor at every start;
//! - `state.json`: the [`TrustedState`] (newest trusted root, role version floors,
//!   `security_version` floors), once an update was accepted.
//!
//! Loading re-verifies everything from the anchor: `root.json` must be self-signed and,
//! when a hardware anchor key is configured (the root key held in the vehicle HSM, see
//! [`crate::hsm`]), carry a valid signature by that key; the chain in `roots/` must walk
//! from it; and `state.json`'s root must be the end of that chain. A state file rewritten
//! by an attacker with a self-signed root of their own therefore fails closed.
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory), so a power
//! cut leaves either the old or the new state, never a torn one.

use ota_core::envelope::Envelope;
use ota_core::key::PublicKey;
use ota_core::metadata::{Role, RoleKeys, Root};
use ota_core::threshold::verify_threshold;
use ota_core::trust::TrustedState;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("trust store {dir}: root.json (the provisioned anchor root) does not exist")]
    NoAnchor { dir: PathBuf },
    #[error("root.json is not signed by the hardware anchor key {keyid}: {source}")]
    HardwareAnchorMismatch {
        keyid: String,
        source: ota_core::Error,
    },
    #[error("state.json holds root v{state_version}, which does not chain from the anchor (chain ends at v{chain_version})")]
    RootNotChained {
        state_version: u64,
        chain_version: u64,
    },
    #[error("trust store: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trust store {path} holds untrustworthy data: {source}")]
    Corrupt {
        path: PathBuf,
        source: ota_core::Error,
    },
}

#[derive(Debug, Clone)]
pub struct FileTrustStore {
    dir: PathBuf,
    hardware_anchor: Option<PublicKey>,
}

impl FileTrustStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileTrustStore {
            dir: dir.into(),
            hardware_anchor: None,
        }
    }

    /// Requires `root.json` to be signed by `key` (read from the vehicle HSM).
    pub fn with_hardware_anchor(mut self, key: PublicKey) -> Self {
        self.hardware_anchor = Some(key);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn anchor_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    pub fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }

    /// Loads the trusted state, failing closed on anything unreadable or unverifiable.
    pub fn load(&self) -> Result<TrustedState, TrustStoreError> {
        let anchor_path = self.anchor_path();
        let Some(anchor_bytes) = read_if_exists(&anchor_path)? else {
            return Err(TrustStoreError::NoAnchor {
                dir: self.dir.clone(),
            });
        };
        let corrupt = |path: &Path| {
            let path = path.to_owned();
            move |source| TrustStoreError::Corrupt { path, source }
        };
        let anchor = TrustedState::from_anchor(&anchor_bytes).map_err(corrupt(&anchor_path))?;
        if let Some(key) = &self.hardware_anchor {
            check_hardware_anchor(&anchor_bytes, key)?;
        }
        let chain = self.read_chain(anchor.root().version())?;
        // The stored chain grew one accepted update at a time: the per-update cap on
        // root rotations does not apply to it (it would brick the vehicle after its
        // 65th rotation).
        let chained = anchor
            .walk_stored_root_chain(&chain)
            .map_err(corrupt(&self.roots_dir()))?;
        let state_path = self.state_path();
        let Some(bytes) = read_if_exists(&state_path)? else {
            return Ok(chained);
        };
        let state = TrustedState::from_persisted(&bytes).map_err(corrupt(&state_path))?;
        if state.root_envelope() != chained.root_envelope() {
            return Err(TrustStoreError::RootNotChained {
                state_version: state.root().version(),
                chain_version: chained.root().version(),
            });
        }
        Ok(state)
    }

    /// `roots/<N>.json` for every N above the anchor's version, in version order.
    fn read_chain(&self, anchor_version: u64) -> Result<Vec<Vec<u8>>, TrustStoreError> {
        let dir = self.roots_dir();
        let listing_error = |source| TrustStoreError::Io {
            action: "listing",
            path: self.roots_dir(),
            source,
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(listing_error(source)),
        };
        let mut versions = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(listing_error)?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(version) = name
                .strip_suffix(".json")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > anchor_version)
            {
                versions.insert(version, entry.path());
            }
        }
        versions
            .into_values()
            .map(|path| read_if_exists(&path).map(Option::unwrap_or_default))
            .collect()
    }

    /// Records the roots of an accepted update in `roots/` (each once, by version), then
    /// replaces `state.json` atomically. Roots go first: a crash in between leaves a
    /// chain longer than the state's root, which fails closed on the next load instead of
    /// silently trusting either.
    pub fn save(
        &self,
        state: &TrustedState,
        accepted_roots: &[Vec<u8>],
    ) -> Result<(), TrustStoreError> {
        for bytes in accepted_roots {
            let Some(version) = root_version(bytes) else {
                continue;
            };
            let path = self.roots_dir().join(format!("{version}.json"));
            if path.exists() {
                continue;
            }
            std::fs::create_dir_all(self.roots_dir()).map_err(|source| TrustStoreError::Io {
                action: "creating",
                path: self.roots_dir(),
                source,
            })?;
            write_atomically(&path, bytes)?;
        }
        write_atomically(&self.state_path(), &state.to_persisted())
    }
}

fn root_version(envelope: &[u8]) -> Option<u64> {
    let envelope = Envelope::parse(envelope).ok()?;
    Root::from_payload(&envelope.payload)
        .ok()
        .map(|root| root.version())
}

/// The provisioned root must carry a valid signature by the key held in hardware.
fn check_hardware_anchor(anchor_bytes: &[u8], key: &PublicKey) -> Result<(), TrustStoreError> {
    let mismatch = |source| TrustStoreError::HardwareAnchorMismatch {
        keyid: key.key_id().to_string(),
        source,
    };
    let envelope = Envelope::parse(anchor_bytes).map_err(mismatch)?;
    let keys = BTreeMap::from([(key.key_id(), *key)]);
    let role_keys = RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    };
    verify_threshold(
        &envelope,
        Role::Root,
        &keys,
        &role_keys,
        "hardware anchor key",
    )
    .map_err(mismatch)?;
    Ok(())
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, TrustStoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TrustStoreError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Write to `<path>.tmp`, fsync, rename over `path`, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrustStoreError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| TrustStoreError::Io {
            action,
            path,
            source,
        }
    };
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))?;
    }
    Ok(())
}
