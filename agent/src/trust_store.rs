//! The agent's file trust store.
//!
//! A directory holding `root.json` (the trust anchor: a signed root envelope installed
//! at provisioning) and, once the agent has accepted an update, `state.json` (the
//! [`TrustedState`]: newest trusted root, role version floors, `security_version`
//! floors). `state.json` wins when present. Writes are atomic (temporary file, fsync,
//! rename, fsync of the directory), so a power cut leaves either the old or the new
//! state, never a torn one.

use ota_core::trust::TrustedState;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("trust store {dir}: neither state.json nor root.json exists")]
    NoAnchor { dir: PathBuf },
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
}

impl FileTrustStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileTrustStore { dir: dir.into() }
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

    /// Loads the trusted state, failing closed on anything unreadable or unverifiable.
    pub fn load(&self) -> Result<TrustedState, TrustStoreError> {
        let state_path = self.state_path();
        if let Some(bytes) = read_if_exists(&state_path)? {
            return TrustedState::from_persisted(&bytes).map_err(|source| {
                TrustStoreError::Corrupt {
                    path: state_path,
                    source,
                }
            });
        }
        let anchor_path = self.anchor_path();
        match read_if_exists(&anchor_path)? {
            Some(bytes) => {
                TrustedState::from_anchor(&bytes).map_err(|source| TrustStoreError::Corrupt {
                    path: anchor_path,
                    source,
                })
            }
            None => Err(TrustStoreError::NoAnchor {
                dir: self.dir.clone(),
            }),
        }
    }

    /// Replaces `state.json` atomically.
    pub fn save(&self, state: &TrustedState) -> Result<(), TrustStoreError> {
        write_atomically(&self.state_path(), &state.to_persisted())
    }
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
