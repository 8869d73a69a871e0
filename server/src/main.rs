//! `ota-server`: thin entry point over the `ota_server` library.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the vehicle channel allocates and frees many
/// small buffers per message, and glibc's malloc took about a fifth of the server's CPU
/// under load (docs/fleet-bench.md, session 15).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "ota-server", version, about = "OTA orchestration server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key management: create, rotate, show and sign with the metadata keys.
    #[command(subcommand)]
    Keys(ota_server::keys::cli::KeysCommand),
    /// Delta images: build a delta from two full images.
    #[command(subcommand)]
    Delta(ota_server::delta::cli::DeltaCommand),
    /// Run the server (web API, vehicle channel, rollout engine, delta workers).
    Serve(ota_server::cli::ServeArgs),
    /// API bearer tokens.
    #[command(subcommand)]
    Tokens(ota_server::cli::TokensCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(cmd) => ota_server::keys::cli::run(cmd),
        Command::Delta(cmd) => ota_server::delta::cli::run(cmd),
        Command::Serve(args) => ota_server::cli::serve(args),
        Command::Tokens(cmd) => ota_server::cli::tokens(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
