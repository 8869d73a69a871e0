//! Installing an image into a slot: a full image or a delta, streamed into the slot's
//! file or block device *in place*.
//!
//! A slot on a real board is a block device, often reached through a
//! `/dev/disk/by-partlabel/...` symlink. It is opened for writing as it is — never
//! truncated, never replaced by renaming a temporary file over its path — written,
//! flushed and fsynced. A regular file standing in for a slot is cut to the image length
//! afterwards so it holds exactly the image.
//!
//! What is written is bounded by the *signed* targets entry ([`Expected`]), not by
//! anything the stream says about itself: the [`BoundedWriter`] refuses the first byte
//! past `expected.length` before writing it, and an install succeeds only when exactly
//! `expected.length` bytes with SHA-256 `expected.sha256` were written. A delta's header
//! must name the same target before any byte is written, and its base is checked
//! against the source slot by [`apply_delta_known`] before any byte is written. A delta
//! whose header carries no digests (format version 2) is checked against the signed
//! ones alone: the target's, and the base's from the delta entry (`source_sha256`).
//!
//! Memory is bounded: 256 KiB IO buffers, plus the delta applier's per-segment buffers.

use crate::delta::apply::{apply_delta_known, ApplyError};
use ota_core::delta::{
    Algorithm, ContainerHeader, DeltaError, KnownDigests, HEADER_LEN, HEADER_PREFIX_LEN,
};
use ota_core::encoding::Sha256Digest;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const IO_BUFFER: usize = 256 << 10;

/// The signed targets entry the slot must end up holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub length: u64,
    pub sha256: Sha256Digest,
}

/// How the image got into the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallMethod {
    /// A full image copied as it is.
    FullImage,
    /// A delta container applied (its algorithm: a real delta or a compressed full image).
    Delta(Algorithm),
}

/// A successful install: the slot holds exactly `length` bytes with digest `sha256`
/// (equal to the [`Expected`] entry), flushed to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub method: InstallMethod,
    /// The slot's resolved path (symlinks followed): the file or device written.
    pub slot: PathBuf,
    pub length: u64,
    pub sha256: Sha256Digest,
}

/// Why an install failed. After a failure the slot may hold a partial image and must not
/// be booted; it is the inactive slot, so nothing boots it unless a try is armed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("resolving the slot path {path}")]
    ResolveSlot { path: PathBuf, source: io::Error },
    #[error("opening the slot {path} for writing")]
    OpenSlot { path: PathBuf, source: io::Error },
    #[error("opening the source slot {path}")]
    OpenSource { path: PathBuf, source: io::Error },
    #[error("refusing to install into {slot}: it is the delta's source slot ({source_slot})")]
    SlotIsSource { slot: PathBuf, source_slot: PathBuf },
    #[error("the slot {path} holds {capacity} bytes, the image needs {needed}")]
    SlotTooSmall {
        path: PathBuf,
        capacity: u64,
        needed: u64,
    },
    #[error("reading the image stream")]
    ReadImage(#[source] io::Error),
    #[error("reading the delta header")]
    ReadDeltaHeader(#[source] io::Error),
    #[error("the delta stream ends inside its header")]
    TruncatedDeltaHeader,
    #[error("delta header refused")]
    DeltaHeader(#[source] DeltaError),
    #[error(
        "the delta builds {declared_length} bytes with sha256 {declared_sha256}, the signed target is {expected_length} bytes with sha256 {expected_sha256}"
    )]
    DeltaTargetMismatch {
        declared_length: u64,
        declared_sha256: Sha256Digest,
        expected_length: u64,
        expected_sha256: Sha256Digest,
    },
    #[error(
        "the delta builds {declared_length} bytes, the signed target is {expected_length} bytes"
    )]
    DeltaLengthMismatch {
        declared_length: u64,
        expected_length: u64,
    },
    #[error("applying the delta")]
    Apply(#[source] ApplyError),
    #[error("the image continues past its signed length of {limit} bytes; stopped before writing byte {limit}")]
    Overrun { limit: u64 },
    #[error("writing the slot {path}")]
    WriteSlot { path: PathBuf, source: io::Error },
    #[error("syncing the slot {path}")]
    SyncSlot { path: PathBuf, source: io::Error },
    #[error("the image is {actual} bytes, the signed length is {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("the image has sha256 {actual}, the signed digest is {expected}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("reading the slot {path}")]
    ReadSlot { path: PathBuf, source: io::Error },
    #[error("the slot {path} holds {available} bytes, fewer than the {wanted} asked for")]
    SlotShorter {
        path: PathBuf,
        wanted: u64,
        available: u64,
    },
}

