//! The development key store: the device key's 32-byte seed, hex, in a file of mode
//! 0600. For development and the fleet simulator only — a vehicle keeps its key in the
//! token ([`super::pkcs11`]). Every load says so on stderr.
//!
//! The file is created once (`O_EXCL`, mode 0600, fsync of file and directory) and never
//! overwritten; a file readable or writable by group or others is refused.

use super::{DeviceSigner, MemoryKey, SignError};
use ota_core::key::{PublicKey, SigningKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The warning printed at every load of a file key.
pub const FILE_KEY_WARNING: &str = "WARNING: the device key is a FILE key store: for \
development and the simulator only, NOT for vehicles (provision vehicles with a PKCS#11 token)";

#[derive(Debug, thiserror::Error)]
pub enum FileKeyError {
    #[error("device key file {path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device key file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("device key file {path} is not 64 hex characters (a 32-byte seed)")]
    Malformed { path: PathBuf },
    #[error("generating a device key seed: {0}")]
    Random(String),
}

/// A device key whose seed lives in a 0600 file.
#[derive(Debug)]
pub struct FileKey {
    key: MemoryKey,
    path: PathBuf,
}

impl FileKey {
    /// Loads the key at `path`, creating it (a fresh random seed) when the file does not
    /// exist. Never overwrites an existing file.
    pub fn load_or_create(path: &Path) -> Result<FileKey, FileKeyError> {
        match Self::create(path) {
            Ok(key) => Ok(key),
            Err(FileKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::load(path)
            }
            Err(err) => Err(err),
        }
    }

    /// Creates a new key file at `path`; refuses when it exists.
    pub fn create(path: &Path) -> Result<FileKey, FileKeyError> {
        let io = |action: &'static str| {
            let path = path.to_owned();
            move |source| FileKeyError::Io {
                action,
                path,
                source,
            }
        };
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| FileKeyError::Random(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("creating"))?;
        file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
            .map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing its directory"))?;
        }
        eprintln!("{FILE_KEY_WARNING} (created {})", path.display());
        Ok(FileKey {
            key: MemoryKey(SigningKey::from_seed(&seed)),
            path: path.to_owned(),
        })
    }

    /// Loads an existing key file, refusing one with group or other permissions.
    pub fn load(path: &Path) -> Result<FileKey, FileKeyError> {
        let io = |action: &'static str| {
            let path = path.to_owned();
            move |source| FileKeyError::Io {
                action,
                path,
                source,
            }
        };
        let mode = std::fs::metadata(path)
            .map_err(io("reading metadata"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(FileKeyError::Permissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io("reading"))?;
        let seed = parse_seed(&text).ok_or_else(|| FileKeyError::Malformed {
            path: path.to_owned(),
        })?;
        eprintln!("{FILE_KEY_WARNING} (loaded {})", path.display());
        Ok(FileKey {
            key: MemoryKey(SigningKey::from_seed(&seed)),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Exactly 64 lowercase or uppercase hex characters, optionally followed by one newline.
fn parse_seed(text: &str) -> Option<[u8; 32]> {
    let hex_text = text.strip_suffix('\n').unwrap_or(text);
    if hex_text.len() != 64 {
        return None;
    }
    hex::decode(hex_text).ok()?.try_into().ok()
}

impl DeviceSigner for FileKey {
    fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        self.key.sign(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_0600_reloads_identically_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let created = FileKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let bytes = std::fs::read(&path).unwrap();
        let loaded = FileKey::load_or_create(&path).unwrap();
        assert_eq!(created.public_key(), loaded.public_key());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "never rewritten");
        assert!(
            matches!(FileKey::create(&path), Err(FileKeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists)
        );
        let signature = loaded.sign(b"hello").unwrap();
        assert!(created.public_key().verify_strict(b"hello", &signature));
        // Two fresh keys differ: the seed is random.
        let other = FileKey::create(&dir.path().join("other.key")).unwrap();
        assert_ne!(other.public_key(), created.public_key());
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        FileKey::create(&path).unwrap();
        for mode in [0o640, 0o604, 0o660, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(
                matches!(FileKey::load_or_create(&path), Err(FileKeyError::Permissions { mode: m, .. }) if m == mode),
                "mode {mode:o} must be refused"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(FileKey::load(&path).is_ok());
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        for text in ["", "zz", &"a".repeat(63), &"g".repeat(64), &"a".repeat(66)] {
            std::fs::remove_file(&path).ok();
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(FileKey::load(&path), Err(FileKeyError::Malformed { .. })),
                "{text:?}"
            );
        }
    }
}
