//! One blob-store test suite, run against both backends: the local directory and
//! S3-compatible object storage (a real S3-protocol server, `s3s-fs`, started per test
//! on a free loopback port with its own directory). Every test takes the backend as its
//! argument; `both_blob_backends!` makes a `local` and an `s3` test of it.

use crate::delta::{apply_bytes, image_pair};
use crate::helpers::{spawn_app_with, Backend, Options, S3Server, S3_BUCKET};
use axum::body::Bytes;
use futures_util::StreamExt;
use ota_core::encoding::Sha256Digest;
use ota_server::blobs::{BlobError, BlobStore};
use ota_server::delta::BuildOptions;
use ota_server::jobs::{run_one, BuilderEngine, DeltaEngine, JobOutcome};
use ota_server::store::{DeltaJobStatus, Store};
use std::sync::Arc;

/// The upload idle timeout of the store-level tests (their bodies never stall).
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    S3,
}

macro_rules! both_blob_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$body(super::Kind::Local).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$body(super::Kind::S3).await;
            }
        }
    };
}

/// A blob store of one backend in a temporary directory (and its own S3 server).
#[derive(Debug)]
struct Fixture {
    blobs: BlobStore,
    kind: Kind,
    dir: tempfile::TempDir,
    s3: Option<S3Server>,
}

impl Fixture {
    /// None = skipped (s3s-fs missing outside CI).
    async fn new(kind: Kind) -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (blobs, s3) = match kind {
            Kind::Local => (
                BlobStore::local(&dir.path().join("blobs")).expect("local blob store"),
                None,
            ),
            Kind::S3 => {
                let s3 = S3Server::start().await?;
                let blobs = BlobStore::open(&s3.settings(), dir.path())
                    .await
                    .expect("S3 blob store opens");
                (blobs, Some(s3))
            }
        };
        Some(Fixture {
            blobs,
            kind,
            dir,
            s3,
        })
    }

    /// Everything the backend holds besides its own marker: blob names, temporary
    /// uploads and, for S3, incomplete multipart uploads and their parts (s3s-fs keeps
    /// objects as files in the bucket's directory and multipart state as `.upload*`
    /// files in its root; its `.bucket-*` files are its bookkeeping, not objects).
    fn contents(&self) -> Vec<String> {
        let list = |dir: &std::path::Path| -> Vec<String> {
            walk(dir)
                .into_iter()
                .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
                .collect()
        };
        match self.kind {
            Kind::Local => list(&self.dir.path().join("blobs")),
            Kind::S3 => {
                let root = &self.s3.as_ref().unwrap().root;
                let objects = list(&root.join(S3_BUCKET))
                    .into_iter()
                    .filter(|name| name != "ota-blob-store.marker");
                let uploads = list(root)
                    .into_iter()
                    .filter(|name| name.starts_with(".upload") || name.starts_with(".tmp"));
                objects.chain(uploads).collect()
            }
        }
    }

    /// The blob names the backend holds (`<hex>`).
    fn blob_names(&self) -> Vec<String> {
        let dir = match self.kind {
            Kind::Local => self.dir.path().join("blobs").join("sha256"),
            Kind::S3 => self
                .s3
                .as_ref()
                .unwrap()
                .root
                .join(S3_BUCKET)
                .join("sha256"),
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Makes the backend unusable: the local blob directory replaced by a file, or the
    /// S3 server stopped.
    async fn break_backend(&mut self) {
        match self.kind {
            Kind::Local => {
                let blobs = self.dir.path().join("blobs").join("sha256");
                std::fs::remove_dir_all(&blobs).unwrap();
                std::fs::write(&blobs, b"not a directory").unwrap();
            }
            Kind::S3 => self.s3.as_mut().unwrap().kill().await,
        }
    }
}

/// Every file under `dir`, recursively (directories themselves are not listed).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `len` bytes, distinct per `seed`, not compressible into anything shorter.
fn pseudo_random(seed: u8, len: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest([seed]);
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// `bytes` as an upload body in uneven chunks (as a network delivers them).
fn chunks(bytes: &[u8]) -> Vec<Result<Bytes, std::io::Error>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut size = 1usize;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        out.push(Ok(Bytes::copy_from_slice(&rest[..n])));
        rest = &rest[n..];
        size = (size * 7 + 13) % 300_000 + 1;
    }
    out
}

