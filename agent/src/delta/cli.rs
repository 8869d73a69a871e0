//! `ota-agent delta ...` subcommands.

use super::apply::apply_delta;
use anyhow::Context;
use clap::Subcommand;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Apply a delta to an old image, writing the new image.
    Apply {
        #[arg(long)]
        old: std::path::PathBuf,
        #[arg(long)]
        delta: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(cmd: DeltaCommand) -> anyhow::Result<()> {
    match cmd {
        DeltaCommand::Apply { old, delta, out } => {
            let old_file = File::open(&old)
                .with_context(|| format!("opening the old image {}", old.display()))?;
            let delta_file = File::open(&delta)
                .with_context(|| format!("opening the delta {}", delta.display()))?;
            // The target goes to a temporary file next to `out` and is renamed only
            // after the whole target verified, so `out` never holds a partial or
            // unverified image.
            let dir = match out.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            let temp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            let mut writer = BufWriter::with_capacity(256 << 10, temp.as_file());
            let report = apply_delta(
                BufReader::with_capacity(256 << 10, delta_file),
                old_file,
                &mut writer,
            )
            .with_context(|| format!("applying {} to {}", delta.display(), old.display()))?;
            writer.flush().context("writing the new image")?;
            drop(writer);
            temp.as_file().sync_all().context("syncing the new image")?;
            temp.persist(&out)
                .with_context(|| format!("renaming the new image to {}", out.display()))?;
            println!(
                "{}: wrote {} ({})",
                report.algorithm.name(),
                out.display(),
                report.target
            );
            Ok(())
        }
    }
}
