//! `ota-agent delta ...` subcommands.

use crate::install::{self, resolve_slot, Expected, InstallMethod, SlotKind};
use anyhow::Context;
use clap::Subcommand;
use ota_core::encoding::Sha256Digest;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Prefix of the temporary files `delta apply` writes next to a regular-file output.
/// Leftovers (a killed run) are removed at the next start.
pub const TEMP_PREFIX: &str = ".ota-tmp-";

/// Mode of a new output file.
const NEW_FILE_MODE: u32 = 0o644;

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Apply a delta to an old image, writing the new image.
    ///
    /// A block or character device `--out` (or a symlink to one, such as
    /// /dev/disk/by-partlabel/...) is written in place. A regular file is written to a
    /// temporary file next to it and renamed over it once verified (through a symlink,
    /// the file it points to is replaced and the symlink kept).
    Apply {
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        delta: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Signed length of the new image (from targets): nothing past it is written.
        #[arg(long, requires = "expect_sha256")]
        expect_length: Option<u64>,
        /// Signed SHA-256 of the new image (lowercase hex); the delta must build exactly it.
        #[arg(long, requires = "expect_length", value_parser = Sha256Digest::parse)]
        expect_sha256: Option<Sha256Digest>,
        /// Signed SHA-256 of the old image the delta applies to (lowercase hex: the delta
        /// entry's source_sha256). A delta built with detached digests (format version 2,
        /// `ota-server delta build --detached-digests`) carries none of its own and needs
        /// this and --expect-length/--expect-sha256; for one that does, they must match.
        #[arg(long, value_parser = Sha256Digest::parse)]
        source_sha256: Option<Sha256Digest>,
    },
}

pub fn run(cmd: DeltaCommand) -> anyhow::Result<()> {
    match cmd {
        DeltaCommand::Apply {
            old,
            delta,
            out,
            expect_length,
            expect_sha256,
            source_sha256,
        } => {
            let expected = match (expect_length, expect_sha256) {
                (Some(length), Some(sha256)) => Some(Expected { length, sha256 }),
                _ => None,
            };
            let (resolved, kind) =
                resolve_slot(&out).with_context(|| format!("resolving --out {}", out.display()))?;
            let (method, target) = match kind {
                SlotKind::BlockDevice | SlotKind::CharDevice => {
                    apply_in_place(&old, &delta, &resolved, expected, source_sha256.as_ref())?
                }
                SlotKind::File => apply_to_file(
                    &old,
                    &delta,
                    &resolved,
                    expected.as_ref(),
                    source_sha256.as_ref(),
                )?,
            };
            let algorithm = match method {
                InstallMethod::Delta(algorithm) => algorithm.name(),
                InstallMethod::FullImage => "full",
            };
            println!(
                "{algorithm}: wrote {}{} ({} bytes, sha256 {})",
                out.display(),
                if kind == SlotKind::File {
                    ""
                } else {
                    " in place"
                },
                target.length,
                target.sha256
            );
            Ok(())
        }
    }
}

/// A device: written in place, never replaced.
fn apply_in_place(
    old: &Path,
    delta: &Path,
    device: &Path,
    expected: Option<Expected>,
    base: Option<&Sha256Digest>,
) -> anyhow::Result<(InstallMethod, Expected)> {
    let mut delta_file =
        File::open(delta).with_context(|| format!("opening the delta {}", delta.display()))?;
    let expected = match expected {
        Some(expected) => expected,
        None => header_target(&mut delta_file)
            .with_context(|| format!("reading the header of {}", delta.display()))?,
    };
    let report =
        install::install_delta(delta_file, old, device, &expected, base).with_context(|| {
            format!(
                "applying {} to {} into {}",
                delta.display(),
                old.display(),
                device.display()
            )
        })?;
    Ok((report.method, expected))
}

/// The target the container declares (when no signed target was given), leaving the
/// file at its start. A header with detached digests declares none: refused.
fn header_target(delta: &mut File) -> anyhow::Result<Expected> {
    use std::io::Seek;
    let (header, _) = install::read_header(&mut *delta)?;
    let Some(digests) = header.digests else {
        anyhow::bail!(
            "the delta's header carries no digests (detached digests, format version 2): \
             give --expect-length, --expect-sha256 and --source-sha256 from the signed metadata"
        );
    };
    delta.rewind()?;
    Ok(Expected {
        length: header.target_len,
        sha256: Sha256Digest(digests.target),
    })
}

/// A regular file: the target goes to a temporary file next to `out` and is renamed
/// only after it verified, so `out` never holds a partial or unverified image.
fn apply_to_file(
    old: &Path,
    delta: &Path,
    out: &Path,
    expected: Option<&Expected>,
    base: Option<&Sha256Digest>,
) -> anyhow::Result<(InstallMethod, Expected)> {
    let old_file =
        File::open(old).with_context(|| format!("opening the old image {}", old.display()))?;
    let delta_file =
        File::open(delta).with_context(|| format!("opening the delta {}", delta.display()))?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    remove_leftover_temporaries(dir)?;
    let mode = match std::fs::metadata(out) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(_) => NEW_FILE_MODE,
    };
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // Set explicitly: tempfile creates 0600 and a creation mode would pass the umask.
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temp.path().display()))?;
    let (method, target, writer) = install::apply_delta_bounded(
        BufReader::with_capacity(256 << 10, delta_file),
        old_file,
        BufWriter::with_capacity(256 << 10, temp.as_file()),
        expected,
        base,
    )
    .with_context(|| format!("applying {} to {}", delta.display(), old.display()))?;
    drop(writer);
    temp.as_file().sync_all().context("syncing the new image")?;
    temp.persist(out)
        .with_context(|| format!("renaming the new image to {}", out.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))?;
    Ok((method, target))
}

/// Removes `.ota-tmp-*` regular files a killed run left in `dir`.
fn remove_leftover_temporaries(dir: &Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX));
        if is_temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).with_context(|| {
                format!("removing the leftover temporary {}", entry.path().display())
            })?;
            eprintln!("removed leftover temporary {}", entry.path().display());
        }
    }
    Ok(())
}
