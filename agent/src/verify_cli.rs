//! `ota-agent verify-metadata`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyMetadataArgs {
    #[arg(long)]
    pub trust: std::path::PathBuf,
}

pub fn run(_args: VerifyMetadataArgs) -> ExitCode {
    ExitCode::FAILURE
}
