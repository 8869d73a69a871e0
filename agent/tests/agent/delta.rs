//! `ota-agent delta apply`, run as the real binary on hand-built containers.

use ota_core::delta::{
    encode_control_block, encode_runs, Algorithm, ContainerHeader, Control, ImageDigests,
    SegmentHeader, Transform,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

pub(crate) const OLD: &[u8] = b"The quick brown fox jumps over the lazy dog. 0123456789";

/// A one-segment bsdiff container turning `OLD` into `"quick brown cat!"`: 11 bytes of
/// old text with two diff bytes changing "fox" into "cat", then literal "!".
pub(crate) fn bsdiff_container(source: &[u8]) -> (Vec<u8>, Vec<u8>) {
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
        target_len: target.len() as u64,
        digests: Some(ImageDigests {
            source: Sha256::digest(source).into(),
            target: Sha256::digest(&target).into(),
        }),
    };
    let segment = SegmentHeader::for_streams(
        15,
        [
            control.len() as u32,
            1,
            runs.len() as u32,
            codes.len() as u32,
        ],
        frames.each_ref().map(|f| f.len() as u32),
        (0, 0),
    );
    let container = [&header.encode()[..], &segment.encode(), &frames.concat()].concat();
    (container, target)
}

/// A one-segment container diffed under `transform`: all of `target` as diff bytes
/// against the transformed `source` from offset 0 (`target` no longer than `source`).
fn transformed_container(transform: Transform, source: &[u8], target: &[u8]) -> Vec<u8> {
    let (mut old_t, mut new_t) = (source.to_vec(), target.to_vec());
    transform.forward(0, &mut old_t);
    transform.forward(0, &mut new_t);
    let diff: Vec<u8> = new_t
        .iter()
        .zip(&old_t)
        .map(|(n, o)| n.wrapping_sub(*o))
        .collect();
    let control = encode_control_block(&[Control {
        seek: 0,
        diff_len: diff.len() as u32,
        extra_len: 0,
    }]);
    let (runs, codes) = encode_runs(&diff);
    let frame = |raw: &[u8]| {
        if raw.is_empty() {
            Vec::new()
        } else {
            zstd::bulk::compress(raw, 19).expect("zstd compresses")
        }
    };
    let frames = [frame(&control), frame(&runs), frame(&codes)];
    let header = ContainerHeader {
        algorithm: Algorithm::BsdiffZstdTransformed(transform),
        source_len: source.len() as u64,
        target_len: target.len() as u64,
        digests: Some(ImageDigests {
            source: Sha256::digest(source).into(),
            target: Sha256::digest(target).into(),
        }),
    };
    let segment = SegmentHeader::for_streams(
        diff.len() as u32,
        [
            control.len() as u32,
            0,
            runs.len() as u32,
            codes.len() as u32,
        ],
        [
            frames[0].len() as u32,
            0,
            frames[1].len() as u32,
            frames[2].len() as u32,
        ],
        (0, 0),
    );
    [&header.encode()[..], &segment.encode(), &frames.concat()].concat()
}

