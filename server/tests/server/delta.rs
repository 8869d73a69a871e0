//! `ota-server delta build`, run as the real binary, and the async builder entry point;
//! every container is applied back with the agent's applier.

use ota_agent::delta::apply_delta;
use ota_core::delta::{Algorithm, ContainerHeader};
use ota_server::delta::{build_delta_file_in_background, BuildError, BuildOptions};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// Two related images: a shared body with a few edits.
fn image_pair() -> (Vec<u8>, Vec<u8>) {
    let old: Vec<u8> = (0..400_000u32)
        .map(|i| ((i * 31) ^ (i >> 9)) as u8)
        .collect();
    let mut new = old.clone();
    new.splice(1000..1000, b"a new function body".iter().copied());
    new.drain(200_000..200_400);
    new[300_000] ^= 0xff;
    (old, new)
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

#[test]
fn cli_builds_a_delta_that_applies_back_to_the_new_image() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_ota-server"))
        .args(["delta", "build", "--threads", "2", "--old"])
        .arg(dir.path().join("old"))
        .arg("--new")
        .arg(dir.path().join("new"))
        .arg("--out")
        .arg(dir.path().join("delta"))
        .output()
        .expect("ota-server runs");
    assert!(
        output.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let container = std::fs::read(dir.path().join("delta")).expect("container written");
    let header = ContainerHeader::parse(&container).expect("header parses");
    assert_eq!(header.algorithm, Algorithm::BsdiffZstd);
    assert_eq!(header.source_len, old.len() as u64);
    assert_eq!(header.source_sha256, <[u8; 32]>::from(Sha256::digest(&old)));
    assert_eq!(header.target_sha256, <[u8; 32]>::from(Sha256::digest(&new)));
    assert!(
        container.len() < new.len() / 20,
        "three edits should cost far less than the image"
    );
    assert!(apply_file(&dir.path().join("delta"), &old) == new);
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

#[tokio::test]
async fn background_build_runs_off_the_executor_and_applies() {
    let (old, new) = image_pair();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old"), &old).expect("write");
    std::fs::write(dir.path().join("new"), &new).expect("write");
    let report = build_delta_file_in_background(
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("delta"),
        BuildOptions::default(),
    )
    .await
    .expect("background build succeeds");
    assert_eq!(report.algorithm, Algorithm::BsdiffZstd);
    assert!(apply_file(&dir.path().join("delta"), &old) == new);

    let missing = build_delta_file_in_background(
        dir.path().join("missing"),
        dir.path().join("new"),
        dir.path().join("delta2"),
        BuildOptions::default(),
    )
    .await;
    assert!(
        matches!(missing, Err(BuildError::ReadImage { which: "old", .. })),
        "got {missing:?}"
    );
}
