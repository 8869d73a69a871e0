//! `ota-server delta build`, run as the real binary, and the async builder entry point;
//! every container is applied back with the agent's applier.

use crate::helpers::{fresh_store, Backend};
use ota_agent::delta::{apply_delta, apply_delta_known};
use ota_core::delta::{Algorithm, ContainerHeader, ImageDigests, KnownDigests};
use ota_core::encoding::Sha256Digest;
use ota_server::blobs::BlobStore;
use ota_server::delta::BuildOptions;
use ota_server::jobs::{run_one, BuilderEngine, DeltaEngine, DeltaOutcome, JobOutcome};
use ota_server::store::DeltaJobStatus;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Two related images: a shared body with a few edits.
pub fn image_pair() -> (Vec<u8>, Vec<u8>) {
    let old: Vec<u8> = (0..400_000u32)
        .map(|i| ((i * 31) ^ (i >> 9)) as u8)
        .collect();
    let mut new = old.clone();
    new.splice(1000..1000, b"a new function body".iter().copied());
    new.drain(200_000..200_400);
    new[300_000] ^= 0xff;
    (old, new)
}

pub fn apply_bytes(container: &[u8], old: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    apply_delta(container, std::io::Cursor::new(old), &mut out).expect("container applies");
    out
}

fn apply_file(container: &Path, old: &[u8]) -> Vec<u8> {
    let delta = std::fs::File::open(container).expect("open container");
    let mut out = Vec::new();
    apply_delta(
        std::io::BufReader::new(delta),
        std::io::Cursor::new(old),
        &mut out,
    )
    .expect("container applies");
    out
}

/// Runs `ota-server delta build` on `dir`'s `old` and `new` with `args`, writing `dir/out`;
/// returns the container.
fn build_in(dir: &Path, out: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .args(["delta", "build", "--threads", "2"])
        .args(args)
        .arg("--old")
        .arg(dir.join("old"))
        .arg("--new")
        .arg(dir.join("new"))
        .arg("--out")
        .arg(dir.join(out))
        .output()
        .expect("ota-server runs");
    assert!(
        output.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(dir.join(out)).expect("container written")
}

#[test]
fn cli_builds_a_delta_that_applies_back_to_the_new_image() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    let container = build_in(dir.path(), "delta", &[]);
    let header = ContainerHeader::parse(&container).expect("header parses");
    // Three small edits: the body is small, and one stream (algorithm 5) ships.
    assert_eq!(header.algorithm, Algorithm::BsdiffOneStream(None));
    assert_eq!(header.source_len, old.len() as u64);
    assert_eq!(
        header.digests,
        Some(ImageDigests {
            source: Sha256::digest(&old).into(),
            target: Sha256::digest(&new).into(),
        }),
        "the CLI's default container carries its digests"
    );
    assert!(
        container.len() < new.len() / 20,
        "three edits should cost far less than the image"
    );
    assert!(apply_file(&dir.path().join("delta"), &old) == new);
    // `--no-one-stream` (for agents before algorithm 5): segments, algorithm 4.
    let segmented = build_in(dir.path(), "segmented", &["--no-one-stream"]);
    let header = ContainerHeader::parse(&segmented).expect("header parses");
    assert_eq!(header.algorithm, Algorithm::BsdiffLzma(None));
    assert!(segmented.len() > container.len());
    assert!(apply_file(&dir.path().join("segmented"), &old) == new);
}

#[test]
fn cli_builds_a_detached_digests_delta_and_prints_what_the_applier_needs() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    let embedded = build_in(dir.path(), "embedded", &[]);
    let output = Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .args(["delta", "build", "--threads", "2", "--detached-digests"])
        .arg("--old")
        .arg(dir.path().join("old"))
        .arg("--new")
        .arg(dir.path().join("new"))
        .arg("--out")
        .arg(dir.path().join("detached"))
        .output()
        .expect("ota-server runs");
    assert!(output.status.success());
    let detached = std::fs::read(dir.path().join("detached")).expect("written");
    let header = ContainerHeader::parse(&detached).expect("header parses");
    assert_eq!(header.digests, None);
    assert_eq!(
        detached.len() + 64,
        embedded.len(),
        "64 bytes of digests fewer"
    );
    let (source, target) = (
        hex::encode(Sha256::digest(&old)),
        hex::encode(Sha256::digest(&new)),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "--source-sha256 {source} --expect-length {} --expect-sha256 {target}",
            new.len()
        )),
        "the digests the applier needs are printed: {stdout}"
    );
    let mut out = Vec::new();
    let known = KnownDigests {
        source: Some(Sha256::digest(&old).into()),
        target: Some(Sha256::digest(&new).into()),
    };
    apply_delta_known(&detached[..], std::io::Cursor::new(&old), &mut out, &known)
        .expect("applies with the printed digests");
    assert!(out == new);
}

