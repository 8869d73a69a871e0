//! The local blob backend: `<dir>/sha256/<hex>`, written through a temporary file in
//! `<dir>/tmp` while hashing, then renamed into place, so a blob path always holds exactly
//! the bytes its name says and a half-written upload is never visible.

use super::{BlobBackend, BlobError, BlobStream, StoredBlob, UploadStream};
use futures_util::StreamExt;
use ota_core::encoding::Sha256Digest;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

#[derive(Debug, Clone)]
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    pub fn open(dir: &Path) -> std::io::Result<LocalBlobs> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(LocalBlobs {
            dir: dir.to_owned(),
        })
    }

    pub fn path_of(&self, sha256: &Sha256Digest) -> PathBuf {
        self.dir.join("sha256").join(sha256.to_hex())
    }

    /// Temporary files live on the blobs' own file system, so a rename commits them.
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

#[async_trait::async_trait]
impl BlobBackend for LocalBlobs {
    /// Hashing each chunk inline is fine on the executor: chunks are small (tens of KiB)
    /// and SHA-256 runs at hundreds of MB/s, cheaper than the write itself.
    async fn put_stream(
        &self,
        mut body: UploadStream<'_>,
        limit: u64,
    ) -> Result<StoredBlob, BlobError> {
        let temp = self.temp_dir().join(super::temp_name("upload"));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = Sha256::new();
            let mut length = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                length += chunk.len() as u64;
                if length > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            if length == 0 {
                return Err(BlobError::Empty);
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

    /// Hashes the file (on the blocking pool: it may be large) and renames it into place.
    async fn put_file(&self, path: &Path) -> Result<StoredBlob, BlobError> {
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
        if blob.length == 0 {
            let _ = tokio::fs::remove_file(path).await;
            return Err(BlobError::Empty);
        }
        tokio::fs::rename(path, self.path_of(&blob.sha256)).await?;
        Ok(blob)
    }

    async fn length(&self, sha256: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.path_of(sha256)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        sha256: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<Option<BlobStream>, BlobError> {
        let mut file = match tokio::fs::File::open(self.path_of(sha256)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if range.start > 0 {
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
        }
        let count = range.end.saturating_sub(range.start);
        Ok(Some(ReaderStream::new(file.take(count)).boxed()))
    }

    async fn remove(&self, sha256: &Sha256Digest) -> Result<bool, BlobError> {
        match tokio::fs::remove_file(self.path_of(sha256)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn ready(&self) -> bool {
        tokio::fs::metadata(self.dir.join("sha256"))
            .await
            .is_ok_and(|m| m.is_dir())
    }

    fn local_path(&self, sha256: &Sha256Digest) -> Option<PathBuf> {
        Some(self.path_of(sha256))
    }
}