/// A writer that counts and hashes what it writes and refuses the first byte past
/// `limit` before writing it (the error is [`io::ErrorKind::FileTooLarge`] and
/// [`BoundedWriter::overran`] turns true).
#[derive(Debug)]
pub struct BoundedWriter<W: Write> {
    inner: W,
    limit: u64,
    written: u64,
    hasher: Sha256,
    overran: bool,
}

impl<W: Write> BoundedWriter<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        BoundedWriter {
            inner,
            limit,
            written: 0,
            hasher: Sha256::new(),
            overran: false,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether a write past the limit was refused.
    pub fn overran(&self) -> bool {
        self.overran
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Checks that exactly `expected.length` bytes with `expected.sha256` were written.
    pub fn check(&self, expected: &Expected) -> Result<(), InstallError> {
        if self.overran {
            return Err(InstallError::Overrun { limit: self.limit });
        }
        if self.written != expected.length {
            return Err(InstallError::LengthMismatch {
                expected: expected.length,
                actual: self.written,
            });
        }
        let actual = Sha256Digest(self.hasher.clone().finalize().into());
        if actual != expected.sha256 {
            return Err(InstallError::DigestMismatch {
                expected: expected.sha256,
                actual,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for BoundedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.limit - self.written;
        if room == 0 {
            self.overran = true;
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "refusing to write past the signed length of {} bytes",
                    self.limit
                ),
            ));
        }
        let want = (buf.len() as u64).min(room) as usize;
        let n = self.inner.write(&buf[..want])?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies a full image (a `Read` of exactly expected.length bytes) into `slot`.
pub fn install_full(
    mut image: impl Read,
    slot: &Path,
    expected: &Expected,
) -> Result<InstallReport, InstallError> {
    let target = SlotTarget::open(slot, expected.length)?;
    let mut out = BoundedWriter::new(
        BufWriter::with_capacity(IO_BUFFER, &target.file),
        expected.length,
    );
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = match image.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(InstallError::ReadImage(err)),
        };
        if let Err(source) = out.write_all(&buf[..n]) {
            return Err(target.write_error(&out, source));
        }
    }
    target.finish(out, expected, InstallMethod::FullImage)
}

/// Applies a delta container read from `delta` to the source slot `source` (read-only)
/// and writes the target into `slot`. `base` is the SHA-256 the signed metadata names
/// for the source (the delta entry's `source_sha256`): it must match a digest the header
/// carries, and it is required when the header carries none.
pub fn install_delta(
    delta: impl Read,
    source: &Path,
    slot: &Path,
    expected: &Expected,
    base: Option<&Sha256Digest>,
) -> Result<InstallReport, InstallError> {
    // Refuse a container for another target, or one whose embedded base is not the
    // signed one, or with detached digests and no signed base, before the slot is even
    // opened; the source slot itself is checked against the base before any write.
    let (header, delta) = read_header(delta)?;
    check_header(&header, expected)?;
    let known = known_digests(Some(expected), base);
    header.digests(&known).map_err(InstallError::DeltaHeader)?;
    let old = File::open(source).map_err(|err| InstallError::OpenSource {
        path: source.to_owned(),
        source: err,
    })?;
    let target = SlotTarget::open(slot, expected.length)?;
    if same_file(&old, &target.file) {
        return Err(InstallError::SlotIsSource {
            slot: target.path.clone(),
            source_slot: source.to_owned(),
        });
    }
    let mut out = BoundedWriter::new(
        BufWriter::with_capacity(IO_BUFFER, &target.file),
        expected.length,
    );
    let applied = apply_delta_known(delta, old, &mut out, &known);
    let report = match applied {
        Ok(report) => report,
        Err(ApplyError::WriteTarget(source)) => return Err(target.write_error(&out, source)),
        Err(err) => return Err(InstallError::Apply(err)),
    };
    target.finish(out, expected, InstallMethod::Delta(report.algorithm))
}

/// Applies a delta to any writer, bounded by `expected` (or, without it, by the header's
/// own target, which a header with detached digests does not have). Used by `ota-agent
/// delta apply` for its temporary file; the header is checked against `expected` and
/// `base` (as in [`install_delta`]) before any byte is written.
pub fn apply_delta_bounded<W: Write>(
    delta: impl Read,
    source: impl Read + io::Seek,
    out: W,
    expected: Option<&Expected>,
    base: Option<&Sha256Digest>,
) -> Result<(InstallMethod, Expected, BoundedWriter<W>), InstallError> {
    let (header, delta) = read_header(delta)?;
    if let Some(expected) = expected {
        check_header(&header, expected)?;
    }
    let known = known_digests(expected, base);
    let digests = header.digests(&known).map_err(InstallError::DeltaHeader)?;
    let expected = Expected {
        length: header.target_len,
        sha256: Sha256Digest(digests.target),
    };
    let mut out = BoundedWriter::new(out, expected.length);
    let report = match apply_delta_known(delta, source, &mut out, &known) {
        Ok(report) => report,
        Err(ApplyError::WriteTarget(_)) if out.overran() => {
            return Err(InstallError::Overrun { limit: out.limit() })
        }
        Err(err) => return Err(InstallError::Apply(err)),
    };
    // `apply_delta_known` flushed `out` before it returned.
    out.check(&expected)?;
    Ok((InstallMethod::Delta(report.algorithm), expected, out))
}

/// Re-reads `len` bytes of `slot` and returns their SHA-256 (used after a crash to know
/// what a slot holds).
pub fn slot_digest(slot: &Path, len: u64) -> Result<Sha256Digest, InstallError> {
    let read_error = |source| InstallError::ReadSlot {
        path: slot.to_owned(),
        source,
    };
    let file = File::open(slot).map_err(read_error)?;
    let mut reader = BufReader::with_capacity(IO_BUFFER, file).take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUFFER];
    let mut read = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(read_error(err)),
        };
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read != len {
        return Err(InstallError::SlotShorter {
            path: slot.to_owned(),
            wanted: len,
            available: read,
        });
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// What kind of thing a slot path is, after following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A regular file (or a path that does not exist yet and will be one).
    File,
    BlockDevice,
    CharDevice,
}

