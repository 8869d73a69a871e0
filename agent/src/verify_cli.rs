//! `ota-agent verify-metadata`: offline verification through the run-time code path
//! ([`crate::verifier::Verifier`]). Prints the accepted assignment as JSON and exits 0,
//! or prints the typed rejection and exits 1 (2 for usage and IO errors).

use crate::hsm_cli::HsmArgs;
use crate::trust_store::NO_BINDING_WARNING;
use crate::verifier::{Persist, Verifier, VerifyError};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, VehicleIdentity, VerifiedUpdate};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyMetadataArgs {
    /// Trust store directory: `root.json` (anchor) and/or `state.json`.
    #[arg(long)]
    pub trust: PathBuf,
    /// Newer root envelopes, in increasing version order (repeatable).
    #[arg(long = "root")]
    pub roots: Vec<PathBuf>,
    /// Targets envelope.
    #[arg(long)]
    pub targets: PathBuf,
    /// Director envelope.
    #[arg(long)]
    pub director: PathBuf,
    /// Verification time, `YYYY-MM-DDTHH:MM:SSZ` (default: the system clock).
    #[arg(long, value_parser = Timestamp::parse)]
    pub now: Option<Timestamp>,
    /// This vehicle's id: the director metadata must be addressed to it. Without it the
    /// vehicle and ECU checks are skipped (a warning says so on stderr).
    #[arg(long)]
    pub vehicle_id: Option<String>,
    /// This vehicle's ECUs as NAME=HARDWARE_ID (repeatable; requires --vehicle-id).
    #[arg(long = "ecu", value_parser = parse_ecu, requires = "vehicle_id")]
    pub ecus: Vec<(String, String)>,
    /// Write the new trusted state to the trust store when accepted. Without it nothing
    /// is ever written.
    #[arg(long)]
    pub persist: bool,
    /// The vehicle HSM holding the root anchor (optional in development).
    #[command(flatten)]
    pub hsm: HsmArgs,
}

/// Printed on stderr when `--vehicle-id` is absent: the result then says nothing about
/// whether the director metadata is meant for this vehicle.
pub const NO_VEHICLE_WARNING: &str = "WARNING: no --vehicle-id: SKIPPING the vehicle \
check (PROTOCOL.md §5 steps 5-6). Director metadata addressed to ANY vehicle, with ANY ECU \
names and hardware ids, is accepted; the run-time agent always verifies with its identity.";

fn parse_ecu(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, hw)) if !name.is_empty() && !hw.is_empty() => {
            Ok((name.to_owned(), hw.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME=HARDWARE_ID")),
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn load_update(args: &VerifyMetadataArgs) -> Result<MetadataUpdate, String> {
    Ok(MetadataUpdate {
        roots: args.roots.iter().map(read).collect::<Result<_, _>>()?,
        targets: read(&args.targets)?,
        director: read(&args.director)?,
    })
}

/// The JSON printed for an accepted update.
pub fn accepted_json(verified: &VerifiedUpdate, persisted: bool) -> serde_json::Value {
    json!({
        "accepted": true,
        "vehicle_id": verified.director.vehicle_id,
        "root_version": verified.state.root().version(),
        "targets_version": verified.targets.version,
        "director_version": verified.director.version,
        "next_poll_seconds": verified.director.next_poll_seconds,
        "assignments": verified.assignments,
        "persisted": persisted,
    })
}

pub fn run(args: VerifyMetadataArgs) -> ExitCode {
    let update = match load_update(&args) {
        Ok(update) => update,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if args.vehicle_id.is_none() {
        eprintln!("{NO_VEHICLE_WARNING}");
    }
    let vehicle = args.vehicle_id.clone().map(|vehicle_id| VehicleIdentity {
        vehicle_id,
        ecus: args.ecus.iter().cloned().collect::<BTreeMap<_, _>>(),
    });
    let now = args
        .now
        .unwrap_or_else(|| Timestamp::from_datetime(chrono::Utc::now()));
    let persist = if args.persist {
        Persist::Yes
    } else {
        Persist::No
    };
    let store = match args.hsm.trust_store(&args.trust) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("error: trust anchor: {err:#}");
            return ExitCode::from(2);
        }
    };
    if args.persist && !store.is_hardware_bound() {
        eprintln!("{NO_BINDING_WARNING}");
    }
    let verifier = Verifier::new(store, vehicle);
    match verifier.verify(&update, now, persist) {
        Ok(verified) => {
            println!("{:#}", accepted_json(&verified, args.persist));
            ExitCode::SUCCESS
        }
        Err(VerifyError::Rejected(err)) => {
            println!(
                "{:#}",
                json!({"accepted": false, "rejection": {"kind": err.kind(), "message": err.to_string()}})
            );
            eprintln!("rejected ({}): {err}", err.kind());
            ExitCode::from(1)
        }
        Err(VerifyError::Store(err)) => {
            // The trust store is unusable (exit 2), with the same JSON form and a kind.
            println!(
                "{:#}",
                json!({"accepted": false, "rejection": {"kind": err.kind(), "message": err.to_string()}})
            );
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
