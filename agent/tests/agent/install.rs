//! Installing into a slot (`ota_agent::install`): full images and deltas written in
//! place, bounded by the signed target.

use crate::delta::{bsdiff_container, full_container, OLD};
use ota_agent::install::{
    install_delta, install_full, slot_digest, Expected, InstallError, InstallMethod,
};
use ota_core::delta::{ContainerHeader, DeltaError};
use ota_core::encoding::Sha256Digest;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn expected(bytes: &[u8]) -> Expected {
    Expected {
        length: bytes.len() as u64,
        sha256: Sha256Digest::of(bytes),
    }
}

/// A firmware-like image of `len` bytes (not trivially compressible).
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// A slot file behind a symlink, as `/dev/disk/by-partlabel/slot_b` points at a device.
struct LinkedSlot {
    dir: tempfile::TempDir,
}

impl LinkedSlot {
    fn new(initial: &[u8]) -> LinkedSlot {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("dev")).expect("mkdir");
        std::fs::write(dir.path().join("dev/sdb2"), initial).expect("slot");
        std::os::unix::fs::symlink("dev/sdb2", dir.path().join("slot_b")).expect("link");
        std::fs::write(dir.path().join("slot_a"), OLD).expect("source slot");
        LinkedSlot { dir }
    }
    fn link(&self) -> std::path::PathBuf {
        self.dir.path().join("slot_b")
    }
    fn target(&self) -> std::path::PathBuf {
        self.dir.path().join("dev/sdb2")
    }
    fn source(&self) -> std::path::PathBuf {
        self.dir.path().join("slot_a")
    }
    fn inode(&self) -> u64 {
        std::fs::metadata(self.target()).expect("stat").ino()
    }
    fn assert_still_linked(&self, inode: u64) {
        assert!(
            std::fs::symlink_metadata(self.link())
                .expect("lstat")
                .file_type()
                .is_symlink(),
            "the slot path must stay a symlink"
        );
        assert_eq!(
            self.inode(),
            inode,
            "the slot must be written in place, not replaced"
        );
    }
}

#[test]
fn a_full_image_is_written_in_place_through_a_symlink() {
    let slot = LinkedSlot::new(&vec![0xEE; 3 << 20]);
    let inode = slot.inode();
    let new = image(2 << 20, 1);
    let report = install_full(&new[..], &slot.link(), &expected(&new)).expect("install");
    assert_eq!(report.method, InstallMethod::FullImage);
    assert_eq!(
        report.slot,
        slot.target().canonicalize().expect("canonical")
    );
    assert_eq!(
        std::fs::read(slot.target()).expect("read"),
        new,
        "byte-identical"
    );
    slot.assert_still_linked(inode);
    assert_eq!(
        slot_digest(&slot.link(), new.len() as u64).expect("digest"),
        Sha256Digest::of(&new)
    );
}

#[test]
fn a_delta_and_a_compressed_full_image_install_byte_identical() {
    let (bsdiff, bsdiff_target) = bsdiff_container(OLD);
    let big = image(1 << 20, 2);
    for (name, container, target, algorithm) in [
        ("bsdiff-zstd", bsdiff, bsdiff_target, "bsdiff-zstd"),
        ("full-zstd", full_container(&big), big.clone(), "full-zstd"),
    ] {
        let slot = LinkedSlot::new(b"previous contents of slot b, longer than the new image?");
        let inode = slot.inode();
        let report = install_delta(
            &container[..],
            &slot.source(),
            &slot.link(),
            &expected(&target),
            None,
        )
        .unwrap_or_else(|err| panic!("{name}: {err:?}"));
        assert!(
            matches!(report.method, InstallMethod::Delta(a) if a.name() == algorithm),
            "{name}"
        );
        assert_eq!(
            std::fs::read(slot.target()).expect("read"),
            target,
            "{name}"
        );
        assert_eq!(
            std::fs::read(slot.source()).expect("read"),
            OLD,
            "{name}: source untouched"
        );
        slot.assert_still_linked(inode);
    }
}

