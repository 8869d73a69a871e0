//! `ota-server keys ...` subcommands.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create root, targets and director keys and a signed root v1.
    Init {
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Init { .. } => anyhow::bail!("keys init is not implemented yet"),
    }
}
