//! `ota-agent delta ...` subcommands.

use clap::Subcommand;

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
        DeltaCommand::Apply { .. } => anyhow::bail!("delta apply is not implemented yet"),
    }
}
