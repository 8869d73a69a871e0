//! `ota-agent delta apply`, run as the real binary on hand-built containers.

use ota_core::delta::{
    encode_control_block, encode_runs, Algorithm, ContainerHeader, Control, SegmentHeader,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output};

const OLD: &[u8] = b"The quick brown fox jumps over the lazy dog. 0123456789";

/// A one-segment bsdiff container turning `OLD` into `"quick brown cat!"`: 11 bytes of
/// old text with two diff bytes changing "fox" into "cat", then literal "!".
fn bsdiff_container(source: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let target = b"quick brown cat!".to_vec();
    let old_run = &OLD[4..19];
    let diff: Vec<u8> = target[..15]
        .iter()
        .zip(old_run)
        .map(|(n, o)| n.wrapping_sub(*o))
        .collect();
    let control = encode_control_block(&[Control {
        seek: 4,
        diff_len: 15,
        extra_len: 1,
    }]);
    let (runs, codes) = encode_runs(&diff);
    let frame = |raw: &[u8]| zstd::bulk::compress(raw, 19).expect("zstd compresses");
    let frames = [frame(&control), frame(b"!"), frame(&runs), frame(&codes)];
    let header = ContainerHeader {
        algorithm: Algorithm::BsdiffZstd,
        source_len: source.len() as u64,
        source_sha256: Sha256::digest(source).into(),
        target_len: target.len() as u64,
        target_sha256: Sha256::digest(&target).into(),
    };
    let segment = SegmentHeader {
        target_len: 16,
        control_len: control.len() as u32,
        control_zlen: frames[0].len() as u32,
        extra_len: 1,
        extra_zlen: frames[1].len() as u32,
        diff_len: 15,
        runs_len: runs.len() as u32,
        runs_zlen: frames[2].len() as u32,
        codes_len: codes.len() as u32,
        codes_zlen: frames[3].len() as u32,
        extra_prefix_start: 0,
        extra_prefix_len: 0,
    };
    let container = [&header.encode()[..], &segment.encode(), &frames.concat()].concat();
    (container, target)
}

fn full_container(target: &[u8]) -> Vec<u8> {
    let header = ContainerHeader {
        algorithm: Algorithm::FullZstd,
        source_len: 0,
        source_sha256: [0; 32],
        target_len: target.len() as u64,
        target_sha256: Sha256::digest(target).into(),
    };
    [
        &header.encode()[..],
        &zstd::stream::encode_all(target, 3).expect("zstd"),
    ]
    .concat()
}

fn run_apply(dir: &Path, container: &[u8], old: &[u8]) -> Output {
    std::fs::write(dir.join("old"), old).expect("write old");
    std::fs::write(dir.join("delta"), container).expect("write delta");
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .args(["delta", "apply", "--old"])
        .arg(dir.join("old"))
        .arg("--delta")
        .arg(dir.join("delta"))
        .arg("--out")
        .arg(dir.join("new"))
        .output()
        .expect("ota-agent runs")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn cli_applies_bsdiff_and_full_image_containers() {
    let (bsdiff, bsdiff_target) = bsdiff_container(OLD);
    let full_target = b"a whole new image".to_vec();
    let cases = [
        ("bsdiff-zstd", bsdiff, bsdiff_target),
        ("full-zstd", full_container(&full_target), full_target),
    ];
    for (name, container, target) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = run_apply(dir.path(), &container, OLD);
        assert!(
            output.status.success(),
            "case `{name}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            std::fs::read(dir.path().join("new")).expect("new image written"),
            target,
            "case `{name}`"
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(name),
            "case `{name}` reports its algorithm"
        );
    }
}

#[test]
fn cli_refuses_a_wrong_base_and_leaves_no_output_behind() {
    let (container, _) = bsdiff_container(OLD);
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run_apply(
        dir.path(),
        &container,
        b"The quick brown fox jumps over the lazy cat. 0123456789",
    );
    assert!(!output.status.success(), "a wrong base must fail");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("wrong base"),
        "stderr names the cause"
    );
    assert_eq!(
        files_in(dir.path()),
        vec!["delta", "old"],
        "no output and no temporary file may remain"
    );
}

#[test]
fn cli_failure_keeps_an_existing_output_untouched() {
    let (container, _) = bsdiff_container(OLD);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("new"), b"previous image").expect("write");
    let output = run_apply(dir.path(), &container[..container.len() - 3], OLD);
    assert!(!output.status.success(), "a truncated delta must fail");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ends inside"),
        "stderr names the truncation"
    );
    assert_eq!(
        std::fs::read(dir.path().join("new")).expect("read"),
        b"previous image"
    );
    assert_eq!(files_in(dir.path()), vec!["delta", "new", "old"]);
}
