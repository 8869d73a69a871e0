//! `ota-server delta ...` subcommands.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Build a delta from an old and a new full image.
    Build {
        #[arg(long)]
        old: std::path::PathBuf,
        #[arg(long)]
        new: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(cmd: DeltaCommand) -> anyhow::Result<()> {
    match cmd {
        DeltaCommand::Build { .. } => anyhow::bail!("delta build is not implemented yet"),
    }
}
