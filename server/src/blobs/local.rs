//! The content-addressed blob store: `<dir>/sha256/<hex>`, written through a temporary
//! file while hashing, then renamed into place, so a blob path always holds exactly the
//! bytes its name says and a half-written upload is never visible.

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use ota_core::encoding::Sha256Digest;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    pub sha256: Sha256Digest,
    pub length: u64,
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

fn temp_name() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    format!("upload-{}", hex::encode(b))
}

impl BlobStore {
    pub fn open(dir: &Path) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_owned(),
        })
    }

    pub fn path_of(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join("sha256").join(sha256.to_hex())
    }

    /// Removes a blob nothing references any more; false if it was not there.
    pub async fn remove(&self, sha256: &Sha256Digest) -> std::io::Result<bool> {
        match tokio::fs::remove_file(self.path_of(sha256)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(temp_name())
    }

    /// Streams `body` to disk, hashing as it goes and refusing more than `limit` bytes.
    /// Hashing each chunk inline is fine on the executor: chunks are small (tens of KiB)
    /// and SHA-256 runs at hundreds of MB/s, cheaper than the write itself.
    pub async fn write_stream<S, E>(&self, mut body: S, limit: u64) -> Result<StoredBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = self.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = Sha256::new();
            let mut length = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                length += chunk.len() as u64;
                if length > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            Ok(StoredBlob {
                sha256: Sha256Digest(hasher.finalize().into()),
                length,
            })
        }
        .await;
        match result {
            Ok(blob) => {
                tokio::fs::rename(&temp, self.path_of(&blob.sha256)).await?;
                Ok(blob)
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(err)
            }
        }
    }

    /// Moves a finished file (e.g. a built delta) into the store; hashing a possibly
    /// large file runs on the blocking pool.
    pub async fn import_file(&self, path: &Path) -> Result<StoredBlob, BlobError> {
        let owned = path.to_owned();
        let blob = tokio::task::spawn_blocking(move || -> std::io::Result<StoredBlob> {
            let mut file = std::fs::File::open(&owned)?;
            let mut hasher = Sha256::new();
            let length = std::io::copy(&mut file, &mut hasher)?;
            Ok(StoredBlob {
                sha256: Sha256Digest(hasher.finalize().into()),
                length,
            })
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        tokio::fs::rename(path, self.path_of(&blob.sha256)).await?;
        Ok(blob)
    }

    pub async fn length_of(&self, sha256: &Sha256Digest) -> Option<u64> {
        tokio::fs::metadata(self.path_of(sha256))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Whether the store's directory is usable (for `/readyz`).
    pub async fn ready(&self) -> bool {
        tokio::fs::metadata(self.dir.join("sha256"))
            .await
            .is_ok_and(|m| m.is_dir())
    }
}