async fn put(blobs: &BlobStore, bytes: &[u8]) -> Result<ota_server::blobs::StoredBlob, BlobError> {
    blobs
        .write_stream(futures_util::stream::iter(chunks(bytes)), u64::MAX, IDLE)
        .await
}

async fn read(blobs: &BlobStore, sha: &Sha256Digest, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut stream = blobs
        .read(sha, range.clone())
        .await
        .expect("the store answers")
        .unwrap_or_else(|| panic!("blob {sha} is there to read {range:?}"));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("the read streams to its end"));
    }
    out
}

/// 17 MiB and a few bytes: three parts of an S3 multipart upload, the last one short.
const BIG: usize = 17 * 1024 * 1024 + 4321;

async fn put_then_get_round_trips(kind: Kind) {
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let blobs = &fixture.blobs;
    let bytes = pseudo_random(1, BIG);
    let digest = Sha256Digest::of(&bytes);
    let stored = put(blobs, &bytes).await.expect("the upload is stored");
    assert_eq!(
        (stored.sha256, stored.length),
        (digest, BIG as u64),
        "a blob is named by the SHA-256 of its bytes, computed while it streamed in"
    );
    assert_eq!(blobs.length_of(&digest).await.unwrap(), Some(BIG as u64));
    let back = read(blobs, &digest, 0..BIG as u64).await;
    assert!(back == bytes, "the blob reads back byte for byte");
    assert_eq!(fixture.blob_names(), vec![digest.to_hex()]);

    // The same bytes again: the same name, still one blob; a small one beside it.
    let again = put(blobs, &bytes).await.unwrap();
    assert_eq!(again, stored);
    let small = put(blobs, b"a small blob").await.unwrap();
    assert_eq!(small.sha256, Sha256Digest::of(b"a small blob"));
    let mut expected = vec![digest.to_hex(), small.sha256.to_hex()];
    expected.sort();
    assert_eq!(fixture.blob_names(), expected);
    let mut left = fixture.contents();
    left.retain(|name| !name.contains(&digest.to_hex()) && !name.contains(&small.sha256.to_hex()));
    assert_eq!(
        left,
        Vec::<String>::new(),
        "no temporary upload stays behind"
    );

    // Removal, then the name is free.
    assert!(blobs.remove(&digest).await.unwrap(), "the blob was there");
    assert_eq!(blobs.length_of(&digest).await.unwrap(), None);
    assert!(!blobs.remove(&digest).await.unwrap(), "removed already");
    assert_eq!(fixture.blob_names(), vec![small.sha256.to_hex()]);
}
both_blob_backends!(
    put_then_get_round_trips_by_content_address,
    put_then_get_round_trips
);

async fn ranged_reads(kind: Kind) {
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let bytes = pseudo_random(2, BIG);
    let digest = put(&fixture.blobs, &bytes).await.unwrap().sha256;
    let len = BIG as u64;
    let part = 8 * 1024 * 1024u64;
    for range in [
        0..1,
        len - 1..len,
        1000..2000,
        // Across the first multipart boundary.
        part - 10..part + 10,
        len - 100_000..len,
        0..len,
    ] {
        let got = read(&fixture.blobs, &digest, range.clone()).await;
        let want = &bytes[range.start as usize..range.end as usize];
        assert!(
            got == want,
            "bytes {range:?} must be exactly that slice of the blob (got {} bytes)",
            got.len()
        );
    }
}
both_blob_backends!(ranged_reads_return_exactly_the_range, ranged_reads);