#[test]
fn cli_reports_a_missing_image_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .args([
            "delta",
            "build",
            "--old",
            "/nonexistent/old",
            "--new",
            "/nonexistent/new",
            "--out",
        ])
        .arg(dir.path().join("delta"))
        .output()
        .expect("ota-server runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("reading the old image failed"));
    assert!(!dir.path().join("delta").exists());
}

/// Runs `ota-server delta build` with `args` (old/new/out given in `dir` unless
/// `args` names them); returns (success, stderr).
fn delta_build(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ota-server"));
    command.args(["delta", "build"]).args(args);
    if !args.contains(&"--old") {
        command.arg("--old").arg(dir.join("old"));
    }
    if !args.contains(&"--new") {
        command.arg("--new").arg(dir.join("new"));
    }
    command.arg("--out").arg(dir.join("delta"));
    let output = command.output().expect("ota-server runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Inputs whose size cannot be known are refused by name, before anything is read
/// or written: a character device, a FIFO (which would block the open), a directory,
/// a `/proc` file that reports 0 bytes but has content.
#[test]
fn cli_refuses_inputs_it_cannot_size() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs")
        .success());
    let fifo = fifo.to_str().unwrap().to_owned();
    let directory = dir.path().to_str().unwrap().to_owned();
    for (input, expected) in [
        ("/dev/zero", "is a character device"),
        (fifo.as_str(), "is a FIFO"),
        (directory.as_str(), "is a directory"),
        ("/proc/self/status", "reports as 0 although it has content"),
    ] {
        for which in ["--old", "--new"] {
            let (ok, stderr) = delta_build(dir.path(), &[which, input]);
            assert!(!ok, "{which} {input} must be refused");
            assert!(
                stderr.contains(expected)
                    && stderr.contains(&format!("reading the {} image failed", &which[2..])),
                "{which} {input}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(!dir.path().join("delta").exists(), "nothing written");
        }
    }
}

/// Every numeric option has a range and a clear error outside it (once a panic, a
/// silent 1-byte window, or an accepted level the help says is invalid).
#[test]
fn cli_refuses_options_out_of_range() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    for (option, value) in [
        ("--threads", "0"),
        ("--threads", "1025"),
        ("--threads", "2305843009213693952"),
        ("--window-mib", "0"),
        ("--window-mib", "4097"),
        ("--window-mib", "17592186044416"),
        ("--level", "0"),
        ("--level", "23"),
        ("--level", "2147483647"),
        ("--level", "-1"),
    ] {
        let (ok, stderr) = delta_build(dir.path(), &[&format!("{option}={value}")]);
        assert!(!ok, "{option} {value} must be refused");
        assert!(
            stderr.contains(option) && !stderr.contains("panicked"),
            "{option} {value}: {stderr}"
        );
        assert!(!dir.path().join("delta").exists(), "nothing written");
    }
    // The bounds themselves are accepted.
    for (option, value) in [("--threads", "1"), ("--window-mib", "1"), ("--level", "22")] {
        let (ok, stderr) = delta_build(dir.path(), &[option, value]);
        assert!(ok, "{option} {value}: {stderr}");
        assert_eq!(apply_file(&dir.path().join("delta"), &old), new);
        std::fs::remove_file(dir.path().join("delta")).unwrap();
    }
}