#[test]
fn a_wrong_base_leaves_the_slot_byte_for_byte_unchanged() {
    let (container, target) = bsdiff_container(OLD);
    let before = image(64 << 10, 3);
    let slot = LinkedSlot::new(&before);
    std::fs::write(
        slot.source(),
        b"The quick brown fox jumps over the lazy cat. 0123456789",
    )
    .expect("other base");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&target),
        None,
    )
    .expect_err("a wrong base must be refused");
    assert!(
        matches!(
            err,
            InstallError::Apply(ota_agent::delta::ApplyError::WrongBase { .. })
        ),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
}

#[test]
fn a_delta_for_another_target_is_refused_before_any_write() {
    let (container, _) = bsdiff_container(OLD);
    let before = b"slot b before".to_vec();
    let slot = LinkedSlot::new(&before);
    let signed = b"the image the targets metadata signed";
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(signed),
        None,
    )
    .expect_err("header and signed target differ");
    assert!(
        matches!(err, InstallError::DeltaTargetMismatch { .. }),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
}

/// The container with its header's digests detached (format version 2).
fn detached(container: &[u8]) -> Vec<u8> {
    let mut header = ContainerHeader::parse(container).expect("parses");
    let body = &container[header.encoded_len()..];
    header.digests = None;
    [&header.encode()[..], body].concat()
}

#[test]
fn a_delta_with_detached_digests_installs_against_the_signed_base_and_target() {
    let (container, target) = bsdiff_container(OLD);
    let container = detached(&container);
    let base = Sha256Digest::of(OLD);
    let before = b"slot b before".to_vec();
    // Without the signed base there is nothing to check the source slot against:
    // refused before the slot is opened.
    let slot = LinkedSlot::new(&before);
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&target),
        None,
    )
    .expect_err("no base digest");
    assert!(
        matches!(
            err,
            InstallError::DeltaHeader(DeltaError::DigestNotKnown { image: "source" })
        ),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
    // A signed base the source slot does not hold: refused before writing.
    let other = Sha256Digest::of(b"another base");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&target),
        Some(&other),
    )
    .expect_err("wrong base");
    assert!(
        matches!(
            err,
            InstallError::Apply(ota_agent::delta::ApplyError::WrongBase { .. })
        ),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
    // A signed target of another length: refused before the slot is opened.
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(b"a longer image than the delta builds"),
        Some(&base),
    )
    .expect_err("other target");
    assert!(
        matches!(err, InstallError::DeltaLengthMismatch { .. }),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
    // The signed base and target: installed.
    let report = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&target),
        Some(&base),
    )
    .expect("install");
    assert_eq!(report.sha256, Sha256Digest::of(&target));
    assert_eq!(std::fs::read(slot.target()).expect("read"), target);
}

#[test]
fn a_self_describing_delta_for_another_signed_base_is_refused_before_any_write() {
    let (container, target) = bsdiff_container(OLD);
    let before = b"slot b before".to_vec();
    let slot = LinkedSlot::new(&before);
    let other = Sha256Digest::of(b"the base the delta entry signed");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&target),
        Some(&other),
    )
    .expect_err("header and signed base differ");
    assert!(
        matches!(
            err,
            InstallError::DeltaHeader(DeltaError::DigestMismatch {
                image: "source",
                ..
            })
        ),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.target()).expect("read"), before);
}

#[test]
fn a_hostile_endless_image_stream_stops_at_the_signed_length() {
    let slot = LinkedSlot::new(b"");
    let signed = image(100_000, 4);
    // The server (or a man in the middle) sends the signed bytes and then keeps going
    // (bounded here only so that a broken bound fails the test instead of hanging it).
    let endless = std::io::Cursor::new(signed.clone()).chain(std::io::repeat(0x41).take(64 << 20));
    let err = install_full(endless, &slot.link(), &expected(&signed))
        .expect_err("an overlong stream must be refused");
    assert!(
        matches!(err, InstallError::Overrun { limit: 100_000 }),
        "got {err:?}"
    );
    let written = std::fs::read(slot.target()).expect("read");
    assert_eq!(
        written.len(),
        signed.len(),
        "not one byte past the signed length"
    );
    assert_eq!(written, signed);
}

