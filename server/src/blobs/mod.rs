//! The content-addressed blob store (images and deltas): a blob is named by the SHA-256 of
//! its bytes, computed while it streams in, and becomes visible under that name only
//! once every byte is in; a refused upload (too large, empty, cut off) leaves nothing
//! behind. Reads stream, whole or one byte range.
//!
//! Layout:
//! - [`BlobBackend`]: what a backend does (put a stream, put a finished file, length,
//!   ranged read, remove, readiness).
//! - [`local`]: `<dir>/sha256/<hex>` on local disk (the default; one replica).
//! - [`s3`]: an S3-compatible bucket through `object_store` (several replicas), multipart
//!   uploads under `tmp/`, committed by a server-side copy to `sha256/<hex>`.
//! - [`BlobStore`]: the handle the API, the delta workers and `/readyz` use.

pub mod local;
pub mod s3;

use crate::settings::{BlobBackendKind, BlobSettings};
use axum::body::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use ota_core::encoding::Sha256Digest;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// A scratch file nobody wrote to for this long is left over from a crash.
pub const STALE_TEMP_AFTER: Duration = Duration::from_secs(3600);

/// S3 copies at most 5 GiB in one `CopyObject`, the request that commits an upload.
pub const S3_MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    /// Every blob has at least one byte (images and deltas are never empty).
    #[error("blob is empty")]
    Empty,
    #[error("reading the upload failed: {0}")]
    Body(String),
    /// No byte of the body arrived for `seconds`.
    #[error("no upload bytes arrived for {seconds} s")]
    Idle { seconds: u64 },
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    pub sha256: Sha256Digest,
    pub length: u64,
}

/// An upload's bytes on their way into a backend.
pub type UploadStream<'a> = BoxStream<'a, Result<Bytes, BlobError>>;

/// A blob's bytes on their way out (`/v1/blobs`, the delta workers).
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// One blob store backend. Every method is safe to call from several replicas at once:
/// names are content addresses, so two writers of one name write the same bytes.
#[async_trait::async_trait]
pub trait BlobBackend: Send + Sync + fmt::Debug + 'static {
    /// Streams `body` in, hashing as it goes; refuses more than `limit` bytes and an
    /// empty body. On any error nothing is left behind under any name.
    async fn put_stream(&self, body: UploadStream<'_>, limit: u64)
        -> Result<StoredBlob, BlobError>;

    /// Moves a finished local file (a built delta) into the store. The default streams
    /// it through [`BlobBackend::put_stream`] and deletes it.
    async fn put_file(&self, path: &Path) -> Result<StoredBlob, BlobError> {
        let file = tokio::fs::File::open(path).await?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
            .map_err(BlobError::Io)
            .boxed();
        let blob = self.put_stream(body, u64::MAX).await?;
        tokio::fs::remove_file(path).await?;
        Ok(blob)
    }

    /// The blob's length, or `None` when there is no such blob.
    async fn length(&self, sha256: &Sha256Digest) -> Result<Option<u64>, BlobError>;

    /// The bytes in `range` (already checked against the length), or `None` when there
    /// is no such blob.
    async fn read(
        &self,
        sha256: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<Option<BlobStream>, BlobError>;

    /// Removes a blob nothing references any more; false if it was not there.
    async fn remove(&self, sha256: &Sha256Digest) -> Result<bool, BlobError>;

    /// Whether the store can be used now (for `/readyz`); answers within a few seconds.
    async fn ready(&self) -> bool;

    /// The blob as a local file, when the backend keeps it as one (the delta builder then
    /// reads it in place instead of a copy).
    fn local_path(&self, _sha256: &Sha256Digest) -> Option<PathBuf> {
        None
    }
}

/// A blob as a local file for the delta builder: the store's own file, or a copy in the
/// scratch directory deleted when this is dropped.
#[derive(Debug)]
pub enum LocalBlob {
    InPlace(PathBuf),
    Copy(tempfile::TempPath),
}

impl LocalBlob {
    pub fn path(&self) -> &Path {
        match self {
            LocalBlob::InPlace(path) => path,
            LocalBlob::Copy(temp) => temp,
        }
    }
}

/// The blob store the server uses: one backend and a local scratch directory (temporary
/// files of delta builds).
#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Arc<dyn BlobBackend>,
    scratch: PathBuf,
}

/// `body`, ending with [`BlobError::Idle`] when its next chunk takes longer than `idle`.
fn idle_limited<'a, S>(
    body: S,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'a
where
    S: Stream<Item = Result<Bytes, BlobError>> + Send + 'a,
{
    futures_util::stream::unfold(Some(Box::pin(body)), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(BlobError::Idle {
                    seconds: idle.as_secs(),
                }),
                None,
            )),
        }
    })
}

pub(crate) fn temp_name(prefix: &str) -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    format!("{prefix}-{}", hex::encode(b))
}

impl BlobStore {
    /// The backend `settings` choose; local blobs (and every backend's scratch files)
    /// live under `data_dir`.
    pub async fn open(settings: &BlobSettings, data_dir: &Path) -> anyhow::Result<BlobStore> {
        match settings.backend {
            BlobBackendKind::Local => Ok(BlobStore::local(&data_dir.join("blobs"))?),
            BlobBackendKind::S3 => {
                let scratch = data_dir.join("blob-scratch");
                std::fs::create_dir_all(&scratch)?;
                let backend = s3::S3Blobs::open(settings).await?;
                Ok(BlobStore {
                    backend: Arc::new(backend),
                    scratch,
                })
            }
        }
    }