pub(crate) fn full_container(target: &[u8]) -> Vec<u8> {
    let header = ContainerHeader {
        algorithm: Algorithm::FullZstd,
        source_len: 0,
        target_len: target.len() as u64,
        digests: Some(ImageDigests {
            source: [0; 32],
            target: Sha256::digest(target).into(),
        }),
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
    // ARM64 code: three calls to word 64 (BL), moved by one word in the target, so the
    // transformed diff is zero on the calls and the plain bytes differ.
    let bl = |at: u32| (0x9400_0000u32 | ((256 - at) / 4)).to_le_bytes();
    let arm64_old: Vec<u8> = [bl(0), bl(4), bl(8), [0x1F, 0x20, 0x03, 0xD5]].concat();
    let arm64_new: Vec<u8> = [[0x1F, 0x20, 0x03, 0xD5], bl(4), bl(8), bl(12)].concat();
    let cases = [
        ("bsdiff-zstd", bsdiff, bsdiff_target),
        ("full-zstd", full_container(&full_target), full_target),
        (
            "bsdiff-zstd+arm64",
            transformed_container(Transform::Arm64, &arm64_old, &arm64_new),
            arm64_new.clone(),
        ),
    ];
    for (name, container, target) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = if name == "bsdiff-zstd+arm64" {
            &arm64_old[..]
        } else {
            OLD
        };
        let output = run_apply(dir.path(), &container, old);
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

/// `container` with its header rewritten as format version 2 (detached digests): the
/// same body, no source or target SHA-256.
fn detached_digests(container: &[u8]) -> Vec<u8> {
    let mut header = ContainerHeader::parse(container).expect("parses");
    let body = &container[header.encoded_len()..];
    header.digests = None;
    [&header.encode()[..], body].concat()
}

#[test]
fn cli_applies_a_detached_digests_container_only_with_the_signed_digests() {
    let (container, target) = bsdiff_container(OLD);
    let detached = detached_digests(&container);
    let dir = tempfile::tempdir().expect("tempdir");
    // Without the digests: refused, nothing written.
    let output = run_apply(dir.path(), &detached, OLD);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("detached digests"),
        "the error names what is missing: {stderr}"
    );
    assert_eq!(files_in(dir.path()), ["delta", "old"]);
    let hex = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let with_digests = |source: &str| {
        Command::new(env!("CARGO_BIN_EXE_ota-agent"))
            .args(["delta", "apply", "--old"])
            .arg(dir.path().join("old"))
            .arg("--delta")
            .arg(dir.path().join("delta"))
            .arg("--out")
            .arg(dir.path().join("new"))
            .args(["--source-sha256", source])
            .args(["--expect-length", &target.len().to_string()])
            .args(["--expect-sha256", &hex(&target)])
            .output()
            .expect("ota-agent runs")
    };
    // Another signed base: refused, nothing written.
    let output = with_digests(&hex(b"another base"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong base"), "{stderr}");
    assert_eq!(files_in(dir.path()), ["delta", "old"]);
    // The signed base: the new image.
    let output = with_digests(&hex(OLD));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(dir.path().join("new")).expect("new"), target);
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

fn run_apply_to(dir: &Path, container: &[u8], out: &Path, extra: &[&str]) -> Output {
    std::fs::write(dir.join("old"), OLD).expect("write old");
    std::fs::write(dir.join("delta"), container).expect("write delta");
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .args(["delta", "apply", "--old"])
        .arg(dir.join("old"))
        .arg("--delta")
        .arg(dir.join("delta"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("ota-agent runs")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn cli_gives_new_files_mode_0644_and_removes_leftover_temporaries() {
    let (container, target) = bsdiff_container(OLD);
    let dir = tempfile::tempdir().expect("tempdir");
    // A run killed earlier left a temporary behind.
    std::fs::write(dir.path().join(".ota-tmp-Xy12ab"), b"partial").expect("leftover");
    let out = dir.path().join("new");
    let output = run_apply_to(dir.path(), &container, &out, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(&out).expect("read"), target);
    assert_eq!(
        mode(&out),
        0o644,
        "a new output is 0644, not tempfile's 0600"
    );
    assert_eq!(
        files_in(dir.path()),
        vec!["delta", "new", "old"],
        "the leftover temporary is removed"
    );
}

#[test]
fn cli_writes_through_a_symlink_keeps_it_and_the_files_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (container, target) = bsdiff_container(OLD);
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("mkdir");
    let file = images.join("slot_b.img");
    std::fs::write(&file, b"previous image").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = dir.path().join("slot_b");
    std::os::unix::fs::symlink("images/slot_b.img", &link).expect("symlink");

    let output = run_apply_to(dir.path(), &container, &link, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_link(&link).expect("--out must stay a symlink"),
        Path::new("images/slot_b.img")
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        target,
        "the file it names is written"
    );
    assert_eq!(mode(&file), 0o640, "an existing output keeps its mode");
    assert_eq!(files_in(&images), vec!["slot_b.img"]);
}

#[test]
fn cli_writes_a_device_in_place_through_a_symlink() {
    let (container, target) = bsdiff_container(OLD);
    let dir = tempfile::tempdir().expect("tempdir");
    // A character device stands in for a partition (see `null_device`).
    let device = crate::install::null_device(dir.path());
    let link = dir.path().join("by-partlabel-slot_b");
    std::os::unix::fs::symlink(&device, &link).expect("symlink");
    let sha = hex::encode(Sha256::digest(&target));
    let len = target.len().to_string();
    let output = run_apply_to(
        dir.path(),
        &container,
        &link,
        &["--expect-length", &len, "--expect-sha256", &sha],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("in place"));
    assert_eq!(std::fs::read_link(&link).expect("still a symlink"), device);
    assert!(
        std::fs::metadata(&device)
            .expect("stat")
            .file_type()
            .is_char_device(),
        "the device node was not replaced"
    );
    let mut expected_files = vec!["by-partlabel-slot_b", "delta", "old"];
    if device.starts_with(dir.path()) {
        expected_files.insert(2, "null-device");
    }
    assert_eq!(
        files_in(dir.path()),
        expected_files,
        "no temporary file remains"
    );
}

use std::os::unix::fs::FileTypeExt;

/// The hostile delta: a few KB that decompress to far more than the signed
/// target. With the signed length given, nothing is written at all.
#[test]
fn cli_refuses_a_delta_larger_than_the_signed_target_before_writing() {
    let huge = 64u64 << 20;
    let header = ContainerHeader {
        algorithm: Algorithm::FullZstd,
        source_len: 0,
        target_len: huge,
        digests: Some(ImageDigests {
            source: [0; 32],
            target: [7; 32],
        }),
    };
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).expect("zstd");
    std::io::copy(&mut std::io::repeat(0).take(huge), &mut encoder).expect("compress");
    let container = [&header.encode()[..], &encoder.finish().expect("zstd")].concat();
    assert!(container.len() < 16 << 10, "the hostile delta is small");

    let signed = b"the signed image";
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("new");
    let output = run_apply_to(
        dir.path(),
        &container,
        &out,
        &[
            "--expect-length",
            &signed.len().to_string(),
            "--expect-sha256",
            &hex::encode(Sha256::digest(signed)),
        ],
    );
    assert!(
        !output.status.success(),
        "an oversized delta must be refused"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("signed target"),
        "stderr names the cause: {stderr}"
    );
    assert_eq!(
        files_in(dir.path()),
        vec!["delta", "old"],
        "nothing was written"
    );
}

/// The header agrees with the signed target but the stream produces more: the write
/// past the signed length is refused.
#[test]
fn cli_stops_an_overlong_stream_at_the_signed_length() {
    let target = b"sixteen bytes!!!".to_vec();
    let header = ContainerHeader {
        algorithm: Algorithm::FullZstd,
        source_len: 0,
        target_len: target.len() as u64,
        digests: Some(ImageDigests {
            source: [0; 32],
            target: Sha256::digest(&target).into(),
        }),
    };
    let longer = [&target[..], &[0u8; 1 << 20]].concat();
    let container = [
        &header.encode()[..],
        &zstd::stream::encode_all(&longer[..], 3).expect("zstd"),
    ]
    .concat();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("new");
    let output = run_apply_to(
        dir.path(),
        &container,
        &out,
        &[
            "--expect-length",
            &target.len().to_string(),
            "--expect-sha256",
            &hex::encode(Sha256::digest(&target)),
        ],
    );
    assert!(
        !output.status.success(),
        "an overlong stream must be refused"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("past"),
        "stderr names the overrun: {stderr}"
    );
    assert_eq!(files_in(dir.path()), vec!["delta", "old"]);
}

/// The device path with a detached-digests container (format version 2): without the
/// signed digests it is refused before anything is written and the error names the flags;
/// with another signed base it is refused as a wrong base; with the signed base it is
/// written in place.
#[test]
fn cli_writes_a_detached_digests_container_to_a_device_only_with_the_signed_digests() {
    let (container, target) = bsdiff_container(OLD);
    let detached = detached_digests(&container);
    let dir = tempfile::tempdir().expect("tempdir");
    let device = crate::install::null_device(dir.path());
    let hex = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let len = target.len().to_string();
    let target_sha = hex(&target);

    let output = run_apply_to(dir.path(), &detached, &device, &[]);
    assert!(!output.status.success(), "no digests: refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--expect-length") && stderr.contains("--source-sha256"),
        "the error names the missing flags: {stderr}"
    );

    let other_base = hex(b"another base");
    let output = run_apply_to(
        dir.path(),
        &detached,
        &device,
        &[
            "--source-sha256",
            &other_base,
            "--expect-length",
            &len,
            "--expect-sha256",
            &target_sha,
        ],
    );
    assert!(!output.status.success(), "another signed base: refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong base"), "{stderr}");

    let base = hex(OLD);
    let output = run_apply_to(
        dir.path(),
        &detached,
        &device,
        &[
            "--source-sha256",
            &base,
            "--expect-length",
            &len,
            "--expect-sha256",
            &target_sha,
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("in place") && stdout.contains(&target_sha),
        "{stdout}"
    );
}
