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
    /// The vehicle HSM's trust anchor: provisioning and inspection.
    #[command(subcommand)]
    Hsm(ota_agent::hsm_cli::HsmCommand),
    /// Provision a vehicle: device key in the token, root anchor, trust store, config.
    Provision(Box<ota_agent::cli::provision::ProvisionArgs>),
    /// Run the agent on a vehicle: check in, download, install, report.
    Run(ota_agent::cli::run::RunArgs),
    /// Run a simulated fleet of agents against a server (demos, load tests).
    Simulate(Box<ota_agent::simulate::SimulateArgs>),
    /// Delta images: apply a delta to an old image.
    #[command(subcommand)]
    Delta(ota_agent::delta::cli::DeltaCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::VerifyMetadata(args) => ota_agent::verify_cli::run(args),
        Command::Hsm(cmd) => report(ota_agent::hsm_cli::run(cmd)),
        Command::Provision(args) => report(ota_agent::cli::provision::run(*args)),
        Command::Run(args) => report(ota_agent::cli::run::cli(args)),
        Command::Simulate(args) => report(ota_agent::simulate::cli(*args)),
        Command::Delta(cmd) => report(ota_agent::delta::cli::run(cmd)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