    /// The local backend in `dir` (`<dir>/sha256/<hex>`, scratch in `<dir>/tmp`).
    pub fn local(dir: &Path) -> std::io::Result<BlobStore> {
        let local = local::LocalBlobs::open(dir)?;
        Ok(BlobStore {
            scratch: local.temp_dir(),
            backend: Arc::new(local),
        })
    }

    /// Any backend, with scratch files in `scratch` (tests).
    pub fn with_backend(backend: Arc<dyn BlobBackend>, scratch: PathBuf) -> BlobStore {
        BlobStore { backend, scratch }
    }

    /// A fresh path in the scratch directory (a delta build's output).
    pub fn temp_path(&self) -> PathBuf {
        self.scratch.join(temp_name("work"))
    }

    /// Streams `body` into the store (see [`BlobBackend::put_stream`]), giving up when
    /// no byte arrives for `idle`: an upload may take as long as its size needs, a
    /// stalled one does not hold a slot for ever.
    pub async fn write_stream<S, E>(
        &self,
        body: S,
        limit: u64,
        idle: Duration,
    ) -> Result<StoredBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        let body = body.map_err(|e| BlobError::Body(e.to_string()));
        self.backend
            .put_stream(idle_limited(body, idle).boxed(), limit)
            .await
    }

    /// Removes the scratch files nobody has written to for `stale_after` (uploads and
    /// delta builds a crash or kill interrupted), returning what it removed. Run at
    /// startup; a file another replica sharing the directory is still writing stays,
    /// because an upload writes at least once per idle timeout.
    pub fn remove_stale_temp(
        &self,
        now: SystemTime,
        stale_after: Duration,
    ) -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.scratch)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let age = now
                .duration_since(meta.modified()?)
                .unwrap_or(Duration::ZERO);
            if meta.is_file() && age > stale_after {
                std::fs::remove_file(entry.path())?;
                removed.push(entry.path());
            }
        }
        Ok(removed)
    }

    /// Moves a finished file (e.g. a built delta) into the store.
    pub async fn import_file(&self, path: &Path) -> Result<StoredBlob, BlobError> {
        self.backend.put_file(path).await
    }

    pub async fn length_of(&self, sha256: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        self.backend.length(sha256).await
    }

    /// The bytes of `range` (within the blob's length) or `None` if there is no such blob.
    pub async fn read(
        &self,
        sha256: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<Option<BlobStream>, BlobError> {
        self.backend.read(sha256, range).await
    }

    /// The whole blob in memory (tests and small blobs only).
    pub async fn read_all(&self, sha256: &Sha256Digest) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(length) = self.length_of(sha256).await? else {
            return Ok(None);
        };
        let Some(mut stream) = self.read(sha256, 0..length).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out))
    }

    /// Removes a blob nothing references any more; false if it was not there.
    pub async fn remove(&self, sha256: &Sha256Digest) -> Result<bool, BlobError> {
        self.backend.remove(sha256).await
    }

    /// Whether the store is usable (for `/readyz`).
    pub async fn ready(&self) -> bool {
        self.backend.ready().await
    }

    /// The blob as a local file for the delta builder (`None`: no such blob): the
    /// backend's own file, or a copy streamed into the scratch directory.
    pub async fn local_file(&self, sha256: &Sha256Digest) -> Result<Option<LocalBlob>, BlobError> {
        if let Some(path) = self.backend.local_path(sha256) {
            return Ok(tokio::fs::try_exists(&path)
                .await?
                .then_some(LocalBlob::InPlace(path)));
        }
        let Some(length) = self.length_of(sha256).await? else {
            return Ok(None);
        };
        let Some(mut stream) = self.read(sha256, 0..length).await? else {
            return Ok(None);
        };
        let temp = tempfile::TempPath::try_from_path(self.temp_path())?;
        let mut file = tokio::fs::File::create(&temp).await?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok(Some(LocalBlob::Copy(temp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_files_untouched_for_longer_than_the_limit_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let tmp = dir.path().join("tmp");
        let write = |name: &str, modified: SystemTime| {
            let file = std::fs::File::create(tmp.join(name)).unwrap();
            file.set_modified(modified).unwrap();
        };
        write("upload-old", now - 2 * hour);
        write("upload-edge", now - hour);
        write("upload-live", now);
        // A stored blob is never a scratch file, however old.
        let blob = dir.path().join("sha256").join("07".repeat(32));
        std::fs::File::create(&blob)
            .unwrap()
            .set_modified(now - 10 * hour)
            .unwrap();

        let removed = store.remove_stale_temp(now, hour).unwrap();
        assert_eq!(removed, vec![tmp.join("upload-old")]);
        let mut left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["upload-edge", "upload-live"],
            "exactly the limit stays"
        );
        assert!(blob.exists());
    }

    #[tokio::test]
    async fn a_body_that_stalls_ends_with_an_idle_error() {
        let stalled = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))])
            .chain(futures_util::stream::pending());
        let items: Vec<_> = idle_limited(stalled, Duration::from_millis(50))
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(BlobError::Idle { seconds: 0 })));
    }
}
