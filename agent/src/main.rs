//! `ota-agent`: thin entry point over the `ota_agent` library.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "ota-agent", version, about = "On-vehicle OTA agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify signed metadata offline, exactly as the agent does at run time.
    VerifyMetadata(ota_agent::verify_cli::VerifyMetadataArgs),
    /// Delta images: apply a delta to an old image.
    #[command(subcommand)]
    Delta(ota_agent::delta::cli::DeltaCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::VerifyMetadata(args) => ota_agent::verify_cli::run(args),
        Command::Delta(cmd) => match ota_agent::delta::cli::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