/// Follows symlinks from `path` to what it names. A path that does not exist at all is a
/// new regular file; a dangling symlink is an error (it names a device that is missing,
/// and creating a file in its place would hide that).
pub fn resolve_slot(path: &Path) -> Result<(PathBuf, SlotKind), InstallError> {
    let resolve_error = |source| InstallError::ResolveSlot {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok((path.to_owned(), SlotKind::File))
        }
        Err(err) => return Err(resolve_error(err)),
        Ok(_) => {}
    }
    let resolved = std::fs::canonicalize(path).map_err(resolve_error)?;
    let file_type = std::fs::metadata(&resolved)
        .map_err(resolve_error)?
        .file_type();
    let kind = if file_type.is_block_device() {
        SlotKind::BlockDevice
    } else if file_type.is_char_device() {
        SlotKind::CharDevice
    } else if file_type.is_file() {
        SlotKind::File
    } else {
        return Err(resolve_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or a device",
        )));
    };
    Ok((resolved, kind))
}

/// The slot, opened in place.
#[derive(Debug)]
struct SlotTarget {
    path: PathBuf,
    kind: SlotKind,
    file: File,
}

impl SlotTarget {
    fn open(slot: &Path, length: u64) -> Result<SlotTarget, InstallError> {
        let (path, kind) = resolve_slot(slot)?;
        let open_error = |source| InstallError::OpenSlot {
            path: path.clone(),
            source,
        };
        // `create` only matters for a regular file that does not exist yet; without
        // `truncate` an existing file or device keeps its bytes until they are written.
        let file = OpenOptions::new()
            .write(true)
            .create(kind == SlotKind::File)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        if kind == SlotKind::BlockDevice {
            use std::io::Seek;
            let capacity = (&file)
                .seek(io::SeekFrom::End(0))
                .and_then(|end| (&file).seek(io::SeekFrom::Start(0)).map(|_| end))
                .map_err(open_error)?;
            if capacity < length {
                return Err(InstallError::SlotTooSmall {
                    path,
                    capacity,
                    needed: length,
                });
            }
        }
        Ok(SlotTarget { path, kind, file })
    }

