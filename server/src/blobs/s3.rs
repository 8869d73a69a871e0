//! The S3 blob backend (AWS S3, MinIO, any S3-compatible store) through `object_store`,
//! shared by every replica. Keys: `sha256/<hex>` for blobs, `tmp/upload-<random>` for
//! uploads in progress, `ota-blob-store.marker` for readiness.
//!
//! An upload is a multipart upload to a `tmp/` key, hashed while it streams (8 MiB
//! parts, at most two in flight: an upload holds about 24 MiB whatever its size). Once
//! the digest is known a server-side copy commits it to `sha256/<hex>` and the
//! temporary object is deleted; a refused upload aborts the multipart upload, so no
//! object is ever created. A process killed mid-upload leaves an incomplete multipart
//! upload (invisible, never served): give the bucket an `AbortIncompleteMultipartUpload`
//! lifecycle rule.

use super::{BlobBackend, BlobError, BlobStream, StoredBlob, UploadStream};
use crate::settings::BlobSettings;
use axum::body::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use ota_core::encoding::Sha256Digest;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::time::Duration;

/// Part size of multipart uploads (S3's minimum is 5 MiB; 4 GiB is 512 parts of the
/// 10,000 allowed).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once per upload; the stream waits for one to finish beyond this.
const PARTS_IN_FLIGHT: usize = 2;
/// The object `/readyz` looks for, written at start-up.
const MARKER: &str = "ota-blob-store.marker";
/// How long `/readyz` waits for the object store.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct S3Blobs {
    store: AmazonS3,
}

fn blob_key(sha256: &Sha256Digest) -> ObjectPath {
    ObjectPath::from(format!("sha256/{}", sha256.to_hex()))
}

fn is_not_found(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::NotFound { .. })
}

impl S3Blobs {
    /// Connects to the bucket `settings` name and writes the readiness marker, so a wrong
    /// endpoint, bucket or credential stops startup instead of the first upload.
    pub async fn open(settings: &BlobSettings) -> anyhow::Result<S3Blobs> {
        use anyhow::Context;
        let bucket = settings.bucket.as_deref().unwrap_or_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&settings.region)
            // A committing copy of a 4 GiB blob takes longer than a small request.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(key), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(&secret.0);
        }
        let store = builder.build().context("configuring the S3 client")?;
        store
            .put(
                &ObjectPath::from(MARKER),
                PutPayload::from_static(b"ota-server blob store\n"),
            )
            .await
            .with_context(|| format!("writing {MARKER} to the S3 bucket {bucket:?}"))?;
        Ok(S3Blobs { store })
    }

    /// Copies the finished upload at `temp` to the blob's own key (unless that exists:
    /// same name, same bytes) and deletes `temp`.
    async fn commit(&self, temp: &ObjectPath, sha256: &Sha256Digest) -> Result<(), BlobError> {
        let key = blob_key(sha256);
        let copied = match self.store.head(&key).await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => self.store.copy(temp, &key).await,
            Err(err) => Err(err),
        };
        if let Err(err) = self.store.delete(temp).await {
            tracing::warn!(%err, %temp, "deleting a committed upload's temporary object failed");
        }
        Ok(copied?)
    }
}

#[async_trait::async_trait]
impl BlobBackend for S3Blobs {
    async fn put_stream(
        &self,
        mut body: UploadStream<'_>,
        limit: u64,
    ) -> Result<StoredBlob, BlobError> {
        let temp = ObjectPath::from(format!("tmp/{}", super::temp_name("upload")));
        let upload = self.store.put_multipart(&temp).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let streamed = async {
            let mut hasher = Sha256::new();
            let mut length = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                length += chunk.len() as u64;
                if length > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                // Back pressure: the body is read no faster than parts are uploaded.
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.put(chunk);
            }
            if length == 0 {
                return Err(BlobError::Empty);
            }
            Ok(StoredBlob {
                sha256: Sha256Digest(hasher.finalize().into()),
                length,
            })
        }
        .await;
        let blob = match streamed {
            Ok(blob) => blob,
            Err(err) => {
                // Parts still in flight finish first: a part that lands after the abort
                // would outlive it (S3 documents this; s3s-fs left its part file).
                let _ = writer.wait_for_capacity(1).await;
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%abort, %temp, "aborting a refused multipart upload failed");
                }
                return Err(err);
            }
        };
        // `finish` aborts the multipart upload itself when completing it fails.
        writer.finish().await?;
        self.commit(&temp, &blob.sha256).await?;
        Ok(blob)
    }

    async fn length(&self, sha256: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        match self.store.head(&blob_key(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn read(
        &self,
        sha256: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<Option<BlobStream>, BlobError> {
        if range.is_empty() {
            return Ok(self
                .length(sha256)
                .await?
                .map(|_| futures_util::stream::empty::<std::io::Result<Bytes>>().boxed()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        match self.store.get_opts(&blob_key(sha256), options).await {
            Ok(result) => Ok(Some(
                result.into_stream().map_err(std::io::Error::other).boxed(),
            )),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn remove(&self, sha256: &Sha256Digest) -> Result<bool, BlobError> {
        // S3 deletes a missing key without complaint: ask first, to report it.
        if self.length(sha256).await?.is_none() {
            return Ok(false);
        }
        self.store.delete(&blob_key(sha256)).await?;
        Ok(true)
    }

    /// The marker written at start-up is still there: the endpoint answers, the
    /// credentials work and the bucket exists.
    async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(READY_TIMEOUT, self.store.head(&ObjectPath::from(MARKER))).await,
            Ok(Ok(_))
        )
    }
}
