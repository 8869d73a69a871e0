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
//!
//! # Hardware binding (vehicles)
//!
//! With a [`HardwareBinding`] (the vehicle's PKCS#11 token, [`TokenBinding`]) the state
//! is bound to the vehicle (PROTOCOL.md §6.1): `state.json` is format 2, carrying a
//! `generation` and the token's HMAC-SHA256 (`CKM_SHA256_HMAC`, a non-extractable key)
//! over the whole state at that generation, trusted root included; the token keeps the
//! generation of the last accepted state in a data object. Load refuses a forged file
//! (bad MAC: `state_forged`), an older one (`state_rolled_back`) and a missing one once
//! the token has accepted any state (`state_missing`). Deleting `roots/` and `state.json`
//! to restart the chain from the anchor — with a retired root key, say — is therefore
//! refused, as is restoring a backup to lower the version and `security_version` floors.
//!
//! **Order of writes** (crash-safe): [`FileTrustStore::save`] reads the token's
//! generation `g`, writes `state.json` at `g + 1` with its MAC (atomically), and only
//! then raises the token's counter to `g + 1`. Load accepts a file at the counter and a
//! file one above it (a save cut between its two steps), and in that case raises the
//! counter itself, finishing the save. Every other crash point leaves the old file at
//! the old counter.
//!
//! Without a binding (the `file` trust store: development, simulator, offline
//! `verify-metadata` without a token) `state.json` is format 1 and nothing protects it
//! from being restored or deleted: that mode is labelled as such wherever it runs.

use crate::hsm::{Hsm, HsmError, StateObjects};
use ota_core::envelope::Envelope;
use ota_core::key::PublicKey;
use ota_core::metadata::{Role, RoleKeys, Root};
use ota_core::threshold::verify_threshold;
use ota_core::trust::{
    check_generation, GenerationCheck, StateBindingError, StateSeal, TrustedState,
};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The vehicle hardware the trusted state is bound to: a MAC key that never leaves it and
/// a counter that only rises. [`TokenBinding`] is the PKCS#11 implementation.
pub trait HardwareBinding: Send + Sync + Debug {
    /// The generation of the last trusted state the hardware accepted (0: none).
    fn generation(&self) -> Result<u64, HsmError>;
    /// Raises the generation (never lowers it).
    fn set_generation(&self, generation: u64) -> Result<(), HsmError>;
    /// The hardware's MAC of `message`.
    fn mac(&self, message: &[u8]) -> Result<[u8; 32], HsmError>;
    /// Whether `mac` is the hardware's MAC of `message`.
    fn verify_mac(&self, message: &[u8], mac: &[u8; 32]) -> Result<bool, HsmError>;
}

/// Something that lends an open token session: the device key's session
/// ([`crate::identity::pkcs11::Pkcs11Key`]) or a session of its own.
pub trait TokenSession: Send + Sync + Debug {
    fn with_hsm<T>(&self, f: impl FnOnce(&Hsm) -> T) -> T;
}