    /// A failed write: the bound refusing a byte, or the device failing.
    fn write_error<W: Write>(&self, out: &BoundedWriter<W>, source: io::Error) -> InstallError {
        if out.overran() {
            InstallError::Overrun { limit: out.limit() }
        } else {
            InstallError::WriteSlot {
                path: self.path.clone(),
                source,
            }
        }
    }

    /// Flush, check length and digest, cut a regular file to length, fsync.
    fn finish<W: Write>(
        &self,
        mut out: BoundedWriter<W>,
        expected: &Expected,
        method: InstallMethod,
    ) -> Result<InstallReport, InstallError> {
        out.flush().map_err(|source| InstallError::WriteSlot {
            path: self.path.clone(),
            source,
        })?;
        out.check(expected)?;
        drop(out);
        if self.kind == SlotKind::File {
            self.file
                .set_len(expected.length)
                .map_err(|source| InstallError::WriteSlot {
                    path: self.path.clone(),
                    source,
                })?;
        }
        match self.file.sync_all() {
            Ok(()) => {}
            // Character devices (MTD, /dev/null) may have nothing to sync: EINVAL.
            Err(err)
                if self.kind == SlotKind::CharDevice
                    && err.kind() == io::ErrorKind::InvalidInput => {}
            Err(source) => {
                return Err(InstallError::SyncSlot {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        Ok(InstallReport {
            method,
            slot: self.path.clone(),
            length: expected.length,
            sha256: expected.sha256,
        })
    }
}

fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => {
            let device = |m: &std::fs::Metadata| {
                let t = m.file_type();
                (t.is_block_device() || t.is_char_device()).then(|| m.rdev())
            };
            match (device(&a), device(&b)) {
                (Some(x), Some(y)) => x == y,
                _ => a.dev() == b.dev() && a.ino() == b.ino(),
            }
        }
        _ => false,
    }
}

/// Reads and parses the container header (either format version), and gives back a
/// reader that yields the whole container again (header included) for
/// [`apply_delta_known`].
pub fn read_header<R: Read>(mut delta: R) -> Result<(ContainerHeader, impl Read), InstallError> {
    let mut bytes = [0u8; HEADER_LEN];
    let mut read = |buf: &mut [u8]| {
        delta.read_exact(buf).map_err(|err| match err.kind() {
            io::ErrorKind::UnexpectedEof => InstallError::TruncatedDeltaHeader,
            _ => InstallError::ReadDeltaHeader(err),
        })
    };
    read(&mut bytes[..HEADER_PREFIX_LEN])?;
    let len = ContainerHeader::encoded_len_of(&bytes).map_err(InstallError::DeltaHeader)?;
    read(&mut bytes[HEADER_PREFIX_LEN..len])?;
    let header = ContainerHeader::parse(&bytes[..len]).map_err(InstallError::DeltaHeader)?;
    let whole = io::Cursor::new(bytes)
        .take(len as u64)
        .chain(BufReader::with_capacity(IO_BUFFER, delta));
    Ok((header, whole))
}

/// What the signed metadata says about the images a delta turns one into the other.
fn known_digests(expected: Option<&Expected>, base: Option<&Sha256Digest>) -> KnownDigests {
    KnownDigests {
        source: base.map(|digest| digest.0),
        target: expected.map(|expected| expected.sha256.0),
    }
}

/// The header must build the signed target: its length, and its digest when it carries
/// one.
fn check_header(header: &ContainerHeader, expected: &Expected) -> Result<(), InstallError> {
    match header.digests {
        Some(digests)
            if header.target_len != expected.length || digests.target != expected.sha256.0 =>
        {
            Err(InstallError::DeltaTargetMismatch {
                declared_length: header.target_len,
                declared_sha256: Sha256Digest(digests.target),
                expected_length: expected.length,
                expected_sha256: expected.sha256,
            })
        }
        None if header.target_len != expected.length => Err(InstallError::DeltaLengthMismatch {
            declared_length: header.target_len,
            expected_length: expected.length,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> Expected {
        Expected {
            length: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
        }
    }

    #[test]
    fn bounded_writer_refuses_the_first_byte_past_the_limit() {
        let mut out = BoundedWriter::new(Vec::new(), 5);
        out.write_all(b"abc").unwrap();
        let err = out.write_all(b"defg").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert!(out.overran());
        assert_eq!(out.get_ref(), b"abcde", "exactly the limit, never more");
        assert!(matches!(
            out.check(&expected(b"abcde")),
            Err(InstallError::Overrun { limit: 5 })
        ));
    }

    #[test]
    fn bounded_writer_checks_length_and_digest() {
        let mut out = BoundedWriter::new(Vec::new(), 10);
        out.write_all(b"abcd").unwrap();
        assert!(matches!(
            out.check(&Expected {
                length: 10,
                ..expected(b"abcd")
            }),
            Err(InstallError::LengthMismatch {
                expected: 10,
                actual: 4
            })
        ));
        assert!(matches!(
            out.check(&Expected {
                length: 4,
                sha256: Sha256Digest::of(b"abce")
            }),
            Err(InstallError::DigestMismatch { .. })
        ));
        out.check(&expected(b"abcd")).unwrap();
    }

    #[test]
    fn a_full_install_writes_a_shorter_image_over_a_longer_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot_b");
        std::fs::write(&slot, vec![0xAA; 4096]).unwrap();
        let inode = std::fs::metadata(&slot).unwrap().ino();
        let image = b"new image bytes".repeat(100);
        let report = install_full(&image[..], &slot, &expected(&image)).unwrap();
        assert_eq!(report.method, InstallMethod::FullImage);
        assert_eq!(std::fs::read(&slot).unwrap(), image);
        assert_eq!(
            std::fs::metadata(&slot).unwrap().ino(),
            inode,
            "same file, written in place"
        );
        assert_eq!(
            slot_digest(&slot, image.len() as u64).unwrap(),
            Sha256Digest::of(&image)
        );
        assert!(matches!(
            slot_digest(&slot, image.len() as u64 + 1),
            Err(InstallError::SlotShorter { .. })
        ));
    }

    #[test]
    fn a_short_or_wrong_full_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("slot");
        let image = b"0123456789";
        assert!(matches!(
            install_full(&image[..9], &slot, &expected(image)),
            Err(InstallError::LengthMismatch {
                expected: 10,
                actual: 9
            })
        ));
        assert!(matches!(
            install_full(&b"0123456780"[..], &slot, &expected(image)),
            Err(InstallError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn a_dangling_symlink_is_not_replaced_by_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("by-partlabel-slot_b");
        std::os::unix::fs::symlink(dir.path().join("missing-device"), &link).unwrap();
        assert!(matches!(
            install_full(&b"x"[..], &link, &expected(b"x")),
            Err(InstallError::ResolveSlot { .. })
        ));
        assert!(!dir.path().join("missing-device").exists());
    }
}