async fn missing_blob(kind: Kind) {
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let blobs = &fixture.blobs;
    let absent = Sha256Digest::of(b"never stored");
    assert_eq!(blobs.length_of(&absent).await.unwrap(), None);
    assert!(blobs.read(&absent, 0..1).await.unwrap().is_none());
    assert!(blobs.read_all(&absent).await.unwrap().is_none());
    assert!(!blobs.remove(&absent).await.unwrap());
    assert!(
        blobs.local_file(&absent).await.unwrap().is_none(),
        "no local copy of a blob that is not there"
    );
    assert!(
        blobs.ready().await,
        "a store without that blob is still ready"
    );
}
both_blob_backends!(a_missing_blob_is_none_everywhere, missing_blob);

async fn rejected_uploads(kind: Kind) {
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let blobs = &fixture.blobs;
    let bytes = pseudo_random(3, BIG);

    // Past the limit after two full parts were uploaded.
    let limit = 16 * 1024 * 1024 + 1;
    let err = blobs
        .write_stream(futures_util::stream::iter(chunks(&bytes)), limit, IDLE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::TooLarge { limit: l } if l == limit),
        "{err:?}"
    );
    assert_eq!(
        fixture.contents(),
        Vec::<String>::new(),
        "an oversize upload leaves nothing"
    );

    // The connection cut off after 9 MiB.
    let mut cut = chunks(&bytes[..9 * 1024 * 1024]);
    cut.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    )));
    let err = blobs
        .write_stream(futures_util::stream::iter(cut), u64::MAX, IDLE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::Body(ref m) if m.contains("reset")),
        "{err:?}"
    );
    assert_eq!(
        fixture.contents(),
        Vec::<String>::new(),
        "a cut-off upload leaves nothing"
    );

    // An empty body: no blob is ever empty.
    let err = put(blobs, b"").await.unwrap_err();
    assert!(matches!(err, BlobError::Empty), "{err:?}");
    assert_eq!(
        fixture.contents(),
        Vec::<String>::new(),
        "an empty upload leaves nothing"
    );
    assert_eq!(blobs.length_of(&Sha256Digest::of(b"")).await.unwrap(), None);
}
both_blob_backends!(a_rejected_upload_leaves_nothing_behind, rejected_uploads);

async fn readiness(kind: Kind) {
    let Some(mut fixture) = Fixture::new(kind).await else {
        return;
    };
    assert!(fixture.blobs.ready().await, "a fresh store is ready");
    fixture.break_backend().await;
    assert!(
        !fixture.blobs.ready().await,
        "a store that cannot be used must not report ready"
    );
}
both_blob_backends!(readiness_follows_the_backend, readiness);