impl TokenSession for Mutex<Hsm> {
    fn with_hsm<T>(&self, f: impl FnOnce(&Hsm) -> T) -> T {
        f(&self.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// The trusted state bound to the vehicle's PKCS#11 token: the HMAC key
/// ([`crate::hsm::STATE_KEY_LABEL`]) and the generation data object
/// ([`crate::hsm::STATE_GENERATION_LABEL`]), checked when opened.
#[derive(Debug)]
pub struct TokenBinding<S: TokenSession> {
    session: Arc<S>,
    objects: StateObjects,
}

impl<S: TokenSession> TokenBinding<S> {
    /// Finds the binding objects on the token, failing closed unless there is exactly one
    /// protected HMAC key and one generation object.
    pub fn open(session: Arc<S>) -> Result<TokenBinding<S>, HsmError> {
        let objects = session.with_hsm(Hsm::state_objects)?;
        Ok(TokenBinding { session, objects })
    }
}

impl<S: TokenSession> HardwareBinding for TokenBinding<S> {
    fn generation(&self) -> Result<u64, HsmError> {
        self.session
            .with_hsm(|hsm| hsm.state_generation(&self.objects))
    }
    fn set_generation(&self, generation: u64) -> Result<(), HsmError> {
        self.session
            .with_hsm(|hsm| hsm.set_state_generation(&self.objects, generation))
    }
    fn mac(&self, message: &[u8]) -> Result<[u8; 32], HsmError> {
        self.session
            .with_hsm(|hsm| hsm.state_mac(&self.objects, message))
    }
    fn verify_mac(&self, message: &[u8], mac: &[u8; 32]) -> Result<bool, HsmError> {
        self.session
            .with_hsm(|hsm| hsm.verify_state_mac(&self.objects, message, mac))
    }
}

/// Printed wherever a trust store runs without hardware binding.
pub const NO_BINDING_WARNING: &str = "WARNING: trust store WITHOUT hardware binding \
(development only): state.json is not authenticated, so restoring an older copy or \
deleting it lowers every version and security_version floor";

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
    // The cause is in the message, not also a `source` (a chained report would say it
    // twice).
    #[error("trusted state refused ({kind}): {refusal}; the vehicle verifies nothing until it is re-provisioned (README, \"Re-provisioning a vehicle\")", kind = .refusal.kind())]
    StateRefused { refusal: StateBindingError },
    #[error("trusted state binding: vehicle token: {0}")]
    Token(HsmError),
    #[error("this trust store has no hardware binding to write a bound state with")]
    NotBound,
    #[error("the token's trusted state generation is at its maximum; re-provision the vehicle")]
    GenerationExhausted,
}

impl TrustStoreError {
    /// A stable kind for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            TrustStoreError::NoAnchor { .. } => "no_anchor",
            TrustStoreError::HardwareAnchorMismatch { .. } => "anchor_mismatch",
            TrustStoreError::RootNotChained { .. } => "root_not_chained",
            TrustStoreError::Io { .. } => "io",
            TrustStoreError::Corrupt { .. } => "corrupt_trust_store",
            TrustStoreError::StateRefused { refusal } => refusal.kind(),
            TrustStoreError::Token(_) => "token",
            TrustStoreError::NotBound => "not_bound",
            TrustStoreError::GenerationExhausted => "generation_exhausted",
        }
    }
}

impl From<StateBindingError> for TrustStoreError {
    fn from(refusal: StateBindingError) -> Self {
        TrustStoreError::StateRefused { refusal }
    }
}

impl From<HsmError> for TrustStoreError {
    fn from(err: HsmError) -> Self {
        TrustStoreError::Token(err)
    }
}

#[derive(Debug, Clone)]
pub struct FileTrustStore {
    dir: PathBuf,
    hardware_anchor: Option<PublicKey>,
    binding: Option<Arc<dyn HardwareBinding>>,
}

impl FileTrustStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileTrustStore {
            dir: dir.into(),
            hardware_anchor: None,
            binding: None,
        }
    }

    /// Binds the trusted state to the vehicle's hardware (see the module documentation).
    pub fn with_hardware_binding(mut self, binding: Arc<dyn HardwareBinding>) -> Self {
        self.binding = Some(binding);
        self
    }

    /// Whether the state is bound to hardware (false: development file store).
    pub fn is_hardware_bound(&self) -> bool {
        self.binding.is_some()
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
        let bytes = read_if_exists(&state_path)?;
        let Some(binding) = &self.binding else {
            let Some(bytes) = bytes else {
                return Ok(chained);
            };
            let state = TrustedState::from_persisted(&bytes).map_err(corrupt(&state_path))?;
            check_chained(&state, &chained)?;
            return Ok(state);
        };
        let hardware = binding.generation()?;
        let Some(bytes) = bytes else {
            check_generation(None, hardware)?;
            return Ok(chained);
        };
        let (state, seal) = TrustedState::from_persisted_bound(&bytes).map_err(|source| {
            StateBindingError::Forged {
                reason: source.to_string(),
            }
        })?;
        if !binding.verify_mac(&state.binding_message(seal.generation), &seal.mac)? {
            return Err(StateBindingError::Forged {
                reason: format!(
                    "its MAC (generation {}) does not verify with the token's state key",
                    seal.generation
                ),
            }
            .into());
        }
        let check = check_generation(Some(seal.generation), hardware)?;
        check_chained(&state, &chained)?;
        if check == GenerationCheck::CompletesInterruptedSave {
            binding.set_generation(seal.generation)?;
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
        let Some(binding) = &self.binding else {
            return write_atomically(&self.state_path(), &state.to_persisted());
        };
        let generation = self.write_bound_state(state)?;
        binding.set_generation(generation)?;
        Ok(())
    }

    /// The first half of a bound save: writes `state.json` at the token's generation + 1
    /// with the token's MAC, without raising the token's counter; returns that
    /// generation. [`FileTrustStore::save`] raises the counter next; tests call this alone
    /// to cut a save between its two steps.
    pub fn write_bound_state(&self, state: &TrustedState) -> Result<u64, TrustStoreError> {
        let Some(binding) = &self.binding else {
            return Err(TrustStoreError::NotBound);
        };
        let generation = binding
            .generation()?
            .checked_add(1)
            .ok_or(TrustStoreError::GenerationExhausted)?;
        let mac = binding.mac(&state.binding_message(generation))?;
        write_atomically(
            &self.state_path(),
            &state.to_persisted_bound(&StateSeal { generation, mac }),
        )?;
        Ok(generation)
    }
}