#[test]
fn installing_into_the_source_slot_is_refused() {
    let (container, target) = bsdiff_container(OLD);
    let slot = LinkedSlot::new(b"");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.source(),
        &expected(&target),
        None,
    )
    .expect_err("slot is the source");
    assert!(
        matches!(err, InstallError::SlotIsSource { .. }),
        "got {err:?}"
    );
    assert_eq!(std::fs::read(slot.source()).expect("read"), OLD);
}

#[test]
fn a_character_device_slot_is_written_through_its_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = null_device(dir.path());
    let link = dir.path().join("slot_b");
    std::os::unix::fs::symlink(&device, &link).expect("symlink");
    let new = image(300_000, 5);
    install_full(&new[..], &link, &expected(&new)).expect("a device takes the image in place");
    assert_eq!(std::fs::read_link(&link).expect("still a symlink"), device);
    assert!(
        std::fs::metadata(&device)
            .expect("stat")
            .file_type()
            .is_char_device(),
        "the device node was not replaced"
    );
}

/// A character device to stand in for a partition: a null device node made in `dir`
/// where this process may create device nodes (root), so that a regression that
/// replaces the node harms only the test's directory; otherwise the system's
/// `/dev/null`, which an unprivileged process cannot replace.
pub(crate) fn null_device(dir: &Path) -> std::path::PathBuf {
    let node = dir.join("null-device");
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if made {
        node
    } else {
        std::path::PathBuf::from("/dev/null")
    }
}

/// PROTOCOL.md §9 rule 2: decoder output is capped by the signed length. A container
/// whose header claims the signed length and digest but whose body decodes to more must
/// never put a byte past that length into the slot.
#[test]
fn a_delta_body_decoding_past_the_signed_length_never_writes_beyond_it() {
    let full = image(50_000, 9);
    let signed = &full[..40_000];
    let mut container = full_container(&full);
    // Header: the signed (shorter) target; body: still the full 50,000 bytes.
    container[52..60].copy_from_slice(&(signed.len() as u64).to_le_bytes());
    container[60..92].copy_from_slice(&Sha256Digest::of(signed).0);
    let slot = LinkedSlot::new(b"");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(signed),
        None,
    )
    .expect_err("a body longer than its signed target must be refused");
    assert!(
        matches!(
            err,
            InstallError::Overrun { limit: 40_000 } | InstallError::Apply(_)
        ),
        "got {err:?}"
    );
    let written = std::fs::read(slot.target()).expect("read");
    assert!(
        written.len() <= signed.len(),
        "{} bytes written, the signed length is {}",
        written.len(),
        signed.len()
    );
}

/// PROTOCOL.md §9 rule 1: the rebuilt image must be exactly the targets entry (length
/// and SHA-256) before the slot may be switched. A delta that decodes to the signed
/// length but other bytes is refused by the install itself.
#[test]
fn a_delta_rebuilding_other_bytes_of_the_signed_length_is_refused() {
    let real = image(30_000, 10);
    let mut forged = real.clone();
    forged[29_999] ^= 1;
    let mut container = full_container(&forged);
    // The header claims the real image; the body builds the forged one.
    container[60..92].copy_from_slice(&Sha256Digest::of(&real).0);
    let slot = LinkedSlot::new(b"");
    let err = install_delta(
        &container[..],
        &slot.source(),
        &slot.link(),
        &expected(&real),
        None,
    )
    .expect_err("other bytes than the signed image must be refused");
    // The decoder checks the bytes it built against the header; the install checks what
    // reached the slot against the signed target: either refuses, never the switch.
    assert!(
        matches!(
            err,
            InstallError::DigestMismatch { .. }
                | InstallError::Apply(ota_agent::delta::ApplyError::TargetMismatch { .. })
        ),
        "got {err:?}"
    );
}
