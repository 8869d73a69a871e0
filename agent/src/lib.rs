//! `ota-agent`: the on-vehicle OTA agent.
//!
//! Layout:
//! - `verify_cli`: `ota-agent verify-metadata`, offline verification with the run-time code path.
//! - `delta`: streaming delta apply (CLI `ota-agent delta apply`).

pub mod delta;
pub mod verify_cli;