/// The state's root must be the end of the chain walked from the anchor.
fn check_chained(state: &TrustedState, chained: &TrustedState) -> Result<(), TrustStoreError> {
    if state.root_envelope() != chained.root_envelope() {
        return Err(TrustStoreError::RootNotChained {
            state_version: state.root().version(),
            chain_version: chained.root().version(),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    //! The bound store's logic over an in-memory [`HardwareBinding`] (the attack tests run
    //! against SoftHSM2 in `tests/agent/state_binding.rs`); here, what a token cannot be
    //! made to do on demand: fail between the two steps of a save.

    use super::*;
    use ota_core::key::SigningKey;
    use ota_core::metadata::{to_payload, Roles, RootMetadata};
    use ota_core::time::Timestamp;
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A counter and a keyed SHA-256 standing in for the token's HMAC.
    #[derive(Debug, Default)]
    struct MemoryBinding {
        generation: Mutex<u64>,
        fail_next_set: AtomicBool,
    }

    impl HardwareBinding for MemoryBinding {
        fn generation(&self) -> Result<u64, HsmError> {
            Ok(*self.generation.lock().unwrap())
        }
        fn set_generation(&self, generation: u64) -> Result<(), HsmError> {
            if self.fail_next_set.swap(false, Ordering::SeqCst) {
                return Err(HsmError::TokenNotFound {
                    label: "unplugged".into(),
                    present: vec![],
                });
            }
            *self.generation.lock().unwrap() = generation;
            Ok(())
        }
        fn mac(&self, message: &[u8]) -> Result<[u8; 32], HsmError> {
            Ok(Sha256::new()
                .chain_update(b"memory binding secret")
                .chain_update(message)
                .finalize()
                .into())
        }
        fn verify_mac(&self, message: &[u8], mac: &[u8; 32]) -> Result<bool, HsmError> {
            Ok(self.mac(message)? == *mac)
        }
    }

    fn anchor() -> Vec<u8> {
        let key = SigningKey::from_seed(&[9; 32]);
        let one = RoleKeys {
            keyids: vec![key.key_id()],
            threshold: 1,
        };
        let meta = RootMetadata::new(
            1,
            Timestamp::parse("2030-01-01T00:00:00Z").unwrap(),
            &[key.public_key()],
            Roles {
                root: one.clone(),
                targets: one.clone(),
                director: one,
            },
        );
        Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &[&key]).to_json_bytes()
    }

    #[test]
    fn a_token_failure_after_the_file_write_is_completed_by_the_next_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.json"), anchor()).unwrap();
        let binding = Arc::new(MemoryBinding::default());
        let store = FileTrustStore::new(dir.path()).with_hardware_binding(binding.clone());
        let state = store.load().unwrap();
        store.save(&state.with_installed("hw", 1), &[]).unwrap();
        assert_eq!(binding.generation().unwrap(), 1);

        binding.fail_next_set.store(true, Ordering::SeqCst);
        let next = state.with_installed("hw", 2);
        assert_eq!(store.save(&next, &[]).unwrap_err().kind(), "token");
        assert_eq!(binding.generation().unwrap(), 1, "the counter did not move");
        assert_eq!(store.load().unwrap(), next, "the written file is the state");
        assert_eq!(
            binding.generation().unwrap(),
            2,
            "the load completed the save"
        );

        let unbound = FileTrustStore::new(dir.path());
        assert_eq!(
            unbound.write_bound_state(&next).unwrap_err().kind(),
            "not_bound"
        );
    }
}