/// The production builder behind a gate: a build announces that it started, then waits
/// for `release` before diffing. Tests use it to hold a delta job in flight.
#[derive(Debug)]
pub struct GatedEngine {
    inner: BuilderEngine,
    started: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

/// The two ends a test holds: `started` resolves once a build is in flight; sending on
/// `release` lets it diff.
pub struct Gate {
    pub started: tokio::sync::oneshot::Receiver<()>,
    pub release: std::sync::mpsc::Sender<()>,
}

impl GatedEngine {
    pub fn new() -> (Arc<GatedEngine>, Gate) {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let engine = GatedEngine {
            inner: BuilderEngine {
                options: BuildOptions {
                    threads: 1,
                    ..BuildOptions::default()
                },
            },
            started: std::sync::Mutex::new(Some(started_tx)),
            release: std::sync::Mutex::new(release_rx),
        };
        (Arc::new(engine), Gate { started, release })
    }
}

impl DeltaEngine for GatedEngine {
    fn build_delta(
        &self,
        old: &Path,
        new: &Path,
        out: &Path,
    ) -> Result<DeltaOutcome, ota_server::jobs::DeltaBuildError> {
        if let Some(started) = self.started.lock().unwrap().take() {
            let _ = started.send(());
        }
        // Only a bound against a hang when the gate is never opened (the test fails then).
        self.release
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(60))
            .map_err(|_| {
                ota_server::jobs::DeltaBuildError::Failed("the gate was never opened".to_owned())
            })?;
        self.inner.build_delta(old, new, out)
    }
}

/// Writes `bytes` into the blob store under their digest; returns the digest in hex.
pub async fn put_blob(blobs: &BlobStore, bytes: &[u8]) -> String {
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
        axum::body::Bytes::copy_from_slice(bytes),
    )]);
    let blob = blobs
        .write_stream(body, u64::MAX, std::time::Duration::from_secs(60))
        .await
        .expect("blob written");
    assert_eq!(blob.sha256, Sha256Digest::of(bytes));
    blob.sha256.to_hex()
}

/// A blob's bytes, read back from the store.
pub async fn blob_bytes(blobs: &BlobStore, sha256: &Sha256Digest) -> Vec<u8> {
    blobs
        .read_all(sha256)
        .await
        .expect("blob store readable")
        .expect("the blob is in the blob store")
}

/// On a single-threaded runtime, the build waits for a message that only another task
/// on that same runtime sends. Were the diff run on the executor's thread, that task
/// could never run and the build would fail at the gate; on the blocking pool it is
/// released and the job is built.
#[tokio::test(flavor = "current_thread")]
async fn diffing_never_runs_on_the_async_executor() {
    let Some((store, _, dir)) = fresh_store(Backend::Sqlite).await else {
        unreachable!("sqlite never skips");
    };
    let blobs = BlobStore::local(&dir.path().join("blobs")).expect("blob store");
    let (old, new) = image_pair();
    let (old_sha, new_sha) = (put_blob(&blobs, &old).await, put_blob(&blobs, &new).await);
    assert!(store
        .enqueue_delta("ro_exec", "hw-a", &old_sha, &new_sha)
        .await
        .unwrap());
    let (engine, gate) = GatedEngine::new();
    let Gate { started, release } = gate;
    let opener = tokio::spawn(async move {
        started.await.expect("the build started");
        release.send(()).expect("the build waits at the gate");
    });
    let outcome = run_one(&store, &blobs, engine).await.unwrap();
    assert!(
        matches!(outcome, JobOutcome::Built { .. }),
        "the executor kept running while the diff was in flight: {outcome:?}"
    );
    opener.await.unwrap();
    let job = store.list_delta_jobs(Some("ro_exec")).await.unwrap();
    assert_eq!(job[0].status, DeltaJobStatus::Done, "{job:?}");
    let delta = Sha256Digest::parse(job[0].delta_sha256.as_deref().unwrap()).unwrap();
    assert!(apply_bytes(&blob_bytes(&blobs, &delta).await, &old) == new);
}

/// `len` incompressible bytes (as machine code mostly is), distinct per `seed`.
fn incompressible(seed: u32, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0u32..)
        .take(len.div_ceil(32))
        .flat_map(|i| Sha256::digest([seed.to_le_bytes(), i.to_le_bytes()].concat()))
        .collect();
    out.truncate(len);
    out
}