/// A delta job reads both images from the store and stores its delta there; the
/// builder's local copies (object storage) are gone afterwards.
async fn delta_job(kind: Kind) {
    let Some(fixture) = Fixture::new(kind).await else {
        return;
    };
    let store = Store::connect(
        &format!("sqlite://{}", fixture.dir.path().join("ota.db").display()),
        2,
    )
    .await
    .unwrap();
    let (old, new) = image_pair();
    let old_sha = put(&fixture.blobs, &old).await.unwrap().sha256.to_hex();
    let new_sha = put(&fixture.blobs, &new).await.unwrap().sha256.to_hex();
    assert!(store
        .enqueue_delta("ro_blobs", "hw-a", &old_sha, &new_sha)
        .await
        .unwrap());
    let engine: Arc<dyn DeltaEngine> = Arc::new(BuilderEngine {
        options: BuildOptions {
            threads: 1,
            ..BuildOptions::default()
        },
    });
    let outcome = run_one(&store, &fixture.blobs, engine).await.unwrap();
    let JobOutcome::Built { delta_sha256, .. } = outcome else {
        panic!("the related pair builds a delta: {outcome:?}");
    };
    let job = store
        .list_delta_jobs(Some("ro_blobs"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(job.status, DeltaJobStatus::Done, "{job:?}");
    let delta = Sha256Digest::parse(&delta_sha256).unwrap();
    let container = fixture
        .blobs
        .read_all(&delta)
        .await
        .unwrap()
        .expect("the delta is stored");
    assert_eq!(Some(container.len() as u64), job.delta_length);
    assert!(
        apply_bytes(&container, &old) == new,
        "the stored delta rebuilds the new image"
    );
    let scratch: Vec<_> = walk(fixture.dir.path())
        .into_iter()
        .filter(|p| {
            let p = p.display().to_string();
            p.contains("blob-scratch") || p.contains("/blobs/tmp/")
        })
        .collect();
    assert_eq!(
        scratch,
        Vec::<std::path::PathBuf>::new(),
        "no build file stays behind"
    );
    store.close().await;
}
both_blob_backends!(a_delta_job_reads_and_writes_through_the_store, delta_job);

/// Through the HTTP API: an image uploaded, downloaded whole and by Range (If-Range
/// honoured), and refused uploads leave nothing in the store.
async fn api_upload_and_ranged_download(kind: Kind) {
    let Some(app) = spawn_app_with(
        Backend::Sqlite,
        Options {
            s3: kind == Kind::S3,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let bytes = pseudo_random(4, 3 * 1024 * 1024 + 17);
    let len = bytes.len();
    let image = app.upload("hw-s3", "1.0.0", bytes.clone()).await;
    let sha = image["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha, Sha256Digest::of(&bytes).to_hex());
    let path = format!("/v1/blobs/{sha}");
    let full = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.read_token)
        .send()
        .await
        .unwrap();
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(full.headers()["content-length"], len.to_string().as_str());
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        full.bytes().await.unwrap() == bytes,
        "the whole blob comes back"
    );

    let ranged = |range: &str, if_range: Option<&str>| {
        let mut request = app
            .http
            .get(app.url(&path))
            .bearer_auth(&app.read_token)
            .header("range", range);
        if let Some(tag) = if_range {
            request = request.header("if-range", tag);
        }
        request.send()
    };
    let part = ranged("bytes=1000-1999", None).await.unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-1999/{len}").as_str()
    );
    assert!(part.bytes().await.unwrap() == bytes[1000..2000]);
    let tail = ranged("bytes=-10", Some(&etag)).await.unwrap();
    assert_eq!(
        tail.status().as_u16(),
        206,
        "If-Range with the blob's ETag: partial"
    );
    assert!(tail.bytes().await.unwrap() == bytes[len - 10..]);
    let stale = ranged("bytes=5-", Some("\"other\"")).await.unwrap();
    assert_eq!(
        stale.status().as_u16(),
        200,
        "If-Range mismatch: the whole blob"
    );
    assert!(stale.bytes().await.unwrap() == bytes);
    let beyond = ranged(&format!("bytes={len}-"), None).await.unwrap();
    assert_eq!(beyond.status().as_u16(), 416);
    let (status, _) = app
        .get(&format!("/v1/blobs/{}", "0".repeat(64)), &app.read_token)
        .await;
    assert_eq!(status, 404, "a blob not in the store");

    // An empty upload is refused and stores nothing (not even the empty blob).
    let (status, body) = app
        .post_raw(
            "/api/v1/images?hardware_id=hw-s3&version=2.0.0",
            &app.admin_token,
            "application/octet-stream",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        app.state
            .blobs
            .length_of(&Sha256Digest::of(b""))
            .await
            .unwrap(),
        None,
        "a refused upload leaves nothing behind"
    );
    let (status, body) = app.get("/readyz", &app.read_token).await;
    assert_eq!(
        (status, body["blob_store"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    app.stop().await;
}
both_blob_backends!(
    an_image_uploaded_through_the_api_downloads_by_range,
    api_upload_and_ranged_download
);