async fn delta_jobs_end_done_skipped_or_failed(backend: Backend) {
    let Some((store, db, dir)) = fresh_store(backend).await else {
        return;
    };
    let blobs = BlobStore::local(&dir.path().join("blobs")).expect("blob store");
    let engine: Arc<dyn DeltaEngine> = Arc::new(BuilderEngine {
        options: BuildOptions {
            threads: 1,
            ..BuildOptions::default()
        },
    });

    let old = incompressible(1, 64_000);
    let mut new = old.clone();
    new[1000..1008].copy_from_slice(b"NEWBYTES");
    new.drain(30_000..30_100);
    let unrelated = incompressible(2, 64_000);
    let (old_sha, new_sha, unrelated_sha) = (
        put_blob(&blobs, &old).await,
        put_blob(&blobs, &new).await,
        put_blob(&blobs, &unrelated).await,
    );
    let absent_sha = Sha256Digest::of(b"bytes the server never received").to_hex();

    // Enqueued in this order; the workers claim the oldest first.
    let jobs = [
        ("related", old_sha.as_str(), new_sha.as_str()),
        ("unrelated", old_sha.as_str(), unrelated_sha.as_str()),
        ("source missing", absent_sha.as_str(), new_sha.as_str()),
        ("malformed digest", "not-a-digest", new_sha.as_str()),
    ];
    for (_, source, target) in jobs {
        assert!(store
            .enqueue_delta("ro_jobs", "hw-a", source, target)
            .await
            .unwrap());
    }
    let mut outcomes = Vec::new();
    loop {
        match run_one(&store, &blobs, engine.clone()).await.unwrap() {
            JobOutcome::Idle => break,
            outcome => outcomes.push(outcome),
        }
    }
    assert_eq!(outcomes.len(), jobs.len(), "{outcomes:?}");
    let listed = store.list_delta_jobs(Some("ro_jobs")).await.unwrap();
    let by_pair = |source: &str, target: &str| {
        listed
            .iter()
            .find(|j| j.source_sha256 == source && j.target_sha256 == target)
            .cloned()
            .expect("job listed")
    };

    let built = by_pair(&old_sha, &new_sha);
    assert_eq!(built.status, DeltaJobStatus::Done, "{built:?}");
    let delta_sha = built
        .delta_sha256
        .clone()
        .expect("a built job names its delta");
    let container = blob_bytes(&blobs, &Sha256Digest::parse(&delta_sha).unwrap()).await;
    assert_eq!(Some(container.len() as u64), built.delta_length);
    let mut rebuilt = Vec::new();
    apply_delta(&container[..], std::io::Cursor::new(&old), &mut rebuilt).expect("applies");
    assert!(rebuilt == new);

    let skipped = by_pair(&old_sha, &unrelated_sha);
    assert_eq!(
        (skipped.status, &skipped.delta_sha256, &skipped.error),
        (DeltaJobStatus::Skipped, &None, &None),
        "a delta not worth shipping is skipped, and no delta is offered: {skipped:?}"
    );
    assert!(outcomes.contains(&JobOutcome::Skipped {
        job: skipped.id.clone()
    }));

    let missing = by_pair(&absent_sha, &new_sha);
    assert_eq!(missing.status, DeltaJobStatus::Failed, "{missing:?}");
    assert_eq!(missing.delta_sha256, None);
    let error = missing.error.clone().unwrap_or_default();
    assert!(
        error.contains("reading the old image failed"),
        "a failed job records why: {error:?}"
    );
    assert!(outcomes.contains(&JobOutcome::Failed {
        job: missing.id.clone(),
        error: error.clone()
    }));

    let malformed = by_pair("not-a-digest", &new_sha);
    assert_eq!(
        (malformed.status, malformed.error.as_deref()),
        (DeltaJobStatus::Failed, Some("job names a malformed digest")),
        "{malformed:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs").join("tmp"))
            .unwrap()
            .count(),
        0,
        "no job leaves a temporary file behind"
    );
    if let Some(db) = db {
        db.drop_now().await;
    }
}
crate::both_backends!(
    delta_jobs_end_done_skipped_or_failed_and_record_why,
    delta_jobs_end_done_skipped_or_failed
);
